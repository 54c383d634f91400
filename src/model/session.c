/*
 * session.c - the public session API (include/dsv4.h, "Sessions"): creation with the small
 * model constants decoded to f32, the per-token state arrays and their growth, eval with input
 * checks, fork (deep copy) and truncation (both cover the MTP block's state, which lives in the
 * same arrays after the main layers). The forward pass itself is model/forward*.c.
 */
#include "core/error.h"
#include "model/session.h"

#include <stdlib.h>
#include <string.h>

void dsv4_session_options_default(dsv4_session_options *o)
{
    if (!o) return;
    o->mode = DSV4_MODE_FAITHFUL;
    o->n_threads = 0;
    o->max_context = 0;
    o->device = DSV4_DEVICE_CPU;
}

int dsv4_model_vocab_size(const dsv4_model *m)
{
    return m ? m->cfg.vocab_size : 0;
}

/* Decodes weight `w` ([rows, cols] in any stored format) into a new f32 array. An absent
 * weight gives NULL and DSV4_OK (the caller decides whether it is needed). */
static dsv4_status decode(const dsv4_weight *w, float **out)
{
    *out = NULL;
    if (!dsv4_weight_present(w)) return DSV4_OK;
    float *p = malloc((size_t)(w->rows * w->cols) * sizeof *p);
    if (!p) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "decoding %s", w->name);
    for (int64_t r = 0; r < w->rows; r++) {
        dsv4_status st = dsv4_weight_dequant_row(w, r, p + r * w->cols);
        if (st != DSV4_OK) {
            free(p);
            return st;
        }
    }
    *out = p;
    return DSV4_OK;
}

static void comp_free(dsv4_comp_state *c)
{
    free(c->kv), free(c->gate), free(c->entries);
}

static void consts_free(dsv4_layer_consts *k)
{
    free(k->attn_norm), free(k->ffn_norm), free(k->q_norm), free(k->kv_norm), free(k->sink);
    free(k->hc_attn_base), free(k->hc_attn_scale), free(k->hc_ffn_base), free(k->hc_ffn_scale);
    free(k->comp_ape), free(k->comp_norm), free(k->idx_ape), free(k->idx_norm);
    free(k->gate_bias);
}

void dsv4_session_close(dsv4_session *s)
{
    if (!s) return;
    dsv4_session_gpu_close(s);
    const int L = s->n_layers;
    if (s->lc)
        for (int i = 0; i < L; i++) consts_free(&s->lc[i]);
    if (s->ls)
        for (int i = 0; i < L; i++) {
            free(s->ls[i].kv);
            comp_free(&s->ls[i].comp);
            comp_free(&s->ls[i].idx);
        }
    free(s->lc);
    free(s->ls);
    free(s->ids);
    free(s->norm);
    free(s->hc_head_base);
    free(s->mtp_enorm), free(s->mtp_hnorm), free(s->mtp_norm), free(s->mtp_hc_head_base);
    free(s->hmain), free(s->mtp_ids);
    dsv4_workspace_free(&s->ws);
    dsv4_cpu_pool_destroy(s->pool);
    free(s);
}

static dsv4_status need(const float *p, const dsv4_weight *w, const char *what)
{
    if (p) return DSV4_OK;
    return dsv4_fail(DSV4_ERR_MISSING_TENSOR, "the forward pass needs %s (%s)", what,
                     w->name ? w->name : "absent");
}

