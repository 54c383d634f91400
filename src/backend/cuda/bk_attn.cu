/*
 * bk_attn.cu - CUDA implementation of the window-key store and the faithful sparse attention
 * with sinks (backend.h), the same arithmetic as the CPU reference (bk_attn.c, which runs
 * ops_faithful.c dsv4_op_faithful_attend_head) up to f32 summation order.
 *
 * Why split: at decode a row has ~10 blocks of 64 slots and 64 heads; one CTA per (row, head
 * group) walking the blocks in order (attn_seq.cu) keeps 8 SMs busy at N 1 and pays every
 * block's latency in turn (59 us). Here a thread-block cluster of C CTAs shares one (row, group
 * of HG = 8 NT heads) and each CTA takes kb consecutive blocks, exactly as follows.
 *
 * The faithful recurrence per head, block b in slot order (running max m without the sink):
 *   m_b = max(m_{b-1}, blockmax_b),  alpha_b = exp(m_{b-1} - m_b)  (0 if m_{b-1} = -inf,
 *   1 if m_b = -inf),  p = bf16(exp(s - m_b)),  c_b = V^T p (f32),  bs_b = sum exp(s - m_b),
 *   O_b = O_{b-1} * alpha_b + c_b,  S_b = S_{b-1} * alpha_b + bs_b,  o = bf16(O / (S + e^(sink-m)))
 * m_b depends only on the scores, so it is computed first:
 *   pass 1  each CTA: S^T = K . Q^T of its blocks (bf16 mma.sync, f32) and their block maxima,
 *           pushed into every CTA of the cluster (distributed shared memory); cluster barrier;
 *           every CTA scans the maxima in block order -> m_b and alpha_b of all blocks;
 *   pass 2  each CTA: p, bs_b, c_b = V^T P^T of its blocks with the known m_b; c_b and bs_b are
 *           pushed to the CTA that owns those output columns (16-dim tiles, mt % C); barrier;
 *   combine each CTA applies O = O * alpha_b + c_b, S = S * alpha_b + bs_b for b in block order
 *           to its columns (f32, __fmul_rn then __fadd_rn, as the sequential kernel).
 * What is kept exact: the 64-slot blocks, m_b, the bf16 rounding of e, and per output element
 * the same f32 operations in the same order as attn_seq.cu (the same mma k-order for the
 * scores and c_b, the same tree for bs_b); so the two kernels agree bit for bit, and differ
 * from the CPU only in f32 summation order. Deterministic: no atomics, a fixed order.
 * Rows with more than C * kb blocks run in rounds that carry m, O and S over. C = 1 is the
 * one-pass form: one CTA walks all blocks, O in registers. The plan (HG, C, kb) comes from a
 * cost model over the GPU's SMs (sa_plan); there is no workspace: all exchange is in shared
 * memory, so it is graph-capturable. Head dims above 512 go to attn_seq.cu.
 *
 * Latency (issue 8): the prologue issues every global load it needs (pos, slot, the row's CSA
 * picks, q as float4, the sinks, the RoPE frequencies) before it uses any, so they cost one
 * memory latency instead of one per loop trip (the q loop alone was 4-16 round trips); the
 * picks are compacted by one block scan from registers; a block maximum or sum goes to the C
 * ranks from C lanes at once, the alphas are computed in parallel, and c_b travels in mma
 * fragment order, one 16-byte store a lane and tile.
 * Epilogue: with rope_r > 0 the op also applies the inverse RoPE of the last rope_r dims at
 * the row's position and rounds to bf16, exactly dsv4_bk_rope (inverse, round_bf16) after the
 * attention (the same f32 angle, double cos / sin rounded to f32, products and sum as
 * bk_rows.cu), which saves the engine that launch and a pass over o.
 *
 * Measured (H100, tests/test_gpu_attn.c, us a call replayed from a CUDA graph; the sequential
 * kernel in the same run in brackets): Flash H 64, hd 512, 640 slots a row (128 window + 512
 * CSA picks): N 1 15.0 with HG 8, C 10 (56.2; C 5, kb 2: 18.0), N 64 79.7 with HG 32, C 1
 * (151.2); HCA 64K (128 + 512 entries) N 1 14.2 (55.7); Pro H 128, 784 slots, N 4 56.4 with
 * HG 32, C 6 (95.7). Every plan bit-identical to the sequential kernel. Still latency-bound: a
 * cluster's fixed cost (prologue, two cluster barriers, pass 2, combine) is ~10 us and a block
 * costs ~3 us a CTA (its 64 KB gather, then by cp.async), so N 1 stays above 10 us.
 * After the latency work and with the RoPE fused (same test, H100): Flash CSA N 1 12.3 (HG 16,
 * C 10: 12.0), HCA 64K N 1 12.5, N 64 77.0 (75.2 without the RoPE), Pro N 4 38.9. Cold caches
 * (ncu, engine step at context 4096): N 1 CSA 20.6 -> 18.7, HCA 19.4 -> 18.3; but N 64 one-pass
 * CSA 83 -> 94 and HCA 38 -> 50, where the graph replay (warm) got faster: the one-pass form's
 * unrolled epilogue (now with the RoPE, 64 copies) and prologue are more code fetched cold.
 * So the one-pass epilogue now stages O in the free key buffers and runs as a rolled loop over
 * pairs of dims (float2 stores), the cluster form's epilogue; the same operations bit for bit.
 * The one-pass form at N 64 (session 19, clock64 probes of a CTA, Flash CSA, 10 blocks): of
 * ~123K cycles, issuing the next block's copies 34K (they stall until most have landed), the
 * scores 21K, the softmax 36K (a warp's 4 heads one after another), p.v 16K, the epilogue 16K.
 * The heads side by side (sa_soft_heads) and the epilogue four pairs a trip: 75.6 -> 70.2 us a
 * call (graph); issuing the copies in 2-8 parts between the phases was slower (70.8-73.2).
 * Both forms share the multi-head helpers (session 20), so the cluster form's passes interleave
 * a warp's heads too: Flash N 4 (HG 16, C 5) 19.3 -> 18.5 us, Pro N 4 (HG 32, C 6) 38.7 -> 36.7;
 * plans of HG 8 (one head a warp, Flash N 1-2) unchanged.
 * The keys by bulk copies (session 20, sa_load): a block's 64 key rows were gathered by 16-byte
 * cp.async, 16 a thread, and issuing them stalled every warp; now one lane a key issues its row
 * to the TMA unit and the block completes on an mbarrier. Same bits; us a call (graph, H100):
 * Flash CSA N 1 (HG 8, C 10) 12.3 -> 11.4, N 2 14.5 -> 12.5, N 64 (HG 32, one pass) 69.6 -> 60.1
 * (the HG 8 one-pass plan 176 -> 127), Pro N 4 36.6 -> 36.1.
 * Waves of clusters (session 12): a cluster must fit in one GPC, so a plan of fewer CTAs than
 * SMs may still run in two waves (Flash CSA at 4 rows, 8 clusters of 10 at one CTA an SM: 7
 * fit, the call took 44 us instead of 23 in the step); the cost model counts them (sa_capacity).
 * The serving layout (kv_layout.h: 576 data + 8 scale bytes a key at hd 512 instead of 1,024):
 * a key's data row is one bulk copy into its own tile row (staged at byte nope, so its RoPE dims
 * land in place), its scale row a cp.async completing on the same mbarrier, and after the wait
 * each warp rewrites its rows as bf16 (attn.cuh at_expand), then a CTA barrier; the tile then
 * holds the old cache's bf16 bits, so every later instruction is unchanged and the plans stay
 * bit-identical to attn_seq.cu. The expansion is the cost: ~1 us a block a CTA (H100, at_expand_c,
 * down from 2.8 with dev_kv_bf16x2); us a call (graph, H100, test_gpu_attn, the plan chosen;
 * bf16 cache before): Flash CSA N 1 11.5 -> 11.9, N 2 12.1 -> 14.3, N 4 18.2 -> 20.6, N 64
 * 58.7 -> 68.7, HCA 64K N 1 11.1 -> 11.9, Pro N 1 16.7 -> 23.0 (the HG 16 C 9 plan 20.4, the
 * cost model not refitted), N 4 36.2 -> 38.7; the gathers alone (no expansion) ran at or below
 * the bf16 times. A warp expands 4 of its rows at once (at_expand_c's B; 2 before): in the
 * step (dsv4 bench, H100) Flash 0.954 -> 0.953 ms at 1 row, 5.983 -> 5.980 at 64; main with
 * the bf16 cache 0.937 and 5.93 (docs/PERF.md, session 41).
 *
 * Precondition: q holds bf16-exact values (faithful mode rounds q to bf16 before attention);
 * other values are rounded to bf16 here. A CSA pick >= cap_e counts as -1 here (the CPU fails).
 */
