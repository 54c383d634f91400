/*
 * bench_ceilings.cu - the hardware ceilings of bench_ceilings.h, measured on the context's device
 * and stream: a 1 GiB device-to-device copy, a read-only streaming kernel, cuBLASLt BF16 and FP8
 * GEMMs at M = N = K = 8192 (cuBLASLt loaded with dlopen, see the header) and register-only
 * mma.sync peaks. Every figure is the best of BENCH_REPS timed runs (CUDA events) after a warm-up.
 * At the end: one decode projection timed as the engine's op and as cuBLASLt FP8 (a small search
 * over the heuristic's algorithms and the scaling layouts the library takes on the device).
 */
#include "backend/cuda/bench_ceilings.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/pdl.cuh"

#include <cublasLt.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    BENCH_REPS = 5,
    GEMM_N = 8192,
    MMA_ITERS = 512, /* per warp and chain: ~0.1 s per run on an H100 */
    MMA_CHAINS = 8   /* independent accumulators per warp, enough to fill the MMA pipe */
};
static const size_t COPY_BYTES = (size_t)1 << 30;
static const size_t LT_WS_BYTES = (size_t)32 << 20;

/* ---- kernels ------------------------------------------------------------------------------- */

__device__ static inline uint32_t mix32(uint32_t seed, uint64_t i)
{
    uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)(z ^ (z >> 31));
}

// p [n] 16-bit elements: bf16 values uniform in (-1, 1) (is_fp8 = 0), or two e4m3 codes each
// with the NaN codes (S.1111.111) replaced by their neighbour (is_fp8 = 1). GEMM inputs: random
// bits, since all-zero operands draw less power and would flatter the clock.
__global__ void ceil_fill_kernel(uint16_t *p, size_t n, int is_fp8, uint32_t seed)
{
    DSV4_PDL_WAIT();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = mix32(seed, i);
        if (is_fp8) {
            uint32_t lo = h & 0xff, hi = (h >> 8) & 0xff;
            if ((lo & 0x7f) == 0x7f) lo ^= 1;
            if ((hi & 0x7f) == 0x7f) hi ^= 1;
            p[i] = (uint16_t)(lo | hi << 8);
        } else {
            /* sign, exponent 2^-8 .. 2^-1 (fields 119..126), random mantissa */
            p[i] = (uint16_t)((h & 0x8000) | ((119 + ((h >> 7) & 7)) << 7) | (h & 0x7f));
        }
    }
}

