/*
 * bk_topk.cu - CUDA implementation of the lightning indexer's scores and top-k (backend.h
 * dsv4_bk_indexer_topk): per row, the faithful scores of its n_vis visible compressed keys into
 * the workspace ([N, cap_e] f32), then the k best of them in descending score order, equal scores
 * lower index first, -1 after them. Everything stays on the device; grids come from N and cap_e
 * and rows that see fewer entries exit early.
 *
 * Scores (model/forward_attn.c faithful_index_scores): per head bf16(q_h . k), relu,
 * bf16(* w_h), summed over heads, bf16. The dot products are f32 FMAs where the CPU sums in
 * double: identical whenever the f32 sums are exact, as they are for the FP4-grid values the
 * indexer feeds in (products of two e2m1 * 2^s values summed over 32-blocks need ~13 bits).
 * The head sum is in double as on the CPU (terms are bf16 values: exact in any order).
 * Top-k: the scores are bf16 values, so a 16-bit order key ranks them exactly; a two-pass radix
 * select (8 + 8 bits) finds the k-th key T, every key > T is taken and the first (lowest-index)
 * ties at T as needed, then a bitonic sort of the k picks on (key, ~index) orders them.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"

#include <cstdint>

enum {
    TNH = 64,            /* the tiled score kernel's shape: heads ... */
    TD = 128,            /* ... of this dim (Flash and Pro indexers) */
    TILE_E = 128,        /* entries per CTA of the tiled kernel */
    TLD = TD + 4,        /* padded shared row (floats): float4 reads of 8 rows hit 32 banks */
    SCORE_THREADS = 256, /* 8 head groups x 32 entry groups */
    GEN_WARPS = 8,       /* generic kernel: one warp per entry */
    TOPK_THREADS = 1024, /* one CTA per row */
    TOPK_MAX = 2048,     /* largest topk (candidates sorted in shared memory) */
    MAX_ROWS = 65535,    /* grid y / rows per call */
};

