/*
 * bk_rows.cu - CUDA implementation of the per-row ops of backend.h: embedding, RMSNorm, the
 * per-head query norm, act_quant, scaling, RoPE and the mHC sites.
 *
 * Each op computes the CPU reference's math (bk_rows.c: ops.h, quant_sim.h, weights.c) in the
 * same f32 operations: products and sums go through __fmul_rn / __fadd_rn so that nvcc cannot
 * contract them into FMAs the CPU does not do, and divisions / square roots are the IEEE ones.
 * What may differ from the CPU:
 * - RMSNorm's sum of squares is a double sum in another order (then rounded to f32 as there);
 * - RoPE's cos / sin: the CPU's glibc cosf/sinf and the device's double cos/sin rounded to f32
 *   are both within about half an ulp of the exact value, so they agree but for rare
 *   near-halfway cases (an ulp apart then).
 * act_quant, the per-head query norm (bf16 terms summed in double: exact), scale and the
 * embedding decode are bit-identical. The mHC weights use exp in double rounded to f32 (glibc's
 * expf is within about half an ulp too), so they may differ from the CPU's in the last bit;
 * given the same weights the collapse and the expansion are the CPU's operations in its order.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/hc_dev.cuh"
#include "backend/cuda/quant_dev.cuh"
#include "core/float_formats.h"

/* ---- device helpers: block sums (quant_sim.c's roundings: quant_dev.cuh) ----------------------
 */

/* The sum of v over the block (blockDim a multiple of 32, sh [blockDim / 32]); every thread gets
 * the same value. One call per kernel (sh is not reset). */
__device__ static double dev_block_sum(double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += sh[i];
    return t;
}

/* ---- embedding ------------------------------------------------------------------------------ */
struct embed_args {
    int format, scale_dtype;
    const uint8_t *data, *scale;
    int64_t rows, cols, scale_cols;
    float scale2;
};

/* The scale of block (srow, scol), as weights.c scale_at. */
__device__ static float embed_scale(const embed_args &a, int64_t srow, int64_t scol)
{
    const int64_t i = srow * a.scale_cols + scol;
    switch (a.scale_dtype) {
    case DSV4_DT_F8_E8M0:
        return dsv4_e8m0_to_f32(a.scale[i]);
    case DSV4_DT_F8_E4M3:
        return dsv4_e4m3_to_f32(a.scale[i]);
    case DSV4_DT_F32: {
        float f;
        memcpy(&f, a.scale + 4 * i, 4);
        return f;
    }
    default:
        return __int_as_float(0x7fc00000);
    }
}

/* Element j of row `row`, decoded as dsv4_weight_dequant_row. */
__device__ static float embed_decode(const embed_args &a, int64_t row, int64_t j)
{
    switch (a.format) {
    case DSV4_FORMAT_F32: {
        float v;
        memcpy(&v, a.data + 4 * (row * a.cols + j), 4);
        return v;
    }
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16: {
        uint16_t h;
        memcpy(&h, a.data + 2 * (row * a.cols + j), 2);
        return a.format == DSV4_FORMAT_BF16 ? dsv4_bf16_to_f32(h) : dsv4_f16_to_f32(h);
    }
    case DSV4_FORMAT_FP8:
        return __fmul_rn(dsv4_e4m3_to_f32(a.data[row * a.cols + j]),
                         embed_scale(a, row / 128, j / 128));
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const uint8_t b = a.data[row * (a.cols / 2) + j / 2];
        const int64_t group = a.format == DSV4_FORMAT_MXFP4 ? 32 : 16;
        const float v = dsv4_e2m1_to_f32((j & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0xf));
        return __fmul_rn(__fmul_rn(v, embed_scale(a, row, j / group)), a.scale2);
    }
    default:
        return __int_as_float(0x7fc00000);
    }
}

// ids [N] -> X [N, n_copies, D] = bf16(embed row ids[r]) per copy; one block per row.
// An id outside the table gives NaN rows (the CPU backend refuses it up front; here the ids are
// device data and the step does not stop).
__global__ static void embed_kernel(embed_args a, const int32_t *ids, float *X, int n_copies)
{
    const int64_t r = blockIdx.x, D = a.cols;
    const int32_t id = ids[r];
    const bool ok = id >= 0 && id < a.rows;
    float *x = X + r * n_copies * D;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        const float v = ok ? dev_round_bf16(embed_decode(a, id, j)) : __int_as_float(0x7fc00000);
        for (int c = 0; c < n_copies; c++) x[c * D + j] = v;
    }
}

