/*
 * test_linear.h - what the GPU projection tests share (test_gpu_linear.c, test_gpu_linear_w16.c,
 * test_gpu_linear_aq.c): their seeded random x and weights in the stored formats, the |W| copy
 * their bound is computed from, the bf16 cell of a rounded output, and the two backends every
 * case runs on (with a case's weights uploaded). Each binary defines LIN_TEST_SEED before
 * including this, so its inputs are its own and reproducible.
 */
#ifndef DSV4_TEST_LINEAR_H
#define DSV4_TEST_LINEAR_H

#include "backend/backend.h"
#include "backend/cpu/cpu_linear.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>

#ifndef LIN_TEST_SEED
#error "define LIN_TEST_SEED (the binary's random seed) before including test_linear.h"
#endif

/* ---- random data ----------------------------------------------------------------------------- */
static unsigned long long rng = LIN_TEST_SEED;

static inline uint64_t rnd(void)
{
    return test_splitmix(&rng);
}

static inline double rnd_unit(void)
{
    return test_unit(&rng);
}

static inline int rnd_int(int lo, int hi) /* inclusive */
{
    return lo + (int)(rnd() % (uint64_t)(hi - lo + 1));
}

/* x: 5% zeros, 5% large (2^10..2^14), 5% tiny (2^-30..2^-20), the rest uniform in (-4, 4);
 * half negative. */
static inline void fill_x(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const int k = (int)(rnd() % 100);
        float v;
        if (k < 5)
            v = 0.0f;
        else if (k < 10)
            v = ldexpf((float)(1.0 + rnd_unit()), rnd_int(10, 13));
        else if (k < 15)
            v = ldexpf((float)(1.0 + rnd_unit()), rnd_int(-30, -21));
        else
            v = (float)(rnd_unit() * 4.0);
        x[i] = (rnd() & 1) ? -v : v;
    }
}

/* ---- host weights in their stored formats ---------------------------------------------------- */
typedef struct hweight {
    dsv4_weight w;
    uint8_t *data, *scale;
} hweight;

/* The descriptor alone (sizes, dtypes), data not allocated. */
static inline void weight_desc(dsv4_weight *w, const char *name, int fmt, int sdt, int64_t rows,
                               int64_t cols)
{
    memset(w, 0, sizeof *w);
    w->name = name;
    w->format = (dsv4_weight_format)fmt;
    w->ndim = 2;
    w->rows = rows;
    w->cols = cols;
    w->scale2 = 1.0f;
    switch (fmt) {
    case DSV4_FORMAT_F32:
        w->dtype = DSV4_DT_F32;
        w->data_bytes = (uint64_t)(rows * cols * 4);
        break;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16:
        w->dtype = fmt == DSV4_FORMAT_BF16 ? DSV4_DT_BF16 : DSV4_DT_F16;
        w->data_bytes = (uint64_t)(rows * cols * 2);
        break;
    case DSV4_FORMAT_FP8:
        w->dtype = DSV4_DT_F8_E4M3;
        w->data_bytes = (uint64_t)(rows * cols);
        w->scale_dtype = (dsv4_dtype)sdt;
        w->scale_rows = (rows + 127) / 128;
        w->scale_cols = (cols + 127) / 128;
        w->scale_bytes = (uint64_t)(w->scale_rows * w->scale_cols * (sdt == DSV4_DT_F32 ? 4 : 1));
        break;
    default: /* MXFP4, NVFP4 */
        w->dtype = DSV4_DT_U8;
        w->data_bytes = (uint64_t)(rows * cols / 2);
        w->scale_dtype = fmt == DSV4_FORMAT_MXFP4 ? DSV4_DT_F8_E8M0 : DSV4_DT_F8_E4M3;
        w->scale_rows = rows;
        w->scale_cols = cols / (fmt == DSV4_FORMAT_MXFP4 ? 32 : 16);
        w->scale_bytes = (uint64_t)(w->scale_rows * w->scale_cols);
        break;
    }
}

