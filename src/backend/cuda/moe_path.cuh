/*
 * moe_path.cuh - test hook of the CUDA MoE (bk_moe.cu), plain C so that the GPU op test
 * (tests/test_gpu_moe.c) can include it: it forces the SIMT grouped GEMMs (moe_gemm.cu), the
 * tensor-core stage kernels (moe_mma.cu), so that each is checked against the CPU and timed
 * side by side, the split of the shared expert's tokens over slots and stage 2's per-slot wait.
 * The engine never calls it. Process-wide, by design of a test switch: set it, run, reset to
 * DSV4_MOE_PATH_AUTO. Its initial value comes from the environment, DSV4_MOE_PATH=simt|mma
 * (a diagnostic switch: the same engine run timed on each path).
 */
#ifndef DSV4_CUDA_MOE_PATH_CUH
#define DSV4_CUDA_MOE_PATH_CUH

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DSV4_MOE_PATH_AUTO = 0, /* the dispatcher's choice */
    DSV4_MOE_PATH_SIMT = 1, /* moe_gemm.cu: any expert format */
    DSV4_MOE_PATH_MMA = 2,  /* moe_mma.cu: MXFP4 and FP8 (ue8m0) experts */
};

/* Forces `path` for the following dsv4_cuda_bk_moe calls; a path that does not take a call
 * falls back to the dispatcher's choice. Returns the previous setting. */
int dsv4_cuda_moe_force_path(int path);
/* The path the last dsv4_cuda_bk_moe call took (DSV4_MOE_PATH_*; AUTO before any call). */
int dsv4_cuda_moe_last_path(void);
/* Forces the tensor-core path's slots of the shared expert (token ranges; bk_moe.cu
 * shared_slots) for the following calls, at most N; 0: the dispatcher's rule. Returns the
 * previous setting. The results are the same bit for bit whatever the split. */
int dsv4_cuda_moe_force_shared_slots(int slots);
/* Forces stage 2's per-slot wait (moe_mma.cu, RDY) on (1) or off (-1) wherever the 1-group
 * kernels run, for the following calls; 0: moe_mma_run's rule. Returns the previous setting.
 * The results are the same bit for bit either way. */
int dsv4_cuda_moe_force_ready(int mode);

#ifdef __cplusplus
}
#endif
#endif
