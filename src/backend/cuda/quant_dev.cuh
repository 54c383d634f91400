/*
 * quant_dev.cuh - the device twins of model/quant_sim.c's faithful-mode roundings: f32 -> bf16
 * nearest-even, e4m3fn (saturating) and e2m1 rounding, and the power-of-two FP8 / FP4 block
 * scales. Every CUDA kernel that must round bit-identically to the CPU reference uses these, so
 * that there is one device copy of each rule to keep in step with quant_sim.c. All are exact bit
 * manipulations or single IEEE roundings (no contraction: products are __fmul_rn), so inlining
 * them anywhere cannot change a bit.
 */
#ifndef DSV4_CUDA_QUANT_DEV_CUH
#define DSV4_CUDA_QUANT_DEV_CUH

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cuda_runtime.h>

/* f32 -> bf16 -> f32, nearest-even; NaN stays (quiet) NaN with its payload: dsv4_round_bf16. */
static __device__ __forceinline__ float dev_round_bf16(float x)
{
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(u | 0x00400000u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}

/* dsv4_round_e4m3: e4m3fn, nearest-even, saturating at +-448 (satfinite, infinities too); NaN
 * stays NaN (its payload kept). The hardware conversion (sm_89+) does exactly that rounding, on
 * subnormal inputs and results too, so this is two conversions instead of round_grid's frexpf /
 * ldexpf / rintf chain (~80 instructions a value: 1.3 us of the one-row q_norm + act_quant kernel
 * was its quant loop; dsv4 bench --trace, H100). test_gpu_rows checks every bf16 value against
 * the CPU's dsv4_round_e4m3 through act_quant, at several block scales. */
static __device__ __forceinline__ float dev_round_e4m3(float x)
{
    if (isnan(x)) return x;
    unsigned short b;
    unsigned int h2;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(b) : "f"(0.0f), "f"(x));
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(b));
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)(h2 & 0xffffu)));
    return f;
}

/* dsv4_round_e2m1: e2m1, saturating at +-6; NaN stays NaN. The grid {0, .5, 1, 1.5, 2, 3, 4, 6}
 * has step 1/2 below 2, 1 below 4 and 2 up to 6, so quant_sim.c's round_grid (frexpf / ldexpf /
 * rintf, ~80 instructions a value here) is one exact scaling by a power of two around one rintf
 * (half to even). tests/test_gpu_rows.c checks it against dsv4_round_e2m1 on every one of the
 * 2^32 f32 bit patterns. (Smaller code for the indexer's FP4; no change in the step's time.) */
static __device__ __forceinline__ float dev_round_e2m1(float x)
{
    if (isnan(x)) return x;
    const float a = fabsf(x);
    float q;
    if (a < 2.0f)
        q = __fmul_rn(rintf(__fmul_rn(a, 2.0f)), 0.5f);
    else if (a < 4.0f)
        q = rintf(a);
    else
        q = a >= 6.0f ? 6.0f : __fmul_rn(rintf(__fmul_rn(a, 0.5f)), 2.0f);
    return copysignf(q, x);
}

/* 2^ceil(log2(y)) read off the f32 bits (quant_sim.c pow2_ceil_bits). */
static __device__ __forceinline__ float dev_pow2_ceil_bits(float y)
{
    const uint32_t u = __float_as_uint(y);
    const int e = (int)((u >> 23) & 0xffu) - 127 + ((u & 0x7fffffu) != 0 ? 1 : 0);
    return __uint_as_float((uint32_t)(e + 127) << 23);
}

/* dsv4_scale_fp8: 2^ceil(log2(max(amax, 1e-4) * (1/448))). */
static __device__ __forceinline__ float dev_scale_fp8(float amax)
{
    return dev_pow2_ceil_bits(__fmul_rn(fmaxf(amax, 1e-4f), (float)(1.0 / 448.0)));
}

/* The act_quant scale of one block in [len], by one warp (every lane gets it): dev_scale_fp8 of
 * the amax of the bf16-rounded values (fmaxf skips a NaN; a max is order-free, so the CPU's). */
static __device__ __forceinline__ float dev_warp_scale_fp8(const float *in, int len)
{
    const int lane = threadIdx.x & 31;
    float amax = 0.0f;
    for (int i = lane; i < len; i += 32) amax = fmaxf(amax, fabsf(dev_round_bf16(in[i])));
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    return dev_scale_fp8(amax);
}

/* dsv4_scale_fp4: 2^ceil(log2(max(amax, 6 FLT_MIN) * (1/6))). */
static __device__ __forceinline__ float dev_scale_fp4(float amax)
{
    return dev_pow2_ceil_bits(__fmul_rn(fmaxf(amax, 6.0f * FLT_MIN), (float)(1.0 / 6.0)));
}

#endif
