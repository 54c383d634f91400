/*
 * test_cpu_linear.c - the CPU projections (backend/cpu/cpu_linear.h) against a double-precision
 * reference built from dsv4_weight_dequant_row, on random weights in every stored format
 * (hand-built dsv4_weight structs over malloc'd bytes with random valid encodings, shapes with
 * partial 128-blocks and column tails), plus the thread pool under stress.
 *
 * Bound, per output: |y - ref| <= 1e-5 * sum_c |x[c] * w[c]| + 1e-30, with ref and the sum in
 * double. Every kernel sums at most 1024 columns here in chains of at most ~80 f32 additions,
 * so its rounding error stays below 80 * 2^-24 ~ 5e-6 of that sum.
 * Also: scalar and AVX2 agree within twice the bound; 1, 2 and 3 threads (and no pool) give
 * bit-identical results; a row subrange gives bit-identical rows of the full product; the
 * backend's multi projection with a norm is its two ops composed (test_multi_norm).
 */
#include "backend/backend.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/linear_kernels.h"
#include "core/error.h"
#include "core/float_formats.h"
#include "test_util.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* Uniform in [lo, hi). */
static float rndf(float lo, float hi)
{
    return lo + (hi - lo) * (float)(rnd() >> 40) * 0x1p-24f;
}

static uint8_t rnd_e4m3(void)
{
    uint8_t b = (uint8_t)rnd();
    return (b & 0x7f) == 0x7f ? (uint8_t)(b ^ 1) : b; /* never NaN */
}

/* ---- Random weights ------------------------------------------------------------------------- */

typedef struct test_weight {
    dsv4_weight w;
    uint8_t *data, *scale;
    char name[64];
} test_weight;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

