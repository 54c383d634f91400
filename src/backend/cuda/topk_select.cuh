/*
 * topk_select.cuh - the indexer's selection of a row's k best scores on CUDA (bk_topk.cu, its one
 * user): by one CTA (row_topk: the fused kernel's last CTA of a row, the SIMT path's top-k
 * kernel) and by a cluster of CTAs that each hold a share of the row (cl_select_long: the long
 * rows of a split call, index_select_kernel). Both give the order of the unique key K(e) =
 * (o(score) << b) | (2^b - 1 - e), o the monotonic 16-bit code of a bf16 score, b the index bits:
 * descending scores, equal scores lower index first. Exact, ties included.
 */
#ifndef DSV4_CUDA_TOPK_SELECT_CUH
#define DSV4_CUDA_TOPK_SELECT_CUH

#include <cooperative_groups.h>
#include <cstdint>

enum {
    TOPK_THREADS = 512, /* the SIMT path's top-k kernel: one CTA per row */
    TOPK_MAX = 2048,    /* largest topk (the picks are sorted in shared memory) */
    KEY_CACHE = 16832,  /* rows of up to this many entries keep their 16-bit codes in shared:
                           64K context and a margin (the bench's engine has 16,412), while
                           topk_bytes stays within the 49 KB of the fixed-size cache before */
    LONG_KEYS = 4096,   /* rows of more keys take row_topk_long (4K context: ~1,024) */
    HIST_BINS = 4096,   /* row_topk_long's first digit: a code's top 12 bits */
    SEL_THREADS = 256,  /* a CTA of cl_select_long */
    SEL_RB = 4,         /* cl_select_long: picks a warp ranks at once (registers) */
};

/* ---- top-k of one row ----------------------------------------------------------------------- */
/* Order code of a bf16-valued score: its f32 bits made monotonic (-0 as +0), top 16 bits. */
static __device__ __forceinline__ uint32_t score_code(float s)
{
    const uint32_t u = __float_as_uint(__fadd_rn(s, 0.0f));
    return ((u & 0x80000000u) ? ~u : (u | 0x80000000u)) >> 16;
}

typedef struct topk_smem {
    union {
        unsigned long long cand[TOPK_MAX]; /* the picks' keys K, sorted in place ... */
        int hist[HIST_BINS];               /* ... after a digit's histogram (256 bins; 4,096 in
                                              row_topk_long's first) */
    } u;
    int hist16[16];                                     /* row_topk_long's second digit */
    int wgt[TOPK_THREADS / 32], weq[TOPK_THREADS / 32]; /* per-warp counts */
    int bin, above, count, n;
    /* then the score codes of the row, uint16_t [ncache] (topk_codes) */
} topk_smem;

/* The codes after the struct (8-byte aligned: the struct's size is a multiple of 8). */
static __device__ __forceinline__ uint16_t *topk_codes(topk_smem &S)
{
    return (uint16_t *)(&S + 1);
}

/* Shared memory of a top-k CTA that keeps the codes of rows of up to ncache entries. */
static size_t topk_bytes(int64_t ncache)
{
    return sizeof(topk_smem) + 2 * (size_t)((ncache + 3) & ~(int64_t)3);
}

/* The cache a call's rows get: cap_e entries, at most KEY_CACHE (longer rows read the workspace).
 */
static int topk_ncache(int64_t cap_e)
{
    return (int)(cap_e < (int64_t)KEY_CACHE ? cap_e : (int64_t)KEY_CACHE);
}

/* Warp 0: the bin (255 down) of hist holding the need-th largest element -> *bin, *above (the
 * elements in higher bins), *count (the bin's). need >= 1 and <= the histogram's total. */
static __device__ void find_bin(const int *hist, int need, int *bin, int *above, int *count)
{
    const int lane = threadIdx.x & 31;
    int v[8], sum = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) { /* lane l: bins 255 - 8l down to 248 - 8l */
        v[j] = hist[255 - 8 * lane - j];
        sum += v[j];
    }
    int incl = sum;
    for (int o = 1; o < 32; o <<= 1) {
        const int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, incl >= need);
    if (lane == __ffs(hit) - 1) {
        int cum = incl - sum;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (cum + v[j] >= need) {
                *bin = 255 - 8 * lane - j;
                *above = cum;
                *count = v[j];
                break;
            }
            cum += v[j];
        }
    }
}

