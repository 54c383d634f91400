/*
 * bk_rows.cu - CUDA implementation of the per-row ops of backend.h: embedding, RMSNorm, the
 * per-head query norm, act_quant, scaling, RoPE, the fused q / kv chains of the attention
 * (rmsnorm_quant, head_norm_rope, kv_norm_rope_store) and the mHC sites.
 *
 * Each op computes the CPU reference's math (bk_rows.c: ops.h, quant_sim.h, weights.c) in the
 * same f32 operations: products and sums go through __fmul_rn / __fadd_rn so that nvcc cannot
 * contract them into FMAs the CPU does not do, and divisions / square roots are the IEEE ones.
 * What may differ from the CPU:
 * - RMSNorm's sum of squares is a double sum in another order (then rounded to f32 as there),
 *   the same fixed order in every kernel (dev_rms_scale), so the fused ops match the separate
 *   ones bit for bit;
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
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/quant_dev.cuh"
#include "backend/cuda/rownorm_dev.cuh"
#include "backend/cuda/weight_dev.cuh"
#include "backend/cuda/kv_dev.cuh"
#include "core/float_formats.h"

/* ---- embedding ------------------------------------------------------------------------------ */
struct embed_args {
    int format, scale_dtype;
    const uint8_t *data, *scale;
    int64_t rows, cols, scale_cols;
    float scale2;
};

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
                         dev_weight_scale(a, row / 128, j / 128));
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const uint8_t b = a.data[row * (a.cols / 2) + j / 2];
        const int64_t group = a.format == DSV4_FORMAT_MXFP4 ? 32 : 16;
        const float v = dsv4_e2m1_to_f32((j & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0xf));
        return __fmul_rn(__fmul_rn(v, dev_weight_scale(a, row, j / group)), a.scale2);
    }
    default:
        return __int_as_float(0x7fc00000);
    }
}

