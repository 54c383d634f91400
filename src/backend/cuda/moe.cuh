/*
 * moe.cuh - what the parts of the CUDA MoE share: bk_moe.cu (router, expert table, work list,
 * act_quant, combine; the dsv4_bk_* entry points), moe_gemm.cu (the SIMT grouped expert
 * projections, any format) and moe_mma.cu (the tensor-core path for MXFP4 / FP8 experts).
 * Device-side descriptions of the expert weights and of the work list the router's selection
 * is compacted into, so that no step goes back to the host to learn which experts run.
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
enum { MOE_RDY_STRIDE = 32 };        /* ints between two slots' ready counts: a line each */

/* One weight matrix [rows, cols] in device memory, in its stored format (model/weights.h), its
 * bytes row-major as stored or, where tiled, in the tiled layout below. */
typedef struct moe_mat {
    const uint8_t *data;
    const uint8_t *scale; /* NULL for BF16 */
    int32_t fmt;          /* MOE_* */
    int32_t scale_f32;    /* FP8: f32 block scales (Base models); else ue8m0 */
    int64_t rows, cols, scale_cols;
    float out_scale; /* FP4: weight_scale_2 (the CPU's plan out_scale); 1 otherwise */
    int32_t tiled;   /* MXFP4 / FP8 data (and MXFP4 scales) in the tiled layout */
} moe_mat;

/* The tiled layout (moe_layout.cu writes it once, when the table is built; the tensor-core path
 * reads only it). The matrix is cut into blocks of 16 rows x 128 input columns (rows padded to
 * 16, columns to 128 with zeros), stored block after block along a row band: block (tile, c) at
 * (tile * nch + c) * 16 * RB bytes, nch = ceil(cols / 128), and inside a block row after row,
 * RB bytes each (MXFP4 64, FP8 128). The MXFP4 scales likewise, 16 rows x 4 bytes a block. So
 * a warp streaming 16 rows reads one contiguous run instead of 16 runs 2-4 KB apart: on the H100
 * a pure-load kernel with the tensor-core path's access pattern (bench/bench_gpu_access.cu)
 * reached 2.03 TB/s row-major (1.72 with the scale bytes) and 3.05 TB/s tiled (2.80; docs/PERF.md,
 * session 15). FP8 block scales (one per 128 x 128) keep their layout. */

/* Bytes of one row in a 128-column chunk of a tiled matrix. */
static __host__ __device__ __forceinline__ int64_t moe_chunk_row_bytes(int fmt)
{
    return fmt == MOE_FP8 ? 128 : 64;
}

/* The data bytes of (row, input column col) of m, col % 32 == 0: a lane's 32 columns are
 * contiguous in either layout. */
static __device__ __forceinline__ const uint8_t *moe_data_at(const moe_mat &m, int64_t row,
                                                             int64_t col)
{
    const int fp8 = m.fmt == MOE_FP8;
    const int64_t b = fp8 ? col : col >> 1; /* byte of the row */
    if (!m.tiled) return m.data + row * (fp8 ? m.cols : m.cols >> 1) + b;
    const int64_t rb = moe_chunk_row_bytes(m.fmt), nch = (m.cols + 127) >> 7;
    return m.data + (((row >> 4) * nch + (col >> 7)) * 16 + (row & 15)) * rb + (b & (rb - 1));
}

/* The MXFP4 scale byte of (row, column col) of m. */
static __device__ __forceinline__ const uint8_t *moe_scale_at(const moe_mat &m, int64_t row,
                                                              int64_t col)
{
    if (!m.tiled) return m.scale + row * m.scale_cols + (col >> 5);
    const int64_t nch = (m.cols + 127) >> 7;
    return m.scale + (((row >> 4) * nch + (col >> 7)) * 16 + (row & 15)) * 4 + ((col >> 5) & 3);
}

typedef struct moe_expert {
    moe_mat w1, w2, w3; /* gate [I, D], down [D, I], up [I, D] */
} moe_expert;

/* moe_layout.cu: the matrices of the host table t [n] (device data; MXFP4 / FP8 with ue8m0
 * scales, moe_mma_mat_ok) rewritten into the tiled layout: in place where its size is the
 * stored one, else into new buffers, returned in *owned [*n_owned] for the table to free; a
 * buffer shared by several entries once. Sets tiled and the pointers in t. On failure, matrices
 * already rewritten in place stay so (the caller's table is unusable then anyway). */
