/*
 * attn_seq.cu - the sequential CUDA attention kernel: the first version of dsv4_bk_attention
 * (backend.h), now the fallback of bk_attn.cu for shapes its split kernel does not take (head
 * dims above 512) and the yardstick it is timed and bit-compared against (tests/test_gpu_attn.c).
 * Same arithmetic as the CPU reference (bk_attn.c, ops_faithful.c dsv4_op_faithful_attend_head)
 * up to f32 summation order.
 *
 * One CTA per (row, group of HG = 8 or 16 heads). All heads share one KV head, so a block of 64
 * key slots is staged once in shared memory (cp.async, double-buffered; the cached entries of
 * the serving layout, kv_layout.h, expanded there to bf16 rows: at_expand) and serves every
 * head of the group, as K and as V. Per block, in slot order as the reference:
 *   S^T [64 keys, HG] = K [64, hd] . Q^T       (bf16 mma.sync, f32 accumulation)
 *   per head: block max, running max m (the sink is not part of it), alpha = exp(m_old - m),
 *             e = exp(s - m) summed in f32, p = bf16(e)
 *   O^T [hd, HG] = O^T * alpha + V^T [hd, 64] . P^T   (bf16 mma, f32; p and v are bf16 exact)
 * then the sink joins the denominator and o = bf16(O / sum). The 64-slot block boundaries, the
 * running max and the bf16 rounding of e are the reference's, so only the f32 sums differ.
 * Precondition: q holds bf16-exact values (faithful mode rounds q to bf16 before attention);
 * other values are rounded to bf16 here. A CSA pick >= cap_e counts as -1 here (the CPU fails).
 *
 * Measured (H100, test_gpu_attn, Flash H 64 hd 512, 640 slots a row): N 1 59 us, N 64 155 us;
 * Pro H 128 N 4 98 us: latency-bound, each CTA walks its row's blocks in order and every head
 * group refetches the same keys; N 1 uses only 8 SMs. With the serving layout's expansion (~1 us
 * a block): N 1 56 -> 66 us, N 64 150 -> 163, Pro N 4 95 -> 111.
 */
#include "backend/cuda/attn.cuh"
#include "backend/cuda/pdl.cuh"

/* ---- attention ------------------------------------------------------------------------------ */
typedef struct attn_args {
    float *o;
    const float *q, *sink;
    const uint8_t *win, *ent; /* entries of layout kvl (kv_layout.h) */
    const int32_t *sel, *slot, *pos;
    int64_t cap_e;
    int H, hd, R, W, m, topk, mode, ngroups, stages; /* mode: 0 window only, 1 HCA, 2 CSA */
    dsv4_kv_layout kvl;
    int stoff; /* where a key tile row stages its entry's data row (at_stage_off) */
    float scale;
    /* dynamic shared memory offsets in bytes (keys at 0) */
    int off_ksc, off_q, off_o, off_sp, off_p, off_st, off_list;
} attn_args;

/* The row's slot list: slots [0, count) are window positions lo .. p (oldest first), [count, W)
 * empty, [W, W + n_ent) entries (list[] for CSA, 0 .. n_ent-1 for HCA). */
typedef struct row_keys {
    int64_t wbase, ebase; /* entry indices (at_row_init) */
    const int *list;
    int lo, count, ns;
} row_keys;

/* Stages the entries of slots [64 b, 64 b + 64) for at_expand: data rows into their rows of the
 * tile dst [64, hd + 8] (bf16 once expanded), scale rows into scl [64][scale_bytes]; empty
 * slots are left to at_expand (zeros). One cp.async group. */
__device__ static inline void load_block(const attn_args &a, const row_keys &rk, uint16_t *dst,
                                         uint8_t *scl, int b)
{
    const int dpr = a.kvl.data_bytes >> 4, spr = a.kvl.scale_bytes >> 3; /* 16 B, 8 B pieces */
    const int rowb = 2 * (a.hd + 8);
    for (int c = threadIdx.x; c < AT_BLOCK * dpr; c += AT_THREADS) {
        const int k = c / dpr, col = c - k * dpr;
        int64_t e;
        const uint8_t *buf = at_entry(a, rk, b * AT_BLOCK + k, &e);
        if (buf)
            at_cp_async16((uint8_t *)dst + k * rowb + a.stoff + 16 * col,
                          buf + dsv4_kv_data_off(&a.kvl, e) + 16 * col, 16);
    }
    for (int c = threadIdx.x; c < AT_BLOCK * spr; c += AT_THREADS) {
        const int k = c / spr, col = c - k * spr;
        int64_t e;
        const uint8_t *buf = at_entry(a, rk, b * AT_BLOCK + k, &e);
        if (buf)
            at_cp_async8(scl + k * a.kvl.scale_bytes + 8 * col,
                         buf + dsv4_kv_scale_off(&a.kvl, e) + 8 * col);
    }
    at_cp_commit();
}

