/*
 * linear_f8w.cu - FP8 projections at 5..128 rows of x on FP8 wgmma from a shared-memory ring
 * (F8W): y = x W^T with e4m3 weights in 128 x 128 scale blocks, x quantised per token and
 * 128-column block to e4m3 codes times a power of two. The batched-decode attention projections
 * (wq_b, wo_b, the indexer's wq_b), whose x is the engine's act_quant output.
 *
 * Why: FMM (linear_fp8mma.cu) keeps the weights in registers one step ahead and converts them
 * to f16 in registers: latency-bound (ncu: DRAM 21% busy, a warp issues every ~10 cycles), 1.5-
 * 3.5x cuBLASLt at N = 16..64. Here (DeepGEMM's shape, swapped: the weights are wgmma's 64-row A
 * operand, the tokens the narrow N one) one producer warp streams each 64-row tile's weights and
 * the tokens' codes through a ring of stages in shared memory (TMA copies completing on an
 * mbarrier; 96-128 KB of weights in flight per SM, no registers held by loads)
 * and one consumer warpgroup multiplies them by wgmma.m64nNk32.e4m3 straight from shared memory.
 *
 * x: a prologue kernel (f8w_quant) writes, per 128-column block kb and token, s = 2^ceil(log2(
 * max(amax, 1e-4) / 448)) (act_quant's scale, quant_dev.cuh) and the codes x / s as e4m3, and
 * per block and 32 tokens whether every token's codes are exact (e4m3(x / s) s == x for all 128
 * columns; a CTA per block and 32 tokens, each warp's four rows loaded before any is converted:
 * session 13, wq_b at N = 128 44.6 -> 37.1 us in all, the prologue alone 7.4 -> 4.2 us in ncu). A
 * tile whose blocks are all exact takes the wgmma path; any other tile (x not an act_quant output,
 * NaN, ...) is computed by the consumer warpgroup in plain f32 (exact products, f32 sums: within
 * test_gpu_linear's f32 bound), so that no x is ever rounded; that path is a correctness net, not
 * a fast one (~12 ms for Flash's wq_b at N = 64): the dispatcher sends F8W only the shapes of the
 * engine's act_quant inputs (linear_q: wq_b, wo_b, indexer wq_b), which are always exact; wo_a's
 * x (the attention output, bf16, not quantised) is not, so grouped calls stay on FMM. The codes
 * live in a device workspace of the context, one per stream (main, side: the indexer's wq_b runs
 * beside the query chain; context.cu allocates them); kernels of one stream follow each other
 * under PDL only after the previous grid completed, so a prologue never overwrites codes still
 * being read.
 *
 * Numerics (the official fp8_gemm and DeepGEMM's): per 128-K block the block's four k32 wgmmas
 * into a fresh f32 accumulator (e4m3 x e4m3 products exact; the tensor cores' sum inside a block
 * keeps fewer bits than f32), then total = fmaf(block sum, weight block scale * s, total): f32
 * promotion per block with the 128 x 128 weight scale and the 1 x 128 activation scale.
 * Accumulation model for the bound (test_gpu_linear): a k32 wgmma adds its 32 exact products and
 * the running accumulator (33 addends) aligned to the largest exponent and truncated to 14
 * significant bits (DeepSeek-V3 report 3.3.2: "around 14 bits"), so each addend is off by less
 * than 2^-13 of the largest, <= 2^-13 S_blk (S_blk = sum |w x| of the block, the accumulator being
 * bounded by it too); four k32 steps a block: |err_blk| <= 4 * 33 * 2^-13 * S_blk. Summed over the
 * blocks with their (power-of-two x, positive w) scales: |err| <= 132 * 2^-13 * S, plus the f32
 * promotion and K-split sums (< 1e-5 S as for every other kernel).
 *
 * K split: tiles (64 rows of one group) x K slices; a grid of more tiles than SMs is persistent
 * (CTA i takes tiles i, i + grid, ...; no split) with 2 CTAs an SM (264 CTAs, each half the
 * shared memory: two producers and two consumer warpgroups an SM, each one's waits covered by the
 * other's work), fewer tiles are split over the CTAs of a cluster (1, 1, KS) and the slices'
 * partials added in rank order through distributed shared memory (FMM's fm_cluster_store scheme):
 * deterministic, no atomics; there a CTA (one an SM) has two consumer warpgroups up to 64 tokens,
 * taking the tile's blocks in turn, their sums added in a fixed order at the end.
 *
 * PDL: the producer issues the first tile's weight copies before griddepcontrol.wait (cp.async,
 * not __ldg: pdl.cuh), the codes only after it.
 */