#include "backend/cuda/attn.cuh"
#include "backend/cuda/bulk_copy.cuh"
#include "backend/cuda/cluster.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/quant_dev.cuh"

#include <cooperative_groups.h>
#include <math.h>

namespace cg = cooperative_groups;

/* ---- kv_store ------------------------------------------------------------------------------
 * kv [N, hd] -> entry slot[r] R + pos[r] % R of win (layout l: dsv4_kv_encode's bytes).
 * grid: N CTAs (one a row), 256 threads (dev_kv_store: a warp a scale block). */
__global__ void __launch_bounds__(256)
    kv_store_kernel(uint8_t *win, int R, dsv4_kv_layout l, const float *kv, const int32_t *slot,
                    const int32_t *pos)
{
    DSV4_PDL_WAIT();
    const int64_t r = blockIdx.x;
    dev_kv_store(l, win, (int64_t)slot[r] * R + pos[r] % R, kv + r * l.hd);
}

extern "C" dsv4_status dsv4_cuda_bk_kv_store(dsv4_backend *b, uint8_t *win, int R, int hd, int r,
                                             const float *kv, const dsv4_bk_rows *rows)
{
    if (R < 1 || hd < 1 || r < 0 || r >= hd || (r & 1))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "kv_store: R %d, hd %d, r %d", R, hd, r);
    if (rows->n <= 0) return DSV4_OK;
    kv_store_kernel<<<(unsigned)rows->n, 256, 0, dsv4_cuda_stream(b->cuda)>>>(
        win, R, dsv4_kv_layout_of(hd, r), kv, rows->slot, rows->pos);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- split attention ------------------------------------------------------------------------ */
enum {
    SA_MTW = 4,   /* dim tiles a warp (hd <= 512) */
    SA_KBMAX = 4, /* blocks a CTA a round */
    SA_CMAX = 16, /* cluster size (3 (SA_CMAX + 1) 2 <= DSV4_ATTN_CAP_SLOTS) */
    SA_SELV = 8,  /* CSA picks a thread holds in the prologue: topk <= 8 * AT_THREADS */
    SA_XU = 2,    /* at_expand's chunks a lane a row: hd <= 512 */
    SA_SB = 8,    /* a scale row (hd <= 512: at most 8 blocks) */
    /* a key buffer's mbarrier arrivals a block (sa_load): a warp's expect_tx and its 8 lanes'
     * cp.async arrivals */
    SA_ARRIVALS = AT_WARPS * 9
};

typedef struct sa_args {
    float *o;
    const float *q, *sink, *freqs;
    const uint8_t *win, *ent; /* entries of layout kvl (kv_layout.h) */
    const int32_t *sel, *slot, *pos;
    int64_t cap_e;
    int H, hd, R, W, m, topk, mode, ngroups; /* mode: 0 window only, 1 HCA, 2 CSA */
    int C, kb;                               /* cluster size (1: one pass), blocks a CTA a round */
    int rope_r; /* > 0: inverse RoPE of the last rope_r dims of o (freqs) in the epilogue */
    dsv4_kv_layout kvl;
    int stoff; /* where a key tile row stages its entry's data row (at_stage_off) */
    float scale;
    int off_ksc, off_q, off_sp, off_p, off_st, off_list, off_comb, off_rope; /* dynamic shared */
} sa_args;

/* The row's slot list: slots [0, count) are window positions lo .. p (oldest first), [count, W)
 * empty, [W, ns) entries (list[] for CSA, 0 .. n_ent-1 for HCA); nb blocks of 64. p: the row's
 * position (the RoPE angle). */
typedef struct sa_row {
    int64_t wbase, ebase; /* entry indices (at_row_init) */
    const int *list;
    int lo, count, ns, nb, p;
} sa_row;

/* Stages the entries of slots [64 b, 64 b + 64) for at_expand on the mbarrier bar: warp w takes
 * keys w, w + 8, ..., lane j < 8 issuing key w + 8 j's data row as one bulk copy into the key's
 * tile row of dst [64, hd + 8] (at byte a.stoff; the TMA unit gathers the block, so the warps do
 * not stall issuing 16-byte copies) and its 8 scale bytes by cp.async into scl [64][8]; lane 0
 * arrives once expecting the warp's data bytes, and lanes 0..7 each arrive when their cp.async
 * have landed (SA_ARRIVALS arrivals and the bytes complete the phase). Empty slots copy nothing
 * (at_expand writes their zero rows). The proxy fence orders this thread's earlier generic
 * accesses of the buffer (the previous block's reads, at_expand's writes of the rows this warp
 * refills) before the bulk copies. */
__device__ static inline void sa_load(const sa_args &a, const sa_row &rk, uint16_t *dst,
                                      uint8_t *scl, int b, uint32_t bar)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ldk = a.hd + 8;
    const int k = warp + AT_WARPS * lane; /* lanes 0..7 */
    int64_t e = 0;
    const uint8_t *buf = lane < 8 ? at_entry(a, rk, b * AT_BLOCK + k, &e) : NULL;
    const unsigned have = __ballot_sync(0xffffffffu, buf != NULL);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncwarp();
    if (lane == 0) ring_arrive_tx(bar, __popc(have) * a.kvl.data_bytes);
    if (buf) {
        ring_bulk(ring_sa((uint8_t *)(dst + k * ldk) + a.stoff), buf + dsv4_kv_data_off(&a.kvl, e),
                  a.kvl.data_bytes, bar);
        at_cp_async8(scl + k * SA_SB, buf + dsv4_kv_scale_off(&a.kvl, e));
    }
    if (lane < 8) at_cp_mbar_arrive(bar);
}

/* Waits for the block staged on buffer i (barrier bars + 8 i), then this warp expands its rows
 * (at_expand); the caller syncs the CTA before the tile is read. ph holds each buffer's phase
 * parity, flipped by its wait (every load into a buffer is waited for once). */
__device__ static inline void sa_wait(const sa_args &a, const sa_row &rk, uint16_t *kb,
                                      const uint8_t *scl, int b, uint32_t bars, int i, unsigned &ph)
{
    ring_bar_wait(bars + 8 * i, (ph >> i) & 1u);
    ph ^= 1u << i;
    if (a.hd == 512 && a.kvl.r == 64) /* the engine's layout, compiled for */
        at_expand_c<512, 64, 4>(a, rk, kb, scl, b);
    else
        at_expand<SA_XU, 2>(a, rk, kb, scl, b);
}

