/*
 * bk_linear.cu - CUDA projections y = x W^T in every stored weight format (backend.h
 * dsv4_bk_linear, dsv4_bk_linear_grouped): the argument checks, the choice of kernel, and the f32
 * decode GEMV.
 *
 * Eight kernels, one result up to f32 summation order (each output is a plain f32 sum of
 * x_c * w_c, w decoded exactly; the order is fixed by the shape, so runs are bit-reproducible),
 * except F8W's and W16's (W16X's too: tensor-core sums per 128-column block, linear_f8w.cu,
 * linear_w16.cu):
 *   W16   BF16 weights at 3..128 rows, FP8 grouped at 3..128 (2 on >= 64 MB; w16_wins; more
 *         rows in chunks of <= 128, lin_chunks): x as bf16 (exact, else an f32 path), bf16
 *         wgmma from a TMA-fed shared-memory ring (linear_w16.cu);
 *   F8W   3 <= N <= 128 (2 on >= 64 MB; more in chunks), FP8 weights of >= 4096 rows,
 *         ungrouped (f8w_wins): x quantised per call to e4m3 codes (exact, else an f32 path),
 *         e4m3 wgmma from a TMA-fed shared-memory ring (linear_f8w.cu);
 *   MMV   N <= 16 (BF16: 32), FP8 and BF16 weights, where it is faster than the GEMV (N >= 5,
 *         or large matrices; mmv_wins): tensor cores with the weight rows as the 16-row operand
 *         and the tokens as the 8-column one (linear_mmv.cu);
 *   GEMV  N <= 16 otherwise (small N, the other formats, widths MMV does not take): f32 FMAs,
 *         weights decoded in registers (this file);
 *   FMM   17 <= N <= 64, FP8 weights, where it is faster than MMA (dsv4_lin_fmm_wins): f16
 *         wgmma with a warpgroup's 64 weight rows as the register operand straight from global
 *         memory, x staged per CTA as the shared-memory one (linear_fp8mma.cu);
 *   MMA   larger N, and MXFP4/NVFP4/BF16: bf16 tensor cores with x split hi + lo
 *         (linear_tiled.cu);
 *   SIMT  everything else (F16/F32 weights at larger N, odd widths or alignments): f32 tiles
 *         (linear_tiled.cu);
 *   MMX   dsv4_bk_linear_multi's entries at 3..64 rows of x, FP8 and BF16 weights, in one
 *         launch (linear_fp8mma.cu; per entry FMM's numerics for FP8, MMA's for BF16);
 *   W16X  the same at 33..64 rows where every entry is W16's and all fit one wave with a K
 *         split: each entry a W16 call of one launch (linear_w16.cu; W16's numerics).
 * No atomics: split-K partial sums are combined in a fixed order (shared memory, then the
 * thread-block cluster's distributed shared memory). A grouped projection is one launch: the
 * group is a grid index. Launch shapes come from the matrix shape alone (LIN_SMS): a call makes
 * no device queries, only the launch (and, for MMV's large shared-memory cases, a function
 * attribute).
 *
 * dsv4_bk_linear_multi: at decode sizes the projections of one input (a layer's wq_a, wkv,
 * compressor and indexer matrices: 0.5-8 MB each) are each too small to keep the GPU streaming,
 * and each pays a launch; one launch takes them all, every CTA working on the entry its index
 * falls in: the GEMV (gemv_multi_kernel) up to 2 rows of x, MMX (linear_fp8mma.cu: FMM's
 * tensor-core scheme for FP8 and BF16 entries) at 3..64. MMX against one launch per entry
 * (MMV at 9..16, FMM / MMA above), H100, test_gpu_linear --multi-bench, graph replay: Flash CSA
 * layer (7 entries, 27.8 MB) N = 16 / 32 / 64 73.7 -> 21.6 / 146.6 -> 31.0 / 167.7 -> 48.6 us,
 * HCA layer (4 entries, 14.7 MB) 39.2 -> 15.0 / 76.1 -> 22.0 / 98.5 -> 34.9 us; dsv4 bench
 * --shape flash --layers 4 --contexts 4096 (attn.proj at batch 64 0.553 -> 0.161 ms/step):
 * batch 32 6.30 -> 5.96-5.98 ms, batch 64 9.67 -> 9.31, batch 1 and 8 unchanged.
 */
#include "backend/cuda/linear_common.cuh"
#include "backend/cuda/linear_path.cuh"
#include "backend/cuda/rownorm_dev.cuh"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- test hook (linear_path.cuh) ----------------------------------------------------------- */
static int force_path = DSV4_LIN_PATH_AUTO, last_path = DSV4_LIN_PATH_AUTO;
static int force_split = 0, last_split = 1, last_norm_tail = -1, last_signal = -1;

extern "C" int dsv4_cuda_linear_force_path(int path)
{
    const int old = force_path;
    force_path = path;
    return old;
}

extern "C" int dsv4_cuda_linear_last_path(void)
{
    return last_path;
}

extern "C" int dsv4_cuda_linear_last_norm_tail(void)
{
    return last_norm_tail;
}

extern "C" int dsv4_cuda_linear_last_signal(void)
{
    return last_signal;
}

extern "C" int dsv4_cuda_linear_force_split(int ks)
{
    const int old = force_split;
    force_split = ks;
    return old;
}

extern "C" int dsv4_cuda_linear_last_split(void)
{
    return last_split;
}

static int gv_xs_on = 1, last_xs = 0;

extern "C" int dsv4_cuda_linear_gemv_xs(int on)
{
    const int old = gv_xs_on;
    gv_xs_on = on;
    return old;
}

extern "C" int dsv4_cuda_linear_last_xs(void)
{
    return last_xs;
}

/* ---- decode GEMV -----------------------------------------------------------------------------
 * y [N, nrows] = x [N, cols] . W^T for N <= NT. A "chunk" is 16 bytes of one weight row: E
 * columns (F32 4, BF16/F16 8, FP8 16, FP4 32; FP8 chunks lie inside one 128-column scale block,
 * FP4 chunks are one MXFP4 group or two NVFP4 groups). A warp owns R consecutive rows; the KS
 * warps of a row group split the row's chunks between their 32 * KS lanes (chunk i to lane
 * i mod 32KS), so a CTA of 8 warps covers R * 8 / KS rows. Each lane keeps R x NT f32 sums;
 * they are reduced over the warp by a butterfly, then over the KS warps in shared memory in
 * warp order. Scaled formats sum a chunk (half chunk for FP4) unscaled, then add it times its
 * scale. x is read through L1 (__ldg), each load serving R rows.
 * Split-K over CTAs, for matrices with too few rows to give every SM a share: the kn CTAs of a
 * thread-block cluster (grid z) take consecutive slices of cps chunks of the same rows; each
 * reduces its slice as above, then the cluster adds the slices up in rank order
 * (lin_cluster_store), so the order, and the bits, depend on the shape only. */
enum { GV_THREADS = 256, GV_WARPS = 8, GV_SPLIT_MAX = 8 };
/* Resident CTAs per SM of the one-row kernels (NT = 1): they take 40-64 registers (sm_90a,
 * nvcc 13.0; cuobjdump -res-usage), so 4 fit. Not asked of ptxas by the launch bounds: that
 * changed their code (59 -> 63 registers) for no measured gain (PERF.md, session 7). */
enum { GV_OCC1 = 4 };
/* Resident GEMV CTAs per SM assumed by the K split (256 threads of <= 128 registers: at least
 * two; more only moves the choice where the grid is already large). */
enum { GV_OCC = 2 };
/* Waves of 4-row CTAs from which a GEMV of one or two rows takes 8 warps a row (launch_gemv). */
enum { GV_MANY_WAVES = 8 };
/* gemv_xs_kernel (two rows, x staged): up to GV_XS_WAVES waves of the plain grid (2 CTAs an SM)
 * and GV_XS_BYTES of x a CTA (2 rows of 12,288 columns; two CTAs an SM fit). */
enum { GV_XS_WAVES = 8, GV_XS_BYTES = 96 * 1024 };

/* Sub-block j (SW columns) of the 16-byte chunk q of a row -> w[SW] (FP8: e4m3 values; FP4:
 * e2m1 * 2^-14; dense formats: the values). */
template <int E>
__device__ __forceinline__ void gv_decode(int fmt, const uint32_t *q, int j, float *w)
{
    if constexpr (E == 4) {
#pragma unroll
        for (int k = 0; k < 4; k++) w[k] = __uint_as_float(q[k]);
    } else if constexpr (E == 8) {
        if (fmt == DSV4_FORMAT_BF16) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                w[2 * k] = __uint_as_float(q[k] << 16);
                w[2 * k + 1] = __uint_as_float(q[k] & 0xffff0000u);
            }
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                __half2_raw r;
                r.x = (unsigned short)(q[k] & 0xffffu);
                r.y = (unsigned short)(q[k] >> 16);
                const float2 f = __half22float2(__half2(r));
                w[2 * k] = f.x;
                w[2 * k + 1] = f.y;
            }
        }
    } else if constexpr (E == 16) {
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const uint32_t word = q[2 * j + k];
            const float2 f0 = lin_fp8x2(word), f1 = lin_fp8x2(word >> 16);
            w[4 * k] = f0.x;
            w[4 * k + 1] = f0.y;
            w[4 * k + 2] = f1.x;
            w[4 * k + 3] = f1.y;
        }
    } else {
        const uint32_t word = q[j];
#pragma unroll
        for (int b = 0; b < 4; b++) {
            const float2 f = lin_fp4x2((word >> (8 * b)) & 0xffu);
            w[2 * b] = f.x;
            w[2 * b + 1] = f.y;
        }
    }
}

