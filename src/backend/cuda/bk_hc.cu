/*
 * bk_hc.cu - the mHC ops that read a whole site's fn matrix, each as ONE kernel:
 *   dsv4_bk_hc_site       the pre-sublayer site (RMSNorm over n*D, the F32 fn projection of only
 *                         (2+n)n = 24 outputs, hc_pre, RMSNorm over D),
 *   dsv4_bk_hc_seam       the previous sublayer's post-mix X' = bf16(post f + comb^T X) fused into
 *                         the next site (X' is written too: it is the residual the next post
 *                         reads); without post / comb only fn's first n rows (pre -> h), and
 *   dsv4_bk_hc_seam_weights  the other half: fn's rows [n, M) -> post, comb (the Sinkhorn), which
 *                         the engine runs beside the next sublayer (the same kernel, o0 / o1),
 *   dsv4_bk_hc_head_site  the head collapse: the site with hc_head's n outputs and weights
 *                         (sigmoid pre only), optionally after the last post-mix.
 * The four separate ops took 160 us per site at batch 1 on an H100, and the head 130 us, mostly
 * because 24 x 16,384 f32 dot products ran on a handful of CTAs. Here one thread-block cluster of
 * C CTAs (16 where the GPU places them, else 8) serves R rows:
 *
 *   1. each CTA takes the column slice [rank*D/C, (rank+1)*D/C) of every one of the n streams
 *      (so its K slice holds whole columns d of the collapse). Before its PDL wait it issues
 *      its first two batches of fn loads and copies base, scale, its slice of norm and, for the
 *      post-mix, the X slice of its R rows to shared memory by cp.async (none is written by the
 *      two launches before: backend.h); after the wait, f, post and comb (the post-mix) or X
 *      (a plain site): no dependent global read later. For the seam a thread per (stream,
 *      column quad) computes X' in hc_post's order, stores it (shared and global) and sums
 *      squares in double for the RMSNorm, in the same order as the plain site sums X's; then
 *      the slice of fn is streamed (12 float4 per lane in flight, two batches ahead) into
 *      partial dot products [R, M], which every CTA pushes into every rank's shared memory
 *      (distributed shared memory stores, then one cluster barrier);
 *   2. each rank adds the partials it was sent in rank order (all hold the same bits) and
 *      multiplies by the row's rsqrt(mean(X^2) + eps): mix = (fn . X) * rs, which is the
 *      reference's fn . (X * rs) up to f32 rounding (well inside the projection's bound);
 *   3. pre = sigmoid(...) + eps is cheap and computed by every CTA; warps 0..6 collapse their
 *      columns (y = bf16(sum_j pre_j X_j), hc_pre's order), sum y^2, push those sums to every
 *      rank (a second barrier) and write h = bf16(norm * (y * rs2)), the rmsnorm op's order, and
 *      with xq the 128-blocks of act_quant(h) (act_quant_kernel's operations: the attention's
 *      FP8 input without its own launch);
 *   4. meanwhile warp 7 of rank (r mod C) runs the post / softmax / Sinkhorn of row r (not for
 *      the head) from its own copy of the row's mix, as soon as the partials are in, one comb
 *      entry per lane with shuffles reproducing dsv4_op_hc_weights' operation order exactly
 *      (n = 4 unrolled: one normalisation costs a shuffle, 5 adds and a division).
 *
 * No workspace, no atomics, no counters: the order of every sum depends only on the shape (C),
 * so results are reproducible run to run and the ops are graph-capturable; the seam gives the
 * bits of hc_post followed by hc_site with the same C. Deviations from the CPU (bk_hc.c: the
 * CPU ops composed) are those of the ops replaced: f32 projection sums in another order, RMSNorm
 * double sums in another order, exp in double rounded to f32 (bk_rows.cu); the post-mix and
 * act_quant(h) are the CPU's bit for bit.
 *
 * Where a launch's time goes (test_gpu_hc's trace: clock64 of rank 0 at the end of each phase,
 * H100, fn from HBM, us from the kernel's first instruction; Flash seam, N = 1, C = 16):
 *   loads issued 2.2, X staged 2.3, X' 3.6, partials pushed 6.1, barrier 1 7.0, mix / pre 8.0,
 *   collapse 8.8, barrier 2 9.4, h + xq written 10.8; the Sinkhorn 8.5 .. 11.8 (3.3 us for 40
 *   dependent normalisations, the launch's tail). fn's slice (96 KB a CTA) lands only ~6 us in:
 *   by __ldg or by the TMA alike (a variant with one bulk copy per (output, stream) row and an
 *   mbarrier: partials at 6.0 us, ncu 18.4 against 17.1 us per seam; not kept). After this
 *   version's changes (the Sinkhorn from its own mix copy: starts at 7.4 us; X' by all threads:
 *   0.55 us; one division per fn quad in the load addresses) the launch ended at 10.6 us, the
 *   Sinkhorn at 11.4. At N = 64 (C = 8, R = 8) the phases are serial per-thread work: X' 7.6 us,
 *   partials 10.8, collapse 6.9, h + xq 5.4 (35.9 in all; ncu 49.5 us, 51.9 before): see
 *   session 11 below.
 * Graph replay (40 fn in turn), us, Flash N = 1 / 7 / 64: hc_seam 12.5 / 13.9 / 37.7 (with xq),
 * hc_site 11.8 / 12.9 / 29.3, hc_head_site 8.3 / 10.4 / 29.6 (the TMA variant; hc_post +
 * hc_site: 14.5 / 15.4 / 35.1).
 * The seam's halves (session 9; the engine splits the seams of few rows, engine_layer.c): without
 * post / comb (4 of fn's 24 rows, no Sinkhorn) 8.9 / 10.5 / 34.2 us against the whole seam's
 * 10.6 / 11.7 / 36.4, and its trace ends at 7.3 us against 8.1 (the Sinkhorn's warp at 8.8);
 * hc_seam_weights 9.5 / 10.7 / 24.7 beside it. What is left at N = 1 is a chain of short
 * phases (mix and pre 1.2 us, the collapse 0.7, barrier 2 0.6, h and xq 1.2); adding the C
 * partials with their loads issued together (unrolled to 16) did not shorten it.
 * In the step (session 10: %globaltimer stamps of every CTA and of the GEMVs around it in an
 * instrumented build, Flash batch 1, graph replay with PDL, H100; docs/PERF.md) the pre half
 * after wo_b is placed 1.3 us before wo_b ends, its wait returns 0.6 us after it, its phases
 * end at (us from the wait) staged 1.5, X' 2.1, partials pushed 3.5, barrier 1 4.1, pre 5.2,
 * collapse 6.0, barrier 2 6.7, h + xq 7.8, and the next GEMV's wait returns 1.15 us after its
 * last CTA's exit: 9.8 us from wo_b's end to the next kernel's start, of which ~0.6-1.2 is any
 * launch's edge. After the MoE's combine (4 CTAs) it is placed only 4.6 us after the
 * combine's wait (the weights half alike), and its wait returns 1 us after its first
 * instruction. The fn loads, meant to go out before the wait since session 8, were behind it
 * in the SASS (ptxas sinks ld.global.nc below griddepcontrol.wait; plain loads stay); with
 * them and the copies of X, base, scale and norm before the wait (this version) the step is
 * 0.5% faster at batch 1 (PERF.md, session 10). Storing X' to Xo after barrier 1's arrival
 * (so that its release fence does not wait for the stores) and running the weights half after
 * the pre half instead of beside it (so that the two clusters do not compete for placement)
 * were measured and not kept (the same; 1.4% slower).
 * At 8 .. 64 rows (session 11): a launch's time is its CTAs' rows times a per-row cost, and a
 * second wave of clusters costs a whole first one. The plan of session 10 (at most n_sm / (2C)
 * clusters) ran N = 64 as 8 clusters of R = 8 on 64 SMs, 35-39 us, and R = 4 as 16 clusters
 * of 8, one more than an H100 holds (15), in two waves (39.8). Now R is the fewest rows that
 * fit every cluster in one wave (N = 64: R = 5, 13 clusters; N = 32: R = 3; N = 3 .. 7: C = 16,
 * R = 1), and R is 1 .. 6 or 8. The per-row phases (post-mix, collapse) loop over the rows
 * instead of unrolling them: unrolled, ncu put 45% of the stall cycles of the R = 8 launch on
 * the instruction fetch (9.8 cycles between issues; rolled 5.7), and interleaving the unrolled
 * rows for ILP changed nothing. The partial products take cur and nxt in turn (no copy of nxt
 * into cur that waited for its loads one batch after issue): dots end 0.5 us sooner at N = 1.
 * Graph replay (test_gpu_hc, H100, us), Flash seam N = 1 / 7 / 64: 10.5 / 11.7 / 35.1 before,
 * 10.5 / 10.4 / 24.1 after (N = 8 / 16 / 32: 11.9 / 14.4 / 17.2; N = 32 with the old plan's
 * R = 4: 20.5); Pro N = 1 / 64: 15.4 / 60.6 -> 14.8 / 35.7 (PERF.md, session 11). Rows in the quad
 * loops, unrolled and interleaved for ILP (the same bits), were not kept: at R = 5 24.6 us
 * against 24.1, and the step at batch 64 1.5% faster against 2.1% with the rows rolled.
 * Two CTAs an SM (session 24): the same kernel with 128 registers (fn loads two quads a lane a
 * batch instead of four) where that takes fewer rows a cluster (hs_launch): N = 64 R = 3 in 22
 * clusters, 21.0 us; the bits are those of the same C (test_gpu_hc runs both kernels).
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/cluster.cuh"
#include "backend/cuda/hc_dev.cuh"
#include "backend/cuda/pdl.cuh"
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
    HS_U2 = 2,                /* the same in the kernels of two CTAs an SM (128 registers) */
    HS_R2_MAX = 4,            /* rows a cluster of those kernels */
    HS_HC_MAX = 16,
    HS_M_MAX = (2 + HS_HC_MAX) * HS_HC_MAX,
    HS_PC = HS_HC_MAX + HS_HC_MAX * HS_HC_MAX, /* post_in [n] + comb_in [n, n] of one row */
    HS_MIN_COLS = 128, /* auto cluster size: no more CTAs than leave each this many columns */
    HS_C_MAX = 16,     /* CTAs a cluster */
};

