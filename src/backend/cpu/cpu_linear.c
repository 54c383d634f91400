/*
 * cpu_linear.c - reference CPU projections over weights in any stored format, and the thread
 * pool that spreads them over cores (see cpu_linear.h).
 */
#include "backend/cpu/cpu_linear.h"
#include "core/error.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct dsv4_cpu_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    /* the job in flight */
    void (*fn)(int64_t, void *);
    void *ctx;
    int64_t n, next;
    int active;     /* workers still inside the current job */
    unsigned epoch; /* bumped for every job */
    int quit;
};

static void run_items(dsv4_cpu_pool *p)
{
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int64_t i = p->next < p->n ? p->next++ : -1;
        pthread_mutex_unlock(&p->mu);
        if (i < 0) return;
        p->fn(i, p->ctx);
    }
}

static void *worker(void *arg)
{
    dsv4_cpu_pool *p = arg;
    unsigned seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->epoch == seen) pthread_cond_wait(&p->work, &p->mu);
        if (p->quit) break;
        seen = p->epoch;
        pthread_mutex_unlock(&p->mu);
        run_items(p);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
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
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    /* The calling thread works too: n_threads - 1 helpers. */
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        dsv4_cpu_pool_destroy(p);
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %d threads", n_threads);
    }
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker, p)) {
            p->n_threads = i;
            dsv4_cpu_pool_destroy(p);
            return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "starting worker thread %d", i);
        }
    }
    *out = p;
    return DSV4_OK;
}

void dsv4_cpu_pool_destroy(dsv4_cpu_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
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
    if (!p || p->n_threads == 1 || n <= 1) {
        for (int64_t i = 0; i < n; i++) fn(i, ctx);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->next = 0;
    p->active = p->n_threads - 1;
    p->epoch++;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    run_items(p);
    pthread_mutex_lock(&p->mu);
    while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* Rows are handed out in chunks so that the lock is taken rarely. */
enum { ROWS_PER_ITEM = 16 };

typedef struct linear_job {
    const dsv4_weight *w;
    int64_t row0, nrows, n_tokens;
    const float *x;
    float *y;
    dsv4_status status;
} linear_job;

static void linear_item(int64_t item, void *ctx)
{
    linear_job *j = ctx;
    const int64_t cols = j->w->cols;
    float *row = malloc((size_t)cols * sizeof *row);
    if (!row) {
        j->status = DSV4_ERR_OUT_OF_MEMORY; /* a benign race: every writer stores the same value */
        return;
    }
    const int64_t first = item * ROWS_PER_ITEM;
    const int64_t last = first + ROWS_PER_ITEM < j->nrows ? first + ROWS_PER_ITEM : j->nrows;
    for (int64_t r = first; r < last; r++) {
        if (dsv4_weight_dequant_row(j->w, j->row0 + r, row) != DSV4_OK) {
            j->status = DSV4_ERR_UNSUPPORTED;
            break;
        }
        for (int64_t t = 0; t < j->n_tokens; t++) {
            const float *xt = j->x + t * cols;
            float acc = 0.0f;
            for (int64_t c = 0; c < cols; c++) acc += xt[c] * row[c];
            j->y[t * j->nrows + r] = acc;
        }
    }
    free(row);
}

dsv4_status dsv4_cpu_linear_rows(dsv4_cpu_pool *pool, const dsv4_weight *w, int64_t row0,
                                 int64_t nrows, const float *x, int64_t n_tokens, float *y)
{
    if (row0 < 0 || nrows < 0 || row0 + nrows > w->rows)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: rows [%lld, %lld) outside [0, %lld)",
                         w->name, (long long)row0, (long long)(row0 + nrows), (long long)w->rows);
    linear_job j = {w, row0, nrows, n_tokens, x, y, DSV4_OK};
    dsv4_cpu_pool_run(pool, (nrows + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM, linear_item, &j);
    if (j.status != DSV4_OK)
        return dsv4_fail(j.status, "%s: cannot multiply by a %s weight", w->name,
                         dsv4_weight_format_name(w->format));
    return DSV4_OK;
}

dsv4_status dsv4_cpu_linear(dsv4_cpu_pool *pool, const dsv4_weight *w, const float *x,
                            int64_t n_tokens, float *y)
{
    return dsv4_cpu_linear_rows(pool, w, 0, w->rows, x, n_tokens, y);
}
