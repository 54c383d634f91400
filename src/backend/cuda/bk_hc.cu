/*
 * bk_hc.cu - the mHC pre-sublayer site (dsv4_bk_hc_site) as ONE kernel. The site used to be four
 * ops (RMSNorm over n*D, the F32 fn projection of only (2+n)n = 24 outputs, hc_pre, RMSNorm over
 * D): 160 us per site at batch 1 on an H100, mostly because 24 x 16,384 f32 dot products ran on
 * a handful of CTAs. Here one thread-block cluster of C CTAs (8; 16 on request) serves R rows:
 *
 *   1. each CTA takes the column slice [rank*D/C, (rank+1)*D/C) of every one of the n streams
 *      (so its K slice holds whole columns d of the collapse), stages that X slice of its R rows
 *      in shared memory (summing squares in double for the RMSNorm), and streams its slice of
 *      fn (weights read once per cluster, 12 float4 per lane in flight, next batch prefetched)
 *      into per-CTA partial dot products [R, (2+n)n];
 *   2. the partials are added over the cluster's ranks in rank order through distributed shared
 *      memory (every CTA adds the same values in the same order, so all hold the same bits) and
 *      multiplied by the row's rsqrt(mean(X^2) + eps): mix = (fn . X) * rs, which is the
 *      reference's fn . (X * rs) up to f32 rounding (well inside the projection's bound);
 *   3. pre = sigmoid(...) + eps is cheap and computed by every CTA; warps 0..6 collapse their
 *      columns (y = bf16(sum_j pre_j X_j), hc_pre's order), sum y^2, exchange those sums over the
 *      cluster (rank order again) and write h = bf16(norm * (y * rs2)), the rmsnorm op's order;
 *   4. meanwhile warp 7 of rank (r mod C) runs the post / softmax / Sinkhorn of row r, one comb
 *      entry per lane with shuffles reproducing dsv4_op_hc_weights' operation order exactly.
 *
 * No workspace, no atomics, no counters: the order of every sum depends only on the shape, so
 * results are reproducible run to run and the op is graph-capturable. Deviations from the CPU
 * (bk_hc.c: the four CPU ops) are those of the ops it replaces: f32 projection sums in another
 * order, RMSNorm double sums in another order, exp in double rounded to f32 (bk_rows.cu).
 *
 * Measured (test_gpu_hc, H100, graph replay, 40 fn matrices in turn so fn comes from HBM): a
 * Flash site at N = 1 takes 16.8 us (the four old ops: 143.6 us), 15.4 us with clusters of 16;
 * N = 64 29.7 us with R = 8 (old: 366.9 us); Pro N = 1 20.2 us (16: 17.7), N = 64 40.9 us.
 * That is far above the bytes (1.6 MB of fn: ~0.5 us at 3 TB/s); not profiled yet, the time
 * is presumably latency: the launch, the dependent global-load rounds (one per row staged, one
 * per fn batch), three cluster barriers and the 40 dependent Sinkhorn divisions. Next: 16-CTA
 * clusters by default where the GPU places them, the X slice and all of fn issued at once (TMA bulk
 * copies into shared memory), and the Sinkhorn started as soon as the 16 comb logits are summed.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/hc_dev.cuh"
#include "backend/cuda/quant_dev.cuh"

#include <cooperative_groups.h>
#include <cuda_fp16.h>

namespace cg = cooperative_groups;

enum {
    HS_THREADS = 256,
    HS_WARPS = HS_THREADS / 32,
    HS_CWARPS = HS_WARPS - 1, /* warps that collapse and normalise; the last runs the Sinkhorn */
    HS_OPW = 3,               /* outputs per warp per pass: 8 warps x 3 = 24 = (2+4)4 */
    HS_U = 4,                 /* quads (4 columns) per lane per load batch */
    HS_HC_MAX = 16,
    HS_M_MAX = (2 + HS_HC_MAX) * HS_HC_MAX,
};

enum { WT_F32, WT_BF16, WT_F16 };

struct hs_args {
    float *h, *y, *mix, *post, *comb;
    const float *X, *base, *scale, *norm;
    const void *fn;
    int64_t N, D;
    int n, iters, cols; /* cols = D / C: the columns of each stream one CTA owns */
    float hc_eps, rms_eps;
};