static dsv4_status load_consts(dsv4_session *s)
{
    const dsv4_model_weights *W = &s->m->w;
    const dsv4_config *c = s->cfg;
    float *scale = NULL;
    DSV4_TRY(decode(&W->norm, &s->norm));
    DSV4_TRY(need(s->norm, &W->norm, "the final norm"));
    DSV4_TRY(decode(&W->hc_head_base, &s->hc_head_base));
    DSV4_TRY(need(s->hc_head_base, &W->hc_head_base, "hc_head_base"));
    DSV4_TRY(decode(&W->hc_head_scale, &scale));
    DSV4_TRY(need(scale, &W->hc_head_scale, "hc_head_scale"));
    s->hc_head_scale = scale[0];
    free(scale);
    for (int i = 0; i < s->n_layers; i++) {
        const dsv4_layer_weights *lw = &W->layers[i];
        dsv4_layer_consts *k = &s->lc[i];
        DSV4_TRY(decode(&lw->attn_norm, &k->attn_norm));
        DSV4_TRY(decode(&lw->ffn_norm, &k->ffn_norm));
        DSV4_TRY(decode(&lw->q_norm, &k->q_norm));
        DSV4_TRY(decode(&lw->kv_norm, &k->kv_norm));
        DSV4_TRY(decode(&lw->attn_sink, &k->sink));
        DSV4_TRY(decode(&lw->hc_attn_base, &k->hc_attn_base));
        DSV4_TRY(decode(&lw->hc_attn_scale, &k->hc_attn_scale));
        DSV4_TRY(decode(&lw->hc_ffn_base, &k->hc_ffn_base));
        DSV4_TRY(decode(&lw->hc_ffn_scale, &k->hc_ffn_scale));
        DSV4_TRY(need(k->attn_norm, &lw->attn_norm, "attn_norm"));
        DSV4_TRY(need(k->ffn_norm, &lw->ffn_norm, "ffn_norm"));
        DSV4_TRY(need(k->q_norm, &lw->q_norm, "q_norm"));
        DSV4_TRY(need(k->kv_norm, &lw->kv_norm, "kv_norm"));
        DSV4_TRY(need(k->sink, &lw->attn_sink, "attn_sink"));
        DSV4_TRY(need(k->hc_attn_base, &lw->hc_attn_base, "hc_attn_base"));
        DSV4_TRY(need(k->hc_attn_scale, &lw->hc_attn_scale, "hc_attn_scale"));
        DSV4_TRY(need(k->hc_ffn_base, &lw->hc_ffn_base, "hc_ffn_base"));
        DSV4_TRY(need(k->hc_ffn_scale, &lw->hc_ffn_scale, "hc_ffn_scale"));
        if (lw->compress_ratio > 0) {
            DSV4_TRY(decode(&lw->compressor.ape, &k->comp_ape));
            DSV4_TRY(decode(&lw->compressor.norm, &k->comp_norm));
            DSV4_TRY(need(k->comp_ape, &lw->compressor.ape, "compressor.ape"));
            DSV4_TRY(need(k->comp_norm, &lw->compressor.norm, "compressor.norm"));
        }
        if (lw->compress_ratio == 4) {
            DSV4_TRY(decode(&lw->idx_compressor.ape, &k->idx_ape));
            DSV4_TRY(decode(&lw->idx_compressor.norm, &k->idx_norm));
            DSV4_TRY(need(k->idx_ape, &lw->idx_compressor.ape, "indexer.compressor.ape"));
            DSV4_TRY(need(k->idx_norm, &lw->idx_compressor.norm, "indexer.compressor.norm"));
        }
        if (!lw->hash_routed) DSV4_TRY(decode(&lw->gate_bias, &k->gate_bias)); /* may be absent */
        if (lw->hash_routed && !dsv4_weight_present(&lw->tid2eid))
            return dsv4_fail(DSV4_ERR_MISSING_TENSOR, "layer %d is hash-routed but has no tid2eid",
                             i);
    }
    if (s->n_mtp > 0) { /* MTP block 0's own norms and head collapse */
        const dsv4_layer_weights *lw = &W->layers[c->num_layers];
        DSV4_TRY(decode(&lw->enorm, &s->mtp_enorm));
        DSV4_TRY(need(s->mtp_enorm, &lw->enorm, "mtp enorm"));
        DSV4_TRY(decode(&lw->hnorm, &s->mtp_hnorm));
        DSV4_TRY(need(s->mtp_hnorm, &lw->hnorm, "mtp hnorm"));
        DSV4_TRY(decode(&lw->norm, &s->mtp_norm));
        DSV4_TRY(need(s->mtp_norm, &lw->norm, "mtp norm"));
        DSV4_TRY(decode(&lw->hc_head_base, &s->mtp_hc_head_base));
        DSV4_TRY(need(s->mtp_hc_head_base, &lw->hc_head_base, "mtp hc_head_base"));
        DSV4_TRY(decode(&lw->hc_head_scale, &scale));
        DSV4_TRY(need(scale, &lw->hc_head_scale, "mtp hc_head_scale"));
        s->mtp_hc_head_scale = scale[0];
        free(scale);
        const dsv4_weight *mats[3] = {&lw->e_proj, &lw->h_proj, &lw->hc_head_fn};
        for (int j = 0; j < 3; j++)
            if (!dsv4_weight_present(mats[j]))
                return dsv4_fail(DSV4_ERR_MISSING_TENSOR, "the MTP block needs %s",
                                 mats[j]->name ? mats[j]->name : "e_proj/h_proj/hc_head_fn");
    }
    return DSV4_OK;
}