/* A [rows, cols] weight in `format` (scale_dtype picks FP8's scale kind). */
static test_weight *make_weight(dsv4_weight_format format, dsv4_dtype scale_dtype, int64_t rows,
                                int64_t cols)
{
    test_weight *t = calloc(1, sizeof *t);
    if (!t) abort();
    dsv4_weight *w = &t->w;
    snprintf(t->name, sizeof t->name, "%s[%lld,%lld]%s", dsv4_weight_format_name(format),
             (long long)rows, (long long)cols, scale_dtype == DSV4_DT_F32 ? "/f32-scale" : "");
    w->name = t->name;
    w->format = format;
    w->ndim = 2;
    w->rows = rows;
    w->cols = cols;
    w->scale2 = 1.0f;
    const int64_t n = rows * cols;
    switch (format) {
    case DSV4_FORMAT_F32: {
        w->dtype = DSV4_DT_F32;
        w->data_bytes = (uint64_t)n * 4;
        float *f = xmalloc(w->data_bytes);
        for (int64_t i = 0; i < n; i++) f[i] = rndf(-2.0f, 2.0f);
        t->data = (uint8_t *)f;
        break;
    }
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16: {
        w->dtype = format == DSV4_FORMAT_BF16 ? DSV4_DT_BF16 : DSV4_DT_F16;
        w->data_bytes = (uint64_t)n * 2;
        uint16_t *h = xmalloc(w->data_bytes);
        for (int64_t i = 0; i < n; i++) {
            if (format == DSV4_FORMAT_BF16) {
                const float f = rndf(-2.0f, 2.0f);
                uint32_t u;
                memcpy(&u, &f, 4);
                h[i] = (uint16_t)(u >> 16);
            } else {
                uint16_t v = (uint16_t)rnd();
                if (((v >> 10) & 0x1f) == 0x1f) v &= (uint16_t)~0x4000; /* no inf/NaN */
                h[i] = v; /* every finite f16, subnormals included */
            }
        }
        t->data = (uint8_t *)h;
        break;
    }
    case DSV4_FORMAT_FP8: {
        w->dtype = DSV4_DT_F8_E4M3;
        w->data_bytes = (uint64_t)n;
        t->data = xmalloc(w->data_bytes);
        for (int64_t i = 0; i < n; i++) t->data[i] = rnd_e4m3();
        w->scale_dtype = scale_dtype;
        w->scale_rows = (rows + 127) / 128;
        w->scale_cols = (cols + 127) / 128;
        const int64_t ns = w->scale_rows * w->scale_cols;
        if (scale_dtype == DSV4_DT_F32) {
            w->scale_bytes = (uint64_t)ns * 4;
            float *s = xmalloc(w->scale_bytes);
            for (int64_t i = 0; i < ns; i++) s[i] = rndf(1e-3f, 1e-1f);
            t->scale = (uint8_t *)s;
        } else {
            w->scale_bytes = (uint64_t)ns;
            t->scale = xmalloc(w->scale_bytes);
            for (int64_t i = 0; i < ns; i++) t->scale[i] = (uint8_t)(115 + rnd() % 21);
            t->scale[0] = 0; /* 2^-127, a subnormal scale */
        }
        break;
    }
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const int mx = format == DSV4_FORMAT_MXFP4;
        w->dtype = DSV4_DT_U8;
        w->data_bytes = (uint64_t)n / 2;
        t->data = xmalloc(w->data_bytes);
        for (uint64_t i = 0; i < w->data_bytes; i++) t->data[i] = (uint8_t)rnd();
        w->scale_dtype = mx ? DSV4_DT_F8_E8M0 : DSV4_DT_F8_E4M3;
        w->scale_rows = rows;
        w->scale_cols = cols / (mx ? 32 : 16);
        const int64_t ns = w->scale_rows * w->scale_cols;
        w->scale_bytes = (uint64_t)ns;
        t->scale = xmalloc(w->scale_bytes);
        for (int64_t i = 0; i < ns; i++)
            t->scale[i] = mx ? (uint8_t)(118 + rnd() % 13) : (uint8_t)(rnd_e4m3() & 0x7f);
        if (!mx) w->scale2 = 0.37f / 448.0f;
        break;
    }
    case DSV4_FORMAT_INT: {
        w->dtype = DSV4_DT_I32;
        w->data_bytes = (uint64_t)n * 4;
        int32_t *v = xmalloc(w->data_bytes);
        for (int64_t i = 0; i < n; i++) v[i] = (int32_t)(rnd() % 512);
        t->data = (uint8_t *)v;
        break;
    }
    case DSV4_FORMAT_COUNT:
        abort();
    }
    w->data = t->data;
    w->scale = t->scale;
    return t;
}

static void free_weight(test_weight *t)
{
    free(t->data);
    free(t->scale);
    free(t);
}

/* ---- Checks --------------------------------------------------------------------------------- */

static dsv4_cpu_pool *pools[4]; /* NULL, 1, 2, 3 threads */
static int have_avx2;

/* ref[t][r] and mag[t][r] = sum |x w| over the reference dequantisation, in double. */
static void reference(const dsv4_weight *w, const float *x, int64_t n_tokens, double *ref,
                      double *mag)
{
    float *row = xmalloc((size_t)w->cols * sizeof *row);
    for (int64_t r = 0; r < w->rows; r++) {
        CHECK(dsv4_weight_dequant_row(w, r, row) == DSV4_OK);
        for (int64_t t = 0; t < n_tokens; t++) {
            double s = 0, m = 0;
            for (int64_t c = 0; c < w->cols; c++) {
                const double p = (double)x[t * w->cols + c] * (double)row[c];
                s += p;
                m += fabs(p);
            }
            ref[t * w->rows + r] = s;
            mag[t * w->rows + r] = m;
        }
    }
    free(row);
}

static int within(float y, double ref, double mag, double k)
{
    return fabs((double)y - ref) <= k * 1e-5 * mag + 1e-30;
}

