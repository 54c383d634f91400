/*
 * bk_moe.c - CPU implementation of the MoE ops of backend.h: the router, the expert table and
 * the routed + shared experts. It is the session forward's faithful MoE (model/forward_moe.c
 * moe_body) with a step's rows in place of a session's tokens, built from the same pieces in the
 * same order (ops.h router functions, quant_sim's act_quant, dsv4_cpu_linear on b->pool, the
 * same gather of each expert's rows), so that it matches the session bit for bit: it is the
 * reference the CUDA implementation (backend/cuda/bk_moe.cu) is tested against.
 * dsv4_bk_moe_ws_bytes, shared by both backends, lives here too.
 */
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "model/quant_sim.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- workspace ------------------------------------------------------------------------------
 * Both backends carve the same bytes, regions aligned to 256 bytes:
 *   CPU:  acc [N, D], xg [NK, D], g [NK, I], u [NK, I], yg [NK, D], wg [NK], tok/slot [NK] int32
 *   CUDA: xq [N, D], a [N(K+1), I], y [N(K+1), D], the work list (ints: E * 3 + NK + 8), and
 *         for the tensor-core path's slots (at most min(NK, E) + N) their tickets and ready
 *         counts (ceil(I / 128) + 32 ints a slot: moe.cuh MOE_RDY_STRIDE)
 * (NK = N * K rows of routed pairs; the shared expert reuses the routed regions on the CPU and
 * has its own N rows on CUDA.) */
static size_t al256(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

size_t dsv4_bk_moe_ws_bytes(int64_t N, int K, int64_t D, int64_t I_max, int E)
{
    const size_t n = (size_t)N, k = (size_t)K, d = (size_t)D, i = (size_t)I_max, e = (size_t)E;
    const size_t nk = n * k, f = sizeof(float);
    const size_t cpu = al256(n * d * f) + al256(nk * d * f) * 2 + al256(nk * i * f) * 2 +
                       al256(nk * f) + al256(nk * 4) * 2;
    const size_t slots = (nk < e ? nk : e) + n;
    const size_t cuda = al256(n * d * f) + al256((nk + n) * i * f) + al256((nk + n) * d * f) +
                        al256((3 * e + nk + 8) * 4) + al256(slots * ((i + 127) / 128 + 32) * 4);
    return (cpu > cuda ? cpu : cuda) + 256;
}

/* ---- router --------------------------------------------------------------------------------- */
enum { ROUTER_MAX_E = 1024 }; /* the per-row scratch lives on the stack */

typedef struct router_job {
    int32_t *sel;
    float *wts;
    const float *logits, *bias;
    const int32_t *tid2eid, *ids;
    int E, K;
    float route_scale;
    _Atomic int64_t bad_row; /* first row whose table entry is not an expert, + 1 */
} router_job;

/* Row r, as moe_body's router loop: logits [E] -> sel [K], wts [K]. */
static void router_row(int64_t r, void *ctx)
{
    router_job *j = ctx;
    const int E = j->E, K = j->K;
    float sc[ROUTER_MAX_E], biased[ROUTER_MAX_E];
    int32_t *sel = j->sel + r * K;
    dsv4_op_router_scores(sc, j->logits + r * E, E);
    if (j->tid2eid) {
        const int32_t *row = j->tid2eid + (int64_t)j->ids[r] * K;
        for (int k = 0; k < K; k++) {
            if (row[k] < 0 || row[k] >= E) {
                int64_t none = 0;
                atomic_compare_exchange_strong(&j->bad_row, &none, r + 1);
                return;
            }
            sel[k] = row[k];
        }
    } else {
        for (int e = 0; e < E; e++) biased[e] = sc[e] + (j->bias ? j->bias[e] : 0.0f);
        dsv4_op_topk(sel, biased, E, K);
    }
    dsv4_op_router_weights(j->wts + r * K, sc, sel, K, j->route_scale);
}

dsv4_status dsv4_cpu_bk_router(dsv4_backend *b, int32_t *sel, float *wts, const float *logits,
                               const float *bias, const int32_t *tid2eid, const dsv4_bk_rows *rows,
                               int E, int K, float route_scale)
{
    if (E < 1 || E > ROUTER_MAX_E || K < 1 || K > E)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "router: %d experts, top %d (at most %d)", E, K,
                         ROUTER_MAX_E);
    if (tid2eid && !rows->ids)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "router: hash routing needs the token ids");
    router_job j = {sel, wts, logits, bias, tid2eid, rows->ids, E, K, route_scale, 0};
    dsv4_cpu_pool_run(b->pool, rows->n, router_row, &j);
    const int64_t bad = atomic_load(&j.bad_row);
    if (bad)
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "router: tid2eid row of token %d names no expert in [0, %d)",
                         rows->ids[bad - 1], E);
    return DSV4_OK;
}

