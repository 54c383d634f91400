/*
 * backend.c - creating a backend and routing each dsv4_bk_* op to its CPU or CUDA
 * implementation (backend_impl.h); the CPU's memory ops and wall-clock op timing live here too.
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef DSV4_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

dsv4_status dsv4_backend_create(dsv4_device_kind kind, int device, dsv4_cpu_pool *pool,
                                dsv4_backend **out)
{
    *out = NULL;
    dsv4_backend *b = calloc(1, sizeof *b);
    if (!b) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating a backend");
    b->kind = kind;
    b->pool = pool;
    if (kind == DSV4_DEVICE_CUDA) {
#ifdef DSV4_HAVE_CUDA
        dsv4_status st = dsv4_cuda_ctx_create(device, &b->cuda);
        if (st != DSV4_OK) {
            free(b);
            return st;
        }
#else
        free(b);
        return dsv4_fail(DSV4_ERR_DEVICE, "this build of dsv4 has no CUDA backend");
#endif
    } else if (kind != DSV4_DEVICE_CPU) {
        free(b);
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "backend kind %d is not cpu or cuda",
                         (int)kind);
    }
    *out = b;
    return DSV4_OK;
}

void dsv4_backend_destroy(dsv4_backend *b)
{
    if (!b) return;
    dsv4_bk_prof_stop(b, NULL, 0);
#ifdef DSV4_HAVE_CUDA
    if (b->cuda) dsv4_cuda_ctx_destroy(b->cuda);
#endif
    free(b);
}

/* ---- memory: CUDA in backend/cuda/bk_memory.cu, the CPU here ------------------------------ */
#ifdef DSV4_HAVE_CUDA
#define CUDA_ROUTE(call)                                                                           \
    do {                                                                                           \
        if (b->kind == DSV4_DEVICE_CUDA) return call;                                              \
    } while (0)
#else
#define CUDA_ROUTE(call) ((void)0)
#endif

dsv4_status dsv4_bk_alloc(dsv4_backend *b, size_t bytes, void **out)
{
    CUDA_ROUTE(dsv4_cuda_bk_alloc(b, bytes, out));
    *out = calloc(1, bytes ? bytes : 1);
    if (!*out) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %zu bytes", bytes);
    return DSV4_OK;
}

void dsv4_bk_free(dsv4_backend *b, void *p)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) {
        dsv4_cuda_bk_free(b, p);
        return;
    }
#endif
    free(p);
}

dsv4_status dsv4_bk_upload(dsv4_backend *b, void *dst, const void *src, size_t bytes)
{
    CUDA_ROUTE(dsv4_cuda_bk_upload(b, dst, src, bytes));
    if (bytes) memcpy(dst, src, bytes);
    return DSV4_OK;
}

dsv4_status dsv4_bk_download(dsv4_backend *b, void *dst, const void *src, size_t bytes)
{
    CUDA_ROUTE(dsv4_cuda_bk_download(b, dst, src, bytes));
    if (bytes) memcpy(dst, src, bytes);
    return DSV4_OK;
}

dsv4_status dsv4_bk_copy(dsv4_backend *b, void *dst, const void *src, size_t bytes)
{
    CUDA_ROUTE(dsv4_cuda_bk_copy(b, dst, src, bytes));
    if (bytes) memmove(dst, src, bytes);
    return DSV4_OK;
}

dsv4_status dsv4_bk_memset0(dsv4_backend *b, void *p, size_t bytes)
{
    CUDA_ROUTE(dsv4_cuda_bk_memset0(b, p, bytes));
    if (bytes) memset(p, 0, bytes);
    return DSV4_OK;
}

dsv4_status dsv4_bk_fill_bf16(dsv4_backend *b, uint16_t *p, size_t n, uint64_t seed)
{
    CUDA_ROUTE(dsv4_cuda_bk_fill_bf16(b, p, n, seed));
    for (size_t i = 0; i < n; i++) p[i] = dsv4_fill_bf16_bits(seed, i);
    return DSV4_OK;
}

