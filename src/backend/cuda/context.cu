/*
 * context.cu - the per-GPU context (device + streams), device memory, weight upload.
 *
 * Ops are launched on the context's current stream: the main one, or, between
 * dsv4_cuda_side_begin and dsv4_cuda_side_end, a side stream that starts after everything issued
 * on the main stream before the begin (an event); dsv4_cuda_side_join makes the main stream wait
 * for the side's work. Under graph capture this forks and joins the captured graph, so two
 * independent op chains (the indexer beside the query path) overlap on the GPU. The side stream
 * has the higher priority (its kernels' priority is kept in a graph: bk_memory.cu).
 */
#include "backend/cuda/check.cuh"
#include "backend/cuda/cuda_backend.h"

#include <stdlib.h>
#include <string.h>

struct dsv4_cuda_ctx {
    int device;
    cudaStream_t stream; /* main */
    cudaStream_t side;   /* between branch and merge */
    cudaEvent_t fork, join, mark; /* mark: dsv4_cuda_side_mark */
    int on_side;        /* launches go to side */
    int join_pending;   /* side_end recorded join; side_join not yet waited */
    void *f8w_ws[2];    /* F8W's x codes and W16's bf16 x, one per stream (main, side):
                           linear_f8w.cu, linear_w16.cu (both run in stream order) */
    int *lin_ticket[2]; /* bk_linear.cu's GEMV norm tail: a ticket counter per stream, 0
                           between launches (each launch's last CTA resets it) */
    int attn_cap[DSV4_ATTN_CAP_SLOTS]; /* bk_attn.cu sa_capacity: clusters the device holds */
    dsv4_cuda_trace trace;             /* trace.cu */
    /* the side chains' last nodes joined by dsv4_cuda_side_join_settled in the graph being
       captured: their edges to the main chain stay plain (bk_memory.cu programmatic_edges) */
    cudaGraphNode_t settled[DSV4_CUDA_SETTLED_MAX];
    int n_settled;
};

size_t dsv4_lin_w16_ws_bytes(void); /* linear_w16.cu */

