/*
 * forward.c - the layer loop of DeepSeek-V4 for a chunk of tokens of one sequence, written once
 * against the op set of backend/cpu/ops.h and the projections of cpu_linear.h:
 *
 *   embed -> n residual streams -> per layer { mHC site -> attention, mHC site -> MoE }
 *         -> head collapse -> final RMSNorm -> LM head
 *
 * Semantics follow transformers 5.17's DeepseekV4Model (the "exact" numeric mode). The
 * sublayers are in forward_attn.c and forward_moe.c; the per-sequence state in session.c. The
 * MTP block (forward_mtp.c) runs the same dsv4_forward_block / dsv4_forward_head and reads the
 * last layer's streams kept here.
 */
#include "core/error.h"
#include "model/quant_sim.h"
#include "model/session.h"

#include <stdio.h>
#include <string.h>

void dsv4_session_emit(dsv4_session *s, const char *name, const float *data, int64_t rows,
                       int64_t width)
{
    if (s->capture) s->capture(s->capture_user, name, data, rows, width);
}

void dsv4_fw_bf16(const dsv4_session *s, float *x, int64_t n)
{
    if (s->opt.mode == DSV4_MODE_FAITHFUL) dsv4_sim_bf16(x, n);
}

dsv4_status dsv4_fw_linear_q(dsv4_session *s, const dsv4_weight *w, const float *x, int64_t T,
                             float *y)
{
    if (s->opt.mode != DSV4_MODE_FAITHFUL) return dsv4_cpu_linear(s->pool, w, x, T, y);
    /* the quantised copy of x [T, cols] goes to the workspace's xq (sized for every caller) */
    float *xq = s->ws.xq;
    if (T * w->cols > s->ws.xq_len)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "%s: input [%lld, %lld] exceeds the workspace (%lld)", w->name,
                         (long long)T, (long long)w->cols, (long long)s->ws.xq_len);
    memcpy(xq, x, (size_t)(T * w->cols) * sizeof *xq);
    for (int64_t t = 0; t < T; t++) dsv4_sim_act_quant(xq + t * w->cols, w->cols, 128);
    dsv4_status st = dsv4_cpu_linear(s->pool, w, xq, T, y);
    if (st == DSV4_OK) dsv4_sim_bf16(y, T * w->rows);
    return st;
}

dsv4_status dsv4_fw_linear_rows_bf16(dsv4_session *s, const dsv4_weight *w, int64_t row0,
                                     int64_t nrows, const float *x, int64_t T, float *y)
{
    DSV4_TRY(dsv4_cpu_linear_rows(s->pool, w, row0, nrows, x, T, y));
    dsv4_fw_bf16(s, y, T * nrows);
    return DSV4_OK;
}

static void emit_layer(dsv4_session *s, int layer, const char *what, const float *data,
                       int64_t rows, int64_t width)
{
    if (!s->capture) return;
    char name[64];
    snprintf(name, sizeof name, "hidden.L%d.%s", layer, what);
    s->capture(s->capture_user, name, data, rows, width);
}

typedef dsv4_fwd_buf fwd_buf; /* session.h */

/* One mHC site before a sublayer: X [T, n, D] -> pre/post/comb, y [T, D] = sum_j pre_j X_j. */
static dsv4_status hc_site(dsv4_session *s, const dsv4_weight *fn, const float *base,
                           const float *scale, fwd_buf *b, int64_t T)
{
    const dsv4_config *c = s->cfg;
    const int n = c->hc_mult;
    const int64_t D = c->hidden_size, nD = (int64_t)n * D, mixn = (int64_t)(2 + n) * n;
    dsv4_op_rmsnorm(b->flat, b->X, NULL, T, nD, c->rms_norm_eps);
    DSV4_TRY(dsv4_cpu_linear(s->pool, fn, b->flat, T, b->mix)); /* [T, nD] -> [T, (2+n)n] */
    for (int64_t t = 0; t < T; t++) {
        float *pre = b->pre + t * n, *post = b->post + t * n, *comb = b->comb + t * n * n;
        dsv4_op_hc_weights(b->mix + t * mixn, base, scale, n, c->hc_sinkhorn_iters, c->hc_eps, pre,
                           post, comb);
        dsv4_op_hc_collapse(b->y + t * D, b->X + t * nD, pre, n, D);
    }
    dsv4_fw_bf16(s, b->y, T * D);
    return DSV4_OK;
}

/* After the sublayer: X' = post (x) f + comb^T X, for every token; swaps X and Xo. */
static void hc_expand(const dsv4_session *s, fwd_buf *b, int64_t T)
{
    const dsv4_config *c = s->cfg;
    const int n = c->hc_mult;
    const int64_t D = c->hidden_size, nD = (int64_t)n * D;
    for (int64_t t = 0; t < T; t++)
        dsv4_op_hc_expand(b->Xo + t * nD, b->X + t * nD, b->f + t * D, b->post + t * n,
                          b->comb + t * n * n, n, D);
    dsv4_fw_bf16(s, b->Xo, T * nD); /* faithful: the residual streams are bf16 */
    float *tmp = b->X;
    b->X = b->Xo;
    b->Xo = tmp;
}