#include "backend/cuda/linear_common.cuh"
#include "backend/cuda/quant_dev.cuh"
#include "backend/cuda/wgmma_ring.cuh"

#include <string.h>

/* Ring stage: A = 64 weight rows x 128 K bytes, B = TOK tokens x 128 codes, each written by one
 * TMA copy (2-D tensor maps, 128-byte swizzle: row r at 128 r, its 16-byte chunk c at c ^ r % 8,
 * wgmma's K-major SWIZZLE_128B layout; k32 step q starts 32 q bytes into the rows), and the TOK
 * x scales (f32, a 1-D bulk copy) in an array of their own. */
enum {
    F8_BM = RING_BM,
    F8_KS_MAX = 8,
    F8_SMEM = 227 * 1024, /* one CTA an SM */
    F8_SMEM2 = 113 * 1024 /* two: (228 - 2 x 1 reserved) / 2 KB */
};
/* The workspace: x up to F8_KMAX columns (groups * cols) of 128 tokens, per stream. */
enum { F8_KMAX = 32768, F8_TOKMAX = 128, F8_NKB = F8_KMAX / 128 };

/* A workspace (per context and stream: context.cu): codes [kb][TOK][128] e4m3, then scales
 * [kb][TOK] f32, then exact [kb][F8_QCH] (the codes of block kb's tokens 32 c .. 32 c + 31 exact;
 * chunks past TOK unused). */
enum { F8_QTOK = 32, F8_QCH = F8_TOKMAX / F8_QTOK };
enum {
    F8_WS_CODES = F8_NKB * F8_TOKMAX * 128,
    F8_WS_SCALES = F8_NKB * F8_TOKMAX * 4,
    F8_WS_BYTES = F8_WS_CODES + F8_WS_SCALES + F8_NKB * F8_QCH * 4
};
struct f8_ws {
    uint8_t *codes;
    float *scales;
    int *exact;
};

static f8_ws f8_ws_at(void *base)
{
    f8_ws w;
    w.codes = (uint8_t *)base;
    w.scales = (float *)(void *)(w.codes + F8_WS_CODES);
    w.exact = (int *)(void *)(w.codes + F8_WS_CODES + F8_WS_SCALES);
    return w;
}

size_t dsv4_lin_f8w_ws_bytes(void)
{
    return F8_WS_BYTES;
}

/* CPS CTAs an SM (1 or 2): each CTA its share of the SM's shared memory. */
template <int TOK, int CPS = 1> struct f8_shape {
    static constexpr int SMEM = CPS == 1 ? F8_SMEM : F8_SMEM2;
    static constexpr int A = F8_BM * 128, B = TOK * 128, S = TOK * 4;
    static constexpr int STAGE = A + B;          /* a multiple of 1024 (the swizzle's alignment) */
    static constexpr int PART = TOK * F8_BM * 4; /* the K split's partial [TOK][64] f32 */
    /* The partial has a region of its own up to 64 tokens (the layout measured there); at 128 it
     * lies over the ring's start (its 32 KB would cost two stages): a split CTA has one tile and
     * writes it once the ring is done. */
    static constexpr bool OVER = TOK > 64;
    static constexpr int OWN = OVER ? 0 : PART;
    static constexpr int NST_FIT = (SMEM - OWN - 2048) / (STAGE + S);
    static constexpr int NST = NST_FIT > 16 ? 16 : NST_FIT;
    /* ring, scales [NST][TOK], partial (OWN), barriers; 1024 bytes to align the base */
    static constexpr int BYTES = 1024 + NST * (STAGE + S) + OWN + 2 * NST * 8;
    static_assert(NST >= 4 && STAGE % 1024 == 0, "a ring of at least 4 aligned stages");
    static_assert(!OVER || NST * STAGE >= PART, "the partial fits over the ring");
    static_assert(BYTES <= SMEM, "fits its share of the SM");
};