/* Every ISA and pool on weight w with n_tokens random tokens. */
static void check_weight(const dsv4_weight *w, int64_t n_tokens)
{
    const int64_t rows = w->rows, cols = w->cols, ny = n_tokens * rows;
    float *x = xmalloc((size_t)(n_tokens * cols) * sizeof *x);
    for (int64_t i = 0; i < n_tokens * cols; i++) x[i] = rndf(-1.0f, 1.0f);
    double *ref = xmalloc((size_t)ny * sizeof *ref), *mag = xmalloc((size_t)ny * sizeof *mag);
    reference(w, x, n_tokens, ref, mag);

    float *y[2], *yp = xmalloc((size_t)ny * sizeof *yp);
    for (int isa = 0; isa < 2; isa++) {
        y[isa] = xmalloc((size_t)ny * sizeof *y[isa]);
        if (isa == DSV4_CPU_ISA_AVX2 && !have_avx2) {
            memcpy(y[1], y[0], (size_t)ny * sizeof *y[1]);
            continue;
        }
        for (int pi = 0; pi < 4; pi++) {
            float *dst = pi == 0 ? y[isa] : yp;
            for (int64_t i = 0; i < ny; i++) dst[i] = NAN;
            CHECK(dsv4_cpu_linear_rows_isa(pools[pi], w, 0, rows, x, n_tokens, dst, isa) ==
                  DSV4_OK);
            if (pi == 0) {
                int bad = 0;
                for (int64_t i = 0; i < ny; i++) {
                    if (within(dst[i], ref[i], mag[i], 1.0)) continue;
                    if (bad++ < 3)
                        fprintf(stderr, "  %s T=%lld isa=%d [%lld][%lld]: %.9g vs %.9g (mag %g)\n",
                                w->name, (long long)n_tokens, isa, (long long)(i / rows),
                                (long long)(i % rows), dst[i], ref[i], mag[i]);
                }
                CHECK_MSG(bad == 0, "%s T=%lld isa=%d: %d outputs outside the bound", w->name,
                          (long long)n_tokens, isa, bad);
            } else {
                CHECK_MSG(memcmp(dst, y[isa], (size_t)ny * sizeof *dst) == 0,
                          "%s T=%lld isa=%d: %d threads differ from no pool", w->name,
                          (long long)n_tokens, isa, pi);
            }
        }
        /* Row subranges give the same bits as the full product. */
        const int64_t ranges[3][2] = {{3, rows - 5}, {rows - 1, 1}, {0, rows / 2}};
        for (int ri = 0; ri < 3; ri++) {
            const int64_t r0 = ranges[ri][0], nr = ranges[ri][1];
            if (r0 < 0 || nr <= 0 || r0 + nr > rows) continue;
            float *ys = xmalloc((size_t)(n_tokens * nr) * sizeof *ys);
            CHECK(dsv4_cpu_linear_rows_isa(pools[2], w, r0, nr, x, n_tokens, ys, isa) == DSV4_OK);
            int same = 1;
            for (int64_t t = 0; t < n_tokens; t++)
                same &= memcmp(ys + t * nr, y[isa] + t * rows + r0, (size_t)nr * sizeof *ys) == 0;
            CHECK_MSG(same, "%s T=%lld isa=%d: rows [%lld, +%lld) differ from the full product",
                      w->name, (long long)n_tokens, isa, (long long)r0, (long long)nr);
            free(ys);
        }
    }
    int agree = 1;
    for (int64_t i = 0; i < ny; i++)
        agree &= fabs((double)y[0][i] - y[1][i]) <= 2e-5 * mag[i] + 1e-30;
    CHECK_MSG(agree, "%s T=%lld: scalar and AVX2 disagree", w->name, (long long)n_tokens);

    /* The public entry point is the best ISA. */
    CHECK(dsv4_cpu_linear(pools[3], w, x, n_tokens, yp) == DSV4_OK);
    CHECK(memcmp(yp, y[dsv4_cpu_isa_best()], (size_t)ny * sizeof *yp) == 0);

    free(y[0]);
    free(y[1]);
    free(yp);
    free(ref);
    free(mag);
    free(x);
}