extern "C" dsv4_status dsv4_cuda_bk_embed(dsv4_backend *b, float *X, const dsv4_weight *embed,
                                          const dsv4_bk_rows *rows, int n_copies, int64_t D)
{
    if (D != embed->cols || n_copies < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "embed: D %lld vs %s [%lld, %lld], %d copies",
                         (long long)D, embed->name, (long long)embed->rows, (long long)embed->cols,
                         n_copies);
    if (embed->format == DSV4_FORMAT_INT || embed->format >= DSV4_FORMAT_COUNT)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "embed: %s: format %d", embed->name,
                         (int)embed->format);
    if (rows->n <= 0) return DSV4_OK;
    embed_args a;
    a.format = (int)embed->format;
    a.scale_dtype = (int)embed->scale_dtype;
    a.data = (const uint8_t *)embed->data;
    a.scale = (const uint8_t *)embed->scale;
    a.rows = embed->rows;
    a.cols = embed->cols;
    a.scale_cols = embed->scale_cols;
    a.scale2 = embed->scale2;
    embed_kernel<<<(unsigned)rows->n, 256, 0, dsv4_cuda_stream(b->cuda)>>>(a, rows->ids, X,
                                                                           n_copies);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- RMSNorm -------------------------------------------------------------------------------- */
enum { ROW_THREADS = 256 };

// x [N, width] (stride ldx) -> y [N, width] (stride ldy); one block per row. y may be x: every
// thread reads its elements for the sum before the block sum's barrier, and pass 2 reads each
// element just before the same thread overwrites it.
__global__ static void rmsnorm_kernel(float *y, int64_t ldy, const float *x, int64_t ldx,
                                      const float *w, int64_t width, float eps, int round_bf16)
{
    __shared__ double sh[ROW_THREADS / 32];
    const float *xr = x + (int64_t)blockIdx.x * ldx;
    float *yr = y + (int64_t)blockIdx.x * ldy;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) ss += (double)xr[i] * (double)xr[i];
    ss = dev_block_sum(ss, sh);
    const float var = (float)(ss / (double)width);
    const float rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
        float v = __fmul_rn(xr[i], rs);
        if (w) v = __fmul_rn(w[i], v);
        yr[i] = round_bf16 ? dev_round_bf16(v) : v;
    }
}

extern "C" dsv4_status dsv4_cuda_bk_rmsnorm(dsv4_backend *b, float *y, int64_t ldy, const float *x,
                                            int64_t ldx, const float *w, int64_t N, int64_t width,
                                            float eps, int round_bf16)
{
    if (N < 0 || width < 1 || ldx < width || ldy < width)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rmsnorm: N %lld width %lld ldx %lld ldy %lld",
                         (long long)N, (long long)width, (long long)ldx, (long long)ldy);
    if (N == 0) return DSV4_OK;
    rmsnorm_kernel<<<(unsigned)N, ROW_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(
        y, ldy, x, ldx, w, width, eps, round_bf16);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- per-head query norm (faithful) -----------------------------------------------------------
 */
enum { QN_THREADS = 128 };

// q [n_vec, c] in place; one block per vector. The bf16 squares have 8 significant bits, so
// their double sum is exact in any order (unless the squares span over 2^45, far beyond any
// activation): the result is the CPU's bit for bit.
__global__ static void head_norm_kernel(float *q, int c, float eps)
{
    __shared__ double sh[QN_THREADS / 32];
    float *x = q + (int64_t)blockIdx.x * c;
    double sum = 0.0;
    for (int i = threadIdx.x; i < c; i += blockDim.x)
        sum += (double)dev_round_bf16(__fmul_rn(x[i], x[i]));
    sum = dev_block_sum(sum, sh);
    const float m = dev_round_bf16((float)(sum / (double)c));
    const float r = dev_round_bf16(__fdiv_rn(1.0f, __fsqrt_rn(dev_round_bf16(__fadd_rn(m, eps)))));
    for (int i = threadIdx.x; i < c; i += blockDim.x) x[i] = dev_round_bf16(__fmul_rn(x[i], r));
}