/* Measured (H100, test_gpu_linear --fmm-bench, graph replay, act_quant'd x, us, N = 8 / 16 / 32
 * / 64; old = MMV at N <= 16, FMM above): Flash wq_b 24.3 / 33.8 / 28.3 / 44.5 -> 19.2 / 22.1 /
 * 24.1 / 29.3, wo_b 27.2 / 45.0 / 29.7 / 46.3 -> 18.7 / 22.4 / 23.6 / 28.1, indexer wq_b 12.0 /
 * 16.3 / 13.1 / 19.9 -> 7.9 / 9.0 / 10.0 / 12.5; wo_a (8 groups, forced: its x is not
 * act_quant'd in the engine) 27.4 / 37.7 / 30.3 / 47.0 -> 17.3 / 20.6 / 22.2 / 26.4. Slower on
 * the small matrices that need a split of 4-8 (wq_a 1024 x 4096, the shared expert's 2048 x 4096:
 * up to 1.4x). cuBLASLt on the same shapes (dsv4 bench --gemms, N = 64): 17.1, 20.3, 6.9, 15.3.
 * Tried in the same session and not kept: the ring filled by cp.async 16-byte copies from the
 * producer warp (cp.async.mbarrier.arrive): 0.7-0.9x of FMM (wq_b N = 64 52.6 us; too few bytes
 * in flight through the LSU path); two consumer warpgroups per CTA (128-row tiles, one B for
 * both): wq_b 25.8 at N = 64 but wo_b 39.7, the indexer's wq_b 16.6 (clusters of 4, and 2-slice
 * splits of 4 blocks), engine step at batch 16 / 32 / 64 -2.8 / -0.7 / -1.6% against -3.5 / -1.2 /
 * -2.0% with one. */

/* ---- the prologue: x -> codes, scales, exact flags ------------------------------------------- */
/* x [N, nkb 128] (ldx) -> workspace ws; grid (nkb, TOK / 32 rounded up), 256 threads: warp w the
 * tokens 32 y + w + 8 i (i < 4, < TOK; past N: zero codes, scale 1), its four rows of x loaded
 * before any is converted (one round trip to L2, not four). aq (dsv4_cuda_bk_linear_aq): x is
 * not act_quant'd yet; the call is of act_quant(x), whose bf16 rounding comes first here, and its
 * codes and scale are these (RNE to e4m3, saturating: quant_dev.cuh dev_round_e4m3), so every
 * block is the input as coded (flagged exact). */
__global__ void __launch_bounds__(256)
    f8w_quant(const float *x, int64_t ldx, int N, int TOK, f8_ws ws, int aq)
{
    DSV4_PDL_WAIT();
    const int kb = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = (int)blockIdx.y * F8_QTOK + warp;
    float4 v[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int n = n0 + 8 * i;
        v[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (n < N && n < TOK)
            v[i] = *(const float4 *)(const void *)(x + n * ldx + (int64_t)kb * 128 + 4 * lane);
        if (aq) {
            v[i].x = dev_round_bf16(v[i].x), v[i].y = dev_round_bf16(v[i].y);
            v[i].z = dev_round_bf16(v[i].z), v[i].w = dev_round_bf16(v[i].w);
        }
    }
    int bad = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int n = n0 + 8 * i;
        if (n >= TOK) break;
        float m = fmaxf(fmaxf(fabsf(v[i].x), fabsf(v[i].y)), fmaxf(fabsf(v[i].z), fabsf(v[i].w)));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        const float s = n < N ? dev_scale_fp8(m) : 1.0f, inv = 1.0f / s; /* powers of two */
        const float f[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
        uint32_t word = 0u;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const __nv_fp8_storage_t c =
                __nv_cvt_float_to_fp8(f[k] * inv, __NV_SATFINITE, __NV_E4M3);
            const __half_raw h = __nv_cvt_fp8_to_halfraw(c, __NV_E4M3);
            /* exact: the code times s gives x back (NaN and inf never do) */
            bad |= !(__half2float(__half(h)) * s == f[k]);
            word |= (uint32_t)c << (8 * k);
        }
        *(uint32_t *)(void *)(ws.codes + ((int64_t)kb * TOK + n) * 128 + 4 * lane) = word;
        if (lane == 0) ws.scales[(int64_t)kb * TOK + n] = s;
    }
    bad = __syncthreads_or(bad) && !aq;
    if (threadIdx.x == 0) ws.exact[kb * F8_QCH + blockIdx.y] = !bad;
}