struct dsv4_backend;
dsv4_status moe_layout_tile(struct dsv4_backend *b, moe_expert *t, int n, void ***owned,
                            int *n_owned);

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

/* ---- the tensor-core path (moe_mma.cu) ---------------------------------------------------
 * Launches: prep (work list, tickets zeroed, xq = act_quant(h) as f16 codes + scales), stage 1
 * (w1/w3 + SwiGLU * weight -> a as bf16; the last tile of each 128-row block of a quantises it
 * for stage 2), stage 2 (w2 -> y as bf16), combine. Activations are kept as their e4m3 codes
 * in f16 (x / s, exact) in the fragment order of the weight format that reads them:
 *   L4 (MXFP4): per 8 columns, the order 0 4 1 5 2 6 3 7;  L8 (FP8): column order;
 * with one f32 scale s per 128 columns. Slots: [0, ss) the shared expert, slot s on its tokens
 * [s sst, (s + 1) sst) (bk_moe.cu shared_slots), then slot ss - 1 + a the active expert
 * list.active[a - 1] (active index a, 0 naming the shared expert); P = N K + N pairs. */
typedef struct moe_mma_args {
    const moe_expert *table; /* [E + 1] device */
    int E, K;
    int64_t N, D, I;
    moe_list list;
    const float *wts;
    float limit;
    uint16_t *x4, *x8; /* [N, D] act_quant(h) codes, L4 and L8 */
    float *sx;         /* [N, D / 128] */
    uint16_t *araw;    /* [P, I] bf16 bits of a (stage 1 out) */
    uint16_t *aq;      /* [P, I] act_quant(a) codes in the layout of the pair's w2 */
    float *sa;         /* [P, I / 128] */
    int32_t *tickets;  /* [slots, I / 128] stage 1 tiles done per 128-row block of a */
    int32_t *ready;    /* [slots, MOE_RDY_STRIDE] blocks of a quantised per slot */
    int rdy;           /* stage 2's per-slot wait: 0 moe_mma_run's rule, 1 on, -1 off (tests) */
    int rdy_shared;    /* set by moe_mma_run: the shared expert's stage-2 tasks wait so too */
    uint16_t *y;       /* [P, D] bf16 bits of y (stage 2 out) */
    int slots;         /* bound on active experts + ss (the shared one's) */
    int sms;           /* the device's SMs (a stage grid's wave) */
    int ss, sst;       /* the shared expert's slots, and its tokens a slot (the last fewer) */
} moe_mma_args;

/* The router's inputs and outputs where the op routes too (dsv4_bk_moe_routed): moe_route.cu's
 * one kernel routes the rows, builds the work list and quantises h in place of the router and
 * prep launches. counter: [1] device int, 0 between calls (the last routing CTA resets it). */
typedef struct moe_route {
    const float *logits;    /* [N, E] */
    const float *bias;      /* [E] or NULL */
    const int32_t *tid2eid; /* [vocab, K] (hash layers) or NULL (top-k) */
    const int32_t *ids;     /* [N] token ids (hash layers) */
    int32_t *sel;           /* [N, K] out */
    float *wts;             /* [N, K] out */
    float scale;            /* route_scale */
    int32_t *counter;
} moe_route;

/* The int32 counters of a call, in one block of the workspace that the prep launch zeroes:
 * tickets [slots, ceil(I / 128)], then ready [slots, MOE_RDY_STRIDE]. */
static __host__ __device__ __forceinline__ int64_t moe_ticket_ints(int slots, int64_t I)
{
    return (int64_t)slots * ((I + 127) >> 7);
}
static __host__ __device__ __forceinline__ int64_t moe_counter_ints(int slots, int64_t I)
{
    return moe_ticket_ints(slots, I) + (int64_t)slots * MOE_RDY_STRIDE;
}

/* Whether the tensor-core path takes a matrix (format, alignment). */
int moe_mma_mat_ok(const moe_mat *m);
/* Enqueues the whole op: out [N, D] from h [N, D] and sel [N, K]; with rt, sel and wts are
 * first routed from rt's logits (rt->sel == sel). */
dsv4_status moe_mma_run(cudaStream_t st, const moe_mma_args *a, const moe_route *rt, float *out,
                        const float *h, const int32_t *sel);
/* moe_route.cu: the fused route + prep launch (sel, wts, the work list, the tickets zeroed,
 * x4 / x8 / sx) in place of the router and moe_mma_prep_kernel. */
dsv4_status moe_route_prep_launch(cudaStream_t st, const moe_mma_args *a, const moe_route *rt,
                                  const float *h);

#endif
