/*
 * moe_route.cuh - the pieces of the CUDA MoE's routing and prep that more than one kernel runs:
 * one row's router (bk_moe.cu moe_router_kernel and moe_route.cu's fused route + prep kernel),
 * the work list built from sel (the prep kernels of both paths and the fused kernel) and one
 * warp's act_quant of h into the tensor-core path's x4 / x8 / sx. One copy of each, so that
 * every kernel that routes or builds the list gives the same bits.
 */
#ifndef DSV4_CUDA_MOE_ROUTE_CUH
#define DSV4_CUDA_MOE_ROUTE_CUH

#include "backend/cuda/moe.cuh"
#include "backend/cuda/moe_frag.cuh"
#include "backend/cuda/moe_numerics.cuh"

#include <math.h>

/* ops_moe.c dsv4_op_router_scores on one logit; expf and log1pf evaluated in double and rounded
 * once (glibc's are correctly rounded but for rare cases: the weights then differ by 1 ulp). */
static __device__ __forceinline__ float router_score(float x)
{
    float sp = x;
    if (!(x > 20.0f)) {
        const float e = (float)exp((double)x);
        sp = (float)log1p((double)e);
    }
    return __fsqrt_rn(sp);
}

/* A candidate's place in the router's order as one key, larger ranking above: the value (then
 * the lower index) decides, NaN above every number (dsv4_op_topk's and torch.topk's order); key 0
 * is no expert, below every expert. The high word is the value's bits made monotone (-0 as +0, so
 * that it ties with +0; NaN all ones; every number >= 0x007fffff, -inf's); the low word the
 * index's complement. A total order on the experts, so a warp's maximum is the same in every
 * lane, and comparing two keys costs one 64-bit compare instead of the float tests. */