/* ---- device helpers ---------------------------------------------------------------------- */

/* Elements i .. i+3 of fn (i a multiple of 4) as f32; bf16 and f16 widen exactly. */
template <int WT> __device__ __forceinline__ float4 ld_w4(const void *fn, int64_t i)
{
    if constexpr (WT == WT_F32) {
        return __ldg((const float4 *)fn + i / 4);
    } else {
        const uint2 u = __ldg((const uint2 *)fn + i / 4);
        if constexpr (WT == WT_BF16) {
            return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                               __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
        } else {
            return make_float4(__half2float(__ushort_as_half((unsigned short)(u.x & 0xffffu))),
                               __half2float(__ushort_as_half((unsigned short)(u.x >> 16))),
                               __half2float(__ushort_as_half((unsigned short)(u.y & 0xffffu))),
                               __half2float(__ushort_as_half((unsigned short)(u.y >> 16))));
        }
    }
}

/* Split cluster barrier: arrive (release) and wait (acquire) may be apart, so that warp 7 can
 * arrive, run its Sinkhorn, and wait later. Every thread of the cluster arrives once per phase. */
__device__ static inline void cluster_arrive()
{
    asm volatile("barrier.cluster.arrive.release;" ::: "memory");
}

__device__ static inline void cluster_wait()
{
    asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
}

/* The sum over the cluster's ranks 0, 1, .. C-1 in that order of the value at p in each rank's
 * shared memory. All C loads are issued before the first add (one round trip, not C). */
__device__ static float cluster_sum(cg::cluster_group &cl, float *p, int C)
{
    float v[16];
#pragma unroll
    for (int c = 0; c < 16; c++) v[c] = c < C ? *cl.map_shared_rank(p, c) : 0.0f;
    float s = v[0];
#pragma unroll
    for (int c = 1; c < 16; c++)
        if (c < C) s = __fadd_rn(s, v[c]);
    return s;
}

__device__ static double cluster_sum(cg::cluster_group &cl, double *p, int C)
{
    double v[16];
#pragma unroll
    for (int c = 0; c < 16; c++) v[c] = c < C ? *cl.map_shared_rank(p, c) : 0.0;
    double s = v[0];
#pragma unroll
    for (int c = 1; c < 16; c++)
        if (c < C) s = __dadd_rn(s, v[c]);
    return s;
}

/* Barrier of the collapse warps 0 .. HS_CWARPS-1 only (warp 7 is busy with the Sinkhorn). */
__device__ static inline void collapse_sync()
{
    asm volatile("bar.sync 1, %0;" ::"r"(HS_CWARPS * 32) : "memory");
}

/* fn quads of one load batch: v[u][i] = fn[o][k .. k+3] for this lane's quad q0 + 32u of the
 * CTA's slice and the warp's outputs o = og + warp + 8i (zero past the slice or past M). Slice
 * quad q covers stream j = 4q / cols, columns d0 + 4q - j cols .. +3 (cols % 4 == 0). */