/* s + x . w over SW columns, in column order. */
template <int SW> __device__ __forceinline__ float gv_dot(const float *x, const float *w, float s)
{
#pragma unroll
    for (int k = 0; k < SW; k++) s = fmaf(x[k], w[k], s);
    return s;
}

/* The 16-byte chunk ch of each of a warp's R weight rows, row i at w0 + off [i] (gemv_body:
 * rows past the matrix read its last row, so that no load needs a predicate), streamed past L1. */
template <int R>
__device__ __forceinline__ void gv_load(uint32_t (&q)[R][4], const uint8_t *w0,
                                        const uint32_t (&off)[R], int64_t ch)
{
    const uint8_t *p = w0 + ch * 16;
#pragma unroll
    for (int i = 0; i < R; i++) {
        const uint4 v = __ldcs((const uint4 *)(const void *)(p + off[i]));
        q[i][0] = v.x, q[i][1] = v.y, q[i][2] = v.z, q[i][3] = v.w;
    }
}

/* x staged in shared memory (gemv_xs_kernel): 16-byte unit v (4 columns) of row n of the CTA's
 * slice lies at xs [n nu + gv_swz(v)]. A lane's chunk is 1-8 consecutive units and the lanes of a
 * warp take consecutive chunks, so one 16-byte read of each lane lands 16-128 bytes apart; the
 * swizzle (unit v's low three bits XOR bits 3-5) spreads every 8 lanes of such a read over the 8
 * bank groups, for every chunk width (E = 4, 8, 16, 32). */
__device__ __forceinline__ int64_t gv_swz(int64_t v)
{
    return v ^ ((v >> 3) & 7);
}

/* One 16-byte chunk ch of each of a warp's R rows (q, loaded by gv_load) against x: acc [R][NT]
 * += its products in column order (scaled formats: the block's partial times its scale). srow:
 * the rows' scale rows (FP8: row / 128, one for all R where one_sr; FP4: the rows). XS: x from
 * xs (the slice's nu units a row from unit u0; gv_swz), else through L1. */
template <int NT, int E, int R, int XS = 0>
__device__ __forceinline__ void
gv_chunk(const lin_args &a, const uint32_t (&q)[R][4], int64_t ch, const int64_t (&srow)[R],
         bool one_sr, int N, float (&acc)[R][NT], const float4 *xs, int64_t nu, int64_t u0)
{
    constexpr int SW = E < 8 ? E : 8; /* columns decoded at once */
    constexpr int SB = E / SW;
    constexpr bool scaled = E >= 16;
    const int64_t c = ch * E;
    float sc[R][2], p[R][NT];
#pragma unroll
    for (int i = 0; i < R; i++) {
        sc[i][0] = sc[i][1] = 0.0f;
#pragma unroll
        for (int n = 0; n < NT; n++) p[i][n] = 0.0f;
    }
    if (E == 16 && one_sr) {
        const float s = lin_scale(a, srow[0], c / 128);
#pragma unroll
        for (int i = 0; i < R; i++) sc[i][0] = s;
    } else if constexpr (scaled) {
#pragma unroll
        for (int i = 0; i < R; i++) {
            if (E == 16) {
                sc[i][0] = lin_scale(a, srow[i], c / 128);
            } else if (a.fmt == DSV4_FORMAT_MXFP4) {
                sc[i][0] = sc[i][1] = lin_scale(a, srow[i], c / 32);
            } else {
                sc[i][0] = lin_scale(a, srow[i], c / 16);
                sc[i][1] = lin_scale(a, srow[i], c / 16 + 1);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < SB; j++) {
        float w[R][SW];
#pragma unroll
        for (int i = 0; i < R; i++) gv_decode<E>(a.fmt, q[i], j, w[i]);
#pragma unroll
        for (int n = 0; n < NT; n++) {
            if (n >= N) break;
            const float4 *xp = (const float4 *)(const void *)(a.x + n * a.ldx + c + j * SW);
            float xv[SW];
#pragma unroll
            for (int k = 0; k < SW / 4; k++) {
                const float4 f =
                    XS ? xs[n * nu + gv_swz((c + j * SW) / 4 + k - u0)] : __ldg(xp + k);
                xv[4 * k] = f.x, xv[4 * k + 1] = f.y, xv[4 * k + 2] = f.z, xv[4 * k + 3] = f.w;
            }
#pragma unroll
            for (int i = 0; i < R; i++) {
                if constexpr (scaled)
                    p[i][n] = gv_dot<SW>(xv, w[i], p[i][n]);
                else
                    acc[i][n] = gv_dot<SW>(xv, w[i], acc[i][n]);
            }
        }
        /* FP4: after each 16-column half (its own NVFP4 scale); FP8: after the chunk. The
         * FP4 partial is e2m1 * 2^-14 sums: times 2^14 (exact) before the scale. */
        if constexpr (scaled) {
            const bool flush = E == 16 ? j == SB - 1 : (j & 1) == 1;
            if (flush) {
                const int h = E == 16 ? 0 : j >> 1;
#pragma unroll
                for (int i = 0; i < R; i++)
#pragma unroll
                    for (int n = 0; n < NT; n++) {
                        const float pv = E == 16 ? p[i][n] : p[i][n] * 16384.0f;
                        acc[i][n] = fmaf(pv, sc[i][h], acc[i][n]);
                        p[i][n] = 0.0f;
                    }
            }
        }
    }
}

// One CTA's share: x [N, cols] (ldx), W rows row0 + blk * rows per CTA .. (of nrows), chunks
// [kz cps, (kz + 1) cps) of each -> y [N, nrows] (ldy) when kn == 1, else the cluster's sum of
// its kn slices; 256 threads, 1 << ks_log2 warps per row group.
// The PDL wait is here, after the first weight loads (the callers open with DSV4_PDL_LATE).
// XS: x read from the CTA's dynamic shared memory, where its first block (first) copies the
// slice in after the wait (gemv_xs_kernel).
template <int NT, int E, int XS = 0>
__device__ __forceinline__ void gemv_body(const lin_args &a, int64_t blk, int ks_log2, int64_t cps,
                                          int kz, int kn, bool first = true)
{
    constexpr int R = NT >= 8 ? 2 : 4; /* rows per warp: registers hold R*NT sums twice */
    __shared__ float red[GV_WARPS][R][NT];
    __shared__ float part[NT * R * GV_WARPS]; /* split-K: this CTA's [NT][rows] sums */

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int KS = 1 << ks_log2, RG = GV_WARPS >> ks_log2;
    const int rg = warp >> ks_log2, ks = warp & (KS - 1);
    const int64_t rbase = (blk * RG + rg) * R;
    const int64_t nchunk = a.cols / E;
    const int64_t ch0 = (int64_t)kz * cps, ch1 = min(nchunk, ch0 + cps);
    const int N = (int)a.N;

    /* The warp's rows: one past the matrix reads its last row instead (its sums are not stored),
     * so that the loads need no predicate; row i at w0 + off [i] (32 bits: R rows of a matrix). */
    const int64_t last = a.nrows - 1, rb0 = min(rbase, last);
    const uint8_t *const w0 = a.data + (a.row0 + rb0) * a.row_bytes;
    uint32_t off[R];
    int64_t srow[R];
#pragma unroll
    for (int i = 0; i < R; i++) {
        const int64_t r = min(rbase + i, last);
        off[i] = (uint32_t)((r - rb0) * a.row_bytes);
        srow[i] = E == 16 ? (a.row0 + r) / 128 : a.row0 + r;
    }
    const bool one_sr = srow[0] == srow[R - 1]; /* FP8: the R rows in one 128-row scale block */
    float acc[R][NT];
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[i][n] = 0.0f;

    /* the weights are read from the kernel's start, x and y only after the PDL wait: the first
     * chunk's loads go out before it (the kernels open with DSV4_PDL_LATE), so that they overlap
     * the previous launch's tail; that chunk is peeled off the loop so that no load is carried
     * across its back edge (the registers of the loop stay as they were) */
    uint32_t q[R][4];
    int64_t ch = ch0 + (int64_t)ks * 32 + lane;
    if (ch < ch1) gv_load<R>(q, w0, off, ch);
    DSV4_PDL_WAIT();
    extern __shared__ float4 gv_xs[];
    const int64_t u0 = ch0 * E / 4, nu = (ch1 - ch0) * E / 4; /* the slice's x units */
    if (XS && first) {
        for (int64_t i = threadIdx.x; i < (int64_t)N * nu; i += GV_THREADS) {
            const int64_t n = i / nu, v = i - n * nu;
            const unsigned d = (unsigned)__cvta_generic_to_shared(gv_xs + n * nu + gv_swz(v));
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d),
                         "l"(a.x + n * a.ldx + 4 * (u0 + v))
                         : "memory");
        }
        asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
        __syncthreads();
    }
    if (ch < ch1) {
        gv_chunk<NT, E, R, XS>(a, q, ch, srow, one_sr, N, acc, gv_xs, nu, u0);
        ch += 32 * KS;
    }
    for (; ch < ch1; ch += 32 * KS) {
        gv_load<R>(q, w0, off, ch);
        gv_chunk<NT, E, R, XS>(a, q, ch, srow, one_sr, N, acc, gv_xs, nu, u0);
    }

    /* butterfly over the warp: every lane ends with the same bits (each step adds a pair in
     * both orders, which IEEE addition does not distinguish) */
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            float v = acc[i][n];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) red[warp][i][n] = v;
        }
    __syncthreads();
    const int t = threadIdx.x;
    if (t < RG * R * NT) {
        const int g = t / (R * NT), i = (t / NT) % R, n = t % NT;
        const int64_t row = (blk * RG + g) * R + i;
        float s = red[g * KS][i][n];
        for (int k = 1; k < KS; k++) s += red[g * KS + k][i][n];
        if (kn > 1)
            part[n * (RG * R) + g * R + i] = s;
        else if (n < N && row < a.nrows)
            a.y[n * a.ldy + row] = lin_finish(a, s);
    }
    if (kn > 1) lin_cluster_store(a, part, NT, RG * R, 0, blk * RG * R);
}

