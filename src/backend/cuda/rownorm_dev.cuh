/*
 * rownorm_dev.cuh - RMSNorm of a row and act_quant of the result, by one CTA, as device code that
 * more than one kernel runs: the row ops of bk_rows.cu (rmsnorm, rmsnorm_quant and the fused
 * q / kv chains) and the projections' GEMV, whose last CTA normalises the row it has just
 * produced (bk_linear.cu, dsv4_bk_linear_entry's norm). One copy of the summation order, so that
 * every kernel that normalises a row gets the same bits. A decode step has one row (N = 1), so a
 * row kernel's time is its latency: the staging below issues all of a thread's loads at once (a
 * loop of STAGE_UNROLL loads) instead of one dependent round trip per loop iteration.
 */
#ifndef DSV4_CUDA_ROWNORM_DEV_CUH
#define DSV4_CUDA_ROWNORM_DEV_CUH

#include "backend/cuda/quant_dev.cuh"

/* The sum of v over the block (blockDim a multiple of 32, sh [blockDim / 32]); every thread gets
 * the same value. sh is not reset: a second call on it needs a barrier after the first's reads
 * (gv_norm_tail's row loop). */
static __device__ double dev_block_sum(double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += sh[i];
    return t;
}

enum {
    ROW_THREADS = 256,         /* the sum threads of RMSNorm's fixed reduction tree */
    RMS_WIDE_THREADS = 1024,   /* CTA of a row wider than RMS_WIDE (more loads in flight) */
    RMS_WIDE = 2048,           /* elements */
    RMS_SMEM_MAX = 160 * 1024, /* bytes of shared memory a row kernel may stage */
    STAGE_UNROLL = 16,
};

/* dst [n] = src [n] and, when src2, dst2 [n] = src2 [n], by the whole block: a thread's loads
 * of both (STAGE_UNROLL of each a round) go out before it stores any. */
static __device__ void dev_stage(float *dst, const float *src, float *dst2, const float *src2,
                                 int n)
{
    const int nt = (int)blockDim.x;
    for (int i0 = (int)threadIdx.x; i0 < n; i0 += STAGE_UNROLL * nt) {
        float v[STAGE_UNROLL], v2[STAGE_UNROLL];
#pragma unroll
        for (int k = 0; k < STAGE_UNROLL; k++) {
            const int i = i0 + k * nt;
            v[k] = i < n ? src[i] : 0.0f;
            v2[k] = src2 && i < n ? src2[i] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < STAGE_UNROLL; k++) {
            const int i = i0 + k * nt;
            if (i < n) dst[i] = v[k];
            if (src2 && i < n) dst2[i] = v2[k];
        }
    }
}

/* RMSNorm's 1 / sqrt(mean(x^2) + eps) of x [width] (shared or global memory) in ONE summation
 * order whatever the CTA shape, so that every kernel normalising a row gets the same bits: sum
 * thread t < ROW_THREADS adds x[t + ROW_THREADS j]^2 in double in j order, then dev_block_sum
 * (warp xor-butterfly, warp sums in warp order); the threads beyond ROW_THREADS of a larger
 * CTA add 0.0 (exact). The squares of f32 values are exact in double. sh: dev_block_sum's. */
static __device__ float dev_rms_scale(const float *x, int width, float eps, double *sh)
{
    double ss = 0.0;
    if ((int)threadIdx.x < ROW_THREADS)
        for (int i = (int)threadIdx.x; i < width; i += ROW_THREADS)
            ss += (double)x[i] * (double)x[i];
    ss = dev_block_sum(ss, sh);
    const float var = (float)(ss / (double)width);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
}

/* dsv4_sim_act_quant of one block in [len] -> out [len] (may alias: each lane rereads what it
 * overwrites, after the warp's max is complete) by one warp: bf16, then e4m3 with the block's
 * power-of-two scale. The amax is a max (order-free), every other step a single rounding the
 * CPU does the same way: bit-identical. */
static __device__ void dev_warp_quant(float *out, const float *in, int len)
{
    const int lane = threadIdx.x & 31;
    const float s = dev_warp_scale_fp8(in, len);
    for (int i = lane; i < len; i += 32) {
        const float v = dev_round_bf16(in[i]);
        out[i] = __fmul_rn(dev_round_e4m3(__fdiv_rn(v, s)), s);
    }
}

/* y [width] = x rs (* w when w), bf16-rounded when round_bf16, x rs: dev_rms_scale; when yq also
 * yq [width] = act_quant(y, qblock) (a warp a block), with y staged in s [width] of shared memory
 * (s may be src, the staged x: each thread overwrites only the elements it has read). By the
 * whole CTA; y may be x when x is staged. sh: dev_block_sum's. */
static __device__ void dev_rmsnorm_row(float *y, float *yq, const float *src, const float *w,
                                       float *s, int width, float eps, int round_bf16, int qblock,
                                       double *sh)
{
    const float rs = dev_rms_scale(src, width, eps, sh);
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = __fmul_rn(src[i], rs);
        if (w) v = __fmul_rn(w[i], v);
        if (round_bf16) v = dev_round_bf16(v);
        y[i] = v;
        if (yq) s[i] = v;
    }
    if (!yq) return;
    __syncthreads();
    const int nb = (width + qblock - 1) / qblock, warp = threadIdx.x >> 5;
    for (int qb = warp; qb < nb; qb += blockDim.x >> 5) {
        const int b0 = qb * qblock;
        dev_warp_quant(yq + b0, s + b0, width - b0 < qblock ? width - b0 : qblock);
    }
}

#endif