/* The whole CTA: the bin (nb - 1 down) of hist [nb] holding the need-th largest element ->
 * S.bin, S.above (the elements in higher bins), S.count (the bin's). need >= 1 and <= the
 * histogram's total; nb and blockDim.x powers of two, nb <= 16 blockDim.x. Thread t sums g =
 * nb / blockDim.x bins (at least 1) from the top, a block scan of the sums finds the thread, it
 * walks its bins. Ends with every thread past a barrier that follows S's writes. */
static __device__ void find_bin_cta(topk_smem &S, const int *hist, int nb, int need)
{
    const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5;
    const int g = nb > nt ? nb / nt : 1, used = nb / g;
    int sum = 0;
    if (tid < used) {
        const int lo = nb - (tid + 1) * g; /* this thread's bins: [lo, lo + g) */
        if (g % 4 == 0)
            for (int j = 0; j < g; j += 4) {
                const int4 v = *(const int4 *)(hist + lo + j);
                sum += v.x + v.y + v.z + v.w;
            }
        else
            for (int j = 0; j < g; j++) sum += hist[lo + j];
    }
    int incl = sum;
    for (int o = 1; o < 32; o <<= 1) {
        const int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    if (lane == 31) S.wgt[warp] = incl;
    __syncthreads();
    for (int w = 0; w < warp; w++) incl += S.wgt[w];
    int cum = incl - sum;
    if (tid < used && cum < need && incl >= need)
        for (int j = 0; j < g; j++) {
            const int b = nb - 1 - tid * g - j, v = hist[b];
            if (cum + v >= need) {
                S.bin = b;
                S.above = cum;
                S.count = v;
                break;
            }
            cum += v;
        }
    __syncthreads();
}

/* Counts of one thread's run of equal bins, added when the bin changes (flush at the end): a
 * row's scores crowd into few bins (all into one when they all tie), and the adds of one bin
 * would queue on one shared-memory word. */
typedef struct bin_run {
    int bin, n;
} bin_run;

static __device__ __forceinline__ void run_add(bin_run &r, int *hist, int bin)
{
    if (bin != r.bin) {
        if (r.n) atomicAdd(&hist[r.bin], r.n);
        r.bin = bin;
        r.n = 0;
    }
    r.n++;
}

/* The codes of entries e .. e + 3 (e a multiple of 4; entries >= n read as 0, never counted). */
static __device__ __forceinline__ void codes4(uint32_t (&c)[4], const uint16_t *code, bool cached,
                                              const float *sc, int e, int n)
{
    if (cached) {
        const uint2 v = *(const uint2 *)(code + e);
        c[0] = v.x & 0xffffu, c[1] = v.x >> 16, c[2] = v.y & 0xffffu, c[3] = v.y >> 16;
    } else
#pragma unroll
        for (int u = 0; u < 4; u++) c[u] = e + u < n ? score_code(__ldcg(sc + e + u)) : 0u;
}

/* S.u.cand [0, count): the picks' keys K (larger is better; the low index bits imask hold
 * imask - e), padded with zeros to a power of two and bitonic-sorted descending by the whole CTA;
 * then out [j] = the entry of the j-th, j < count. */
static __device__ void sort_emit(int32_t *out, topk_smem &S, int count, unsigned long long imask)
{
    const int tid = threadIdx.x, nt = blockDim.x;
    int P = 1;
    while (P < count) P <<= 1;
    for (int i = count + tid; i < P; i += nt) S.u.cand[i] = 0ull; /* sinks to the end */
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < P; i += nt) {
                const int j = i ^ stride;
                if (j > i) {
                    const unsigned long long a = S.u.cand[i], c = S.u.cand[j];
                    if ((i & size) == 0 ? a < c : a > c) {
                        S.u.cand[i] = c;
                        S.u.cand[j] = a;
                    }
                }
            }
            __syncthreads();
        }
    for (int j = tid; j < count; j += nt) out[j] = (int32_t)(imask - (S.u.cand[j] & imask));
}

/* The index bits of K for rows of n entries (n - 1 < 2^ib, ib a multiple of 8) -> ib; returns
 * the mask of those bits. */
static __device__ __forceinline__ unsigned long long index_mask(int n, int &ib)
{
    ib = 8;
    while (ib < 32 && ((unsigned)(n - 1) >> ib) != 0u) ib += 8;
    return (1ull << ib) - 1ull;
}

