/*
 * quant_hook.cuh - test hook of the device roundings (quant_dev.cuh), plain C so that the GPU op
 * test (tests/test_gpu_rows.c) can include it: it applies one rounding elementwise on the device,
 * so that the device code itself is compared with quant_sim.c on every input, not only on the
 * values some op happens to produce. The engine never calls it.
 */
#ifndef DSV4_CUDA_QUANT_HOOK_CUH
#define DSV4_CUDA_QUANT_HOOK_CUH

#include "backend/backend.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y [n] = dev_round_e2m1(x [n]) (device memory of b, a CUDA backend; y may alias x). */
dsv4_status dsv4_cuda_round_e2m1_check(dsv4_backend *b, const float *x, float *y, size_t n);

#ifdef __cplusplus
}
#endif
#endif