template <int WT>
__device__ __forceinline__ void load_batch(float4 (&v)[HS_U][HS_OPW], const hs_args &a, int og,
                                           int warp, int q0, int nq, int M, int64_t d0)
{
    const int64_t nD = (int64_t)a.n * a.D;
#pragma unroll
    for (int u = 0; u < HS_U; u++) {
        const int q = q0 + 32 * u, kk = 4 * q, j = kk / a.cols;
        const int64_t gk = (int64_t)j * a.D + d0 + (kk - j * a.cols);
#pragma unroll
        for (int i = 0; i < HS_OPW; i++) {
            const int o = og + warp + HS_WARPS * i;
            v[u][i] = q < nq && o < M ? ld_w4<WT>(a.fn, (int64_t)o * nD + gk)
                                      : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
}

/* dsv4_op_hc_weights' post and comb for one row by one lane (n*n > 32: the general fallback),
 * comb updated in place in global memory (hc_dev.cuh; pre is computed by the collapse). */
__device__ static void hc_weights_serial(const hs_args &a, const float *mix, int64_t row)
{
    float pre[HS_HC_MAX]; /* n <= HS_HC_MAX (dsv4_cuda_bk_hc_site checks) */
    dev_hc_weights(mix, a.base, a.scale, a.n, a.iters, a.hc_eps, pre, a.post + row * a.n,
                   a.comb + row * a.n * a.n);
}

/* The same for n*n <= 32 by a whole warp: lane e = j*n + k holds comb[j][k]; every row or
 * column sum is gathered by shuffles and added in index order starting from 0.0f, exactly the
 * serial loops' operations, so the bits are the same. mix: the row's [(2+n)n] (shared). */
__device__ static void hc_weights_warp(const hs_args &a, const float *mix, int64_t row, int lane)
{
    const int n = a.n, nn = n * n;
    if (nn > 32) {
        if (lane == 0) hc_weights_serial(a, mix, row);
        __syncwarp();
        return;
    }
    const float *scale = a.scale, *base = a.base, eps = a.hc_eps;
    const unsigned all = 0xffffffffu;
    if (lane < n)
        a.post[row * n + lane] = __fmul_rn(
            2.0f, dev_sigmoid(__fadd_rn(__fmul_rn(mix[n + lane], scale[1]), base[n + lane])));
    /* lanes >= nn compute junk from junk and store nothing; active lanes only read active ones */
    const bool act = lane < nn;
    const int j = lane / n, k = lane - j * n;
    float v = act ? __fadd_rn(__fmul_rn(mix[2 * n + lane], scale[2]), base[2 * n + lane]) : 0.0f;
    float mx = -INFINITY;
    for (int kk = 0; kk < n; kk++) {
        const float t = __shfl_sync(all, v, j * n + kk);
        if (t > mx) mx = t;
    }
    v = (float)exp((double)__fsub_rn(v, mx));
    float sum = 0.0f;
    for (int kk = 0; kk < n; kk++) sum = __fadd_rn(sum, __shfl_sync(all, v, j * n + kk));
    v = __fadd_rn(__fdiv_rn(v, sum), eps);
    for (int it = 0; it < a.iters; it++) {
        if (it > 0) { /* rows */
            float s = 0.0f;
            for (int kk = 0; kk < n; kk++) s = __fadd_rn(s, __shfl_sync(all, v, j * n + kk));
            v = __fdiv_rn(v, __fadd_rn(s, eps));
        }
        float s = 0.0f; /* columns */
        for (int jj = 0; jj < n; jj++) s = __fadd_rn(s, __shfl_sync(all, v, jj * n + k));
        v = __fdiv_rn(v, __fadd_rn(s, eps));
    }
    if (act) a.comb[row * nn + lane] = v;
}

/* ---- the site kernel ----------------------------------------------------------------------
 * X [N, n, D], fn [(2+n)n, n*D] -> h [N, D], y [N, D] (optional), mix [N, (2+n)n] (optional),
 * post [N, n], comb [N, n, n]. Grid: C * ceil(N / R) CTAs in clusters of C; cluster g serves
 * rows [g R, g R + R), rank c the columns [c cols, (c+1) cols) of every stream.
 * Dynamic shared memory: xs [R][n][cols] (the X slice), ys [R][cols] (the collapsed y). */
template <int R, int WT>
__global__ static void __launch_bounds__(HS_THREADS, 1) hc_site_kernel(hs_args a)
{
    extern __shared__ float4 hs_dyn[];
    __shared__ float part[R * HS_M_MAX], mixs[R * HS_M_MAX], pre_s[R * HS_HC_MAX];
    __shared__ float rs_s[R], rs2_s[R];
    __shared__ double ssp[R], ssy[R], red[HS_WARPS * R];

    cg::cluster_group cl = cg::this_cluster();
    const int C = (int)cl.num_blocks(), rank = (int)cl.block_rank();
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n = a.n, M = (2 + n) * n, cols = a.cols, sl = n * cols, nq = sl / 4;
    const int64_t D = a.D, nD = (int64_t)n * D, r0 = (int64_t)(blockIdx.x / C) * R;
    const int nr = (int)(a.N - r0 < R ? a.N - r0 : R);
    const int64_t d0 = (int64_t)rank * cols;
    float4 *xs4 = hs_dyn;
    float *xs = (float *)hs_dyn, *ys = xs + (size_t)R * sl;

    /* the first fn batch is in flight while X is staged */
    float4 cur[HS_U][HS_OPW];
    load_batch<WT>(cur, a, 0, warp, lane, nq, M, d0);

    /* 1a. X slice -> shared; sum of squares per row (double, as the rmsnorm op) */
    double ssr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        double s = 0.0;
        if (r < nr) {
            const float *xr = a.X + (r0 + r) * nD + d0;
            for (int q = tid; q < nq; q += HS_THREADS) {
                const int kk = 4 * q, j = kk / cols;
                const float4 v = __ldg((const float4 *)(xr + (int64_t)j * D + (kk - j * cols)));
                xs4[r * nq + q] = v;
                s += (double)v.x * (double)v.x;
                s += (double)v.y * (double)v.y;
                s += (double)v.z * (double)v.z;
                s += (double)v.w * (double)v.w;
            }
        }
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        ssr[r] = s;
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; r++) red[warp * R + r] = ssr[r];
    }
    __syncthreads();
    if (tid < R) {
        double t = 0.0;
        for (int w = 0; w < HS_WARPS; w++) t += red[w * R + tid];
        ssp[tid] = t;
    }

    /* 1b. partial dot products of the slice: warp w, outputs og + w + 8i, lanes over quads */
    for (int og = 0; og < M; og += HS_WARPS * HS_OPW) {
        if (og > 0) load_batch<WT>(cur, a, og, warp, lane, nq, M, d0);
        float acc[R][HS_OPW];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int i = 0; i < HS_OPW; i++) acc[r][i] = 0.0f;
        for (int q0 = lane; q0 < nq; q0 += 32 * HS_U) {
            float4 nxt[HS_U][HS_OPW];
            load_batch<WT>(nxt, a, og, warp, q0 + 32 * HS_U, nq, M, d0);
#pragma unroll
            for (int u = 0; u < HS_U; u++) {
                const int q = q0 + 32 * u;
                if (q >= nq) break;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    if (r >= nr) break;
                    const float4 x = xs4[r * nq + q];
#pragma unroll
                    for (int i = 0; i < HS_OPW; i++) {
                        float s = acc[r][i];
                        s = fmaf(cur[u][i].x, x.x, s);
                        s = fmaf(cur[u][i].y, x.y, s);
                        s = fmaf(cur[u][i].z, x.z, s);
                        s = fmaf(cur[u][i].w, x.w, s);
                        acc[r][i] = s;
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < HS_U; u++)
#pragma unroll
                for (int i = 0; i < HS_OPW; i++) cur[u][i] = nxt[u][i];
        }
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int i = 0; i < HS_OPW; i++) {
                float s = acc[r][i];
                for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                const int oi = og + warp + HS_WARPS * i;
                if (lane == 0 && oi < M) part[r * M + oi] = s;
            }
    }
    cluster_arrive();
    cluster_wait();

    /* 2. mix = (sum over ranks in rank order) * rs; rs from the summed squares */
    for (int t = tid; t < nr * M; t += HS_THREADS) mixs[t] = cluster_sum(cl, part + t, C);
    if (tid < nr) {
        const float var = (float)(cluster_sum(cl, ssp + tid, C) / (double)nD);
        rs_s[tid] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, a.rms_eps)));
    }
    __syncthreads();
    for (int t = tid; t < nr * M; t += HS_THREADS) {
        const int r = t / M;
        const float v = __fmul_rn(mixs[t], rs_s[r]);
        mixs[t] = v;
        if (rank == 0 && a.mix) a.mix[r0 * M + t] = v;
    }
    __syncthreads();
    for (int t = tid; t < nr * n; t += HS_THREADS) {
        const int r = t / n, j = t - r * n;
        pre_s[r * HS_HC_MAX + j] = __fadd_rn(
            dev_sigmoid(__fadd_rn(__fmul_rn(mixs[r * M + j], a.scale[0]), a.base[j])), a.hc_eps);
    }
    __syncthreads();

    if (warp == HS_CWARPS) { /* 4. post, comb: rows r = rank (mod C) */
        cluster_arrive();
        for (int r = rank; r < nr; r += C) hc_weights_warp(a, mixs + r * M, r0 + r, lane);
        cluster_wait();
        cluster_arrive();
        cluster_wait();
        return;
    }

    /* 3. collapse (hc_pre's order), y^2 sums, then h = bf16(norm * (y * rs2)) */
    double syr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        double s = 0.0;
        if (r < nr) {
            for (int c = tid; c < cols; c += HS_CWARPS * 32) {
                float acc = 0.0f;
                for (int j = 0; j < n; j++)
                    acc = __fadd_rn(acc,
                                    __fmul_rn(pre_s[r * HS_HC_MAX + j], xs[r * sl + j * cols + c]));
                const float yv = dev_round_bf16(acc);
                ys[r * cols + c] = yv;
                if (a.y) a.y[(r0 + r) * D + d0 + c] = yv;
                s += (double)yv * (double)yv;
            }
        }
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        syr[r] = s;
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; r++) red[warp * R + r] = syr[r];
    }
    collapse_sync();
    if (tid < R) {
        double t = 0.0;
        for (int w = 0; w < HS_CWARPS; w++) t += red[w * R + tid];
        ssy[tid] = t;
    }
    cluster_arrive();
    cluster_wait();
    if (tid < nr) {
        const float var = (float)(cluster_sum(cl, ssy + tid, C) / (double)D);
        rs2_s[tid] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, a.rms_eps)));
    }
    collapse_sync();
    for (int r = 0; r < nr; r++)
        for (int c = tid; c < cols; c += HS_CWARPS * 32) {
            float v = __fmul_rn(ys[r * cols + c], rs2_s[r]);
            if (a.norm) v = __fmul_rn(a.norm[d0 + c], v);
            a.h[(r0 + r) * D + d0 + c] = dev_round_bf16(v);
        }
    cluster_arrive(); /* no rank leaves while another may still read its shared memory */
    cluster_wait();
}