// ids [N] -> X [N, n_copies, D] = bf16(embed row ids[r]) per copy; one block per row.
// An id outside the table gives NaN rows (the CPU backend refuses it up front; here the ids are
// device data and the step does not stop). A thread decodes EMBED_UNROLL columns before it stores
// any, so that their loads are in flight together: the row is read in one memory latency per
// EMBED_UNROLL * EMBED_THREADS columns instead of one per 256 (the first kernel of a decode step,
// its whole time on the step's path; the trace of a Flash step at batch 1 had it at 9.5 us).
enum { EMBED_THREADS = 1024, EMBED_UNROLL = 8 };
__global__ static void __launch_bounds__(EMBED_THREADS)
    embed_kernel(embed_args a, const int32_t *ids, float *X, int n_copies)
{
    DSV4_PDL_WAIT();
    const int64_t r = blockIdx.x, D = a.cols;
    const int32_t id = ids[r];
    const bool ok = id >= 0 && id < a.rows;
    float *x = X + r * n_copies * D;
    for (int64_t j0 = threadIdx.x; j0 < D; j0 += EMBED_UNROLL * EMBED_THREADS) {
        float v[EMBED_UNROLL];
#pragma unroll
        for (int k = 0; k < EMBED_UNROLL; k++) {
            const int64_t j = j0 + (int64_t)k * EMBED_THREADS;
            v[k] = __int_as_float(0x7fc00000);
            if (ok && j < D) v[k] = dev_round_bf16(embed_decode(a, id, j));
        }
#pragma unroll
        for (int k = 0; k < EMBED_UNROLL; k++) {
            const int64_t j = j0 + (int64_t)k * EMBED_THREADS;
            if (j < D)
                for (int c = 0; c < n_copies; c++) x[c * D + j] = v[k];
        }
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
    embed_kernel<<<(unsigned)rows->n, EMBED_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(a, rows->ids,
                                                                                     X, n_copies);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- RMSNorm (and act_quant of its output): rownorm_dev.cuh -------------------------------- */

// x [N, width] (stride ldx) -> y [N, width] (stride ldy) = x * rs (* w), bf16 when round_bf16;
// when yq != NULL also yq [N, width] (stride ldq) = act_quant(y, qblock) (a warp a block).
// One CTA per row. staged: the row (and w when w_staged) is first copied to shared memory
// (dynamic: width, then width more for w), which also holds y for the act_quant; unstaged
// (rows over RMS_SMEM_MAX; yq NULL) x is read from global memory twice. y may be x: a staged
// row is read whole before the block sum's barrier; unstaged, ROW_THREADS threads read each
// element just before the same thread overwrites it.
__global__ static void rmsnorm_kernel(float *y, int64_t ldy, float *yq, int64_t ldq, const float *x,
                                      int64_t ldx, const float *w, int width, float eps,
                                      int round_bf16, int qblock, int staged, int w_staged)
{
    DSV4_PDL_WAIT();
    extern __shared__ float rms_smem[];
    __shared__ double sh[RMS_WIDE_THREADS / 32];
    const float *xr = x + (int64_t)blockIdx.x * ldx, *src = xr, *wsrc = w;
    float *yr = y + (int64_t)blockIdx.x * ldy;
    if (staged) {
        dev_stage(rms_smem, xr, rms_smem + width, w_staged ? w : NULL, width);
        __syncthreads();
        src = rms_smem;
        if (w_staged) wsrc = rms_smem + width;
    }
    dev_rmsnorm_row(yr, yq ? yq + (int64_t)blockIdx.x * ldq : NULL, src, w ? wsrc : NULL, rms_smem,
                    width, eps, round_bf16, qblock, sh);
}

/* The launch of rmsnorm_kernel for [N, width] rows; yq: see the kernel (needs a staged row). */
static dsv4_status rmsnorm_launch(dsv4_backend *b, float *y, int64_t ldy, float *yq, int64_t ldq,
                                  const float *x, int64_t ldx, const float *w, int64_t N,
                                  int64_t width, float eps, int round_bf16, int qblock)
{
    const int staged = width * 4 <= RMS_SMEM_MAX;
    const int w_staged = staged && w && width * 8 <= RMS_SMEM_MAX;
    const size_t smem = staged ? (size_t)width * (w_staged ? 8 : 4) : 0;
    const int threads = staged && width > RMS_WIDE ? RMS_WIDE_THREADS : ROW_THREADS;
    if (smem > 48 * 1024)
        CUDA_TRY(cudaFuncSetAttribute(rmsnorm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem));
    rmsnorm_kernel<<<(unsigned)N, threads, smem, dsv4_cuda_stream(b->cuda)>>>(
        y, ldy, yq, ldq, x, ldx, w, (int)width, eps, round_bf16, qblock, staged, w_staged);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_rmsnorm(dsv4_backend *b, float *y, int64_t ldy, const float *x,
                                            int64_t ldx, const float *w, int64_t N, int64_t width,
                                            float eps, int round_bf16)
{
    if (N < 0 || width < 1 || width > INT32_MAX / 8 || ldx < width || ldy < width)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rmsnorm: N %lld width %lld ldx %lld ldy %lld",
                         (long long)N, (long long)width, (long long)ldx, (long long)ldy);
    if (N == 0) return DSV4_OK;
    return rmsnorm_launch(b, y, ldy, NULL, 0, x, ldx, w, N, width, eps, round_bf16, 1);
}

/* ---- per-head query norm (faithful), and the query RoPE after it ------------------------------
 */
enum {
    QN_THREADS = 128,   /* the unstaged kernel (vectors wider than HN_SLOTS * 32) */
    HN_WARPS = 4,       /* heads a CTA of the register kernel */
    HN_SLOTS = 16,      /* elements a lane: c <= 512 */
    ROPE_MAX_HALF = 256 /* ops.h DSV4_ROPE_MAX / 2 */
};

/* cs / sn [i] = cos / sin (negated sin when inverse) of f * (float)p (f = freqs[i]), as ops.h
 * dsv4_op_rope's angle in f32; the device's double cos / sin rounded to f32. */
__device__ static void dev_rope_entry(float *cs, float *sn, int i, float f, int32_t p, int inverse)
{
    const double ang = (double)__fmul_rn(f, (float)p);
    const float s = (float)sin(ang);
    cs[i] = (float)cos(ang);
    sn[i] = inverse ? -s : s;
}

// q [n_vec, c] in place; one block per vector (c > HN_SLOTS * 32). The bf16 squares have 8
// significant bits, so their double sum is exact in any order (unless the squares span over
// 2^45, far beyond any activation): the result is the CPU's bit for bit.
__global__ static void head_norm_kernel(float *q, int c, float eps)
{
    DSV4_PDL_WAIT();
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

// q [rows, H, c] in place (c <= HN_SLOTS * 32, even), CTA (row, HN_WARPS heads), a warp per
// head with its c values in registers (lane l: elements l + 32 k). The faithful norm as
// head_norm_kernel (the warp's butterfly sum is exact, as there), then when r > 0 the RoPE of
// the last r dims at pos[row] rounded to bf16: dsv4_bk_head_norm_bf16 then dsv4_bk_rope
// (round_bf16; the other dims are bf16 already) bit for bit. As c - r is even, pair (2i, 2i+1)
// of the rotated dims sits in lanes (l, l ^ 1) of one register slot. cos / sin: once per CTA.
// The grid is 1-D: block x = row * groups + group, each group the CTA's warps' heads.
__device__ static void head_norm_rope_block(int64_t bx, float *q, int H, int c, float eps,
                                            int groups, const int32_t *pos, int r,
                                            const float *freqs)
{
    __shared__ float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    const int lane = threadIdx.x & 31, half = r / 2;
    const int64_t row = bx / groups;
    const int head = (int)(bx - row * groups) * (int)(blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool live = head < H;
    float *x = q + (row * H + (live ? head : 0)) * (int64_t)c;
    float v[HN_SLOTS];
#pragma unroll
    for (int k = 0; k < HN_SLOTS; k++) {
        const int i = lane + 32 * k;
        v[k] = live && i < c ? x[i] : 0.0f;
    }
    for (int i = threadIdx.x; i < half; i += blockDim.x) /* while the loads are out */
        dev_rope_entry(cs, sn, i, freqs[i], pos[row], 0);
    double sum = 0.0;
#pragma unroll
    for (int k = 0; k < HN_SLOTS; k++) sum += (double)dev_round_bf16(__fmul_rn(v[k], v[k]));
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float m = dev_round_bf16((float)(sum / (double)c));
    const float rr = dev_round_bf16(__fdiv_rn(1.0f, __fsqrt_rn(dev_round_bf16(__fadd_rn(m, eps)))));
#pragma unroll
    for (int k = 0; k < HN_SLOTS; k++) v[k] = dev_round_bf16(__fmul_rn(v[k], rr));
    if (r > 0) {
        __syncthreads(); /* the cos / sin table */
        const int r0 = c - r;
#pragma unroll
        for (int k = 0; k < HN_SLOTS; k++) {
            const float other = __shfl_xor_sync(0xffffffffu, v[k], 1);
            const int i = lane + 32 * k;
            if (i < r0 || i >= c) continue;
            const int j = (i - r0) >> 1;
            const float cj = cs[j], sj = sn[j];
            v[k] = (lane & 1)
                       ? dev_round_bf16(__fadd_rn(__fmul_rn(v[k], cj), __fmul_rn(other, sj)))
                       : dev_round_bf16(__fadd_rn(__fmul_rn(v[k], cj), __fmul_rn(-other, sj)));
        }
    }
    if (!live) return;
#pragma unroll
    for (int k = 0; k < HN_SLOTS; k++)
        if (lane + 32 * k < c) x[lane + 32 * k] = v[k];
}

__global__ static void head_norm_rope_kernel(float *q, int H, int c, float eps, int groups,
                                             const int32_t *pos, int r, const float *freqs)
{
    DSV4_PDL_WAIT();
    head_norm_rope_block(blockIdx.x, q, H, c, eps, groups, pos, r, freqs);
}

/* head_norm_rope_kernel over rows x H vectors of width c (c <= HN_SLOTS * 32). */
static dsv4_status head_norm_rope_launch(dsv4_backend *b, float *q, int64_t rows, int H, int c,
                                         float eps, const int32_t *pos, int r, const float *freqs)
{
    const int groups = (H + HN_WARPS - 1) / HN_WARPS;
    if (rows * groups > INT32_MAX)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "head norm: %lld x %d heads", (long long)rows,
                         H);
    head_norm_rope_kernel<<<(unsigned)(rows * groups), 32 * HN_WARPS, 0,
                            dsv4_cuda_stream(b->cuda)>>>(q, H, c, eps, groups, pos, r, freqs);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_head_norm_bf16(dsv4_backend *b, float *q, int64_t n_vec, int c,
                                                   float eps)
{
    if (n_vec < 0 || c < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "head_norm_bf16: n_vec %lld c %d",
                         (long long)n_vec, c);
    if (n_vec == 0) return DSV4_OK;
    if (c <= HN_SLOTS * 32 && n_vec <= INT32_MAX) /* one row of n_vec heads */
        return head_norm_rope_launch(b, q, 1, (int)n_vec, c, eps, NULL, 0, NULL);
    head_norm_kernel<<<(unsigned)n_vec, QN_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(q, c, eps);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- act_quant ------------------------------------------------------------------------------- */
enum { AQ_WARPS = 8 };

// x [N, width] (stride ldx) -> y [N, width] (stride ldy) = dsv4_sim_act_quant per row: bf16,
// then e4m3 in blocks of `block` with power-of-two scales. CTA (row, AQ_WARPS blocks), a warp
// per block; a block of <= 128 is held in registers (one round of loads), a larger one read
// twice (dev_warp_quant). Bit-identical (see dev_warp_quant). y may be x (each lane rereads,
// or holds, the elements it overwrites; the warp's max is complete before any write).
__global__ static void act_quant_kernel(float *y, int64_t ldy, const float *x, int64_t ldx,
                                        int64_t width, int block)
{
    DSV4_PDL_WAIT();
    const int lane = threadIdx.x & 31;
    const int64_t qb = (int64_t)blockIdx.y * AQ_WARPS + (threadIdx.x >> 5);
    const int64_t b0 = qb * block;
    if (b0 >= width) return;
    const float *xr = x + (int64_t)blockIdx.x * ldx + b0;
    float *yr = y + (int64_t)blockIdx.x * ldy + b0;
    const int len = width - b0 < block ? (int)(width - b0) : block;
    if (block > 128) {
        dev_warp_quant(yr, xr, len);
        return;
    }
    float v[4], amax = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int i = lane + 32 * k;
        v[k] = i < len ? dev_round_bf16(xr[i]) : 0.0f;
        amax = fmaxf(amax, fabsf(v[k])); /* fmaxf skips a NaN */
    }
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float s = dev_scale_fp8(amax);
#pragma unroll
    for (int k = 0; k < 4; k++)
        if (lane + 32 * k < len)
            yr[lane + 32 * k] = __fmul_rn(dev_round_e4m3(__fdiv_rn(v[k], s)), s);
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
    const int64_t groups = ((width + block - 1) / block + AQ_WARPS - 1) / AQ_WARPS;
    if (groups > 65535)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "act_quant: width %lld in blocks of %d",
                         (long long)width, block);
    act_quant_kernel<<<dim3((unsigned)N, (unsigned)groups), 32 * AQ_WARPS, 0,
                       dsv4_cuda_stream(b->cuda)>>>(y, ldy, x, ldx, width, block);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- scale ----------------------------------------------------------------------------------- */
// x [n] = x * s (bf16 when round_bf16); grid-stride.
__global__ static void scale_kernel(float *x, int64_t n, float s, int round_bf16)
{
    DSV4_PDL_WAIT();
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
enum { ROPE_THREADS = 256, ROPE_UPT = 4 }; /* units a thread: its loads go out together */

// x row r [n_vec, dim] (row stride ldx): the last r dims of each vector rotated at pos[r]
// (inverse: by -angle), pairs (2i, 2i+1), angle = freqs[i] * (float)pos in f32 as ops.h
// dsv4_op_rope; then, when round_bf16, the whole vectors rounded to bf16 (as the session forward
// rounds the whole q / kv / o). A row is a list of units, per vector first its dim - r other
// elements (only when round_bf16: bf16-rounded) then its r / 2 pairs (rotated). CTA (row, chunk
// of ROPE_THREADS * ROPE_UPT units): a thread loads its units, the row's cos / sin table is made
// meanwhile (shared memory, once per CTA), then each unit is written back.
__global__ static void rope_kernel(float *x, int64_t ldx, const int32_t *pos, int n_vec, int dim,
                                   int r, const float *freqs, int inverse, int round_bf16)
{
    DSV4_PDL_WAIT();
    __shared__ float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    const int half = r / 2, rest = round_bf16 ? dim - r : 0, upv = rest + half;
    const int total = n_vec * upv;
    float *xr = x + (int64_t)blockIdx.x * ldx;
    float a[ROPE_UPT], bb[ROPE_UPT];
    int off[ROPE_UPT], pair[ROPE_UPT]; /* pair: -1 an other element, -2 no unit */
#pragma unroll
    for (int m = 0; m < ROPE_UPT; m++) {
        const int u = ((int)blockIdx.y * ROPE_UPT + m) * ROPE_THREADS + (int)threadIdx.x;
        pair[m] = -2;
        off[m] = 0;
        a[m] = bb[m] = 0.0f;
        if (u >= total) continue;
        const int v = u / upv, k = u - v * upv;
        if (k < rest) {
            off[m] = v * dim + k;
            pair[m] = -1;
            a[m] = xr[off[m]];
        } else {
            pair[m] = k - rest;
            off[m] = v * dim + (dim - r) + 2 * pair[m];
            a[m] = xr[off[m]];
            bb[m] = xr[off[m] + 1];
        }
    }
    if ((int)threadIdx.x < half) /* while the loads are out (half <= ROPE_THREADS) */
        dev_rope_entry(cs, sn, threadIdx.x, freqs[threadIdx.x], pos[blockIdx.x], inverse);
    __syncthreads(); /* the cos / sin table */
#pragma unroll
    for (int m = 0; m < ROPE_UPT; m++) {
        if (pair[m] == -1) xr[off[m]] = dev_round_bf16(a[m]);
        if (pair[m] < 0) continue;
        const float c = cs[pair[m]], s = sn[pair[m]];
        float o0 = __fadd_rn(__fmul_rn(a[m], c), __fmul_rn(-bb[m], s));
        float o1 = __fadd_rn(__fmul_rn(bb[m], c), __fmul_rn(a[m], s));
        if (round_bf16) {
            o0 = dev_round_bf16(o0);
            o1 = dev_round_bf16(o1);
        }
        xr[off[m]] = o0;
        xr[off[m] + 1] = o1;
    }
}

static dsv4_status rope_check(int n_vec, int dim, int r, int64_t ldx)
{
    if (r < 2 || (r & 1) || r > dim || r / 2 > ROPE_MAX_HALF || n_vec < 1 ||
        ldx < (int64_t)n_vec * dim || (int64_t)n_vec * dim > INT32_MAX)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rope: r %d dim %d n_vec %d ldx %lld", r, dim,
                         n_vec, (long long)ldx);
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_rope(dsv4_backend *b, float *x, int64_t ldx,
                                         const dsv4_bk_rows *rows, int n_vec, int dim, int r,
                                         const float *freqs, int inverse, int round_bf16)
{
    DSV4_TRY(rope_check(n_vec, dim, r, ldx));
    if (rows->n <= 0) return DSV4_OK;
    const int64_t units = (int64_t)n_vec * ((round_bf16 ? dim - r : 0) + r / 2);
    const int64_t chunks = (units + ROPE_THREADS * ROPE_UPT - 1) / (ROPE_THREADS * ROPE_UPT);
    if (chunks > 65535)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rope: %d x %d values a row", n_vec, dim);
    rope_kernel<<<dim3((unsigned)rows->n, (unsigned)chunks), ROPE_THREADS, 0,
                  dsv4_cuda_stream(b->cuda)>>>(x, ldx, rows->pos, n_vec, dim, r, freqs, inverse,
                                               round_bf16);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- the q and kv chains of the attention, fused ----------------------------------------------
 * Each op is the composition of the ops above that backend.h names, in one launch, with the
 * same operations in the same order (RMSNorm's sum in dev_rms_scale's fixed order): bit for bit
 * what the separate CUDA ops give. */
extern "C" dsv4_status dsv4_cuda_bk_rmsnorm_quant(dsv4_backend *b, float *y, float *yq,
                                                  const float *x, const float *w, int64_t N,
                                                  int64_t width, float eps, int block)
{
    if (N < 0 || width < 1 || width > INT32_MAX / 8 || block < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rmsnorm_quant: N %lld width %lld block %d",
                         (long long)N, (long long)width, block);
    if (N == 0) return DSV4_OK;
    if (width * 4 > RMS_SMEM_MAX) { /* unstaged rows: the two ops */
        DSV4_TRY(dsv4_cuda_bk_rmsnorm(b, y, width, x, width, w, N, width, eps, 1));
        return dsv4_cuda_bk_act_quant(b, yq, width, y, width, N, width, block);
    }
    return rmsnorm_launch(b, y, width, yq, width, x, width, w, N, width, eps, 1, block);
}

extern "C" dsv4_status dsv4_cuda_bk_head_norm_rope(dsv4_backend *b, float *q,
                                                   const dsv4_bk_rows *rows, int H, int hd, int r,
                                                   const float *freqs, float eps)
{
    if (H < 1) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "head_norm_rope: H %d", H);
    DSV4_TRY(rope_check(H, hd, r, (int64_t)H * hd));
    if (rows->n <= 0) return DSV4_OK;
    if (hd > HN_SLOTS * 32 || (hd & 1)) { /* the two ops */
        DSV4_TRY(dsv4_cuda_bk_head_norm_bf16(b, q, (int64_t)rows->n * H, hd, eps));
        return dsv4_cuda_bk_rope(b, q, (int64_t)H * hd, rows, H, hd, r, freqs, 0, 1);
    }
    return head_norm_rope_launch(b, q, rows->n, H, hd, eps, rows->pos, r, freqs);
}

// kv [N, hd] in place -> entry slot R + pos % R of win (kv_layout.h), per row: RMSNorm (w) ->
// bf16 -> RoPE of the last r dims at pos -> bf16 -> act_quant of dims [0, hd - r) in blocks of
// qblock (64, the cache's), each block stored as it is quantised (dev_kv_quant_store). One CTA of
// ROW_THREADS per row (row = bx); the row (and w) staged in shared memory (dynamic, 2 hd floats)
// between the steps, the cos / sin table made while the row loads.
__device__ static void kv_norm_rope_store_block(int64_t bx, uint8_t *win, int R, float *kv,
                                                const float *w, const int32_t *slot,
                                                const int32_t *pos, int hd, int r,
                                                const float *freqs, float eps, int qblock)
{
    extern __shared__ float kv_smem[];
    __shared__ float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    __shared__ double sh[ROW_THREADS / 32];
    const int half = r / 2, r0 = hd - r;
    float *x = kv + bx * hd, *sx = kv_smem, *sw = kv_smem + hd;
    const int32_t p = pos[bx]; /* the table's inputs go out with the row's loads */
    const float f = (int)threadIdx.x < half ? freqs[threadIdx.x] : 0.0f;
    dev_stage(sx, x, sw, w, hd);
    if ((int)threadIdx.x < half) dev_rope_entry(cs, sn, threadIdx.x, f, p, 0); /* half <= 256 */
    __syncthreads();
    const float rs = dev_rms_scale(sx, hd, eps, sh);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float v = __fmul_rn(sx[i], rs);
        if (w) v = __fmul_rn(sw[i], v);
        sx[i] = dev_round_bf16(v); /* this thread's own element, read above */
    }
    __syncthreads();
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float *e = sx + r0 + 2 * i;
        const float a = e[0], bv = e[1], c = cs[i], s = sn[i];
        e[0] = dev_round_bf16(__fadd_rn(__fmul_rn(a, c), __fmul_rn(-bv, s)));
        e[1] = dev_round_bf16(__fadd_rn(__fmul_rn(bv, c), __fmul_rn(a, s)));
    }
    /* the quantised blocks [0, r0) and the rotated pairs [r0, hd) are disjoint; the blocks go
     * to the cache as they are quantised (qblock: the cache's 64, checked by the caller) */
    dev_kv_quant_store(dsv4_kv_layout_of(hd, r), win, (int64_t)slot[bx] * R + p % R, sx);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) x[i] = sx[i];
}

__global__ static void kv_norm_rope_store_kernel(uint8_t *win, int R, float *kv, const float *w,
                                                 const int32_t *slot, const int32_t *pos, int hd,
                                                 int r, const float *freqs, float eps, int qblock)
{
    DSV4_PDL_WAIT();
    kv_norm_rope_store_block(blockIdx.x, win, R, kv, w, slot, pos, hd, r, freqs, eps, qblock);
}

// head_norm_rope_kernel and kv_norm_rope_store_kernel in one launch of ROW_THREADS a CTA: CTAs
// [0, nq) run the query heads (ROW_THREADS / 32 heads a CTA, groups a row), the next N CTAs one
// kv row each. Each CTA does exactly what it does in its own kernel, so the results are the same
// bit for bit; the two chains, independent, overlap instead of running one after the other.
__global__ static void q_kv_norm_rope_kernel(float *q, int H, int groups, int64_t nq, uint8_t *win,
                                             int R, float *kv, const float *w, const int32_t *slot,
                                             const int32_t *pos, int hd, int r, const float *freqs,
                                             float eps, int qblock)
{
    DSV4_PDL_WAIT();
    if ((int64_t)blockIdx.x < nq)
        head_norm_rope_block(blockIdx.x, q, H, hd, eps, groups, pos, r, freqs);
    else
        kv_norm_rope_store_block((int64_t)blockIdx.x - nq, win, R, kv, w, slot, pos, hd, r, freqs,
                                 eps, qblock);
}

extern "C" dsv4_status dsv4_cuda_bk_kv_norm_rope_store(dsv4_backend *b, uint8_t *win, int R,
                                                       float *kv, const float *w,
                                                       const dsv4_bk_rows *rows, int hd, int r,
                                                       const float *freqs, float eps, int qblock)
{
    if (R < 1 || hd <= r || qblock != DSV4_KV_QBLOCK)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "kv_norm_rope_store: R %d hd %d r %d block %d (the cache's: %d)", R, hd, r,
                         qblock, DSV4_KV_QBLOCK);
    DSV4_TRY(rope_check(1, hd, r, hd));
    if (rows->n <= 0) return DSV4_OK;
    const size_t smem = (size_t)hd * 8;
    if (smem > RMS_SMEM_MAX) { /* the four ops */
        const int64_t N = rows->n;
        DSV4_TRY(dsv4_cuda_bk_rmsnorm(b, kv, hd, kv, hd, w, N, hd, eps, 1));
        DSV4_TRY(dsv4_cuda_bk_rope(b, kv, hd, rows, 1, hd, r, freqs, 0, 1));
        DSV4_TRY(dsv4_cuda_bk_act_quant(b, kv, hd, kv, hd, N, hd - r, qblock));
        return dsv4_cuda_bk_kv_store(b, win, R, hd, r, kv, rows);
    }
    if (smem > 48 * 1024)
        CUDA_TRY(cudaFuncSetAttribute(kv_norm_rope_store_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    kv_norm_rope_store_kernel<<<(unsigned)rows->n, ROW_THREADS, smem, dsv4_cuda_stream(b->cuda)>>>(
        win, R, kv, w, rows->slot, rows->pos, hd, r, freqs, eps, qblock);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_q_kv_norm_rope(dsv4_backend *b, float *q, int H, uint8_t *win,
                                                   int R, float *kv, const float *w,
                                                   const dsv4_bk_rows *rows, int hd, int r,
                                                   const float *freqs, float eps, int qblock)
{
    const size_t smem = (size_t)hd * 8;
    const int groups = (H + ROW_THREADS / 32 - 1) / (ROW_THREADS / 32);
    const int64_t N = rows->n, nq = N * groups;
    if (H < 1 || hd > HN_SLOTS * 32 || (hd & 1) || smem > 48 * 1024 || nq + N > INT32_MAX) {
        DSV4_TRY(dsv4_cuda_bk_head_norm_rope(b, q, rows, H, hd, r, freqs, eps)); /* two launches */
        return dsv4_cuda_bk_kv_norm_rope_store(b, win, R, kv, w, rows, hd, r, freqs, eps, qblock);
    }
    if (R < 1 || hd <= r || qblock != DSV4_KV_QBLOCK)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "q_kv_norm_rope: R %d hd %d r %d block %d (the cache's: %d)", R, hd, r,
                         qblock, DSV4_KV_QBLOCK);
    DSV4_TRY(rope_check(H, hd, r, (int64_t)H * hd));
    if (N <= 0) return DSV4_OK;
    q_kv_norm_rope_kernel<<<(unsigned)(nq + N), ROW_THREADS, smem, dsv4_cuda_stream(b->cuda)>>>(
        q, H, groups, nq, win, R, kv, w, rows->slot, rows->pos, hd, r, freqs, eps, qblock);
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
    DSV4_PDL_WAIT();
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
    DSV4_PDL_WAIT();
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
    DSV4_PDL_WAIT();
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