/* Random values valid for the format: zeros, subnormals, both signs, wide exponent ranges; FP8
 * without the NaN codes; scales from tiny to large. */
static inline void make_weight(hweight *h, const char *name, int fmt, int sdt, int64_t rows,
                               int64_t cols)
{
    dsv4_weight *w = &h->w;
    weight_desc(w, name, fmt, sdt, rows, cols);
    h->data = malloc(w->data_bytes);
    h->scale = w->scale_bytes ? malloc(w->scale_bytes) : NULL;
    const int64_t n = rows * cols;
    switch (fmt) {
    case DSV4_FORMAT_F32: {
        uint32_t *d = (uint32_t *)(void *)h->data;
        for (int64_t i = 0; i < n; i++) {
            const uint64_t r = rnd();
            d[i] = r % 100 < 3
                       ? 0u
                       : (uint32_t)((r >> 63) << 31) | ((uint32_t)(97 + (r >> 32) % 39) << 23) |
                             (uint32_t)(r & 0x7fffffu);
        }
        break;
    }
    case DSV4_FORMAT_BF16: {
        uint16_t *d = (uint16_t *)(void *)h->data;
        for (int64_t i = 0; i < n; i++) {
            const uint64_t r = rnd();
            d[i] = r % 100 < 3
                       ? 0
                       : (uint16_t)(((r >> 63) << 15) | ((97 + (r >> 32) % 39) << 7) | (r & 0x7f));
        }
        break;
    }
    case DSV4_FORMAT_F16: {
        uint16_t *d = (uint16_t *)(void *)h->data;
        for (int64_t i = 0; i < n; i++) {
            const uint64_t r = rnd(), k = r % 100;
            const uint16_t sign = (uint16_t)((r >> 63) << 15), man = (uint16_t)(r & 0x3ff);
            d[i] = k < 3   ? 0
                   : k < 5 ? (uint16_t)(sign | man)
                           : (uint16_t)(sign | ((1 + (r >> 32) % 30) << 10) | man);
        }
        break;
    }
    case DSV4_FORMAT_FP8: {
        for (int64_t i = 0; i < n; i++) {
            uint8_t b;
            do b = (uint8_t)rnd();
            while ((b & 0x7f) == 0x7f);
            h->data[i] = rnd() % 100 < 3 ? 0 : b;
        }
        const int64_t ns = w->scale_rows * w->scale_cols;
        for (int64_t i = 0; i < ns; i++) {
            if (sdt == DSV4_DT_F32) {
                const float s = ldexpf((float)(1.0 + rnd_unit()), rnd_int(-20, 2));
                memcpy(h->scale + 4 * i, &s, 4);
            } else {
                h->scale[i] = (uint8_t)rnd_int(107, 131); /* 2^-20 .. 2^4 */
            }
        }
        break;
    }
    default: { /* MXFP4, NVFP4 */
        for (uint64_t i = 0; i < w->data_bytes; i++) h->data[i] = (uint8_t)rnd();
        const int mx = fmt == DSV4_FORMAT_MXFP4;
        for (uint64_t i = 0; i < w->scale_bytes; i++)
            h->scale[i] = mx ? (uint8_t)rnd_int(100, 135) /* 2^-27 .. 2^8 */
                             : (uint8_t)rnd_int(0, 0x7e); /* e4m3 >= 0: 0, subnormals .. 448 */
        if (!mx) w->scale2 = (float)((0.5 + rnd_unit()) / 2688.0);
        break;
    }
    }
    w->data = h->data;
    w->scale = h->scale;
}