/* One 128-entry chunk of a warp's ordered pass over a row's codes: lane l holds the codes c of
 * entries e .. e + 3 (e = chunk start + 4 l; those at or past hi are none). Every code above cut
 * goes to cand [gbase + its place] as K (entry index eoff + e + u, ib / imask: index_mask), and of
 * the codes equal to tie the first need by place go to out [above + qbase + place]: places in
 * index order, the lower lanes' 4 each, then this lane's u = 0 .. 3. gbase and qbase advance by
 * the warp's counts. */
static __device__ __forceinline__ void picks_chunk(const uint32_t (&c)[4], int e, int hi, int cut,
                                                   int tie, int eoff, int ib,
                                                   unsigned long long imask,
                                                   unsigned long long *cand, int &gbase,
                                                   int32_t *out, int above, int &qbase, int need)
{
    const unsigned lt = (1u << (threadIdx.x & 31)) - 1u;
    bool g[4], q[4];
    int pg = 0, pq = 0, tg = 0, tq = 0;
#pragma unroll
    for (int u = 0; u < 4; u++) {
        g[u] = e + u < hi && (int)c[u] > cut;
        q[u] = e + u < hi && (int)c[u] == tie;
        const unsigned bg = __ballot_sync(0xffffffffu, g[u]), bq = __ballot_sync(0xffffffffu, q[u]);
        pg += __popc(bg & lt), pq += __popc(bq & lt);
        tg += __popc(bg), tq += __popc(bq);
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int ei = eoff + e + u;
        if (g[u])
            cand[gbase + pg++] = (unsigned long long)c[u] << ib | (imask - (unsigned long long)ei);
        if (q[u]) {
            if (qbase + pq < need) out[above + qbase + pq] = ei;
            pq++;
        }
    }
    gbase += tg, qbase += tq;
}

/* row_topk for rows of n > LONG_KEYS keys (k = topk < n): the k-th largest score code in two
 * digits, its top 12 bits (a histogram the loads fill: float4 loads, 8 in flight a thread) and
 * its low 4, then the picks in index order, per warp a contiguous range of the row (ballots,
 * no atomics): every key with a larger code, and of the codes equal to it the lowest indices
 * that fill k (equal scores rank the lower index higher). Those go straight to out[] behind the
 * larger ones, which alone are sorted. The same selection and order as the radix select over K;
 * no index digits, so a row of ties costs no more than any other. Not inlined into row_topk:
 * inlined, the short rows' path (4K context) ran ~2 us a CSA layer slower (H100, engine step at
 * 4K batch 1 1.125 -> 1.121 ms with it out of line, 64K not slower). */