// x [N, cols] (ldx), W rows row0 + [0, nrows) -> y [N, nrows] (ldy), per group; grid:
// (ceil(nrows / rows per CTA), groups, kn) CTAs of 256 threads, clusters (1, 1, kn) when kn > 1.
template <int NT, int E>
__global__ void __launch_bounds__(GV_THREADS) gemv_kernel(lin_args a, int ks_log2, int64_t cps)
{
    DSV4_PDL_LATE(); /* gemv_body waits after its first weight loads */
    lin_at_group(a, blockIdx.y);
    gemv_body<NT, E>(a, blockIdx.x, ks_log2, cps, (int)blockIdx.z, (int)gridDim.z);
}

// Two rows of x, x staged: y [2, nrows] = x [2, cols] . W^T, as gemv_kernel<2, E> (the same
// sums in the same order: the same bits) on a persistent grid (gridDim.x CTAs a group, 2 an SM,
// each over row blocks blockIdx.x, + gridDim.x, .. < nblk; no K split over CTAs), each CTA
// copying x [2, cols] into its dynamic shared memory (gv_swz) once. Why: at two rows each 16-byte
// weight chunk a lane multiplies needs 2 x 64 bytes of x (FP8), and the warp's reads of them
// through L1 land 64 bytes apart, so L1 was the busiest unit (ncu, Flash wq_b at two rows with 2
// rows a warp: L1/TEX 79-85% of peak, DRAM 37-45%); from shared memory the same reads are
// conflict-free. Persistent, so that each CTA pays the copy once: x per CTA per block of 32 rows
// cost Flash wq_b (1,024 such blocks) more than it saved (20.9 -> 22.1 us).
template <int E>
__global__ void __launch_bounds__(GV_THREADS, GV_OCC)
    gemv_xs_kernel(lin_args a, int ks_log2, int64_t nblk)
{
    DSV4_PDL_LATE(); /* gemv_body waits after its first weight loads */
    lin_at_group(a, blockIdx.y);
    const int64_t cps = a.cols / E;
    for (int64_t blk = blockIdx.x; blk < nblk; blk += gridDim.x) {
        gemv_body<2, E, 1>(a, blk, ks_log2, cps, 0, 1, blk == (int64_t)blockIdx.x);
        __syncthreads(); /* red and part are the next block's */
    }
}

/* The norm tail (gv_norm_tail) of entry i of a multi launch (-1: none): its y [N, nrows] in place
 * and yq; ticket: 0 between launches, the CTAs of the entry (all kn slices) take one each. */
typedef struct gv_norm {
    int i, qblock;
    const float *w;
    float *yq, eps;
    int *ticket;
} gv_norm;

/* The entries of one dsv4_bk_linear_multi launch: entry i owns CTAs [cta0[i], cta0[i + 1]) of
 * the grid's x, each over R * (8 >> ks_log2[i]) of its rows, in slices of cps[i] chunks. */
typedef struct gv_multi {
    lin_args e[DSV4_BK_LINEAR_MULTI_MAX];
    int64_t cps[DSV4_BK_LINEAR_MULTI_MAX];
    int cta0[DSV4_BK_LINEAR_MULTI_MAX + 1];
    int ks_log2[DSV4_BK_LINEAR_MULTI_MAX];
    int n;
    gv_norm nm;
    int sig_i;        /* the entry whose last CTA raises its signal *sig (-1: none) */
    int *sig, *sig_t; /* the signal, and the ticket counter (0 between launches) */
} gv_multi;

// Whether this CTA is the last of entry i to get here (all kn slices), by a ticket on a
// per-stream counter that is 0 between launches (the last CTA resets it): every CTA fences its y
// stores before it takes one. The same for all threads of the CTA.
__device__ __forceinline__ bool gv_last_cta(const gv_multi &m, int i, int *ticket)
{
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const int n = (m.cta0[i + 1] - m.cta0[i]) * (int)gridDim.z;
        last = atomicAdd(ticket, 1) == n - 1;
        if (last) *ticket = 0; /* every CTA has taken its ticket */
    }
    __syncthreads();
    return last;
}

// The last CTA of entry a (by a ticket, as moe_route.cu's) runs dsv4_bk_rmsnorm_quant on the
// entry's y [N, nrows] in place (-> y, m.nm.yq): rmsnorm_kernel's numerics (rownorm_dev.cuh), a
// row at a time in the launch's dynamic shared memory (y, then the norm weight: 2 nrows floats).
// Each CTA's y stores (a share of the rows, or of a cluster's slices: lin_cluster_store) are
// fenced before its ticket; the last CTA fences after taking it, then reads y. The other entries'
// CTAs stream on meanwhile, and the norm's own launch leaves the step's chain (the attention's
// q_norm: ~5 us run + wake at one row). What it costs here, measured (H100 trace, Flash batch 1):
// the entry's CTAs end ~5 us after the wait, the ticket returns ~3 us later (a fence and an
// atomic while the other CTAs stream), then loads and the norm; the launch ends ~4 us later than
// without the tail. Step: Flash batch 1 -0.6%, 2 -0.3%, Pro batch 1 -0.3% (docs/PERF.md, session
// 36). A device fault inside a launch can leave the ticket off 0: the context is lost then anyway.
__device__ __noinline__ void gv_norm_tail(const gv_multi &m, const lin_args &a)
{
    __shared__ double sh[GV_THREADS / 32];
    extern __shared__ float4 gv_xs[];
    float *s = (float *)gv_xs, *sw = s + a.nrows;
    const int width = (int)a.nrows;
    /* the norm weight's lines into L2 meanwhile (from HBM: one round trip fewer for the last) */
    for (int i = 32 * (int)threadIdx.x; i < width; i += 32 * GV_THREADS)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(m.nm.w + i));
    if (!gv_last_cta(m, m.nm.i, m.nm.ticket)) return;
    __threadfence();
    for (int64_t r = 0; r < a.N; r++) {
        float *y = a.y + r * a.ldy;
        /* y (through L2: other CTAs wrote it) and, for the first row, w: 4 loads of each a
         * thread in flight together */
        for (int i0 = threadIdx.x; i0 < width; i0 += 4 * GV_THREADS) {
            float v[4], u[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int i = i0 + k * GV_THREADS;
                v[k] = i < width ? __ldcg(y + i) : 0.0f;
                u[k] = r == 0 && i < width ? __ldg(m.nm.w + i) : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int i = i0 + k * GV_THREADS;
                if (i < width) s[i] = v[k];
                if (r == 0 && i < width) sw[i] = u[k];
            }
        }
        __syncthreads();
        dev_rmsnorm_row(y, m.nm.yq + r * width, s, sw, s, width, m.nm.eps, 1, m.nm.qblock, sh);
        __syncthreads(); /* s and sh are the next row's */
    }
}

// An entry's signal (dsv4_bk_linear_entry.signal): the last CTA of entry i (gv_last_cta; a
// cluster's rank 0 stores the slices' sum before its own ticket) raises it, which an op on the
// other chain polls (bk_topk.cu, the indexer's top-k) instead of waiting for the whole launch.
// A launch has the norm tail or a signal, not both (one ticket counter a stream).
__device__ __noinline__ void gv_signal(const gv_multi &m, int i)
{
    if (gv_last_cta(m, i, m.sig_t) && threadIdx.x == 0) {
        __threadfence();
        dsv4_signal_raise(m.sig);
    }
}

// The signal of an entry the one launch did not take: raised after the op's launches.
__global__ void gv_signal_kernel(int *p)
{
    DSV4_PDL_WAIT();
    if (threadIdx.x == 0) dsv4_signal_raise(p);
}

