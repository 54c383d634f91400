/*
 * bench_ceilings.h - what a GPU can do at best, measured on a backend's device: memory bandwidth
 * (a device-to-device copy and a read-only stream) and dense tensor-core rates (FP8 e4m3 and
 * BF16). `dsv4 bench` sets the engine's figures against them. Built only with DSV4_HAVE_CUDA
 * (backend/cuda/bench_ceilings.cu).
 *
 * The GEMM rates come from cuBLASLt, loaded at run time with dlopen (libcublasLt.so.13, .12, or
 * the path in $DSV4_CUBLASLT): the library is ~540 MB, so linking it would put it on every
 * machine the engine is copied to, for a benchmark figure. When it cannot be loaded the GEMM
 * figures are 0 and blas_note says why. The mma.sync figures need nothing: a register-only
 * kernel issuing Ampere-style warp MMAs, the ceiling of kernels that do not use wgmma.
 *
 * dsv4_bench_gemm_measure sets the engine's decode projections against cuBLASLt FP8 on the same
 * shapes (issue 8 asks for both side by side in one run).
 */
#ifndef DSV4_BACKEND_CUDA_BENCH_CEILINGS_H
#define DSV4_BACKEND_CUDA_BENCH_CEILINGS_H

#ifdef __cplusplus
extern "C" {
#endif

#include "backend/backend.h"

#include <stdint.h>

typedef struct dsv4_bench_ceilings {
    char device_name[128]; /* cudaDeviceProp.name */
    int sm_count;
    uint64_t device_bytes; /* total device memory */
    uint64_t buffer_bytes; /* bytes copied / read per pass (>= 1 GiB) */
    double copy_gbs;       /* cudaMemcpyAsync device to device: (read + written) bytes / s / 1e9 */
    double read_gbs;       /* streaming read kernel (16-byte loads): bytes read / s / 1e9 */
    int gemm_n;            /* M = N = K of the GEMMs */
    double blas_bf16_tflops; /* cuBLASLt BF16 x BF16 -> BF16, f32 accumulate; 0: not measured */
    double blas_fp8_tflops;  /* cuBLASLt e4m3 x e4m3 -> BF16, f32 accumulate; 0: not measured */
    double mma_bf16_tflops;  /* mma.sync m16n8k16 bf16, registers only */
    double mma_fp8_tflops;   /* mma.sync m16n8k32 e4m3, registers only */
    char blas_note[192];     /* the cuBLASLt loaded (file, version), or why none */
} dsv4_bench_ceilings;

/* Measures everything above on b's device and stream (b must be a CUDA backend). Needs ~2.3 GiB
 * of free device memory; every figure is the best of several timed runs after a warm-up. */
dsv4_status dsv4_bench_ceilings_measure(dsv4_backend *b, dsv4_bench_ceilings *out);

/* One decode projection y [n, rows] = x [n, cols] . W^T timed two ways on the same shape: the
 * engine's op (dsv4_bk_linear; dsv4_bk_linear_grouped when groups > 1, W then being `groups` row
 * blocks each applied to its own cols-wide slice of x) on a random copy of w in its stored format,
 * and cuBLASLt e4m3 x e4m3 -> bf16 (a strided batch of `groups` GEMMs). Each figure is per call, in
 * a CUDA graph of back-to-back calls over enough distinct weight copies that they do not stay in
 * L2, best of several launches. cuBLASLt: the best of the algorithms its heuristic offers, with
 * block scaling (f32 scales per 128 x 128 of W and per 1 x 128 of x; the checkpoint's ue8m0 scales
 * are powers of two, exact in f32) when the library takes it for the shape, else one f32 scale
 * per tensor. */
enum {
    DSV4_BENCH_GEMM_MAX_N = 4,
    DSV4_BENCH_GEMM_ALGOS = 8 /* heuristic candidates timed per cuBLASLt scaling layout */
};
typedef struct dsv4_bench_gemm {
    int n;            /* tokens (rows of x) */
    double ours_us;   /* per call */
    int ours_kernels; /* kernel launches per call */
    double blas_us;   /* 0: cuBLASLt not measured (note says why) */
    int blas_algos;   /* algorithms timed */
    int blas_block;   /* 1: block-scaled (128 x 128 W, 1 x 128 x); 0: per-tensor scales */
    int blas_w_is_a;  /* 1: W is cuBLASLt's A (D = W x^T); 0: x is A (D^T = x W^T) */
} dsv4_bench_gemm;
typedef struct dsv4_bench_gemms {
    int n_n;
    dsv4_bench_gemm r[DSV4_BENCH_GEMM_MAX_N];
    int copies;         /* weight copies cycled through */
    uint64_t fp8_bytes; /* bytes of W as e4m3 + its 128 x 128 f32 scales (what cuBLASLt reads) */
    char note[160];     /* the cuBLASLt loaded, or why none / why a scaling mode was not used */
} dsv4_bench_gemms;

/* Measures w (a host descriptor; its data is not read) at the n[0..n_n) token counts. */
dsv4_status dsv4_bench_gemm_measure(dsv4_backend *b, const dsv4_weight *w, int groups, const int *n,
                                    int n_n, dsv4_bench_gemms *out);

#ifdef __cplusplus
}
#endif
#endif
