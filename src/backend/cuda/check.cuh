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
/* F8W's workspace of the stream launches go to now (dsv4_lin_f8w_ws_bytes, one per stream, so
 * the side stream's projections do not share it; linear_f8w.cu). */
void *dsv4_cuda_f8w_ws(dsv4_cuda_ctx *ctx);
size_t dsv4_lin_f8w_ws_bytes(void);
/* The GEMV norm tail's ticket counter of the stream launches go to now (one int, 0 between
 * launches; bk_linear.cu gv_norm_tail). */
int *dsv4_cuda_lin_ticket(dsv4_cuda_ctx *ctx);
/* The sparse attention's cache of cluster capacities (bk_attn.cu sa_capacity), per context. */
enum { DSV4_ATTN_CAP_SLOTS = 128 };
int *dsv4_cuda_attn_cap(dsv4_cuda_ctx *ctx);
/* context.cu: the side chains' nodes joined as settled in the graph being captured, handed to
 * graph_end (and forgotten there); at most DSV4_CUDA_SETTLED_MAX a graph are kept. */
enum { DSV4_CUDA_SETTLED_MAX = 256 };
const cudaGraphNode_t *dsv4_cuda_settled_take(dsv4_cuda_ctx *ctx, int *n);
/* The kernel trace's buffer while one is on (trace.cu; trace builds only). */
typedef struct dsv4_cuda_trace {
    void *buf; /* the record count, then the records */
    unsigned cap;
} dsv4_cuda_trace;
dsv4_cuda_trace *dsv4_cuda_trace_state(dsv4_cuda_ctx *ctx);

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