// Every entry's y [N, nrows] = x [N, cols] . W^T in one launch; grid (cta0[n], 1, kn), clusters
// (1, 1, kn) when kn > 1. The CTA finds its entry, then branches on the entry's format (uniform
// over the CTA, so the branch costs nothing but registers: the kernel keeps the most any format's
// body needs: 96 registers at one row, 2 CTAs an SM). gemv_multi_f816_kernel: one row, only the
// FP8 and BF16 / F16 bodies (every entry of the engine's projections of h), 64 registers, so 4
// CTAs an SM as the one-row GEMV holds: twice the loads in flight. H100, dsv4 bench, ms/step,
// one binary with and without (docs/PERF.md, session 26): Flash 4 layers batch 1 0.988 ->
// 0.979 (attn.proj 0.0648 -> 0.0602 ms/step), Pro 2 layers 1.248 -> 1.243.
template <int NT, int F816> __device__ __forceinline__ void gemv_multi_body(const gv_multi &m)
{
    int i = 0;
    while (i + 1 < m.n && (int)blockIdx.x >= m.cta0[i + 1]) i++;
    const lin_args &a = m.e[i];
    const int64_t blk = (int64_t)blockIdx.x - m.cta0[i];
    const int kz = (int)blockIdx.z, kn = (int)gridDim.z;
    switch (a.fmt) {
    case DSV4_FORMAT_F32:
        if constexpr (!F816) gemv_body<NT, 4>(a, blk, m.ks_log2[i], m.cps[i], kz, kn);
        break;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16:
        gemv_body<NT, 8>(a, blk, m.ks_log2[i], m.cps[i], kz, kn);
        break;
    case DSV4_FORMAT_FP8:
        gemv_body<NT, 16>(a, blk, m.ks_log2[i], m.cps[i], kz, kn);
        break;
    default: /* MXFP4, NVFP4 (gemv_ok) */
        if constexpr (!F816) gemv_body<NT, 32>(a, blk, m.ks_log2[i], m.cps[i], kz, kn);
        break;
    }
    if (i == m.nm.i) gv_norm_tail(m, a);
    if (i == m.sig_i) gv_signal(m, i);
}

template <int NT>
__global__ void __launch_bounds__(GV_THREADS) gemv_multi_kernel(const __grid_constant__ gv_multi m)
{
    DSV4_PDL_LATE(); /* gemv_body waits after its first weight loads */
    gemv_multi_body<NT, 0>(m);
}

__global__ void __launch_bounds__(GV_THREADS, GV_OCC1)
    gemv_multi_f816_kernel(const __grid_constant__ gv_multi m)
{
    DSV4_PDL_LATE(); /* gemv_body waits after its first weight loads */
    gemv_multi_body<1, 1>(m);
}

typedef void (*gemv_fn)(lin_args, int, int64_t);

/* Columns per 16-byte chunk; 0: no GEMV for this format. */
static int gemv_chunk_cols(int fmt)
{
    switch (fmt) {
    case DSV4_FORMAT_F32:
        return 4;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16:
        return 8;
    case DSV4_FORMAT_FP8:
        return 16;
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4:
        return 32;
    default:
        return 0;
    }
}

static int gemv_ok(const lin_args *a)
{
    const int E = gemv_chunk_cols(a->fmt);
    return E && a->N <= 16 && a->cols % E == 0 && (uintptr_t)a->data % 16 == 0 &&
           (uintptr_t)a->x % 16 == 0 && a->ldx % 4 == 0 && a->xg % 4 == 0;
}

#define GV_ROW(nt)                                                                                 \
    {                                                                                              \
        gemv_kernel<nt, 4>, gemv_kernel<nt, 8>, gemv_kernel<nt, 16>, gemv_kernel<nt, 32>           \
    }

/* Rows per warp of the variant for N tokens. */
static int gemv_rows_per_warp(int64_t N)
{
    return N > 4 ? 2 : 4;
}

/* The launch configuration of grid (ctas, groups or 1, kn): clusters of (1, 1, kn) when kn > 1
 * (attr: the caller's storage for the attribute). */
static cudaLaunchConfig_t gemv_cfg(dim3 grid, int kn, cudaStream_t st, cudaLaunchAttribute *attr)
{
    cudaLaunchConfig_t cfg = lin_cluster_cfg(grid, GV_THREADS, 0, kn, st, attr);
    cfg.numAttrs = kn > 1 ? 1 : 0;
    last_split = kn;
    return cfg;
}

/* K split for `occ` resident CTAs an SM: 1..8 warps per row group (*ks_log2), times 1..kmax CTAs
 * of a cluster (*kn); the choice whose CTAs fill the resident slots best wins, fewer CTAs per
 * cluster and then fewer warps on ties (a cluster's reduction costs more than a CTA's). A
 * matrix with many rows keeps kn = 1: its CTAs fill the slots already. Returns the fill (the
 * last wave's share of its slots). With 4 an SM (one row of x) a warp split needs 2 chunks a
 * lane: at 1 the warps' reduction costs more (the indexer's wq_b, 1,024 columns, 5.84 ->
 * 6.27 us). */
static double gemv_split(const lin_args *a, int64_t nchunk, int R, int occ, int kmax, int *ks_log2,
                         int *kn)
{
    const double slots = (double)LIN_SMS * occ;
    const int lane_min = occ > GV_OCC && force_split <= 0 ? 2 : 1;
    double best = -1.0;
    for (int k = 1; k <= kmax; k *= 2) {
        if (force_split > 0 && k != force_split) continue;
        for (int l = 0; l <= 3; l++) {
            /* one chunk per lane at least, two in a split: slices of one chunk lose more in the
             * cluster's reduction than their shorter loop saves (H100, 64-256 x 4096 BF16 at
             * N = 1: 3.4-3.7 us whole, 3.8-4.3 us in 2 slices). A forced split takes any. */
            const int64_t need = force_split > 0 || k == 1
                                     ? (l > 0 ? (int64_t)lane_min * (32 << l) : 0)
                                     : (int64_t)2 * k * (32 << l);
            if (nchunk < need) break;
            const int64_t per = (int64_t)R * (GV_WARPS >> l);
            const double ctas = (double)((a->nrows + per - 1) / per * a->groups * k);
            const double waves = ctas / slots;
            const double eff = waves / (double)(int64_t)(waves + 0.999999);
            if (eff > best + 0.05) best = eff, *ks_log2 = l, *kn = k;
        }
    }
    return best;
}

static dsv4_status launch_gemv(const lin_args *a, cudaStream_t st)
{
    static const gemv_fn table[5][4] = {GV_ROW(1), GV_ROW(2), GV_ROW(4), GV_ROW(8), GV_ROW(16)};
    const int E = gemv_chunk_cols(a->fmt);
    const int ei = E == 4 ? 0 : E == 8 ? 1 : E == 16 ? 2 : 3;
    int ni = 0;
    while ((1 << ni) < a->N) ni++;
    const int R = gemv_rows_per_warp(a->N);
    const gemv_fn fn = table[ni][ei];

    const int64_t nchunk = a->cols / E;
    int ks_log2 = 0, kn = 1;
    /* One row of x: the kernels hold 4 CTAs an SM, so a 33.5 MB matrix of 4,096 or 8,192
     * columns (wo_a, wo_b) splits its rows between 2 or 4 warps to fill them, and its loads
     * in flight double. Taken only where warp splits alone then fill the 4 slots of every SM
     * (Pro's wo_b, 7,168 x 16,384, would take a 2-CTA cluster split: 45.7 -> 59.2 us);
     * otherwise the split for 2 an SM, as for more rows. H100, dsv4 bench --gemms 1, us (2 ->
     * 4 an SM): Flash wo_a 15.75 -> 14.85, wo_b 15.72 -> 14.62. */
    if (a->N != 1 || gemv_split(a, nchunk, R, GV_OCC1, 1, &ks_log2, &kn) < 0.95)
        (void)gemv_split(a, nchunk, R, GV_OCC, GV_SPLIT_MAX, &ks_log2, &kn);
    /* One or two rows of x on a matrix of many waves (the LM head, 129,280 rows): its rows split
     * between all 8 warps, 4 rows a CTA, so that each lane has a few chunks (Flash's head 2, not
     * 16) and twice the loads are in flight. H100, dsv4 bench, the head's op time at one row, 1
     * -> 2 / 4 / 8 warps a row (ms): Flash 0.346 -> 0.344 / 0.340 / 0.335 (3,160 GB/s), Pro 0.604
     * -> 0.604 / 0.596 / 0.589; step at batch 1 Flash 1.009 -> 0.999, Pro 1.283 -> 1.268; at
     * batch 2 Flash 1.250 -> 1.242 / 1.238 / 1.233, Pro 1.508 -> 1.503 / 1.494 / 1.491 (4 / 2
     * layers, where the head weighs more than in the whole model). Not for fewer waves: 8 warps
     * on every one-row GEMV of >= 4,096 columns cost Flash's step 0.5% (docs/PERF.md, session
     * 22). From 3 rows the head is W16's. */
    if (a->N <= 2 && kn == 1 && nchunk >= (int64_t)2 * 32 * GV_WARPS &&
        (a->nrows + R - 1) / R * a->groups >= (int64_t)GV_MANY_WAVES * LIN_SMS * GV_OCC1)
        ks_log2 = 3;
    const int64_t per = (int64_t)R * (GV_WARPS >> ks_log2), cps = (nchunk + kn - 1) / kn;
    const dim3 grid((unsigned)((a->nrows + per - 1) / per), (unsigned)a->groups, (unsigned)kn);
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg = gemv_cfg(grid, kn, st, &attr);
    /* Two rows without a K split over CTAs, on a grid of a few waves: x staged a CTA, persistent
     * (gemv_xs_kernel). H100, dsv4 bench --gemms 2, us: Flash wq_b 21.1 -> 19.2, wo_a 18.6 ->
     * 16.9, wo_b 19.3 -> 18.1, indexer wq_b 7.0 -> 6.7; Pro's (2.2-2.4 TB/s already) within 1%.
     * Not the LM head (over a thousand waves): each CTA's copy of x had Flash batch 2 +2.8%
     * (docs/PERF.md, session 27). Nor where the copy outweighs half the weights a CTA streams
     * (per rows of 16 / E bytes a column, a block; x 8 bytes a column): Pro's wq_a, 8 rows a
     * CTA, 10.6 -> 11.4 us. */
    const int64_t nblk = grid.x, slots = (int64_t)GV_OCC * LIN_SMS;
    const int64_t gx0 = (slots + a->groups - 1) / a->groups, gx = gx0 < nblk ? gx0 : nblk;
    const size_t xs = (size_t)a->cols * 2 * sizeof(float);
    if (a->N == 2 && kn == 1 && nblk * a->groups <= GV_XS_WAVES * slots && xs <= GV_XS_BYTES &&
        per * ((nblk + gx - 1) / gx) >= E && gv_xs_on) {
        static void (*const xs_table[4])(lin_args, int, int64_t) = {
            gemv_xs_kernel<4>, gemv_xs_kernel<8>, gemv_xs_kernel<16>, gemv_xs_kernel<32>};
        cfg.gridDim.x = (unsigned)gx;
        cfg.dynamicSmemBytes = xs;
        CUDA_TRY(cudaFuncSetAttribute((const void *)xs_table[ei],
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)xs));
        CUDA_TRY(cudaLaunchKernelEx(&cfg, xs_table[ei], *a, ks_log2, nblk));
        last_xs = 1;
        return DSV4_OK;
    }
    last_xs = 0;
    CUDA_TRY(cudaLaunchKernelEx(&cfg, fn, *a, ks_log2, cps));
    return DSV4_OK;
}