/* ---- expert table: the CPU keeps the caller's arrays ---------------------------------------- */
struct dsv4_bk_experts {
    const dsv4_expert_weights *experts; /* [E], the caller's */
    const dsv4_expert_weights *shared;
    int E;
};

static dsv4_status check_expert(const dsv4_expert_weights *x, int64_t D, const char *what, int e)
{
    const int64_t I = x->w1.rows;
    if (x->w1.cols != D || x->w3.cols != D || x->w3.rows != I || x->w2.rows != D || x->w2.cols != I)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "%s %d: w1 [%lld, %lld], w3 [%lld, %lld], w2 [%lld, %lld] do not make an "
                         "expert of width %lld",
                         what, e, (long long)x->w1.rows, (long long)x->w1.cols,
                         (long long)x->w3.rows, (long long)x->w3.cols, (long long)x->w2.rows,
                         (long long)x->w2.cols, (long long)D);
    return DSV4_OK;
}

dsv4_status dsv4_cpu_bk_experts_create(dsv4_backend *b, const dsv4_expert_weights *experts, int E,
                                       const dsv4_expert_weights *shared, dsv4_bk_experts **out)
{
    (void)b;
    *out = NULL;
    if (E < 1 || !experts || !shared)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "experts_create: %d experts", E);
    const int64_t D = shared->w1.cols;
    DSV4_TRY(check_expert(shared, D, "shared expert", 0));
    for (int e = 0; e < E; e++) DSV4_TRY(check_expert(&experts[e], D, "expert", e));
    dsv4_bk_experts *t = calloc(1, sizeof *t);
    if (!t) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating an expert table");
    t->experts = experts;
    t->shared = shared;
    t->E = E;
    *out = t;
    return DSV4_OK;
}

void dsv4_cpu_bk_experts_free(dsv4_backend *b, dsv4_bk_experts *t)
{
    (void)b;
    free(t);
}

/* ---- experts -------------------------------------------------------------------------------- */
typedef struct quant_job {
    float *x;
    int64_t cols;
} quant_job;

static void quant_row(int64_t r, void *ctx)
{
    const quant_job *j = ctx;
    dsv4_sim_act_quant(j->x + r * j->cols, j->cols, 128);
}

/* x [n, cols] in place: act_quant of every row (block 128), rows spread over the pool. */
static void act_quant_rows(dsv4_cpu_pool *pool, float *x, int64_t n, int64_t cols)
{
    quant_job j = {x, cols};
    dsv4_cpu_pool_run(pool, n, quant_row, &j);
}

/* forward.c dsv4_fw_linear_q in faithful mode on an already quantised input:
 * y [n, w->rows] = bf16(xq [n, w->cols] . W^T). */
static dsv4_status linear_bf16(dsv4_cpu_pool *pool, const dsv4_weight *w, const float *xq,
                               int64_t n, float *y)
{
    DSV4_TRY(dsv4_cpu_linear(pool, w, xq, n, y));
    dsv4_sim_bf16(y, n * w->rows);
    return DSV4_OK;
}

/* forward_moe.c expert(), faithful: xq [n, D] (already act_quant'ed; moe_body quantises the same
 * x once for w1 and once for w3, with equal results) -> y [n, D]; g, u [n, I] scratch. wts [n]
 * multiplies row i of the activation (routed experts), NULL for the shared expert. */
