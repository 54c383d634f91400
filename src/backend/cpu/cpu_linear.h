/*
 * cpu_linear.h - the CPU matrix products every projection of the model goes through.
 *
 *   y[t][r] = sum_c x[t][c] * W[r][c]      W: dsv4_weight [rows, cols] in its stored format
 *   x: [n_tokens, cols] f32 row-major      y: [n_tokens, rows] f32 row-major
 *
 * Weights are dequantised on the fly, never expanded to an f32 copy of the matrix: for one token
 * (decode) the decoding is fused into the dot products; for several tokens, tiles of rows are
 * decoded into a small stack buffer and used for every token (linear_avx2.c, linear_scalar.c).
 * Sums are accumulated in f32 in an order that depends only on the format, cols, n_tokens and
 * ISA (never on the thread count), so results are deterministic; one-token and many-token calls
 * may differ in the last bits.
 *
 * A dsv4_cpu_pool runs the rows in parallel (pthreads); pass NULL to run on the calling thread.
 */
#ifndef DSV4_BACKEND_CPU_LINEAR_H
#define DSV4_BACKEND_CPU_LINEAR_H

#include "dsv4.h"
#include "model/weights.h"

typedef struct dsv4_cpu_pool dsv4_cpu_pool;

/* n_threads <= 0: one per online CPU. */
dsv4_status dsv4_cpu_pool_create(int n_threads, dsv4_cpu_pool **out);
void dsv4_cpu_pool_destroy(dsv4_cpu_pool *pool);
int dsv4_cpu_pool_size(const dsv4_cpu_pool *pool);
/* Runs fn(i, ctx) for i in [0, n) across the pool and waits. fn must be thread-safe. */
void dsv4_cpu_pool_run(dsv4_cpu_pool *pool, int64_t n, void (*fn)(int64_t i, void *ctx), void *ctx);

/* y = x W^T as above. Only rows [row0, row0 + nrows) of W: y is then [n_tokens, nrows]. */
dsv4_status dsv4_cpu_linear_rows(dsv4_cpu_pool *pool, const dsv4_weight *w, int64_t row0,
                                 int64_t nrows, const float *x, int64_t n_tokens, float *y);
dsv4_status dsv4_cpu_linear(dsv4_cpu_pool *pool, const dsv4_weight *w, const float *x,
                            int64_t n_tokens, float *y);

#endif
