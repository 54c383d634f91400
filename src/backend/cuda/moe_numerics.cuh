/*
 * moe_numerics.cuh - the faithful roundings of the CUDA MoE (model/quant_sim.c and ops_moe.c,
 * bit for bit), shared by bk_moe.cu (router, act_quant, combine of the SIMT path) and
 * moe_mma.cu (the tensor-core path), so that both paths round exactly alike.
 */
#ifndef DSV4_CUDA_MOE_NUMERICS_CUH
#define DSV4_CUDA_MOE_NUMERICS_CUH

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

/* quant_sim.c dsv4_sim_bf16 on one value: round to nearest even, NaN kept quiet. */
static __device__ __forceinline__ float q_bf16(float x)
{
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(u | 0x00400000u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}

/* quant_sim.c round_grid + dsv4_round_e4m3: nearest-even onto e4m3fn, saturating at 448. */
static __device__ __forceinline__ float q_e4m3(float x)
{
    if (isnan(x)) return x;
    const float a = fabsf(x);
    float q;
    if (a >= 448.0f) {
        q = 448.0f;
    } else if (a == 0.0f) {
        q = 0.0f;
    } else {
        int e2;
        (void)frexpf(a, &e2);
        int e = e2 - 1;
        if (e < -6) e = -6;
        q = ldexpf(rintf(ldexpf(a, 3 - e)), e - 3);
        if (q > 448.0f) q = 448.0f;
    }
    return copysignf(q, x);
}

/* quant_sim.c dsv4_scale_fp8: 2^ceil(log2(max(amax, 1e-4) / 448)) from the f32 bits. */
static __device__ __forceinline__ float q_scale_fp8(float amax)
{
    const float y = __fmul_rn(fmaxf(amax, 1e-4f), (float)(1.0 / 448.0));
    const uint32_t u = __float_as_uint(y);
    const int e = (int)((u >> 23) & 0xffu) - 127 + ((u & 0x7fffffu) != 0 ? 1 : 0);
    return __uint_as_float((uint32_t)(e + 127) << 23);
}

/* ops_moe.c dsv4_op_swiglu_clamped on one element; expf as exp in double rounded once (glibc's
 * expf is correctly rounded but for rare halfway cases). */
static __device__ __forceinline__ float q_swiglu(float g, float u, float limit)
{
    const float a = g > limit ? limit : g;
    const float b = u > limit ? limit : u < -limit ? -limit : u;
    const float e = (float)exp(-(double)a);
    return __fmul_rn(__fdiv_rn(a, __fadd_rn(1.0f, e)), b);
}

#endif