/* q [N, H, hd], keys: entries of layout a.kvl (win: S R, ent: S cap_e) -> o [N, H, hd].
 * grid: N * ngroups CTAs (head group fastest), AT_THREADS threads; HG = 8 * NT heads. */
template <int NT> __global__ void __launch_bounds__(AT_THREADS, 1) attn_kernel(attn_args a)
{
    DSV4_PDL_WAIT();
    constexpr int HG = 8 * NT;
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int wcnt[AT_WARPS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int r = blockIdx.x / a.ngroups, h0 = (blockIdx.x - r * a.ngroups) * HG;
    const int hd = a.hd, ldk = hd + 8, ldo = hd + 4;
    uint16_t *ks = (uint16_t *)smem;             /* [stages][64][ldk] keys */
    uint8_t *ksc = smem + a.off_ksc;             /* [stages][64][scale_bytes] their scales */
    uint16_t *qs = (uint16_t *)(smem + a.off_q); /* [HG][ldk] q (bf16) */
    float *os = (float *)(smem + a.off_o);       /* [HG][ldo] running output */
    float *sp = (float *)(smem + a.off_sp);      /* [2][HG][AT_LDS] partial scores */
    uint16_t *ps = (uint16_t *)(smem + a.off_p); /* [HG][AT_LDP] bf16(e) */
    float *st = (float *)(smem + a.off_st);      /* max [HG], sum [HG], alpha [HG] */
    int *list = (int *)(smem + a.off_list);      /* [topk] CSA picks, compacted */

    row_keys rk;
    const int p = a.pos[r], sl = a.slot[r];
    at_row_init(a, rk, p, sl, list);
    int n_ent = 0;
    if (a.mode == 1) {
        n_ent = at_hca_entries(a, p);
    } else if (a.mode == 2) { /* ordered compaction of the picks sel >= 0 (and < cap_e) */
        const int32_t *sr = a.sel + (int64_t)r * a.topk;
        for (int j0 = 0; j0 < a.topk; j0 += AT_THREADS) {
            const int j = j0 + tid;
            const int v = j < a.topk ? sr[j] : -1;
            const bool ok = v >= 0 && v < a.cap_e;
            const unsigned bal = __ballot_sync(0xffffffffu, ok);
            if (lane == 0) wcnt[warp] = __popc(bal);
            __syncthreads();
            int off = n_ent, tot = 0;
            for (int w = 0; w < AT_WARPS; w++) {
                off += w < warp ? wcnt[w] : 0;
                tot += wcnt[w];
            }
            if (ok) list[off + __popc(bal & ((1u << lane) - 1u))] = v;
            n_ent += tot;
            __syncthreads();
        }
    }
    rk.ns = a.W + n_ent;
    const int nb = (rk.ns + AT_BLOCK - 1) / AT_BLOCK;

    for (int i = tid; i < HG * hd; i += AT_THREADS) {
        const int h = i / hd, d = i - h * hd;
        const float v = h0 + h < a.H ? a.q[((int64_t)r * a.H + h0 + h) * hd + d] : 0.0f;
        qs[h * ldk + d] = at_bf16_bits(v);
        os[h * ldo + d] = 0.0f;
    }
    if (tid < HG) {
        st[tid] = -INFINITY;
        st[HG + tid] = 0.0f;
        st[2 * HG + tid] = 0.0f;
    }

    const int kscb = AT_BLOCK * a.kvl.scale_bytes; /* a stage's scale bytes */
    load_block(a, rk, ks, ksc, 0);
    for (int b = 0; b < nb; b++) {
        const int buf = a.stages == 2 ? (b & 1) : 0;
        if (a.stages == 2 && b + 1 < nb) {
            load_block(a, rk, ks + (size_t)(buf ^ 1) * AT_BLOCK * ldk, ksc + (buf ^ 1) * kscb,
                       b + 1);
            at_cp_wait_one();
        } else {
            at_cp_wait_all();
        }
        __syncthreads(); /* every thread's copies of block b */
        uint16_t *kb = ks + (size_t)buf * AT_BLOCK * ldk;
        if (hd == 512 && a.kvl.r == 64) /* the engine's layout, compiled for */
            at_expand_c<512, 64, 4>(a, rk, kb, ksc + buf * kscb, b);
        else
            at_expand<AT_XU, 1>(a, rk, kb, ksc + buf * kscb, b);
        __syncthreads();

        /* scores: warp (mt, kh) does keys [16 mt, 16 mt + 16) over half kh of the dims */
        {
            const int mt = warp & 3, kh = warp >> 2, nks = hd >> 4;
            const int k_lo = kh ? nks / 2 : 0, k_hi = kh ? nks : nks / 2;
            float c[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.0f;
            const uint16_t *ka = kb + (mt * 16 + g) * ldk + 2 * t;
            for (int kst = k_lo; kst < k_hi; kst++) {
                const int k0 = kst * 16;
                const uint32_t af[4] = {at_ld32(ka + k0), at_ld32(ka + 8 * ldk + k0),
                                        at_ld32(ka + k0 + 8), at_ld32(ka + 8 * ldk + k0 + 8)};
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint16_t *qb = qs + (nt * 8 + g) * ldk + k0 + 2 * t;
                    const uint32_t bf[2] = {at_ld32(qb), at_ld32(qb + 8)};
                    at_mma(c[nt], af, bf);
                }
            }
            at_store_scores<NT>(sp, kh, mt, g, t, c);
        }
        __syncthreads();

        /* softmax step: warp w owns heads w, w + 8; lane owns keys lane, lane + 32 */
        for (int h = warp; h < HG; h += AT_WARPS) {
            const float mx = st[h];
            float sc[2], bm = -INFINITY;
            bool valid[2];
#pragma unroll
            for (int jj = 0; jj < 2; jj++) {
                const int key = lane + 32 * jj, s = b * AT_BLOCK + key;
                valid[jj] = s < rk.count || (s >= a.W && s < rk.ns);
                sc[jj] =
                    valid[jj]
                        ? __fmul_rn(__fadd_rn(sp[h * AT_LDS + key], sp[(HG + h) * AT_LDS + key]),
                                    a.scale)
                        : -INFINITY;
                bm = fmaxf(bm, sc[jj]);
            }
#pragma unroll
            for (int sh = 16; sh > 0; sh >>= 1)
                bm = fmaxf(bm, __shfl_xor_sync(0xffffffffu, bm, sh));
            const float m_new = fmaxf(bm, mx);
            uint16_t pb[2] = {0, 0};
            float alpha = 1.0f, bsum = 0.0f; /* nothing valid yet: out * 1 + 0, state kept */
            if (m_new != -INFINITY) {
                alpha = mx == -INFINITY ? 0.0f : expf(mx - m_new);
                const float e0 = valid[0] ? expf(sc[0] - m_new) : 0.0f;
                const float e1 = valid[1] ? expf(sc[1] - m_new) : 0.0f;
                pb[0] = at_bf16_bits(e0);
                pb[1] = at_bf16_bits(e1);
                bsum = __fadd_rn(e0, e1);
#pragma unroll
                for (int sh = 16; sh > 0; sh >>= 1)
                    bsum = __fadd_rn(bsum, __shfl_down_sync(0xffffffffu, bsum, sh));
            }
            ps[h * AT_LDP + lane] = pb[0];
            ps[h * AT_LDP + lane + 32] = pb[1];
            __syncwarp();
            if (lane == 0) {
                if (m_new != -INFINITY) {
                    st[HG + h] = __fadd_rn(__fmul_rn(st[HG + h], alpha), bsum);
                    st[h] = m_new;
                }
                st[2 * HG + h] = alpha;
            }
        }
        __syncthreads();

        /* O^T [hd, HG] = O^T * alpha + V^T . P^T: warp w does dims [16 mt, 16 mt + 16) */
        {
            uint32_t bfr[4][NT][2];
            float al[NT][2];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int kk = 0; kk < 4; kk++) {
                    const uint16_t *pp = ps + (nt * 8 + g) * AT_LDP + kk * 16 + 2 * t;
                    bfr[kk][nt][0] = at_ld32(pp);
                    bfr[kk][nt][1] = at_ld32(pp + 8);
                }
                al[nt][0] = st[2 * HG + nt * 8 + 2 * t];
                al[nt][1] = st[2 * HG + nt * 8 + 2 * t + 1];
            }
            for (int mt = warp; mt < (hd >> 4); mt += AT_WARPS) {
                const int d0 = mt * 16 + g;
                float c[NT][4];
#pragma unroll
                for (int nt = 0; nt < NT; nt++) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < 4; kk++) {
                    const uint16_t *v = kb + (kk * 16 + 2 * t) * ldk + d0;
                    const uint32_t af[4] = {(uint32_t)v[0] | ((uint32_t)v[ldk] << 16),
                                            (uint32_t)v[8] | ((uint32_t)v[ldk + 8] << 16),
                                            (uint32_t)v[8 * ldk] | ((uint32_t)v[9 * ldk] << 16),
                                            (uint32_t)v[8 * ldk + 8] |
                                                ((uint32_t)v[9 * ldk + 8] << 16)};
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) at_mma(c[nt], af, bfr[kk][nt]);
                }
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    float *o0 = os + (nt * 8 + 2 * t) * ldo + d0, *o1 = o0 + ldo;
                    o0[0] = __fadd_rn(__fmul_rn(o0[0], al[nt][0]), c[nt][0]);
                    o1[0] = __fadd_rn(__fmul_rn(o1[0], al[nt][1]), c[nt][1]);
                    o0[8] = __fadd_rn(__fmul_rn(o0[8], al[nt][0]), c[nt][2]);
                    o1[8] = __fadd_rn(__fmul_rn(o1[8], al[nt][1]), c[nt][3]);
                }
            }
        }
        __syncthreads();
        if (a.stages == 1 && b + 1 < nb) load_block(a, rk, ks, ksc, b + 1);
    }

    /* the sink joins the denominator; o = bf16(O / sum) */
    if (tid < HG && h0 + tid < a.H)
        st[HG + tid] = __fadd_rn(st[HG + tid], expf(a.sink[h0 + tid] - st[tid]));
    __syncthreads();
    for (int i = tid; i < HG * hd; i += AT_THREADS) {
        const int h = i / hd, d = i - h * hd;
        if (h0 + h < a.H)
            a.o[((int64_t)r * a.H + h0 + h) * hd + d] =
                at_round_bf16(__fdiv_rn(os[h * ldo + d], st[HG + h]));
    }
}