static void comp_init(dsv4_comp_state *cs, int ratio, int dim)
{
    cs->ratio = ratio;
    cs->dim = dim;
    cs->width = ratio == 4 ? 2 * dim : dim;
}

dsv4_status dsv4_session_create(dsv4_model *m, const dsv4_session_options *o, dsv4_session **out)
{
    dsv4_clear_error();
    if (!out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_session_create: out is NULL");
    *out = NULL;
    if (!m) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_session_create: model is NULL");
    const dsv4_config *c = &m->cfg;
    if (c->rope_dim > DSV4_ROPE_MAX || c->rope_dim % 2 || c->rope_dim > c->index_head_dim)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "rope_dim %d: the CPU forward needs an even rope_dim <= %d and <= "
                         "index_head_dim (%d)",
                         c->rope_dim, DSV4_ROPE_MAX, c->index_head_dim);
    if (c->hc_mult > 16 || c->n_shared_experts > 1)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "hc_mult %d / n_shared_experts %d: the CPU forward supports up to 16 "
                         "streams and one shared expert",
                         c->hc_mult, c->n_shared_experts);
    dsv4_session *s = calloc(1, sizeof *s);
    if (!s) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating a session");
    s->m = m;
    s->cfg = c;
    dsv4_session_options_default(&s->opt);
    if (o) s->opt = *o;
    if (s->opt.mode != DSV4_MODE_EXACT && s->opt.mode != DSV4_MODE_FAITHFUL) {
        const int mode = (int)s->opt.mode;
        free(s);
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "numeric mode %d is neither exact nor faithful",
                         mode);
    }
    dsv4_device_kind dev = s->opt.device;
    if (dev == DSV4_DEVICE_AUTO && s->opt.mode == DSV4_MODE_EXACT) dev = DSV4_DEVICE_CPU;
    if (dev == DSV4_DEVICE_AUTO || dev == DSV4_DEVICE_CUDA) {
        dsv4_status st = dsv4_device_resolve(dev, &dev, NULL, 0);
        if (st == DSV4_OK && dev == DSV4_DEVICE_CUDA) st = dsv4_session_gpu_open(s);
        if (st != DSV4_OK || dev == DSV4_DEVICE_CUDA) {
            if (st != DSV4_OK) {
                dsv4_session_close(s);
                return st;
            }
            *out = s;
            return DSV4_OK;
        }
    } else if (dev != DSV4_DEVICE_CPU) {
        free(s);
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "device %d is not auto, cpu or cuda", (int)dev);
    }
    s->opt.device = DSV4_DEVICE_CPU;
    if (s->opt.max_context <= 0) s->opt.max_context = c->max_position_embeddings;
    s->n_layers = m->w.n_layers > c->num_layers ? m->w.n_layers : c->num_layers;
    s->n_mtp = s->n_layers - c->num_layers;
    s->lc = calloc((size_t)s->n_layers, sizeof *s->lc);
    s->ls = calloc((size_t)s->n_layers, sizeof *s->ls);
    dsv4_status st = DSV4_OK;
    if (!s->lc || !s->ls) st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating a session");
    if (st == DSV4_OK) st = dsv4_cpu_pool_create(s->opt.n_threads, &s->pool);
    if (st == DSV4_OK) st = load_consts(s);
    if (st != DSV4_OK) {
        dsv4_session_close(s);
        return st;
    }
    for (int i = 0; i < s->n_layers; i++) {
        const int ratio = m->w.layers[i].compress_ratio;
        if (ratio > 0) comp_init(&s->ls[i].comp, ratio, c->head_dim);
        if (ratio == 4) comp_init(&s->ls[i].idx, ratio, c->index_head_dim);
        s->ls[i].idx.is_index = 1;
    }
    dsv4_rope_freqs(s->rope_main, c->rope_dim, c->rope_theta, 1.0f, 0, 0, 0);
    dsv4_rope_freqs(s->rope_comp, c->rope_dim, c->compress_rope_theta, c->yarn_factor,
                    c->yarn_original_max_position, c->yarn_beta_fast, c->yarn_beta_slow);
    *out = s;
    return DSV4_OK;
}