/* Partial scores of one block: sp [2][HG][AT_LDS] = K [64, hd] . Q^T [hd, HG] over the two
 * halves of the dims. Warp (mt, kh) = (w % 4, w / 4) does keys 16 mt .. over half kh, k-steps
 * in order (the sequential kernel's order). kb [64][hd + 8], qs [HG][hd + 8] bf16. */
template <int NT>
__device__ static inline void sa_scores(const uint16_t *kb, const uint16_t *qs, float *sp, int hd)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int ldk = hd + 8, mt = warp & 3, kh = warp >> 2, half = hd >> 5;
    float c[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.0f;
    const uint16_t *ap = kb + (mt * 16 + (lane & 15)) * ldk + ((lane >> 4) << 3) + kh * (hd >> 1);
    const uint16_t *bp = qs + (lane & 7) * ldk + ((lane >> 3) << 3) + kh * (hd >> 1);
    for (int ks = 0; ks < half; ks += 2) { /* k-steps ks, ks + 1 */
        uint32_t a0[4], a1[4], bq[NT][4];
        at_ldsm4(a0, ap + ks * 16);
        at_ldsm4(a1, ap + ks * 16 + 16);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) at_ldsm4(bq[nt], bp + nt * 8 * ldk + ks * 16);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) at_mma(c[nt], a0, &bq[nt][0]);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) at_mma(c[nt], a1, &bq[nt][2]);
    }
    at_store_scores<NT>(sp, kh, mt, g, t, c);
}

/* Block b's scaled scores for this warp's NT heads h = warp + 8 i, keys lane and lane + 32
 * (-inf for empty slots) -> sc, valid, and each head's block maximum -> bm (every lane). The
 * heads run side by side, so that their shuffle chains overlap; per head the operations and
 * their order are those of the sequential kernel. */
template <int NT>
__device__ static inline void sa_head_scores(const sa_args &a, const sa_row &rk, const float *sp,
                                             int b, float sc[NT][2], bool valid[2], float bm[NT])
{
    constexpr int HG = 8 * NT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int jj = 0; jj < 2; jj++) {
        const int s = b * AT_BLOCK + lane + 32 * jj;
        valid[jj] = s < rk.count || (s >= a.W && s < rk.ns);
    }
#pragma unroll
    for (int i = 0; i < NT; i++) {
        const int h = warp + AT_WARPS * i;
        bm[i] = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < 2; jj++) {
            const int key = lane + 32 * jj;
            sc[i][jj] =
                valid[jj] ? __fmul_rn(__fadd_rn(sp[h * AT_LDS + key], sp[(HG + h) * AT_LDS + key]),
                                      a.scale)
                          : -INFINITY;
            bm[i] = fmaxf(bm[i], sc[i][jj]);
        }
    }
#pragma unroll
    for (int sh = 16; sh > 0; sh >>= 1)
#pragma unroll
        for (int i = 0; i < NT; i++) bm[i] = fmaxf(bm[i], __shfl_xor_sync(0xffffffffu, bm[i], sh));
}

/* p = bf16(exp(s - mn)) of the warp's NT heads -> their rows of ps [HG][AT_LDP] (zeros where mn
 * is -inf; mn is uniform over the warp); the f32 sums of the exps -> bs, complete in lane 0
 * (the sequential kernel's tree; a head with no valid key adds zeros). */
template <int NT>
__device__ static inline void sa_exps(const float sc[NT][2], const bool valid[2],
                                      const float mn[NT], uint16_t *ps, float bs[NT])
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < NT; i++) {
        const int h = warp + AT_WARPS * i;
        uint16_t pb0 = 0, pb1 = 0;
        bs[i] = 0.0f;
        if (mn[i] != -INFINITY) { /* warp-uniform */
            const float e0 = valid[0] ? expf(sc[i][0] - mn[i]) : 0.0f;
            const float e1 = valid[1] ? expf(sc[i][1] - mn[i]) : 0.0f;
            pb0 = at_bf16_bits(e0);
            pb1 = at_bf16_bits(e1);
            bs[i] = __fadd_rn(e0, e1);
        }
        ps[h * AT_LDP + lane] = pb0;
        ps[h * AT_LDP + lane + 32] = pb1;
    }
#pragma unroll
    for (int sh = 16; sh > 0; sh >>= 1)
#pragma unroll
        for (int i = 0; i < NT; i++)
            bs[i] = __fadd_rn(bs[i], __shfl_down_sync(0xffffffffu, bs[i], sh));
}

/* The one-pass form's softmax step of block b for this warp's NT heads: scores, the new running
 * max mn = max(block max, sm), p, and the running sum's update S = S alpha + bs. sm, ssum, sal
 * [HG]: running max, sum, and this block's alpha. */
template <int NT>
__device__ static inline void sa_soft_heads(const sa_args &a, const sa_row &rk, const float *sp,
                                            uint16_t *ps, float *sm, float *ssum, float *sal, int b)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    bool valid[2];
    float sc[NT][2], bm[NT], mx[NT], mn[NT], bs[NT];
#pragma unroll
    for (int i = 0; i < NT; i++) mx[i] = sm[warp + AT_WARPS * i];
    sa_head_scores<NT>(a, rk, sp, b, sc, valid, bm);
#pragma unroll
    for (int i = 0; i < NT; i++) mn[i] = fmaxf(bm[i], mx[i]);
    sa_exps<NT>(sc, valid, mn, ps, bs);
    __syncwarp();
    if (lane == 0)
#pragma unroll
        for (int i = 0; i < NT; i++) {
            const int h = warp + AT_WARPS * i;
            const float alpha =
                mn[i] == -INFINITY ? 1.0f : (mx[i] == -INFINITY ? 0.0f : expf(mx[i] - mn[i]));
            if (mn[i] != -INFINITY) {
                ssum[h] = __fadd_rn(__fmul_rn(ssum[h], alpha), bs[i]);
                sm[h] = mn[i];
            }
            sal[h] = alpha;
        }
}

/* p as mma B fragments: bfr[kk][nt] for keys 16 kk .., heads 8 nt ... ps [HG][AT_LDP]. */
template <int NT> __device__ static inline void sa_pfrag(const uint16_t *ps, uint32_t bfr[4][NT][2])
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int k2 = 0; k2 < 2; k2++) {
            uint32_t x[4];
            at_ldsm4(x, ps + (nt * 8 + (lane & 7)) * AT_LDP + k2 * 32 + ((lane >> 3) << 3));
            bfr[2 * k2][nt][0] = x[0];
            bfr[2 * k2][nt][1] = x[1];
            bfr[2 * k2 + 1][nt][0] = x[2];
            bfr[2 * k2 + 1][nt][1] = x[3];
        }
    }
}

/* c [NT][4] = V^T [dims 16 mt .., 64 keys] . P^T of one block (keys kk = 0..3 in order). Lane
 * (g, t): c[nt] = (dim g, head 8nt+2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1). kb [64][hd + 8]. */
template <int NT>
__device__ static inline void sa_pv_tile(const uint16_t *kb, int ldk, int mt,
                                         const uint32_t bfr[4][NT][2], float c[NT][4])
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.0f;
    const uint16_t *vp =
        kb + ((lane & 7) + ((lane >> 4) << 3)) * ldk + mt * 16 + (((lane >> 3) & 1) << 3);
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        uint32_t af[4];
        at_ldsm4_t(af, vp + kk * 16 * ldk);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) at_mma(c[nt], af, bfr[kk][nt]);
    }
}

__device__ static inline void sa_cluster_arrive_relaxed(void)
{
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}

__device__ static inline void sa_cluster_wait(void)
{
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
}