extern "C" dsv4_status dsv4_cuda_bk_head_norm_bf16(dsv4_backend *b, float *q, int64_t n_vec, int c,
                                                   float eps)
{
    if (n_vec < 0 || c < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "head_norm_bf16: n_vec %lld c %d",
                         (long long)n_vec, c);
    if (n_vec == 0) return DSV4_OK;
    head_norm_kernel<<<(unsigned)n_vec, QN_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(q, c, eps);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- act_quant ------------------------------------------------------------------------------- */
// x [N, width] (stride ldx) -> y [N, width] (stride ldy) = dsv4_sim_act_quant per row: bf16,
// then e4m3 in blocks of `block` with power-of-two scales. One block per row, one warp per
// quantisation block (in turn). The amax is a max (order-free) and every step is exact or a
// single rounding the CPU does the same way: bit-identical. y may be x (each lane rereads the
// element it overwrites; the warp's max is complete before any write).
__global__ static void act_quant_kernel(float *y, int64_t ldy, const float *x, int64_t ldx,
                                        int64_t width, int block)
{
    const float *xr = x + (int64_t)blockIdx.x * ldx;
    float *yr = y + (int64_t)blockIdx.x * ldy;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int64_t nb = (width + block - 1) / block;
    for (int64_t qb = warp; qb < nb; qb += nwarps) {
        const int64_t b0 = qb * block, len = width - b0 < block ? width - b0 : block;
        float amax = 0.0f;
        for (int64_t i = lane; i < len; i += 32)
            amax = fmaxf(amax, fabsf(dev_round_bf16(xr[b0 + i]))); /* fmaxf skips a NaN */
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float s = dev_scale_fp8(amax);
        for (int64_t i = lane; i < len; i += 32) {
            const float v = dev_round_bf16(xr[b0 + i]);
            yr[b0 + i] = __fmul_rn(dev_round_e4m3(__fdiv_rn(v, s)), s);
        }
    }
}

extern "C" dsv4_status dsv4_cuda_bk_act_quant(dsv4_backend *b, float *y, int64_t ldy,
                                              const float *x, int64_t ldx, int64_t N, int64_t width,
                                              int block)
{
    if (N < 0 || width < 1 || block < 1 || ldx < width || ldy < width)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "act_quant: N %lld width %lld block %d ldx %lld ldy %lld", (long long)N,
                         (long long)width, block, (long long)ldx, (long long)ldy);
    if (N == 0) return DSV4_OK;
    act_quant_kernel<<<(unsigned)N, ROW_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(y, ldy, x, ldx,
                                                                                 width, block);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- scale ----------------------------------------------------------------------------------- */
// x [n] = x * s (bf16 when round_bf16); grid-stride.
__global__ static void scale_kernel(float *x, int64_t n, float s, int round_bf16)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float v = __fmul_rn(x[i], s);
        x[i] = round_bf16 ? dev_round_bf16(v) : v;
    }
}