enum { WT_F32, WT_BF16, WT_F16 };

struct hs_args {
    float *h, *xq, *y, *mix, *post, *comb, *Xo;
    const float *X, *f, *post_in, *comb_in, *base, *scale, *norm;
    const void *fn;
    long long *trace; /* the tests' phase clocks of rank 0 of cluster 0 (NULL: none), hs_trace */
    int64_t N, D;
    int n, M, iters, cols; /* M: fn's rows; cols = D / C: the columns of each stream a CTA owns */
    int head;              /* the head collapse: M = n, pre from head_scale, no post / comb */
    int o0, o1;   /* the rows [o0, o1) of fn projected (the seam's halves: [0, n), [n, M)) */
    int collapse; /* pre, y, h (and xq) from rows [0, n): all but the seam's weights half */
    int weights;  /* post and comb (the Sinkhorn) from rows [n, M): a site, the weights half */
    float head_scale, hc_eps, rms_eps;
    double inv_nD, inv_D; /* 1 / (n D), 1 / D where powers of two (exact), else 0 */
};

/* Phase clocks (clock64 of thread 0, rank 0, cluster 0; the Sinkhorn's of its warp 7), for the
 * tests' breakdown of a launch. */
enum {
    TR_START,    /* after the PDL wait */
    TR_ISSUED,   /* fn, X, weights loads issued */
    TR_STAGED,   /* X, f, post, comb, base, scale, norm in shared memory */
    TR_POSTMIX,  /* X' and the sums of squares */
    TR_DOTS,     /* the partial projections pushed to every rank */
    TR_MIX,      /* barrier 1 passed: partials of all ranks here */
    TR_PRE,      /* mix, rs, pre */
    TR_COLLAPSE, /* y and its sums of squares pushed */
    TR_RS2,      /* barrier 2 passed */
    TR_END,      /* h (and xq) written */
    TR_SK0,      /* warp 7: Sinkhorn start */
    TR_SK1,      /* warp 7: Sinkhorn end */
    TR_GT0,      /* %globaltimer (ns) at TR_START and TR_END: the clock's rate */
    TR_GT1,
    TR_N
};

/* ---- device helpers ---------------------------------------------------------------------- */

/* The 4 elements of fn at p as f32 (p 16-byte aligned for F32, 8 for BF16 / F16); bf16 and
 * f16 widen exactly. Plain (coherent) loads, not __ldg: ptxas moves ld.global.nc past
 * griddepcontrol.wait, so the first batches, written before DSV4_PDL_WAIT(), went out after it
 * (every LDG.CONSTANT behind the ACQBULK in the SASS); plain loads stay before it. */
template <int WT> __device__ __forceinline__ float4 ld_w4(const char *p)
{
    if constexpr (WT == WT_F32) {
        return *(const float4 *)p;
    } else {
        const uint2 u = *(const uint2 *)p;
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

/* 16 bytes global -> shared without passing through registers (src, dst 16-byte aligned). */
__device__ static inline void cp_async16(void *dst, const void *src)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
}

/* 4 bytes global -> shared (the small weights: base, scale, norm, post, comb). */
__device__ static inline void cp_async4(void *dst, const void *src)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src) : "memory");
}

/* This thread's cp.async copies have landed (the caller then syncs the block). */
__device__ static inline void cp_async_wait_all()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

/* Split cluster barrier: arrive (release) and wait (acquire) may be apart, so that warp 7 can
 * arrive, run its Sinkhorn, and wait later. Every thread of the cluster arrives once per phase,
 * and waits before it arrives again. */
__device__ static inline void cluster_arrive()
{
    asm volatile("barrier.cluster.arrive.release;" ::: "memory");
}

/* Arrival that orders nothing: the start barrier, after which ranks may write to each other's
 * shared memory (every CTA of the cluster has started). */
__device__ static inline void cluster_arrive_relaxed()
{
    asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
}

__device__ static inline void cluster_wait()
{
    asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
}

/* Dynamic shared memory of a CTA, byte offsets (host and device agree on them):
 *   xss, xsy [C][R] double  the sums of squares of X' and of y pushed by every rank (slot: the
 *                           sender's rank), summed locally in rank order;
 *   xpart [C][R][M] float   the partial projections pushed by every rank;
 *   bs [M + 4]              base [M] (the head: [n]) and scale [3];
 *   nrm [cols]              the norm weight's slice;
 *   xs [R][n][cols]         the streams the site reads; ys [R][cols]: f during the post-mix,
 *                           then y; xr [R][n][cols]: X, with the post-mix only. */
struct hs_layout {
    int xss, xsy, xpart, bs, nrm, xs, ys, xr, total;
};

__host__ __device__ static inline hs_layout hs_layout_of(int R, int C, int n, int M, int cols,
                                                         int pm)
{
    hs_layout L;
    int o = 0;
    L.xss = o;
    o += C * R * 8;
    L.xsy = o;
    o += C * R * 8;
    L.xpart = o;
    o += (C * R * M * 4 + 15) & ~15;
    L.bs = o;
    o += ((M + 4) * 4 + 15) & ~15;
    L.nrm = o;
    o += cols * 4;
    L.xs = o;
    o += R * n * cols * 4;
    L.ys = o;
    o += R * cols * 4;
    L.xr = o;
    o += pm ? R * n * cols * 4 : 0;
    L.total = o;
    return L;
}

/* The GPU's nanosecond timer (the trace's clock rate). */
__device__ static inline unsigned long long globaltimer()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* The RMSNorm factor 1 / sqrt(mean + eps) of row r from the sums of squares every rank sent
 * (xs [C][R], added in rank order), over cnt values: mean = sum / cnt in double (times the
 * exact inverse where cnt is a power of two: the same bits, without the division). */