dsv4_status dsv4_bk_fill_kv(dsv4_backend *b, uint8_t *p, const dsv4_kv_layout *l, int64_t n,
                            uint64_t seed)
{
    CUDA_ROUTE(dsv4_cuda_bk_fill_kv(b, p, l, n, seed));
    const int64_t bytes = dsv4_kv_bytes(l, n);
    for (int64_t i = 0; i < bytes; i++) p[i] = dsv4_fill_kv_byte(l, seed, i);
    return DSV4_OK;
}

dsv4_status dsv4_bk_sync(dsv4_backend *b)
{
    CUDA_ROUTE(dsv4_cuda_bk_sync(b));
    return DSV4_OK;
}

dsv4_status dsv4_bk_mem_info(dsv4_backend *b, size_t *free_bytes, size_t *total_bytes)
{
    CUDA_ROUTE(dsv4_cuda_bk_mem_info(b, free_bytes, total_bytes));
    const long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
    const long page = sysconf(_SC_PAGESIZE);
    *total_bytes = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
    *free_bytes = avail > 0 && page > 0 ? (size_t)avail * (size_t)page : 0;
    return DSV4_OK;
}

dsv4_status dsv4_bk_weight_upload(dsv4_backend *b, const dsv4_weight *w, uint64_t random_seed,
                                  dsv4_weight *out)
{
    CUDA_ROUTE(dsv4_cuda_bk_weight_upload(b, w, random_seed, out));
    *out = *w;
    if (!random_seed) return DSV4_OK; /* the CPU reads the mapped bytes in place */
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: random weights are a CUDA benchmark feature",
                     w->name);
}

void dsv4_bk_weight_free(dsv4_backend *b, dsv4_weight *w)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) {
        dsv4_cuda_bk_weight_free(b, w);
        return;
    }
#endif
    w->data = w->scale = NULL; /* mapped bytes belong to the model */
}

/* ---- graphs: CUDA only --------------------------------------------------------------------- */
static dsv4_status no_graphs(void)
{
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "CUDA graphs need the CUDA backend");
}

dsv4_status dsv4_bk_graph_begin(dsv4_backend *b)
{
    CUDA_ROUTE(dsv4_cuda_bk_graph_begin(b));
    return no_graphs();
}

dsv4_status dsv4_bk_graph_end(dsv4_backend *b, void **graph)
{
    CUDA_ROUTE(dsv4_cuda_bk_graph_end(b, graph));
    *graph = NULL;
    return no_graphs();
}

dsv4_status dsv4_bk_graph_launch(dsv4_backend *b, void *graph)
{
    CUDA_ROUTE(dsv4_cuda_bk_graph_launch(b, graph));
    return no_graphs();
}

static dsv4_status no_trace(void)
{
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "the kernel trace needs the CUDA backend");
}

dsv4_status dsv4_bk_trace_begin(dsv4_backend *b, int64_t max_records)
{
    CUDA_ROUTE(dsv4_cuda_bk_trace_begin(b, max_records));
    (void)max_records;
    return no_trace();
}

dsv4_status dsv4_bk_trace_end(dsv4_backend *b, const char *path, const char *tag)
{
    CUDA_ROUTE(dsv4_cuda_bk_trace_end(b, path, tag));
    (void)path, (void)tag;
    return no_trace();
}

void dsv4_bk_graph_free(dsv4_backend *b, void *graph)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) dsv4_cuda_bk_graph_free(b, graph);
#endif
    (void)b;
    (void)graph;
}

/* ---- side stream: CUDA only, serial (no-ops) on the CPU and under the op timer ------------- */
#ifdef DSV4_HAVE_CUDA
static int side_streams(const dsv4_backend *b)
{
    return b->kind == DSV4_DEVICE_CUDA && !b->prof;
}
#endif

dsv4_status dsv4_bk_side_mark(dsv4_backend *b)
{
#ifdef DSV4_HAVE_CUDA
    if (side_streams(b)) return dsv4_cuda_side_mark(b->cuda);
#endif
    (void)b;
    return DSV4_OK;
}