static __device__ __forceinline__ float round_bf16(float x)
{
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(u | 0x00400000u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}

/* One head's term of a score: bf16(relu(bf16(dot)) * w), as the CPU (NaN dot -> 0). */
static __device__ __forceinline__ double head_term(float dot, float w)
{
    float v = round_bf16(dot);
    v = v > 0.0f ? v : 0.0f;
    return (double)round_bf16(__fmul_rn(v, w));
}

/* ---- scores ------------------------------------------------------------------------------- */
/* Tiled, for nh = 64, d = 128. Grid (cap_e / 128, N), 256 threads; CTA (x, row) scores entries
 * [128x, 128x + 128) of the row's slot: q [64, 128] and the key tile [128, 128] in shared memory
 * (f32, padded rows), thread (hx = tid % 8, ey = tid / 8) computes heads hx + 8j (j < 8) for
 * entries ey + 32i (i < 4) with float4 steps along d, then the head sum over its 8 heads and
 * across the 8 lanes of its entry group (shuffles, double).
 * iq [N, 64, 128], iw [N, 64], ent [S, cap_e, 128] bf16 -> scores [N, cap_e]. */
__global__ __launch_bounds__(SCORE_THREADS) void index_scores_tiled(
    float *scores, const float *iq, const float *iw, const uint16_t *ent, int64_t cap_e, int m,
    const int32_t *slot, const int32_t *pos)
{
    extern __shared__ float4 tiled_smem[];
    float *qs = (float *)tiled_smem, *ks = qs + TNH * TLD, *wsm = ks + TILE_E * TLD;
    const int row = blockIdx.y, tid = threadIdx.x;
    int64_t nvis = ((int64_t)pos[row] + 1) / m;
    if (nvis > cap_e) nvis = cap_e;
    const int64_t eb = (int64_t)blockIdx.x * TILE_E;
    if (eb >= nvis) return;

    const float4 *q4 = (const float4 *)(iq + (int64_t)row * TNH * TD);
    for (int t = tid; t < TNH * TD / 4; t += SCORE_THREADS)
        *(float4 *)(qs + (t >> 5) * TLD + (t & 31) * 4) = q4[t];
    if (tid < TNH) wsm[tid] = iw[(int64_t)row * TNH + tid];
    const uint16_t *keys = ent + ((int64_t)slot[row] * cap_e + eb) * TD;
    for (int t = tid; t < TILE_E * TD / 8; t += SCORE_THREADS) {
        const int e = t >> 4, c = (t & 15) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (eb + e < nvis) v = *(const uint4 *)(keys + (int64_t)e * TD + c);
        float *dst = ks + e * TLD + c;
        *(float4 *)dst =
            make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                        __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
        *(float4 *)(dst + 4) =
            make_float4(__uint_as_float(v.z << 16), __uint_as_float(v.z & 0xffff0000u),
                        __uint_as_float(v.w << 16), __uint_as_float(v.w & 0xffff0000u));
    }
    __syncthreads();

    const int hx = tid & 7, ey = tid >> 3;
    float acc[4][8];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;
#pragma unroll 2
    for (int c = 0; c < TD; c += 4) {
        float4 kv[4], qv[8];
#pragma unroll
        for (int i = 0; i < 4; i++) kv[i] = *(const float4 *)(ks + (ey + 32 * i) * TLD + c);
#pragma unroll
        for (int j = 0; j < 8; j++) qv[j] = *(const float4 *)(qs + (hx + 8 * j) * TLD + c);
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 8; j++) {
                acc[i][j] = fmaf(qv[j].x, kv[i].x, acc[i][j]);
                acc[i][j] = fmaf(qv[j].y, kv[i].y, acc[i][j]);
                acc[i][j] = fmaf(qv[j].z, kv[i].z, acc[i][j]);
                acc[i][j] = fmaf(qv[j].w, kv[i].w, acc[i][j]);
            }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        double tot = 0.0;
#pragma unroll
        for (int j = 0; j < 8; j++) tot += head_term(acc[i][j], wsm[hx + 8 * j]);
        tot += __shfl_xor_sync(0xffffffffu, tot, 1);
        tot += __shfl_xor_sync(0xffffffffu, tot, 2);
        tot += __shfl_xor_sync(0xffffffffu, tot, 4);
        const int64_t e = eb + ey + 32 * i;
        if (hx == 0 && e < nvis) scores[(int64_t)row * cap_e + e] = round_bf16((float)tot);
    }
}

/* Any nh, d: one warp per entry, q and w read through the cache. Grid (cap_e / 8, N).
 * iq [N, nh, d], iw [N, nh], ent [S, cap_e, d] bf16 -> scores [N, cap_e]. */
__global__ void index_scores_generic(float *scores, const float *iq, const float *iw,
                                     const uint16_t *ent, int64_t cap_e, int nh, int d, int m,
                                     const int32_t *slot, const int32_t *pos)
{
    const int row = blockIdx.y, lane = threadIdx.x & 31;
    const int64_t e = (int64_t)blockIdx.x * GEN_WARPS + (threadIdx.x >> 5);
    int64_t nvis = ((int64_t)pos[row] + 1) / m;
    if (nvis > cap_e) nvis = cap_e;
    if (e >= nvis) return; /* the whole warp */
    const uint16_t *k = ent + ((int64_t)slot[row] * cap_e + e) * d;
    const float *q = iq + (int64_t)row * nh * d, *w = iw + (int64_t)row * nh;
    double tot = 0.0;
    for (int h = 0; h < nh; h++) {
        float acc = 0.0f;
        for (int c = lane; c < d; c += 32)
            acc = fmaf(q[(int64_t)h * d + c], __uint_as_float((uint32_t)k[c] << 16), acc);
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        tot += head_term(acc, w[h]);
    }
    if (lane == 0) scores[(int64_t)row * cap_e + e] = round_bf16((float)tot);
}

