/*
 * linear_kernels.h - internal interface between cpu_linear.c (pool, work split, dispatch) and
 * the per-ISA projection kernels (linear_scalar.c, linear_avx2.c). Tests and the bench include
 * it to force one ISA and compare them.
 *
 * A kernel computes rows [r0, r1) of y = x W^T for all tokens:
 *   x: [n_tokens, cols] f32      y: y[t * ldy + (r - r0)], r in [r0, r1)
 * Every output is produced by one call with a summation order that depends only on (format,
 * cols, n_tokens, ISA), never on r0/r1 or the tile a row lands in: that is what makes results
 * independent of the thread count and of the row subrange.
 */
#ifndef DSV4_BACKEND_CPU_LINEAR_KERNELS_H
#define DSV4_BACKEND_CPU_LINEAR_KERNELS_H

#include "backend/cpu/cpu_linear.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum dsv4_cpu_isa {
    DSV4_CPU_ISA_SCALAR = 0, /* portable C */
    DSV4_CPU_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C, chosen at run time */
} dsv4_cpu_isa;

/* How the scale bytes of a plan are decoded. */
typedef enum dsv4_linear_scale_kind {
    DSV4_LINEAR_SCALE_NONE = 0,
    DSV4_LINEAR_SCALE_E8M0,
    DSV4_LINEAR_SCALE_E4M3,
    DSV4_LINEAR_SCALE_F32,
} dsv4_linear_scale_kind;

/* A weight reduced to what the kernels read. Built by cpu_linear.c for the formats with fast
 * paths (F32, BF16, F16, FP8, MXFP4 with cols % 32 == 0, NVFP4 with cols % 16 == 0); other
 * weights go through the reference row decoder. */
typedef struct dsv4_linear_plan {
    dsv4_weight_format format;
    int64_t cols;
    const uint8_t *data;
    int64_t row_bytes; /* bytes of data per row */
    const uint8_t *scale;
    dsv4_linear_scale_kind scale_kind;
    int64_t scale_cols;    /* scale elements per scale row */
    int64_t group;         /* columns sharing one scale: 128, 32, 16; cols for dense formats */
    int64_t rows_per_srow; /* weight rows per scale row: 128 for FP8, 1 for FP4 */
    /* Applied to each finished output: NVFP4/MXFP4 weight_scale_2 (1 otherwise). Kernels
     * decode FP4 weights as e2m1 * block scale and multiply the dot product by this. */
    float out_scale;
    const float *e4m3_lut; /* dsv4_linear_e4m3_table() */
} dsv4_linear_plan;

/* 256 f32 values of e4m3fn bytes (0x7f/0xff NaN), equal to dsv4_e4m3_to_f32. */
const float *dsv4_linear_e4m3_table(void);

/* The decoded scale of group g of the scale row starting at srow. */
static inline float dsv4_linear_group_scale(const dsv4_linear_plan *p, const uint8_t *srow,
                                            int64_t g)
{
    switch (p->scale_kind) {
    case DSV4_LINEAR_SCALE_E8M0: {
        const uint8_t s = srow[g];
        /* 2^(s-127): a plain exponent field, except 0 (subnormal 2^-127) and 0xff (NaN). */
        uint32_t bits = s == 0xff ? 0x7fc00000u : s == 0 ? 0x00400000u : (uint32_t)s << 23;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    case DSV4_LINEAR_SCALE_E4M3:
        return p->e4m3_lut[srow[g]];
    case DSV4_LINEAR_SCALE_F32: {
        float f;
        memcpy(&f, srow + 4 * g, sizeof f);
        return f;
    }
    case DSV4_LINEAR_SCALE_NONE:
        break;
    }
    return 1.0f;
}

/* Start of the scale row that covers weight row `row` (NULL for dense formats). */
static inline const uint8_t *dsv4_linear_scale_row(const dsv4_linear_plan *p, int64_t row)
{
    if (p->scale_kind == DSV4_LINEAR_SCALE_NONE) return NULL;
    const int64_t esize = p->scale_kind == DSV4_LINEAR_SCALE_F32 ? 4 : 1;
    return p->scale + (row / p->rows_per_srow) * p->scale_cols * esize;
}

/* Decodes columns [c0, c0 + n) of row `row` into out[0..n) the way the kernels see them (FP4
 * without out_scale). Portable; also serves the AVX2 kernels' column tails. */
void dsv4_linear_decode_scalar(const dsv4_linear_plan *p, int64_t row, int64_t c0, int64_t n,
                               float *out);

void dsv4_linear_rows_scalar(const dsv4_linear_plan *p, int64_t r0, int64_t r1, const float *x,
                             int64_t n_tokens, float *y, int64_t ldy);

/* 1 when this CPU (and this build) can run dsv4_linear_rows_avx2. */
int dsv4_linear_avx2_supported(void);
void dsv4_linear_rows_avx2(const dsv4_linear_plan *p, int64_t r0, int64_t r1, const float *x,
                           int64_t n_tokens, float *y, int64_t ldy);

/* The best ISA this CPU supports. */
dsv4_cpu_isa dsv4_cpu_isa_best(void);

/* dsv4_cpu_linear_rows with a forced ISA (DSV4_ERR_UNSUPPORTED if this CPU lacks it). */
dsv4_status dsv4_cpu_linear_rows_isa(dsv4_cpu_pool *pool, const dsv4_weight *w, int64_t row0,
                                     int64_t nrows, const float *x, int64_t n_tokens, float *y,
                                     dsv4_cpu_isa isa);

#endif
