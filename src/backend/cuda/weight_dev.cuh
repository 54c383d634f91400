/*
 * weight_dev.cuh - the device twin of model/weights.c's scale_at: the block scale of a stored
 * weight, decoded as the CPU reference does (ue8m0, e4m3 or f32), for the kernels that decode
 * weights element by element (dequant.cu, bk_rows.cu's embedding); one copy of the rule.
 */
#ifndef DSV4_CUDA_WEIGHT_DEV_CUH
#define DSV4_CUDA_WEIGHT_DEV_CUH

#include "core/float_formats.h"
#include "io/dtype.h"

#include <stdint.h>
#include <string.h>

/* The scale of block (srow, scol) of a's weight; a: the kernel's arguments, with the weight's
 * scale_dtype, scale bytes and scale_cols. NaN for a scale dtype without a decoding. */
template <class A> __device__ static float dev_weight_scale(const A &a, int64_t srow, int64_t scol)
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

#endif