static __device__ __noinline__ void row_topk_long(int32_t *out, const float *sc, int n, int k,
                                                  topk_smem &S, bool cached)
{
    constexpr int LU = 8; /* float4 loads in flight a thread */
    const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5;
    const int nw = nt >> 5;
    uint16_t *code = topk_codes(S);
    for (int i = tid; i < HIST_BINS; i += nt) S.u.hist[i] = 0;
    if (tid < 16) S.hist16[tid] = 0;
    __syncthreads();

    /* the codes into shared memory and the first digit's histogram: entries [a0, a0 + 4 n4) as
     * float4 (16 B aligned), the few others (head and tail) by warp 0 one by one */
    bin_run run = {-1, 0};
    const int a0 = min(n, (int)((4u - (unsigned)(((uintptr_t)sc >> 2) & 3u)) & 3u));
    const int n4 = (n - a0) >> 2, r0 = a0 + 4 * n4; /* the rest: [0, a0), [r0, n) */
    if (tid < a0 + n - r0) {
        const int e = tid < a0 ? tid : r0 + tid - a0;
        const uint32_t c = score_code(__ldcg(sc + e));
        if (cached) code[e] = (uint16_t)c;
        run_add(run, S.u.hist, (int)(c >> 4));
    }
    const float4 *sc4 = (const float4 *)(sc + a0);
    for (int i0 = 0; i0 < n4; i0 += LU * nt) {
        float4 v[LU];
#pragma unroll
        for (int u = 0; u < LU; u++) {
            const int i = i0 + u * nt + tid;
            v[u] = i < n4 ? __ldcg(sc4 + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int u = 0; u < LU; u++) {
            const int i = i0 + u * nt + tid, e = a0 + 4 * i;
            if (i >= n4) break;
            const float f[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
            for (int x = 0; x < 4; x++) {
                const uint32_t c = score_code(f[x]);
                if (cached) code[e + x] = (uint16_t)c;
                run_add(run, S.u.hist, (int)(c >> 4));
            }
        }
    }
    if (run.n) atomicAdd(&S.u.hist[run.bin], run.n);
    __syncthreads();
    find_bin_cta(S, S.u.hist, HIST_BINS, k);

    /* taken: every code > cut, and the first need (by index) of the codes == tie */
    const int b12 = S.bin;
    int above = S.above, cut, tie = -1, need = 0;
    if (S.count == k - above) { /* the whole bin is in */
        cut = (b12 << 4) - 1;
    } else { /* the second digit: the bin's codes' low 4 bits */
        run = {-1, 0};
        for (int e = 4 * tid; e < n; e += 4 * nt) {
            uint32_t c[4];
            codes4(c, code, cached, sc, e, n);
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (e + u < n && (int)(c[u] >> 4) == b12) run_add(run, S.hist16, (int)(c[u] & 15u));
        }
        if (run.n) atomicAdd(&S.hist16[run.bin], run.n);
        __syncthreads();
        find_bin_cta(S, S.hist16, 16, k - above);
        cut = tie = b12 << 4 | S.bin;
        above += S.above;
        need = k - above;
    }

    /* warp w takes entries [lo, hi) in chunks of 128, lane l the 4 from 4 l: counts, then the
     * picks at the warps' offsets */
    int ib;
    const unsigned long long imask = index_mask(n, ib);
    const int seg = (n + 128 * nw - 1) / (128 * nw) * 128, lo = warp * seg;
    const int hi = min(n, lo + seg);
    int ngt = 0, neq = 0;
    for (int c0 = lo; c0 < hi; c0 += 128) {
        const int e = c0 + 4 * lane;
        if (e >= hi) continue;
        uint32_t c[4];
        codes4(c, code, cached, sc, e, n);
#pragma unroll
        for (int u = 0; u < 4; u++) {
            ngt += e + u < hi && (int)c[u] > cut;
            neq += e + u < hi && (int)c[u] == tie;
        }
    }
    ngt = __reduce_add_sync(0xffffffffu, ngt);
    neq = __reduce_add_sync(0xffffffffu, neq);
    if (lane == 0)
        S.wgt[warp] = ngt, S.weq[warp] = neq; /* find_bin_cta read S.wgt before its
                                                  last barrier */
    __syncthreads();
    int gbase = 0, qbase = 0, ntake = 0;
    for (int w = 0; w < nw; w++) {
        if (w < warp) gbase += S.wgt[w], qbase += S.weq[w];
        ntake += S.wgt[w];
    }
    for (int c0 = lo; c0 < hi; c0 += 128) {
        const int e = c0 + 4 * lane;
        uint32_t c[4] = {0u, 0u, 0u, 0u};
        if (e < hi) codes4(c, code, cached, sc, e, n);
        picks_chunk(c, e, hi, cut, tie, 0, ib, imask, S.u.cand, gbase, out, above, qbase, need);
    }

    /* the ntake larger codes (ntake = above, or k when the whole bin is in), sorted descending */
    sort_emit(out, S, ntake, imask);
}

/* out [topk] = the row's selection from its scores sc [n] (written by other CTAs or an earlier
 * kernel: read through L2); S holds the codes of rows of up to ncache entries (topk_bytes).
 * Every thread of the CTA calls it; blockDim.x a power of two, 32 .. TOPK_THREADS. */
static __device__ void row_topk(int32_t *out, const float *sc, int n, int topk, topk_smem &S,
                                int ncache)
{
    const int tid = threadIdx.x, nt = blockDim.x;
    const int k = n < topk ? n : topk;
    for (int j = k + tid; j < topk; j += nt) out[j] = -1;
    if (k == 0) return;
    const bool cached = n <= ncache;
    if (n > LONG_KEYS && n > topk) {
        row_topk_long(out, sc, n, k, S, cached);
        return;
    }
    uint16_t *code = topk_codes(S);
    if (cached)
        for (int e = tid; e < n; e += nt) code[e] = (uint16_t)score_code(__ldcg(sc + e));
    int ib;
    const unsigned long long imask = index_mask(n, ib);
    auto key = [&](int e) -> unsigned long long {
        const uint32_t c = cached ? (uint32_t)code[e] : score_code(__ldcg(sc + e));
        return (unsigned long long)c << ib | (imask - (unsigned long long)e);
    };
    __syncthreads();

    /* the k-th largest key's leading bytes: thr's bits >= shift */
    int shift = ib + 16;
    unsigned long long thr = 0ull;
    if (n > topk) {
        int above = 0; /* keys whose leading bytes beat thr's */
        while (shift > 0) {
            shift -= 8;
            for (int i = tid; i < 256; i += nt) S.u.hist[i] = 0;
            __syncthreads();
            for (int e = tid; e < n; e += nt) {
                const unsigned long long K = key(e);
                if ((K >> (shift + 8)) == (thr >> (shift + 8)))
                    atomicAdd(&S.u.hist[(int)((K >> shift) & 255u)], 1);
            }
            __syncthreads();
            if (tid < 32) find_bin(S.u.hist, k - above, &S.bin, &S.above, &S.count);
            __syncthreads();
            thr |= (unsigned long long)S.bin << shift;
            above += S.above;
            if (S.count == k - above) break; /* the whole bin is in: k keys at or above thr */
        }
    }

    /* gather the k keys at or above thr (every key when n <= topk), then sort them descending */
    if (tid == 0) S.n = 0;
    __syncthreads();
    for (int e = tid; e < n; e += nt) {
        const unsigned long long K = key(e);
        if ((K >> shift) >= (thr >> shift)) S.u.cand[atomicAdd(&S.n, 1)] = K;
    }
    sort_emit(out, S, k, imask);
}

/* ---- a long row's selection over a cluster ------------------------------------------------- */
/* A barrier of the whole cluster: shared-memory writes of any rank before it are seen by every
 * rank after it (arrive releases, wait acquires). */
static __device__ __forceinline__ void cl_sync(void)
{
    asm volatile("barrier.cluster.arrive.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
}

/* A long row's selection state in each CTA's shared memory (the hist and cnt words are read by
 * every rank of the cluster). */
typedef struct cl_pick {
    int hist[2][256]; /* this CTA's histogram of each digit */
    int sum[256];     /* the cluster's, of the digit at hand */
    int cnt[2];       /* this CTA's codes above the cut, and equal to the tie */
    int rg[16], rq[16];
    int wg[SEL_THREADS / 32], wq[SEL_THREADS / 32];
    int bin, above, count;
} cl_pick;

/* This CTA's part of a long row's selection (1 <= k <= n_vis, k <= TOPK_MAX; C <= 16 CTAs of
 * SEL_THREADS): its score codes code [0, ne) are the row's entries e0 .. e0 + ne - 1, the ranks'
 * shares in rank order. As row_topk_long: the k-th largest code in two 8-bit digits (this CTA's
 * histogram, the cluster's summed by every rank alike; a whole bin taken ends it after the
 * first), then every code above the cut and, of the codes equal to the tie, the lowest indices
 * that fill k: those go straight to out behind the larger ones, in index order (ranks in order,
 * then warps, then lanes). The larger ones (keys K = code << ib | imask - e, unique) go to this
 * CTA's list, every rank copies the cluster's lists and ranks its own against them. cand: 2
 * TOPK_MAX keys of this CTA (the list, then the copy). Ends with the cluster barrier's arrive done
 * (no remote read after it); the caller waits before leaving. */
template <int C>
static __device__ void cl_select_long(int32_t *out, const uint16_t *code, int ne, int e0, int nvis,
                                      int k, cl_pick &P, unsigned long long *cand)
{
    static_assert(C <= 16, "cl_pick holds 16 ranks' counts");
    cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, rank = (int)cl.block_rank();
    constexpr int NW = SEL_THREADS / 32;
    for (int i = tid; i < 512; i += SEL_THREADS) (&P.hist[0][0])[i] = 0;
    __syncthreads();

    /* digit 1: the codes' high bytes */
    bin_run run = {-1, 0};
    for (int i = tid; i < ne; i += SEL_THREADS) run_add(run, P.hist[0], code[i] >> 8);
    if (run.n) atomicAdd(&P.hist[0][run.bin], run.n);
    cl_sync();
    int tot = 0;
    for (int r = 0; r < C; r++) tot += *cl.map_shared_rank(&P.hist[0][tid & 255], r);
    if (tid < 256) P.sum[tid] = tot;
    __syncthreads();
    if (warp == 0) find_bin(P.sum, k, &P.bin, &P.above, &P.count);
    __syncthreads();
    const int b1 = P.bin;
    int above = P.above, cut, tie = -1, need = 0;
    if (P.count == k - above) { /* the whole bin is in */
        cut = (b1 << 8) - 1;
    } else { /* digit 2: the bin's low bytes */
        run = {-1, 0};
        for (int i = tid; i < ne; i += SEL_THREADS)
            if ((code[i] >> 8) == b1) run_add(run, P.hist[1], code[i] & 255);
        if (run.n) atomicAdd(&P.hist[1][run.bin], run.n);
        cl_sync(); /* also: every thread has read P.bin, P.sum is free */
        tot = 0;
        for (int r = 0; r < C; r++) tot += *cl.map_shared_rank(&P.hist[1][tid & 255], r);
        if (tid < 256) P.sum[tid] = tot;
        __syncthreads();
        if (warp == 0) find_bin(P.sum, k - above, &P.bin, &P.above, &P.count);
        __syncthreads();
        cut = tie = b1 << 8 | P.bin;
        above += P.above;
        need = k - above;
    }

    /* warp w takes the CTA's entries [lo, hi) in chunks of 128, lane l the 4 from 4 l: counts */
    const int seg = (ne + 128 * NW - 1) / (128 * NW) * 128, lo = warp * seg;
    const int hi = min(ne, lo + seg);
    int ngt = 0, neq = 0;
    for (int c0 = lo; c0 < hi; c0 += 128)
        for (int u = 0, e = c0 + 4 * lane; u < 4; u++)
            if (e + u < hi) ngt += (int)code[e + u] > cut, neq += (int)code[e + u] == tie;
    ngt = __reduce_add_sync(0xffffffffu, ngt);
    neq = __reduce_add_sync(0xffffffffu, neq);
    if (lane == 0) P.wg[warp] = ngt, P.wq[warp] = neq;
    __syncthreads();
    if (tid == 0) {
        int g = 0, q = 0;
        for (int w = 0; w < NW; w++) g += P.wg[w], q += P.wq[w];
        P.cnt[0] = g, P.cnt[1] = q;
    }
    cl_sync();
    if (tid < C) {
        P.rg[tid] = *cl.map_shared_rank(&P.cnt[0], tid);
        P.rq[tid] = *cl.map_shared_rank(&P.cnt[1], tid);
    }
    __syncthreads();
    int gl = 0, qb = 0, ntake = 0, off = 0; /* this warp's place in the CTA's list, the ties */
    for (int r = 0; r < C; r++) {
        if (r < rank) qb += P.rq[r], off += P.rg[r];
        ntake += P.rg[r];
    }
    for (int w = 0; w < warp; w++) gl += P.wg[w], qb += P.wq[w];

    int ib;
    const unsigned long long imask = index_mask(nvis, ib);
    for (int c0 = lo; c0 < hi; c0 += 128) {
        const int e = c0 + 4 * lane;
        uint32_t c[4];
#pragma unroll
        for (int u = 0; u < 4; u++) c[u] = e + u < hi ? code[e + u] : 0u;
        picks_chunk(c, e, hi, cut, tie, e0, ib, imask, cand, gl, out, above, qb, need);
    }

    /* every rank's list into cand [TOPK_MAX ..), then this CTA's picks ranked against them */
    cl_sync();
    unsigned long long *all = cand + TOPK_MAX;
    for (int i = tid; i < ntake; i += SEL_THREADS) {
        int r = 0, o = 0;
        while (i >= o + P.rg[r]) o += P.rg[r++];
        all[i] = *cl.map_shared_rank(cand + (i - o), r);
    }
    asm volatile("barrier.cluster.arrive.aligned;\n" ::: "memory");
    __syncthreads();
    const int mine = P.rg[rank];
    for (int b0 = warp; b0 < mine; b0 += NW * SEL_RB) {
        unsigned long long K[SEL_RB];
        int c[SEL_RB];
#pragma unroll
        for (int i = 0; i < SEL_RB; i++) {
            const int j = b0 + NW * i;
            K[i] = j < mine ? all[off + j] : ~0ull; /* no key is above it */
            c[i] = 0;
        }
        for (int j = lane; j < ntake; j += 32) {
            const unsigned long long v = all[j];
#pragma unroll
            for (int i = 0; i < SEL_RB; i++) c[i] += v > K[i];
        }
#pragma unroll
        for (int i = 0; i < SEL_RB; i++) {
            const int rk = __reduce_add_sync(0xffffffffu, c[i]), j = b0 + NW * i;
            if (lane == i && j < mine) out[rk] = (int32_t)(imask - (K[i] & imask));
        }
    }
}

#endif