extern "C" dsv4_status dsv4_cuda_bk_scale(dsv4_backend *b, float *x, int64_t n, float s,
                                          int round_bf16)
{
    if (n <= 0) return DSV4_OK;
    const int64_t blocks = (n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096;
    scale_kernel<<<(unsigned)blocks, 256, 0, dsv4_cuda_stream(b->cuda)>>>(x, n, s, round_bf16);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- RoPE ------------------------------------------------------------------------------------ */
enum { ROPE_MAX_HALF = 256 }; /* ops.h DSV4_ROPE_MAX / 2 */

// x row r [n_vec, dim] (row stride ldx): the last r dims of each vector rotated at pos[r]
// (inverse: by -angle), pairs (2i, 2i+1), angle = freqs[i] * (float)pos in f32 as ops.h
// dsv4_op_rope; then, when round_bf16, the whole vectors rounded to bf16 (as the session forward
// rounds the whole q / kv / o). One block per row; the row's cos / sin table in shared memory.
__global__ static void rope_kernel(float *x, int64_t ldx, const int32_t *pos, int n_vec, int dim,
                                   int r, const float *freqs, int inverse, int round_bf16)
{
    __shared__ float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    const int half = r / 2;
    float *xr = x + (int64_t)blockIdx.x * ldx;
    const float fpos = (float)pos[blockIdx.x];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const double ang = (double)__fmul_rn(freqs[i], fpos);
        const float s = (float)sin(ang);
        cs[i] = (float)cos(ang);
        sn[i] = inverse ? -s : s;
    }
    __syncthreads();
    const int64_t npairs = (int64_t)n_vec * half;
    for (int64_t k = threadIdx.x; k < npairs; k += blockDim.x) {
        const int v = (int)(k / half), i = (int)(k % half);
        float *p = xr + (int64_t)v * dim + (dim - r) + 2 * i;
        const float a = p[0], b = p[1], c = cs[i], s = sn[i];
        float o0 = __fadd_rn(__fmul_rn(a, c), __fmul_rn(-b, s));
        float o1 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
        if (round_bf16) {
            o0 = dev_round_bf16(o0);
            o1 = dev_round_bf16(o1);
        }
        p[0] = o0;
        p[1] = o1;
    }
    if (!round_bf16 || dim == r) return;
    const int64_t nrest = (int64_t)n_vec * (dim - r);
    for (int64_t k = threadIdx.x; k < nrest; k += blockDim.x) {
        float *p = xr + (k / (dim - r)) * dim + k % (dim - r);
        *p = dev_round_bf16(*p);
    }
}

extern "C" dsv4_status dsv4_cuda_bk_rope(dsv4_backend *b, float *x, int64_t ldx,
                                         const dsv4_bk_rows *rows, int n_vec, int dim, int r,
                                         const float *freqs, int inverse, int round_bf16)
{
    if (r < 2 || (r & 1) || r > dim || r / 2 > ROPE_MAX_HALF || n_vec < 1 ||
        ldx < (int64_t)n_vec * dim)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rope: r %d dim %d n_vec %d ldx %lld", r, dim,
                         n_vec, (long long)ldx);
    if (rows->n <= 0) return DSV4_OK;
    rope_kernel<<<(unsigned)rows->n, ROW_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(
        x, ldx, rows->pos, n_vec, dim, r, freqs, inverse, round_bf16);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- mHC ------------------------------------------------------------------------------------- */
enum { HC_MAX = 16, HC_COLS = 1024 }; /* largest hc_mult (V4: 4); columns per collapse block */

/* y [D] = bf16(sum_j pre[j] X[j]) over columns [d0, d1) of one row: dsv4_op_hc_collapse's order. */
__device__ static void dev_collapse(float *y, const float *X, const float *pre, int n, int64_t D,
                                    int64_t d0, int64_t d1)
{
    for (int64_t d = d0 + threadIdx.x; d < d1; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++) acc = __fadd_rn(acc, __fmul_rn(pre[j], X[j * D + d]));
        y[d] = dev_round_bf16(acc);
    }
}

// mix [N, (2+n)n], X [N, n, D] -> post [N, n], comb [N, n, n], y [N, D]. Block (row, column
// chunk): thread 0 computes the row's weights (each chunk again: 20 Sinkhorn sweeps of a 4 x 4
// matrix are cheaper than a second launch); chunk 0 stores post and comb.
__global__ static void hc_pre_kernel(float *y, float *post, float *comb, const float *X,
                                     const float *mix, const float *base, const float *scale, int n,
                                     int64_t D, int iters, float eps)
{
    __shared__ float pre_s[HC_MAX], post_s[HC_MAX], comb_s[HC_MAX * HC_MAX];
    const int64_t r = blockIdx.x;
    if (threadIdx.x == 0)
        dev_hc_weights(mix + r * (2 + n) * n, base, scale, n, iters, eps, pre_s, post_s, comb_s);
    __syncthreads();
    if (blockIdx.y == 0) {
        for (int i = threadIdx.x; i < n * n; i += blockDim.x) comb[r * n * n + i] = comb_s[i];
        for (int i = threadIdx.x; i < n; i += blockDim.x) post[r * n + i] = post_s[i];
    }
    const int64_t d0 = (int64_t)blockIdx.y * HC_COLS, d1 = d0 + HC_COLS < D ? d0 + HC_COLS : D;
    dev_collapse(y + r * D, X + r * n * D, pre_s, n, D, d0, d1);
}