/* Whether every x block of the tile's slice is exact by the prologue's flags, over the chunks of
 * TOK tokens (warp-uniform; any warp gets the same). */
template <int TOK>
__device__ __forceinline__ bool f8_tile_exact(const int *exact, const ring_tile &u)
{
    constexpr int CH = (TOK + F8_QTOK - 1) / F8_QTOK;
    const int lane = threadIdx.x & 31, n = (u.kb1 - u.kb0) * CH;
    int bad = 0;
    for (int e = lane; e < n; e += 32) bad |= !exact[(u.kbg + u.kb0 + e / CH) * F8_QCH + e % CH];
    return !__any_sync(0xffffffffu, bad);
}

/* d [NT][4] (+)= A (64 x k32 at descriptor da) . B (k32 x 8 NT at db), e4m3, f32 accumulation;
 * acc = 0: d = A . B. */
template <int NT>
__device__ __forceinline__ void f8_wgmma(float (&d)[NT][4], uint64_t da, uint64_t db, int acc);

#define F8_HEAD(ACC, SHAPE) RING_HEAD(ACC, SHAPE, "e4m3.e4m3")
#define F8_TAIL             "p, 1, 1;\n}\n"

RING_WGMMAS(f8_wgmma, "k32", F8_HEAD, F8_TAIL)

/* ---- the kernel -------------------------------------------------------------------------------
 */
typedef struct f8_plan {
    int rtiles, tiles; /* 64-row tiles per group, in all */
    int nkb, spc;      /* 128-column blocks of a group's row, per K slice */
    f8_ws ws;          /* the stream's workspace */
} f8_plan;

/* The exact f32 path's sum (ring_fallback) of weight row wrow (its e4m3 bytes w) times x over
 * the slice's blocks: per block the f32 sum of the products, times the weight block's scale. */
struct f8_row_sum {
    const lin_args &a;
    const ring_tile &u;
    __device__ float operator()(const uint8_t *w, const float *x, int64_t wrow) const
    {
        float tot = 0.0f;
        for (int kb = u.kb0; kb < u.kb1; kb++) {
            float s = 0.0f;
            for (int c = kb * 128; c < kb * 128 + 128; c++) s = fmaf(x[c], lin_e4m3(w[c]), s);
            tot = fmaf(s, lin_scale(a, wrow / 128, kb), tot);
        }
        return tot;
    }
};