static int align16(int x)
{
    return (x + 15) & ~15;
}

/* Shared memory layout for HG heads and `stages` key buffers; returns the total bytes. */
static int attn_layout(attn_args *a, int HG, int stages, int list_len)
{
    const int ldk = a->hd + 8, ldo = a->hd + 4;
    int off = align16(stages * AT_BLOCK * ldk * 2);
    a->off_ksc = off;
    off = align16(off + stages * AT_BLOCK * a->kvl.scale_bytes);
    a->off_q = off;
    off = align16(off + HG * ldk * 2);
    a->off_o = off;
    off = align16(off + HG * ldo * 4);
    a->off_sp = off;
    off = align16(off + 2 * HG * AT_LDS * 4);
    a->off_p = off;
    off = align16(off + HG * AT_LDP * 2);
    a->off_st = off;
    off = align16(off + 3 * HG * 4);
    a->off_list = off;
    off = align16(off + list_len * 4);
    a->stages = stages;
    return off;
}

extern "C" dsv4_status dsv4_cuda_attention_seq(dsv4_backend *b, float *o, const float *q, int H,
                                               int hd, int kr, const uint8_t *win, int R, int W,
                                               const uint8_t *ent, int64_t cap_e, int m,
                                               const int32_t *sel, int topk, const float *sink,
                                               const dsv4_bk_rows *rows)
{
    const int64_t N = rows->n;
    DSV4_TRY(at_check(H, hd, kr, win, R, W, ent, m, sel, topk));
    if (hd > 256 * AT_XU) /* at_expand's registers (above, shared memory does not fit anyway) */
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "attention: hd %d", hd);
    if (N == 0) return DSV4_OK;
    attn_args a;
    at_args_set(&a, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink, rows);
    const int list_len = a.mode == 2 ? topk : 0;

    int dev, optin, n_sm;
    CUDA_TRY(cudaGetDevice(&dev));
    CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    /* 16 heads a CTA once that fills the GPU (fewer key reloads), else 8 (more CTAs) */
    const int pref = N * ((H + 15) / 16) >= n_sm ? 2 : 1;
    const int tries[4][2] = {{pref, 2}, {pref, 1}, {1, 2}, {1, 1}};
    int nt = 0, bytes = 0;
    for (int i = 0; i < 4 && !nt; i++) {
        bytes = attn_layout(&a, 8 * tries[i][0], tries[i][1], list_len);
        if (bytes <= optin) nt = tries[i][0];
    }
    if (!nt)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "attention: hd %d, topk %d need %d B of shared memory", hd, topk, bytes);
    a.ngroups = (H + 8 * nt - 1) / (8 * nt);
    const int64_t grid = N * a.ngroups;
    if (grid > 0x7fffffff)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "attention: %lld rows", (long long)N);
    cudaStream_t s = dsv4_cuda_stream(b->cuda);
    if (nt == 2) {
        CUDA_TRY(cudaFuncSetAttribute(attn_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      bytes));
        attn_kernel<2><<<(unsigned)grid, AT_THREADS, bytes, s>>>(a);
    } else {
        CUDA_TRY(cudaFuncSetAttribute(attn_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      bytes));
        attn_kernel<1><<<(unsigned)grid, AT_THREADS, bytes, s>>>(a);
    }
    CUDA_LAUNCHED();
    return DSV4_OK;
}