dsv4_status dsv4_forward_block(dsv4_session *s, int li, const int32_t *ids, int64_t T, fwd_buf *b)
{
    const dsv4_config *c = s->cfg;
    const int64_t D = c->hidden_size, nD = (int64_t)c->hc_mult * D;
    const dsv4_layer_weights *lw = &s->m->w.layers[li];
    const dsv4_layer_consts *k = &s->lc[li];

    /* attention site: X -> y -> h = RMSNorm_attn(y) -> f = attn(h) -> X */
    DSV4_TRY(hc_site(s, &lw->hc_attn_fn, k->hc_attn_base, k->hc_attn_scale, b, T));
    dsv4_op_rmsnorm(b->h, b->y, k->attn_norm, T, D, c->rms_norm_eps);
    dsv4_fw_bf16(s, b->h, T * D);
    emit_layer(s, li, "attn_in", b->h, T, D);
    DSV4_TRY(dsv4_forward_attn(s, li, b->h, T, b->f));
    emit_layer(s, li, "attn_out", b->f, T, D);
    hc_expand(s, b, T);

    /* FFN site: X -> y -> h = RMSNorm_ffn(y) -> f = moe(h) -> X */
    DSV4_TRY(hc_site(s, &lw->hc_ffn_fn, k->hc_ffn_base, k->hc_ffn_scale, b, T));
    dsv4_op_rmsnorm(b->h, b->y, k->ffn_norm, T, D, c->rms_norm_eps);
    dsv4_fw_bf16(s, b->h, T * D);
    emit_layer(s, li, "ffn_in", b->h, T, D);
    DSV4_TRY(dsv4_forward_moe(s, li, b->h, ids, T, b->f));
    emit_layer(s, li, "ffn_out", b->f, T, D);
    hc_expand(s, b, T);
    emit_layer(s, li, "streams", b->X, T, nD);
    return DSV4_OK;
}

dsv4_status dsv4_forward_head(dsv4_session *s, const dsv4_weight *hc_fn, const float *hc_base,
                              float hc_scale, const float *norm, const char *tag, int64_t T,
                              fwd_buf *b)
{
    const dsv4_config *c = s->cfg;
    const int n = c->hc_mult;
    const int64_t D = c->hidden_size, nD = (int64_t)n * D;
    char name[64];

    /* head collapse: X [T, n, D] -> y [T, D]; final norm -> h [T, D] */
    dsv4_op_rmsnorm(b->flat, b->X, NULL, T, nD, c->rms_norm_eps);
    DSV4_TRY(dsv4_cpu_linear(s->pool, hc_fn, b->flat, T, b->mix)); /* -> [T, n] */
    for (int64_t t = 0; t < T; t++) {
        float *pre = b->pre + t * n;
        dsv4_op_hc_head_weights(b->mix + t * n, hc_base, hc_scale, n, c->hc_eps, pre);
        dsv4_op_hc_collapse(b->y + t * D, b->X + t * nD, pre, n, D);
    }
    dsv4_fw_bf16(s, b->y, T * D);
    snprintf(name, sizeof name, "%s.hc_head", tag);
    dsv4_session_emit(s, name, b->y, T, D);
    dsv4_op_rmsnorm(b->h, b->y, norm, T, D, c->rms_norm_eps);
    dsv4_fw_bf16(s, b->h, T * D);
    snprintf(name, sizeof name, "%s.final", tag);
    dsv4_session_emit(s, name, b->h, T, D);
    return DSV4_OK;
}

static dsv4_status run_layers(dsv4_session *s, const int32_t *ids, int64_t T, fwd_buf *b)
{
    const dsv4_config *c = s->cfg;
    const dsv4_model_weights *W = &s->m->w;
    const int n = c->hc_mult;
    const int64_t D = c->hidden_size, nD = (int64_t)n * D;

    /* embed: ids [T] -> y [T, D] -> X [T, n, D] (n copies) */
    for (int64_t t = 0; t < T; t++) {
        DSV4_TRY(dsv4_weight_dequant_row(&W->embed, ids[t], b->y + t * D));
        dsv4_fw_bf16(s, b->y + t * D, D); /* faithful: bf16 embedding rows */
        for (int j = 0; j < n; j++) memcpy(b->X + t * nD + j * D, b->y + t * D, D * sizeof(float));
    }
    dsv4_session_emit(s, "embed", b->y, T, D);

    for (int li = 0; li < c->num_layers; li++) DSV4_TRY(dsv4_forward_block(s, li, ids, T, b));
    /* the MTP block reads the last layer's streams of every position (forward_mtp.c) */
    if (s->hmain) memcpy(s->hmain + s->pos * nD, b->X, (size_t)(T * nD) * sizeof(float));

    return dsv4_forward_head(s, &W->hc_head_fn, s->hc_head_base, s->hc_head_scale, s->norm,
                             "hidden", T, b);
}

dsv4_status dsv4_forward(dsv4_session *s, const int32_t *ids, int64_t T, float *logits,
                         int all_positions)
{
    const int64_t D = s->cfg->hidden_size;
    DSV4_TRY(dsv4_workspace_reserve(s, T)); /* allocates only for a longer chunk or more history */
    fwd_buf b = s->ws.fwd;                  /* a copy: hc_expand swaps X and Xo in it */
    dsv4_status st = run_layers(s, ids, T, &b);
    if (st == DSV4_OK && logits) { /* LM head: h [T, D] -> logits [T, V] (or the last row) */
        const dsv4_weight *head = &s->m->w.head;
        if (all_positions)
            st = dsv4_cpu_linear(s->pool, head, b.h, T, logits);
        else
            st = dsv4_cpu_linear(s->pool, head, b.h + (T - 1) * D, 1, logits);
    }
    return st;
}