static void test_formats(void)
{
    const struct {
        dsv4_weight_format format;
        dsv4_dtype scale_dtype;
        int64_t rows, cols;
    } cases[] = {
        {DSV4_FORMAT_F32, DSV4_DT_F32, 19, 1000},
        {DSV4_FORMAT_BF16, DSV4_DT_F32, 50, 301},
        {DSV4_FORMAT_F16, DSV4_DT_F32, 33, 77},
        {DSV4_FORMAT_FP8, DSV4_DT_F8_E8M0, 200, 300},
        {DSV4_FORMAT_FP8, DSV4_DT_F32, 130, 259},
        {DSV4_FORMAT_FP8, DSV4_DT_F8_E8M0, 1, 7},
        {DSV4_FORMAT_FP8, DSV4_DT_F8_E8M0, 5, 16},
        {DSV4_FORMAT_MXFP4, DSV4_DT_F8_E8M0, 37, 160},
        {DSV4_FORMAT_MXFP4, DSV4_DT_F8_E8M0, 130, 1024},
        {DSV4_FORMAT_NVFP4, DSV4_DT_F8_E4M3, 45, 208},
        {DSV4_FORMAT_INT, DSV4_DT_F32, 6, 10}, /* no fast path: the reference decoder serves */
    };
    const int64_t tokens[] = {1, 3, 17};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_weight *t =
            make_weight(cases[i].format, cases[i].scale_dtype, cases[i].rows, cases[i].cols);
        for (size_t k = 0; k < 3; k++) check_weight(&t->w, tokens[k]);
        free_weight(t);
    }
}

/* FP8 edge cases: a NaN code poisons its row only; a block scale so large that 256 * s
 * overflows f32 (the AVX2 decoder's scalar detour) still matches the reference. */
static void test_fp8_edges(void)
{
    test_weight *t = make_weight(DSV4_FORMAT_FP8, DSV4_DT_F32, 20, 200);
    float *s = (float *)(void *)t->scale;
    s[1] = 0x1p120f; /* columns 128..199 of rows 0..19 */
    for (int64_t r = 0; r < 20; r++)
        for (int64_t c = 128; c < 200; c++) t->data[r * 200 + c] &= 0x8f; /* |v| <= 2^-5 * 1.875 */
    for (int64_t k = 1; k <= 17; k += 16) check_weight(&t->w, k);

    t->data[5 * 200 + 77] = 0x7f;
    t->data[9 * 200 + 150] = 0xff;
    float x[2 * 200], y[2 * 20];
    for (int i = 0; i < 400; i++) x[i] = rndf(-1.0f, 1.0f);
    for (int isa = 0; isa <= (have_avx2 ? 1 : 0); isa++)
        for (int64_t n = 1; n <= 2; n++) {
            CHECK(dsv4_cpu_linear_rows_isa(pools[2], &t->w, 0, 20, x, n, y, isa) == DSV4_OK);
            int ok = 1;
            for (int64_t tok = 0; tok < n; tok++)
                for (int r = 0; r < 20; r++)
                    ok &= (r == 5 || r == 9) ? isnan(y[tok * 20 + r]) : isfinite(y[tok * 20 + r]);
            CHECK_MSG(ok, "isa=%d T=%lld: NaN weights", isa, (long long)n);
        }
    free_weight(t);
}

static void test_errors(void)
{
    test_weight *t = make_weight(DSV4_FORMAT_BF16, DSV4_DT_F32, 8, 32);
    float x[32] = {0}, y[8];
    CHECK(dsv4_cpu_linear_rows(pools[2], &t->w, 4, 5, x, 1, y) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_cpu_linear_rows(pools[2], &t->w, -1, 2, x, 1, y) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_cpu_linear_rows(pools[2], &t->w, 0, 8, x, -1, y) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_cpu_linear_rows(pools[2], &t->w, 8, 0, x, 1, y) == DSV4_OK); /* empty */
    CHECK(dsv4_cpu_linear(pools[2], &t->w, x, 0, y) == DSV4_OK);
    t->w.format = DSV4_FORMAT_COUNT;
    CHECK(dsv4_cpu_linear(pools[2], &t->w, x, 1, y) == DSV4_ERR_UNSUPPORTED);
    free_weight(t);
}

