/*
 * check.cuh - the one checking macro every CUDA runtime call goes through. On failure it
 * records the expression, file, line and CUDA's error string as the dsv4 error text and returns
 * DSV4_ERR_DEVICE from the enclosing function.
 */
#ifndef DSV4_CUDA_CHECK_CUH
#define DSV4_CUDA_CHECK_CUH

#include <cuda_runtime.h>

extern "C" {
#include "core/error.h"
}

/* The stream every launch of a context goes to (context.cu). */
typedef struct dsv4_cuda_ctx dsv4_cuda_ctx;
cudaStream_t dsv4_cuda_stream(dsv4_cuda_ctx *ctx);
/* Whether launches go to the side stream now (per-stream workspaces: linear_f8w.cu). */
int dsv4_cuda_on_side(dsv4_cuda_ctx *ctx);

/* Launch check: the last launch's configuration error, as CUDA_TRY. */
#define CUDA_LAUNCHED() CUDA_TRY(cudaGetLastError())

#define CUDA_TRY(expr)                                                                             \
    do {                                                                                           \
        cudaError_t cuda_try_err_ = (expr);                                                        \
        if (cuda_try_err_ != cudaSuccess)                                                          \
            return dsv4_fail(DSV4_ERR_DEVICE, "%s failed at %s:%d: %s", #expr, __FILE__, __LINE__, \
                             cudaGetErrorString(cuda_try_err_));                                   \
    } while (0)

#endif
