/*
 * bk_rows.c - CPU implementation of the per-row ops of backend.h: embedding, RMSNorm, the
 * per-head query norm, act_quant, scaling, RoPE, the fused q / kv chains of the attention (here
 * the compositions of those ops they stand for) and the mHC sites. This is the reference the
 * CUDA ops are tested against, so every op is the session forward's own code (ops.h,
 * quant_sim.h, weights.c) applied row by row, rounded to bf16 exactly where model/forward*.c
 * rounds in faithful mode. Rows run in parallel on the backend's pool (each row is independent,
 * so results do not depend on the thread count). Row arrays (dsv4_bk_rows) are host memory here.
 */
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "model/quant_sim.h"

#include <string.h>

/* A row count worth splitting over the pool; fewer rows run on the calling thread. */
static void run_rows(dsv4_backend *b, int64_t n, void (*fn)(int64_t i, void *ctx), void *ctx)
{
    if (b->pool && n > 1) {
        dsv4_cpu_pool_run(b->pool, n, fn, ctx);
        return;
    }
    for (int64_t i = 0; i < n; i++) fn(i, ctx);
}

/* ---- embedding ----------------------------------------------------------------------------- */
typedef struct embed_job {
    float *X;
    const dsv4_weight *w;
    const int32_t *ids;
    int n_copies;
    int64_t D;
} embed_job;

/* X row r [n_copies, D]: copy 0 decoded and bf16-rounded, then copied. Ids are checked first. */
static void embed_row(int64_t r, void *ctx)
{
    const embed_job *j = ctx;
    float *x = j->X + r * j->n_copies * j->D;
    (void)dsv4_weight_dequant_row(j->w, j->ids[r], x);
    dsv4_sim_bf16(x, j->D);
    for (int c = 1; c < j->n_copies; c++) memcpy(x + c * j->D, x, (size_t)j->D * sizeof *x);
}

dsv4_status dsv4_cpu_bk_embed(dsv4_backend *b, float *X, const dsv4_weight *embed,
                              const dsv4_bk_rows *rows, int n_copies, int64_t D)
{
    if (D != embed->cols || n_copies < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "embed: D %lld vs %s [%lld, %lld], %d copies",
                         (long long)D, embed->name, (long long)embed->rows, (long long)embed->cols,
                         n_copies);
    if (embed->format == DSV4_FORMAT_INT)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "embed: %s is an integer table", embed->name);
    for (int32_t r = 0; r < rows->n; r++)
        if (rows->ids[r] < 0 || rows->ids[r] >= embed->rows)
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "embed: token id %d outside [0, %lld)",
                             rows->ids[r], (long long)embed->rows);
    embed_job j = {X, embed, rows->ids, n_copies, D};
    run_rows(b, rows->n, embed_row, &j);
    return DSV4_OK;
}

/* ---- RMSNorm --------------------------------------------------------------------------------- */
typedef struct rmsnorm_job {
    float *y;
    const float *x, *w;
    int64_t ldy, ldx, width;
    float eps;
    int round_bf16;
} rmsnorm_job;

static void rmsnorm_row(int64_t r, void *ctx)
{
    const rmsnorm_job *j = ctx;
    float *y = j->y + r * j->ldy;
    dsv4_op_rmsnorm(y, j->x + r * j->ldx, j->w, 1, j->width, j->eps);
    if (j->round_bf16) dsv4_sim_bf16(y, j->width);
}

dsv4_status dsv4_cpu_bk_rmsnorm(dsv4_backend *b, float *y, int64_t ldy, const float *x, int64_t ldx,
                                const float *w, int64_t N, int64_t width, float eps, int round_bf16)
{
    if (N < 0 || width < 1 || ldx < width || ldy < width)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rmsnorm: N %lld width %lld ldx %lld ldy %lld",
                         (long long)N, (long long)width, (long long)ldx, (long long)ldy);
    rmsnorm_job j = {y, x, w, ldy, ldx, width, eps, round_bf16};
    run_rows(b, N, rmsnorm_row, &j);
    return DSV4_OK;
}

/* ---- per-head query norm (faithful) ---------------------------------------------------------- */
typedef struct qnorm_job {
    float *q;
    int64_t n_vec, per;
    int c;
    float eps;
} qnorm_job;

/* Chunk i: vectors [i*per, min((i+1)*per, n_vec)). */
static void qnorm_chunk(int64_t i, void *ctx)
{
    const qnorm_job *j = ctx;
    const int64_t v0 = i * j->per, nv = j->n_vec - v0 < j->per ? j->n_vec - v0 : j->per;
    dsv4_op_faithful_q_norm(j->q + v0 * j->c, nv, j->c, j->eps);
}