// src [n] 16-byte words -> nothing: every word is loaded (streaming, no L1 allocation) and XORed;
// sink[block] is written only if the XOR equals a magic value, so the loads stay and no bytes are
// written in practice. Four loads in flight per thread.
__global__ void ceil_read_kernel(const uint4 *__restrict__ src, size_t n, uint32_t *sink)
{
    DSV4_PDL_WAIT();
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    uint32_t acc = 0;
    for (; i + 3 * stride < n; i += 4 * stride) {
        const uint4 a = __ldcs(src + i), b = __ldcs(src + i + stride);
        const uint4 c = __ldcs(src + i + 2 * stride), d = __ldcs(src + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
        acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        const uint4 a = __ldcs(src + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;
}

// Registers only: each warp runs MMA_CHAINS independent accumulators through `iters` rounds of
// one mma.sync: m16n8k16 bf16 in, f32 accumulate (4096 flops per warp and instruction), or FP8:
// m16n8k32 e4m3 x e4m3 -> f32 (8192 flops). sink is written only if the sum equals a magic value
// (never), which keeps the MMAs alive. Operand values ~2^-10 (bf16) or ~2^-3 (e4m3).
// One mma.sync of chain c (ceil_mma_body's d, a, b).
#define CEIL_MMA(SHAPE_TYPES)                                                                      \
    asm("mma.sync.aligned." SHAPE_TYPES " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n" \
        : "+f"(d[c][0]), "+f"(d[c][1]), "+f"(d[c][2]), "+f"(d[c][3])                               \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
template <bool FP8> __device__ __forceinline__ void ceil_mma_body(int iters, float *sink)
{
    const uint32_t lanes = FP8 ? 7 : 0x7f, code = FP8 ? 0x20u : 0x3a80u;
    const uint32_t rep = FP8 ? 0x01010101u : 0x10001u; /* the code in every element of a word */
    const uint32_t t = threadIdx.x & lanes;
    uint32_t a[4], b[2];
    for (int i = 0; i < 4; i++) a[i] = (code | ((t + i) & lanes)) * rep;
    b[0] = (code | t) * rep;
    b[1] = (code | (t ^ 5)) * rep;
    float d[MMA_CHAINS][4];
    for (int c = 0; c < MMA_CHAINS; c++) d[c][0] = d[c][1] = d[c][2] = d[c][3] = 0.0f;
    for (int it = 0; it < iters; it++) {
#pragma unroll
        for (int c = 0; c < MMA_CHAINS; c++)
            if (FP8)
                CEIL_MMA("m16n8k32.row.col.f32.e4m3.e4m3.f32");
            else
                CEIL_MMA("m16n8k16.row.col.f32.bf16.bf16.f32");
    }
    float s = 0.0f;
    for (int c = 0; c < MMA_CHAINS; c++) s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
    if (s == 1234.5f) sink[blockIdx.x] = s;
}

__global__ void ceil_mma_bf16_kernel(int iters, float *sink)
{
    DSV4_PDL_WAIT();
    ceil_mma_body<false>(iters, sink);
}

__global__ void ceil_mma_fp8_kernel(int iters, float *sink)
{
    DSV4_PDL_WAIT();
    ceil_mma_body<true>(iters, sink);
}

// p [n] = v (the GEMM comparison's scales).
__global__ void ceil_fill_f32_kernel(float *p, size_t n, float v)
{
    DSV4_PDL_WAIT();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = v;
}

/* ---- timing -------------------------------------------------------------------------------- */

/* The entry points of cuBLASLt used here (signatures of cublasLt.h, stable across 12 and 13). */
typedef struct lt_api {
    void *lib;
    size_t (*version)(void);
    cublasStatus_t (*create)(cublasLtHandle_t *);
    cublasStatus_t (*destroy)(cublasLtHandle_t);
    cublasStatus_t (*desc_create)(cublasLtMatmulDesc_t *, cublasComputeType_t, cudaDataType_t);
    cublasStatus_t (*desc_destroy)(cublasLtMatmulDesc_t);
    cublasStatus_t (*desc_set)(cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t, const void *,
                               size_t);
    cublasStatus_t (*layout_create)(cublasLtMatrixLayout_t *, cudaDataType, uint64_t, uint64_t,
                                    int64_t);
    cublasStatus_t (*layout_destroy)(cublasLtMatrixLayout_t);
    cublasStatus_t (*layout_set)(cublasLtMatrixLayout_t, cublasLtMatrixLayoutAttribute_t,
                                 const void *, size_t);
    cublasStatus_t (*pref_create)(cublasLtMatmulPreference_t *);
    cublasStatus_t (*pref_destroy)(cublasLtMatmulPreference_t);
    cublasStatus_t (*pref_set)(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                               const void *, size_t);
    cublasStatus_t (*heuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,
                                cublasLtMatmulHeuristicResult_t *, int *);
    cublasStatus_t (*matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void *, const void *,
                             cublasLtMatrixLayout_t, const void *, cublasLtMatrixLayout_t,
                             const void *, const void *, cublasLtMatrixLayout_t, void *,
                             cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t *, void *, size_t,
                             cudaStream_t);
} lt_api;

/* What one timed run enqueues. */
typedef struct ceil_job {
    int kind; /* JOB_* */
    cudaStream_t st;
    void *dst;
    const void *src;
    size_t bytes;
    int blocks, threads, iters;
    void *sink;
    /* cuBLASLt */
    const lt_api *lt;
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
    const void *A, *B;
    void *ws;
} ceil_job;

enum { JOB_COPY, JOB_READ, JOB_MMA_BF16, JOB_MMA_FP8, JOB_GEMM };

static dsv4_status enqueue(const ceil_job *j)
{
    switch (j->kind) {
    case JOB_COPY:
        CUDA_TRY(cudaMemcpyAsync(j->dst, j->src, j->bytes, cudaMemcpyDeviceToDevice, j->st));
        return DSV4_OK;
    case JOB_READ:
        ceil_read_kernel<<<j->blocks, j->threads, 0, j->st>>>((const uint4 *)j->src, j->bytes / 16,
                                                              (uint32_t *)j->sink);
        break;
    case JOB_MMA_BF16:
        ceil_mma_bf16_kernel<<<j->blocks, j->threads, 0, j->st>>>(j->iters, (float *)j->sink);
        break;
    case JOB_MMA_FP8:
        ceil_mma_fp8_kernel<<<j->blocks, j->threads, 0, j->st>>>(j->iters, (float *)j->sink);
        break;
    case JOB_GEMM: {
        const float alpha = 1.0f, beta = 0.0f;
        cublasStatus_t s =
            j->lt->matmul(j->h, j->desc, &alpha, j->A, j->la, j->B, j->lb, &beta, j->dst, j->ld,
                          j->dst, j->ld, &j->algo, j->ws, LT_WS_BYTES, j->st);
        if (s != CUBLAS_STATUS_SUCCESS)
            return dsv4_fail(DSV4_ERR_DEVICE, "cublasLtMatmul: status %d", (int)s);
        return DSV4_OK;
    }
    }
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* Best time of BENCH_REPS runs of j, after one warm-up run. */
static dsv4_status time_best(const ceil_job *j, cudaEvent_t e0, cudaEvent_t e1, double *best_s)
{
    float best = 0.0f;
    for (int r = 0; r <= BENCH_REPS; r++) {
        CUDA_TRY(cudaEventRecord(e0, j->st));
        DSV4_TRY(enqueue(j));
        CUDA_TRY(cudaEventRecord(e1, j->st));
        CUDA_TRY(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CUDA_TRY(cudaEventElapsedTime(&ms, e0, e1));
        if (r > 0 && (best == 0.0f || ms < best)) best = ms;
    }
    *best_s = best * 1e-3;
    return DSV4_OK;
}

/* ---- cuBLASLt ------------------------------------------------------------------------------ */

#define LT_LOAD(field, sym)                                                                        \
    do {                                                                                           \
        lt->field = (__typeof__(lt->field))dlsym(lt->lib, sym);                                    \
        if (!lt->field) {                                                                          \
            snprintf(note, note_n, "%s has no %s", path, sym);                                     \
            dlclose(lt->lib);                                                                      \
            lt->lib = NULL;                                                                        \
            return 0;                                                                              \
        }                                                                                          \
    } while (0)

/* Loads cuBLASLt; 0 (and the reason in note) when none can be. */
static int lt_load(lt_api *lt, char *note, size_t note_n)
{
    const char *env = getenv("DSV4_CUBLASLT");
    const char *names[4] = {env && *env ? env : "libcublasLt.so.13", "libcublasLt.so.13",
                            "libcublasLt.so.12", "libcublasLt.so"};
    const char *path = NULL;
    for (int i = 0; i < 4 && !lt->lib; i++) {
        lt->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        path = names[i];
    }
    if (!lt->lib) {
        const char *e = dlerror();
        snprintf(note, note_n, "cuBLASLt not loaded (%s); set DSV4_CUBLASLT or LD_LIBRARY_PATH",
                 e ? e : "no library found");
        return 0;
    }
    LT_LOAD(version, "cublasLtGetVersion");
    LT_LOAD(create, "cublasLtCreate");
    LT_LOAD(destroy, "cublasLtDestroy");
    LT_LOAD(desc_create, "cublasLtMatmulDescCreate");
    LT_LOAD(desc_destroy, "cublasLtMatmulDescDestroy");
    LT_LOAD(desc_set, "cublasLtMatmulDescSetAttribute");
    LT_LOAD(layout_create, "cublasLtMatrixLayoutCreate");
    LT_LOAD(layout_destroy, "cublasLtMatrixLayoutDestroy");
    LT_LOAD(layout_set, "cublasLtMatrixLayoutSetAttribute");
    LT_LOAD(pref_create, "cublasLtMatmulPreferenceCreate");
    LT_LOAD(pref_destroy, "cublasLtMatmulPreferenceDestroy");
    LT_LOAD(pref_set, "cublasLtMatmulPreferenceSetAttribute");
    LT_LOAD(heuristic, "cublasLtMatmulAlgoGetHeuristic");
    LT_LOAD(matmul, "cublasLtMatmul");
    snprintf(note, note_n, "cuBLASLt %zu (%s)", lt->version(), path);
    return 1;
}

/* D [n, n] bf16 = A^T B with A, B [n, n] of type `in` (column-major, the "TN" layout FP8 GEMMs
 * need), f32 accumulation. *tflops = 0 and a note when cuBLASLt declines the problem. */
static dsv4_status lt_gemm(ceil_job *j, cudaDataType_t in, int n, cudaEvent_t e0, cudaEvent_t e1,
                           double *tflops, char *note, size_t note_n)
{
    const lt_api *lt = j->lt;
    cublasLtMatmulPreference_t pref = NULL;
    cublasStatus_t s = lt->desc_create(&j->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    const cublasOperation_t tr = CUBLAS_OP_T, nt = CUBLAS_OP_N;
    const uint64_t ws = LT_WS_BYTES;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = lt->desc_set(j->desc, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof tr);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = lt->desc_set(j->desc, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt);
    if (s == CUBLAS_STATUS_SUCCESS) s = lt->layout_create(&j->la, in, n, n, n);
    if (s == CUBLAS_STATUS_SUCCESS) s = lt->layout_create(&j->lb, in, n, n, n);
    if (s == CUBLAS_STATUS_SUCCESS) s = lt->layout_create(&j->ld, CUDA_R_16BF, n, n, n);
    if (s == CUBLAS_STATUS_SUCCESS) s = lt->pref_create(&pref);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = lt->pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    memset(&res, 0, sizeof res);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = lt->heuristic(j->h, j->desc, j->la, j->lb, j->ld, j->ld, pref, 1, &res, &found);
    dsv4_status st = DSV4_OK;
    *tflops = 0.0;
    if (s != CUBLAS_STATUS_SUCCESS || !found) {
        snprintf(note, note_n, "; %s GEMM: no cuBLASLt algorithm (status %d)",
                 in == CUDA_R_16BF ? "BF16" : "FP8", (int)s);
    } else {
        j->algo = res.algo;
        double sec = 0.0;
        st = time_best(j, e0, e1, &sec);
        if (st == DSV4_OK && sec > 0.0) *tflops = 2.0 * n * (double)n * n / sec / 1e12;
        if (st != DSV4_OK) { /* a declined GEMM is a missing figure, not a failed benchmark */
            snprintf(note, note_n, "; %s GEMM failed: %s", in == CUDA_R_16BF ? "BF16" : "FP8",
                     dsv4_last_error());
            st = DSV4_OK;
        }
    }
    if (pref) lt->pref_destroy(pref);
    if (j->ld) lt->layout_destroy(j->ld);
    if (j->lb) lt->layout_destroy(j->lb);
    if (j->la) lt->layout_destroy(j->la);
    if (j->desc) lt->desc_destroy(j->desc);
    j->ld = j->lb = j->la = NULL;
    j->desc = NULL;
    return st;
}

/* ---- the measurements ---------------------------------------------------------------------- */

typedef struct ceil_res {
    void *src, *dst, *sink, *ws;
    cudaEvent_t e0, e1;
    lt_api lt;
    cublasLtHandle_t h;
} ceil_res;

static dsv4_status fill(cudaStream_t st, void *p, size_t bytes, int is_fp8, uint32_t seed)
{
    ceil_fill_kernel<<<4096, 256, 0, st>>>((uint16_t *)p, bytes / 2, is_fp8, seed);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

static dsv4_status measure(dsv4_backend *b, ceil_res *r, dsv4_bench_ceilings *out)
{
    cudaStream_t st = dsv4_cuda_stream(b->cuda);
    int dev = 0, sms = 0;
    CUDA_TRY(cudaGetDevice(&dev));
    CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, dev));
    snprintf(out->device_name, sizeof out->device_name, "%.127s", prop.name);
    out->sm_count = sms;
    out->device_bytes = prop.totalGlobalMem;
    CUDA_TRY(cudaEventCreate(&r->e0));
    CUDA_TRY(cudaEventCreate(&r->e1));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, COPY_BYTES, &r->src));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, COPY_BYTES, &r->dst));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, (size_t)sms * 64 * sizeof(float), &r->sink));
    DSV4_TRY(fill(st, r->src, COPY_BYTES, 0, 1));

    ceil_job j;
    memset(&j, 0, sizeof j);
    j.st = st;
    j.sink = r->sink;
    double sec = 0.0;

    /* bandwidth */
    out->buffer_bytes = COPY_BYTES;
    j.kind = JOB_COPY;
    j.dst = r->dst;
    j.src = r->src;
    j.bytes = COPY_BYTES;
    DSV4_TRY(time_best(&j, r->e0, r->e1, &sec));
    out->copy_gbs = 2.0 * (double)COPY_BYTES / sec / 1e9;
    j.kind = JOB_READ;
    j.blocks = sms * 4;
    j.threads = 512;
    DSV4_TRY(time_best(&j, r->e0, r->e1, &sec));
    out->read_gbs = (double)COPY_BYTES / sec / 1e9;

    /* mma.sync peaks: 8 warps per block, 4 blocks per SM */
    j.blocks = sms * 4;
    j.threads = 256;
    j.iters = MMA_ITERS;
    const double warps = (double)j.blocks * (j.threads / 32) * MMA_ITERS * MMA_CHAINS;
    j.kind = JOB_MMA_BF16;
    DSV4_TRY(time_best(&j, r->e0, r->e1, &sec));
    out->mma_bf16_tflops = warps * 4096.0 / sec / 1e12;
    j.kind = JOB_MMA_FP8;
    DSV4_TRY(time_best(&j, r->e0, r->e1, &sec));
    out->mma_fp8_tflops = warps * 8192.0 / sec / 1e12;

    /* cuBLASLt GEMMs on the copy buffers: A and B in src, D in dst */
    out->gemm_n = GEMM_N;
    if (!lt_load(&r->lt, out->blas_note, sizeof out->blas_note)) return DSV4_OK;
    cublasStatus_t s = r->lt.create(&r->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        r->h = NULL;
        snprintf(out->blas_note, sizeof out->blas_note, "cublasLtCreate: status %d", (int)s);
        return DSV4_OK;
    }
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, LT_WS_BYTES, &r->ws));
    const size_t half = COPY_BYTES / 2; /* A at 0, B at 512 MiB: n*n*2 bytes = 128 MiB each */
    j.kind = JOB_GEMM;
    j.lt = &r->lt;
    j.h = r->h;
    j.A = r->src;
    j.B = (const char *)r->src + half;
    j.dst = r->dst;
    j.ws = r->ws;
    const size_t used = strlen(out->blas_note);
    DSV4_TRY(lt_gemm(&j, CUDA_R_16BF, GEMM_N, r->e0, r->e1, &out->blas_bf16_tflops,
                     out->blas_note + used, sizeof out->blas_note - used));
    DSV4_TRY(fill(st, r->src, COPY_BYTES, 1, 2));
    const size_t used2 = strlen(out->blas_note);
    DSV4_TRY(lt_gemm(&j, CUDA_R_8F_E4M3, GEMM_N, r->e0, r->e1, &out->blas_fp8_tflops,
                     out->blas_note + used2, sizeof out->blas_note - used2));
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_bench_ceilings_measure(dsv4_backend *b, dsv4_bench_ceilings *out)
{
    if (!b || !out || b->kind != DSV4_DEVICE_CUDA || !b->cuda)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "dsv4_bench_ceilings_measure: needs a CUDA backend");
    memset(out, 0, sizeof *out);
    ceil_res r;
    memset(&r, 0, sizeof r);
    dsv4_status st = measure(b, &r, out);
    if (st != DSV4_OK) dsv4_fail_context(st, "measuring the device's ceilings");
    cudaStreamSynchronize(dsv4_cuda_stream(b->cuda));
    if (r.h) r.lt.destroy(r.h);
    if (r.lt.lib) dlclose(r.lt.lib);
    dsv4_cuda_free(b->cuda, r.ws);
    dsv4_cuda_free(b->cuda, r.sink);
    dsv4_cuda_free(b->cuda, r.dst);
    dsv4_cuda_free(b->cuda, r.src);
    if (r.e0) cudaEventDestroy(r.e0);
    if (r.e1) cudaEventDestroy(r.e1);
    return st;
}