static dsv4_status expert(dsv4_cpu_pool *pool, const dsv4_expert_weights *e, const float *xq,
                          int64_t n, float *g, float *u, float *y, const float *wts, float limit)
{
    const int64_t I = e->w1.rows;
    DSV4_TRY(linear_bf16(pool, &e->w1, xq, n, g));
    DSV4_TRY(linear_bf16(pool, &e->w3, xq, n, u));
    dsv4_op_swiglu_clamped(g, u, n * I, limit);
    if (wts)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < I; j++) g[i * I + j] *= wts[i];
    act_quant_rows(pool, g, n, I);
    return linear_bf16(pool, &e->w2, g, n, y);
}

/* Carves p into the CPU's regions (dsv4_bk_moe_ws_bytes). */
static float *take(char **p, size_t bytes)
{
    float *r = (float *)*p;
    *p += al256(bytes);
    return r;
}

dsv4_status dsv4_cpu_bk_moe(dsv4_backend *b, float *out, const float *h, const int32_t *sel,
                            const float *wts, const dsv4_bk_experts *t, int64_t N, int K, int64_t D,
                            float limit, void *ws)
{
    const int E = t->E;
    const int64_t NK = N * K;
    if (D != t->shared->w1.cols)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "moe: width %lld, the experts take %lld",
                         (long long)D, (long long)t->shared->w1.cols);
    for (int64_t i = 0; i < NK; i++)
        if (sel[i] < 0 || sel[i] >= E)
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "moe: row %lld slot %lld: expert %d of %d",
                             (long long)(i / K), (long long)(i % K), sel[i], E);
    int64_t I = t->shared->w1.rows;
    for (int e = 0; e < E; e++)
        if (t->experts[e].w1.rows > I) I = t->experts[e].w1.rows;

    char *p = (char *)(((uintptr_t)ws + 255) & ~(uintptr_t)255);
    float *acc = take(&p, (size_t)(N * D) * sizeof(float));
    float *xg = take(&p, (size_t)(NK * D) * sizeof(float));
    float *yg = take(&p, (size_t)(NK * D) * sizeof(float));
    float *g = take(&p, (size_t)(NK * I) * sizeof(float));
    float *u = take(&p, (size_t)(NK * I) * sizeof(float));
    float *wg = take(&p, (size_t)NK * sizeof(float));
    int32_t *tok = (int32_t *)take(&p, (size_t)NK * 4);
    int32_t *slot = (int32_t *)take(&p, (size_t)NK * 4);
    memset(acc, 0, (size_t)(N * D) * sizeof *acc);

    /* routed experts in expert order: gather the (row, slot) pairs routed to e slot-major, as
     * moe_body does, run the expert on them, add its outputs into acc [N, D] */
    for (int e = 0; e < E; e++) {
        int64_t n = 0;
        for (int j = 0; j < K; j++)
            for (int64_t r = 0; r < N; r++)
                if (sel[r * K + j] == e) {
                    tok[n] = (int32_t)r;
                    slot[n] = j;
                    memcpy(xg + n * D, h + r * D, (size_t)D * sizeof(float));
                    n++;
                }
        if (n == 0) continue;
        for (int64_t i = 0; i < n; i++) wg[i] = wts[(int64_t)tok[i] * K + slot[i]];
        act_quant_rows(b->pool, xg, n, D);
        DSV4_TRY(expert(b->pool, &t->experts[e], xg, n, g, u, yg, wg, limit));
        for (int64_t i = 0; i < n; i++) {
            float *a = acc + (int64_t)tok[i] * D;
            const float *y = yg + i * D;
            for (int64_t d = 0; d < D; d++) a[d] += y[d] * 1.0f; /* moe_body's faithful weight */
        }
    }

    /* shared expert on every row (its input quantised into xg), then out = bf16(routed + shared) */
    memcpy(xg, h, (size_t)(N * D) * sizeof(float));
    act_quant_rows(b->pool, xg, N, D);
    DSV4_TRY(expert(b->pool, t->shared, xg, N, g, u, out, NULL, limit));
    for (int64_t i = 0; i < N * D; i++) out[i] = acc[i] + out[i];
    dsv4_sim_bf16(out, N * D);
    return DSV4_OK;
}