/* Release our stores (local and remote) to the cluster, acquire everyone else's. */
__device__ static inline void sa_cluster_sync(void)
{
    asm volatile("barrier.cluster.arrive.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
}

/* The inverse RoPE's table of the row: cs / sn [rope_r / 2] = cos / -sin of freqs[i] * (float)p,
 * computed as bk_rows.cu dev_rope_table does (the angle in f32, the device's double cos / sin
 * rounded to f32), so that the epilogue is dsv4_bk_rope (inverse, bf16) bit for bit. Thread i
 * holds freq = freqs[i] from the prologue. */
__device__ static inline void sa_rope_table(const sa_args &a, unsigned char *smem, int p,
                                            float freq)
{
    const int half = a.rope_r >> 1;
    if ((int)threadIdx.x < half) {
        float *cs = (float *)(smem + a.off_rope);
        const double ang = (double)__fmul_rn(freq, (float)p);
        const float s = (float)sin(ang);
        cs[threadIdx.x] = (float)cos(ang);
        cs[half + threadIdx.x] = -s;
    }
}

/* The rotated pair (x0, x1) by (c, s) as bk_rows.cu rope_kernel, each bf16-rounded after. */
__device__ static inline float sa_rot0(float x0, float x1, float c, float s)
{
    return dev_round_bf16(__fadd_rn(__fmul_rn(x0, c), __fmul_rn(-x1, s)));
}

__device__ static inline float sa_rot1(float x0, float x1, float c, float s)
{
    return dev_round_bf16(__fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s)));
}

/* The one-pass form (C = 1): this CTA walks the row's blocks in order; O lives in registers
 * (warp w: dim tiles w + 8 i), max / sum / alpha per head in st [3][HG]. */