__device__ static inline float row_rs(const double *xs, int R, int C, int r, double inv,
                                      int64_t cnt, float eps)
{
    double t = xs[r];
    for (int c = 1; c < C; c++) t = __dadd_rn(t, xs[c * R + r]);
    const float var = (float)(inv != 0.0 ? __dmul_rn(t, inv) : __ddiv_rn(t, (double)cnt));
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
}

/* Barrier of the collapse warps 0 .. HS_CWARPS-1 only (warp 7 is busy with the Sinkhorn). */
__device__ static inline void collapse_sync()
{
    asm volatile("bar.sync 1, %0;" ::"r"(HS_CWARPS * 32) : "memory");
}

/* fn quads of one load batch: v[u][i] = fn[o_i][k .. k+3] for this lane's quad q0 + 32u of the
 * CTA's slice, rp[i] the row of the warp's output o_i (NULL past M; zero past the slice or
 * M). Slice quad q covers stream j = q / cq, columns d0 + 4 (q - j cq) .. +3: one division a
 * batch, then (j, c) stepped by 32 quads, and one 64-bit product per quad (the address
 * arithmetic was most of the launch's first two microseconds; a division per quad also
 * cost ~20 registers). */
template <int WT, int U>
__device__ __forceinline__ void load_batch(float4 (&v)[U][HS_OPW], const char *const (&rp)[HS_OPW],
                                           int64_t D, int q0, int nq, int cq, int64_t d0)
{
    constexpr int ES = WT == WT_F32 ? 4 : 2;
    int j = (int)((unsigned)q0 / (unsigned)cq), c = q0 - j * cq;
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int q = q0 + 32 * u;
        const int64_t e = ((int64_t)j * D + d0 + 4 * c) * ES;
#pragma unroll
        for (int i = 0; i < HS_OPW; i++)
            v[u][i] = q < nq && rp[i] ? ld_w4<WT>(rp[i] + e) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (c += 32; c >= cq; c -= cq) j++;
    }
}

/* One load batch's products: acc[r][i] += w[u][i] . x_r[q0 + 32u] for u < HS_U (quads past nq
 * skipped), each (r, i) a chain over the quads in order. */
template <int R, int U>
__device__ __forceinline__ void dot_batch(float (&acc)[R][HS_OPW], const float4 (&w)[U][HS_OPW],
                                          const float4 *xs4, int q0, int nq, int nr)
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int q = q0 + 32 * u;
        if (q >= nq) break;
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) break;
            const float4 x = xs4[r * nq + q];
#pragma unroll
            for (int i = 0; i < HS_OPW; i++) {
                float s = acc[r][i];
                s = fmaf(w[u][i].x, x.x, s);
                s = fmaf(w[u][i].y, x.y, s);
                s = fmaf(w[u][i].z, x.z, s);
                s = fmaf(w[u][i].w, x.w, s);
                acc[r][i] = s;
            }
        }
    }
}

/* The rows of fn of a warp's outputs og + warp + 8i (NULL past M). */
template <int WT>
__device__ __forceinline__ void fn_rows(const char *(&rp)[HS_OPW], const hs_args &a, int og,
                                        int warp, int M)
{
    constexpr int ES = WT == WT_F32 ? 4 : 2;
    const int64_t nD = (int64_t)a.n * a.D;
#pragma unroll
    for (int i = 0; i < HS_OPW; i++) {
        const int o = og + warp + HS_WARPS * i;
        rp[i] = o < M ? (const char *)a.fn + (int64_t)o * nD * ES : nullptr;
    }
}

/* dsv4_op_hc_weights' post and comb for one row by one lane (n*n > 32: the general fallback),
 * comb updated in place in global memory (hc_dev.cuh; pre is computed by the collapse). Out of
 * line: the site kernel's body stays small (its code is fetched cold in every launch). */
__device__ static __noinline__ void hc_weights_serial(const float *mix, const float *base,
                                                      const float *scale, int n, int iters,
                                                      float eps, float *post, float *comb)
{
    float pre[HS_HC_MAX]; /* n <= HS_HC_MAX (the launcher checks) */
    dev_hc_weights(mix, base, scale, n, iters, eps, pre, post, comb);
}

/* The same for n = 4 by a whole warp: lane e = 4j + k (mod 16) holds comb[j][k]; every row or
 * column is gathered by four independent shuffles and added in index order starting from 0.0f,
 * exactly the serial loops' operations, so the bits are the same. mix: the row's [24]. */
__device__ static void hc_weights_warp4(const hs_args &a, const float *mix, const float *base,
                                        const float *scale, int64_t row, int lane)
{
    const float eps = a.hc_eps;
    const unsigned all = 0xffffffffu;
    if (lane < 4)
        a.post[row * 4 + lane] = __fmul_rn(
            2.0f, dev_sigmoid(__fadd_rn(__fmul_rn(mix[4 + lane], scale[1]), base[4 + lane])));
    const int e = lane & 15, j = e >> 2, k = e & 3, rj = 4 * j;
    float v = __fadd_rn(__fmul_rn(mix[8 + e], scale[2]), base[8 + e]);
    float t0 = __shfl_sync(all, v, rj), t1 = __shfl_sync(all, v, rj + 1);
    float t2 = __shfl_sync(all, v, rj + 2), t3 = __shfl_sync(all, v, rj + 3);
    float mx = -INFINITY;
    if (t0 > mx) mx = t0;
    if (t1 > mx) mx = t1;
    if (t2 > mx) mx = t2;
    if (t3 > mx) mx = t3;
    v = (float)exp((double)__fsub_rn(v, mx));
    t0 = __shfl_sync(all, v, rj), t1 = __shfl_sync(all, v, rj + 1);
    t2 = __shfl_sync(all, v, rj + 2), t3 = __shfl_sync(all, v, rj + 3);
    float s = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(0.0f, t0), t1), t2), t3);
    v = __fadd_rn(__fdiv_rn(v, s), eps);
    for (int it = 0; it < a.iters; it++) {
        if (it > 0) { /* rows */
            t0 = __shfl_sync(all, v, rj), t1 = __shfl_sync(all, v, rj + 1);
            t2 = __shfl_sync(all, v, rj + 2), t3 = __shfl_sync(all, v, rj + 3);
            s = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(0.0f, t0), t1), t2), t3);
            v = __fdiv_rn(v, __fadd_rn(s, eps));
        }
        t0 = __shfl_sync(all, v, k), t1 = __shfl_sync(all, v, 4 + k); /* columns */
        t2 = __shfl_sync(all, v, 8 + k), t3 = __shfl_sync(all, v, 12 + k);
        s = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(0.0f, t0), t1), t2), t3);
        v = __fdiv_rn(v, __fadd_rn(s, eps));
    }
    if (lane < 16) a.comb[row * 16 + lane] = v;
}