static __device__ __forceinline__ unsigned long long route_key(float v, int i)
{
    uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
    u = isnan(v) ? 0xffffffffu : (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (unsigned long long)u << 32 | (uint32_t) ~(uint32_t)i;
}

/* The largest key held by the lanes of a warp, in every lane: two reductions of 32-bit words
 * (the high words, then the low words of the lanes that hold the largest high word). */
static __device__ __forceinline__ unsigned long long route_warp_max(unsigned long long k)
{
    const unsigned hi = __reduce_max_sync(0xffffffffu, (unsigned)(k >> 32));
    const unsigned lo =
        __reduce_max_sync(0xffffffffu, (unsigned)(k >> 32) == hi ? (unsigned)k : 0u);
    return (unsigned long long)hi << 32 | lo;
}

/* The router's shared memory (one row at a time). */
typedef struct moe_route_smem {
    float sc[MOE_MAX_E];                   /* scores (top-k) */
    unsigned long long ck[MOE_MAX_K * 32]; /* warp candidates: route_key of the biased score */
    float ks[MOE_MAX_K];                   /* the chosen experts' scores */
    int kc[MOE_MAX_K];                     /* the chosen experts */
    int ko[MOE_MAX_K];                     /* the same in ascending order */
} moe_route_smem;

/* Row r of logits [N, E] -> sel [r, K], wts [r, K], by the whole CTA (every thread calls it;
 * blockDim a multiple of 32, >= E for top-k, at most 1024). Top-K (one expert a thread): each
 * warp's K best by route_key (larger value, then lower index) in K rounds of a warp maximum,
 * then the K best of the candidates by their ranks in that order, then ascending index order:
 * dsv4_op_topk's result (a strict total order, so the same set, whatever the number of warps). Hash
 * layers: the K experts of tid2eid [ids[r]], in its order, and only their K scores. Weights as
 * dsv4_op_router_weights, in slot order (thread j stores sel and wts of slot j). Ends with a
 * barrier. */
static __device__ __forceinline__ void moe_route_row(moe_route_smem &sm, int32_t *sel, float *wts,
                                                     const float *logits, const float *bias,
                                                     const int32_t *tid2eid, const int32_t *ids,
                                                     int64_t r, int E, int K, float route_scale)
{
    const int e = threadIdx.x, lane = e & 31, warp = e >> 5, nw = blockDim.x >> 5;
    const int NONE = 0x7fffffff;
    if (tid2eid) {
        if (e < K) {
            const int c = tid2eid[(int64_t)ids[r] * K + e];
            sm.kc[e] = c;
            sm.ks[e] = c >= 0 && c < E ? router_score(logits[r * E + c]) : 0.0f;
        }
    } else {
        unsigned long long mine = 0; /* this thread's expert while not taken */
        if (e < E) {
            const float s = router_score(logits[r * E + e]);
            sm.sc[e] = s;
            mine = route_key(__fadd_rn(s, bias ? bias[e] : 0.0f), e);
        }
        for (int j = 0; j < K; j++) {
            const unsigned long long best = route_warp_max(mine);
            if (lane == 0) sm.ck[warp * K + j] = best;
            if (mine == best) mine = 0;
        }
        __syncthreads();
        /* the K best candidates by their rank in that order (candidates of no expert, key 0,
         * among themselves by position), one candidate a thread (warp 0's K rounds of argmax
         * over them took ~1 us at batch 1) */
        const int nc = nw * K; /* >= K: the ranks 0 .. nc - 1 fill every slot of kc */
        if (e < nc) {
            const unsigned long long k = sm.ck[e];
            int rank = 0;
            for (int q = 0; q < nc; q++) {
                const unsigned long long o = sm.ck[q];
                rank += o > k || (o == k && q < e);
            }
            if (rank < K) sm.kc[rank] = k ? (int)~(uint32_t)k : NONE;
        }
        __syncthreads();
        if (e < K) { /* ascending index order, stable (equal entries: none) */
            const int k = sm.kc[e];
            int pos = 0;
            for (int j = 0; j < K; j++) pos += sm.kc[j] < k || (sm.kc[j] == k && j < e);
            sm.ko[pos] = k;
        }
        __syncthreads();
        if (e < K) {
            const int k = sm.ko[e];
            sm.kc[e] = k;
            sm.ks[e] = k >= 0 && k < E ? sm.sc[k] : 0.0f;
        }
    }
    __syncthreads();
    if (e < K) { /* dsv4_op_router_weights: each of the K threads the same sum, its weight */
        float sum = 0.0f;
        for (int j = 0; j < K; j++) sum = __fadd_rn(sum, sm.ks[j]);
        sum = __fadd_rn(sum, 1e-20f);
        sel[r * K + e] = sm.kc[e];
        wts[r * K + e] = __fmul_rn(__fdiv_rn(sm.ks[e], sum), route_scale);
    }
    __syncthreads();
}

/* moe_list_build for at most 32 pairs (decode at up to 5 rows of 6 experts), by warp 0 alone with
 * no shared memory and no barrier: lane p holds pair p; its group's offset is the number of valid
 * pairs of a lower expert, its active index the number of distinct lower experts, and the pairs of
 * a group are in ascending p. The same list as the general build (whose order inside a group is
 * that of its atomics); the general one took 1.9 us of the MoE prep's 4.3 at batch 1 (dsv4 bench
 * --trace phase marks, H100), this one no barrier and one load. */
static __device__ __forceinline__ void moe_list_build_warp(const moe_list &L, const int32_t *sel,
                                                           int NK, int E)
{
    const int lane = threadIdx.x & 31;
    const int e = lane < NK ? __ldcg(sel + lane) : -1;
    const bool valid = e >= 0 && e < E;
    const unsigned vmask = __ballot_sync(0xffffffffu, valid);
    int below = 0, before = 0, count = 0;
    for (int q = 0; q < NK; q++) {
        const int eq = __shfl_sync(0xffffffffu, e, q);
        if (!((vmask >> q) & 1u)) continue;
        below += eq < e;
        count += eq == e;
        before += eq == e && q < lane;
    }
    const bool first = valid && before == 0;
    const unsigned fmask = __ballot_sync(0xffffffffu, first);
    int distinct_below = 0;
    for (int q = 0; q < NK; q++) {
        const int eq = __shfl_sync(0xffffffffu, e, q);
        distinct_below += ((fmask >> q) & 1u) && eq < e;
    }
    if (valid) L.pairs[below + before] = lane;
    if (first) {
        L.active[distinct_below] = e;
        L.off[distinct_below] = below;
        L.cnt[distinct_below] = count;
    }
    if (lane == 0) *L.n_active = __popc(fmask);
}

/* sel [NK] -> the work list L (moe.cuh moe_list), by the whole CTA; wl: 3 E ints of shared
 * memory (cnt, off, fill). Counts and slots by shared-memory atomics, offsets by one warp's
 * scan; at most 32 pairs, moe_list_build_warp. sel is read through L2 (__ldcg): other CTAs of the
 * same grid may have written it. */
static __device__ __forceinline__ void moe_list_build(const moe_list &L, const int32_t *sel,
                                                      int64_t NK, int E, int32_t *wl)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (NK <= 32) {
        if (warp == 0) moe_list_build_warp(L, sel, (int)NK, E);
        return;
    }
    int32_t *cnt = wl, *off = wl + E, *fill = wl + 2 * E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = fill[e] = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < NK; p += blockDim.x) {
        const int e = __ldcg(sel + p);
        if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (warp == 0) {
        const int per = (E + 31) / 32, lo = lane * per, hi = lo + per < E ? lo + per : E;
        int c = 0, na = 0;
        for (int e = lo; e < hi; e++) c += cnt[e], na += cnt[e] > 0;
        int ci = c, ni = na; /* inclusive scans over the lanes */
        for (int d = 1; d < 32; d <<= 1) {
            const int tc = __shfl_up_sync(0xffffffffu, ci, d);
            const int tn = __shfl_up_sync(0xffffffffu, ni, d);
            if (lane >= d) ci += tc, ni += tn;
        }
        int cpos = ci - c, apos = ni - na;
        for (int e = lo; e < hi; e++) {
            off[e] = cpos;
            if (cnt[e] > 0) {
                L.active[apos] = e;
                L.off[apos] = cpos;
                L.cnt[apos] = cnt[e];
                apos++;
            }
            cpos += cnt[e];
        }
        if (lane == 31) *L.n_active = ni;
    }
    __syncthreads();
    for (int64_t p = threadIdx.x; p < NK; p += blockDim.x) {
        const int e = __ldcg(sel + p);
        if (e >= 0 && e < E) L.pairs[off[e] + atomicAdd(&fill[e], 1)] = (int32_t)p;
    }
}

/* Global warp gw of the act_quant of h [N, D] (one warp a 128-column block; gw past N D / 128
 * does nothing): x = act_quant(h) as codes in L4 and L8 + scales (moe.cuh moe_mma_args). */
static __device__ __forceinline__ void moe_quant_x(const moe_mma_args &a, const float *h,
                                                   int64_t gw, int lane)
{
    const int64_t D = a.D, nb = (D + 127) >> 7;
    if (gw >= a.N * nb) return;
    const int64_t r = gw / nb, blk = gw - r * nb, c0 = blk * 128;
    const bool on = c0 + 4 * lane < D;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (on) {
        const float4 f = *(const float4 *)(h + r * D + c0 + 4 * lane);
        v[0] = q_bf16(f.x), v[1] = q_bf16(f.y), v[2] = q_bf16(f.z), v[3] = q_bf16(f.w);
    }
    const float s = quant_store(v, on, a.x4 + r * D + c0, a.x8 + r * D + c0, lane);
    if (lane == 0) a.sx[r * nb + blk] = s;
}

#endif