/* ---- dsv4_bk_linear_multi: the entries in one GEMV launch -----------------------------------
 * Up to GV_MULTI_NMAX tokens the entries share one GEMV launch; above that (to 64) the entries
 * MMX takes share one tensor-core launch (dsv4_lin_launch_mmx) and the others take the
 * dispatcher's kernel (their own launches). The limit was 8 (from N = 5 the GEMV's f32 FMAs and
 * x re-reads make it the slower kernel on FP8, from N = 9 on BF16) until MMX moved to wgmma;
 * measured again (H100, dsv4 bench, PERF.md session 21), MMX from 3 rows: Flash 4 layers batch
 * 3 -0.7% (with F8W from 3 rows, below: -2.8%), 5 -2.6%, 6 -3.0%, 8 -3.6%; Pro 2 layers batch 3-8
 * -1.6 to -3.2%; from 2 rows Flash batch 2 +1.3%. Bytes per CTA: the whole over GV_MULTI_CTAS
 * (about 8 resident CTAs per SM: one wave, fine-grained enough that the SMs finish together), kept
 * within [16, 64] KB; each entry's rows per CTA (1..8 warps per row group) come closest to it, so
 * an entry's share of the CTAs is its share of the bytes. With 4 CTAs an SM at one row
 * (gemv_multi_f816_kernel) 8 still measured best (Flash batch 1, ms/step, 4 / 8 / 12 / 16 x SMs:
 * 0.991 / 0.979 / 0.982 / 0.979; docs/PERF.md session 26). */
enum { GV_MULTI_NMAX = 2, GV_MULTI_CTAS = 8 * LIN_SMS };
/* W16X from this many rows, where its launch has at least W16X_MIN_KS K slices (measured:
 * dsv4_cuda_bk_linear_multi) */
enum { W16X_NMIN = 33, W16X_MIN_KS = 2 };

typedef void (*gemv_multi_fn)(gv_multi);

/* The norm tail's row and weight in the launch's dynamic shared memory: rows of up to this many
 * floats (48 KB without opting in to more); wider rows take the separate rmsnorm_quant launch. */
enum { GV_NORM_MAX = 6 * 1024 };

static dsv4_status launch_gemv_multi(const lin_args *as, int n, const gv_norm *norm, int sig_i,
                                     int *sig, int *sig_t, cudaStream_t st)
{
    static const gemv_multi_fn table[5] = {gemv_multi_kernel<1>, gemv_multi_kernel<2>,
                                           gemv_multi_kernel<4>, gemv_multi_kernel<8>,
                                           gemv_multi_kernel<16>};
    const int64_t N = as[0].N;
    int ni = 0;
    while ((1 << ni) < N) ni++;
    const int R = gemv_rows_per_warp(N);
    int f816 = 1; /* every entry FP8, BF16 or F16 */
    for (int i = 0; i < n; i++)
        f816 &= as[i].fmt == DSV4_FORMAT_FP8 || as[i].fmt == DSV4_FORMAT_BF16 ||
                as[i].fmt == DSV4_FORMAT_F16;
    const int occ = N == 1 && f816 ? (int)GV_OCC1 : (int)GV_OCC;
    gv_multi m;
    memset(&m, 0, sizeof m);
    double total = 0.0;
    for (int i = 0; i < n; i++) total += (double)as[i].nrows * (double)as[i].row_bytes;
    double target = total / GV_MULTI_CTAS;
    target = target < 16384.0 ? 16384.0 : target > 65536.0 ? 65536.0 : target;
    int64_t ctas = 0;
    for (int i = 0; i < n; i++) {
        const lin_args *a = &as[i];
        const int64_t nchunk = a->cols / gemv_chunk_cols(a->fmt);
        double best = 1e30;
        for (int l = 3; l >= 0; l--) {
            if (l > 0 && nchunk < (int64_t)(32 << l)) continue;
            int64_t per = (int64_t)R * (GV_WARPS >> l);
            if (per > a->nrows) per = a->nrows;
            const double off = fabs(log2((double)per * (double)a->row_bytes / target));
            if (off < best - 1e-9) best = off, m.ks_log2[i] = l;
        }
        const int64_t per = (int64_t)R * (GV_WARPS >> m.ks_log2[i]);
        m.e[i] = *a;
        m.cta0[i] = (int)ctas;
        ctas += (a->nrows + per - 1) / per;
    }
    m.cta0[n] = (int)ctas;
    m.n = n;
    m.nm = *norm;
    m.sig_i = sig_i, m.sig = sig, m.sig_t = sig_t;
    /* split-K over clusters only when the entries are too small to fill the resident slots */
    int kn = force_split > 0 ? force_split : 1;
    while (force_split <= 0 && kn < GV_SPLIT_MAX && ctas * kn < (int64_t)LIN_SMS * occ) {
        int ok = 1;
        for (int i = 0; i < n; i++)
            ok &=
                as[i].cols / gemv_chunk_cols(as[i].fmt) >= (int64_t)(2 * kn) * (32 << m.ks_log2[i]);
        if (!ok) break;
        kn *= 2;
    }
    for (int i = 0; i < n; i++) m.cps[i] = (as[i].cols / gemv_chunk_cols(as[i].fmt) + kn - 1) / kn;
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg = gemv_cfg(dim3((unsigned)ctas, 1, (unsigned)kn), kn, st, &attr);
    if (m.nm.i >= 0) cfg.dynamicSmemBytes = (size_t)as[m.nm.i].nrows * 2 * sizeof(float);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, occ == GV_OCC1 ? gemv_multi_f816_kernel : table[ni], m));
    return DSV4_OK;
}

/* ---- the ops ------------------------------------------------------------------------------- */
/* Fills *a for W rows [row0, row0 + nrows) of each of `groups` groups (x columns g xg ..); 0 and
 * the error set when the weight's format is not served. */
