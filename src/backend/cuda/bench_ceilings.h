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

#ifdef __cplusplus
}
#endif
#endif