/* The same for any n with n*n <= 32 (lane e = j*n + k), else the serial fallback. */
__device__ static void hc_weights_warp(const hs_args &a, const float *mix, const float *base,
                                       const float *scale, int64_t row, int lane)
{
    const int n = a.n, nn = n * n;
    if (n == 4) {
        hc_weights_warp4(a, mix, base, scale, row, lane);
        return;
    }
    if (nn > 32) {
        if (lane == 0)
            hc_weights_serial(mix, base, scale, n, a.iters, a.hc_eps, a.post + row * n,
                              a.comb + row * nn);
        __syncwarp();
        return;
    }
    const float eps = a.hc_eps;
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

/* The X slice of rows [r0, r0 + nr) -> dst (shared, [nr][n][cols]) by cp.async: quad t =
 * (r n + j) cq + c of the slice is row r's stream j, columns d0 + 4c .. +3. */
__device__ static inline void stage_x(const hs_args &a, float4 *dst, int tid, int64_t r0, int nr,
                                      int nq, int cq, int64_t d0)
{
    const int64_t D = a.D;
    const float *X0 = a.X + r0 * a.n * D + d0; /* row r stream j: X0 + (r n + j) D */
#pragma unroll 1
    for (int t = tid; t < nr * nq; t += HS_THREADS) {
        const int rj = (int)((unsigned)t / (unsigned)cq), c = t - rj * cq;
        cp_async16(dst + t, X0 + (int64_t)rj * D + 4 * c);
    }
}

/* The copies a launch issues before its PDL wait (pdl.cuh, DSV4_PDL_LATE): base, scale, the
 * norm's slice (weights) and, with the post-mix, X (into xr), which the seam before the
 * previous sublayer wrote: hc_seam's and hc_head_site's contract (backend.h) is that no launch
 * of the last two writes X. A plain site's X may be the launch just before's (the embedding):
 * it is copied after the wait. */
__device__ static inline void stage_early(const hs_args &a, float4 *xr, float *bs, float *nrm,
                                          int tid, int64_t r0, int nr, int nq, int cq, int cols,
                                          int64_t d0, int nb)
{
    if (a.f) stage_x(a, xr, tid, r0, nr, nq, cq, d0);
#pragma unroll 1
    for (int t = tid; t < nb; t += HS_THREADS) cp_async4(bs + t, a.base + t);
    if (!a.head && tid < 3) cp_async4(bs + a.M + tid, a.scale + tid);
    if (a.norm)
#pragma unroll 1
        for (int c = tid; c < cols; c += HS_THREADS) cp_async4(nrm + c, a.norm + d0 + c);
}

/* The post-mix of row r's quad t (stream k, column quad c) of the slice: X' = bf16(post_k f +
 * sum_j comb_jk X_j) in hc_post's order (acc over j from 0.0f), stored to xs and Xo. */
__device__ __forceinline__ float4 postmix_quad(const hs_args &a, const float *pc_s,
                                               const float4 *ys4, const float4 *xr4, float4 *xs4,
                                               int r, int t, int k, int c, int nq, int cq,
                                               int64_t r0, int64_t nD, int64_t d0)
{
    const int n = a.n;
    const float *pc = pc_s + r * HS_PC;
    const float4 fv = ys4[r * cq + c];
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int j = 0; j < n; j++) {
        const float w = pc[n + j * n + k];
        const float4 x = xr4[r * nq + j * cq + c];
        acc.x = __fadd_rn(acc.x, __fmul_rn(w, x.x));
        acc.y = __fadd_rn(acc.y, __fmul_rn(w, x.y));
        acc.z = __fadd_rn(acc.z, __fmul_rn(w, x.z));
        acc.w = __fadd_rn(acc.w, __fmul_rn(w, x.w));
    }
    const float p = pc[k];
    float4 v;
    v.x = dev_round_bf16(__fadd_rn(__fmul_rn(p, fv.x), acc.x));
    v.y = dev_round_bf16(__fadd_rn(__fmul_rn(p, fv.y), acc.y));
    v.z = dev_round_bf16(__fadd_rn(__fmul_rn(p, fv.z), acc.z));
    v.w = dev_round_bf16(__fadd_rn(__fmul_rn(p, fv.w), acc.w));
    xs4[r * nq + t] = v;
    if (a.Xo) *(float4 *)(a.Xo + (r0 + r) * nD + (int64_t)k * a.D + d0 + 4 * c) = v;
    return v;
}

/* The collapse of row r's column c of the slice: y = bf16(sum_j pre_j X_j) in hc_pre's order,
 * stored to ys and y. */
__device__ __forceinline__ float collapse_col(const hs_args &a, const float *pre_s, const float *xs,
                                              float *ys, int r, int c, int cols, int sl, int64_t r0,
                                              int64_t d0)
{
    float acc = 0.0f;
    for (int j = 0; j < a.n; j++)
        acc = __fadd_rn(acc, __fmul_rn(pre_s[r * HS_HC_MAX + j], xs[r * sl + j * cols + c]));
    const float yv = dev_round_bf16(acc);
    ys[r * cols + c] = yv;
    if (a.y) a.y[(r0 + r) * a.D + d0 + c] = yv;
    return yv;
}

/* ---- the site kernel ----------------------------------------------------------------------
 * X [N, n, D], fn [M, n*D] -> h [N, D], xq [N, D] = act_quant(h) (optional; cols % 128 == 0),
 * y [N, D] (optional), mix [N, M] (optional), and for a site (M = (2+n)n) post [N, n],
 * comb [N, n, n]. With f != NULL the streams are first X' = bf16(post_in f + comb_in^T X)
 * (f [N, D], post_in [N, n], comb_in [N, n, n]), written to Xo [N, n, D] (when not NULL), and
 * the site runs on X'. Grid: C * ceil(N / R) CTAs in clusters of C; cluster g serves rows
 * [g R, g R + R), rank c the columns [c cols, (c+1) cols) of every stream. Shared memory:
 * hs_layout. Three cluster barriers: 0 (every rank started; its wait is due long after its
 * arrival), 1 (the partial projections and X' sums of squares pushed to every rank), 2 (the y
 * sums of squares pushed); each rank then sums what it was sent locally, in rank order. */