dsv4_status dsv4_bk_side_begin_marked(dsv4_backend *b)
{
#ifdef DSV4_HAVE_CUDA
    if (side_streams(b)) return dsv4_cuda_side_begin_marked(b->cuda);
#endif
    (void)b;
    return DSV4_OK;
}

dsv4_status dsv4_bk_side_begin(dsv4_backend *b)
{
#ifdef DSV4_HAVE_CUDA
    if (side_streams(b)) return dsv4_cuda_side_begin(b->cuda);
#endif
    (void)b;
    return DSV4_OK;
}

dsv4_status dsv4_bk_side_end(dsv4_backend *b)
{
#ifdef DSV4_HAVE_CUDA
    if (side_streams(b)) return dsv4_cuda_side_end(b->cuda);
#endif
    (void)b;
    return DSV4_OK;
}

dsv4_status dsv4_bk_side_join(dsv4_backend *b)
{
#ifdef DSV4_HAVE_CUDA
    if (side_streams(b)) return dsv4_cuda_side_join(b->cuda);
#endif
    (void)b;
    return DSV4_OK;
}

dsv4_status dsv4_bk_side_join_settled(dsv4_backend *b)
{
#ifdef DSV4_HAVE_CUDA
    if (side_streams(b)) return dsv4_cuda_side_join_settled(b->cuda);
#endif
    (void)b;
    return DSV4_OK;
}

/* ---- compute ops: one router each ---------------------------------------------------------- */
dsv4_status dsv4_bk_embed(dsv4_backend *b, float *X, const dsv4_weight *embed,
                          const dsv4_bk_rows *rows, int n_copies, int64_t D)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) return dsv4_cuda_bk_embed(b, X, embed, rows, n_copies, D);
#endif
    return dsv4_cpu_bk_embed(b, X, embed, rows, n_copies, D);
}

dsv4_status dsv4_bk_rmsnorm(dsv4_backend *b, float *y, int64_t ldy, const float *x, int64_t ldx,
                            const float *w, int64_t N, int64_t width, float eps, int round_bf16)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_rmsnorm(b, y, ldy, x, ldx, w, N, width, eps, round_bf16);
#endif
    return dsv4_cpu_bk_rmsnorm(b, y, ldy, x, ldx, w, N, width, eps, round_bf16);
}

dsv4_status dsv4_bk_head_norm_bf16(dsv4_backend *b, float *q, int64_t n_vec, int c, float eps)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) return dsv4_cuda_bk_head_norm_bf16(b, q, n_vec, c, eps);
#endif
    return dsv4_cpu_bk_head_norm_bf16(b, q, n_vec, c, eps);
}

dsv4_status dsv4_bk_act_quant(dsv4_backend *b, float *y, int64_t ldy, const float *x, int64_t ldx,
                              int64_t N, int64_t width, int block)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_act_quant(b, y, ldy, x, ldx, N, width, block);
#endif
    return dsv4_cpu_bk_act_quant(b, y, ldy, x, ldx, N, width, block);
}

dsv4_status dsv4_bk_scale(dsv4_backend *b, float *x, int64_t n, float s, int round_bf16)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) return dsv4_cuda_bk_scale(b, x, n, s, round_bf16);
#endif
    return dsv4_cpu_bk_scale(b, x, n, s, round_bf16);
}

dsv4_status dsv4_bk_rope(dsv4_backend *b, float *x, int64_t ldx, const dsv4_bk_rows *rows,
                         int n_vec, int dim, int r, const float *freqs, int inverse, int round_bf16)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_rope(b, x, ldx, rows, n_vec, dim, r, freqs, inverse, round_bf16);
#endif
    return dsv4_cpu_bk_rope(b, x, ldx, rows, n_vec, dim, r, freqs, inverse, round_bf16);
}

dsv4_status dsv4_bk_rmsnorm_quant(dsv4_backend *b, float *y, float *yq, const float *x,
                                  const float *w, int64_t N, int64_t width, float eps, int block)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_rmsnorm_quant(b, y, yq, x, w, N, width, eps, block);