/* ---- top-k -------------------------------------------------------------------------------- */
/* Order key of a bf16-valued score: its f32 bits made monotonic (-0 as +0), top 16 bits. */
static __device__ __forceinline__ uint32_t score_key16(float s)
{
    const uint32_t u = __float_as_uint(__fadd_rn(s, 0.0f));
    return ((u & 0x80000000u) ? ~u : (u | 0x80000000u)) >> 16;
}

/* Candidate (key, e): larger is better; equal keys rank the lower index higher. Never 0. */
static __device__ __forceinline__ unsigned long long cand_key(uint32_t key16, int e)
{
    return ((unsigned long long)key16 << 32) | (0xffffffffu - (uint32_t)e);
}

/* The bin (255 down) holding the k-th largest element of hist, counting from `above`;
 * -> s_bin, s_above (elements in higher bins, plus above). Thread 0 only. */
static __device__ void find_bin(const int *hist, int above, int k, int *s_bin, int *s_above)
{
    int cum = above, bin = 255;
    while (bin > 0 && cum + hist[bin] < k) cum += hist[bin--];
    *s_bin = bin;
    *s_above = cum;
}

/* One CTA of 1024 threads per row: scores [N, cap_e] -> sel [N, topk]. */
__global__ __launch_bounds__(TOPK_THREADS) void index_topk_kernel(int32_t *sel, const float *scores,
                                                                  int64_t cap_e, int m, int topk,
                                                                  const int32_t *pos)
{
    __shared__ unsigned long long cand[TOPK_MAX];
    __shared__ int hist[256], wcount[32], wexcl[32];
    __shared__ int s_bin, s_above, s_gt, s_round;
    const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nw = blockDim.x >> 5, nt = blockDim.x;
    int64_t nv = ((int64_t)pos[row] + 1) / m;
    if (nv > cap_e) nv = cap_e;
    const int nvis = (int)nv, k = nvis < topk ? nvis : topk;
    const float *sc = scores + (int64_t)row * cap_e;
    int32_t *out = sel + (int64_t)row * topk;
    for (int j = k + tid; j < topk; j += nt) out[j] = -1;
    if (k == 0) return;

    if (nvis <= topk) { /* every visible entry: only the order is needed */
        for (int e = tid; e < nvis; e += nt) cand[e] = cand_key(score_key16(sc[e]), e);
    } else {
        /* 1. histogram of the keys' high bytes: the bin of the k-th largest */
        for (int i = tid; i < 256; i += nt) hist[i] = 0;
        if (tid == 0) s_gt = 0;
        __syncthreads();
        for (int e = tid; e < nvis; e += nt) atomicAdd(&hist[score_key16(sc[e]) >> 8], 1);
        __syncthreads();
        if (tid == 0) find_bin(hist, 0, k, &s_bin, &s_above);
        __syncthreads();
        const uint32_t hi = (uint32_t)s_bin;
        const int above = s_above;
        for (int i = tid; i < 256; i += nt) hist[i] = 0;
        __syncthreads();
        /* 2. the low bytes within that bin: T, the k-th largest key; n_gt keys are above it */
        for (int e = tid; e < nvis; e += nt) {
            const uint32_t key = score_key16(sc[e]);
            if ((key >> 8) == hi) atomicAdd(&hist[key & 255u], 1);
        }
        __syncthreads();
        if (tid == 0) find_bin(hist, above, k, &s_bin, &s_above);
        __syncthreads();
        const uint32_t T = hi << 8 | (uint32_t)s_bin;
        const int n_gt = s_above, need = k - n_gt;
        /* 3. keys > T in any slot of [0, n_gt); ties at T in index order into [n_gt, k): rounds
         * of nt consecutive entries, ranked by a ballot and a scan of the warp counts */
        int eq_base = 0;
        for (int base = 0; base < nvis; base += nt) {
            const int e = base + tid;
            const uint32_t key = e < nvis ? score_key16(sc[e]) : 0u;
            if (e < nvis && key > T) cand[atomicAdd(&s_gt, 1)] = cand_key(key, e);
            const bool eq = e < nvis && key == T;
            const unsigned bal = __ballot_sync(0xffffffffu, eq);
            if (lane == 0) wcount[warp] = __popc(bal);
            __syncthreads();
            if (warp == 0) {
                const int v = lane < nw ? wcount[lane] : 0;
                int incl = v;
                for (int o = 1; o < 32; o <<= 1) {
                    const int t = __shfl_up_sync(0xffffffffu, incl, o);
                    if (lane >= o) incl += t;
                }
                wexcl[lane] = incl - v;
                if (lane == 31) s_round = incl;
            }
            __syncthreads();
            if (eq) {
                const int rank = eq_base + wexcl[warp] + __popc(bal & ((1u << lane) - 1u));
                if (rank < need) cand[n_gt + rank] = cand_key(key, e);
            }
            eq_base += s_round;
            __syncthreads();
        }
    }
    __syncthreads();

    /* 4. bitonic sort of cand [0, P) descending (padding 0 sinks to the end) */
    int P = 1;
    while (P < k) P <<= 1;
    for (int i = k + tid; i < P; i += nt) cand[i] = 0ull;
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < P; i += nt) {
                const int j = i ^ stride;
                if (j > i) {
                    const unsigned long long a = cand[i], c = cand[j];
                    if ((i & size) == 0 ? a < c : a > c) {
                        cand[i] = c;
                        cand[j] = a;
                    }
                }
            }
            __syncthreads();
        }
    for (int j = tid; j < k; j += nt) out[j] = (int32_t)(0xffffffffu - (uint32_t)cand[j]);
}

