/*
 * bk_memory.cu - the CUDA backend's memory ops (backend.h), weight upload in the stored format
 * (or filled with random values for benchmarks), graph capture and replay, and the events the
 * per-op timing reads.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/pdl.cuh"

#include <cuda_fp16.h>
#include <cuda_profiler_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" dsv4_status dsv4_cuda_bk_alloc(dsv4_backend *b, size_t bytes, void **out)
{
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, bytes, out));
    CUDA_TRY(cudaMemsetAsync(*out, 0, bytes, dsv4_cuda_stream(b->cuda)));
    return DSV4_OK;
}

extern "C" void dsv4_cuda_bk_free(dsv4_backend *b, void *p)
{
    if (!p) return;
    cudaStreamSynchronize(dsv4_cuda_stream(b->cuda)); /* no free under running work */
    dsv4_cuda_free(b->cuda, p);
}

extern "C" dsv4_status dsv4_cuda_bk_upload(dsv4_backend *b, void *dst, const void *src,
                                           size_t bytes)
{
    if (!bytes) return DSV4_OK;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, dsv4_cuda_stream(b->cuda)));
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_download(dsv4_backend *b, void *dst, const void *src,
                                             size_t bytes)
{
    if (!bytes) return DSV4_OK;
    cudaStream_t st = dsv4_cuda_stream(b->cuda);
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st));
    CUDA_TRY(cudaStreamSynchronize(st));
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_copy(dsv4_backend *b, void *dst, const void *src, size_t bytes)
{
    if (!bytes) return DSV4_OK;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, dsv4_cuda_stream(b->cuda)));
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_memset0(dsv4_backend *b, void *p, size_t bytes)
{
    if (!bytes) return DSV4_OK;
    CUDA_TRY(cudaMemsetAsync(p, 0, bytes, dsv4_cuda_stream(b->cuda)));
    return DSV4_OK;
}

/* p [n] = dsv4_fill_bf16_bits(seed, i) (backend.h), grid-stride. */
__global__ static void fill_bf16_kernel(uint16_t *p, size_t n, uint64_t seed)
{
    DSV4_PDL_WAIT();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = dsv4_fill_bf16_bits(seed, i);
}

extern "C" dsv4_status dsv4_cuda_bk_fill_bf16(dsv4_backend *b, uint16_t *p, size_t n, uint64_t seed)
{
    if (!n) return DSV4_OK;
    const size_t blocks = (n + 255) / 256;
    fill_bf16_kernel<<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0,
                       dsv4_cuda_stream(b->cuda)>>>(p, n, seed);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* p: the bytes of n entries of layout l, byte i = dsv4_fill_kv_byte(l, seed, i), grid-stride. */
__global__ static void fill_kv_kernel(uint8_t *p, dsv4_kv_layout l, int64_t bytes, uint64_t seed)
{
    DSV4_PDL_WAIT();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < bytes;
         i += (int64_t)gridDim.x * blockDim.x)
        p[i] = dsv4_fill_kv_byte(&l, seed, i);
}

