/*
 * moe.cuh - what the two halves of the CUDA MoE share: bk_moe.cu (router, expert table, work
 * list, act_quant, combine; the dsv4_bk_* entry points) and moe_gemm.cu (the grouped expert
 * projections). Device-side descriptions of the expert weights and of the work list the router's
 * selection is compacted into, so that no step goes back to the host to learn which experts run.
 */
#ifndef DSV4_CUDA_MOE_CUH
#define DSV4_CUDA_MOE_CUH

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "dsv4.h"
}

enum { MOE_MXFP4 = 0, MOE_NVFP4 = 1, MOE_FP8 = 2, MOE_BF16 = 3, MOE_F32 = 4, MOE_F16 = 5 };
enum { MOE_MAX_K = 16 };             /* experts per row */
enum { MOE_MAX_E = 1024 };           /* experts per layer (shared-memory scratch) */
enum { MOE_MAX_WARPS = 16 };         /* a GEMM CTA: at most 16 x 1024 input columns */
enum { MOE_LANE_COLS = 32 };         /* input columns per lane: one 16-byte FP4 load */
enum { MOE_WARP_COLS = 32 * 32 };    /* input columns per warp */
enum { MOE_RPW1 = 2, MOE_RPW2 = 4 }; /* output rows per warp in a work item: stage 1, 2 */
enum { MOE_MAX_RB = 8 };             /* row batches per work item */

/* One weight matrix [rows, cols] in device memory, in its stored format (model/weights.h). */
typedef struct moe_mat {
    const uint8_t *data;
    const uint8_t *scale; /* NULL for BF16 */
    int32_t fmt;          /* MOE_* */
    int32_t scale_f32;    /* FP8: f32 block scales (Base models); else ue8m0 */
    int64_t rows, cols, scale_cols;
    float out_scale; /* FP4: weight_scale_2 (the CPU's plan out_scale); 1 otherwise */
} moe_mat;

typedef struct moe_expert {
    moe_mat w1, w2, w3; /* gate [I, D], down [D, I], up [I, D] */
} moe_expert;

/* The work list (device memory), built from sel [N, K] by bk_moe.cu's prep kernel. A pair is one
 * (row, slot) of sel: id r * K + j; the shared expert's rows are pairs N * K + r. */
typedef struct moe_list {
    int32_t *n_active; /* [1] distinct experts selected */
    int32_t *active;   /* [E] their ids, ascending */
    int32_t *off;      /* [E] first entry of active expert a in pairs */
    int32_t *cnt;      /* [E] its number of pairs */
    int32_t *pairs;    /* [N * K] pair ids grouped by expert (order inside a group is free) */
} moe_list;

/* One stage of the grouped GEMM (moe_gemm.cu):
 *   stage 1 (gemm1): out [pair, I] = swiglu(bf16(w1 . x[row]), bf16(w3 . x[row]), limit)
 *                    * wts[pair] (routed pairs only); x [N, D] is act_quant(h), row = pair / K.
 *   stage 2:         out [pair, D] = bf16(w2 . x[pair]); x [N(K+1), I] is act_quant(a).
 * Items: (active expert, tile of rb batches of rg * MOE_RPW1 (stage 1) or rg * MOE_RPW2
 * (stage 2) output rows); active index 0 is the shared expert (table[E], all N rows), index
 * a > 0 is list.active[a - 1]. */
typedef struct moe_gemm_args {
    const moe_expert *table; /* [E + 1] device */
    int E, K;
    int64_t N;
    moe_list list;
    const float *x;
    int64_t ldx;
    float *out;
    int64_t ldo;
    const float *wts;
    float limit;
    int kw, rg; /* CTA = kw x rg warps; kw = ceil(cols / 1024) */
    int rb;     /* batches of rg * RPW rows per item (1 .. MOE_MAX_RB) */
    int tiles;  /* items (row tiles of rb * rg * RPW rows) per expert */
} moe_gemm_args;

/* The CTA shape for a stage whose input has `cols` columns: *kw x *rg warps. */
void moe_gemm_shape(int64_t cols, int *kw, int *rg);
/* Resident CTAs per SM of a stage's kernel with that shape (for the persistent grid). */
dsv4_status moe_gemm_occupancy(int gemm1, int kw, int rg, int *per_sm);
/* Enqueues one stage; `grid` CTAs loop over the items (extra ones exit at once). */
dsv4_status moe_gemm_launch(cudaStream_t st, int gemm1, const moe_gemm_args *a, int grid);

#endif