template <int R, int WT, int TWO>
__global__ static void __launch_bounds__(HS_THREADS, 1 + TWO) hc_site_kernel(hs_args a)
{
    DSV4_PDL_LATE(); /* fn's first batches and stage_early's copies go out before the wait */
    constexpr int U = TWO ? HS_U2 : HS_U; /* fn quads a lane a batch: two batches in flight */
    extern __shared__ float4 hs_dyn[];
    __shared__ float mixw[R * HS_M_MAX], pre_s[R * HS_HC_MAX], pc_s[R * HS_PC], rs2_s[R];
    __shared__ double red[HS_WARPS * R];

    cg::cluster_group cl = cg::this_cluster();
    const int C = (int)cl.num_blocks(), rank = (int)cl.block_rank();
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n = a.n, M = a.M, cols = a.cols, cq = cols / 4, sl = n * cols, nq = sl / 4;
    const int64_t D = a.D, nD = (int64_t)n * D, r0 = (int64_t)(blockIdx.x / C) * R;
    const int nr = (int)(a.N - r0 < R ? a.N - r0 : R);
    const int64_t d0 = (int64_t)rank * cols;
    const bool pm = a.f != nullptr;
    const hs_layout L = hs_layout_of(R, C, n, M, cols, pm);
    char *dyn = (char *)hs_dyn;
    double *xss = (double *)(dyn + L.xss), *xsy = (double *)(dyn + L.xsy);
    float *xpart = (float *)(dyn + L.xpart), *bs = (float *)(dyn + L.bs);
    float *nrm = (float *)(dyn + L.nrm), *xs = (float *)(dyn + L.xs), *ys = (float *)(dyn + L.ys);
    float4 *xs4 = (float4 *)xs, *ys4 = (float4 *)ys, *xr4 = (float4 *)(dyn + L.xr);
    const int nb = a.head ? n : M; /* base's length */
    const float *sc = bs + M;      /* scale [3] (the site) */
    long long *const tr = a.trace && blockIdx.x == 0 ? a.trace : nullptr;

    /* 0. the first two fn batches are in flight while everything else is staged; fn is a
     *    weight, so they are issued before the PDL wait and overlap the previous launch's tail,
     *    with the copies of base, scale, norm and (the post-mix) X; the rest is read after it */
    float4 cur[U][HS_OPW], nxt[U][HS_OPW];
    const char *rp[HS_OPW];
    fn_rows<WT>(rp, a, a.o0, warp, a.o1);
    load_batch<WT, U>(cur, rp, D, lane, nq, cq, d0);
    load_batch<WT, U>(nxt, rp, D, lane + 32 * U, nq, cq, d0);
    stage_early(a, xr4, bs, nrm, tid, r0, nr, nq, cq, cols, d0, nb);
    DSV4_PDL_WAIT();
    if (tr && tid == 0) {
        tr[TR_START] = clock64();
        tr[TR_GT0] = (long long)globaltimer();
    }
    cluster_arrive_relaxed(); /* barrier 0: this rank has started */

    /* 1a. what the launch before may have written -> shared: X (the plain site) or f, post_in,
     *     comb_in (the post-mix); then every copy has landed */
    {
        if (!pm) stage_x(a, xs4, tid, r0, nr, nq, cq, d0);
        if (pm) {
#pragma unroll 1
            for (int t = tid; t < nr * cq; t += HS_THREADS) {
                const int r = t / cq, c = t - r * cq;
                cp_async16(ys4 + t, a.f + (r0 + r) * D + d0 + 4 * c);
            }
            const int pcn = n + n * n;
#pragma unroll 1
            for (int t = tid; t < nr * pcn; t += HS_THREADS) {
                const int r = t / pcn, i = t - r * pcn;
                cp_async4(pc_s + r * HS_PC + i, i < n ? a.post_in + (r0 + r) * n + i
                                                      : a.comb_in + (r0 + r) * n * n + (i - n));
            }
        }
        if (tr && tid == 0) tr[TR_ISSUED] = clock64();
        cp_async_wait_all();
        __syncthreads();
        if (tr && tid == 0) tr[TR_STAGED] = clock64();
    }

    /* 1b. the post-mix (hc_post's order: acc over j from 0.0f, then post_k f + acc, bf16) into
     *     xs and Xo, a thread per (stream k, column quad c); the sum of squares per row (double,
     *     as the rmsnorm op) over the streams the site reads, in the same order with or without
     *     the post-mix; a row at a time (rows unrolled, at R = 8 the phases waited on the
     *     instruction fetch: ncu, 45% of the stall cycles) */
#pragma unroll 1
    for (int r = 0; r < nr; r++) {
        double s = 0.0;
        for (int t = tid; t < nq; t += HS_THREADS) { /* quad t = k cq + c */
            const int k = (int)((unsigned)t / (unsigned)cq), c = t - k * cq;
            const float4 v =
                pm ? postmix_quad(a, pc_s, ys4, xr4, xs4, r, t, k, c, nq, cq, r0, nD, d0)
                   : xs4[r * nq + t];
            s += (double)v.x * (double)v.x;
            s += (double)v.y * (double)v.y;
            s += (double)v.z * (double)v.z;
            s += (double)v.w * (double)v.w;
        }
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) red[warp * R + r] = s;
    }
    __syncthreads();
    if (tr && tid == 0) tr[TR_POSTMIX] = clock64();
    cluster_wait(); /* barrier 0: every rank's shared memory may be written */
    /* the row sums of squares (warps in order) to every rank: thread (r, c) sends row r to c */
    if (tid < nr * C) {
        const int r = tid / C, c = tid - r * C;
        double t = 0.0;
        for (int w = 0; w < HS_WARPS; w++) t += red[w * R + r];
        *cl.map_shared_rank(xss + rank * R + r, c) = t;
    }

    /* 1c. partial dot products of the slice: warp w, outputs og + w + 8i, lanes over quads;
     *     two batches of loads ahead. Every lane holds the warp's sum; lane c sends it to c. */
    for (int og = a.o0; og < a.o1; og += HS_WARPS * HS_OPW) {
        if (og > a.o0) {
            fn_rows<WT>(rp, a, og, warp, a.o1);
            load_batch<WT, U>(cur, rp, D, lane, nq, cq, d0);
            load_batch<WT, U>(nxt, rp, D, lane + 32 * U, nq, cq, d0);
        }
        float acc[R][HS_OPW];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int i = 0; i < HS_OPW; i++) acc[r][i] = 0.0f;
        /* cur and nxt in turn, each reloaded two batches ahead once consumed (no copy of nxt
         * into cur, which waited for nxt's loads one batch after they were issued) */
        for (int q0 = lane; q0 < nq; q0 += 64 * U) {
            dot_batch<R, U>(acc, cur, xs4, q0, nq, nr);
            if (q0 + 64 * U < nq) load_batch<WT, U>(cur, rp, D, q0 + 64 * U, nq, cq, d0);
            if (q0 + 32 * U >= nq) break;
            dot_batch<R, U>(acc, nxt, xs4, q0 + 32 * U, nq, nr);
            if (q0 + 96 * U < nq) load_batch<WT, U>(nxt, rp, D, q0 + 96 * U, nq, cq, d0);
        }
        for (int o = 16; o > 0; o >>= 1)
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int i = 0; i < HS_OPW; i++)
                    acc[r][i] += __shfl_xor_sync(0xffffffffu, acc[r][i], o);
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int i = 0; i < HS_OPW; i++) {
                const int oi = og + warp + HS_WARPS * i;
                if (lane < C && r < nr && oi < a.o1)
                    *cl.map_shared_rank(xpart + (rank * R + r) * M + oi, lane) = acc[r][i];
            }
    }
    if (tr && tid == 0) tr[TR_DOTS] = clock64();
    cluster_arrive(); /* barrier 1: this rank's partials and sums are in every rank */
    cluster_wait();
    if (tr && tid == 0) tr[TR_MIX] = clock64();

    /* 4. post, comb: rows r = rank (mod C), from the warp's own copy of the row's mix (step 2's
     *    operations, the same bits), so that the Sinkhorn starts as soon as the partials are
     *    in, not after step 2. The copies are made before this warp's barrier-2 arrival, so
     *    that nothing the warp reads after arriving was written by another rank (reads of the
     *    partials after the early arrival were racecheck hazards). Rows of fn not projected
     *    (the weights half: [0, n)) count as 0 in the copy. */
    if (warp == HS_CWARPS) {
        if (tr && lane == 0) tr[TR_SK0] = clock64();
        if (a.weights)
            for (int r = rank, k = 0; r < nr; r += C, k++) {
                const float rs = row_rs(xss, R, C, r, a.inv_nD, nD, a.rms_eps);
                for (int o = lane; o < M; o += 32) {
                    float s = 0.0f;
                    if (o >= a.o0) {
                        s = xpart[r * M + o];
                        for (int c = 1; c < C; c++) s = __fadd_rn(s, xpart[(c * R + r) * M + o]);
                        s = __fmul_rn(s, rs);
                    }
                    mixw[k * HS_M_MAX + o] = s;
                }
            }
        __syncwarp();
        if (a.collapse) cluster_arrive(); /* barrier 2: this warp sends nothing */
        if (a.weights)
            for (int r = rank, k = 0; r < nr; r += C, k++) {
                hc_weights_warp(a, mixw + k * HS_M_MAX, bs, sc, r0 + r, lane);
                __syncwarp();
            }
        if (tr && lane == 0) tr[TR_SK1] = clock64();
        if (a.collapse) cluster_wait();
        return;
    }
    /* the weights half ends here: after barrier 1 no rank touches another's shared memory */
    if (!a.collapse) return;

    /* 2. mix = (sum over ranks in rank order) * rs, rs from the summed squares (each thread its
     *    row's, the same bits); pre = sigmoid(mix scale + base) + eps from the mix just made */
    const int Mo = a.o1; /* the rows of fn projected: [0, Mo) (o0 = 0 here) */
    for (int t = tid; t < nr * Mo; t += HS_CWARPS * 32) {
        const int r = t / Mo, o = t - r * Mo, i = r * M + o;
        const float rs = row_rs(xss, R, C, r, a.inv_nD, nD, a.rms_eps);
        float s = xpart[i];
        for (int c = 1; c < C; c++) s = __fadd_rn(s, xpart[c * R * M + i]);
        const float v = __fmul_rn(s, rs);
        if (rank == 0 && a.mix) a.mix[r0 * M + i] = v;
        if (o < n) {
            const float scl = a.head ? a.head_scale : sc[0]; /* dsv4_op_hc_head_weights */
            pre_s[r * HS_HC_MAX + o] =
                __fadd_rn(dev_sigmoid(__fadd_rn(__fmul_rn(v, scl), bs[o])), a.hc_eps);
        }
    }
    collapse_sync();
    if (tr && tid == 0) tr[TR_PRE] = clock64();

