/*
 * quant_hook.cu - the test hook of quant_hook.cuh: one device rounding applied elementwise.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/quant_dev.cuh"
#include "backend/cuda/quant_hook.cuh"

/* y [n] = dev_round_e2m1(x [n]), grid-stride. */
__global__ static void round_e2m1_kernel(const float *x, float *y, size_t n)
{
    DSV4_PDL_WAIT();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = dev_round_e2m1(x[i]);
}

extern "C" dsv4_status dsv4_cuda_round_e2m1_check(dsv4_backend *b, const float *x, float *y,
                                                  size_t n)
{
    if (!b || !b->cuda)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "round_e2m1_check: not a CUDA backend");
    if (!n) return DSV4_OK;
    const size_t blocks = (n + 255) / 256;
    round_e2m1_kernel<<<(unsigned)(blocks < 8192 ? blocks : 8192), 256, 0,
                        dsv4_cuda_stream(b->cuda)>>>(x, y, n);
    CUDA_LAUNCHED();
    return DSV4_OK;
}