/* realloc that keeps the old block on failure; n elements of `size` bytes. */
static int grow(void *pp, int64_t n, size_t size)
{
    void **p = pp;
    void *q = realloc(*p, (size_t)(n > 0 ? n : 1) * size);
    if (!q) return -1;
    *p = q;
    return 0;
}

static int comp_grow(dsv4_comp_state *cs, int64_t cap)
{
    if (cs->ratio == 0) return 0;
    if (grow(&cs->kv, cap * cs->width, sizeof(float))) return -1;
    if (grow(&cs->gate, cap * cs->width, sizeof(float))) return -1;
    return grow(&cs->entries, (cap / cs->ratio + 1) * cs->dim, sizeof(float));
}

/* Makes room for `n` tokens in every per-token array (the history; owned by the session, freed
 * by dsv4_session_close). Growth rule: the capacity at least doubles (64 at first), clamped to
 * max_context, so over a run of one-token decode steps only the steps that cross a capacity
 * allocate (amortised O(1)); every other step finds room. The forward workspace follows the
 * capacity (workspace.h), so it relays out on those same steps and no others. */
static dsv4_status reserve(dsv4_session *s, int64_t n)
{
    if (n <= s->cap) return DSV4_OK;
    int64_t cap = s->cap * 2 > n ? s->cap * 2 : n;
    if (cap < 64) cap = 64;
    if (cap > s->opt.max_context && n <= s->opt.max_context) cap = s->opt.max_context;
    int fail = grow(&s->ids, cap, sizeof(int32_t));
    if (s->n_mtp > 0 && !fail)
        fail = grow(&s->hmain, cap * s->cfg->hc_mult * s->cfg->hidden_size, sizeof(float)) ||
               grow(&s->mtp_ids, cap, sizeof(int32_t));
    for (int i = 0; i < s->n_layers && !fail; i++) {
        dsv4_layer_state *ls = &s->ls[i];
        fail = grow(&ls->kv, cap * s->cfg->head_dim, sizeof(float)) || comp_grow(&ls->comp, cap) ||
               comp_grow(&ls->idx, cap);
    }
    if (fail)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "growing the session state to %lld tokens",
                         (long long)cap);
    s->cap = cap;
    return DSV4_OK;
}

static void truncate_to(dsv4_session *s, int64_t n)
{
    dsv4_mtp_truncate(s, n);
    for (int i = 0; i < s->cfg->num_layers; i++) {
        dsv4_comp_state *cs[2] = {&s->ls[i].comp, &s->ls[i].idx};
        for (int j = 0; j < 2; j++)
            if (cs[j]->ratio > 0 && cs[j]->n_entries > n / cs[j]->ratio)
                cs[j]->n_entries = n / cs[j]->ratio;
    }
    s->pos = n;
}