#endif
    return dsv4_cpu_bk_rmsnorm_quant(b, y, yq, x, w, N, width, eps, block);
}

dsv4_status dsv4_bk_head_norm_rope(dsv4_backend *b, float *q, const dsv4_bk_rows *rows, int H,
                                   int hd, int r, const float *freqs, float eps)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_head_norm_rope(b, q, rows, H, hd, r, freqs, eps);
#endif
    return dsv4_cpu_bk_head_norm_rope(b, q, rows, H, hd, r, freqs, eps);
}

dsv4_status dsv4_bk_kv_norm_rope_store(dsv4_backend *b, uint8_t *win, int R, float *kv,
                                       const float *w, const dsv4_bk_rows *rows, int hd, int r,
                                       const float *freqs, float eps, int qblock)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_kv_norm_rope_store(b, win, R, kv, w, rows, hd, r, freqs, eps, qblock);
#endif
    return dsv4_cpu_bk_kv_norm_rope_store(b, win, R, kv, w, rows, hd, r, freqs, eps, qblock);
}

dsv4_status dsv4_bk_q_kv_norm_rope(dsv4_backend *b, float *q, int H, uint8_t *win, int R, float *kv,
                                   const float *w, const dsv4_bk_rows *rows, int hd, int r,
                                   const float *freqs, float eps, int qblock)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_q_kv_norm_rope(b, q, H, win, R, kv, w, rows, hd, r, freqs, eps,
                                           qblock);
#endif
    DSV4_TRY(dsv4_cpu_bk_head_norm_rope(b, q, rows, H, hd, r, freqs, eps));
    return dsv4_cpu_bk_kv_norm_rope_store(b, win, R, kv, w, rows, hd, r, freqs, eps, qblock);
}

dsv4_status dsv4_bk_linear(dsv4_backend *b, const dsv4_weight *w, int64_t row0, int64_t nrows,
                           const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy,
                           int round_bf16)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_linear(b, w, row0, nrows, x, ldx, N, y, ldy, round_bf16);
#endif
    return dsv4_cpu_bk_linear(b, w, row0, nrows, x, ldx, N, y, ldy, round_bf16);
}

dsv4_status dsv4_bk_linear_aq(dsv4_backend *b, const dsv4_weight *w, const float *x, int64_t ldx,
                              float *xq, int64_t N, float *y, int64_t ldy, int round_bf16)
{
    if (!w || N < 0 || ldx < w->cols || ldy < w->rows || (N > 0 && (!x || !xq || !y)))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "linear_aq %s [%lld, %lld]: N %lld, ldx %lld, ldy %lld",
                         w ? w->name : "(no weight)", w ? (long long)w->rows : 0LL,
                         w ? (long long)w->cols : 0LL, (long long)N, (long long)ldx,
                         (long long)ldy);
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_linear_aq(b, w, x, ldx, xq, N, y, ldy, round_bf16);
#endif
    return dsv4_cpu_bk_linear_aq(b, w, x, ldx, xq, N, y, ldy, round_bf16);
}

dsv4_status dsv4_bk_linear_grouped(dsv4_backend *b, const dsv4_weight *w, int groups,
                                   const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy,
                                   int round_bf16)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_linear_grouped(b, w, groups, x, ldx, N, y, ldy, round_bf16);
#endif
    return dsv4_cpu_bk_linear_grouped(b, w, groups, x, ldx, N, y, ldy, round_bf16);
}

dsv4_bk_linear_entry dsv4_bk_lin_entry(const dsv4_weight *w, const float *x, int64_t ldx, float *y,
                                       int64_t ldy, int round_bf16)
{
    return (dsv4_bk_linear_entry){
        .w = w, .x = x, .ldx = ldx, .y = y, .ldy = ldy, .round_bf16 = round_bf16};
}

