/*
 * forward_attn.c - the attention sublayer of one layer for a chunk of tokens: queries, the
 * shared key/value head and its sliding window, the compressors (HCA pooling, CSA overlapping
 * pooling), the lightning indexer's top-k, attention with sinks, inverse RoPE and the grouped
 * output projection. Semantics of transformers 5.17's DeepseekV4Attention and its compressors.
 */
#include "core/error.h"
#include "model/quant_sim.h"
#include "model/session.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* Pools entry i of compressor `cs` (window [i*m, (i+1)*m)), then RMSNorm and RoPE at position
 * i*m. With overlap (CSA) the slots are the previous window's first halves (none for i = 0)
 * followed by this window's second halves. -> entries[i] [dim] */
static void pool_entry(dsv4_session *s, dsv4_comp_state *cs, const float *norm, int64_t i)
{
    const int m = cs->ratio, d = cs->dim, w = cs->width;
    const int overlap = w == 2 * d;
    const float *kvp[256], *gp[256]; /* 2m <= 256 (ratios 4 and 128) */
    int ns = 0;
    if (overlap && i > 0)
        for (int j = 0; j < m; j++) {
            const int64_t row = (i - 1) * m + j;
            kvp[ns] = cs->kv + row * w;
            gp[ns++] = cs->gate + row * w;
        }
    for (int j = 0; j < m; j++) {
        const int64_t row = i * m + j;
        const int off = overlap ? d : 0;
        kvp[ns] = cs->kv + row * w + off;
        gp[ns++] = cs->gate + row * w + off;
    }
    float *e = cs->entries + i * d;
    const int r = s->cfg->rope_dim;
    if (s->opt.mode == DSV4_MODE_FAITHFUL)
        dsv4_op_faithful_pool(e, kvp, gp, ns, d);
    else
        dsv4_op_compress_pool(e, kvp, gp, ns, d);
    dsv4_fw_bf16(s, e, d);
    dsv4_op_rmsnorm(e, e, norm, 1, d, s->cfg->rms_norm_eps);
    dsv4_fw_bf16(s, e, d);
    dsv4_op_rope(e, 1, d, r, s->rope_comp, i * m, 0);
    dsv4_fw_bf16(s, e, d);
    if (s->opt.mode == DSV4_MODE_FAITHFUL) {
        if (cs->is_index) { /* indexer keys: Hadamard, then FP4 in blocks of 32 */
            dsv4_sim_rotate_activation(e, d);
            dsv4_sim_fp4_act_quant(e, d, 32);
        } else { /* the non-RoPE dims: FP8 in blocks of 64 */
            dsv4_sim_act_quant(e, d - r, 64);
        }
    }
}

/* h [T, D] -> the tokens' rows kv, gate [T, width] (gate + ape[pos % m]); closes every window
 * the chunk completes. */
static dsv4_status comp_append(dsv4_session *s, const dsv4_compressor_weights *cw, const float *ape,
                               const float *norm, dsv4_comp_state *cs, const float *h, int64_t T)
{
    const int64_t p0 = s->pos, w = cs->width, m = cs->ratio;
    DSV4_TRY(dsv4_cpu_linear(s->pool, &cw->wkv, h, T, cs->kv + p0 * w));
    DSV4_TRY(dsv4_cpu_linear(s->pool, &cw->wgate, h, T, cs->gate + p0 * w));
    for (int64_t t = 0; t < T; t++) {
        float *g = cs->gate + (p0 + t) * w;
        const float *a = ape + ((p0 + t) % m) * w;
        for (int64_t i = 0; i < w; i++) g[i] += a[i];
    }
    const int64_t target = (p0 + T) / m;
    for (int64_t i = cs->n_entries; i < target; i++) pool_entry(s, cs, norm, i);
    if (target > cs->n_entries) cs->n_entries = target;
    return DSV4_OK;
}

/* ---- lightning indexer: per query token, the top-k visible entries ------------------------ */
typedef struct index_job {
    const dsv4_session *s;
    const dsv4_comp_state *ic; /* indexer keys */
    const float *q, *w;        /* [T, nh, d], [T, nh] */
    int64_t p0;
    int nh, d, topk;
    int32_t *sel;  /* [T, topk] */
    int *nsel;     /* [T] */
    float *scores; /* [lanes, scores_len] one row of scratch per lane */
    int64_t scores_len, T;
    atomic_llong next; /* the next token to score */
} index_job;