static int lin_setup(lin_args *a, const dsv4_weight *w, int64_t row0, int64_t nrows, int64_t groups,
                     const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy, int round_bf16)
{
    const int64_t cols = w->cols;
    memset(a, 0, sizeof *a);
    a->fmt = (int)w->format;
    a->skind = LIN_SCALE_NONE;
    a->data = (const uint8_t *)w->data;
    a->scale = (const uint8_t *)w->scale;
    a->cols = cols;
    a->scale_cols = w->scale_cols;
    a->row0 = row0;
    a->nrows = nrows;
    a->out_scale = 1.0f;
    a->x = x;
    a->ldx = ldx;
    a->N = N;
    a->y = y;
    a->ldy = ldy;
    a->round_bf16 = round_bf16 != 0;
    a->groups = groups;
    a->xg = cols;
    int ok = 0;
    switch (w->format) {
    case DSV4_FORMAT_F32:
        a->row_bytes = 4 * cols;
        ok = w->dtype == DSV4_DT_F32;
        break;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16:
        a->row_bytes = 2 * cols;
        ok = w->dtype == (w->format == DSV4_FORMAT_BF16 ? DSV4_DT_BF16 : DSV4_DT_F16);
        break;
    case DSV4_FORMAT_FP8:
        a->row_bytes = cols;
        a->skind = w->scale_dtype == DSV4_DT_F8_E8M0 ? LIN_SCALE_E8M0
                   : w->scale_dtype == DSV4_DT_F32   ? LIN_SCALE_F32
                                                     : LIN_SCALE_NONE;
        ok = w->scale && a->skind != LIN_SCALE_NONE;
        break;
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const int mx = w->format == DSV4_FORMAT_MXFP4;
        a->row_bytes = cols / 2;
        a->skind = mx ? LIN_SCALE_E8M0 : LIN_SCALE_E4M3;
        a->out_scale = w->scale2;
        ok = w->scale && cols % (mx ? 32 : 16) == 0 &&
             w->scale_dtype == (mx ? DSV4_DT_F8_E8M0 : DSV4_DT_F8_E4M3);
        break;
    }
    default:
        break;
    }
    if (!ok)
        dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda linear: %s (%s, %s, scales %s)", w->name,
                  dsv4_weight_format_name(w->format), dsv4_dtype_name(w->dtype),
                  dsv4_dtype_name(w->scale_dtype));
    return ok;
}

/* Whether MMV beats the GEMV on a call both take. Measured on the H100 (test_gpu_linear, graph
 * replay, weights from HBM): the GEMV's time grows with N, steeply from N = 5 on (its NT = 8 and
 * 16 variants keep two rows per warp, so every x load serves half as many weights: FP8 32 MB at
 * N = 8 / 16 runs at 14% / 7% of bandwidth, MMV at 40% / 32%); MMV's barely grows with N but
 * carries a fixed cost per CTA (x staging, the cluster reduction), paid back only on large
 * matrices: at N = 1-4 the GEMV is faster on 2-32 MB FP8 (wq_b N = 1: 14.2 against 25.3 us;
 * N = 4 about even) and on 8 MB BF16 up to N = 8, MMV on the >= 100 MB Pro matrices from N = 2
 * (wo_b N = 4: 58 against 94 us). BF16 on large matrices at N = 5..8 is taken from the FP8
 * figures (the head at N = 1 streams at 100% on the GEMV). MMV's pipelined kernel (where its
 * plan takes the call) wins from N = 4 on >= 16 MB FP8 (N = 4, us: Flash wq_b 22.5 against the
 * GEMV's 30.1, wo_b 25.4 / 28.0, wo_a 24.3 / 26.5; N = 2: the GEMV 18.2-20.8 against 21.0-24.2;
 * the 8 MB indexer wq_b stays on the GEMV: 9.3 against 11.1 at N = 4). */
/* A call's weight bytes (all its groups), and the size from which the choices below count a
 * matrix as large (Pro's projections; Flash's are 32 MB). */
static double lin_bytes(const lin_args *a)
{
    return (double)a->groups * (double)a->nrows * (double)a->row_bytes;
}
static const double LIN_BIG = 64e6;

static int mmv_wins(const lin_args *a)
{
    const double bytes = lin_bytes(a);
    const int big = bytes >= LIN_BIG, mid = bytes >= 16e6;
    if (a->fmt == DSV4_FORMAT_FP8)
        return a->N >= 5 || (a->N >= 2 && big) || (a->N >= 4 && mid && dsv4_lin_mmv_pipe_takes(a));
    return a->N >= 9 || (a->N >= 5 && big);
}

/* Whether F8W takes the call: FP8 with x from act_quant (e4m3 codes times powers of two, its fast
 * path; other x is exact but slow there), i.e. ungrouped (the engine's grouped call, wo_a, has
 * the attention's bf16 output as x: W16), at >= 3 rows (2 on >= 64 MB), on >= 4096 weight rows (the
 * engine's wq_b, wo_b, indexer wq_b; --gemms's shared w2). Measured (H100, linear_f8w.cu's
 * figures): faster than MMV and FMM on those at N = 8..64, slower on 1024-2048-row matrices (K
 * split 4-8); engine step (dsv4 bench --shape flash --layers 4 --contexts 4096, same call, 2 runs
 * each) batch 16 3.401 / 3.411 -> 3.284 / 3.285 ms, 32 5.448 / 5.454 -> 5.385 / 5.388, 64 8.472
 * / 8.468 -> 8.300 / 8.302. N = 5..8 (session 13, after F8W's faster prologue; MMV before): batch
 * 5 1.880 / 1.879 -> 1.867 / 1.859, 6 2.070 / 2.065 -> 2.038 / 2.038, 8 2.338 / 2.341 -> 2.305
 * / 2.305; from N = 1 also batch 3 and 4 unchanged, 2 1.293 -> 1.325. Session 21 (PERF.md; the
 * multi as before): from 3 rows Flash batch 3 -1.9%, 4 -2.2%, Pro -1.0%, -1.4%; from 2 rows Flash
 * batch 2 +0.5% (32 MB matrices) but Pro -0.9% (its 100-117 MB ones), so 2 rows take F8W from 64
 * MB. */
static int f8w_wins(const lin_args *a)
{
    const int nmin = lin_bytes(a) >= LIN_BIG ? 2 : 3;
    return a->groups == 1 && a->N >= nmin && a->nrows >= 4096 && dsv4_lin_f8w_ok(a);
}

/* W16 (linear_w16.cu): bf16 wgmma from a TMA-fed ring, x as bf16 (exact, else an f32 path). */
int dsv4_lin_w16_ok(const lin_args *a);
dsv4_status dsv4_lin_launch_w16(const lin_args *a, void *ws, cudaStream_t st);
/* W16X (linear_w16.cu): dsv4_bk_linear_multi's entries as W16 calls of one launch (same columns;
 * min_ks > 0: every tile in one wave of >= min_ks K slices); force_ks > 0: that K split; *ks: the
 * split taken. */
int dsv4_lin_w16x_ok(const lin_args *as, int n, int min_ks);
dsv4_status dsv4_lin_launch_w16x(const lin_args *as, int n, int force_ks, void *ws, cudaStream_t st,
                                 int *ks);

/* Whether W16 takes the call: BF16 weights at 3..128 rows (the MoE gate and the LM head, whose
 * x h is bf16-rounded), FP8 grouped at 3..128, 2 from 64 MB (wo_a, whose x o is bf16 but not
 * act_quant'd, so F8W's codes do not fit it). Faster than MMV / MMA / FMM there (linear_w16.cu's
 * figures); the
 * step (dsv4 bench --shape flash --layers 4 --contexts 4096, H100, same call) batch 16 3.256 ->
 * 3.216 ms, 32 4.931 -> 4.820, 40 6.171 -> 5.621, 64 8.119 -> 7.549; Pro (2 layers) batch 64
 * 10.890 -> 9.915. FP8 at 8 rows since session 13 (the weights widened in wgmma's A registers):
 * step batch 8 2.324 / 2.332 -> 2.313 / 2.300 ms, 2.349 / 2.348 -> 2.333 / 2.321 in another call;
 * at 2 and 4 rows MMV stayed then (W16 there: batch 2 1.289 -> 1.315 ms, 4 1.700 -> 1.714), and
 * BF16 up to 16 rows. Session 21 (PERF.md; H100, dsv4 bench, 4 / 2 layers, so the LM head weighs
 * in): BF16 from 3 rows Flash batch 3 0, 4 -0.9%, 5 -1.7%, 8 -1.6%, 16 -2.0%, Pro 3 -1.7%, 4
 * -2.2%, 5-16 -3.0 to -3.7%; from 2 rows Flash batch 2 +1.1%. FP8 grouped from 3 rows Flash batch
 * 3 -2.0%, 4-5 -0.3 to -1.2%, Pro 3-6 -0.5 to -0.9%; from 2 rows Flash (32 MB of wo_a) +2.2%,
 * Pro (64 MB) -1.1%, so 2 rows from 64 MB. */
static int w16_wins(const lin_args *a)
{
    const int bf = a->fmt == DSV4_FORMAT_BF16 && a->N >= 3;
    const int f8 =
        a->fmt == DSV4_FORMAT_FP8 && a->groups > 1 && a->N >= (lin_bytes(a) >= LIN_BIG ? 2 : 3);
    return (bf || f8) && dsv4_lin_w16_ok(a);
}