/* ---- host side ----------------------------------------------------------------------------- */
typedef void (*hs_kernel)(hs_args);

template <int WT> static hs_kernel pick_rows(int R)
{
    switch (R) {
    case 1:
        return hc_site_kernel<1, WT>;
    case 2:
        return hc_site_kernel<2, WT>;
    case 4:
        return hc_site_kernel<4, WT>;
    default:
        return hc_site_kernel<8, WT>;
    }
}

static hs_kernel pick(int R, int wt)
{
    return wt == WT_F32    ? pick_rows<WT_F32>(R)
           : wt == WT_BF16 ? pick_rows<WT_BF16>(R)
                           : pick_rows<WT_F16>(R);
}

/* Dynamic shared memory of a CTA (xs and ys), and the static arrays of hc_site_kernel<R>. */
static size_t smem_bytes(int R, int n, int cols)
{
    return (size_t)R * (size_t)(n + 1) * (size_t)cols * sizeof(float);
}

static size_t static_smem_bytes(int R)
{
    return (size_t)R *
           ((2 * HS_M_MAX + HS_HC_MAX + 2) * sizeof(float) + (2 + HS_WARPS) * sizeof(double));
}

static cudaLaunchConfig_t make_cfg(dim3 grid, size_t smem, cudaStream_t st,
                                   cudaLaunchAttribute *attr, int C)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(HS_THREADS, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)C;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