#pragma unroll 1
    /* 3. collapse (hc_pre's order; a row at a time), y^2 sums, h = bf16(norm * (y * rs2)) */
    for (int r = 0; r < nr; r++) {
        double s = 0.0;
        for (int c = tid; c < cols; c += HS_CWARPS * 32) {
            const float yv = collapse_col(a, pre_s, xs, ys, r, c, cols, sl, r0, d0);
            s += (double)yv * (double)yv;
        }
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) red[warp * R + r] = s;
    }
    collapse_sync();
    if (tid < nr * C) {
        const int r = tid / C, c = tid - r * C;
        double t = 0.0;
        for (int w = 0; w < HS_CWARPS; w++) t += red[w * R + r];
        *cl.map_shared_rank(xsy + rank * R + r, c) = t;
    }
    if (tr && tid == 0) tr[TR_COLLAPSE] = clock64();
    cluster_arrive(); /* barrier 2: this rank's y sums are in every rank */
    cluster_wait();
    if (tr && tid == 0) tr[TR_RS2] = clock64();
    if (tid < nr) rs2_s[tid] = row_rs(xsy, R, C, tid, a.inv_D, D, a.rms_eps);
    collapse_sync();
    if (a.xq) { /* a warp per 128-block: h, then act_quant(h) (act_quant_kernel's operations) */
        const int nbk = cols / 128;
        for (int t = warp; t < nr * nbk; t += HS_CWARPS) {
            const int r = t / nbk, c0 = (t - r * nbk) * 128;
            float v[4], amax = 0.0f;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = c0 + lane + 32 * k;
                float x = __fmul_rn(ys[r * cols + c], rs2_s[r]);
                if (a.norm) x = __fmul_rn(nrm[c], x);
                v[k] = dev_round_bf16(x);
                a.h[(r0 + r) * D + d0 + c] = v[k];
                amax = fmaxf(amax, fabsf(v[k])); /* fmaxf skips a NaN */
            }
            for (int o = 16; o > 0; o >>= 1)
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            const float s = dev_scale_fp8(amax);
#pragma unroll
            for (int k = 0; k < 4; k++)
                a.xq[(r0 + r) * D + d0 + c0 + lane + 32 * k] =
                    __fmul_rn(dev_round_e4m3(__fdiv_rn(v[k], s)), s);
        }
    } else {
        for (int r = 0; r < nr; r++)
            for (int c = tid; c < cols; c += HS_CWARPS * 32) {
                float v = __fmul_rn(ys[r * cols + c], rs2_s[r]);
                if (a.norm) v = __fmul_rn(nrm[c], v);
                a.h[(r0 + r) * D + d0 + c] = dev_round_bf16(v);
            }
    }
    if (tr && tid == 0) {
        tr[TR_END] = clock64();
        tr[TR_GT1] = (long long)globaltimer();
    }
}

/* ---- host side ----------------------------------------------------------------------------- */
typedef void (*hs_kernel)(hs_args);

/* R: 1 .. 6 or 8 rows a cluster (hs_launch's plan); two: the kernels of two CTAs an SM (R up to
 * HS_R2_MAX) */
template <int WT> static hs_kernel pick_rows(int R, int two)
{
    static const hs_kernel one[8] = {
        hc_site_kernel<1, WT, 0>, hc_site_kernel<2, WT, 0>, hc_site_kernel<3, WT, 0>,
        hc_site_kernel<4, WT, 0>, hc_site_kernel<5, WT, 0>, hc_site_kernel<6, WT, 0>,
        hc_site_kernel<8, WT, 0>, hc_site_kernel<8, WT, 0>}; /* R 7: never planned */
    static const hs_kernel two_sm[HS_R2_MAX] = {hc_site_kernel<1, WT, 1>, hc_site_kernel<2, WT, 1>,
                                                hc_site_kernel<3, WT, 1>, hc_site_kernel<4, WT, 1>};
    return two ? two_sm[(R < HS_R2_MAX ? R : HS_R2_MAX) - 1] : one[(R < 8 ? R : 8) - 1];
}

static hs_kernel pick(int R, int wt, int two)
{
    return wt == WT_F32    ? pick_rows<WT_F32>(R, two)
           : wt == WT_BF16 ? pick_rows<WT_BF16>(R, two)
                           : pick_rows<WT_F16>(R, two);
}

/* Dynamic shared memory of a CTA (hs_layout), and the static arrays of hc_site_kernel<R>. */
static size_t smem_bytes(int R, int C, int n, int M, int cols, int pm)
{
    return (size_t)hs_layout_of(R, C, n, M, cols, pm).total;
}

static size_t static_smem_bytes(int R)
{
    return (size_t)R *
           ((HS_M_MAX + HS_HC_MAX + HS_PC + 1) * sizeof(float) + HS_WARPS * sizeof(double));
}

static cudaLaunchConfig_t make_cfg(dim3 grid, size_t smem, cudaStream_t st,
                                   cudaLaunchAttribute *attr, int C)
{
    return cluster_cfg(grid, HS_THREADS, smem, st, attr, C);
}

static int fn_type(const dsv4_weight *fn)
{
    if (fn->format == DSV4_FORMAT_F32 && fn->dtype == DSV4_DT_F32) return WT_F32;
    if (fn->format == DSV4_FORMAT_BF16 && fn->dtype == DSV4_DT_BF16) return WT_BF16;
    if (fn->format == DSV4_FORMAT_F16 && fn->dtype == DSV4_DT_F16) return WT_F16;
    return -1;
}

/* How many clusters of C of these CTAs this device holds at once (two: of the kernels of two
 * CTAs an SM, where their shared memory lets two share an SM, two_fit; else one CTA an SM: any of
 * our shared memory sizes fits). So it is a property of the GPU's GPCs (0: none), asked once per
 * device, C and kind; eager calls and captured graphs launch the same shape. */
static int cluster_cap(int dev, int C, hs_kernel k, size_t smem, cudaStream_t st, int two)
{
    enum { DEV_MAX = 64, LC = 5 };
    static int known[DEV_MAX][2][LC]; /* count + 1; 0 unknown; racing writers store the same */
    int lc = 0;
    while ((1 << lc) < C) lc++;
    if (dev < 0 || dev >= DEV_MAX || lc >= LC) return 0;
    const int v = __atomic_load_n(&known[dev][two][lc], __ATOMIC_RELAXED);
    if (v) return v - 1;
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = make_cfg(dim3((unsigned)C, 1, 1), smem, st, attr, C);
    int num = 0;
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) ==
        cudaSuccess)
        num = cluster_capacity((const void *)k, &cfg);
    else
        (void)cudaGetLastError();
    __atomic_store_n(&known[dev][two][lc], num + 1, __ATOMIC_RELAXED);
    return num;
}

/* Whether two CTAs of R rows (smem dynamic bytes) share an SM's shared memory (per_sm, less the
 * reserved bytes of each block; registers: the two-CTA kernels are built for it, 128 a thread). */
static int two_fit(int R, size_t smem, int per_sm, int reserved)
{
    return R <= HS_R2_MAX && 2 * (smem + static_smem_bytes(R) + (size_t)reserved) <= (size_t)per_sm;
}

/* Test hook (test_gpu_hc): 1 the two-CTA kernels wherever they fit (explicit rows too), -1
 * never, 0 hs_launch's rule. The bits are the same either way (they depend on C only). */
static int force_two;

extern "C" int dsv4_cuda_hc_force_two(int mode)
{
    const int old = force_two;
    force_two = mode;
    return old;
}

/* One launch of C CTAs a cluster and R rows a cluster (a.cols = D / C set); act_quant after
 * the kernel where its CTAs do not hold whole 128-blocks. */
static dsv4_status hs_launch_shape(dsv4_backend *b, hs_args a, const char *op, int wt, int C, int R,
                                   int two)
{
    const int64_t N = a.N, D = a.D, groups = (N + R - 1) / R;
    if (groups * C > 0x7fffffff)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: %lld rows", op, (long long)N);
    const size_t smem = smem_bytes(R, C, a.n, a.M, a.cols, a.f != NULL);
    const hs_kernel k = pick(R, wt, two);
    CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (C > 8) CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    /* xq in the kernel needs whole 128-blocks in each CTA (Pro's D 7168 with C = 16 splits
     * them: act_quant after the kernel); the shape never depends on xq, so the bits of the
     * other outputs do not either */
    float *const xq = a.xq;
    if (a.cols % 128) a.xq = NULL;
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg =
        make_cfg(dim3((unsigned)(groups * C), 1, 1), smem, dsv4_cuda_stream(b->cuda), attr, C);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, k, a));
    if (xq && !a.xq) DSV4_TRY(dsv4_cuda_bk_act_quant(b, xq, D, a.h, D, N, D, 128));
    return DSV4_OK;
}