dsv4_status dsv4_cpu_bk_head_norm_bf16(dsv4_backend *b, float *q, int64_t n_vec, int c, float eps)
{
    if (n_vec < 0 || c < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "head_norm_bf16: n_vec %lld c %d",
                         (long long)n_vec, c);
    qnorm_job j = {q, n_vec, 64, c, eps};
    run_rows(b, (n_vec + j.per - 1) / j.per, qnorm_chunk, &j);
    return DSV4_OK;
}

/* ---- act_quant ------------------------------------------------------------------------------- */
typedef struct aq_job {
    float *y;
    const float *x;
    int64_t ldy, ldx, width;
    int block;
} aq_job;

static void aq_row(int64_t r, void *ctx)
{
    const aq_job *j = ctx;
    float *y = j->y + r * j->ldy;
    const float *x = j->x + r * j->ldx;
    if (y != x) memcpy(y, x, (size_t)j->width * sizeof *y);
    dsv4_sim_act_quant(y, j->width, j->block);
}

dsv4_status dsv4_cpu_bk_act_quant(dsv4_backend *b, float *y, int64_t ldy, const float *x,
                                  int64_t ldx, int64_t N, int64_t width, int block)
{
    if (N < 0 || width < 1 || block < 1 || ldx < width || ldy < width)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "act_quant: N %lld width %lld block %d ldx %lld ldy %lld", (long long)N,
                         (long long)width, block, (long long)ldx, (long long)ldy);
    aq_job j = {y, x, ldy, ldx, width, block};
    run_rows(b, N, aq_row, &j);
    return DSV4_OK;
}

/* ---- scale ----------------------------------------------------------------------------------- */
dsv4_status dsv4_cpu_bk_scale(dsv4_backend *b, float *x, int64_t n, float s, int round_bf16)
{
    (void)b;
    for (int64_t i = 0; i < n; i++) x[i] *= s;
    if (round_bf16) dsv4_sim_bf16(x, n);
    return DSV4_OK;
}

/* ---- RoPE ------------------------------------------------------------------------------------ */
typedef struct rope_job {
    float *x;
    int64_t ldx;
    const int32_t *pos;
    int n_vec, dim, r, inverse, round_bf16;
    const float *freqs;
} rope_job;

/* Row r: its n_vec vectors at pos[r]; bf16 rounds the whole vectors, as the session forward
 * rounds the whole q / kv / o after its RoPE. */
static void rope_row(int64_t r, void *ctx)
{
    const rope_job *j = ctx;
    float *x = j->x + r * j->ldx;
    dsv4_op_rope(x, j->n_vec, j->dim, j->r, j->freqs, j->pos[r], j->inverse);
    if (j->round_bf16) dsv4_sim_bf16(x, (int64_t)j->n_vec * j->dim);
}

dsv4_status dsv4_cpu_bk_rope(dsv4_backend *b, float *x, int64_t ldx, const dsv4_bk_rows *rows,
                             int n_vec, int dim, int r, const float *freqs, int inverse,
                             int round_bf16)
{
    if (r < 2 || (r & 1) || r > dim || r > DSV4_ROPE_MAX || n_vec < 1 || ldx < (int64_t)n_vec * dim)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rope: r %d dim %d n_vec %d ldx %lld", r, dim,
                         n_vec, (long long)ldx);
    rope_job j = {x, ldx, rows->pos, n_vec, dim, r, inverse, round_bf16, freqs};
    run_rows(b, rows->n, rope_row, &j);
    return DSV4_OK;
}

/* ---- the fused q / kv chains: the compositions they stand for -------------------------------- */
dsv4_status dsv4_cpu_bk_rmsnorm_quant(dsv4_backend *b, float *y, float *yq, const float *x,
                                      const float *w, int64_t N, int64_t width, float eps,
                                      int block)
{
    if (block < 1) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "rmsnorm_quant: block %d", block);
    DSV4_TRY(dsv4_cpu_bk_rmsnorm(b, y, width, x, width, w, N, width, eps, 1));
    return dsv4_cpu_bk_act_quant(b, yq, width, y, width, N, width, block);
}

dsv4_status dsv4_cpu_bk_head_norm_rope(dsv4_backend *b, float *q, const dsv4_bk_rows *rows, int H,
                                       int hd, int r, const float *freqs, float eps)
{
    if (H < 1 || r < 2 || (r & 1) || r > hd || r > DSV4_ROPE_MAX)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "head_norm_rope: H %d hd %d r %d", H, hd, r);
    DSV4_TRY(dsv4_cpu_bk_head_norm_bf16(b, q, (int64_t)rows->n * H, hd, eps));
    return dsv4_cpu_bk_rope(b, q, (int64_t)H * hd, rows, H, hd, r, freqs, 0, 1);
}