template <int NT>
__device__ static void sa_one_pass(const sa_args &a, const sa_row &rk, unsigned char *smem,
                                   uint32_t kbar, int r, int h0, float sinkv, float freq)
{
    constexpr int HG = 8 * NT;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int hd = a.hd, ldk = hd + 8, nmt = hd >> 4;
    const size_t kbuf = (size_t)AT_BLOCK * ldk;
    uint16_t *ks = (uint16_t *)smem, *qs = (uint16_t *)(smem + a.off_q);
    uint8_t *ksc = smem + a.off_ksc; /* [2][64][SA_SB] the keys' scale rows */
    float *sp = (float *)(smem + a.off_sp);
    uint16_t *ps = (uint16_t *)(smem + a.off_p);
    float *sm = (float *)(smem + a.off_st), *ssum = sm + HG, *sal = ssum + HG;
    if (tid < HG) {
        sm[tid] = -INFINITY;
        ssum[tid] = 0.0f;
        sal[tid] = 0.0f;
    }
    float o[SA_MTW][NT][4];
#pragma unroll
    for (int i = 0; i < SA_MTW; i++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
            o[i][nt][0] = o[i][nt][1] = o[i][nt][2] = o[i][nt][3] = 0.0f;

    /* The staged entries reach every thread through the mbarrier, their bf16 rows (at_expand,
     * zero rows too) through the barrier after sa_wait. */
    const int kscb = AT_BLOCK * SA_SB; /* a buffer's scale bytes */
    unsigned ph = 0;
    sa_load(a, rk, ks, ksc, 0, kbar);
    sa_rope_table(a, smem, rk.p, freq);
    for (int b = 0; b < rk.nb; b++) {
        uint16_t *kb = ks + (b & 1) * kbuf;
        if (b + 1 < rk.nb)
            sa_load(a, rk, ks + ((b + 1) & 1) * kbuf, ksc + ((b + 1) & 1) * kscb, b + 1,
                    kbar + 8 * ((b + 1) & 1));
        sa_wait(a, rk, kb, ksc + (b & 1) * kscb, b, kbar, b & 1, ph);
        __syncthreads(); /* the expanded rows; sp is free since the last trip's barriers */
        sa_scores<NT>(kb, qs, sp, hd);
        __syncthreads();
        sa_soft_heads<NT>(a, rk, sp, ps, sm, ssum, sal, b);
        __syncthreads();
        uint32_t bfr[4][NT][2];
        sa_pfrag<NT>(ps, bfr);
        float al[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            al[nt][0] = sal[nt * 8 + 2 * t];
            al[nt][1] = sal[nt * 8 + 2 * t + 1];
        }
#pragma unroll
        for (int i = 0; i < SA_MTW; i++) {
            const int mt = warp + AT_WARPS * i;
            if (mt < nmt) {
                float c[NT][4];
                sa_pv_tile<NT>(kb, ldk, mt, bfr, c);
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        o[i][nt][e] = __fadd_rn(__fmul_rn(o[i][nt][e], al[nt][e & 1]), c[nt][e]);
            }
        }
        __syncthreads();
    }

    /* the sink joins the denominator; O goes to shared memory (the key buffers are free: HG
     * (hd + 4) floats <= 2 * 64 (hd + 8) bf16), then o = bf16(O / sum) and the inverse RoPE of
     * the last rope_r dims, a pair of dims a thread: the same operations as the cluster form's
     * epilogue, in a loop with row-contiguous stores, four pairs a trip (a fragment-order
     * epilogue unrolled 16 NT times was more code than a cold instruction cache serves quickly
     * at N 64; one pair a trip left each trip's loads and divisions in series) */
    if (tid < HG && h0 + tid < a.H) ssum[tid] = __fadd_rn(ssum[tid], expf(sinkv - sm[tid]));
    const int ldo = hd + 4; /* floats a head's row: the fragment stores hit distinct banks */
    float *os = (float *)smem;
#pragma unroll
    for (int i = 0; i < SA_MTW; i++) {
        const int mt = warp + AT_WARPS * i;
        if (mt >= nmt) continue; /* warp-uniform */
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                os[(nt * 8 + 2 * t + (e & 1)) * ldo + mt * 16 + g + ((e >> 1) << 3)] = o[i][nt][e];
    }
    __syncthreads();
    const float *cs = (const float *)(smem + a.off_rope), *sn = cs + (a.rope_r >> 1);
    const int rd0 = hd - a.rope_r, hp = hd >> 1; /* the first rotated dim (hd: none) */
    for (int k0 = tid; k0 < HG * hp; k0 += 4 * AT_THREADS) {
        float v[4][2];
        int hh[4], dd[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int k = k0 + u * AT_THREADS, h = k / hp;
            hh[u] = k < HG * hp && h0 + h < a.H ? h : -1;
            dd[u] = 2 * (k - h * hp);
            v[u][0] = v[u][1] = 0.0f;
            if (hh[u] >= 0) {
                const float2 ov = *(const float2 *)(os + h * ldo + dd[u]);
                v[u][0] = at_round_bf16(__fdiv_rn(ov.x, ssum[h]));
                v[u][1] = at_round_bf16(__fdiv_rn(ov.y, ssum[h]));
            }
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            if (hh[u] < 0) continue;
            const int d = dd[u];
            float v0 = v[u][0], v1 = v[u][1];
            if (d >= rd0) {
                const int ip = (d - rd0) >> 1;
                const float r0 = sa_rot0(v0, v1, cs[ip], sn[ip]);
                v1 = sa_rot1(v0, v1, cs[ip], sn[ip]);
                v0 = r0;
            }
            *(float2 *)(a.o + ((int64_t)r * a.H + h0 + hh[u]) * hd + d) = make_float2(v0, v1);
        }
    }
}

/* The cluster form (C > 1), round after round of C * kb blocks; rank takes blocks
 * rank * kb .. of the round. Shared state (floats, st): gbm, gbs, alph [C kb][HG] (block maxima,
 * block sums, alphas of the round; maxima and sums pushed by their owners), mpre [C kb + 1][HG]
 * (running max before / after each block), ssum, mcar [HG] (sum and max carried over rounds),
 * oslc [MTS][TILE] (this rank's output tiles mt = rank + C i); comb [C kb][MTS][TILE] (the c_b
 * of those tiles, pushed by the blocks' owners). A tile's TILE = 16 HG floats are kept in mma
 * fragment order, [NT][lane][4]: lane (g, t) holds (dim g, head 8 nt + 2t), (g, 2t + 1),
 * (g + 8, 2t), (g + 8, 2t + 1), so a c_b fragment goes out as one 16-byte store. */
template <int NT>
__device__ static void sa_cluster(const sa_args &a, const sa_row &rk, unsigned char *smem,
                                  uint32_t kbar, int r, int h0, float sinkv, float freq)
{
    constexpr int HG = 8 * NT, TILE = 16 * HG;
    cg::cluster_group cl = cg::this_cluster();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int hd = a.hd, ldk = hd + 8, nmt = hd >> 4, C = a.C, KB = a.kb, per = C * KB;
    const int rank = (int)cl.block_rank(), MTS = (nmt + C - 1) / C, SPB = 2 * HG * AT_LDS;
    const size_t kbuf = (size_t)AT_BLOCK * ldk;
    uint16_t *ks = (uint16_t *)smem, *qs = (uint16_t *)(smem + a.off_q);
    uint8_t *ksc = smem + a.off_ksc; /* [nbuf][64][SA_SB] the keys' scale rows */
    const int kscb = AT_BLOCK * SA_SB;
    float *sp = (float *)(smem + a.off_sp);
    uint16_t *ps = (uint16_t *)(smem + a.off_p);
    float *gbm = (float *)(smem + a.off_st), *gbs = gbm + per * HG, *alph = gbs + per * HG;
    float *mpre = alph + per * HG, *ssum = mpre + (per + 1) * HG;
    float *mcar = ssum + HG, *oslc = mcar + HG;
    float *comb = (float *)(smem + a.off_comb);
    const int slc = MTS * TILE;
    if (tid < HG) {
        ssum[tid] = 0.0f;
        mcar[tid] = -INFINITY;
    }
    for (int e = tid; e < slc; e += AT_THREADS) oslc[e] = 0.0f;

    const int rounds = (rk.nb + per - 1) / per;
    unsigned ph = 0;
    for (int rd = 0; rd < rounds; rd++) {
        const int rb0 = rd * per, gb0 = rb0 + rank * KB;
        const int nround = min(per, rk.nb - rb0), nloc = max(0, min(KB, rk.nb - gb0));

        /* pass 1: scores and block maxima of my blocks (keys double-buffered); lane rr of the
         * head's warp pushes the maximum into rank rr */
        if (nloc > 0) sa_load(a, rk, ks, ksc, gb0, kbar);
        if (rd == 0) sa_rope_table(a, smem, rk.p, freq);
        for (int j = 0; j < nloc; j++) {
            if (j + 1 < nloc)
                sa_load(a, rk, ks + ((j + 1) & 1) * kbuf, ksc + ((j + 1) & 1) * kscb, gb0 + j + 1,
                        kbar + 8 * ((j + 1) & 1));
            sa_wait(a, rk, ks + (j & 1) * kbuf, ksc + (j & 1) * kscb, gb0 + j, kbar, j & 1, ph);
            __syncthreads(); /* the expanded rows (block j's own sp slot) */
            sa_scores<NT>(ks + (j & 1) * kbuf, qs, sp + j * SPB, hd);
            __syncthreads();
            if (rd == 0 && j == 0) sa_cluster_wait(); /* every CTA of the cluster has started */
            float sc[NT][2], bm[NT];
            bool valid[2];
            sa_head_scores<NT>(a, rk, sp + j * SPB, gb0 + j, sc, valid, bm);
            if (lane < C)
#pragma unroll
                for (int i = 0; i < NT; i++)
                    *cl.map_shared_rank(gbm + (rank * KB + j) * HG + warp + AT_WARPS * i, lane) =
                        bm[i];
        }
        if (rd == 0 && nloc == 0) sa_cluster_wait();
        sa_cluster_sync();

        /* the running max over the round's blocks, in block order; then every alpha at once */
        if (tid < HG) {
            float mx = mcar[tid];
            mpre[tid] = mx;
            for (int i = 0; i < nround; i++) {
                mx = fmaxf(gbm[i * HG + tid], mx);
                mpre[(i + 1) * HG + tid] = mx;
            }
            mcar[tid] = mx;
        }
        __syncthreads();
        for (int k = tid; k < nround * HG; k += AT_THREADS) {
            const float mx = mpre[k], mn = mpre[k + HG];
            alph[k] = mn == -INFINITY ? 1.0f : (mx == -INFINITY ? 0.0f : expf(mx - mn));
        }

        /* pass 2: p, block sums and c_b of my blocks, last first: the last two are still in
         * their buffers (expanded), earlier ones are fetched (and expanded) again */
        for (int j = nloc - 1; j >= 0; j--) {
            const int li = rank * KB + j, b = gb0 + j;
            if (j < nloc - 2) {
                if (j > 0)
                    sa_load(a, rk, ks + ((j - 1) & 1) * kbuf, ksc + ((j - 1) & 1) * kscb,
                            gb0 + j - 1, kbar + 8 * ((j - 1) & 1));
                sa_wait(a, rk, ks + (j & 1) * kbuf, ksc + (j & 1) * kscb, b, kbar, j & 1, ph);
            } else if (j == nloc - 2 && j > 0) {
                sa_load(a, rk, ks + ((j - 1) & 1) * kbuf, ksc + ((j - 1) & 1) * kscb, gb0 + j - 1,
                        kbar + 8 * ((j - 1) & 1));
            }
            __syncthreads();
            {
                float sc[NT][2], bm[NT], mn[NT], bs[NT];
                bool valid[2];
                sa_head_scores<NT>(a, rk, sp + j * SPB, b, sc, valid, bm);
#pragma unroll
                for (int i = 0; i < NT; i++) mn[i] = mpre[(li + 1) * HG + warp + AT_WARPS * i];
                sa_exps<NT>(sc, valid, mn, ps, bs);
#pragma unroll
                for (int i = 0; i < NT; i++) {
                    const float bsum = __shfl_sync(0xffffffffu, bs[i], 0);
                    if (lane < C)
                        *cl.map_shared_rank(gbs + li * HG + warp + AT_WARPS * i, lane) = bsum;
                }
            }
            __syncthreads();
            uint32_t bfr[4][NT][2];
            sa_pfrag<NT>(ps, bfr);
            const uint16_t *kb = ks + (j & 1) * kbuf;
            for (int mt = warp; mt < nmt; mt += AT_WARPS) {
                float c[NT][4];
                sa_pv_tile<NT>(kb, ldk, mt, bfr, c);
                float *dst = cl.map_shared_rank(comb, mt % C) + (size_t)(li * MTS + mt / C) * TILE +
                             lane * 4;
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    *(float4 *)(dst + nt * 128) =
                        make_float4(c[nt][0], c[nt][1], c[nt][2], c[nt][3]);
            }
            __syncthreads();
        }
        sa_cluster_sync();

        /* combine my tiles over the round's blocks, in block order (a float4 is one lane's
         * fragment: heads hA, hA + 1, hA, hA + 1) */
        if (tid < HG) {
            float s = ssum[tid];
            for (int i = 0; i < nround; i++)
                s = __fadd_rn(__fmul_rn(s, alph[i * HG + tid]), gbs[i * HG + tid]);
            ssum[tid] = s;
        }
        float4 *o4 = (float4 *)oslc;
        const float4 *c4 = (const float4 *)comb;
        for (int e = tid; e < slc / 4; e += AT_THREADS) {
            const int si = e / (NT * 32), hA = ((e >> 5) % NT) * 8 + 2 * (e & 3);
            if (rank + C * si >= nmt) continue; /* a tile past hd: nobody's */
            float4 v = o4[e];
            for (int i = 0; i < nround; i++) {
                const float aA = alph[i * HG + hA], aB = alph[i * HG + hA + 1];
                const float4 c = c4[(size_t)i * (slc / 4) + e];
                v.x = __fadd_rn(__fmul_rn(v.x, aA), c.x);
                v.y = __fadd_rn(__fmul_rn(v.y, aB), c.y);
                v.z = __fadd_rn(__fmul_rn(v.z, aA), c.z);
                v.w = __fadd_rn(__fmul_rn(v.w, aB), c.w);
            }
            o4[e] = v;
        }
        __syncthreads();
    }

    /* the sink joins the denominator; o = bf16(O / sum) for my tiles, then the inverse RoPE of
     * the last rope_r dims. Item k: a pair of dims (d, d + 1), fragment lanes (g, g + 1) */
    if (tid < HG && h0 + tid < a.H) ssum[tid] = __fadd_rn(ssum[tid], expf(sinkv - mcar[tid]));
    __syncthreads();
    const float *cs = (const float *)(smem + a.off_rope), *sn = cs + (a.rope_r >> 1);
    const int rd0 = hd - a.rope_r; /* the first rotated dim (hd: none) */
    for (int k = tid; k < slc / 2; k += AT_THREADS) {
        const int si = k / (NT * 64), nt = (k >> 6) % NT, l16 = (k >> 2) & 15, q4 = k & 3;
        const int mt = rank + C * si, g = (l16 >> 2) * 2, t = l16 & 3;
        const int h = nt * 8 + 2 * t + (q4 & 1), d = mt * 16 + g + ((q4 >> 1) << 3);
        if (mt >= nmt || h0 + h >= a.H) continue;
        const int e0 = si * TILE + nt * 128 + (g * 4 + t) * 4 + q4; /* dim d; e0 + 16: d + 1 */
        float v0 = at_round_bf16(__fdiv_rn(oslc[e0], ssum[h]));
        float v1 = at_round_bf16(__fdiv_rn(oslc[e0 + 16], ssum[h]));
        if (d >= rd0) {
            const int ip = (d - rd0) >> 1;
            const float r0 = sa_rot0(v0, v1, cs[ip], sn[ip]);
            v1 = sa_rot1(v0, v1, cs[ip], sn[ip]);
            v0 = r0;
        }
        *(float2 *)(a.o + ((int64_t)r * a.H + h0 + h) * hd + d) = make_float2(v0, v1);
    }
}

/* q [N, H, hd], keys: entries of layout a.kvl (win: S R, ent: S cap_e) -> o [N, H, hd].
 * grid: N * ngroups * C CTAs (cluster rank fastest, then head group), AT_THREADS threads;
 * HG = 8 NT heads a CTA. q 16-byte aligned, hd <= 512, topk <= SA_SELV * AT_THREADS. */
template <int NT>
__global__ void __launch_bounds__(AT_THREADS, NT == 4 ? 1 : 2) sa_kernel(sa_args a)
{
    DSV4_PDL_WAIT();
    constexpr int HG = 8 * NT, QV = HG * 128 / AT_THREADS; /* float4s of q a thread */
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int wcnt[AT_WARPS];
    __shared__ __align__(8) uint64_t kbars[2]; /* the key buffers' mbarriers (sa_load) */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int cta = blockIdx.x / a.C, r = cta / a.ngroups, h0 = (cta - r * a.ngroups) * HG;
    const int hd = a.hd, ldk = hd + 8, hd4 = hd >> 2;
    uint16_t *qs = (uint16_t *)(smem + a.off_q);
    int *list = (int *)(smem + a.off_list);
    const uint32_t kbar = ring_sa(kbars);
    if (tid == 0) { /* seen by all after the barrier below (q, list) */
        ring_bar_init(kbar, SA_ARRIVALS);
        ring_bar_init(kbar + 8, SA_ARRIVALS);
    }
    if (a.C > 1) sa_cluster_arrive_relaxed();

    /* every global load of the prologue goes out before any is used: one memory latency, not
     * one per loop trip. Thread tid holds picks [tid per_t, tid per_t + per_t) of the row. */
    const int p = a.pos[r], sl = a.slot[r];
    const float sinkv = tid < HG ? a.sink[min(h0 + tid, a.H - 1)] : 0.0f;
    const float freq = tid < (a.rope_r >> 1) ? a.freqs[tid] : 0.0f;
    const int per_t = (a.topk + AT_THREADS - 1) / AT_THREADS, j0 = tid * per_t;
    const int32_t *sr = a.sel + (int64_t)r * a.topk + j0;
    int selv[SA_SELV];
#pragma unroll
    for (int k = 0; k < SA_SELV; k++)
        selv[k] = a.mode == 2 && k < per_t && j0 + k < a.topk ? sr[k] : -1;
    float4 qv[QV];
#pragma unroll
    for (int k = 0; k < QV; k++) {
        const int i = tid + k * AT_THREADS, h = i / hd4, hq = min(h0 + h, a.H - 1);
        const float4 *src = (const float4 *)(a.q + ((int64_t)r * a.H + hq) * hd) + (i - h * hd4);
        qv[k] = i < HG * hd4 ? *src : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int k = 0; k < QV; k++) {
        const int i = tid + k * AT_THREADS, h = i / hd4;
        if (i < HG * hd4) {
            const bool live = h0 + h < a.H;
            uint2 w;
            w.x = live ? at_bf16_bits(qv[k].x) | (uint32_t)at_bf16_bits(qv[k].y) << 16 : 0u;
            w.y = live ? at_bf16_bits(qv[k].z) | (uint32_t)at_bf16_bits(qv[k].w) << 16 : 0u;
            *(uint2 *)(qs + h * ldk + (i - h * hd4) * 4) = w;
        }
    }
    sa_row rk;
    rk.p = p;
    at_row_init(a, rk, p, sl, list);
    int n_ent = 0;
    if (a.mode == 1) {
        n_ent = at_hca_entries(a, p);
    } else if (a.mode == 2) { /* the picks sel >= 0 (and < cap_e), compacted in order */
        int cnt = 0;
#pragma unroll
        for (int k = 0; k < SA_SELV; k++) cnt += selv[k] >= 0 && selv[k] < a.cap_e;
        int x = cnt; /* inclusive scan over the warp */
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, x, o);
            if (lane >= o) x += y;
        }
        if (lane == 31) wcnt[warp] = x;
        __syncthreads();
        int off = x - cnt;
        for (int w = 0; w < AT_WARPS; w++) {
            off += w < warp ? wcnt[w] : 0;
            n_ent += wcnt[w];
        }
#pragma unroll
        for (int k = 0; k < SA_SELV; k++)
            if (selv[k] >= 0 && selv[k] < a.cap_e) list[off++] = selv[k];
    }
    rk.ns = a.W + n_ent;
    rk.nb = (rk.ns + AT_BLOCK - 1) / AT_BLOCK;
    __syncthreads(); /* q, list */
    if (a.C > 1)
        sa_cluster<NT>(a, rk, smem, kbar, r, h0, sinkv, freq);
    else
        sa_one_pass<NT>(a, rk, smem, kbar, r, h0, sinkv, freq);
}