/* The launch shape and the launch, for every op of this file. C CTAs a cluster (cluster 0:
 * auto: 16 for R <= 2 rows a cluster when the GPU places all the clusters at once, else the
 * largest of 8, 4, 2, 1 that divides D / 4 and leaves each CTA >= HS_MIN_COLS columns when D
 * allows; 16 on request as a non-portable size) and R rows a cluster (rows 0: auto, the fewest
 * that place every cluster at once, with one CTA an SM or, where that takes fewer rows, two:
 * see the loop). The shape depends only on the arguments and the device, so a captured graph
 * and an eager call launch the same one (and give the same bits); the bits depend on C only. */
static dsv4_status hs_launch(dsv4_backend *b, hs_args a, const dsv4_weight *fn, const char *op,
                             int cluster, int rows, int *used_cluster, int *used_rows)
{
    const int64_t N = a.N, D = a.D;
    const int n = a.n, pm = a.f != NULL;
    if (N < 0 || n < 1 || n > HS_HC_MAX || D < 1 || a.iters < 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: N %lld n %d (1..%d) D %lld iters %d", op,
                         (long long)N, n, HS_HC_MAX, (long long)D, a.iters);
    const int wt = fn_type(fn);
    if (wt < 0 || fn->rows != a.M || fn->cols != n * D)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "%s: fn %s [%lld, %lld] (%s) must be a dense F32/BF16/F16 [%d, %lld]", op,
                         fn->name ? fn->name : "?", (long long)fn->rows, (long long)fn->cols,
                         dsv4_weight_format_name(fn->format), a.M, (long long)(n * D));
    if (D % 4 || (uintptr_t)a.X % 16 || (uintptr_t)fn->data % (wt == WT_F32 ? 16 : 8) ||
        (pm && ((uintptr_t)a.f % 16 || (uintptr_t)a.Xo % 16)))
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "%s: D %lld must be a multiple of 4, X, f, Xo and fn 16-byte aligned", op,
                         (long long)D);
    if (pm && (!a.post_in || !a.comb_in))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: the post-mix needs post and comb", op);
    if (cluster < 0 || cluster > HS_C_MAX || (cluster & (cluster - 1)) ||
        (cluster && D % (4 * cluster)) || (rows < 0 || rows == 7 || rows > 8))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: cluster %d rows %d for D %lld", op,
                         cluster, rows, (long long)D);
    if (N == 0) return DSV4_OK;
    cudaStream_t st = dsv4_cuda_stream(b->cuda);
    int dev = 0, n_sm = 0, optin = 0, per_sm = 0, reserved = 0;
    CUDA_TRY(cudaGetDevice(&dev));
    CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_TRY(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
    CUDA_TRY(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev));
    /* The seam's halves (without post / comb, and the weights half) run side by side (the
     * engine's split seams, engine_layer.c): each plans for half of the clusters the GPU holds,
     * so that both are placed at once (Flash batch 4-6 with the halves in one CTA an SM each,
     * then two: docs/PERF.md session 24). */
    const int share = !a.head && a.collapse != a.weights ? 2 : 1;
    for (int C = cluster ? cluster : HS_C_MAX; C >= 1; C /= 2) {
        if (D % (4 * C)) continue;
        if (!cluster && C > 1 && D / C < HS_MIN_COLS) continue;
        const int cols = (int)(D / C);
        /* R: the fewest rows a cluster (1 .. 6, 8) that place every cluster at once, in one
         * wave (the clusters of C the GPU holds: an H100 15 of 8, 7 of 16; n_sm / (2C) where
         * the query fails). Measured (test_gpu_hc, H100, graph replay, Flash seam, C = 8): a
         * second wave costs as much as the first (N = 64: R = 4, 16 clusters, 39.8 us), and a
         * CTA's time grows with its rows (N = 64: R = 5 22.7 us, 6 25.9, 8 32.3; the plan of
         * session 10, n_sm / (2C) clusters, took R = 8). */
        int R = rows, two = 0;
        if (!R) {
            const int cap =
                cluster_cap(dev, C, pick(1, wt, 0), smem_bytes(1, C, n, a.M, cols, pm), st, 0);
            const int64_t cw = cap >= share                 ? cap / share
                               : cap > 0                    ? 1
                               : n_sm / (2 * C * share) > 1 ? n_sm / (2 * C * share)
                                                            : 1;
            const int64_t rr = (N + cw - 1) / cw;
            R = rr >= 7 ? 8 : (int)rr;
            while (R > 1 &&
                   smem_bytes(R, C, n, a.M, cols, pm) + static_smem_bytes(R) > (size_t)optin)
                R = R == 8 ? 6 : R - 1;
            /* two CTAs an SM (hc_site_kernel<R, WT, 1>: 128 registers, HS_U2 fn quads a lane a
             * batch, so an SM keeps as many fn bytes in flight), where that takes fewer rows
             * a cluster in one wave: the per-row phases are latency-bound at 8 warps an SM
             * (ncu, Flash N = 64, R = 5: 0.33 instructions a cycle a scheduler), while each
             * more cluster reads fn from L2 once more. Measured (test_gpu_hc, H100, graph
             * replay, us; docs/PERF.md session 24): Flash seam N = 8 / 16 / 32 / 64 12.1 /
             * 14.4 / 17.2 / 24.1 -> 12.1 / 13.9 / 17.2 / 21.0 (R 2 / 2 / 3 / 5 -> 1 / 2 with
             * C = 16 / 2 / 3), Pro N = 16 / 64 20.4 / 35.7 -> 19.3 / 32.0. With one row a
             * cluster either way (N = 1) it lost, 10.5 -> 10.8: not taken there. */
            const int cap2 = R > 1 && force_two >= 0
                                 ? cluster_cap(dev, C, pick(1, wt, 1),
                                               smem_bytes(1, C, n, a.M, cols, pm), st, 1) /
                                       share
                                 : 0;
            for (int r = 1; r < R && cap2 > 0; r++) {
                if (!two_fit(r, smem_bytes(r, C, n, a.M, cols, pm), per_sm, reserved)) break;
                if ((int64_t)r * cap2 >= N) {
                    R = r, two = 1;
                    break;
                }
            }
        }
        const size_t smem = smem_bytes(R, C, n, a.M, cols, pm);
        if (smem + static_smem_bytes(R) > (size_t)optin) {
            if (cluster) break;
            continue;
        }
        if (force_two > 0 && two_fit(R, smem, per_sm, reserved)) two = 1;
        if (C > 8 && !cluster) {
            /* few rows, one wave: measured (test_gpu_hc, H100, graph replay) a Flash seam at
             * N = 1 took 13.8 us with C = 16 against 15.4 us with C = 8, but at N = 64 (R = 8, 8
             * clusters) 64.7 us against 38.4 us */
            const hs_kernel k = pick(R, wt, two);
            CUDA_TRY(
                cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            if (R > 2 || (N + R - 1) / R > cluster_cap(dev, 16, k, smem, st, two) / share) continue;
        }
        a.cols = cols;
        DSV4_TRY(hs_launch_shape(b, a, op, wt, C, R, two));
        if (used_cluster) *used_cluster = C;
        if (used_rows) *used_rows = R;
        return DSV4_OK;
    }
    return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                     "%s: no launch shape fits the shared memory (D %lld, n %d, cluster %d, rows "
                     "%d)",
                     op, (long long)D, n, cluster, rows);
}