extern "C" dsv4_status dsv4_cuda_bk_indexer_topk(dsv4_backend *b, int32_t *sel, const float *iq,
                                                 const float *iw, const uint16_t *ent,
                                                 int64_t cap_e, int nh, int d, int m, int topk,
                                                 const dsv4_bk_rows *rows, void *ws)
{
    if (nh <= 0 || d <= 0 || m <= 0 || topk <= 0 || topk > TOPK_MAX || cap_e <= 0 ||
        cap_e > INT32_MAX - 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "indexer_topk: %d heads of %d, m %d, topk %d (at most %d), %lld entries",
                         nh, d, m, topk, (int)TOPK_MAX, (long long)cap_e);
    const int N = rows->n;
    if (N <= 0) return DSV4_OK;
    if (N > MAX_ROWS)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "indexer_topk: %d rows (at most %d)", N,
                         (int)MAX_ROWS);
    cudaStream_t st = dsv4_cuda_stream(b->cuda);
    float *scores = (float *)ws;
    if (nh == TNH && d == TD) {
        const size_t smem = ((size_t)(TNH + TILE_E) * TLD + TNH) * sizeof(float);
        CUDA_TRY(cudaFuncSetAttribute(index_scores_tiled,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        const dim3 grid((unsigned)((cap_e + TILE_E - 1) / TILE_E), (unsigned)N);
        index_scores_tiled<<<grid, SCORE_THREADS, smem, st>>>(scores, iq, iw, ent, cap_e, m,
                                                              rows->slot, rows->pos);
    } else {
        const dim3 grid((unsigned)((cap_e + GEN_WARPS - 1) / GEN_WARPS), (unsigned)N);
        index_scores_generic<<<grid, 32 * GEN_WARPS, 0, st>>>(scores, iq, iw, ent, cap_e, nh, d, m,
                                                              rows->slot, rows->pos);
    }
    CUDA_LAUNCHED();
    index_topk_kernel<<<N, TOPK_THREADS, 0, st>>>(sel, scores, cap_e, m, topk, rows->pos);
    CUDA_LAUNCHED();
    return DSV4_OK;
}