extern "C" dsv4_status dsv4_cuda_bk_fill_kv(dsv4_backend *b, uint8_t *p, const dsv4_kv_layout *l,
                                            int64_t n, uint64_t seed)
{
    const int64_t bytes = dsv4_kv_bytes(l, n);
    if (bytes <= 0) return DSV4_OK;
    const int64_t blocks = (bytes + 255) / 256;
    fill_kv_kernel<<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0,
                     dsv4_cuda_stream(b->cuda)>>>(p, *l, bytes, seed);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_sync(dsv4_backend *b)
{
    CUDA_TRY(cudaStreamSynchronize(dsv4_cuda_stream(b->cuda)));
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_mem_info(dsv4_backend *b, size_t *free_bytes,
                                             size_t *total_bytes)
{
    (void)b;
    CUDA_TRY(cudaMemGetInfo(free_bytes, total_bytes));
    return DSV4_OK;
}

/* ---- random weights (benchmarks) -----------------------------------------------------------
 * Finite values of a plausible size for every format: FP8 codes with exponents 2^-3 .. 2^0 (no
 * NaN code), FP4 codes (all 16 are finite), scales 2^-6 (ue8m0 121, e4m3 0x08 = 2^-6... see
 * below), dense values uniform in +-2^-5. Each byte is a hash of (seed, index). */
__device__ static inline uint32_t hash32(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)(z ^ (z >> 31));
}

enum fill_kind { FILL_E4M3, FILL_BYTES, FILL_CONST8, FILL_BF16, FILL_F16, FILL_F32, FILL_CONST32 };

// p [n elements of the kind's size]
__global__ void fill_kernel(void *p, uint64_t n, int kind, uint64_t seed, uint32_t cst)
{
    DSV4_PDL_WAIT();
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t h = hash32(seed, i);
        const float u = ((h >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * 0.03125f;
        switch (kind) {
        case FILL_E4M3: /* sign, exponent field 4..7 (2^-3 .. 2^0), any mantissa */
            ((uint8_t *)p)[i] =
                (uint8_t)((h & 0x80) | ((4 + ((h >> 8) & 3)) << 3) | ((h >> 12) & 7));
            break;
        case FILL_BYTES:
            ((uint8_t *)p)[i] = (uint8_t)h;
            break;
        case FILL_CONST8:
            ((uint8_t *)p)[i] = (uint8_t)cst;
            break;
        case FILL_BF16: {
            uint32_t bits = __float_as_uint(u);
            ((uint16_t *)p)[i] = (uint16_t)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
            break;
        }
        case FILL_F16:
            ((__half *)p)[i] = __float2half(u);
            break;
        case FILL_F32:
            ((float *)p)[i] = u;
            break;
        case FILL_CONST32:
            ((uint32_t *)p)[i] = cst;
            break;
        }
    }
}

static dsv4_status fill(dsv4_backend *b, void *p, uint64_t n, int kind, uint64_t seed, uint32_t cst)
{
    if (!n) return DSV4_OK;
    const unsigned blocks = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    fill_kernel<<<blocks, 256, 0, dsv4_cuda_stream(b->cuda)>>>(p, n, kind, seed, cst);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

static dsv4_status fill_random(dsv4_backend *b, const dsv4_weight *w, uint64_t seed, dsv4_weight *o)
{
    void *d = NULL, *s = NULL;
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, w->data_bytes, &d));
    o->data = d;
    if (w->scale_bytes) {
        dsv4_status st = dsv4_cuda_alloc(b->cuda, w->scale_bytes, &s);
        if (st != DSV4_OK) return st;
        o->scale = s;
    }
    const uint64_t ns = w->scale_rows * w->scale_cols;
    switch (w->format) {
    case DSV4_FORMAT_FP8:
        DSV4_TRY(fill(b, d, w->data_bytes, FILL_E4M3, seed, 0));
        if (w->scale_dtype == DSV4_DT_F32)
            return fill(b, s, ns, FILL_CONST32, seed, 0x3c800000u); /* 2^-6 */
        return fill(b, s, ns, FILL_CONST8, seed, 121);              /* ue8m0 2^-6 */
    case DSV4_FORMAT_MXFP4:
        DSV4_TRY(fill(b, d, w->data_bytes, FILL_BYTES, seed, 0));
        return fill(b, s, ns, FILL_CONST8, seed, 121);
    case DSV4_FORMAT_NVFP4:
        DSV4_TRY(fill(b, d, w->data_bytes, FILL_BYTES, seed, 0));
        return fill(b, s, ns, FILL_CONST8, seed, 0x20); /* e4m3 2^-3; scale2 as described */
    default:
        break;
    }
    switch (w->dtype) {
    case DSV4_DT_BF16:
        return fill(b, d, w->data_bytes / 2, FILL_BF16, seed, 0);
    case DSV4_DT_F16:
        return fill(b, d, w->data_bytes / 2, FILL_F16, seed, 0);
    case DSV4_DT_F32:
        return fill(b, d, w->data_bytes / 4, FILL_F32, seed, 0);
    default:
        break;
    }
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: no random fill for this dtype", w->name);
}

extern "C" dsv4_status dsv4_cuda_bk_weight_upload(dsv4_backend *b, const dsv4_weight *w,
                                                  uint64_t random_seed, dsv4_weight *out)
{
    if (!random_seed) return dsv4_cuda_weight_upload(b->cuda, w, out);
    *out = *w;
    out->data = out->scale = NULL;
    dsv4_status st = fill_random(b, w, random_seed, out);
    if (st != DSV4_OK) dsv4_cuda_weight_free(b->cuda, out);
    return st;
}

extern "C" void dsv4_cuda_bk_weight_free(dsv4_backend *b, dsv4_weight *w)
{
    cudaStreamSynchronize(dsv4_cuda_stream(b->cuda));
    dsv4_cuda_weight_free(b->cuda, w);
}

/* ---- graphs ---------------------------------------------------------------------------------- */
extern "C" dsv4_status dsv4_cuda_bk_graph_begin(dsv4_backend *b)
{
    int n_settled = 0;
    (void)dsv4_cuda_settled_take(b->cuda, &n_settled); /* a capture that never ended */
    CUDA_TRY(cudaStreamBeginCapture(dsv4_cuda_stream(b->cuda), cudaStreamCaptureModeThreadLocal));
    return DSV4_OK;
}

/* Turns every plain kernel -> kernel edge of g into a programmatic one, triggered when every CTA
 * of the upstream kernel has passed its own wait (DSV4_PDL_WAIT ends in launch_dependents; port
 * cudaGraphKernelNodePortProgrammatic): the downstream kernel's CTAs are placed while the
 * upstream runs and wait in griddepcontrol.wait, which returns once the upstream grid has
 * completed and its memory is visible. At most one grid waits behind a running one (with the
 * launch-completion port, measured 2-15% slower, waiting grids cascaded down the chain and held
 * the SM slots). Safe only because every kernel executes DSV4_PDL_WAIT() before touching memory
 * (cuda/pdl.cuh). */
static int node_in(cudaGraphNode_t n, const cudaGraphNode_t *set, int count)
{
    for (int i = 0; i < count; i++)
        if (set[i] == n) return 1;
    return 0;
}

static cudaError_t programmatic_edges(cudaGraph_t g, const cudaGraphNode_t *settled, int n_settled)
{
    size_t n = 0;
    cudaError_t err = cudaGraphGetEdges(g, NULL, NULL, NULL, &n);
    if (err != cudaSuccess || n == 0) return err;
    cudaGraphNode_t *from = (cudaGraphNode_t *)malloc(n * sizeof *from);
    cudaGraphNode_t *to = (cudaGraphNode_t *)malloc(n * sizeof *to);
    cudaGraphEdgeData *data = (cudaGraphEdgeData *)malloc(n * sizeof *data);
    if (!from || !to || !data) err = cudaErrorMemoryAllocation;
    if (err == cudaSuccess) err = cudaGraphGetEdges(g, from, to, data, &n);
    for (size_t i = 0; err == cudaSuccess && i < n; i++) {
        cudaGraphNodeType tf, tt;
        if ((err = cudaGraphNodeGetType(from[i], &tf)) != cudaSuccess) break;
        if ((err = cudaGraphNodeGetType(to[i], &tt)) != cudaSuccess) break;
        if (tf != cudaGraphNodeTypeKernel || tt != cudaGraphNodeTypeKernel ||
            data[i].type != cudaGraphDependencyTypeDefault || data[i].from_port != 0 ||
            node_in(from[i], settled, n_settled))
            continue;
        cudaGraphEdgeData pe;
        memset(&pe, 0, sizeof pe);
        pe.type = cudaGraphDependencyTypeProgrammatic;
        pe.from_port = cudaGraphKernelNodePortProgrammatic;
        err = cudaGraphRemoveDependencies(g, &from[i], &to[i], &data[i], 1);
        if (err == cudaSuccess) err = cudaGraphAddDependencies(g, &from[i], &to[i], &pe, 1);
    }
    free(from);
    free(to);
    free(data);
    return err;
}

/* A diagnostic: with DSV4_GRAPH_LIST set in the environment, each captured graph's kernel
 * nodes are printed to stderr in the order the graph lists them (the capture order in
 * practice), one line each: index, grid, block, kernel name. What `dsv4 bench` counts as
 * kernels per layer, by name. */
static void list_kernel(cudaGraphNode_t node, int index)
{
    cudaKernelNodeParams p;
    const char *name = NULL;
    if (cudaGraphKernelNodeGetParams(node, &p) != cudaSuccess) return;
    if (cudaFuncGetName(&name, p.func) != cudaSuccess || !name) name = "?";
    fprintf(stderr, "graph kernel %3d: grid %u x %u x %u, block %u: %s\n", index, p.gridDim.x,
            p.gridDim.y, p.gridDim.z, p.blockDim.x, name);
}

extern "C" dsv4_status dsv4_cuda_bk_graph_end(dsv4_backend *b, void **graph)
{
    *graph = NULL;
    cudaGraph_t g = NULL;
    const dsv4_status joined = dsv4_cuda_side_join(b->cuda); /* a side chain left open */
    CUDA_TRY(cudaStreamEndCapture(dsv4_cuda_stream(b->cuda), &g));
    if (joined != DSV4_OK) {
        cudaGraphDestroy(g);
        return joined;
    }
    int n_settled = 0;
    const cudaGraphNode_t *settled = dsv4_cuda_settled_take(b->cuda, &n_settled);
    cudaError_t err = b->pdl ? programmatic_edges(g, settled, n_settled) : cudaSuccess;
    size_t n_nodes = 0;
    if (err == cudaSuccess) err = cudaGraphGetNodes(g, NULL, &n_nodes);
    cudaGraphNode_t *nodes = (cudaGraphNode_t *)malloc((n_nodes ? n_nodes : 1) * sizeof *nodes);
    if (err == cudaSuccess && !nodes) err = cudaErrorMemoryAllocation;
    if (err == cudaSuccess) err = cudaGraphGetNodes(g, nodes, &n_nodes);
    b->graph_kernels = 0;
    const int list = getenv("DSV4_GRAPH_LIST") != NULL;
    for (size_t i = 0; err == cudaSuccess && i < n_nodes; i++) {
        cudaGraphNodeType t;
        err = cudaGraphNodeGetType(nodes[i], &t);
        const int kernel = err == cudaSuccess && t == cudaGraphNodeTypeKernel;
        b->graph_kernels += kernel;
        if (kernel && list) list_kernel(nodes[i], b->graph_kernels);
    }
    free(nodes);
    if (err != cudaSuccess) {
        cudaGraphDestroy(g);
        CUDA_TRY(err);
    }
    cudaGraphExec_t exec = NULL;
    /* the kernels keep the priority of the stream they were captured from (the side chain's is
     * the higher: context.cu) */
    err = cudaGraphInstantiate(&exec, g, cudaGraphInstantiateFlagUseNodePriority);
    cudaGraphDestroy(g);
    CUDA_TRY(err);
    *graph = exec;
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_graph_launch(dsv4_backend *b, void *graph)
{
    CUDA_TRY(cudaGraphLaunch((cudaGraphExec_t)graph, dsv4_cuda_stream(b->cuda)));
    return DSV4_OK;
}

extern "C" void dsv4_cuda_bk_graph_free(dsv4_backend *b, void *graph)
{
    (void)b;
    if (graph) cudaGraphExecDestroy((cudaGraphExec_t)graph);
}

/* ---- events for dsv4_bk_prof (backend/prof.c) --------------------------------------------- */
extern "C" dsv4_status dsv4_cuda_event_record(dsv4_backend *b, void **ev)
{
    cudaEvent_t e = (cudaEvent_t)*ev;
    if (!e) CUDA_TRY(cudaEventCreate(&e));
    *ev = e;
    CUDA_TRY(cudaEventRecord(e, dsv4_cuda_stream(b->cuda)));
    return DSV4_OK;
}

extern "C" float dsv4_cuda_event_ms(void *from, void *to)
{
    float ms = 0.0f;
    cudaEventSynchronize((cudaEvent_t)to);
    if (cudaEventElapsedTime(&ms, (cudaEvent_t)from, (cudaEvent_t)to) != cudaSuccess) ms = 0.0f;
    return ms;
}

extern "C" void dsv4_cuda_event_destroy(void *ev)
{
    if (ev) cudaEventDestroy((cudaEvent_t)ev);
}

/* Opens / closes the range an external profiler collects when started with collection off
 * (`ncu --profile-from-start off`): the op timer's steps. A no-op without a profiler. */
extern "C" void dsv4_cuda_profiler_range(int on)
{
    if (on)
        cudaProfilerStart();
    else
        cudaProfilerStop();
}