/* The dispatcher's choice (or the forced path where it takes the call). */
static int lin_path(const lin_args *a)
{
    int path = force_path == DSV4_LIN_PATH_MULTI || force_path == DSV4_LIN_PATH_MMX ||
                       force_path == DSV4_LIN_PATH_W16X
                   ? DSV4_LIN_PATH_AUTO
                   : force_path;
    if (path == DSV4_LIN_PATH_GEMV && !gemv_ok(a)) path = DSV4_LIN_PATH_AUTO;
    if (path == DSV4_LIN_PATH_MMV && !dsv4_lin_mmv_ok(a)) path = DSV4_LIN_PATH_AUTO;
    if (path == DSV4_LIN_PATH_MMA && !dsv4_lin_mma_ok(a)) path = DSV4_LIN_PATH_AUTO;
    if (path == DSV4_LIN_PATH_FMM && !dsv4_lin_fmm_ok(a)) path = DSV4_LIN_PATH_AUTO;
    if (path == DSV4_LIN_PATH_F8W && !dsv4_lin_f8w_ok(a)) path = DSV4_LIN_PATH_AUTO;
    if (path == DSV4_LIN_PATH_W16 && !dsv4_lin_w16_ok(a)) path = DSV4_LIN_PATH_AUTO;
    if (path != DSV4_LIN_PATH_AUTO) return path;
    if (f8w_wins(a)) return DSV4_LIN_PATH_F8W;
    if (w16_wins(a)) return DSV4_LIN_PATH_W16;
    if (dsv4_lin_mmv_ok(a) && (!gemv_ok(a) || mmv_wins(a))) return DSV4_LIN_PATH_MMV;
    if (gemv_ok(a)) return DSV4_LIN_PATH_GEMV;
    if (a->N > 16 && dsv4_lin_fmm_ok(a) && dsv4_lin_fmm_wins(a)) return DSV4_LIN_PATH_FMM;
    return dsv4_lin_mma_ok(a) ? DSV4_LIN_PATH_MMA : DSV4_LIN_PATH_SIMT;
}

static dsv4_status lin_launch(const lin_args *a, int path, cudaStream_t st, void *f8w_ws)
{
    switch (path) {
    case DSV4_LIN_PATH_F8W:
        return dsv4_lin_launch_f8w(a, f8w_ws, st);
    case DSV4_LIN_PATH_W16: /* the same workspace, sized for both (context.cu) */
        return dsv4_lin_launch_w16(a, f8w_ws, st);
    case DSV4_LIN_PATH_MMV:
        return dsv4_lin_launch_mmv(a, st);
    case DSV4_LIN_PATH_GEMV:
        return launch_gemv(a, st);
    case DSV4_LIN_PATH_MMA:
        return dsv4_lin_launch_mma(a, st);
    case DSV4_LIN_PATH_FMM:
        return dsv4_lin_launch_fmm(a, st);
    default:
        return dsv4_lin_launch_simt(a, st);
    }
}

/* Above 64 rows the projections that F8W, FMM and W16 take at 64 rows would fall to the tiled
 * MMA kernel, at a fraction of their bandwidth (and at prefill sizes far from the tensor cores'
 * rate: Flash's wq_b at 512 rows 487 us on H100, where a 64-row chunk takes ~30); instead the rows
 * go in equal chunks, each a call of its own (the weights streamed once a chunk): of <= 128 rows
 * where F8W or W16 takes the call (their 128-token tiles: one pass over the weights), else <= 64.
 * Rows are independent, so the results are those of the chunks' calls. */
enum { LIN_CHUNK = 64, LIN_CHUNK_BIG = 128 };

/* The number of chunks of a call above 64 rows (1: one call; 0: no chunking, <= 64 rows or a path
 * without its own kernel above 64 rows). */
static int lin_chunks(const lin_args *a)
{
    if (force_path != DSV4_LIN_PATH_AUTO || a->N <= LIN_CHUNK) return 0;
    lin_args c = *a;
    c.N = LIN_CHUNK;
    const int p = lin_path(&c);
    const int rows = p == DSV4_LIN_PATH_F8W || p == DSV4_LIN_PATH_W16 ? LIN_CHUNK_BIG
                     : p == DSV4_LIN_PATH_FMM                         ? LIN_CHUNK
                                                                      : 0;
    return rows ? (int)((a->N + rows - 1) / rows) : 0;
}

static dsv4_status lin_run(dsv4_backend *b, lin_args *a);

static dsv4_status lin_run_chunks(dsv4_backend *b, const lin_args *a, int k)
{
    const int64_t per = (a->N + k - 1) / k;
    for (int64_t r0 = 0; r0 < a->N; r0 += per) {
        lin_args c = *a;
        c.N = a->N - r0 < per ? a->N - r0 : per;
        c.x = a->x + r0 * a->ldx;
        c.y = a->y + r0 * a->ldy;
        DSV4_TRY(lin_run(b, &c));
    }
    return DSV4_OK;
}

static dsv4_status lin_run(dsv4_backend *b, lin_args *a)
{
    const int k = lin_chunks(a);
    if (k > 1) return lin_run_chunks(b, a, k);
    cudaStream_t st = dsv4_cuda_stream(b->cuda);
    void *const f8w_ws = dsv4_cuda_f8w_ws(b->cuda);
    const int path = lin_path(a);
    last_path = path;
    /* the grid's y holds the groups (the tiled kernels: times the 64-token tiles), <= 65535 */
    const int tiled = path == DSV4_LIN_PATH_MMA || path == DSV4_LIN_PATH_SIMT;
    const int64_t gy = tiled ? (a->N + 63) / 64 : 1;
    if (a->groups > 1 && (a->groups > 65535 || gy * a->groups > 65535)) {
        lin_args one = *a;
        one.groups = 1;
        for (int64_t g = 0; g < a->groups; g++) {
            one.row0 = a->row0 + g * a->nrows;
            one.x = a->x + g * a->xg;
            one.y = a->y + g * a->nrows;
            DSV4_TRY(lin_launch(&one, path, st, f8w_ws));
        }
        return DSV4_OK;
    }
    return lin_launch(a, path, st, f8w_ws);
}

extern "C" dsv4_status dsv4_cuda_bk_linear(dsv4_backend *b, const dsv4_weight *w, int64_t row0,
                                           int64_t nrows, const float *x, int64_t ldx, int64_t N,
                                           float *y, int64_t ldy, int round_bf16)
{
    const int64_t cols = w->cols;
    if (N < 0 || nrows < 0 || row0 < 0 || row0 + nrows > w->rows || ldx < cols || ldy < nrows)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "linear %s [%lld, %lld]: rows [%lld, +%lld), N %lld, ldx %lld, ldy %lld",
                         w->name, (long long)w->rows, (long long)cols, (long long)row0,
                         (long long)nrows, (long long)N, (long long)ldx, (long long)ldy);
    if (N == 0 || nrows == 0) return DSV4_OK;
    lin_args a;
    if (!lin_setup(&a, w, row0, nrows, 1, x, ldx, N, y, ldy, round_bf16))
        return DSV4_ERR_UNSUPPORTED;
    return lin_run(b, &a);
}

/* act_quant(x) . W^T: where F8W takes the call (every chunk of it: each has >= 5 rows when one of
 * 64 rows goes there), its prologue quantises x itself (lin_args.aq: act_quant's bf16 rounding,
 * scale and codes; no exactness test, the codes are the input) and xq is not written: one launch
 * fewer than act_quant then the projection. The wgmmas then take act_quant's own codes and
 * scales, the official kernel's inputs; the two ops gave them act_quant(x)'s scale taken again,
 * half of act_quant's where a block's largest code rounded down to 224, with the codes doubled,
 * and the tensor cores' truncated sums of doubled products are not always exactly double (H100,
 * test_gpu_linear_aq: up to 28 of 409,600 outputs differ in the last bits, all within F8W's
 * bound). H100, dsv4 bench, Flash 4 layers, against the two ops: batch 5 -0.4%, 8 -0.4%, 64
 * -0.2%, 128 -0.2%, kernels a layer 19.5 -> 18.5 (batch 5), 22.2 -> 21.2 (64). Other calls, and
 * any forced path (tests): the two ops. */
extern "C" dsv4_status dsv4_cuda_bk_linear_aq(dsv4_backend *b, const dsv4_weight *w, const float *x,
                                              int64_t ldx, float *xq, int64_t N, float *y,
                                              int64_t ldy, int round_bf16)
{
    const int64_t cols = w->cols; /* arguments checked by dsv4_bk_linear_aq */
    if (N == 0 || w->rows == 0) return DSV4_OK;
    lin_args a;
    if (!lin_setup(&a, w, 0, w->rows, 1, x, ldx, N, y, ldy, round_bf16))
        return DSV4_ERR_UNSUPPORTED;
    lin_args c = a;
    c.N = N < (int64_t)LIN_CHUNK ? N : (int64_t)LIN_CHUNK;
    if (force_path == DSV4_LIN_PATH_AUTO && lin_path(&c) == DSV4_LIN_PATH_F8W) {
        a.aq = 1;
        return lin_run(b, &a);
    }
    DSV4_TRY(dsv4_cuda_bk_act_quant(b, xq, cols, x, ldx, N, cols, 128));
    return dsv4_cuda_bk_linear(b, w, 0, w->rows, xq, cols, N, y, ldy, round_bf16);
}

extern "C" dsv4_status dsv4_cuda_bk_linear_grouped(dsv4_backend *b, const dsv4_weight *w,
                                                   int groups, const float *x, int64_t ldx,
                                                   int64_t N, float *y, int64_t ldy, int round_bf16)
{
    const int64_t cols = w->cols;
    if (groups < 1 || w->rows % groups || N < 0 || ldx < groups * cols || ldy < w->rows)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "linear_grouped %s [%lld, %lld]: %d groups, N %lld, ldx %lld, ldy %lld",
                         w->name, (long long)w->rows, (long long)cols, groups, (long long)N,
                         (long long)ldx, (long long)ldy);
    const int64_t nrows = w->rows / groups;
    if (N == 0 || nrows == 0) return DSV4_OK;
    lin_args a;
    if (!lin_setup(&a, w, 0, nrows, groups, x, ldx, N, y, ldy, round_bf16))
        return DSV4_ERR_UNSUPPORTED;
    return lin_run(b, &a);
}