/* ---- decode projections: the engine's op against cuBLASLt FP8 (dsv4_bench_gemm_measure) ---- */

static const size_t GEMM_COLD_BYTES = (size_t)256 << 20; /* > 5x an H100's 50 MB of L2 */
enum { GEMM_MAX_COPIES = 64, GEMM_ALGOS = DSV4_BENCH_GEMM_ALGOS, GEMM_REPS = 5 };

/* The cuBLASLt of the GEMM comparison, loaded on first use and kept until the process exits:
 * every projection shape uses it, and loading the ~540 MB library costs about a second. */
static lt_api g_lt;
static cublasLtHandle_t g_lt_h;
static int g_lt_state; /* 0: not tried, 1: loaded, -1: not available (g_lt_note says why) */
static char g_lt_note[128];

static int gemm_lt(void)
{
    if (g_lt_state) return g_lt_state > 0;
    g_lt_state = -1;
    if (!lt_load(&g_lt, g_lt_note, sizeof g_lt_note)) return 0;
    const cublasStatus_t s = g_lt.create(&g_lt_h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(g_lt_note, sizeof g_lt_note, "cublasLtCreate: status %d", (int)s);
        return 0;
    }
    g_lt_state = 1;
    return 1;
}

/* Best time (ms) of GEMM_REPS launches of g after one warm-up launch. */
static dsv4_status time_graph(cudaGraphExec_t g, cudaStream_t st, cudaEvent_t e0, cudaEvent_t e1,
                              double *best_ms)
{
    float best = 0.0f;
    for (int r = 0; r <= GEMM_REPS; r++) {
        CUDA_TRY(cudaEventRecord(e0, st));
        CUDA_TRY(cudaGraphLaunch(g, st));
        CUDA_TRY(cudaEventRecord(e1, st));
        CUDA_TRY(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CUDA_TRY(cudaEventElapsedTime(&ms, e0, e1));
        if (r > 0 && (best == 0.0f || ms < best)) best = ms;
    }
    *best_ms = best;
    return DSV4_OK;
}

typedef struct gemm_run {
    dsv4_backend *b;
    cudaStream_t st;
    cudaEvent_t e0, e1;
    const dsv4_weight *w;
    int groups, copies, nmax;
    int64_t R, K, xcols; /* per group: W_g [R, K]; x [n, xcols = groups K] */
    /* ours */
    dsv4_weight dw[GEMM_MAX_COPIES];
    float *x, *y;
    /* cuBLASLt: copies of W (e4m3) and their 128 x 128 scales, x (e4m3), its 1 x 128 scales, D */
    void *A, *B, *D, *ws;
    float *sa, *sb;
    size_t a_bytes, sa_per; /* per copy */
} gemm_run;

/* The engine's op on every copy, once eagerly (lazy allocations happen outside the capture),
 * then `copies` calls captured in one graph and timed. */
static dsv4_status ours_time(gemm_run *g, int n, dsv4_bench_gemm *r)
{
    dsv4_backend *b = g->b;
    const int64_t rows = g->w->rows;
    for (int pass = 0; pass < 2; pass++) {
        if (pass) DSV4_TRY(dsv4_bk_graph_begin(b));
        dsv4_status st = DSV4_OK;
        for (int c = 0; c < g->copies && st == DSV4_OK; c++)
            st = g->groups > 1
                     ? dsv4_bk_linear_grouped(b, &g->dw[c], g->groups, g->x, g->xcols, n, g->y,
                                              rows, 1)
                     : dsv4_bk_linear(b, &g->dw[c], 0, rows, g->x, g->xcols, n, g->y, rows, 1);
        if (!pass) {
            DSV4_TRY(st);
            DSV4_TRY(dsv4_bk_sync(b));
            continue;
        }
        void *graph = NULL;
        const dsv4_status end = dsv4_bk_graph_end(b, &graph);
        DSV4_TRY(st);
        DSV4_TRY(end);
        r->ours_kernels = b->graph_kernels / g->copies;
        double ms = 0.0;
        st = time_graph((cudaGraphExec_t)graph, g->st, g->e0, g->e1, &ms);
        dsv4_bk_graph_free(b, graph);
        DSV4_TRY(st);
        r->ours_us = ms * 1e3 / g->copies;
    }
    return DSV4_OK;
}

/* The three ways cuBLASLt is asked, in order: block scales with W as A (D [R, n] = W x^T), block
 * scales with x as A (D^T), one scale per tensor with W as A (only when neither block layout
 * has an algorithm). */
enum { LT_BLOCK_W_A, LT_BLOCK_X_A, LT_TENSOR_W_A, LT_CONFIGS };

typedef struct lt_setup {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
} lt_setup;

static void lt_setup_free(lt_setup *s)
{
    if (s->ld) g_lt.layout_destroy(s->ld);
    if (s->lb) g_lt.layout_destroy(s->lb);
    if (s->la) g_lt.layout_destroy(s->la);
    if (s->desc) g_lt.desc_destroy(s->desc);
    memset(s, 0, sizeof *s);
}

/* A column-major layout [rows, cols] with leading dimension ld, batched with `stride` elements
 * between the groups when there are several. */
static cublasStatus_t lt_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows,
                                int64_t cols, int64_t ld, int groups, int64_t stride)
{
    cublasStatus_t s = g_lt.layout_create(l, t, (uint64_t)rows, (uint64_t)cols, ld);
    if (s == CUBLAS_STATUS_SUCCESS && groups > 1) {
        const int32_t count = groups;
        s = g_lt.layout_set(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = g_lt.layout_set(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                sizeof stride);
    }
    return s;
}

static cublasStatus_t lt_configure(const gemm_run *g, int cfg, int n, lt_setup *s)
{
    const cublasOperation_t tr = CUBLAS_OP_T, nt = CUBLAS_OP_N;
    const int w_a = cfg != LT_BLOCK_X_A;
    const int64_t R = g->R, K = g->K, G = g->groups;
    const int64_t n8 = (n + 7) / 8 * 8; /* D^T's leading dimension, 16-byte aligned */
    cublasStatus_t st = g_lt.desc_create(&s->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = g_lt.desc_set(s->desc, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof tr);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = g_lt.desc_set(s->desc, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt);
    if (cfg != LT_TENSOR_W_A) {
        const int32_t blk = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
        const int32_t vec = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
        if (st == CUBLAS_STATUS_SUCCESS)
            st = g_lt.desc_set(s->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, w_a ? &blk : &vec,
                               sizeof blk);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = g_lt.desc_set(s->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, w_a ? &vec : &blk,
                               sizeof blk);
    }
    const void *sa = w_a ? (const void *)g->sa : (const void *)g->sb;
    const void *sb = w_a ? (const void *)g->sb : (const void *)g->sa;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = g_lt.desc_set(s->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = g_lt.desc_set(s->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb);
    /* W_g: [R, K] row-major = column-major [K, R]; x: [n, G K] row-major = column-major [G K, n] */
    if (w_a) { /* D [R, n] column-major, ld = G R: exactly y [n, G R] row-major */
        if (st == CUBLAS_STATUS_SUCCESS)
            st = lt_layout(&s->la, CUDA_R_8F_E4M3, K, R, K, g->groups, R * K);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = lt_layout(&s->lb, CUDA_R_8F_E4M3, K, n, g->xcols, g->groups, K);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = lt_layout(&s->ld, CUDA_R_16BF, R, n, G * R, g->groups, R);
    } else { /* D^T [n, R] column-major per group */
        if (st == CUBLAS_STATUS_SUCCESS)
            st = lt_layout(&s->la, CUDA_R_8F_E4M3, K, n, g->xcols, g->groups, K);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = lt_layout(&s->lb, CUDA_R_8F_E4M3, K, R, K, g->groups, R * K);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = lt_layout(&s->ld, CUDA_R_16BF, n, R, n8, g->groups, n8 * R);
    }
    return st;
}

/* Enqueues copy c's GEMM: W and its scales move with c. */
static cublasStatus_t lt_enqueue(const gemm_run *g, int cfg, lt_setup *s,
                                 const cublasLtMatmulAlgo_t *algo, int c)
{
    const int w_a = cfg != LT_BLOCK_X_A;
    const void *W = (const char *)g->A + (size_t)c * g->a_bytes;
    const void *wscale = g->sa + (size_t)c * g->sa_per;
    cublasStatus_t st = g_lt.desc_set(
        s->desc, w_a ? CUBLASLT_MATMUL_DESC_A_SCALE_POINTER : CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
        &wscale, sizeof wscale);
    const float alpha = 1.0f, beta = 0.0f;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = g_lt.matmul(g_lt_h, s->desc, &alpha, w_a ? W : g->B, s->la, w_a ? g->B : W, s->lb,
                         &beta, g->D, s->ld, g->D, s->ld, algo, g->ws, LT_WS_BYTES, g->st);
    return st;
}

/* One algorithm: once eagerly (a failing one is skipped: *ms = 0), then the copies in a graph. */
static dsv4_status lt_time_algo(const gemm_run *g, int cfg, lt_setup *s,
                                const cublasLtMatmulAlgo_t *algo, double *ms)
{
    *ms = 0.0;
    if (lt_enqueue(g, cfg, s, algo, 0) != CUBLAS_STATUS_SUCCESS) return DSV4_OK;
    if (cudaStreamSynchronize(g->st) != cudaSuccess) {
        cudaGetLastError();
        return DSV4_OK;
    }
    CUDA_TRY(cudaStreamBeginCapture(g->st, cudaStreamCaptureModeThreadLocal));
    cublasStatus_t ls = CUBLAS_STATUS_SUCCESS;
    for (int c = 0; c < g->copies && ls == CUBLAS_STATUS_SUCCESS; c++)
        ls = lt_enqueue(g, cfg, s, algo, c);
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamEndCapture(g->st, &graph);
    cudaGraphExec_t exec = NULL;
    if (err == cudaSuccess && ls == CUBLAS_STATUS_SUCCESS)
        err = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (err != cudaSuccess || ls != CUBLAS_STATUS_SUCCESS) { /* not capturable: skipped */
        cudaGetLastError();
        return DSV4_OK;
    }
    const dsv4_status st = time_graph(exec, g->st, g->e0, g->e1, ms);
    cudaGraphExecDestroy(exec);
    return st;
}

static dsv4_status blas_time(gemm_run *g, int n, dsv4_bench_gemm *r, char *note, size_t note_n)
{
    r->blas_us = 0.0;
    for (int cfg = 0; cfg < LT_CONFIGS; cfg++) {
        if (cfg == LT_TENSOR_W_A && r->blas_us > 0.0) break;
        lt_setup s;
        memset(&s, 0, sizeof s);
        cublasLtMatmulPreference_t pref = NULL;
        const uint64_t wsb = LT_WS_BYTES;
        cublasStatus_t ls = lt_configure(g, cfg, n, &s);
        if (ls == CUBLAS_STATUS_SUCCESS) ls = g_lt.pref_create(&pref);
        if (ls == CUBLAS_STATUS_SUCCESS)
            ls = g_lt.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
        cublasLtMatmulHeuristicResult_t res[GEMM_ALGOS];
        int found = 0;
        memset(res, 0, sizeof res);
        if (ls == CUBLAS_STATUS_SUCCESS)
            ls = g_lt.heuristic(g_lt_h, s.desc, s.la, s.lb, s.ld, s.ld, pref, GEMM_ALGOS, res,
                                &found);
        if (ls != CUBLAS_STATUS_SUCCESS) found = 0;
        if (cfg == LT_TENSOR_W_A) /* the fallback, said once per shape with its n */
            snprintf(note + strlen(note), note_n - strlen(note),
                     strstr(note, "per-tensor") ? ", %d"
                                                : "; no block-scaled algorithm ran, per-tensor "
                                                  "scales at n = %d",
                     n);
        dsv4_status st = DSV4_OK;
        for (int i = 0; i < found && st == DSV4_OK; i++) {
            if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
            double ms = 0.0;
            st = lt_time_algo(g, cfg, &s, &res[i].algo, &ms);
            if (ms <= 0.0) continue;
            r->blas_algos++;
            const double us = ms * 1e3 / g->copies;
            if (r->blas_us == 0.0 || us < r->blas_us) {
                r->blas_us = us;
                r->blas_block = cfg != LT_TENSOR_W_A;
                r->blas_w_is_a = cfg != LT_BLOCK_X_A;
            }
        }
        if (pref) g_lt.pref_destroy(pref);
        lt_setup_free(&s);
        DSV4_TRY(st);
    }
    return DSV4_OK;
}

static dsv4_status gemm_setup(gemm_run *g)
{
    dsv4_backend *b = g->b;
    const int64_t rows = g->w->rows;
    for (int c = 0; c < g->copies; c++)
        DSV4_TRY(dsv4_bk_weight_upload(b, g->w, 0x5eed0000u + (uint64_t)c, &g->dw[c]));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, (size_t)(g->nmax * g->xcols) * 4, (void **)&g->x));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, (size_t)(g->nmax * rows) * 4, (void **)&g->y));
    DSV4_TRY(fill(g->st, g->x, (size_t)(g->nmax * g->xcols) * 4, 0, 3));
    /* FP8 projections get what the engine gives them: act_quant'd x (F8W's e4m3 path) */
    if (g->w->format == DSV4_FORMAT_FP8)
        DSV4_TRY(dsv4_bk_act_quant(b, g->x, g->xcols, g->x, g->xcols, g->nmax, g->xcols, 128));
    if (!gemm_lt()) return DSV4_OK;
    const int64_t n8 = (g->nmax + 7) / 8 * 8;
    const size_t sb_n = (size_t)((g->xcols + 127) / 128 + 4) * (size_t)(n8 + 4);
    g->a_bytes = ((size_t)(rows * g->w->cols) + 255) / 256 * 256;
    g->sa_per = (((size_t)((rows + 127) / 128 + 4) * (size_t)((g->w->cols + 127) / 128 + 4)) + 63) /
                64 * 64;
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, g->a_bytes * g->copies, &g->A));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, g->sa_per * g->copies * 4, (void **)&g->sa));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, (size_t)(n8 * g->xcols), &g->B));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, sb_n * 4, (void **)&g->sb));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, (size_t)(n8 * rows) * 2, &g->D));
    DSV4_TRY(dsv4_cuda_alloc(b->cuda, LT_WS_BYTES, &g->ws));
    DSV4_TRY(fill(g->st, g->A, g->a_bytes * g->copies, 1, 4));
    DSV4_TRY(fill(g->st, g->B, (size_t)(n8 * g->xcols), 1, 5));
    ceil_fill_f32_kernel<<<1024, 256, 0, g->st>>>(g->sa, g->sa_per * g->copies, 1.0f);
    CUDA_LAUNCHED();
    ceil_fill_f32_kernel<<<256, 256, 0, g->st>>>(g->sb, sb_n, 1.0f);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

