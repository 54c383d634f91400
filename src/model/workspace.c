/*
 * workspace.c - sizing and layout of the forward pass's per-session workspace (workspace.h):
 * one block, carved into named regions by one function that runs twice, first to measure, then
 * to place.
 */
#include "core/error.h"
#include "model/session.h"
#include "model/workspace.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum { WS_ALIGN = 64 };

static atomic_llong ws_grows;

int64_t dsv4_workspace_grow_count(void)
{
    return (int64_t)atomic_load(&ws_grows);
}

/* Bump carving: with base == NULL only measures. */
typedef struct carver {
    char *base;
    size_t off;
} carver;

static void *carve(carver *cv, int64_t n, size_t elem)
{
    cv->off = (cv->off + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN;
    void *p = cv->base ? cv->base + cv->off : NULL;
    cv->off += (size_t)(n > 0 ? n : 1) * elem;
    return p;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* The most keys one token of any layer (MTP blocks included) sees with `cap` tokens held: the
 * window (all W slots in faithful mode), then the indexer's top-k (CSA) or every entry (HCA). */
static int64_t keys_per_token(const dsv4_session *s, int64_t cap)
{
    const dsv4_config *c = s->cfg;
    int64_t most = 0;
    for (int i = 0; i < s->n_layers; i++) {
        const int ratio = s->m->w.layers[i].compress_ratio;
        int64_t extra = 0;
        if (ratio == 4)
            extra = c->index_topk;
        else if (ratio > 0)
            extra = cap / ratio;
        most = max64(most, extra);
    }
    return c->sliding_window + most;
}

/* The widest expert intermediate size over all layers (shared experts included). */
static int64_t widest_expert(const dsv4_session *s)
{
    int64_t I = 0;
    for (int i = 0; i < s->n_layers; i++) {
        const dsv4_layer_weights *lw = &s->m->w.layers[i];
        I = max64(I, lw->shared.w1.rows);
        for (int e = 0; e < s->cfg->n_routed_experts; e++) I = max64(I, lw->experts[e].w1.rows);
    }
    return I;
}

/* Places every region for chunk T, capacity cap; returns the bytes used. */
static size_t layout(const dsv4_session *s, dsv4_workspace *ws, char *base, int64_t T, int64_t cap)
{
    const dsv4_config *c = s->cfg;
    const int64_t n = c->hc_mult, D = c->hidden_size, nD = n * D, mixn = (2 + n) * n;
    const int64_t H = c->num_heads, hd = c->head_dim, Hc = H * hd, ql = c->q_lora_rank;
    const int64_t g = c->o_groups, ol = c->o_lora_rank, nh = c->index_n_heads;
    const int64_t E = c->n_routed_experts, K = c->n_experts_per_tok > 0 ? c->n_experts_per_tok : 1;
    const int64_t topk = c->index_topk > 0 ? c->index_topk : 1, I = widest_expert(s);
    const int64_t lanes = ws->lanes, nk = keys_per_token(s, cap);
    carver cv = {base, 0};

    dsv4_fwd_buf *f = &ws->fwd;
    f->X = carve(&cv, T * nD, sizeof(float));
    f->Xo = carve(&cv, T * nD, sizeof(float));
    f->flat = carve(&cv, T * nD, sizeof(float));
    f->mix = carve(&cv, T * mixn, sizeof(float));
    f->pre = carve(&cv, T * n, sizeof(float));
    f->post = carve(&cv, T * n, sizeof(float));
    f->comb = carve(&cv, T * n * n, sizeof(float));
    f->y = carve(&cv, T * D, sizeof(float));
    f->h = carve(&cv, T * D, sizeof(float));
    f->f = carve(&cv, T * D, sizeof(float));

    /* the inputs of the projections dsv4_fw_linear_q quantises: [T, D] (wq_a, wkv, e_proj),
     * [T, ql] (wq_b, indexer wq_b), [T, g*ol] (wo_b), [T*n, D] (h_proj), experts [T*K, D] and
     * [T*K, I] */
    int64_t width = max64(max64(D, ql), max64(g * ol, I));
    ws->xq_len = T * max64(K, n) * width;
    ws->xq = carve(&cv, ws->xq_len, sizeof(float));
    ws->mtp_tok = carve(&cv, T, sizeof(int32_t));

    const size_t shared = cv.off;
    dsv4_attn_buf *a = &ws->attn;
    a->qr = carve(&cv, T * ql, sizeof(float));
    a->q = carve(&cv, T * Hc, sizeof(float));
    a->o = carve(&cv, T * Hc, sizeof(float));
    a->og = carve(&cv, T * (Hc / (g > 0 ? g : 1)), sizeof(float));
    a->z = carve(&cv, T * g * ol, sizeof(float));
    a->za = carve(&cv, T * ol, sizeof(float));
    a->iq = carve(&cv, T * nh * c->index_head_dim, sizeof(float));
    a->iw = carve(&cv, T * nh, sizeof(float));
    a->sel = carve(&cv, T * topk, sizeof(int32_t));
    a->nsel = carve(&cv, T, sizeof(int));
    a->keys = carve(&cv, T * nk, sizeof(float *));
    a->koff = carve(&cv, T + 1, sizeof(int64_t));
    a->scratch = carve(&cv, lanes * nk, sizeof(float));
    a->contrib = carve(&cv, lanes * hd, sizeof(double));
    a->iscores_len = cap / 4 + 1;
    a->iscores = carve(&cv, lanes * a->iscores_len, sizeof(float));
    a->nk_max = nk;
    const size_t attn_end = cv.off;

    cv.off = shared; /* the MoE sublayer reuses the attention's area */
    dsv4_moe_buf *mo = &ws->moe;
    mo->logits = carve(&cv, T * E, sizeof(float));
    mo->scores = carve(&cv, T * E, sizeof(float));
    mo->wts = carve(&cv, T * K, sizeof(float));
    mo->sel = carve(&cv, T * K, sizeof(int32_t));
    mo->xg = carve(&cv, T * K * D, sizeof(float));
    mo->yg = carve(&cv, T * K * D, sizeof(float));
    mo->g = carve(&cv, T * K * I, sizeof(float));
    mo->u = carve(&cv, T * K * I, sizeof(float));
    mo->acc = carve(&cv, T * D, sizeof(float));
    mo->tok = carve(&cv, T * K, sizeof(int64_t));
    mo->slot = carve(&cv, T * K, sizeof(int));
    mo->wg = carve(&cv, T * K, sizeof(float));
    return cv.off > attn_end ? cv.off : attn_end;
}

dsv4_status dsv4_workspace_reserve(dsv4_session *s, int64_t T)
{
    dsv4_workspace *ws = &s->ws;
    if (T <= ws->T && s->cap == ws->cap) return DSV4_OK;
    const int64_t Tn = T > ws->T ? T : ws->T;
    ws->lanes = dsv4_cpu_pool_size(s->pool);
    const size_t bytes = layout(s, ws, NULL, Tn, s->cap) + WS_ALIGN;
    if (bytes > ws->bytes) {
        /* free + malloc, not realloc: nothing in the block outlives a step */
        free(ws->mem);
        ws->mem = malloc(bytes);
        ws->bytes = ws->mem ? bytes : 0;
        ws->T = ws->cap = 0;
        atomic_fetch_add(&ws_grows, 1);
        if (!ws->mem)
            return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY,
                             "forward workspace: %zu bytes for %lld tokens (capacity %lld)", bytes,
                             (long long)Tn, (long long)s->cap);
    }
    const uintptr_t a = ((uintptr_t)ws->mem + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN;
    layout(s, ws, (char *)a, Tn, s->cap);
    ws->T = Tn;
    ws->cap = s->cap;
    return DSV4_OK;
}

void dsv4_workspace_free(dsv4_workspace *ws)
{
    free(ws->mem);
    memset(ws, 0, sizeof *ws);
}