dsv4_status dsv4_bk_linear_multi(dsv4_backend *b, const dsv4_bk_linear_entry *e, int n, int64_t N)
{
    for (int i = 0; i < n && e; i++) /* the norm's terms; the backends check the rest */
        if (e[i].norm && e[i].w && (e[i].ldy != e[i].w->rows || !e[i].yq || e[i].qblock < 1))
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                             "linear_multi entry %d %s: a norm needs ldy %lld = rows %lld, yq and "
                             "qblock >= 1 (yq %s, qblock %d)",
                             i, e[i].w->name, (long long)e[i].ldy, (long long)e[i].w->rows,
                             e[i].yq ? "set" : "NULL", e[i].qblock);
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) return dsv4_cuda_bk_linear_multi(b, e, n, N);
#endif
    return dsv4_cpu_bk_linear_multi(b, e, n, N);
}

dsv4_status dsv4_bk_hc_pre(dsv4_backend *b, float *y, float *post, float *comb, const float *X,
                           const float *mix, const float *base, const float *scale, int64_t N,
                           int n, int64_t D, int iters, float eps)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_hc_pre(b, y, post, comb, X, mix, base, scale, N, n, D, iters, eps);
#endif
    return dsv4_cpu_bk_hc_pre(b, y, post, comb, X, mix, base, scale, N, n, D, iters, eps);
}

dsv4_status dsv4_bk_hc_post(dsv4_backend *b, float *Xo, const float *X, const float *f,
                            const float *post, const float *comb, int64_t N, int n, int64_t D)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) return dsv4_cuda_bk_hc_post(b, Xo, X, f, post, comb, N, n, D);
#endif
    return dsv4_cpu_bk_hc_post(b, Xo, X, f, post, comb, N, n, D);
}

dsv4_status dsv4_bk_hc_head(dsv4_backend *b, float *y, const float *X, const float *mix,
                            const float *base, float scale, int64_t N, int n, int64_t D, float eps)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_hc_head(b, y, X, mix, base, scale, N, n, D, eps);
#endif
    return dsv4_cpu_bk_hc_head(b, y, X, mix, base, scale, N, n, D, eps);
}

dsv4_status dsv4_bk_hc_site(dsv4_backend *b, float *h, float *xq, float *y, float *mix, float *post,
                            float *comb, const float *X, const dsv4_weight *fn, const float *base,
                            const float *scale, const float *norm, int64_t N, int n, int64_t D,
                            int iters, float hc_eps, float rms_eps)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_hc_site(b, h, xq, y, mix, post, comb, X, fn, base, scale, norm, N, n, D,
                                    iters, hc_eps, rms_eps);
#endif
    return dsv4_cpu_bk_hc_site(b, h, xq, y, mix, post, comb, X, fn, base, scale, norm, N, n, D,
                               iters, hc_eps, rms_eps);
}

dsv4_status dsv4_bk_hc_seam(dsv4_backend *b, float *h, float *xq, float *Xo, float *post,
                            float *comb, const float *X, const float *f, const float *post_in,
                            const float *comb_in, const dsv4_weight *fn, const float *base,
                            const float *scale, const float *norm, int64_t N, int n, int64_t D,
                            int iters, float hc_eps, float rms_eps)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_hc_seam(b, h, xq, Xo, post, comb, X, f, post_in, comb_in, fn, base,
                                    scale, norm, N, n, D, iters, hc_eps, rms_eps);
#endif
    return dsv4_cpu_bk_hc_seam(b, h, xq, Xo, post, comb, X, f, post_in, comb_in, fn, base, scale,
                               norm, N, n, D, iters, hc_eps, rms_eps);
}

dsv4_status dsv4_bk_hc_seam_weights(dsv4_backend *b, float *post, float *comb, const float *X,
                                    const float *f, const float *post_in, const float *comb_in,
                                    const dsv4_weight *fn, const float *base, const float *scale,
                                    int64_t N, int n, int64_t D, int iters, float hc_eps,
                                    float rms_eps)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_hc_seam_weights(b, post, comb, X, f, post_in, comb_in, fn, base, scale,
                                            N, n, D, iters, hc_eps, rms_eps);