static void gemm_teardown(gemm_run *g)
{
    cudaStreamSynchronize(g->st);
    for (int c = 0; c < g->copies; c++)
        if (g->dw[c].data) dsv4_bk_weight_free(g->b, &g->dw[c]);
    void *bufs[8] = {g->x, g->y, g->A, g->B, g->D, g->ws, g->sa, g->sb};
    for (int i = 0; i < 8; i++) dsv4_cuda_free(g->b->cuda, bufs[i]);
    if (g->e0) cudaEventDestroy(g->e0);
    if (g->e1) cudaEventDestroy(g->e1);
}

extern "C" dsv4_status dsv4_bench_gemm_measure(dsv4_backend *b, const dsv4_weight *w, int groups,
                                               const int *n, int n_n, dsv4_bench_gemms *out)
{
    if (!b || !w || !n || !out || b->kind != DSV4_DEVICE_CUDA || !b->cuda || groups < 1 ||
        n_n < 1 || n_n > DSV4_BENCH_GEMM_MAX_N || w->rows % groups || w->rows <= 0 || w->cols % 128)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_bench_gemm_measure: bad arguments");
    memset(out, 0, sizeof *out);
    gemm_run *g = (gemm_run *)calloc(1, sizeof *g);
    if (!g) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "dsv4_bench_gemm_measure");
    g->b = b;
    g->st = dsv4_cuda_stream(b->cuda);
    g->w = w;
    g->groups = groups;
    g->R = w->rows / groups;
    g->K = w->cols;
    g->xcols = groups * w->cols;
    for (int i = 0; i < n_n; i++) g->nmax = n[i] > g->nmax ? n[i] : g->nmax;
    const uint64_t wb = dsv4_weight_bytes(w);
    const uint64_t copies = (GEMM_COLD_BYTES + wb - 1) / (wb ? wb : 1);
    g->copies = copies < 2 ? 2 : copies > GEMM_MAX_COPIES ? GEMM_MAX_COPIES : (int)copies;
    out->copies = g->copies;
    out->fp8_bytes = (uint64_t)(w->rows * w->cols) +
                     (uint64_t)((w->rows + 127) / 128) * (uint64_t)((w->cols + 127) / 128) * 4;
    out->n_n = n_n;
    dsv4_status st = DSV4_OK;
    if (cudaEventCreate(&g->e0) != cudaSuccess || cudaEventCreate(&g->e1) != cudaSuccess)
        st = dsv4_fail(DSV4_ERR_DEVICE, "cudaEventCreate");
    if (st == DSV4_OK) st = gemm_setup(g);
    if (st == DSV4_OK) snprintf(out->note, sizeof out->note, "%s", g_lt_note);
    for (int i = 0; i < n_n && st == DSV4_OK; i++) {
        out->r[i].n = n[i];
        st = ours_time(g, n[i], &out->r[i]);
        if (st == DSV4_OK && g_lt_state > 0)
            st = blas_time(g, n[i], &out->r[i], out->note, sizeof out->note);
    }
    if (st != DSV4_OK) dsv4_fail_context(st, "timing the projection %s", w->name ? w->name : "");
    gemm_teardown(g);
    free(g);
    return st;
}