/* y [N, nrows per group] = x . W^T on FP8 wgmma, N <= TOK. Grid (CTAs, 1, KS), clusters (1, 1,
 * KS): KS == 1: CTA i takes tiles i, i + grid, ..; KS > 1: one tile per CTA (grid.x = tiles),
 * slice z. 128 W + 32 threads: warps 0..4 W - 1 the W consumer warpgroups (each 64 rows x TOK
 * tokens), warp 4 W the producer (one lane issues the copies). tw: the weight as [rows][row_bytes]
 * bytes, boxes 128 x 64; tx: the workspace's codes [F8_NKB TOK][128], boxes 128 x TOK. Dynamic
 * shared memory f8_shape<TOK, CPS>::BYTES: ring [NST][A | B], scales [NST][TOK], partial (at 128
 * tokens over the ring's start), barriers. CPS CTAs an SM (launch bounds; 2: half the ring each,
 * for a grid of 2 x 132 persistent CTAs: two consumer warpgroups an SM, one's waits hidden by the
 * other's work).
 *
 * The ring's item `it` (the CTA's it-th (tile, block) of exact tiles) uses stage it % NST:
 * full[s] completes when its A, B and scales have landed (one producer arrival + the bytes),
 * empty[s] when the 128 consumers have read it. The first tile's first `pre` weight copies are
 * issued before the PDL wait (their bytes expected, the arrival after the wait with the codes);
 * if that tile turns out inexact, both sides still pass its `pre` items (codes copied, nothing
 * multiplied) so that every copy lands before the stage is reused.
 *
 * W consumer warpgroups (2: up to 64 tokens, 288 threads; warps 0-7, the producer warp 8): item k
 * is group k % 2's (ring_own; the ring even, so each stage serves one group: 128 arrivals, and a
 * group's parity waits never run a phase ahead of the stage's previous use, which it consumed
 * itself), and at the tile's end group 1 hands its sum to group 0 through the partial's region
 * (ring_pair_hand), which adds it to its own (a fixed order). */