static int align16(int x)
{
    return (x + 15) & ~15;
}

/* Shared memory layout of a plan; returns the total bytes. */
static int sa_layout(sa_args *a, int NT, int list_len)
{
    const int HG = 8 * NT, ldk = a->hd + 8, C = a->C, kb = a->kb;
    const int MTS = (a->hd / 16 + C - 1) / C, per = C * kb;
    const int nbuf = C > 1 && kb == 1 ? 1 : 2;
    int off = align16(nbuf * AT_BLOCK * ldk * 2);
    a->off_ksc = off;
    off = align16(off + nbuf * AT_BLOCK * SA_SB);
    a->off_q = off;
    off = align16(off + HG * ldk * 2);
    a->off_sp = off;
    off = align16(off + (C > 1 ? kb : 1) * 2 * HG * AT_LDS * 4);
    a->off_p = off;
    off = align16(off + HG * AT_LDP * 2);
    a->off_st = off;
    const int st = C > 1 ? (4 * per + 3) * HG + MTS * HG * 16 : 3 * HG;
    off = align16(off + st * 4);
    a->off_list = off;
    off = align16(off + list_len * 4);
    a->off_rope = off;
    off = align16(off + a->rope_r * 4);
    a->off_comb = off;
    if (C > 1) off = align16(off + per * MTS * HG * 16 * 4);
    return off;
}