extern "C" dsv4_status dsv4_cuda_ctx_create(int device, dsv4_cuda_ctx **out)
{
    *out = NULL;
    dsv4_cuda_ctx *ctx = (dsv4_cuda_ctx *)calloc(1, sizeof *ctx);
    if (!ctx) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating a CUDA context");
    ctx->device = device;
    cudaError_t err = cudaSetDevice(device);
    if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking);
    /* the side chain at the device's highest priority: its kernels are short and latency-bound
     * (a layer's indexer, the seam's weights half), and once placed behind a full-GPU wave of
     * the main chain they would wait for all of it (dsv4 bench, H100: Flash batch 2 -0.8 to
     * -1.6%, other batches within the spread; docs/PERF.md session 9) */
    int least = 0, greatest = 0;
    if (err == cudaSuccess) err = cudaDeviceGetStreamPriorityRange(&least, &greatest);
    if (err == cudaSuccess)
        err = cudaStreamCreateWithPriority(&ctx->side, cudaStreamNonBlocking, greatest);
    if (err == cudaSuccess) err = cudaEventCreateWithFlags(&ctx->fork, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventCreateWithFlags(&ctx->join, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventCreateWithFlags(&ctx->mark, cudaEventDisableTiming);
    /* allocated here, not on first use, which may come inside a graph capture */
    for (int i = 0; i < 2 && err == cudaSuccess; i++)
        err = cudaMalloc(&ctx->f8w_ws[i], dsv4_lin_f8w_ws_bytes() > dsv4_lin_w16_ws_bytes()
                                              ? dsv4_lin_f8w_ws_bytes()
                                              : dsv4_lin_w16_ws_bytes());
    for (int i = 0; i < 2 && err == cudaSuccess; i++) {
        err = cudaMalloc(&ctx->lin_ticket[i], sizeof(int));
        if (err == cudaSuccess) err = cudaMemset(ctx->lin_ticket[i], 0, sizeof(int));
    }
    if (err != cudaSuccess) {
        dsv4_cuda_ctx_destroy(ctx);
        return dsv4_fail(DSV4_ERR_DEVICE, "creating a context on CUDA device %d: %s", device,
                         cudaGetErrorString(err));
    }
    *out = ctx;
    return DSV4_OK;
}

extern "C" void dsv4_cuda_ctx_destroy(dsv4_cuda_ctx *ctx)
{
    if (!ctx) return;
    cudaSetDevice(ctx->device);
    for (int i = 0; i < 2; i++) {
        if (ctx->f8w_ws[i]) cudaFree(ctx->f8w_ws[i]);
        if (ctx->lin_ticket[i]) cudaFree(ctx->lin_ticket[i]);
    }
    if (ctx->trace.buf) cudaFree(ctx->trace.buf); /* a trace begun and never ended */
    if (ctx->join) cudaEventDestroy(ctx->join);
    if (ctx->mark) cudaEventDestroy(ctx->mark);
    if (ctx->fork) cudaEventDestroy(ctx->fork);
    if (ctx->side) cudaStreamDestroy(ctx->side);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    free(ctx);
}

extern "C" dsv4_status dsv4_cuda_ctx_sync(dsv4_cuda_ctx *ctx)
{
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    CUDA_TRY(cudaStreamSynchronize(ctx->side));
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_side_begin(dsv4_cuda_ctx *ctx)
{
    if (ctx->on_side) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "CUDA side stream: begun twice");
    CUDA_TRY(cudaEventRecord(ctx->fork, ctx->stream));
    CUDA_TRY(cudaStreamWaitEvent(ctx->side, ctx->fork, 0));
    ctx->on_side = 1;
    return DSV4_OK;
}

/* A point of the main stream a later side chain starts from (dsv4_cuda_side_begin_marked). */
extern "C" dsv4_status dsv4_cuda_side_mark(dsv4_cuda_ctx *ctx)
{
    CUDA_TRY(cudaEventRecord(ctx->mark, ctx->stream));
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_side_begin_marked(dsv4_cuda_ctx *ctx)
{
    if (ctx->on_side) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "CUDA side stream: begun twice");
    CUDA_TRY(cudaStreamWaitEvent(ctx->side, ctx->mark, 0));
    ctx->on_side = 1;
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_side_end(dsv4_cuda_ctx *ctx)
{
    if (!ctx->on_side) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "CUDA side stream: not begun");
    ctx->on_side = 0;
    CUDA_TRY(cudaEventRecord(ctx->join, ctx->side));
    ctx->join_pending = 1;
    return DSV4_OK;
}

/* Also closes a side chain left open (an op failed inside it), so a capture can end. */
extern "C" dsv4_status dsv4_cuda_side_join(dsv4_cuda_ctx *ctx)
{
    if (ctx->on_side) DSV4_TRY(dsv4_cuda_side_end(ctx));
    if (!ctx->join_pending) return DSV4_OK;
    ctx->join_pending = 0;
    CUDA_TRY(cudaStreamWaitEvent(ctx->stream, ctx->join, 0));
    return DSV4_OK;
}

/* A join whose side work is long done when the main chain gets here (the mHC seam's weights
 * half, joined a sublayer later): as dsv4_cuda_side_join, and under capture the side chain's
 * last nodes are noted, so that their edges to the next main kernel stay plain dependencies and
 * only its edge from the main chain becomes programmatic. A kernel with two programmatic
 * upstream edges was placed ~3 us after its main predecessor's trigger, against ~1.5 us with
 * one (dsv4 bench --trace, H100, Flash batch 1: the attention's seam after the MoE). */
extern "C" dsv4_status dsv4_cuda_side_join_settled(dsv4_cuda_ctx *ctx)
{
    if (ctx->on_side) DSV4_TRY(dsv4_cuda_side_end(ctx));
    if (!ctx->join_pending) return DSV4_OK;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    const cudaGraphNode_t *deps = NULL;
    size_t nd = 0;
    CUDA_TRY(cudaStreamGetCaptureInfo(ctx->side, &cs, NULL, NULL, &deps, NULL, &nd));
    for (size_t i = 0; cs == cudaStreamCaptureStatusActive && i < nd; i++)
        if (ctx->n_settled < DSV4_CUDA_SETTLED_MAX) ctx->settled[ctx->n_settled++] = deps[i];
    return dsv4_cuda_side_join(ctx);
}

/* The nodes dsv4_cuda_side_join_settled noted since the last call (a graph's capture). */
const cudaGraphNode_t *dsv4_cuda_settled_take(dsv4_cuda_ctx *ctx, int *n)
{
    *n = ctx->n_settled;
    ctx->n_settled = 0;
    return ctx->settled;
}

extern "C" dsv4_status dsv4_cuda_alloc(dsv4_cuda_ctx *ctx, size_t bytes, void **out)
{
    *out = NULL;
    CUDA_TRY(cudaSetDevice(ctx->device));
    cudaError_t err = cudaMalloc(out, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        *out = NULL;
        return dsv4_fail(
            err == cudaErrorMemoryAllocation ? DSV4_ERR_OUT_OF_MEMORY : DSV4_ERR_DEVICE,
            "cudaMalloc(%zu bytes) on device %d: %s", bytes, ctx->device, cudaGetErrorString(err));
    }
    return DSV4_OK;
}

extern "C" void dsv4_cuda_free(dsv4_cuda_ctx *ctx, void *p)
{
    (void)ctx;
    if (p) cudaFree(p);
}

extern "C" dsv4_status dsv4_cuda_copy_to_host(dsv4_cuda_ctx *ctx, void *dst, const void *src,
                                              size_t bytes)
{
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    return dsv4_cuda_ctx_sync(ctx);
}

static dsv4_status upload(dsv4_cuda_ctx *ctx, const void *src, size_t bytes, const void **dst)
{
    void *p;
    DSV4_TRY(dsv4_cuda_alloc(ctx, bytes, &p));
    cudaError_t err = cudaMemcpyAsync(p, src, bytes, cudaMemcpyHostToDevice, ctx->stream);
    if (err != cudaSuccess) {
        cudaFree(p);
        return dsv4_fail(DSV4_ERR_DEVICE, "uploading %zu bytes: %s", bytes,
                         cudaGetErrorString(err));
    }
    *dst = p;
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_weight_upload(dsv4_cuda_ctx *ctx, const dsv4_weight *w,
                                               dsv4_weight *out)
{
    *out = *w;
    out->data = NULL;
    out->scale = NULL;
    DSV4_TRY(upload(ctx, w->data, w->data_bytes, &out->data));
    if (w->scale) {
        dsv4_status st = upload(ctx, w->scale, w->scale_bytes, &out->scale);
        if (st != DSV4_OK) {
            dsv4_cuda_weight_free(ctx, out);
            return st;
        }
    }
    /* Host pages may be released by the caller once this returns. */
    return dsv4_cuda_ctx_sync(ctx);
}

extern "C" void dsv4_cuda_weight_free(dsv4_cuda_ctx *ctx, dsv4_weight *w)
{
    dsv4_cuda_free(ctx, (void *)w->data);
    dsv4_cuda_free(ctx, (void *)w->scale);
    w->data = w->scale = NULL;
}

/* Lets the op files reach the stream without exposing the struct (check.cuh). */
cudaStream_t dsv4_cuda_stream(dsv4_cuda_ctx *ctx)
{
    return ctx->on_side ? ctx->side : ctx->stream;
}

void *dsv4_cuda_f8w_ws(dsv4_cuda_ctx *ctx)
{
    return ctx->f8w_ws[ctx->on_side ? 1 : 0];
}

int *dsv4_cuda_lin_ticket(dsv4_cuda_ctx *ctx)
{
    return ctx->lin_ticket[ctx->on_side ? 1 : 0];
}

int *dsv4_cuda_attn_cap(dsv4_cuda_ctx *ctx)
{
    return ctx->attn_cap;
}

dsv4_cuda_trace *dsv4_cuda_trace_state(dsv4_cuda_ctx *ctx)
{
    return &ctx->trace;
}
