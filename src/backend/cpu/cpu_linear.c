/*
 * cpu_linear.c - the thread pool, and the front of the CPU projections (see cpu_linear.h): it
 * checks the arguments, reduces the weight to a dsv4_linear_plan, splits the rows into chunks
 * over the pool and calls the kernel of the best ISA (linear_avx2.c, else linear_scalar.c).
 * Weights without a fast path (integer tables, odd FP4 widths, unknown scale dtypes) go through
 * the reference row decoder on the calling thread.
 *
 * The kernels need no heap scratch (their tiles live on the stack), so a call allocates nothing
 * on the fast paths.
 */
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/linear_kernels.h"
#include "core/error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- Thread pool ----------------------------------------------------------------------------- */

struct dsv4_cpu_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t run_mu; /* one job at a time: callers on several threads queue here */
    pthread_mutex_t mu;     /* with work/done: the sleeping side of the hand-offs below */
    pthread_cond_t work, done;
    /* the job in flight: written before `epoch` is bumped (release), read after (acquire) */
    void (*fn)(int64_t, void *);
    void *ctx;
    int64_t n;
    _Atomic int64_t next;   /* next item to hand out; lock-free so items cost no mutex */
    _Atomic int active;     /* workers still inside the current job */
    _Atomic unsigned epoch; /* bumped for every job */
    _Atomic int quit;
};

/* The pool whose job this thread is running (NULL outside jobs): a job that calls
 * dsv4_cpu_pool_run on the same pool runs it inline instead of deadlocking. */
static _Thread_local const dsv4_cpu_pool *current_pool;

static void run_items(dsv4_cpu_pool *p)
{
    for (;;) {
        const int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n) return;
        p->fn(i, p->ctx);
    }
}

static void *worker(void *arg)
{
    dsv4_cpu_pool *p = arg;
    unsigned seen = 0;
    current_pool = p;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!atomic_load(&p->quit) && atomic_load(&p->epoch) == seen)
            pthread_cond_wait(&p->work, &p->mu);
        pthread_mutex_unlock(&p->mu);
        if (atomic_load(&p->quit)) break;
        seen = atomic_load(&p->epoch);
        run_items(p);
        /* The last one out wakes the caller if it went to sleep; under mu so that the caller,
         * which checks `active` under mu before waiting, cannot miss it. */
        if (atomic_fetch_sub_explicit(&p->active, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

dsv4_status dsv4_cpu_pool_create(int n_threads, dsv4_cpu_pool **out)
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    dsv4_cpu_pool *p = calloc(1, sizeof *p);
    if (!p) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating a thread pool");
    p->n_threads = 1; /* until the helpers exist: destroy joins only what was started */
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->next, 0);
    atomic_init(&p->active, 0);
    atomic_init(&p->epoch, 0u);
    atomic_init(&p->quit, 0);
    /* The calling thread works too: n_threads - 1 helpers. */
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        dsv4_cpu_pool_destroy(p);
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %d threads", n_threads);
    }
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker, p)) {
            dsv4_cpu_pool_destroy(p);
            return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "starting worker thread %d", i);
        }
        p->n_threads = i + 1;
    }
    *out = p;
    return DSV4_OK;
}

void dsv4_cpu_pool_destroy(dsv4_cpu_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->run_mu);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int dsv4_cpu_pool_size(const dsv4_cpu_pool *p)
{
    return p ? p->n_threads : 1;
}

void dsv4_cpu_pool_run(dsv4_cpu_pool *p, int64_t n, void (*fn)(int64_t, void *), void *ctx)
{
    if (!p || p->n_threads == 1 || n <= 1 || current_pool == p) {
        for (int64_t i = 0; i < n; i++) fn(i, ctx);
        return;
    }
    pthread_mutex_lock(&p->run_mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->active, p->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->epoch, 1, memory_order_release); /* publishes the job */
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);

    const dsv4_cpu_pool *outer = current_pool;
    current_pool = p;
    run_items(p);
    current_pool = outer;

    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->active, memory_order_acquire) > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->run_mu);
}

/* ---- Projections ----------------------------------------------------------------------------- */

dsv4_cpu_isa dsv4_cpu_isa_best(void)
{
    return dsv4_linear_avx2_supported() ? DSV4_CPU_ISA_AVX2 : DSV4_CPU_ISA_SCALAR;
}

/* Fills *p for weights with a fast path; 0 for the others. */
static int make_plan(const dsv4_weight *w, dsv4_linear_plan *p)
{
    const int64_t cols = w->cols;
    *p = (dsv4_linear_plan){.format = w->format,
                            .cols = cols,
                            .data = w->data,
                            .scale = w->scale,
                            .scale_kind = DSV4_LINEAR_SCALE_NONE,
                            .scale_cols = w->scale_cols,
                            .group = cols > 0 ? cols : 1,
                            .rows_per_srow = 1,
                            .out_scale = 1.0f,
                            .e4m3_lut = dsv4_linear_e4m3_table()};
    switch (w->format) {
    case DSV4_FORMAT_F32:
        p->row_bytes = cols * 4;
        return w->dtype == DSV4_DT_F32;
    case DSV4_FORMAT_BF16:
        p->row_bytes = cols * 2;
        return w->dtype == DSV4_DT_BF16;
    case DSV4_FORMAT_F16:
        p->row_bytes = cols * 2;
        return w->dtype == DSV4_DT_F16;
    case DSV4_FORMAT_FP8:
        p->row_bytes = cols;
        p->group = 128;
        p->rows_per_srow = 128;
        if (w->scale_dtype == DSV4_DT_F8_E8M0)
            p->scale_kind = DSV4_LINEAR_SCALE_E8M0;
        else if (w->scale_dtype == DSV4_DT_F32)
            p->scale_kind = DSV4_LINEAR_SCALE_F32;
        return w->scale && p->scale_kind != DSV4_LINEAR_SCALE_NONE;
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const int mx = w->format == DSV4_FORMAT_MXFP4;
        p->row_bytes = cols / 2;
        p->group = mx ? 32 : 16;
        p->out_scale = w->scale2;
        p->scale_kind = mx ? DSV4_LINEAR_SCALE_E8M0 : DSV4_LINEAR_SCALE_E4M3;
        return w->scale && cols % p->group == 0 &&
               w->scale_dtype == (mx ? DSV4_DT_F8_E8M0 : DSV4_DT_F8_E4M3);
    }
    case DSV4_FORMAT_INT:
    case DSV4_FORMAT_COUNT:
        break;
    }
    return 0;
}

