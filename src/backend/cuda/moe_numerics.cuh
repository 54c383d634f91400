/*
 * moe_numerics.cuh - the faithful roundings of the CUDA MoE (model/quant_sim.c and ops_moe.c,
 * bit for bit), shared by bk_moe.cu (router, act_quant, combine of the SIMT path) and
 * moe_mma.cu (the tensor-core path), so that both paths round exactly alike.
 */
#ifndef DSV4_CUDA_MOE_NUMERICS_CUH
#define DSV4_CUDA_MOE_NUMERICS_CUH

#include "backend/cuda/quant_dev.cuh"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

/* The quant_sim.c roundings under the names the MoE kernels use; the one device copy of each
 * is in quant_dev.cuh. */
static __device__ __forceinline__ float q_bf16(float x)
{
    return dev_round_bf16(x);
}

static __device__ __forceinline__ float q_e4m3(float x)
{
    return dev_round_e4m3(x);
}

static __device__ __forceinline__ float q_scale_fp8(float amax)
{
    return dev_scale_fp8(amax);
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