#endif
    return dsv4_cpu_bk_hc_seam_weights(b, post, comb, X, f, post_in, comb_in, fn, base, scale, N, n,
                                       D, iters, hc_eps, rms_eps);
}

dsv4_status dsv4_bk_hc_head_site(dsv4_backend *b, float *h, float *Xo, const float *X,
                                 const float *f, const float *post_in, const float *comb_in,
                                 const dsv4_weight *fn, const float *base, float scale,
                                 const float *norm, int64_t N, int n, int64_t D, float hc_eps,
                                 float rms_eps)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_hc_head_site(b, h, Xo, X, f, post_in, comb_in, fn, base, scale, norm,
                                         N, n, D, hc_eps, rms_eps);
#endif
    return dsv4_cpu_bk_hc_head_site(b, h, Xo, X, f, post_in, comb_in, fn, base, scale, norm, N, n,
                                    D, hc_eps, rms_eps);
}

dsv4_status dsv4_bk_kv_store(dsv4_backend *b, uint8_t *win, int R, int hd, int r, const float *kv,
                             const dsv4_bk_rows *rows)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) return dsv4_cuda_bk_kv_store(b, win, R, hd, r, kv, rows);
#endif
    return dsv4_cpu_bk_kv_store(b, win, R, hd, r, kv, rows);
}

dsv4_status dsv4_bk_comp_append(dsv4_backend *b, void *ent, int64_t cap_e, float *ring_kv,
                                float *ring_gate, int Rc, int width, int dim, int m,
                                const float *kv, const float *gate, const float *ape,
                                const float *norm, float eps, const float *freqs, int r,
                                int is_index, const dsv4_bk_rows *rows)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_comp_append(b, ent, cap_e, ring_kv, ring_gate, Rc, width, dim, m, kv,
                                        gate, ape, norm, eps, freqs, r, is_index, rows);
#endif
    return dsv4_cpu_bk_comp_append(b, ent, cap_e, ring_kv, ring_gate, Rc, width, dim, m, kv, gate,
                                   ape, norm, eps, freqs, r, is_index, rows);
}

/* The CPU: each job's dsv4_cpu_bk_comp_append in turn. */
dsv4_status dsv4_bk_comp_append_multi(dsv4_backend *b, const dsv4_bk_comp_job *jobs, int n,
                                      float eps, const float *freqs, int r,
                                      const dsv4_bk_rows *rows)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_comp_append_multi(b, jobs, n, eps, freqs, r, rows);
#endif
    for (int k = 0; k < n; k++) {
        const dsv4_bk_comp_job *j = &jobs[k];
        DSV4_TRY(dsv4_cpu_bk_comp_append(b, j->ent, j->cap_e, j->ring_kv, j->ring_gate, j->Rc,
                                         j->width, j->dim, j->m, j->kv, j->gate, j->ape, j->norm,
                                         eps, freqs, r, j->is_index, rows));
    }
    return DSV4_OK;
}

dsv4_status dsv4_bk_indexer_q(dsv4_backend *b, float *iq, const dsv4_bk_rows *rows, int nh, int d,
                              int r, const float *freqs)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) return dsv4_cuda_bk_indexer_q(b, iq, rows, nh, d, r, freqs);
#endif
    return dsv4_cpu_bk_indexer_q(b, iq, rows, nh, d, r, freqs);
}

dsv4_status dsv4_bk_indexer_topk(dsv4_backend *b, int32_t *sel, const float *iq, const float *iw,
                                 float w_scale, const uint8_t *ent, int64_t cap_e, int nh, int d,
                                 int m, int topk, const dsv4_bk_rows *rows, void *ws)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_indexer_topk(b, sel, iq, iw, w_scale, ent, cap_e, nh, d, m, topk, rows,
                                         ws);
#endif
    return dsv4_cpu_bk_indexer_topk(b, sel, iq, iw, w_scale, ent, cap_e, nh, d, m, topk, rows, ws);
}