dsv4_status dsv4_session_eval(dsv4_session *s, const int32_t *ids, int64_t n, float *logits,
                              int all_positions)
{
    dsv4_clear_error();
    if (!s) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_session_eval: session is NULL");
    if (n < 0 || (n > 0 && !ids))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_session_eval: %lld ids at %p",
                         (long long)n, (const void *)ids);
    if (n == 0) return DSV4_OK;
    const int V = s->cfg->vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return dsv4_fail(DSV4_ERR_INPUT,
                             "token id %d (input %lld) is outside the vocabulary [0, %d)", ids[i],
                             (long long)i, V);
    if (n > s->opt.max_context - s->pos)
        return dsv4_fail(DSV4_ERR_CONTEXT_OVERFLOW,
                         "%lld tokens after %lld would exceed the session's context of %lld",
                         (long long)n, (long long)s->pos, (long long)s->opt.max_context);
    if (s->eng) return dsv4_session_gpu_eval(s, ids, n, logits, all_positions);
    DSV4_TRY(reserve(s, s->pos + n));
    memcpy(s->ids + s->pos, ids, (size_t)n * sizeof *ids);
    const int64_t p0 = s->pos;
    dsv4_status st = dsv4_forward(s, ids, n, logits, all_positions);
    if (st != DSV4_OK) {
        truncate_to(s, p0); /* drop whatever the failed chunk appended */
        return st;
    }
    s->pos = p0 + n;
    return DSV4_OK;
}

int64_t dsv4_session_position(const dsv4_session *s)
{
    return s ? s->pos : 0;
}

dsv4_status dsv4_session_truncate(dsv4_session *s, int64_t n_tokens)
{
    dsv4_clear_error();
    if (!s) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_session_truncate: session is NULL");
    if (n_tokens < 0 || n_tokens > s->pos)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "dsv4_session_truncate: %lld tokens is outside [0, %lld]",
                         (long long)n_tokens, (long long)s->pos);
    if (s->eng) return dsv4_session_gpu_truncate(s, n_tokens);
    truncate_to(s, n_tokens);
    return DSV4_OK;
}

static void comp_copy(dsv4_comp_state *d, const dsv4_comp_state *src, int64_t pos)
{
    if (src->ratio == 0) return;
    memcpy(d->kv, src->kv, (size_t)(pos * src->width) * sizeof(float));
    memcpy(d->gate, src->gate, (size_t)(pos * src->width) * sizeof(float));
    memcpy(d->entries, src->entries, (size_t)(src->n_entries * src->dim) * sizeof(float));
    d->n_entries = src->n_entries;
}

dsv4_status dsv4_session_fork(const dsv4_session *s, dsv4_session **out)
{
    dsv4_clear_error();
    if (!s || !out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_session_fork: NULL argument");
    *out = NULL;
    dsv4_session *d = NULL;
    DSV4_TRY(dsv4_session_create(s->m, &s->opt, &d));
    if (s->eng) {
        dsv4_status st = dsv4_session_gpu_fork(s, d);
        if (st != DSV4_OK) dsv4_session_close(d), d = NULL;
        *out = d;
        return st;
    }
    dsv4_status st = reserve(d, s->pos > 0 ? s->pos : 1);
    if (st != DSV4_OK) {
        dsv4_session_close(d);
        return st;
    }
    memcpy(d->ids, s->ids, (size_t)s->pos * sizeof *s->ids);
    for (int i = 0; i < s->n_layers; i++) {
        const int64_t held = i < s->cfg->num_layers ? s->pos : s->mtp_pos; /* MTP: its own */
        memcpy(d->ls[i].kv, s->ls[i].kv, (size_t)(held * s->cfg->head_dim) * sizeof(float));
        comp_copy(&d->ls[i].comp, &s->ls[i].comp, held);
        comp_copy(&d->ls[i].idx, &s->ls[i].idx, held);
    }
    if (s->hmain) {
        memcpy(d->hmain, s->hmain,
               (size_t)(s->pos * s->cfg->hc_mult * s->cfg->hidden_size) * sizeof(float));
        memcpy(d->mtp_ids, s->mtp_ids, (size_t)s->mtp_pos * sizeof *s->mtp_ids);
    }
    d->mtp_pos = s->mtp_pos;
    d->pos = s->pos;
    *out = d;
    return DSV4_OK;
}

void dsv4_session_set_capture(dsv4_session *s, dsv4_capture_fn fn, void *user)
{
    if (!s) return;
    s->capture = fn;
    s->capture_user = user;
}
