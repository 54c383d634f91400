/*
 * linear_path.cuh - test hook of the CUDA projections (bk_linear.cu), plain C so that the GPU op
 * test (tests/test_gpu_linear.c) can include it: it forces one of the kernels so that each is
 * checked against the CPU on every shape it accepts, not only where the dispatcher picks it.
 * The engine never calls it. Process-wide, by design of a test switch: set it, run, reset to
 * DSV4_LIN_PATH_AUTO.
 */
#ifndef DSV4_CUDA_LINEAR_PATH_CUH
#define DSV4_CUDA_LINEAR_PATH_CUH

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DSV4_LIN_PATH_AUTO = 0,  /* the dispatcher's choice */
    DSV4_LIN_PATH_GEMV = 1,  /* decode GEMV (N <= 16, 16-byte aligned rows and x) */
    DSV4_LIN_PATH_MMA = 2,   /* bf16 tensor cores (FP8, MXFP4, NVFP4, BF16; cols % 32 == 0) */
    DSV4_LIN_PATH_SIMT = 3,  /* f32 SIMT tiles (anything) */
    DSV4_LIN_PATH_MMV = 4,   /* decode on tensor cores (N <= 16; FP8 cols % 128, BF16 cols % 64) */
    DSV4_LIN_PATH_MULTI = 5, /* dsv4_bk_linear_multi's one GEMV launch (N <= 16, GEMV's rules) */
    DSV4_LIN_PATH_FMM = 6,   /* FP8, N <= 64 (cols % 128; dispatcher: N > 16 where faster) */
    DSV4_LIN_PATH_MMX = 7,   /* dsv4_bk_linear_multi's one tensor-core launch (N <= 64; FP8 and
                                BF16 entries, cols % 128; dispatcher: N > 2) */
    DSV4_LIN_PATH_F8W = 8,   /* FP8, N <= 128, e4m3 wgmma from a shared-memory ring (cols % 128,
                                groups * cols <= 32768; dispatcher: ungrouped, N >= 3 (2 on
                                >= 64 MB), >= 4096 rows; chunks of <= 128 rows above) */
    DSV4_LIN_PATH_W16 = 9,   /* BF16 and FP8, N <= 128, bf16 wgmma from a shared-memory ring (cols
                                % 128, groups * cols <= 65536; dispatcher: BF16 at N >= 3, FP8
                                grouped at N >= 3 (2 on >= 64 MB), chunks of <= 128 rows:
                                linear_w16.cu) */
    DSV4_LIN_PATH_W16X = 10, /* dsv4_bk_linear_multi's entries as W16 calls of one launch (N <=
                                64; every entry BF16 or FP8 W16 takes, of the same columns, all
                                tiles in one wave; dispatcher: N >= 33 with a K split of >= 2) */
};

/* Forces `path` for the following dsv4_cuda_bk_linear(_grouped, _multi) calls; a path that does
 * not take a call falls back to the dispatcher's choice. A multi call forced to MULTI fuses
 * every entry the GEMV takes up to N = 16 (the dispatcher: N <= 2), forced to MMX every entry
 * MMX takes up to N = 64 (the dispatcher: 3..64, with the K split of
 * dsv4_cuda_linear_force_split when set); forced to a single kernel, it makes one call per
 * entry on that kernel. Returns the previous setting. */
int dsv4_cuda_linear_force_path(int path);
/* The path the last dsv4_cuda_bk_linear(_grouped) call took (DSV4_LIN_PATH_*; AUTO before any
 * call); MULTI or MMX after a multi call that made that fused launch. */
int dsv4_cuda_linear_last_path(void);
/* Forces the GEMV's split-K over CTAs (the CTAs per cluster, 1, 2, 4 or 8; 0: the planner's
 * choice) for the following GEMV launches, single and multi. Returns the previous setting. */
int dsv4_cuda_linear_force_split(int ks);
/* The CTAs per cluster of the last GEMV or MMX launch (1: no split over CTAs). */
int dsv4_cuda_linear_last_split(void);
/* Lets the GEMV stage x in shared memory where its rule says so (1, the default) or never (0):
 * the two kernels must give the same bits. Returns the previous setting. */
int dsv4_cuda_linear_gemv_xs(int on);
/* Whether the last single GEMV launch staged x (gemv_xs_kernel). */
int dsv4_cuda_linear_last_xs(void);
/* The entry of the last dsv4_cuda_bk_linear_multi call whose norm its GEMV launch's last CTA ran
 * (bk_linear.cu gv_norm_tail; -1: none, every norm a launch of its own). */
int dsv4_cuda_linear_last_norm_tail(void);
/* dsv4_bk_linear_multi: the entry whose signal the GEMV's launch raised (-1: none) */
int dsv4_cuda_linear_last_signal(void);

#ifdef __cplusplus
}
#endif
#endif
