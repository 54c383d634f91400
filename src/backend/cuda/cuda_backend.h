/*
 * cuda_backend.h - the C-callable face of the CUDA backend (compiled only with DSV4_HAVE_CUDA).
 *
 * All device state hangs off a dsv4_cuda_ctx (one per GPU): the device index and the stream
 * every launch goes to. Nothing is global, so one process can drive several GPUs.
 *
 * Weights are uploaded in their stored format (FP8/FP4 bytes + scales, bf16, f32): a
 * dsv4_cuda_weight is a dsv4_weight whose data and scale pointers are device memory.
 */
#ifndef DSV4_BACKEND_CUDA_BACKEND_H
#define DSV4_BACKEND_CUDA_BACKEND_H

#ifdef __cplusplus
extern "C" { /* the library's headers are C; .cu files include them through this one */
#endif

#include "dsv4.h"
#include "model/weights.h"

typedef struct dsv4_cuda_ctx dsv4_cuda_ctx;

dsv4_status dsv4_cuda_ctx_create(int device, dsv4_cuda_ctx **out);
void dsv4_cuda_ctx_destroy(dsv4_cuda_ctx *ctx);
/* Waits for all work queued on the context's streams. */
dsv4_status dsv4_cuda_ctx_sync(dsv4_cuda_ctx *ctx);
/* Launches between side_begin and side_end go to a side stream that starts after the main
 * stream's work so far; side_join makes the main stream wait for them (context.cu). */
dsv4_status dsv4_cuda_side_begin(dsv4_cuda_ctx *ctx);
dsv4_status dsv4_cuda_side_end(dsv4_cuda_ctx *ctx);
dsv4_status dsv4_cuda_side_join(dsv4_cuda_ctx *ctx);
/* side_join for a side chain that is long done when the main chain gets here: in a graph the
 * join stays a plain dependency, so the next kernel keeps its early launch from the main chain. */
dsv4_status dsv4_cuda_side_join_settled(dsv4_cuda_ctx *ctx);
/* side_mark records the main stream's current end (an event); side_begin_marked begins a side
 * chain that waits for that point only, so the main stream's launches since may run beside it. */
dsv4_status dsv4_cuda_side_mark(dsv4_cuda_ctx *ctx);
dsv4_status dsv4_cuda_side_begin_marked(dsv4_cuda_ctx *ctx);

/* Copies w's bytes (and scales) to the device; *out describes them there. Free with
 * dsv4_cuda_weight_free. */
dsv4_status dsv4_cuda_weight_upload(dsv4_cuda_ctx *ctx, const dsv4_weight *w, dsv4_weight *out);
void dsv4_cuda_weight_free(dsv4_cuda_ctx *ctx, dsv4_weight *w);

/* Rows [row0, row0 + nrows) of device weight w, dequantised to f32 into device memory
 * out[nrows][cols] (the reference decoding of weights.c, on the GPU). */
dsv4_status dsv4_cuda_dequant_rows(dsv4_cuda_ctx *ctx, const dsv4_weight *w, int64_t row0,
                                   int64_t nrows, float *out);

/* Device memory for tests and staging. */
dsv4_status dsv4_cuda_alloc(dsv4_cuda_ctx *ctx, size_t bytes, void **out);
void dsv4_cuda_free(dsv4_cuda_ctx *ctx, void *p);
dsv4_status dsv4_cuda_copy_to_host(dsv4_cuda_ctx *ctx, void *dst, const void *src, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