/* Estimated microseconds of a plan, fitted to the H100 timings of test_gpu_attn (graph replay,
 * hd 512; within ~15% on 20 plans when fitted). CTAs run in waves of n_sm * per_sm (two CTAs on
 * an SM run 1.5x slower each). One pass: 4.8 + 2.85 a block + 0.13 a block and head (walking the
 * blocks in order, every block pays its load, scores, softmax and p.v in turn). Cluster: 6 + a
 * round 4.3 + 0.35 a head (two cluster barriers, pass 2, pushes, combine), + 3 + 0.15 a head for
 * each further block of a CTA, + 3 for each block fetched again (kb > 2). Clusters also run in
 * waves of the cap the GPU holds at once (sa_capacity; 0: unknown, no such wave counted).
 * The kernels have got faster since: against session 20's sweep of 464 plans (test_gpu_attn
 * --sweep, tools/fit_attn_plans.py) the model estimates 56% high on average, but it still picks
 * the measured best plan, or one within 5%, in every swept decode case, and refitted constants
 * picked the same plans; so these stay. The serving layout adds ~1 us a block a CTA (at_expand:
 * each of its blocks, and each block fetched again, is expanded), which every head group pays
 * for the same keys: without it the model kept Pro's one-row HG 8 C 6 kb 3 (21.4 us) over HG 16
 * C 9 (20.1; session 41). */
static double sa_cost(int64_t ctas, int per_sm, int n_sm, int C, int kb, int rounds, int NT, int nb,
                      int cap)
{
    const int HG = 8 * NT;
    int64_t w = (ctas + (int64_t)n_sm * per_sm - 1) / ((int64_t)n_sm * per_sm);
    if (C > 1 && cap > 0) { /* waves of clusters, cap of them at once */
        const int64_t wc = (ctas / C + cap - 1) / cap;
        w = wc > w ? wc : w;
    }
    const double waves = (double)w;
    const double x = 1.0; /* expanding a block (at_expand) */
    const double cta =
        C > 1 ? 6.0 + rounds * (4.3 + 0.35 * HG + (kb - 1) * (3.0 + 0.15 * HG) +
                                (kb > 2 ? kb - 2 : 0) * 3.0 + (kb + (kb > 2 ? kb - 2 : 0)) * x)
              : 4.8 + nb * (2.85 + 0.13 * HG + x);
    return waves * cta * (per_sm > 1 && ctas > n_sm ? 1.5 : 1.0);
}

typedef struct sa_plan {
    int nt, C, kb, bytes, per_sm, cap;
    double cost;
} sa_plan;

/* How many clusters of C CTAs of sa_kernel<NT> with `bytes` of shared memory (per_sm of them an
 * SM, as the cost model counts) the device holds at once (cluster_capacity; 0: none fits or the
 * query failed). A cluster lies within one GPC, so fewer may fit than the SMs suggest: on an
 * H100 (132 SMs) the step's Flash CSA call ran 7 clusters of 10 (one CTA an SM) and then the
 * eighth, and 30 of 4, then the last two, each time doubling the call (PERF.md session 12).
 * Asked once per (NT, C, per_sm) and context: cache is the context's (dsv4_cuda_attn_cap). */
static_assert(3 * (SA_CMAX + 1) * 2 <= DSV4_ATTN_CAP_SLOTS, "sa_capacity's cache");

static int sa_capacity(int *cache, int NT, int C, int per_sm, int bytes)
{
    if (C < 2 || C > SA_CMAX) return 0;
    int *slot = &cache[((NT == 1 ? 0 : NT == 2 ? 1 : 2) * (SA_CMAX + 1) + C) * 2 + (per_sm > 1)];
    if (*slot) return *slot - 1; /* count + 1; 0 unknown */
    const void *k = NT == 1   ? (const void *)sa_kernel<1>
                    : NT == 2 ? (const void *)sa_kernel<2>
                              : (const void *)sa_kernel<4>;
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg =
        cluster_cfg(dim3((unsigned)C, 1, 1), AT_THREADS, (size_t)bytes, 0, attr, C);
    int num = 0; /* the query's bytes must be allowed (each launch sets its own, sa_launch) */
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) == cudaSuccess)
        num = cluster_capacity(k, &cfg);
    else
        (void)cudaGetLastError();
    *slot = num + 1;
    return num;
}

/* The cheapest plan with NT in nts, cmin <= C <= cmax, kbmin <= kb <= kbmax that fits in optin
 * bytes; nt 0 if none. nb: blocks of the longest possible row. */
static sa_plan sa_choose(sa_args *a, int64_t N, int nb, int *cache, int optin, int n_sm,
                         const int *nts, int n_nts, int cmin, int cmax, int kbmin, int kbmax,
                         int list_len)
{
    sa_plan best = {0, 0, 0, 0, 0, 0, 0.0};
    for (int i = 0; i < n_nts; i++) {
        const int NT = nts[i], groups = (a->H + 8 * NT - 1) / (8 * NT);
        for (int C = cmin; C <= cmax; C++) {
            for (int kb = C > 1 ? kbmin : 1; kb <= (C > 1 ? kbmax : 1); kb++) {
                if (C > 1 && (C - 1) * kb >= nb) continue; /* a rank would never have a block */
                a->C = C;
                a->kb = kb;
                const int bytes = sa_layout(a, NT, list_len);
                if (bytes > optin) continue;
                const int per_sm = NT < 4 && 2 * (bytes + 2048) <= 233472 ? 2 : 1;
                const int rounds = C > 1 ? (nb + C * kb - 1) / (C * kb) : 1;
                const int cap = C > 1 ? sa_capacity(cache, NT, C, per_sm, bytes) : 0;
                if (C > 8 && cap < 1) continue; /* a non-portable size this GPU cannot place */
                const double cost =
                    sa_cost(N * groups * C, per_sm, n_sm, C, kb, rounds, NT, nb, cap);
                if (!best.nt || cost < best.cost - 1e-9) {
                    best.nt = NT;
                    best.C = C;
                    best.kb = kb;
                    best.bytes = bytes;
                    best.per_sm = per_sm;
                    best.cap = cap;
                    best.cost = cost;
                }
            }
        }
    }
    return best;
}

/* A runtime error of a launch: returned as code, and cleared so that no later CUDA_LAUNCHED
 * sees it. */
#define SA_TRY(expr, code)                                                                         \
    do {                                                                                           \
        cudaError_t sa_err_ = (expr);                                                              \
        if (sa_err_ != cudaSuccess) {                                                              \
            (void)cudaGetLastError();                                                              \
            return dsv4_fail((code), "%s failed at %s:%d: %s", #expr, __FILE__, __LINE__,          \
                             cudaGetErrorString(sa_err_));                                         \
        }                                                                                          \
    } while (0)