/* Token t's scores of its nvis visible entries into sc [nvis], then its top-k. */
static void index_token(index_job *j, int64_t t, float *sc)
{
    const int64_t p = j->p0 + t, nvis = (p + 1) / j->ic->ratio;
    const int k = nvis < j->topk ? (int)nvis : j->topk;
    j->nsel[t] = k;
    if (k == 0) return;
    int32_t *sel = j->sel + t * j->topk;
    if (j->s->opt.mode == DSV4_MODE_FAITHFUL) {
        dsv4_op_faithful_index_scores(sc, j->q + t * j->nh * j->d, j->w + t * j->nh, j->ic->entries,
                                      nvis, j->nh, j->d);
        dsv4_op_topk(sel, sc, nvis, k);
        /* the official top-k hands its picks to the attention in score order (bf16 ties: the
         * lower index first); the slot order decides the kernel's 64-slot blocks */
        for (int a = 1; a < k; a++) {
            const int32_t x = sel[a];
            int b = a;
            while (b > 0 && sc[sel[b - 1]] < sc[x]) sel[b] = sel[b - 1], b--;
            sel[b] = x;
        }
    } else {
        dsv4_op_indexer_scores(sc, j->q + t * j->nh * j->d, j->w + t * j->nh, j->ic->entries, nvis,
                               j->nh, j->d, 1.0f / sqrtf((float)j->d));
        dsv4_op_topk(sel, sc, nvis, k);
    }
}

/* One lane of the pool: takes tokens until none is left, scoring into its own scratch row. */
static void index_lane(int64_t lane, void *ctx)
{
    index_job *j = ctx;
    float *sc = j->scores + lane * j->scores_len;
    for (int64_t t; (t = atomic_fetch_add(&j->next, 1)) < j->T;) index_token(j, t, sc);
}

/* ---- attention over [window ++ entries] per (token, head) --------------------------------- */
typedef struct attend_job {
    const float *q;           /* [T, H, c] */
    float *o;                 /* [T, H, c] */
    const float *const *keys; /* key pointers, token t's at keys[koff[t] .. koff[t+1]) */
    const int64_t *koff;
    const float *sink; /* [H] */
    int H, c;
    float scale;
    int bf16_p;
    float *scratch;  /* [lanes, nk_max] scores, one row per lane */
    double *contrib; /* [lanes, c] faithful block sums, one row per lane */
    int64_t nk_max, n;
    atomic_llong next; /* the next (token, head) item */
} attend_job;

/* Item i = (token t, head hh); scratch [nk], contrib [c] belong to the running lane. */
static void attend_item(const attend_job *j, int64_t i, float *scratch, double *contrib)
{
    const int64_t t = i / j->H, hh = i % j->H;
    const int64_t nk = j->koff[t + 1] - j->koff[t];
    const int64_t off = (t * j->H + hh) * j->c;
    if (j->bf16_p)
        dsv4_op_faithful_attend_head(j->o + off, j->q + off, j->keys + j->koff[t], nk, j->c,
                                     j->scale, j->sink[hh], contrib);
    else
        dsv4_op_attend_head(j->o + off, j->q + off, j->keys + j->koff[t], nk, j->c, j->scale,
                            j->sink[hh], scratch, 0);
}

/* One lane of the pool: takes items until none is left, with its own scratch rows. */
static void attend_lane(int64_t lane, void *ctx)
{
    attend_job *j = ctx;
    float *scratch = j->scratch + lane * j->nk_max;
    double *contrib = j->contrib + lane * j->c;
    for (int64_t i; (i = atomic_fetch_add(&j->next, 1)) < j->n;)
        attend_item(j, i, scratch, contrib);
}

typedef dsv4_attn_buf attn_buf; /* workspace.h */