static hs_args site_args(float *h, float *y, float *mix, float *post, float *comb, float *Xo,
                         const float *X, const float *f, const float *post_in, const float *comb_in,
                         const dsv4_weight *fn, const float *base, const float *scale,
                         const float *norm, int64_t N, int n, int64_t D, int iters, float hc_eps,
                         float rms_eps)
{
    hs_args a;
    memset(&a, 0, sizeof a);
    a.h = h;
    a.y = y;
    a.mix = mix;
    a.post = post;
    a.comb = comb;
    a.Xo = Xo;
    a.X = X;
    a.f = f;
    a.post_in = post_in;
    a.comb_in = comb_in;
    a.base = base;
    a.scale = scale;
    a.norm = norm;
    a.fn = fn->data;
    a.N = N;
    a.D = D;
    a.n = n;
    a.M = (2 + n) * n;
    a.o0 = 0;
    a.o1 = a.M;
    a.collapse = 1;
    a.weights = 1;
    a.iters = iters;
    a.hc_eps = hc_eps;
    a.rms_eps = rms_eps;
    const int64_t nD = (int64_t)n * D;
    a.inv_nD = nD > 0 && (nD & (nD - 1)) == 0 ? 1.0 / (double)nD : 0.0;
    a.inv_D = D > 0 && (D & (D - 1)) == 0 ? 1.0 / (double)D : 0.0;
    return a;
}

/* The ops with their launch shape chosen by the caller (tests, benchmarks): see hs_launch;
 * *used_cluster / *used_rows (may be NULL) receive the shape launched. */
extern "C" dsv4_status dsv4_cuda_bk_hc_site_ex(dsv4_backend *b, float *h, float *xq, float *y,
                                               float *mix, float *post, float *comb, const float *X,
                                               const dsv4_weight *fn, const float *base,
                                               const float *scale, const float *norm, int64_t N,
                                               int n, int64_t D, int iters, float hc_eps,
                                               float rms_eps, int cluster, int rows,
                                               int *used_cluster, int *used_rows)
{
    hs_args a = site_args(h, y, mix, post, comb, NULL, X, NULL, NULL, NULL, fn, base, scale, norm,
                          N, n, D, iters, hc_eps, rms_eps);
    a.xq = xq;
    return hs_launch(b, a, fn, "hc_site", cluster, rows, used_cluster, used_rows);
}

extern "C" dsv4_status dsv4_cuda_bk_hc_site(dsv4_backend *b, float *h, float *xq, float *y,
                                            float *mix, float *post, float *comb, const float *X,
                                            const dsv4_weight *fn, const float *base,
                                            const float *scale, const float *norm, int64_t N, int n,
                                            int64_t D, int iters, float hc_eps, float rms_eps)
{
    return dsv4_cuda_bk_hc_site_ex(b, h, xq, y, mix, post, comb, X, fn, base, scale, norm, N, n, D,
                                   iters, hc_eps, rms_eps, 0, 0, NULL, NULL);
}

/* The seam, with y and mix (may be NULL) for the tests; trace (device memory, TR_N clocks, may
 * be NULL): the phase clocks of the launch. */
extern "C" dsv4_status
dsv4_cuda_bk_hc_seam_ex(dsv4_backend *b, float *h, float *xq, float *y, float *mix, float *Xo,
                        float *post, float *comb, const float *X, const float *f,
                        const float *post_in, const float *comb_in, const dsv4_weight *fn,
                        const float *base, const float *scale, const float *norm, int64_t N, int n,
                        int64_t D, int iters, float hc_eps, float rms_eps, int cluster, int rows,
                        int *used_cluster, int *used_rows, long long *trace)
{
    if (!Xo || !f) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "hc_seam: Xo and f must be given");
    if (!post != !comb)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "hc_seam: post and comb both or neither");
    hs_args a = site_args(h, y, mix, post, comb, Xo, X, f, post_in, comb_in, fn, base, scale, norm,
                          N, n, D, iters, hc_eps, rms_eps);
    if (!post) { /* the pre half: fn's rows [0, n) only; hc_seam_weights makes post and comb */
        a.o1 = n;
        a.weights = 0;
    }
    a.xq = xq;
    a.trace = trace;
    return hs_launch(b, a, fn, "hc_seam", cluster, rows, used_cluster, used_rows);
}

/* The seam's weights half (fn's rows [n, M): post, comb), with the launch shape chosen by the
 * caller as in hc_seam_ex; the same shape gives the bits of the whole seam's post and comb. */
extern "C" dsv4_status
dsv4_cuda_bk_hc_seam_weights_ex(dsv4_backend *b, float *post, float *comb, const float *X,
                                const float *f, const float *post_in, const float *comb_in,
                                const dsv4_weight *fn, const float *base, const float *scale,
                                int64_t N, int n, int64_t D, int iters, float hc_eps, float rms_eps,
                                int cluster, int rows, int *used_cluster, int *used_rows)
{
    if (!post || !comb || !f)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "hc_seam_weights: post, comb and f needed");
    hs_args a = site_args(NULL, NULL, NULL, post, comb, NULL, X, f, post_in, comb_in, fn, base,
                          scale, NULL, N, n, D, iters, hc_eps, rms_eps);
    a.o0 = n;
    a.collapse = 0;
    return hs_launch(b, a, fn, "hc_seam_weights", cluster, rows, used_cluster, used_rows);
}

extern "C" dsv4_status dsv4_cuda_bk_hc_seam_weights(dsv4_backend *b, float *post, float *comb,
                                                    const float *X, const float *f,
                                                    const float *post_in, const float *comb_in,
                                                    const dsv4_weight *fn, const float *base,
                                                    const float *scale, int64_t N, int n, int64_t D,
                                                    int iters, float hc_eps, float rms_eps)
{
    return dsv4_cuda_bk_hc_seam_weights_ex(b, post, comb, X, f, post_in, comb_in, fn, base, scale,
                                           N, n, D, iters, hc_eps, rms_eps, 0, 0, NULL, NULL);
}

extern "C" dsv4_status dsv4_cuda_bk_hc_seam(dsv4_backend *b, float *h, float *xq, float *Xo,
                                            float *post, float *comb, const float *X,
                                            const float *f, const float *post_in,
                                            const float *comb_in, const dsv4_weight *fn,
                                            const float *base, const float *scale,
                                            const float *norm, int64_t N, int n, int64_t D,
                                            int iters, float hc_eps, float rms_eps)
{
    return dsv4_cuda_bk_hc_seam_ex(b, h, xq, NULL, NULL, Xo, post, comb, X, f, post_in, comb_in, fn,
                                   base, scale, norm, N, n, D, iters, hc_eps, rms_eps, 0, 0, NULL,
                                   NULL, NULL);
}

/* The head collapse, with y and mix (may be NULL) for the tests. */
extern "C" dsv4_status dsv4_cuda_bk_hc_head_site_ex(
    dsv4_backend *b, float *h, float *y, float *mix, float *Xo, const float *X, const float *f,
    const float *post_in, const float *comb_in, const dsv4_weight *fn, const float *base,
    float scale, const float *norm, int64_t N, int n, int64_t D, float hc_eps, float rms_eps,
    int cluster, int rows, int *used_cluster, int *used_rows)
{
    hs_args a = site_args(h, y, mix, NULL, NULL, f ? Xo : NULL, X, f, post_in, comb_in, fn, base,
                          NULL, norm, N, n, D, 0, hc_eps, rms_eps);
    a.M = n;
    a.o1 = n;
    a.weights = 0;
    a.head = 1;
    a.head_scale = scale;
    return hs_launch(b, a, fn, "hc_head_site", cluster, rows, used_cluster, used_rows);
}

extern "C" dsv4_status dsv4_cuda_bk_hc_head_site(dsv4_backend *b, float *h, float *Xo,
                                                 const float *X, const float *f,
                                                 const float *post_in, const float *comb_in,
                                                 const dsv4_weight *fn, const float *base,
                                                 float scale, const float *norm, int64_t N, int n,
                                                 int64_t D, float hc_eps, float rms_eps)
{
    return dsv4_cuda_bk_hc_head_site_ex(b, h, NULL, NULL, Xo, X, f, post_in, comb_in, fn, base,
                                        scale, norm, N, n, D, hc_eps, rms_eps, 0, 0, NULL, NULL);
}