/* The backend's multi projection with a norm on an entry (backend.h dsv4_bk_linear_multi): bit
 * for bit its projections, then dsv4_bk_rmsnorm_quant of the entry's y in place; an entry's
 * signal is set (1) by the op; a norm without yq, with qblock 0 or on y rows that are not
 * contiguous is refused, naming the entry. */
static void test_multi_norm(void)
{
    dsv4_backend *b = NULL;
    CHECK(dsv4_backend_create(DSV4_DEVICE_CPU, 0, pools[2], &b) == DSV4_OK);
    if (!b) return;
    enum { N = 3, C = 512, R0 = 300, R1 = 64 };
    test_weight *w0 = make_weight(DSV4_FORMAT_FP8, DSV4_DT_F8_E8M0, R0, C);
    test_weight *w1 = make_weight(DSV4_FORMAT_BF16, DSV4_DT_F32, R1, C);
    float *x = xmalloc(N * C * sizeof(float)), *nw = xmalloc(R0 * sizeof(float));
    float *y0 = xmalloc(N * R0 * sizeof(float)), *q0 = xmalloc(N * R0 * sizeof(float));
    float *y1 = xmalloc(N * R1 * sizeof(float)), *yr = xmalloc(N * R0 * sizeof(float));
    float *qr = xmalloc(N * R0 * sizeof(float)), *y1r = xmalloc(N * R1 * sizeof(float));
    for (int i = 0; i < N * C; i++) x[i] = rndf(-2.0f, 2.0f);
    for (int i = 0; i < R0; i++) nw[i] = rndf(0.25f, 1.75f);
    dsv4_bk_linear_entry e[2] = {dsv4_bk_lin_entry(&w0->w, x, C, y0, R0, 1),
                                 dsv4_bk_lin_entry(&w1->w, x, C, y1, R1, 0)};
    e[0].norm = nw, e[0].yq = q0, e[0].eps = 1e-6f, e[0].qblock = 128;
    int32_t signal = 0;
    e[1].signal = &signal;
    CHECK(dsv4_bk_side_mark(b) == DSV4_OK); /* no-ops on the CPU: the issue order runs */
    CHECK(dsv4_bk_linear_multi(b, e, 2, N) == DSV4_OK);
    CHECK(signal == 1);
    CHECK(dsv4_bk_side_begin_marked(b) == DSV4_OK);
    CHECK(dsv4_bk_side_join(b) == DSV4_OK);
    CHECK(dsv4_bk_linear(b, &w0->w, 0, R0, x, C, N, yr, R0, 1) == DSV4_OK);
    CHECK(dsv4_bk_rmsnorm_quant(b, yr, qr, yr, nw, N, R0, 1e-6f, 128) == DSV4_OK);
    CHECK(dsv4_bk_linear(b, &w1->w, 0, R1, x, C, N, y1r, R1, 0) == DSV4_OK);
    CHECK(memcmp(y0, yr, N * R0 * sizeof(float)) == 0);
    CHECK(memcmp(q0, qr, N * R0 * sizeof(float)) == 0);
    CHECK(memcmp(y1, y1r, N * R1 * sizeof(float)) == 0);
    e[0].ldy = R0 + 1;
    CHECK(dsv4_bk_linear_multi(b, e, 2, 1) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(strstr(dsv4_last_error(), "entry 0") != NULL);
    e[0].ldy = R0, e[0].yq = NULL;
    CHECK(dsv4_bk_linear_multi(b, e, 2, 1) == DSV4_ERR_INVALID_ARGUMENT);
    e[0].yq = q0, e[0].qblock = 0;
    CHECK(dsv4_bk_linear_multi(b, e, 2, 1) == DSV4_ERR_INVALID_ARGUMENT);
    free(x), free(nw), free(y0), free(q0), free(y1), free(yr), free(qr), free(y1r);
    free_weight(w0), free_weight(w1);
    dsv4_backend_destroy(b);
}

/* ---- Pool stress ---------------------------------------------------------------------------- */

enum { MAX_ITEMS = 300 };

typedef struct count_job {
    _Atomic int hits[MAX_ITEMS];
    dsv4_cpu_pool *pool; /* for nested runs */
    int nested;
} count_job;

static void count_item(int64_t i, void *ctx)
{
    count_job *j = ctx;
    atomic_fetch_add(&j->hits[i], 1);
    if (j->nested) {
        count_job inner = {.nested = 0};
        dsv4_cpu_pool_run(j->pool, 5, count_item, &inner);
        int ok = 1;
        for (int k = 0; k < 5; k++) ok &= atomic_load(&inner.hits[k]) == 1;
        if (!ok) atomic_fetch_add(&j->hits[i], 100); /* reported by the caller */
    }
}

/* Runs `jobs` jobs of varying sizes; 1 when every item ran exactly once. */
static int run_jobs(dsv4_cpu_pool *pool, int jobs, int nested)
{
    count_job *j = xmalloc(sizeof *j);
    int ok = 1;
    for (int k = 0; k < jobs; k++) {
        const int64_t n = (k * 7) % (nested ? 9 : MAX_ITEMS);
        for (int i = 0; i < MAX_ITEMS; i++) atomic_init(&j->hits[i], 0);
        j->pool = pool;
        j->nested = nested;
        dsv4_cpu_pool_run(pool, n, count_item, j);
        for (int64_t i = 0; i < MAX_ITEMS; i++) ok &= atomic_load(&j->hits[i]) == (i < n);
    }
    free(j);
    return ok;
}

typedef struct caller_arg {
    dsv4_cpu_pool *pool;
    int ok;
} caller_arg;

static void *caller_main(void *arg)
{
    caller_arg *a = arg;
    a->ok = run_jobs(a->pool, 300, 0);
    return NULL;
}

static void test_pool(void)
{
    const int sizes[] = {1, 2, 3, 5};
    for (int s = 0; s < 4; s++) {
        dsv4_cpu_pool *pool;
        CHECK(dsv4_cpu_pool_create(sizes[s], &pool) == DSV4_OK);
        CHECK(dsv4_cpu_pool_size(pool) == sizes[s]);
        CHECK_MSG(run_jobs(pool, 2000, 0), "pool of %d: tiny jobs", sizes[s]);
        CHECK_MSG(run_jobs(pool, 100, 1), "pool of %d: nested jobs", sizes[s]);
        /* Three threads submitting to the same pool at once. */
        pthread_t th[3];
        caller_arg args[3];
        for (int i = 0; i < 3; i++) {
            args[i] = (caller_arg){pool, 0};
            CHECK(pthread_create(&th[i], NULL, caller_main, &args[i]) == 0);
        }
        for (int i = 0; i < 3; i++) {
            pthread_join(th[i], NULL);
            CHECK_MSG(args[i].ok, "pool of %d: concurrent caller %d", sizes[s], i);
        }
        dsv4_cpu_pool_destroy(pool);
    }
    CHECK(run_jobs(NULL, 50, 0));
    CHECK(dsv4_cpu_pool_size(NULL) == 1);
    for (int i = 0; i < 50; i++) {
        dsv4_cpu_pool *pool;
        CHECK(dsv4_cpu_pool_create(1 + i % 4, &pool) == DSV4_OK);
        if (i % 2) CHECK(run_jobs(pool, 3, 0));
        dsv4_cpu_pool_destroy(pool);
    }
    dsv4_cpu_pool_destroy(NULL);
}

int main(void)
{
    have_avx2 = dsv4_linear_avx2_supported();
    printf("AVX2 path: %s\n", have_avx2 ? "tested" : "not available on this CPU (scalar only)");
    pools[0] = NULL;
    for (int i = 1; i < 4; i++) CHECK(dsv4_cpu_pool_create(i, &pools[i]) == DSV4_OK);
    const double t0 = test_now();
    test_pool();
    test_formats();
    test_fp8_edges();
    test_errors();
    test_multi_norm();
    for (int i = 1; i < 4; i++) dsv4_cpu_pool_destroy(pools[i]);
    printf("%.2f s\n", test_now() - t0);
    return test_finish();
}