typedef struct linear_job {
    const dsv4_linear_plan *plan;
    dsv4_cpu_isa isa;
    int64_t row0, nrows, chunk, n_tokens;
    const float *x;
    float *y;
} linear_job;

static void linear_item(int64_t item, void *ctx)
{
    const linear_job *j = ctx;
    const int64_t first = item * j->chunk;
    const int64_t last = first + j->chunk < j->nrows ? first + j->chunk : j->nrows;
    float *y = j->y + first;
    if (j->isa == DSV4_CPU_ISA_AVX2)
        dsv4_linear_rows_avx2(j->plan, j->row0 + first, j->row0 + last, j->x, j->n_tokens, y,
                              j->nrows);
    else
        dsv4_linear_rows_scalar(j->plan, j->row0 + first, j->row0 + last, j->x, j->n_tokens, y,
                                j->nrows);
}

/* Weights without a plan: reference decoding of each row, one row buffer for the whole call. */
static dsv4_status linear_reference(const dsv4_weight *w, int64_t row0, int64_t nrows,
                                    const float *x, int64_t n_tokens, float *y)
{
    const int64_t cols = w->cols;
    float *row = malloc((size_t)(cols > 0 ? cols : 1) * sizeof *row);
    if (!row)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: a row of %lld floats", w->name,
                         (long long)cols);
    for (int64_t r = 0; r < nrows; r++) {
        const dsv4_status st = dsv4_weight_dequant_row(w, row0 + r, row);
        if (st != DSV4_OK) {
            free(row);
            return dsv4_fail_context(st, "%s: cannot multiply by a %s weight", w->name,
                                     dsv4_weight_format_name(w->format));
        }
        for (int64_t t = 0; t < n_tokens; t++) {
            const float *xt = x + t * cols;
            float acc = 0.0f;
            for (int64_t c = 0; c < cols; c++) acc += xt[c] * row[c];
            y[t * nrows + r] = acc;
        }
    }
    free(row);
    return DSV4_OK;
}

dsv4_status dsv4_cpu_linear_rows_isa(dsv4_cpu_pool *pool, const dsv4_weight *w, int64_t row0,
                                     int64_t nrows, const float *x, int64_t n_tokens, float *y,
                                     dsv4_cpu_isa isa)
{
    if (row0 < 0 || nrows < 0 || row0 + nrows > w->rows)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: rows [%lld, %lld) outside [0, %lld)",
                         w->name, (long long)row0, (long long)(row0 + nrows), (long long)w->rows);
    if (n_tokens < 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: %lld tokens", w->name,
                         (long long)n_tokens);
    if (isa == DSV4_CPU_ISA_AVX2 && !dsv4_linear_avx2_supported())
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "this CPU lacks AVX2/FMA/F16C");
    if (nrows == 0 || n_tokens == 0) return DSV4_OK;

    dsv4_linear_plan plan;
    if (!make_plan(w, &plan)) return linear_reference(w, row0, nrows, x, n_tokens, y);

    /* About four chunks per thread for balance, each a whole number of the kernels' row tiles
     * (4 rows for T = 1, 16 for T > 1), at least 16 rows so an item is worth the hand-off.
     * Results do not depend on the chunking (see linear_kernels.h). */
    const int64_t align = n_tokens == 1 ? 4 : 16;
    const int64_t items = 4 * (int64_t)dsv4_cpu_pool_size(pool);
    int64_t chunk = (nrows + items - 1) / items;
    chunk = (chunk + align - 1) / align * align;
    if (chunk < 16) chunk = 16;
    linear_job j = {&plan, isa, row0, nrows, chunk, n_tokens, x, y};
    dsv4_cpu_pool_run(pool, (nrows + chunk - 1) / chunk, linear_item, &j);
    return DSV4_OK;
}

dsv4_status dsv4_cpu_linear_rows(dsv4_cpu_pool *pool, const dsv4_weight *w, int64_t row0,
                                 int64_t nrows, const float *x, int64_t n_tokens, float *y)
{
    return dsv4_cpu_linear_rows_isa(pool, w, row0, nrows, x, n_tokens, y, dsv4_cpu_isa_best());
}

dsv4_status dsv4_cpu_linear(dsv4_cpu_pool *pool, const dsv4_weight *w, const float *x,
                            int64_t n_tokens, float *y)
{
    return dsv4_cpu_linear_rows(pool, w, 0, w->rows, x, n_tokens, y);
}