// mix [N, n], X [N, n, D] -> y [N, D] = bf16(sum_j pre_j X_j), pre = sigmoid(mix * scale +
// base) + eps (dsv4_op_hc_head_weights). Block (row, column chunk).
__global__ static void hc_head_kernel(float *y, const float *X, const float *mix, const float *base,
                                      float scale, int n, int64_t D, float eps)
{
    __shared__ float pre_s[HC_MAX];
    const int64_t r = blockIdx.x;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        pre_s[j] =
            __fadd_rn(dev_sigmoid(__fadd_rn(__fmul_rn(mix[r * n + j], scale), base[j])), eps);
    __syncthreads();
    const int64_t d0 = (int64_t)blockIdx.y * HC_COLS, d1 = d0 + HC_COLS < D ? d0 + HC_COLS : D;
    dev_collapse(y + r * D, X + r * n * D, pre_s, n, D, d0, d1);
}

// X [N, n, D], f [N, D], post [N, n], comb [N, n, n] -> Xo [N, n, D] =
// bf16(post_k f + sum_j comb[j, k] X_j) (dsv4_op_hc_expand's order). Block (row, 256 columns).
__global__ static void hc_post_kernel(float *Xo, const float *X, const float *f, const float *post,
                                      const float *comb, int n, int64_t D)
{
    __shared__ float post_s[HC_MAX], comb_s[HC_MAX * HC_MAX];
    const int64_t r = blockIdx.x;
    for (int i = threadIdx.x; i < n * n; i += blockDim.x) comb_s[i] = comb[r * n * n + i];
    for (int i = threadIdx.x; i < n; i += blockDim.x) post_s[i] = post[r * n + i];
    __syncthreads();
    const int64_t d = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (d >= D) return;
    const float *Xr = X + r * n * D;
    const float fd = f[r * D + d];
    for (int k = 0; k < n; k++) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++)
            acc = __fadd_rn(acc, __fmul_rn(comb_s[j * n + k], Xr[j * D + d]));
        Xo[(r * n + k) * D + d] = dev_round_bf16(__fadd_rn(__fmul_rn(post_s[k], fd), acc));
    }
}

static dsv4_status hc_check(const char *op, int64_t N, int n, int64_t D)
{
    if (N < 0 || n < 1 || n > HC_MAX || D < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: N %lld n %d (1..%d), D %lld", op,
                         (long long)N, n, HC_MAX, (long long)D);
    if ((D + HC_COLS - 1) / HC_COLS > 65535 || (D + 255) / 256 > 65535)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: D %lld too wide", op, (long long)D);
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_hc_pre(dsv4_backend *b, float *y, float *post, float *comb,
                                           const float *X, const float *mix, const float *base,
                                           const float *scale, int64_t N, int n, int64_t D,
                                           int iters, float eps)
{
    DSV4_TRY(hc_check("hc_pre", N, n, D));
    if (N == 0) return DSV4_OK;
    const dim3 grid((unsigned)N, (unsigned)((D + HC_COLS - 1) / HC_COLS));
    hc_pre_kernel<<<grid, ROW_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(y, post, comb, X, mix, base,
                                                                       scale, n, D, iters, eps);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_hc_post(dsv4_backend *b, float *Xo, const float *X,
                                            const float *f, const float *post, const float *comb,
                                            int64_t N, int n, int64_t D)
{
    DSV4_TRY(hc_check("hc_post", N, n, D));
    if (N == 0) return DSV4_OK;
    const dim3 grid((unsigned)N, (unsigned)((D + 255) / 256));
    hc_post_kernel<<<grid, 256, 0, dsv4_cuda_stream(b->cuda)>>>(Xo, X, f, post, comb, n, D);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_hc_head(dsv4_backend *b, float *y, const float *X,
                                            const float *mix, const float *base, float scale,
                                            int64_t N, int n, int64_t D, float eps)
{
    DSV4_TRY(hc_check("hc_head", N, n, D));
    if (N == 0) return DSV4_OK;
    const dim3 grid((unsigned)N, (unsigned)((D + HC_COLS - 1) / HC_COLS));
    hc_head_kernel<<<grid, ROW_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(y, X, mix, base, scale, n,
                                                                        D, eps);
    CUDA_LAUNCHED();
    return DSV4_OK;
}