/* The CPU: dsv4_cpu_bk_indexer_q, then dsv4_cpu_bk_indexer_topk. */
dsv4_status dsv4_bk_indexer_q_topk(dsv4_backend *b, int32_t *sel, float *iq, const float *iw,
                                   float w_scale, const uint8_t *ent, int64_t cap_e, int nh, int d,
                                   int r, const float *freqs, int m, int topk,
                                   const dsv4_bk_rows *rows, void *ws, const int32_t *after)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_indexer_q_topk(b, sel, iq, iw, w_scale, ent, cap_e, nh, d, r, freqs, m,
                                           topk, rows, ws, after);
#endif
    /* the CPU runs the ops in issue order: after's producer has run */
    if (after && *after != 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "indexer_q_topk: its signal (after) is not set (%d)", (int)*after);
    DSV4_TRY(dsv4_cpu_bk_indexer_q(b, iq, rows, nh, d, r, freqs));
    return dsv4_cpu_bk_indexer_topk(b, sel, iq, iw, w_scale, ent, cap_e, nh, d, m, topk, rows, ws);
}

dsv4_status dsv4_bk_attention(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                              const uint8_t *win, int R, int W, const uint8_t *ent, int64_t cap_e,
                              int m, const int32_t *sel, int topk, const float *sink,
                              const dsv4_bk_rows *rows, int rope_r, const float *rope_freqs)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_attention(b, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink,
                                      rows, rope_r, rope_freqs);
#endif
    return dsv4_cpu_bk_attention(b, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink,
                                 rows, rope_r, rope_freqs);
}

dsv4_status dsv4_bk_router(dsv4_backend *b, int32_t *sel, float *wts, const float *logits,
                           const float *bias, const int32_t *tid2eid, const dsv4_bk_rows *rows,
                           int E, int K, float route_scale)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_router(b, sel, wts, logits, bias, tid2eid, rows, E, K, route_scale);
#endif
    return dsv4_cpu_bk_router(b, sel, wts, logits, bias, tid2eid, rows, E, K, route_scale);
}

dsv4_status dsv4_bk_experts_create(dsv4_backend *b, const dsv4_expert_weights *experts, int E,
                                   const dsv4_expert_weights *shared, dsv4_bk_experts **out)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) return dsv4_cuda_bk_experts_create(b, experts, E, shared, out);
#endif
    return dsv4_cpu_bk_experts_create(b, experts, E, shared, out);
}

void dsv4_bk_experts_free(dsv4_backend *b, dsv4_bk_experts *t)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) {
        dsv4_cuda_bk_experts_free(b, t);
        return;
    }
#endif
    dsv4_cpu_bk_experts_free(b, t);
}

dsv4_status dsv4_bk_moe(dsv4_backend *b, float *out, const float *h, const int32_t *sel,
                        const float *wts, const dsv4_bk_experts *t, int64_t N, int K, int64_t D,
                        float limit, void *ws)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_moe(b, out, h, sel, wts, t, N, K, D, limit, ws);
#endif
    return dsv4_cpu_bk_moe(b, out, h, sel, wts, t, N, K, D, limit, ws);
}

dsv4_status dsv4_bk_moe_routed(dsv4_backend *b, float *out, int32_t *sel, float *wts,
                               const float *h, const float *logits, const float *bias,
                               const int32_t *tid2eid, const dsv4_bk_rows *rows,
                               const dsv4_bk_experts *t, int E, int K, int64_t D,
                               float route_scale, float limit, void *ws)
{
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA)
        return dsv4_cuda_bk_moe_routed(b, out, sel, wts, h, logits, bias, tid2eid, rows, t, E, K,
                                       D, route_scale, limit, ws);
#endif
    DSV4_TRY(dsv4_cpu_bk_router(b, sel, wts, logits, bias, tid2eid, rows, E, K, route_scale));
    return dsv4_cpu_bk_moe(b, out, h, sel, wts, t, rows->n, K, D, limit, ws);
}
