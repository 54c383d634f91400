/*
 * forward_moe.c - the MoE sublayer for a chunk of tokens: sqrt-softplus router with
 * bias-corrected top-k (or hash routing through tid2eid), clamped SwiGLU experts run over the
 * tokens routed to each, the shared expert, routed scaling. Semantics of transformers 5.17's
 * DeepseekV4SparseMoeBlock.
 */
#include "core/error.h"
#include "model/quant_sim.h"
#include "model/session.h"

#include <string.h>

/* Expert: x [n, D] -> y [n, D] = w2 . (silu(min(w1 x, L)) * clamp(w3 x, -L, L)); g, u [n, I].
 * Faithful mode (wts != NULL): the official order, routing weight wts[i] multiplied into row i
 * before w2 (bf16, act_quant); exact mode leaves weighting to the caller, as transformers. */
static dsv4_status expert(dsv4_session *s, const dsv4_expert_weights *e, const float *x, int64_t n,
                          float *g, float *u, float *y, const float *wts)
{
    const int64_t I = e->w1.rows;
    DSV4_TRY(dsv4_fw_linear_q(s, &e->w1, x, n, g));
    DSV4_TRY(dsv4_fw_linear_q(s, &e->w3, x, n, u));
    dsv4_op_swiglu_clamped(g, u, n * I, s->cfg->swiglu_limit);
    if (wts)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < I; j++) g[i * I + j] *= wts[i];
    return dsv4_fw_linear_q(s, &e->w2, g, n, y);
}

/* tid2eid[id][j] as stored (I64 or I32). */
static int64_t table_at(const dsv4_weight *w, int64_t row, int64_t col)
{
    const uint8_t *p = (const uint8_t *)w->data;
    const int64_t i = row * w->cols + col;
    if (w->dtype == DSV4_DT_I64) {
        int64_t v;
        memcpy(&v, p + i * 8, 8);
        return v;
    }
    int32_t v;
    memcpy(&v, p + i * 4, 4);
    return v;
}

typedef dsv4_moe_buf moe_buf; /* workspace.h */

static dsv4_status moe_body(dsv4_session *s, int li, const float *h, const int32_t *ids, int64_t T,
                            float *out, moe_buf *b)
{
    const dsv4_config *c = s->cfg;
    const dsv4_layer_weights *lw = &s->m->w.layers[li];
    const int E = c->n_routed_experts, K = c->n_experts_per_tok;
    const int64_t D = c->hidden_size;

    /* b's regions hold T * K rows of the widest expert (workspace.c) */
    if (T > s->ws.T) /* a caller that skipped dsv4_workspace_reserve */
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "layer %d MoE: %lld tokens exceed the workspace", li,
                         (long long)T);
    memset(b->acc, 0, (size_t)(T * D) * sizeof *b->acc);

    /* router: h [T, D] -> logits [T, E] (fp32) -> scores -> sel [T, K], wts [T, K] */
    DSV4_TRY(dsv4_cpu_linear(s->pool, &lw->gate, h, T, b->logits));
    for (int64_t t = 0; t < T; t++) {
        float *sc = b->scores + t * E;
        int32_t *sel = b->sel + t * K;
        dsv4_op_router_scores(sc, b->logits + t * E, E);
        if (lw->hash_routed) {
            for (int j = 0; j < K; j++) {
                const int64_t e = table_at(&lw->tid2eid, ids[t], j);
                if (e < 0 || e >= E)
                    return dsv4_fail(DSV4_ERR_FORMAT, "%s[%d][%d] = %lld: not an expert in [0, %d)",
                                     lw->tid2eid.name, ids[t], j, (long long)e, E);
                sel[j] = (int32_t)e;
            }
        } else {
            const float *bias = s->lc[li].gate_bias;
            float *biased = b->logits + t * E; /* the logits are no longer needed */
            for (int e = 0; e < E; e++) biased[e] = sc[e] + (bias ? bias[e] : 0.0f);
            dsv4_op_topk(sel, biased, E, K);
        }
        dsv4_op_router_weights(b->wts + t * K, sc, sel, K, c->routed_scaling_factor);
    }

    /* routed experts, in expert order: gather the (token, slot) pairs routed to e, run the
     * expert on them, add weight * output into acc [T, D] */
    for (int e = 0; e < E; e++) {
        int64_t n = 0;
        for (int j = 0; j < K; j++) /* slot-major, as transformers' torch.where(mask[e]) */
            for (int64_t t = 0; t < T; t++)
                if (b->sel[t * K + j] == e) {
                    b->tok[n] = t;
                    b->slot[n] = j;
                    memcpy(b->xg + n * D, h + t * D, (size_t)D * sizeof(float));
                    n++;
                }
        if (n == 0) continue;
        const int faithful = s->opt.mode == DSV4_MODE_FAITHFUL;
        for (int64_t i = 0; i < n; i++) b->wg[i] = b->wts[b->tok[i] * K + b->slot[i]];
        DSV4_TRY(expert(s, &lw->experts[e], b->xg, n, b->g, b->u, b->yg, faithful ? b->wg : NULL));
        for (int64_t i = 0; i < n; i++) {
            const float w = faithful ? 1.0f : b->wg[i];
            float *a = b->acc + b->tok[i] * D;
            const float *y = b->yg + i * D;
            for (int64_t d = 0; d < D; d++) a[d] += y[d] * w;
        }
    }

    /* shared expert on every token, then out = routed + shared */
    DSV4_TRY(expert(s, &lw->shared, h, T, b->g, b->u, out, NULL));
    for (int64_t i = 0; i < T * D; i++) out[i] = b->acc[i] + out[i];
    dsv4_fw_bf16(s, out, T * D);
    return DSV4_OK;
}

dsv4_status dsv4_forward_moe(dsv4_session *s, int li, const float *h, const int32_t *ids, int64_t T,
                             float *out)
{
    return moe_body(s, li, h, ids, T, out, &s->ws.moe); /* regions: the session's workspace */
}