/* A cluster above the portable 8 that this GPU refuses is DSV4_ERR_UNSUPPORTED (the caller
 * falls back to a portable plan); any other failure DSV4_ERR_DEVICE. */
template <int NT>
static dsv4_status sa_launch(const sa_args *a, int64_t ctas, int bytes, cudaStream_t s)
{
    const dsv4_status big = a->C > 8 ? DSV4_ERR_UNSUPPORTED : DSV4_ERR_DEVICE;
    SA_TRY(cudaFuncSetAttribute(sa_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
           DSV4_ERR_DEVICE);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)ctas, 1, 1);
    cfg.blockDim = dim3(AT_THREADS, 1, 1);
    cfg.dynamicSmemBytes = (size_t)bytes;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)a->C;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = a->C > 1 ? 1 : 0;
    /* non-portable: only if the GPU can hold such a cluster (cluster_capacity also allows the
     * size on the kernel) */
    if (a->C > 8 && cluster_capacity((const void *)sa_kernel<NT>, &cfg) < 1)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "attention: no room for a cluster of %d", a->C);
    SA_TRY(cudaLaunchKernelEx(&cfg, sa_kernel<NT>, *a), big);
    return DSV4_OK;
}

/* Launches plan pl on a (whose pointers and shape are set); got as dsv4_cuda_attention_cfg. */
static dsv4_status sa_run(dsv4_backend *b, sa_args a, sa_plan pl, int64_t N, int list_len,
                          int got[6])
{
    a.C = pl.C;
    a.kb = pl.kb;
    sa_layout(&a, pl.nt, list_len);
    a.ngroups = (a.H + 8 * pl.nt - 1) / (8 * pl.nt);
    const int64_t ctas = N * a.ngroups * pl.C;
    if (ctas > 0x7fffffff)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "attention: %lld rows", (long long)N);
    got[0] = pl.nt;
    got[1] = pl.C;
    got[2] = pl.kb;
    got[3] = pl.bytes;
    got[4] = pl.per_sm;
    got[5] = pl.cap;
    cudaStream_t s = dsv4_cuda_stream(b->cuda);
    switch (pl.nt) {
    case 1:
        return sa_launch<1>(&a, ctas, pl.bytes, s);
    case 2:
        return sa_launch<2>(&a, ctas, pl.bytes, s);
    default:
        return sa_launch<4>(&a, ctas, pl.bytes, s);
    }
}

/* The sequential kernel, then the inverse RoPE as its own op when asked. */
static dsv4_status sa_sequential(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                                 const uint8_t *win, int R, int W, const uint8_t *ent,
                                 int64_t cap_e, int m, const int32_t *sel, int topk,
                                 const float *sink, const dsv4_bk_rows *rows, int rope_r,
                                 const float *rope_freqs)
{
    DSV4_TRY(dsv4_cuda_attention_seq(b, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink,
                                     rows));
    if (rope_r == 0 || rows->n == 0) return DSV4_OK;
    return dsv4_cuda_bk_rope(b, o, (int64_t)H * hd, rows, H, hd, rope_r, rope_freqs, 1, 1);
}

extern "C" dsv4_status
dsv4_cuda_attention_cfg(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                        const uint8_t *win, int R, int W, const uint8_t *ent, int64_t cap_e, int m,
                        const int32_t *sel, int topk, const float *sink, const dsv4_bk_rows *rows,
                        int rope_r, const float *rope_freqs, const int want[3], int got[6])
{
    const int64_t N = rows->n;
    DSV4_TRY(at_check(H, hd, kr, win, R, W, ent, m, sel, topk));
    if (rope_r < 0 || (rope_r & 1) || rope_r > hd || (rope_r && !rope_freqs))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "attention: rope_r %d, hd %d", rope_r, hd);
    got[0] = -1;
    got[1] = got[2] = got[3] = got[4] = got[5] = 0;
    /* the split kernel's limits: hd <= 512 (one pass keeps O in registers), the picks of a row
     * held by the prologue's registers, vector loads of q and stores of o */
    const bool split_ok = hd <= 16 * AT_WARPS * SA_MTW && (!sel || topk <= SA_SELV * AT_THREADS) &&
                          ((uintptr_t)q & 15) == 0 && ((uintptr_t)o & 7) == 0;
    if (want[0] < 0 || !split_ok)
        return sa_sequential(b, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink, rows,
                             rope_r, rope_freqs);
    if (N == 0) return DSV4_OK;
    sa_args a;
    at_args_set(&a, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink, rows);
    a.freqs = rope_freqs;
    a.rope_r = rope_r;
    const int list_len = a.mode == 2 ? topk : 0;
    /* blocks of the longest row this call can see */
    const int64_t n_ent = a.mode == 2 ? topk : a.mode == 1 ? cap_e : 0;
    const int64_t nb64 = (W + n_ent + AT_BLOCK - 1) / AT_BLOCK;
    const int nb = (int)(nb64 < (1 << 20) ? nb64 : (1 << 20));

    int dev, optin, n_sm;
    CUDA_TRY(cudaGetDevice(&dev));
    CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    static const int all_nt[3] = {1, 2, 4};
    const int one_nt[1] = {want[0]};
    const bool forced = want[0] > 0;
    if (forced && want[0] != 1 && want[0] != 2 && want[0] != 4)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "attention: %d heads a CTA", 8 * want[0]);
    const int *nts = forced ? one_nt : all_nt, n_nts = forced ? 1 : 3;
    const int cw = want[1] < 0 ? -want[1] : want[1], kw = want[2] < 0 ? -want[2] : want[2];
    const int cmax = cw > 0 ? (cw < SA_CMAX ? cw : SA_CMAX) : SA_CMAX;
    const int kbmax = kw > 0 ? (kw < SA_KBMAX ? kw : SA_KBMAX) : SA_KBMAX;
    const int cmin = want[1] < 0 ? cmax : 1, kbmin = want[2] < 0 ? kbmax : 1;
    sa_plan pl = sa_choose(&a, N, nb, dsv4_cuda_attn_cap(b->cuda), optin, n_sm, nts, n_nts, cmin,
                           cmax, kbmin, kbmax, list_len);
    if (!pl.nt) {
        if (forced)
            return dsv4_fail(DSV4_ERR_UNSUPPORTED, "attention: no plan with %d heads a CTA fits",
                             8 * want[0]);
        return sa_sequential(b, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink, rows,
                             rope_r, rope_freqs);
    }
    const dsv4_status st = sa_run(b, a, pl, N, list_len, got);
    if (st != DSV4_ERR_UNSUPPORTED || pl.C <= 8) return st;
    /* a cluster above the portable 8 that this GPU cannot place: the best portable plan */
    if (cmin > 8) return st;
    pl = sa_choose(&a, N, nb, dsv4_cuda_attn_cap(b->cuda), optin, n_sm, nts, n_nts, cmin, 8, kbmin,
                   kbmax, list_len);
    if (!pl.nt) return st;
    return sa_run(b, a, pl, N, list_len, got);
}

extern "C" dsv4_status dsv4_cuda_bk_attention(dsv4_backend *b, float *o, const float *q, int H,
                                              int hd, int kr, const uint8_t *win, int R, int W,
                                              const uint8_t *ent, int64_t cap_e, int m,
                                              const int32_t *sel, int topk, const float *sink,
                                              const dsv4_bk_rows *rows, int rope_r,
                                              const float *rope_freqs)
{
    static const int want[3] = {0, 0, 0};
    int got[6];
    return dsv4_cuda_attention_cfg(b, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink,
                                   rows, rope_r, rope_freqs, want, got);
}