/* The projections of dsv4_cuda_bk_linear_multi (below); *tailed: the entry whose norm the GEMV's
 * tail ran, *signalled the entry whose signal its launch raised (-1: none; the caller runs the
 * other norms and raises the other signals). */
static dsv4_status linear_multi_run(dsv4_backend *b, const dsv4_bk_linear_entry *e, int n,
                                    int64_t N, int *tailed, int *signalled)
{
    if (n < 0 || n > DSV4_BK_LINEAR_MULTI_MAX || N < 0 || (n > 0 && !e))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "linear_multi: %d entries (at most %d), N %lld",
                         n, DSV4_BK_LINEAR_MULTI_MAX, (long long)N);
    lin_args as[DSV4_BK_LINEAR_MULTI_MAX];
    for (int i = 0; i < n; i++) { /* every entry checked before anything is launched */
        const dsv4_weight *w = e[i].w;
        if (!w || e[i].ldx < w->cols || e[i].ldy < w->rows)
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                             "linear_multi entry %d %s: ldx %lld, ldy %lld for [%lld, %lld]", i,
                             w ? w->name : "(no weight)", (long long)e[i].ldx, (long long)e[i].ldy,
                             w ? (long long)w->rows : 0LL, w ? (long long)w->cols : 0LL);
        if (!lin_setup(&as[i], w, 0, w->rows, 1, e[i].x, e[i].ldx, N, e[i].y, e[i].ldy,
                       e[i].round_bf16))
            return DSV4_ERR_UNSUPPORTED;
    }
    if (N == 0) return DSV4_OK;
    /* above 64 rows, equal chunks of <= 64 (each MMX's; as lin_chunks for one projection) */
    if (N > LIN_CHUNK && force_path == DSV4_LIN_PATH_AUTO) {
        const int64_t k = (N + LIN_CHUNK - 1) / LIN_CHUNK, per = (N + k - 1) / k;
        dsv4_bk_linear_entry c[DSV4_BK_LINEAR_MULTI_MAX];
        for (int64_t r0 = 0; r0 < N; r0 += per) {
            for (int i = 0; i < n; i++) {
                c[i] = e[i];
                c[i].x = e[i].x + r0 * e[i].ldx;
                c[i].y = e[i].y + r0 * e[i].ldy;
                c[i].norm = NULL; /* the caller's, over all N rows */
            }
            for (int i = 0; i < n; i++) c[i].signal = NULL; /* the caller's, after all chunks */
            int none = -1, nsig = -1;
            DSV4_TRY(linear_multi_run(b, c, n, N - r0 < per ? N - r0 : per, &none, &nsig));
        }
        return DSV4_OK;
    }
    /* W16X_NMIN..64 rows: every entry as a W16 call of one launch, where W16X takes them all
     * (forced: any N <= 64, any K split). Against MMX (test_gpu_linear --multi-bench, H100, graph
     * replay, us, N = 24 / 32 / 48 / 64): Flash CSA layer 25.6 / 26.0 / 37.5 / 37.9 -> 17.4 /
     * 17.6 / 21.1 / 22.1, HCA layer 19.1 / 19.4 / 30.0 / 30.5 -> 19.2 / 19.8 / 23.2 / 24.5 (at 9 /
     * 16: 14.9 / 15.0 -> 17.9 / 18.5), Pro CSA (73 tiles: K split 1, MMX kept) 40.0 / 40.7 / 60.5
     * / 61.0 -> 28.7 / 28.9 / 39.2 / 39.6. In the step (dsv4 bench, Flash 4 layers, Pro 2, same
     * binary, W16X from 17 rows against none) Flash batch 24 / 32 0 / 0, 40 / 48 / 64 -0.6 / -0.6
     * / -0.5%, Pro 32 -0.1%, 48 / 64 -0.3%: from 33 rows (docs/PERF.md, session 32). */
    const int wx_forced = force_path == DSV4_LIN_PATH_W16X;
    if (N <= 64 && (wx_forced || (force_path == DSV4_LIN_PATH_AUTO && N >= W16X_NMIN))) {
        lin_args wx[DSV4_BK_LINEAR_MULTI_MAX];
        int nw = 0;
        for (int i = 0; i < n; i++)
            if (as[i].nrows > 0) wx[nw++] = as[i];
        if ((wx_forced ? nw >= 1 : nw >= 2) &&
            dsv4_lin_w16x_ok(wx, nw, wx_forced ? 0 : W16X_MIN_KS)) {
            int ks = 1;
            DSV4_TRY(dsv4_lin_launch_w16x(wx, nw, wx_forced ? force_split : 0,
                                          dsv4_cuda_f8w_ws(b->cuda), dsv4_cuda_stream(b->cuda),
                                          &ks));
            last_path = DSV4_LIN_PATH_W16X, last_split = ks;
            return DSV4_OK;
        }
    }
    /* 3..64 rows: the entries MMX takes in one tensor-core launch (forced: any N <= 64) */
    const int mx_forced = force_path == DSV4_LIN_PATH_MMX;
    if (N <= 64 && (mx_forced || (force_path == DSV4_LIN_PATH_AUTO && N > GV_MULTI_NMAX))) {
        lin_args mx[DSV4_BK_LINEAR_MULTI_MAX];
        int nm = 0, inm[DSV4_BK_LINEAR_MULTI_MAX] = {0};
        for (int i = 0; i < n; i++)
            if (as[i].nrows > 0 && dsv4_lin_mmx_ok(&as[i])) mx[nm++] = as[i], inm[i] = 1;
        if (nm == 1 && !mx_forced) nm = 0, memset(inm, 0, sizeof inm); /* one: the plain op */
        for (int i = 0; i < n; i++)
            if (!inm[i] && as[i].nrows > 0) DSV4_TRY(lin_run(b, &as[i]));
        if (nm > 0) {
            int ks = 1;
            DSV4_TRY(dsv4_lin_launch_mmx(mx, nm, force_split > 0 ? force_split : 0,
                                         dsv4_cuda_stream(b->cuda), &ks));
            last_path = DSV4_LIN_PATH_MMX, last_split = ks;
        }
        return DSV4_OK;
    }
    const int forced = force_path == DSV4_LIN_PATH_MULTI;
    const int fuse = forced ? N <= 16 : force_path == DSV4_LIN_PATH_AUTO && N <= GV_MULTI_NMAX;
    lin_args fused[DSV4_BK_LINEAR_MULTI_MAX];
    int nf = 0, in[DSV4_BK_LINEAR_MULTI_MAX] = {0};
    for (int i = 0; i < n; i++)
        if (fuse && as[i].nrows > 0 && gemv_ok(&as[i])) fused[nf++] = as[i], in[i] = 1;
    if (nf == 1 && !forced) nf = 0, memset(in, 0, sizeof in); /* one entry: the plain op */
    for (int i = 0; i < n; i++)
        if (!in[i] && as[i].nrows > 0) DSV4_TRY(lin_run(b, &as[i]));
    if (nf > 0) {
        gv_norm norm = {-1, 0, NULL, NULL, 0.0f, NULL}; /* the first entry with a norm */
        for (int i = 0, f = 0; i < n && norm.i < 0; i++) {
            if (in[i] && e[i].norm && as[i].nrows <= GV_NORM_MAX) {
                norm = (gv_norm){f,       e[i].qblock, e[i].norm,
                                 e[i].yq, e[i].eps,    dsv4_cuda_lin_ticket(b->cuda)};
                *tailed = i;
            }
            f += in[i];
        }
        int sig_i = -1, *sig = NULL; /* without a norm: the first fused entry with a signal */
        for (int i = 0, f = 0; i < n && norm.i < 0 && sig_i < 0; i++) {
            if (in[i] && e[i].signal) sig_i = f, sig = e[i].signal, *signalled = i;
            f += in[i];
        }
        DSV4_TRY(launch_gemv_multi(fused, nf, &norm, sig_i, sig, dsv4_cuda_lin_ticket(b->cuda),
                                   dsv4_cuda_stream(b->cuda)));
        last_path = DSV4_LIN_PATH_MULTI;
    }
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_linear_multi(dsv4_backend *b, const dsv4_bk_linear_entry *e,
                                                 int n, int64_t N)
{
    int tailed = -1, signalled = -1;
    DSV4_TRY(linear_multi_run(b, e, n, N, &tailed, &signalled));
    last_norm_tail = tailed, last_signal = signalled;
    for (int i = 0; i < n && N > 0; i++)
        if (e[i].norm && i != tailed)
            DSV4_TRY(dsv4_cuda_bk_rmsnorm_quant(b, e[i].y, e[i].yq, e[i].y, e[i].norm, N,
                                                e[i].w->rows, e[i].eps, e[i].qblock));
    for (int i = 0; i < n; i++)
        if (e[i].signal && i != signalled) {
            gv_signal_kernel<<<1, 32, 0, dsv4_cuda_stream(b->cuda)>>>(e[i].signal);
            CUDA_LAUNCHED();
        }
    return DSV4_OK;
}