template <int TOK, int CPS, int W>
__global__ void __launch_bounds__(128 * W + 32, CPS)
    f8w_kernel(const __grid_constant__ CUtensorMap tw, const __grid_constant__ CUtensorMap tx,
               lin_args a, f8_plan p)
{
    DSV4_PDL_LATE();
    typedef f8_shape<TOK, CPS> S;
    /* two groups: an even ring, so that each stage serves one group (item k: group k % 2) */
    constexpr int NT = TOK / 8, NST = W == 2 ? S::NST & ~1 : S::NST, THREADS = 128 * W + 32;
    static_assert(W == 1 || (W == 2 && !S::OVER), "two groups hand over through the partial");
    extern __shared__ unsigned char f8_raw[];
    unsigned char *f8_sm = f8_raw + ((1024 - (ring_sa(f8_raw) & 1023)) & 1023);
    const uint32_t ring = ring_sa(f8_sm), scl = ring + NST * S::STAGE;
    /* the K split's partial: after the scales, or over the ring (f8_shape) */
    float *part = (float *)(void *)(f8_sm + (S::OVER ? 0 : NST * (S::STAGE + S::S)));
    const uint32_t bars = ring + NST * (S::STAGE + S::S) + S::OWN;
    /* full[s] at bars + 8 s (1 arrival + bytes), empty[s] at bars + 8 (NST + s) (128) */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool split = gridDim.z > 1;
    ring_bars_init(bars, NST);
    const int first = ring_first(p.rtiles, p.spc, p.nkb, p.tiles, NST, blockIdx.x);

    if (warp == 4 * W) { /* ---- producer ---- */
        const bool lead = lane == 0;
        if (lead) ring_prefetch_maps(&tw, &tx);
        /* the first tile's weights before the wait (they do not depend on the previous grid) */
        if (lead && first > 0) {
            const ring_tile u = ring_at(p.rtiles, p.spc, p.nkb, blockIdx.x);
            const int row = (int)(a.row0 + u.g * a.nrows + u.r0);
            for (int i = 0; i < first; i++) {
                ring_expect_tx(bars + 8 * i, S::A);
                ring_tma(ring + i * S::STAGE, &tw, (u.kb0 + i) * 128, row, bars + 8 * i);
            }
        }
        DSV4_PDL_WAIT();
        int it = 0; /* items through the ring */
        for (int t = blockIdx.x; t < p.tiles; t += gridDim.x) {
            const ring_tile u = ring_at(p.rtiles, p.spc, p.nkb, t);
            const bool exact = f8_tile_exact<TOK>(p.ws.exact, u);
            if (!exact && t != (int)blockIdx.x) continue; /* the consumers compute it in f32 */
            const int row = (int)(a.row0 + u.g * a.nrows + u.r0);
            const int n_it = exact ? u.kb1 - u.kb0 : first;
            for (int i = 0; i < n_it; i++, it++) {
                const int s = it % NST, ph = (it / NST) & 1, kb = u.kb0 + i;
                const uint32_t full = bars + 8 * s, st = ring + s * S::STAGE;
                if (it >= NST && lead) ring_bar_wait(bars + 8 * (NST + s), ph ^ 1);
                if (lead) {
                    const bool have_a = it < first && t == (int)blockIdx.x;
                    ring_arrive_tx(full, (have_a ? 0 : S::A) + S::B + S::S);
                    if (!have_a) ring_tma(st, &tw, kb * 128, row, full);
                    ring_tma(st + S::A, &tx, 0, (int)((u.kbg + kb) * TOK), full);
                    ring_bulk(scl + s * S::S, p.ws.scales + (u.kbg + kb) * TOK, S::S, full);
                }
            }
        }
    } else { /* ---- consumers: group wg, rows 16 cw + g, + 8; tokens 8 nt + 2 t, + 1 ---- */
        const int wg = warp >> 2, cw = warp & 3;
        DSV4_PDL_WAIT();
        const int g = lane >> 2, tq = lane & 3;
        int it = 0;
        for (int t = blockIdx.x; t < p.tiles; t += gridDim.x) {
            const ring_tile u = ring_at(p.rtiles, p.spc, p.nkb, t);
            if (!f8_tile_exact<TOK>(p.ws.exact, u)) {
                ring_inexact(a, u, t == (int)blockIdx.x, first, bars, NST, wg, W, split, part, it,
                             f8_row_sum{a, u});
                continue;
            }
            const ring_rows rw = ring_rows_at(a, u, cw, g);
            float acc[NT][4];
            ring_zero<NT>(acc);
            for (int kb = u.kb0 + ring_own(it, wg, W); kb < u.kb1; kb += W) {
                const int i = it + kb - u.kb0, s = i % NST, ph = (i / NST) & 1;
                const float ws0 = lin_scale(a, rw.sr0, kb), ws1 = lin_scale(a, rw.sr1, kb);
                const uint32_t st = ring + s * S::STAGE;
                ring_bar_wait(bars + 8 * s, ph);
                float tmp[NT][4];
                asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
                for (int q = 0; q < 4; q++)
                    f8_wgmma<NT>(tmp, ring_desc(st + 32 * q), ring_desc(st + S::A + 32 * q), q > 0);
                asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
                ring_wgmma_wait<NT>(tmp);
                const float *xs = (const float *)(const void *)(f8_sm + NST * S::STAGE + s * S::S);
                float x0[NT], x1[NT];
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    x0[nt] = xs[nt * 8 + 2 * tq], x1[nt] = xs[nt * 8 + 2 * tq + 1];
                ring_bar_arrive(bars + 8 * (NST + s)); /* the stage is free */
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    acc[nt][0] = fmaf(tmp[nt][0], ws0 * x0[nt], acc[nt][0]);
                    acc[nt][1] = fmaf(tmp[nt][1], ws0 * x1[nt], acc[nt][1]);
                    acc[nt][2] = fmaf(tmp[nt][2], ws1 * x0[nt], acc[nt][2]);
                    acc[nt][3] = fmaf(tmp[nt][3], ws1 * x1[nt], acc[nt][3]);
                }
            }
            it += u.kb1 - u.kb0;
            const bool handed = W == 2 && ring_pair_hand<NT>(acc, part, wg, tq, cw, g);
            if (!handed) ring_store<NT, S::OVER>(a, u, acc, split, part, rw, tq, cw, g);
            if (W == 2) ring_pair_sync();
        }
    }
    if (split) ring_split_end<THREADS>(a, p.rtiles, p.spc, p.nkb, p.tiles, blockIdx.x, part);
}

typedef void (*f8w_fn)(const CUtensorMap, const CUtensorMap, lin_args, f8_plan);

int dsv4_lin_f8w_ok(const lin_args *a)
{
    return a->fmt == DSV4_FORMAT_FP8 && a->skind != LIN_SCALE_NONE &&
           ring_ok(a, F8_TOKMAX, F8_KMAX);
}