static dsv4_status attn_body(dsv4_session *s, int li, const float *h, int64_t T, float *out,
                             attn_buf *b)
{
    const dsv4_config *c = s->cfg;
    const dsv4_layer_weights *lw = &s->m->w.layers[li];
    const dsv4_layer_consts *k = &s->lc[li];
    dsv4_layer_state *ls = &s->ls[li];
    const int H = c->num_heads, hd = c->head_dim, r = c->rope_dim, ratio = lw->compress_ratio;
    const int64_t p0 = s->pos, Hc = (int64_t)H * hd, ql = c->q_lora_rank;
    const float eps = c->rms_norm_eps;
    const float *freqs = ratio ? s->rope_comp : s->rope_main;
    const int csa = ratio == 4;
    const int faithful = s->opt.mode == DSV4_MODE_FAITHFUL;
    const int64_t ws_lanes = s->ws.lanes; /* scratch rows: one per pool thread */

    /* queries: h [T, D] -> qr [T, ql] (RMSNorm q_norm) -> q [T, H, c] (per-head RMS, RoPE) */
    DSV4_TRY(dsv4_fw_linear_q(s, &lw->wq_a, h, T, b->qr));
    dsv4_op_rmsnorm(b->qr, b->qr, k->q_norm, T, ql, eps);
    dsv4_fw_bf16(s, b->qr, T * ql);
    DSV4_TRY(dsv4_fw_linear_q(s, &lw->wq_b, b->qr, T, b->q));
    if (faithful)
        dsv4_op_faithful_q_norm(b->q, T * H, hd, eps);
    else
        dsv4_op_rmsnorm(b->q, b->q, NULL, T * H, hd, eps);
    for (int64_t t = 0; t < T; t++) dsv4_op_rope(b->q + t * Hc, H, hd, r, freqs, p0 + t, 0);
    dsv4_fw_bf16(s, b->q, T * Hc);

    /* the shared key/value head: h [T, D] -> kv [T, c] (RMSNorm kv_norm, RoPE), kept */
    float *kv = ls->kv + p0 * hd;
    DSV4_TRY(dsv4_fw_linear_q(s, &lw->wkv, h, T, kv));
    dsv4_op_rmsnorm(kv, kv, k->kv_norm, T, hd, eps);
    dsv4_fw_bf16(s, kv, T * hd);
    for (int64_t t = 0; t < T; t++) {
        dsv4_op_rope(kv + t * hd, 1, hd, r, freqs, p0 + t, 0);
        dsv4_fw_bf16(s, kv + t * hd, hd);
        if (s->opt.mode == DSV4_MODE_FAITHFUL) dsv4_sim_act_quant(kv + t * hd, hd - r, 64);
    }

    /* compressed entries */
    if (ratio > 0) {
        DSV4_TRY(comp_append(s, &lw->compressor, k->comp_ape, k->comp_norm, &ls->comp, h, T));
        if (s->capture) {
            char name[64];
            snprintf(name, sizeof name, "compressed.L%d.kv", li);
            dsv4_session_emit(s, name, ls->comp.entries, ls->comp.n_entries, ls->comp.dim);
        }
    }
    if (csa) {
        const int nh = c->index_n_heads, d = c->index_head_dim, topk = c->index_topk;
        DSV4_TRY(comp_append(s, &lw->idx_compressor, k->idx_ape, k->idx_norm, &ls->idx, h, T));
        if (s->capture) {
            char name[64];
            snprintf(name, sizeof name, "compressed.L%d.index_kv", li);
            dsv4_session_emit(s, name, ls->idx.entries, ls->idx.n_entries, ls->idx.dim);
        }
        /* indexer queries qr [T, ql] -> iq [T, nh, d] (RoPE, compress theta); weights
         * h [T, D] -> iw [T, nh] * nh^-0.5 */
        DSV4_TRY(dsv4_fw_linear_q(s, &lw->idx_wq_b, b->qr, T, b->iq));
        for (int64_t t = 0; t < T; t++) {
            dsv4_op_rope(b->iq + t * nh * d, nh, d, r, s->rope_comp, p0 + t, 0);
            if (s->opt.mode != DSV4_MODE_FAITHFUL) continue;
            for (int hh = 0; hh < nh; hh++) { /* bf16, Hadamard, FP4 per head */
                float *qh = b->iq + (t * nh + hh) * d;
                dsv4_sim_bf16(qh, d);
                dsv4_sim_rotate_activation(qh, d);
                dsv4_sim_fp4_act_quant(qh, d, 32);
            }
        }
        DSV4_TRY(dsv4_fw_linear_rows_bf16(s, &lw->idx_weights_proj, 0, nh, h, T, b->iw));
        /* faithful: the official weights_proj(x) * (d^-0.5 * nh^-0.5) (a bf16 product; the
         * scores then carry no softmax_scale); exact: transformers' nh^-0.5 here, d^-0.5 in
         * the scores */
        const float wscale =
            faithful ? (float)(pow(d, -0.5) * pow(nh, -0.5)) : 1.0f / sqrtf((float)nh);
        for (int64_t i = 0; i < T * nh; i++) b->iw[i] *= wscale;
        dsv4_fw_bf16(s, b->iw, T * nh);
        if ((p0 + T) / ls->idx.ratio > b->iscores_len) goto small;
        index_job ij = {s,      &ls->idx, b->iq,      b->iw,          p0, nh, d, topk,
                        b->sel, b->nsel,  b->iscores, b->iscores_len, T,  0};
        dsv4_cpu_pool_run(s->pool, T < ws_lanes ? T : ws_lanes, index_lane, &ij);
    }

    /* key lists: token at p sees window [max(0, p-W+1), p] then its visible entries */
    const int64_t Wn = c->sliding_window;
    b->koff[0] = 0;
    for (int64_t t = 0; t < T; t++) {
        const int64_t p = p0 + t, lo = p - Wn + 1 > 0 ? p - Wn + 1 : 0;
        int64_t nk = faithful ? Wn : p - lo + 1; /* faithful: W window slots, empty ones too */
        if (ratio > 0) nk += csa ? b->nsel[t] : (p + 1) / ratio;
        if (nk > b->nk_max) goto small;
        b->koff[t + 1] = b->koff[t] + nk;
    }
    for (int64_t t = 0; t < T; t++) {
        const int64_t p = p0 + t, lo = p - Wn + 1 > 0 ? p - Wn + 1 : 0;
        const float **kp = b->keys + b->koff[t];
        for (int64_t j = lo; j <= p; j++) *kp++ = ls->kv + j * hd;
        if (faithful) /* the official window slots: oldest first, -1 padding after them */
            for (int64_t j = p - lo + 1; j < Wn; j++) *kp++ = NULL;
        if (ratio > 0 && csa) {
            for (int j = 0; j < b->nsel[t]; j++)
                *kp++ = ls->comp.entries + (int64_t)b->sel[t * c->index_topk + j] * hd;
        } else if (ratio > 0) {
            for (int64_t j = 0; j < (p + 1) / ratio; j++) *kp++ = ls->comp.entries + j * hd;
        }
    }
    attend_job aj = {b->q,
                     b->o,
                     b->keys,
                     b->koff,
                     k->sink,
                     H,
                     hd,
                     1.0f / sqrtf((float)hd),
                     s->opt.mode == DSV4_MODE_FAITHFUL,
                     b->scratch,
                     b->contrib,
                     b->nk_max,
                     T * H,
                     0};
    dsv4_cpu_pool_run(s->pool, T * H < ws_lanes ? T * H : ws_lanes, attend_lane, &aj);
    /* inverse RoPE on each head's output tail, at the query position */
    dsv4_fw_bf16(s, b->o, T * Hc);
    for (int64_t t = 0; t < T; t++) dsv4_op_rope(b->o + t * Hc, H, hd, r, freqs, p0 + t, 1);
    dsv4_fw_bf16(s, b->o, T * Hc);

    /* grouped output: o [T, g, H/g * c] -> per group wo_a rows [g*ol, (g+1)*ol) -> z [T, g*ol]
     * -> wo_b -> out [T, D] */
    const int g = c->o_groups;
    const int64_t gw = Hc / g, ol = c->o_lora_rank;
    for (int gi = 0; gi < g; gi++) {
        for (int64_t t = 0; t < T; t++)
            memcpy(b->og + t * gw, b->o + t * Hc + gi * gw, (size_t)gw * sizeof(float));
        DSV4_TRY(dsv4_fw_linear_rows_bf16(s, &lw->wo_a, gi * ol, ol, b->og, T, b->za));
        for (int64_t t = 0; t < T; t++)
            memcpy(b->z + t * g * ol + gi * ol, b->za + t * ol, (size_t)ol * sizeof(float));
    }
    DSV4_TRY(dsv4_fw_linear_q(s, &lw->wo_b, b->z, T, out));
    return DSV4_OK;
small: /* a sizing bug in workspace.c, never a user error */
    return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                     "layer %d attention: %lld tokens at %lld exceed the workspace's key lists", li,
                     (long long)T, (long long)p0);
}

dsv4_status dsv4_forward_attn(dsv4_session *s, int li, const float *h, int64_t T, float *out)
{
    return attn_body(s, li, h, T, out, &s->ws.attn); /* regions: the session's workspace */
}