dsv4_status dsv4_cpu_bk_kv_norm_rope_store(dsv4_backend *b, uint8_t *win, int R, float *kv,
                                           const float *w, const dsv4_bk_rows *rows, int hd, int r,
                                           const float *freqs, float eps, int qblock)
{
    if (R < 1 || hd <= r || qblock != DSV4_KV_QBLOCK || r < 2 || (r & 1) || r > DSV4_ROPE_MAX)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "kv_norm_rope_store: R %d hd %d r %d block %d (the cache's: %d)", R, hd, r,
                         qblock, DSV4_KV_QBLOCK);
    const int64_t N = rows->n;
    DSV4_TRY(dsv4_cpu_bk_rmsnorm(b, kv, hd, kv, hd, w, N, hd, eps, 1));
    DSV4_TRY(dsv4_cpu_bk_rope(b, kv, hd, rows, 1, hd, r, freqs, 0, 1));
    DSV4_TRY(dsv4_cpu_bk_act_quant(b, kv, hd, kv, hd, N, hd - r, qblock));
    return dsv4_cpu_bk_kv_store(b, win, R, hd, r, kv, rows);
}

/* ---- mHC ------------------------------------------------------------------------------------- */
enum { HC_MAX = 16 }; /* largest hc_mult the sites accept (V4: 4) */

typedef struct hc_job {
    float *y, *post, *comb, *Xo;
    const float *X, *mix, *base, *scale, *f, *cpost, *ccomb;
    float scale1, eps;
    int n, iters;
    int64_t D;
} hc_job;

/* hc_site: weights, collapse, bf16. */
static void hc_pre_row(int64_t r, void *ctx)
{
    const hc_job *j = ctx;
    const int n = j->n;
    float pre[HC_MAX];
    dsv4_op_hc_weights(j->mix + r * (2 + n) * n, j->base, j->scale, n, j->iters, j->eps, pre,
                       j->post + r * n, j->comb + r * n * n);
    dsv4_op_hc_collapse(j->y + r * j->D, j->X + r * n * j->D, pre, n, j->D);
    dsv4_sim_bf16(j->y + r * j->D, j->D);
}

static dsv4_status hc_check(const char *op, int n, int64_t D)
{
    if (n < 1 || n > HC_MAX || D < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: n %d (1..%d), D %lld", op, n, HC_MAX,
                         (long long)D);
    return DSV4_OK;
}

dsv4_status dsv4_cpu_bk_hc_pre(dsv4_backend *b, float *y, float *post, float *comb, const float *X,
                               const float *mix, const float *base, const float *scale, int64_t N,
                               int n, int64_t D, int iters, float eps)
{
    DSV4_TRY(hc_check("hc_pre", n, D));
    hc_job j = {.y = y,
                .post = post,
                .comb = comb,
                .X = X,
                .mix = mix,
                .base = base,
                .scale = scale,
                .eps = eps,
                .n = n,
                .iters = iters,
                .D = D};
    run_rows(b, N, hc_pre_row, &j);
    return DSV4_OK;
}

/* hc_expand: Xo [n, D], then bf16 (the residual streams are bf16). */
static void hc_post_row(int64_t r, void *ctx)
{
    const hc_job *j = ctx;
    const int n = j->n;
    float *xo = j->Xo + r * n * j->D;
    dsv4_op_hc_expand(xo, j->X + r * n * j->D, j->f + r * j->D, j->cpost + r * n,
                      j->ccomb + r * n * n, n, j->D);
    dsv4_sim_bf16(xo, n * j->D);
}

dsv4_status dsv4_cpu_bk_hc_post(dsv4_backend *b, float *Xo, const float *X, const float *f,
                                const float *post, const float *comb, int64_t N, int n, int64_t D)
{
    DSV4_TRY(hc_check("hc_post", n, D));
    hc_job j = {.Xo = Xo, .X = X, .f = f, .cpost = post, .ccomb = comb, .n = n, .D = D};
    run_rows(b, N, hc_post_row, &j);
    return DSV4_OK;
}

/* dsv4_forward_head's collapse: weights, collapse, bf16. */
static void hc_head_row(int64_t r, void *ctx)
{
    const hc_job *j = ctx;
    const int n = j->n;
    float pre[HC_MAX];
    dsv4_op_hc_head_weights(j->mix + r * n, j->base, j->scale1, n, j->eps, pre);
    dsv4_op_hc_collapse(j->y + r * j->D, j->X + r * n * j->D, pre, n, j->D);
    dsv4_sim_bf16(j->y + r * j->D, j->D);
}

dsv4_status dsv4_cpu_bk_hc_head(dsv4_backend *b, float *y, const float *X, const float *mix,
                                const float *base, float scale, int64_t N, int n, int64_t D,
                                float eps)
{
    DSV4_TRY(hc_check("hc_head", n, D));
    hc_job j = {
        .y = y, .X = X, .mix = mix, .base = base, .scale1 = scale, .eps = eps, .n = n, .D = D};
    run_rows(b, N, hc_head_row, &j);
    return DSV4_OK;
}