/* The grid (wgmma_ring.cuh ring_make_plan). */
static void f8_make_plan(const lin_args *a, f8_plan *p, int *ks)
{
    ring_make_plan(a, F8_KS_MAX, &p->rtiles, &p->tiles, &p->nkb, &p->spc, ks);
}

template <int TOK, int CPS, int W>
static dsv4_status f8_launch(const lin_args *a, const f8_plan *p, int ks, cudaStream_t st)
{
    const f8w_fn fn = f8w_kernel<TOK, CPS, W>;
    const int smem = f8_shape<TOK, CPS>::BYTES;
    CUtensorMap tw, tx;
    DSV4_TRY(ring_map(&tw, a->data, 0, (uint64_t)(a->row0 + a->groups * a->nrows),
                      (uint64_t)a->row_bytes, (uint64_t)a->row_bytes, F8_BM, "f8w"));
    DSV4_TRY(ring_map(&tx, p->ws.codes, 0, (uint64_t)F8_NKB * TOK, 128, 128, TOK, "f8w"));
    return ring_launch(fn, tw, tx, a, p, ks, CPS, 128 * W + 32, smem, st);
}

/* f8_launch for TOK = tok (8, 16, 32, 64, 128) at CPS CTAs an SM with W consumer groups up to 64
 * tokens (128 tokens: one group, its partial over the ring). */
template <int CPS, int W>
static dsv4_status f8_launch_tok(int tok, const lin_args *a, const f8_plan *p, int ks,
                                 cudaStream_t st)
{
    switch (tok) {
    case 8:
        return f8_launch<8, CPS, W>(a, p, ks, st);
    case 16:
        return f8_launch<16, CPS, W>(a, p, ks, st);
    case 32:
        return f8_launch<32, CPS, W>(a, p, ks, st);
    case 64:
        return f8_launch<64, CPS, W>(a, p, ks, st);
    default:
        return f8_launch<128, CPS, 1>(a, p, ks, st);
    }
}

/* The kernel of a call (H100, dsv4 bench --gemms, us, prologue included; session 13, through the
 * env knobs of commits 94c560a and 73dcd0b):
 * - more tiles than SMs (persistent, no K split: Flash's wq_b, 512 tiles): 2 CTAs an SM, 264
 *   persistent CTAs, one consumer group each. wq_b at N = 8 / 16 / 64 / 128, 1 -> 2 an SM: 19.6 /
 *   21.6 / 27.7 / 36.9 -> 17.6 / 18.3 / 22.0 / 26.7.
 * - else (one tile a CTA, K split or not: wo_b, the indexer's wq_b, the shared expert's w2): 1 CTA
 *   an SM with two consumer groups up to 64 tokens (one at 128: its 214 registers). wo_b at N =
 *   16 / 32 / 64, one -> two groups: 20.9 / 23.7 / 26.6 -> 19.7 / 21.2 / 25.4; the indexer's wq_b
 *   unchanged (9.3 / 10.4 / 11.6). 2 CTAs an SM there instead (twice the K split in 264 CTAs):
 *   slower (wo_b 20.7 -> 25.4 at N = 16, 26.4 -> 33.0 at 64; the indexer's wq_b 11.5 -> 15.2). */
dsv4_status dsv4_lin_launch_f8w(const lin_args *a, void *ws, cudaStream_t st)
{
    const int tok = ring_tok(a->N);
    f8_plan p;
    int ks;
    f8_make_plan(a, &p, &ks);
    p.ws = f8_ws_at(ws);
    const int nkb_all = (int)(a->groups * p.nkb);
    const dim3 qgrid((unsigned)nkb_all, (unsigned)((tok + F8_QTOK - 1) / F8_QTOK));
    f8w_quant<<<qgrid, 256, 0, st>>>(a->x, a->ldx, (int)a->N, tok, p.ws, a->aq);
    CUDA_TRY(cudaGetLastError());
    if (p.tiles > (int)LIN_SMS) /* persistent (ks == 1): 2 CTAs an SM */
        return f8_launch_tok<2, 1>(tok, a, &p, ks, st);
    return f8_launch_tok<1, 2>(tok, a, &p, ks, st); /* one tile a CTA: two consumer groups */
}