static int fn_type(const dsv4_weight *fn)
{
    if (fn->format == DSV4_FORMAT_F32 && fn->dtype == DSV4_DT_F32) return WT_F32;
    if (fn->format == DSV4_FORMAT_BF16 && fn->dtype == DSV4_DT_BF16) return WT_BF16;
    if (fn->format == DSV4_FORMAT_F16 && fn->dtype == DSV4_DT_F16) return WT_F16;
    return -1;
}

/* The op with its launch shape chosen by the caller (tests, benchmarks): C CTAs a cluster (0:
 * auto, the largest of 8, 4, 2, 1 that divides D / 4; 16 only on request, as a non-portable
 * size) and R rows a cluster (0: auto, the fewest of 1, 2, 4, 8 that keep the clusters within
 * half the SMs). *used_cluster / *used_rows (may be NULL) receive the shape launched. The
 * shape depends only on the arguments and the SM count, so a captured graph and an eager call
 * launch the same one (and give the same bits). */
extern "C" dsv4_status dsv4_cuda_bk_hc_site_ex(dsv4_backend *b, float *h, float *y, float *mix,
                                               float *post, float *comb, const float *X,
                                               const dsv4_weight *fn, const float *base,
                                               const float *scale, const float *norm, int64_t N,
                                               int n, int64_t D, int iters, float hc_eps,
                                               float rms_eps, int cluster, int rows,
                                               int *used_cluster, int *used_rows)
{
    const int64_t M = (int64_t)(2 + n) * n;
    if (N < 0 || n < 1 || n > HS_HC_MAX || D < 1 || iters < 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "hc_site: N %lld n %d (1..%d) D %lld iters %d",
                         (long long)N, n, HS_HC_MAX, (long long)D, iters);
    const int wt = fn_type(fn);
    if (wt < 0 || fn->rows != M || fn->cols != n * D)
        return dsv4_fail(
            DSV4_ERR_UNSUPPORTED,
            "hc_site: fn %s [%lld, %lld] (%s) must be a dense F32/BF16/F16 [%lld, %lld]",
            fn->name ? fn->name : "?", (long long)fn->rows, (long long)fn->cols,
            dsv4_weight_format_name(fn->format), (long long)M, (long long)(n * D));
    if (D % 4 || (uintptr_t)X % 16 || (uintptr_t)fn->data % (wt == WT_F32 ? 16 : 8))
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "hc_site: D %lld must be a multiple of 4, X and fn 16-byte aligned",
                         (long long)D);
    if (cluster < 0 || cluster > 16 || (cluster & (cluster - 1)) ||
        (cluster && D % (4 * cluster)) ||
        (rows != 0 && rows != 1 && rows != 2 && rows != 4 && rows != 8))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "hc_site: cluster %d rows %d for D %lld",
                         cluster, rows, (long long)D);
    if (N == 0) return DSV4_OK;
    cudaStream_t st = dsv4_cuda_stream(b->cuda);
    int C = cluster;
    if (!C) {
        C = 8;
        while (D % (4 * C)) C /= 2;
    }
    const int cols = (int)(D / C);
    int dev = 0, n_sm = 0, optin = 0;
    CUDA_TRY(cudaGetDevice(&dev));
    CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    /* At most n_sm / (2C) clusters (8 of 8 CTAs on an H100): measured (test_gpu_hc, H100,
     * N = 64), fewer clusters of more rows win while the fn slices they all read come from L2:
     * R = 8 29.7 us, R = 4 40.6 us, R = 1 79.4 us (Flash); at N = 7, R = 1 is best (16.9 us). */
    const int64_t maxc = n_sm / (2 * C) > 1 ? n_sm / (2 * C) : 1;
    int R = rows;
    if (!R) {
        R = 1;
        while (R < 8 && (N + R - 1) / R > maxc) R *= 2;
        while (R > 1 && smem_bytes(R, n, cols) + static_smem_bytes(R) > (size_t)optin) R /= 2;
    }
    const size_t smem = smem_bytes(R, n, cols);
    if (smem + static_smem_bytes(R) > (size_t)optin)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "hc_site: %zu B of shared memory (D %lld, %d CTAs a cluster, %d rows)",
                         smem + static_smem_bytes(R), (long long)D, C, R);
    const int64_t groups = (N + R - 1) / R;
    if (groups * C > 0x7fffffff)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "hc_site: %lld rows", (long long)N);
    const hs_kernel k = pick(R, wt);
    CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (C > 8) CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    hs_args a;
    a.h = h;
    a.y = y;
    a.mix = mix;
    a.post = post;
    a.comb = comb;
    a.X = X;
    a.base = base;
    a.scale = scale;
    a.norm = norm;
    a.fn = fn->data;
    a.N = N;
    a.D = D;
    a.n = n;
    a.iters = iters;
    a.cols = cols;
    a.hc_eps = hc_eps;
    a.rms_eps = rms_eps;
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = make_cfg(dim3((unsigned)(groups * C), 1, 1), smem, st, attr, C);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, k, a));
    if (used_cluster) *used_cluster = C;
    if (used_rows) *used_rows = R;
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_hc_site(dsv4_backend *b, float *h, float *y, float *mix,
                                            float *post, float *comb, const float *X,
                                            const dsv4_weight *fn, const float *base,
                                            const float *scale, const float *norm, int64_t N, int n,
                                            int64_t D, int iters, float hc_eps, float rms_eps)
{
    return dsv4_cuda_bk_hc_site_ex(b, h, y, mix, post, comb, X, fn, base, scale, norm, N, n, D,
                                   iters, hc_eps, rms_eps, 0, 0, NULL, NULL);
}