/* dst = |src| element by element: every sign bit cleared (data and scales). */
static inline void make_abs(const hweight *src, hweight *dst)
{
    *dst = *src;
    dst->data = malloc(src->w.data_bytes);
    memcpy(dst->data, src->data, src->w.data_bytes);
    dst->scale = NULL;
    if (src->scale) {
        dst->scale = malloc(src->w.scale_bytes);
        memcpy(dst->scale, src->scale, src->w.scale_bytes);
    }
    const uint64_t nb = src->w.data_bytes;
    switch (src->w.format) {
    case DSV4_FORMAT_F32:
        for (uint64_t i = 3; i < nb; i += 4) dst->data[i] &= 0x7f;
        break;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16:
        for (uint64_t i = 1; i < nb; i += 2) dst->data[i] &= 0x7f;
        break;
    case DSV4_FORMAT_FP8:
        for (uint64_t i = 0; i < nb; i++) dst->data[i] &= 0x7f;
        if (src->w.scale_dtype == DSV4_DT_F32)
            for (uint64_t i = 3; i < src->w.scale_bytes; i += 4) dst->scale[i] &= 0x7f;
        break;
    default:
        for (uint64_t i = 0; i < nb; i++) dst->data[i] &= 0x77;
        if (src->w.format == DSV4_FORMAT_NVFP4)
            for (uint64_t i = 0; i < src->w.scale_bytes; i++) dst->scale[i] &= 0x7f;
        dst->w.scale2 = fabsf(src->w.scale2);
        break;
    }
    dst->w.data = dst->data;
    dst->w.scale = dst->scale;
}

static inline void free_weight(hweight *h)
{
    free(h->data);
    free(h->scale);
}

/* ---- rounded outputs ------------------------------------------------------------------------- */
/* The reals that round to bf16 value g (nearest even; ties count as inside): [*lo, *hi]. */
static inline void bf16_cell(float g, double *lo, double *hi)
{
    uint32_t u;
    memcpy(&u, &g, 4);
    const uint32_t s = u & 0x80000000u, mag = (u >> 16) & 0x7fffu;
    float up, dn;
    const uint32_t ub = s | ((mag + 1) << 16),
                   db = mag ? s | ((mag - 1) << 16) : (s ^ 0x80000000u) | 0x10000u;
    memcpy(&up, &ub, 4);
    memcpy(&dn, &db, 4);
    const double a = 0.5 * ((double)g + up), b = 0.5 * ((double)g + dn);
    *lo = a < b ? a : b;
    *hi = a < b ? b : a;
}

/* ---- the backends ---------------------------------------------------------------------------- */
typedef struct ctx {
    dsv4_backend *cpu, *gpu;
} ctx;

/* The CPU backend (on a pool of its own, *pool) and the CUDA one; DSV4_OK, or the CUDA backend's
 * failure (counted: the binary then only reports). */
static inline dsv4_status ctx_open(ctx *cx, dsv4_cpu_pool **pool)
{
    *pool = NULL;
    cx->cpu = cx->gpu = NULL;
    CHECK(dsv4_cpu_pool_create(0, pool) == DSV4_OK);
    CHECK(dsv4_backend_create(DSV4_DEVICE_CPU, 0, *pool, &cx->cpu) == DSV4_OK);
    const dsv4_status st = dsv4_backend_create(DSV4_DEVICE_CUDA, 0, NULL, &cx->gpu);
    CHECK_MSG(st == DSV4_OK, "no CUDA backend: %s", dsv4_last_error());
    return st;
}

/* A case's weights: W random (make_weight), A = |W| (make_abs), and W on the GPU as *dw; the
 * upload's status (checked). */
static inline dsv4_status make_weights(ctx *cx, hweight *W, hweight *A, dsv4_weight *dw,
                                       const char *name, int fmt, int sdt, int64_t rows,
                                       int64_t cols)
{
    make_weight(W, name, fmt, sdt, rows, cols);
    make_abs(W, A);
    const dsv4_status st = dsv4_bk_weight_upload(cx->gpu, &W->w, 0, dw);
    CHECK_MSG(st == DSV4_OK, "%s: upload: %s", name, dsv4_last_error());
    return st;
}

static inline void ctx_close(ctx *cx, dsv4_cpu_pool *pool)
{
    dsv4_backend_destroy(cx->gpu);
    dsv4_backend_destroy(cx->cpu);
    dsv4_cpu_pool_destroy(pool);
}

#endif
