/*
 * engine.c - setting up a dsv4_engine (memory plan, weight upload, decoded vectors, slot state,
 * scratch) and running steps on it: prefill chunks, batched decode (replayed from a CUDA graph
 * per batch bucket), the LM head and the logits' way back to the host. The layer loop itself is
 * engine_layer.c.
 */
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "engine/engine_internal.h"

#include <stdlib.h>
#include <string.h>

void dsv4_engine_options_default(dsv4_engine_options *o)
{
    memset(o, 0, sizeof *o);
    o->device = DSV4_DEVICE_CPU;
    o->max_slots = 1;
    o->max_chunk = 256;
    o->graphs = 1;
    /* PDL on the graphs of <= DSV4_ENGINE_PDL_ROWS rows (engine.h) */
    o->pdl = -1;
}

/* ---- the memory plan ------------------------------------------------------------------------ */
typedef struct sizes {
    int64_t ctx, R, Rc4, Rc128, cap4, cap128, logit_rows, xq_cols, cw, I_max;
} sizes;

/* n rounded up to whole pages of the attention cache, so that a slot's entries are one span of
 * bytes (kv_layout.h numbers entries across the buffer). */
static int64_t whole_pages(int64_t n)
{
    return (n + DSV4_KV_PAGE - 1) / DSV4_KV_PAGE * DSV4_KV_PAGE;
}

static void resolve(const dsv4_config *c, const dsv4_engine_options *o, sizes *z)
{
    z->ctx = o->max_context > 0 ? o->max_context : c->max_position_embeddings;
    z->R = whole_pages(c->sliding_window + o->max_chunk);
    z->Rc4 = 2 * 4 + o->max_chunk;
    z->Rc128 = 2 * 128 + o->max_chunk;
    z->cap4 = whole_pages(z->ctx / 4 + 1);
    z->cap128 = whole_pages(z->ctx / 128 + 1);
    z->logit_rows = o->max_slots < o->max_chunk ? o->max_slots : o->max_chunk;
    const int64_t D = c->hidden_size, ql = c->q_lora_rank,
                  z_w = (int64_t)c->o_groups * c->o_lora_rank;
    z->xq_cols = D > ql ? D : ql;
    if (z_w > z->xq_cols) z->xq_cols = z_w;
    const int64_t hd2 = 2 * (int64_t)c->head_dim, id2 = 2 * (int64_t)c->index_head_dim;
    z->cw = hd2 > id2 ? hd2 : id2;
    const int64_t shared_I =
        (int64_t)c->moe_intermediate_size * (c->n_shared_experts > 0 ? c->n_shared_experts : 1);
    z->I_max = shared_I > c->moe_intermediate_size ? shared_I : c->moe_intermediate_size;
}

/* Bytes of one slot's n cached entries (n whole pages) in the serving layout (kv_layout.h): the
 * attention's, or the indexer's keys (index). */
static uint64_t cache_bytes(const dsv4_config *c, int index, int64_t n)
{
    const dsv4_kv_layout l =
        index ? dsv4_ik_layout_of(c->index_head_dim) : dsv4_kv_layout_of(c->head_dim, c->rope_dim);
    return (uint64_t)dsv4_kv_bytes(&l, n);
}

/* The scratch regions in one list, so that planning and carving agree (engine_internal.h). */
typedef struct region {
    void **p;
    uint64_t bytes;
} region;

static int scratch_regions(const dsv4_config *c, const dsv4_engine_options *o, const sizes *z,
                           eng_scratch *s, region *out)
{
    const int64_t N = o->max_chunk, n = c->hc_mult, D = c->hidden_size, nD = n * D;
    const int64_t Hc = (int64_t)c->num_heads * c->head_dim, F = sizeof(float);
    int k = 0;
#define R_(field, count) out[k++] = (region){(void **)&s->field, (uint64_t)(count)*F}
    R_(X, N * nD);
    R_(Xo, N * nD);
    R_(post, N * n);
    R_(comb, N * n * n);
    R_(h, N * D);
    R_(f, N * D);
    R_(post2, N * n);
    R_(comb2, N * n * n);
    R_(f2, N * D);
    R_(xh, N * D);
    R_(xq, N * z->xq_cols);
    R_(qr, N * c->q_lora_rank);
    R_(q, N * Hc);
    R_(kv, N * c->head_dim);
    R_(o, N * Hc);
    R_(z, N * c->o_groups * c->o_lora_rank);
    R_(ck, N * z->cw);
    R_(cg, N * z->cw);
    R_(ick, N * 2 * c->index_head_dim);
    R_(icg, N * 2 * c->index_head_dim);
    R_(iq, N * c->index_n_heads * c->index_head_dim);
    R_(iw, N * c->index_n_heads);
    R_(sel, N * c->index_topk);
    R_(logits_e, N * c->n_routed_experts);
    R_(msel, N * c->n_experts_per_tok);
    R_(wts, N * c->n_experts_per_tok);
    R_(rows, 3 * N);
    R_(ixflag, c->num_layers + c->num_mtp_layers); /* a signal a layer (int32) */
    R_(logits, z->logit_rows * c->vocab_size);
#undef R_
    out[k++] = (region){&s->moe_ws, dsv4_bk_moe_ws_bytes(N, c->n_experts_per_tok, D, z->I_max,
                                                         c->n_routed_experts)};
    out[k++] = (region){&s->idx_ws, dsv4_bk_indexer_ws_bytes(N, z->cap4)};
    return k;
}

enum { MAX_REGIONS = 40 };

static uint64_t layer_weight_bytes(const dsv4_layer_weights *lw, int E)
{
    const dsv4_weight *ws[] = {&lw->hc_attn_fn,
                               &lw->hc_ffn_fn,
                               &lw->wq_a,
                               &lw->wq_b,
                               &lw->wkv,
                               &lw->wo_a,
                               &lw->wo_b,
                               &lw->compressor.wkv,
                               &lw->compressor.wgate,
                               &lw->idx_wq_b,
                               &lw->idx_weights_proj,
                               &lw->idx_compressor.wkv,
                               &lw->idx_compressor.wgate,
                               &lw->gate,
                               &lw->shared.w1,
                               &lw->shared.w2,
                               &lw->shared.w3};
    uint64_t t = 0;
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) t += dsv4_weight_bytes(ws[i]);
    for (int x = 0; x < E && lw->experts; x++)
        t += dsv4_weight_bytes(&lw->experts[x].w1) + dsv4_weight_bytes(&lw->experts[x].w2) +
             dsv4_weight_bytes(&lw->experts[x].w3);
    return t;
}

static dsv4_status check_options(const dsv4_model *m, const dsv4_engine_options *o)
{
    const dsv4_config *c = &m->cfg;
    if (o->max_slots < 1 || o->max_chunk < 1 || o->max_slots > 4096 || o->max_chunk > 65536)
        return dsv4_fail(
            DSV4_ERR_INVALID_ARGUMENT,
            "engine: max_slots %d and max_chunk %d must be in [1, 4096] and [1, 65536]",
            o->max_slots, o->max_chunk);
    if (c->rope_dim > DSV4_ROPE_MAX || c->rope_dim % 2 || c->hc_mult > 16 ||
        c->n_shared_experts > 1)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "engine: rope_dim %d, hc_mult %d, n_shared_experts %d are outside what "
                         "the backends support (even rope_dim <= %d, hc_mult <= 16, one shared "
                         "expert)",
                         c->rope_dim, c->hc_mult, c->n_shared_experts, DSV4_ROPE_MAX);
    for (int i = 0; i < c->num_layers; i++)
        if (c->compress_ratio[i] != 0 && c->compress_ratio[i] != 4 && c->compress_ratio[i] != 128)
            return dsv4_fail(DSV4_ERR_UNSUPPORTED, "engine: layer %d compress ratio %d", i,
                             c->compress_ratio[i]);
    return DSV4_OK;
}

dsv4_status dsv4_engine_plan_memory(const dsv4_model *m, const dsv4_engine_options *o,
                                    dsv4_engine_plan *p)
{
    DSV4_TRY(check_options(m, o));
    const dsv4_config *c = &m->cfg;
    sizes z;
    resolve(c, o, &z);
    memset(p, 0, sizeof *p);
    p->max_context = z.ctx;
    p->window_ring = z.R;
    p->comp_ring = z.Rc128;
    const int64_t S1 = o->max_slots + 1, hd = c->head_dim, id = c->index_head_dim;
    p->weight_bytes = dsv4_weight_bytes(&m->w.embed) + dsv4_weight_bytes(&m->w.head) +
                      dsv4_weight_bytes(&m->w.hc_head_fn);
    for (int i = 0; i < c->num_layers; i++) {
        p->weight_bytes += layer_weight_bytes(&m->w.layers[i], c->n_routed_experts);
        p->state_bytes += (uint64_t)S1 * cache_bytes(c, 0, z.R);
        const int ratio = c->compress_ratio[i];
        if (ratio == 4)
            p->state_bytes +=
                (uint64_t)S1 * ((uint64_t)(z.Rc4 * 2 * (2 * hd + 2 * id) * 4) +
                                cache_bytes(c, 0, z.cap4) + cache_bytes(c, 1, z.cap4));
        else if (ratio == 128)
            p->state_bytes +=
                (uint64_t)S1 * ((uint64_t)(z.Rc128 * 2 * hd * 4) + cache_bytes(c, 0, z.cap128));
        if (c->hash_layer[i]) p->state_bytes += (uint64_t)c->vocab_size * c->n_experts_per_tok * 4;
    }
    eng_scratch s;
    region rg[MAX_REGIONS];
    const int nr = scratch_regions(c, o, &z, &s, rg);
    for (int i = 0; i < nr; i++) p->scratch_bytes += (rg[i].bytes + 255) / 256 * 256;
    p->total_bytes = p->weight_bytes + p->state_bytes + p->scratch_bytes;
    return DSV4_OK;
}

/* ---- setup ---------------------------------------------------------------------------------- */
static int is_random(const dsv4_engine *e)
{
    return e->o.random_seed != 0;
}

/* A weight the model has (random models: every described one). */
static int has(const dsv4_engine *e, const dsv4_weight *w)
{
    return is_random(e) ? w->rows * w->cols > 0 && w->data_bytes > 0 : dsv4_weight_present(w);
}

static dsv4_status up(dsv4_engine *e, const dsv4_weight *src, dsv4_weight *dst, uint64_t salt,
                      const char *what)
{
    memset(dst, 0, sizeof *dst);
    if (!has(e, src))
        return dsv4_fail(DSV4_ERR_MISSING_TENSOR, "the engine needs %s (%s)", what,
                         src->name ? src->name : "absent");
    return dsv4_bk_weight_upload(e->b, src, is_random(e) ? e->o.random_seed * 1000003u + salt : 0,
                                 dst);
}

/* A small vector decoded to f32 on the host and copied to backend memory. Random models get
 * `fill` everywhere (norms 1, biases 0...). n: elements expected. */
static dsv4_status vec(dsv4_engine *e, const dsv4_weight *w, int64_t n, float fill, float **out,
                       const char *what)
{
    *out = NULL;
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    if (!h) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "decoding %s", what);
    dsv4_status st = DSV4_OK;
    if (is_random(e)) {
        for (int64_t i = 0; i < n; i++) h[i] = fill;
    } else if (!dsv4_weight_present(w)) {
        st = dsv4_fail(DSV4_ERR_MISSING_TENSOR, "the engine needs %s (%s)", what,
                       w->name ? w->name : "absent");
    } else if (dsv4_weight_numel(w) != n) {
        st = dsv4_fail(DSV4_ERR_TENSOR_SHAPE, "%s: %lld elements, expected %lld", w->name,
                       (long long)dsv4_weight_numel(w), (long long)n);
    } else {
        for (int64_t r = 0; r < w->rows && st == DSV4_OK; r++)
            st = dsv4_weight_dequant_row(w, r, h + r * w->cols);
    }
    if (st == DSV4_OK) st = dsv4_bk_alloc(e->b, (size_t)n * sizeof(float), (void **)out);
    if (st == DSV4_OK) st = dsv4_bk_upload(e->b, *out, h, (size_t)n * sizeof(float));
    free(h);
    return st;
}

/* tid2eid as int32 [vocab, K], every entry checked to be an expert. */
static dsv4_status table(dsv4_engine *e, const dsv4_weight *w, int li, int32_t **out)
{
    const dsv4_config *c = e->c;
    const int64_t V = c->vocab_size, K = c->n_experts_per_tok, E = c->n_routed_experts;
    int32_t *h = malloc((size_t)(V * K) * sizeof *h);
    if (!h) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "decoding tid2eid of layer %d", li);
    dsv4_status st = DSV4_OK;
    if (is_random(e)) {
        for (int64_t v = 0; v < V; v++)
            for (int64_t j = 0; j < K; j++) h[v * K + j] = (int32_t)((v * 7 + j * (E / K)) % E);
    } else if (!dsv4_weight_present(w) || w->rows != V || w->cols != K) {
        st = dsv4_fail(DSV4_ERR_MISSING_TENSOR,
                       "layer %d is hash-routed: needs tid2eid [%lld, %lld]", li, (long long)V,
                       (long long)K);
    } else {
        const uint8_t *p = w->data;
        for (int64_t i = 0; i < V * K && st == DSV4_OK; i++) {
            int64_t x;
            if (w->dtype == DSV4_DT_I64) {
                memcpy(&x, p + i * 8, 8);
            } else {
                int32_t x32;
                memcpy(&x32, p + i * 4, 4);
                x = x32;
            }
            if (x < 0 || x >= E)
                st = dsv4_fail(DSV4_ERR_FORMAT, "%s[%lld][%lld] = %lld: not an expert in [0, %lld)",
                               w->name, (long long)(i / K), (long long)(i % K), (long long)x,
                               (long long)E);
            h[i] = (int32_t)x;
        }
    }
    if (st == DSV4_OK) st = dsv4_bk_alloc(e->b, (size_t)(V * K) * 4, (void **)out);
    if (st == DSV4_OK) st = dsv4_bk_upload(e->b, *out, h, (size_t)(V * K) * 4);
    free(h);
    return st;
}

static dsv4_status comp_setup(dsv4_engine *e, eng_comp *cs, const dsv4_compressor_weights *cw,
                              int ratio, int dim, int64_t cap, int Rc, int index, const char *what)
{
    const int64_t S1 = e->S + 1;
    cs->ratio = ratio;
    cs->dim = dim;
    cs->width = ratio == 4 ? 2 * dim : dim;
    cs->cap = cap;
    cs->slot_bytes = cache_bytes(e->c, index, cap);
    DSV4_TRY(vec(e, &cw->ape, (int64_t)ratio * cs->width, 0.0f, &cs->ape, what));
    DSV4_TRY(vec(e, &cw->norm, dim, 1.0f, &cs->norm, what));
    const size_t ring = (size_t)(S1 * Rc * cs->width) * sizeof(float);
    DSV4_TRY(dsv4_bk_alloc(e->b, ring, (void **)&cs->ring_kv));
    DSV4_TRY(dsv4_bk_alloc(e->b, ring, (void **)&cs->ring_gate));
    return dsv4_bk_alloc(e->b, (size_t)((uint64_t)S1 * cs->slot_bytes), &cs->ent);
}

static dsv4_status layer_setup(dsv4_engine *e, int li, const sizes *z)
{
    const dsv4_config *c = e->c;
    const dsv4_layer_weights *hw = &e->m->w.layers[li];
    eng_layer *L = &e->L[li];
    dsv4_layer_weights *w = &L->w;
    const int E = c->n_routed_experts, hd = c->head_dim;
    const int64_t D = c->hidden_size, n = c->hc_mult;
    const uint64_t salt = (uint64_t)li << 20;
    L->ratio = c->compress_ratio[li];
    L->hash = c->hash_layer[li];
    w->compress_ratio = L->ratio;
    w->hash_routed = L->hash;

    DSV4_TRY(up(e, &hw->hc_attn_fn, &w->hc_attn_fn, salt + 1, "hc_attn_fn"));
    DSV4_TRY(up(e, &hw->hc_ffn_fn, &w->hc_ffn_fn, salt + 2, "hc_ffn_fn"));
    DSV4_TRY(up(e, &hw->wq_a, &w->wq_a, salt + 3, "wq_a"));
    DSV4_TRY(up(e, &hw->wq_b, &w->wq_b, salt + 4, "wq_b"));
    DSV4_TRY(up(e, &hw->wkv, &w->wkv, salt + 5, "wkv"));
    DSV4_TRY(up(e, &hw->wo_a, &w->wo_a, salt + 6, "wo_a"));
    DSV4_TRY(up(e, &hw->wo_b, &w->wo_b, salt + 7, "wo_b"));
    DSV4_TRY(up(e, &hw->gate, &w->gate, salt + 8, "the router gate"));
    DSV4_TRY(up(e, &hw->shared.w1, &w->shared.w1, salt + 9, "shared expert w1"));
    DSV4_TRY(up(e, &hw->shared.w2, &w->shared.w2, salt + 10, "shared expert w2"));
    DSV4_TRY(up(e, &hw->shared.w3, &w->shared.w3, salt + 11, "shared expert w3"));
    if (L->ratio > 0) {
        DSV4_TRY(up(e, &hw->compressor.wkv, &w->compressor.wkv, salt + 12, "compressor.wkv"));
        DSV4_TRY(up(e, &hw->compressor.wgate, &w->compressor.wgate, salt + 13, "compressor.wgate"));
        DSV4_TRY(comp_setup(e, &L->comp, &hw->compressor, L->ratio, hd,
                            L->ratio == 4 ? z->cap4 : z->cap128, L->ratio == 4 ? e->Rc4 : e->Rc128,
                            0, "the compressor's ape/norm"));
    }
    if (L->ratio == 4) {
        DSV4_TRY(up(e, &hw->idx_wq_b, &w->idx_wq_b, salt + 14, "indexer wq_b"));
        DSV4_TRY(
            up(e, &hw->idx_weights_proj, &w->idx_weights_proj, salt + 15, "indexer weights_proj"));
        DSV4_TRY(up(e, &hw->idx_compressor.wkv, &w->idx_compressor.wkv, salt + 16,
                    "indexer compressor.wkv"));
        DSV4_TRY(up(e, &hw->idx_compressor.wgate, &w->idx_compressor.wgate, salt + 17,
                    "indexer compressor.wgate"));
        DSV4_TRY(comp_setup(e, &L->idx, &hw->idx_compressor, 4, c->index_head_dim, z->cap4, e->Rc4,
                            1, "the indexer compressor's ape/norm"));
    }
    w->experts = calloc((size_t)E, sizeof *w->experts);
    if (!w->experts) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "layer %d experts", li);
    for (int x = 0; x < E; x++) {
        const uint64_t sx = salt + 64 + (uint64_t)x * 4;
        DSV4_TRY(up(e, &hw->experts[x].w1, &w->experts[x].w1, sx + 1, "expert w1"));
        DSV4_TRY(up(e, &hw->experts[x].w2, &w->experts[x].w2, sx + 2, "expert w2"));
        DSV4_TRY(up(e, &hw->experts[x].w3, &w->experts[x].w3, sx + 3, "expert w3"));
    }
    DSV4_TRY(dsv4_bk_experts_create(e->b, w->experts, E, &w->shared, &L->experts));

    DSV4_TRY(vec(e, &hw->attn_norm, D, 1.0f, &L->attn_norm, "attn_norm"));
    DSV4_TRY(vec(e, &hw->ffn_norm, D, 1.0f, &L->ffn_norm, "ffn_norm"));
    DSV4_TRY(vec(e, &hw->q_norm, c->q_lora_rank, 1.0f, &L->q_norm, "q_norm"));
    DSV4_TRY(vec(e, &hw->kv_norm, hd, 1.0f, &L->kv_norm, "kv_norm"));
    DSV4_TRY(vec(e, &hw->attn_sink, c->num_heads, 0.0f, &L->sink, "attn_sink"));
    DSV4_TRY(vec(e, &hw->hc_attn_base, (2 + n) * n, 0.0f, &L->hc_attn_base, "hc_attn_base"));
    DSV4_TRY(vec(e, &hw->hc_attn_scale, 3, 0.5f, &L->hc_attn_scale, "hc_attn_scale"));
    DSV4_TRY(vec(e, &hw->hc_ffn_base, (2 + n) * n, 0.0f, &L->hc_ffn_base, "hc_ffn_base"));
    DSV4_TRY(vec(e, &hw->hc_ffn_scale, 3, 0.5f, &L->hc_ffn_scale, "hc_ffn_scale"));
    if (L->hash)
        DSV4_TRY(table(e, &hw->tid2eid, li, &L->tid2eid));
    else if (is_random(e) || dsv4_weight_present(&hw->gate_bias))
        DSV4_TRY(vec(e, &hw->gate_bias, E, 0.0f, &L->gate_bias, "gate bias"));
    return dsv4_bk_alloc(e->b, (size_t)((uint64_t)(e->S + 1) * cache_bytes(c, 0, e->R)),
                         (void **)&L->win);
}

static dsv4_status setup(dsv4_engine *e)
{
    const dsv4_config *c = e->c;
    const dsv4_model_weights *W = &e->m->w;
    sizes z;
    resolve(c, &e->o, &z);
    e->R = (int)z.R;
    e->Rc4 = (int)z.Rc4;
    e->Rc128 = (int)z.Rc128;
    e->logit_rows = (int)z.logit_rows;
    e->n_layers = c->num_layers;

    /* does it fit? */
    size_t free_b = 0, total_b = 0;
    DSV4_TRY(dsv4_bk_mem_info(e->b, &free_b, &total_b));
    if (e->o.device == DSV4_DEVICE_CUDA && e->plan.total_bytes > free_b)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY,
                         "the model needs %.2f GiB on the GPU (weights %.2f + state %.2f for %d "
                         "sequences of %lld tokens + scratch %.2f for %d rows) but %.2f GiB of "
                         "%.2f are free: lower the context, the batch or the chunk",
                         e->plan.total_bytes / 1073741824.0, e->plan.weight_bytes / 1073741824.0,
                         e->plan.state_bytes / 1073741824.0, e->o.max_slots, (long long)z.ctx,
                         e->plan.scratch_bytes / 1073741824.0, e->o.max_chunk,
                         free_b / 1073741824.0, total_b / 1073741824.0);

    DSV4_TRY(up(e, &W->embed, &e->embed, 1, "the embedding"));
    DSV4_TRY(up(e, &W->head, &e->head, 2, "the LM head"));
    DSV4_TRY(up(e, &W->hc_head_fn, &e->hc_head_fn, 3, "hc_head_fn"));
    DSV4_TRY(vec(e, &W->norm, c->hidden_size, 1.0f, &e->norm, "the final norm"));
    DSV4_TRY(vec(e, &W->hc_head_base, c->hc_mult, 0.0f, &e->hc_head_base, "hc_head_base"));
    float *scale_dev = NULL, scale = 0.5f;
    DSV4_TRY(vec(e, &W->hc_head_scale, 1, 0.5f, &scale_dev, "hc_head_scale"));
    dsv4_status st = dsv4_bk_download(e->b, &scale, scale_dev, sizeof scale);
    dsv4_bk_free(e->b, scale_dev);
    DSV4_TRY(st);
    e->hc_head_scale = scale;

    float fr[DSV4_ROPE_MAX / 2];
    const size_t fb = (size_t)(c->rope_dim / 2) * sizeof(float);
    DSV4_TRY(dsv4_bk_alloc(e->b, fb, (void **)&e->rope_main));
    DSV4_TRY(dsv4_bk_alloc(e->b, fb, (void **)&e->rope_comp));
    dsv4_rope_freqs(fr, c->rope_dim, c->rope_theta, 1.0f, 0, 0, 0);
    DSV4_TRY(dsv4_bk_upload(e->b, e->rope_main, fr, fb));
    dsv4_rope_freqs(fr, c->rope_dim, c->compress_rope_theta, c->yarn_factor,
                    c->yarn_original_max_position, c->yarn_beta_fast, c->yarn_beta_slow);
    DSV4_TRY(dsv4_bk_upload(e->b, e->rope_comp, fr, fb));

    e->L = calloc((size_t)e->n_layers, sizeof *e->L);
    if (!e->L) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating the engine's layers");
    for (int li = 0; li < e->n_layers; li++) DSV4_TRY(layer_setup(e, li, &z));

    region rg[MAX_REGIONS];
    const int nr = scratch_regions(c, &e->o, &z, &e->s, rg);
    for (int i = 0; i < nr; i++) DSV4_TRY(dsv4_bk_alloc(e->b, rg[i].bytes, rg[i].p));
    return dsv4_bk_sync(e->b);
}

dsv4_status dsv4_engine_create(dsv4_model *m, const dsv4_engine_options *o, dsv4_engine **out)
{
    dsv4_clear_error();
    if (!m || !o || !out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_engine_create: NULL");
    *out = NULL;
    dsv4_engine *e = calloc(1, sizeof *e);
    if (!e) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating an engine");
    e->m = m;
    e->c = &m->cfg;
    e->o = *o;
    e->S = o->max_slots;
    dsv4_status st = dsv4_engine_plan_memory(m, o, &e->plan);
    if (st == DSV4_OK) st = dsv4_backend_create(o->device, o->gpu, o->pool, &e->b);
    if (st == DSV4_OK) e->b->pdl = o->pdl > 0; /* per graph: dsv4_engine_decode */
    if (st == DSV4_OK) {
        e->pos = calloc((size_t)e->S + 1, sizeof *e->pos);
        e->hrows = calloc((size_t)(3 * o->max_chunk), sizeof *e->hrows);
        if (!e->pos || !e->hrows) st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating an engine");
    }
    if (st == DSV4_OK) st = setup(e);
    if (st != DSV4_OK) {
        dsv4_engine_destroy(e);
        return st;
    }
    *out = e;
    return DSV4_OK;
}

static void comp_free(dsv4_backend *b, eng_comp *cs)
{
    dsv4_bk_free(b, cs->ring_kv);
    dsv4_bk_free(b, cs->ring_gate);
    dsv4_bk_free(b, cs->ent);
    dsv4_bk_free(b, cs->ape);
    dsv4_bk_free(b, cs->norm);
}

static void layer_free(dsv4_backend *b, eng_layer *L, int E)
{
    dsv4_layer_weights *w = &L->w;
    dsv4_bk_experts_free(b, L->experts);
    dsv4_weight *ws[] = {&w->hc_attn_fn,
                         &w->hc_ffn_fn,
                         &w->wq_a,
                         &w->wq_b,
                         &w->wkv,
                         &w->wo_a,
                         &w->wo_b,
                         &w->gate,
                         &w->shared.w1,
                         &w->shared.w2,
                         &w->shared.w3,
                         &w->compressor.wkv,
                         &w->compressor.wgate,
                         &w->idx_wq_b,
                         &w->idx_weights_proj,
                         &w->idx_compressor.wkv,
                         &w->idx_compressor.wgate};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
        if (ws[i]->data) dsv4_bk_weight_free(b, ws[i]);
    for (int x = 0; x < E && w->experts; x++) {
        if (w->experts[x].w1.data) dsv4_bk_weight_free(b, &w->experts[x].w1);
        if (w->experts[x].w2.data) dsv4_bk_weight_free(b, &w->experts[x].w2);
        if (w->experts[x].w3.data) dsv4_bk_weight_free(b, &w->experts[x].w3);
    }
    free(w->experts);
    float *v[] = {L->attn_norm,    L->ffn_norm,      L->q_norm,      L->kv_norm,      L->sink,
                  L->hc_attn_base, L->hc_attn_scale, L->hc_ffn_base, L->hc_ffn_scale, L->gate_bias};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) dsv4_bk_free(b, v[i]);
    dsv4_bk_free(b, L->tid2eid);
    dsv4_bk_free(b, L->win);
    comp_free(b, &L->comp);
    comp_free(b, &L->idx);
}

void dsv4_engine_destroy(dsv4_engine *e)
{
    if (!e) return;
    if (e->b) {
        for (int i = 0; i < ENG_BUCKETS; i++) dsv4_bk_graph_free(e->b, e->graphs[i]);
        for (int li = 0; e->L && li < e->n_layers; li++)
            layer_free(e->b, &e->L[li], e->c->n_routed_experts);
        if (e->embed.data) dsv4_bk_weight_free(e->b, &e->embed);
        if (e->head.data) dsv4_bk_weight_free(e->b, &e->head);
        if (e->hc_head_fn.data) dsv4_bk_weight_free(e->b, &e->hc_head_fn);
        dsv4_bk_free(e->b, e->norm);
        dsv4_bk_free(e->b, e->hc_head_base);
        dsv4_bk_free(e->b, e->rope_main);
        dsv4_bk_free(e->b, e->rope_comp);
        sizes z;
        resolve(e->c, &e->o, &z);
        region rg[MAX_REGIONS];
        eng_scratch s = e->s;
        const int nr = scratch_regions(e->c, &e->o, &z, &s, rg);
        for (int i = 0; i < nr; i++) dsv4_bk_free(e->b, *rg[i].p);
        dsv4_backend_destroy(e->b);
    }
    free(e->L);
    free(e->pos);
    free(e->hrows);
    free(e);
}

dsv4_backend *dsv4_engine_backend(dsv4_engine *e)
{
    return e->b;
}

const dsv4_engine_plan *dsv4_engine_get_plan(const dsv4_engine *e)
{
    return &e->plan;
}

/* ---- slots ---------------------------------------------------------------------------------- */
static dsv4_status check_slot(const dsv4_engine *e, int slot)
{
    if (slot < 0 || slot >= e->S)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "slot %d is outside [0, %d)", slot, e->S);
    return DSV4_OK;
}

dsv4_status dsv4_engine_slot_reset(dsv4_engine *e, int slot)
{
    DSV4_TRY(check_slot(e, slot));
    e->pos[slot] = 0; /* entries past a slot's position are never read */
    return DSV4_OK;
}

dsv4_status dsv4_engine_slot_seek(dsv4_engine *e, int slot, int64_t pos)
{
    DSV4_TRY(check_slot(e, slot));
    if (pos < 0 || pos > e->plan.max_context)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "position %lld is outside [0, %lld]",
                         (long long)pos, (long long)e->plan.max_context);
    e->pos[slot] = pos;
    return DSV4_OK;
}

dsv4_status dsv4_engine_fill_cache(dsv4_engine *e, uint64_t seed)
{
    const int64_t S1 = e->S + 1;
    const dsv4_kv_layout kl = dsv4_kv_layout_of(e->c->head_dim, e->c->rope_dim);
    const dsv4_kv_layout il = dsv4_ik_layout_of(e->c->index_head_dim);
    for (int li = 0; li < e->n_layers; li++) {
        eng_layer *L = &e->L[li];
        const uint64_t s = seed + 3 * (uint64_t)li;
        DSV4_TRY(dsv4_bk_fill_kv(e->b, L->win, &kl, S1 * e->R, s));
        if (L->comp.ratio)
            DSV4_TRY(dsv4_bk_fill_kv(e->b, L->comp.ent, &kl, S1 * L->comp.cap, s + 1));
        if (L->idx.ratio) DSV4_TRY(dsv4_bk_fill_kv(e->b, L->idx.ent, &il, S1 * L->idx.cap, s + 2));
    }
    return dsv4_bk_sync(e->b);
}

static dsv4_status copy_slot(dsv4_engine *e, void *base, size_t per_slot, int dst, int src)
{
    uint8_t *p = base;
    return dsv4_bk_copy(e->b, p + (size_t)dst * per_slot, p + (size_t)src * per_slot, per_slot);
}

dsv4_status dsv4_engine_slot_copy(dsv4_engine *e, int dst, int src)
{
    DSV4_TRY(check_slot(e, dst));
    DSV4_TRY(check_slot(e, src));
    if (dst == src) return DSV4_OK;
    for (int li = 0; li < e->n_layers; li++) {
        eng_layer *L = &e->L[li];
        DSV4_TRY(copy_slot(e, L->win, (size_t)cache_bytes(e->c, 0, e->R), dst, src));
        eng_comp *cs[2] = {&L->comp, &L->idx};
        for (int j = 0; j < 2; j++) {
            if (!cs[j]->ratio) continue;
            const size_t ring =
                (size_t)((cs[j]->ratio == 4 ? e->Rc4 : e->Rc128) * cs[j]->width) * 4;
            DSV4_TRY(copy_slot(e, cs[j]->ring_kv, ring, dst, src));
            DSV4_TRY(copy_slot(e, cs[j]->ring_gate, ring, dst, src));
            DSV4_TRY(copy_slot(e, cs[j]->ent, (size_t)cs[j]->slot_bytes, dst, src));
        }
    }
    e->pos[dst] = e->pos[src];
    return DSV4_OK;
}

int64_t dsv4_engine_slot_pos(const dsv4_engine *e, int slot)
{
    return slot >= 0 && slot < e->S ? e->pos[slot] : -1;
}

/* ---- steps ---------------------------------------------------------------------------------- */
static dsv4_status check_ids(const dsv4_engine *e, const int32_t *ids, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= e->c->vocab_size)
            return dsv4_fail(DSV4_ERR_INPUT, "token id %d (input %lld) is outside [0, %d)", ids[i],
                             (long long)i, e->c->vocab_size);
    return DSV4_OK;
}

/* Uploads the step's rows (slot, pos, ids: host [3, max_chunk]) to e->s.rows in one copy. */
static dsv4_status put_rows(dsv4_engine *e)
{
    return dsv4_bk_upload(e->b, e->s.rows, e->hrows, (size_t)(3 * e->o.max_chunk) * 4);
}

/* LM head over rows [r0, r0 + n) of the step's final hidden rows -> e->s.logits [n, V]. */
static dsv4_status head(dsv4_engine *e, int r0, int n)
{
    const int64_t D = e->c->hidden_size, V = e->c->vocab_size;
    DSV4_TRY(dsv4_bk_linear(e->b, &e->head, 0, V, e->s.h + r0 * D, D, n, e->s.logits, V, 0));
    dsv4_bk_prof_mark(e->b, "head.logits");
    e->last_rows = n;
    return DSV4_OK;
}

/* Appends ids to slot; logits: host [V] of the last token (all = 0) or [n, V] of every token. */
static dsv4_status prefill(dsv4_engine *e, int slot, const int32_t *ids, int64_t n, float *logits,
                           int all)
{
    dsv4_clear_error();
    DSV4_TRY(check_slot(e, slot));
    if (n < 0 || (n > 0 && !ids))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_engine_prefill: %lld ids", (long long)n);
    DSV4_TRY(check_ids(e, ids, n));
    if (n > e->plan.max_context - e->pos[slot])
        return dsv4_fail(DSV4_ERR_CONTEXT_OVERFLOW,
                         "%lld tokens after %lld would exceed the engine's context of %lld",
                         (long long)n, (long long)e->pos[slot], (long long)e->plan.max_context);
    const int mc = e->o.max_chunk;
    const int64_t V = e->c->vocab_size;
    for (int64_t i0 = 0; i0 < n; i0 += mc) {
        const int k = n - i0 < mc ? (int)(n - i0) : mc;
        for (int i = 0; i < k; i++) {
            e->hrows[i] = slot;
            e->hrows[mc + i] = (int32_t)(e->pos[slot] + i);
            e->hrows[2 * mc + i] = ids[i0 + i];
        }
        DSV4_TRY(put_rows(e));
        DSV4_TRY(dsv4_engine_forward(e, k));
        e->pos[slot] += k;
        if (all && logits) { /* every row, in blocks of the logits buffer's rows */
            for (int r0 = 0; r0 < k; r0 += e->logit_rows) {
                const int nr = k - r0 < e->logit_rows ? k - r0 : e->logit_rows;
                DSV4_TRY(head(e, r0, nr));
                DSV4_TRY(dsv4_bk_download(e->b, logits + (i0 + r0) * V, e->s.logits,
                                          (size_t)(nr * V) * 4));
            }
        } else if (i0 + k == n) {
            DSV4_TRY(head(e, k - 1, 1));
            if (logits) DSV4_TRY(dsv4_bk_download(e->b, logits, e->s.logits, (size_t)V * 4));
        }
    }
    return dsv4_bk_sync(e->b);
}

dsv4_status dsv4_engine_prefill(dsv4_engine *e, int slot, const int32_t *ids, int64_t n,
                                float *logits)
{
    return prefill(e, slot, ids, n, logits, 0);
}

dsv4_status dsv4_engine_prefill_all(dsv4_engine *e, int slot, const int32_t *ids, int64_t n,
                                    float *logits)
{
    return prefill(e, slot, ids, n, logits, 1);
}

/* Rows of graph bucket i: every count to 128, then steps of 8 to 256 and powers of two to
 * 32,768 (ENG_BUCKETS in all; a graph is captured on a bucket's first use). A step of n rows
 * replays the graph of the smallest bucket >= n, its other rows padding (the scratch slot at
 * position 0). Padding costs whole rows: H100, dsv4 bench --contexts 4096, Flash 4 layers, batch
 * 48 took 8.38 ms/step in the 64-row graph (8.10 at batch 64 itself) and 6.89 in a 48-row one,
 * batch 17 4.54 in a 24-row graph and 3.91 in its own, batch 5 2.28 in the 8-row graph and 1.90
 * in its own (docs/PERF.md, session 11); batch 65 8.43 in the 72-row graph (session 12, before
 * every count to 128 had its own). */
static int bucket_rows(int i)
{
    return i < 128 ? i + 1 : i < 144 ? 136 + 8 * (i - 128) : 512 << (i - 144);
}

/* The graph bucket of n rows: the smallest bucket >= n within max_chunk, or -1. */
static int bucket(const dsv4_engine *e, int n)
{
    for (int i = 0; i < ENG_BUCKETS; i++) {
        const int r = bucket_rows(i);
        if (r >= n) return r <= e->o.max_chunk && r <= e->logit_rows ? i : -1;
    }
    return -1;
}

int dsv4_engine_graph_kernels(const dsv4_engine *e, int n)
{
    const int bi = n >= 1 ? bucket(e, n) : -1;
    return bi >= 0 && e->graphs[bi] ? e->graph_kernels[bi] : 0;
}

dsv4_status dsv4_engine_decode(dsv4_engine *e, const int32_t *slots, const int32_t *ids, int n,
                               float *logits)
{
    dsv4_clear_error();
    if (n < 1 || n > e->logit_rows || !slots || !ids)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_engine_decode: %d rows (at most %d)", n,
                         e->logit_rows);
    DSV4_TRY(check_ids(e, ids, n));
    for (int i = 0; i < n; i++) {
        DSV4_TRY(check_slot(e, slots[i]));
        for (int j = 0; j < i; j++)
            if (slots[j] == slots[i])
                return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "slot %d appears twice in a step",
                                 slots[i]);
        if (e->pos[slots[i]] >= e->plan.max_context)
            return dsv4_fail(DSV4_ERR_CONTEXT_OVERFLOW, "slot %d holds %lld tokens: the context",
                             slots[i], (long long)e->pos[slots[i]]);
    }
    const int mc = e->o.max_chunk;
    const int use_graph = e->o.graphs && e->b->kind == DSV4_DEVICE_CUDA && !e->b->prof;
    const int bi = use_graph ? bucket(e, n) : -1;
    const int rows = bi >= 0 ? bucket_rows(bi) : n;
    for (int i = 0; i < rows; i++) { /* padding rows: the scratch slot S at position 0 */
        e->hrows[i] = i < n ? slots[i] : e->S;
        e->hrows[mc + i] = i < n ? (int32_t)e->pos[slots[i]] : 0;
        e->hrows[2 * mc + i] = i < n ? ids[i] : 0;
    }
    DSV4_TRY(put_rows(e));
    if (bi >= 0) {
        if (!e->graphs[bi]) {
            e->b->pdl = e->o.pdl < 0 ? rows <= DSV4_ENGINE_PDL_ROWS : e->o.pdl;
            DSV4_TRY(dsv4_bk_graph_begin(e->b));
            dsv4_status st = dsv4_engine_forward(e, rows);
            if (st == DSV4_OK) st = head(e, 0, rows);
            void *g = NULL;
            dsv4_status st2 = dsv4_bk_graph_end(e->b, &g);
            DSV4_TRY(st);
            DSV4_TRY(st2);
            e->graphs[bi] = g;
            e->graph_kernels[bi] = e->b->graph_kernels;
        }
        DSV4_TRY(dsv4_bk_graph_launch(e->b, e->graphs[bi]));
        e->last_rows = rows;
    } else {
        DSV4_TRY(dsv4_engine_forward(e, rows));
        DSV4_TRY(head(e, 0, rows));
    }
    for (int i = 0; i < n; i++) e->pos[slots[i]]++;
    if (logits)
        return dsv4_bk_download(e->b, logits, e->s.logits,
                                (size_t)n * (size_t)e->c->vocab_size * 4);
    return DSV4_OK;
}

const float *dsv4_engine_logits(const dsv4_engine *e)
{
    return e->s.logits;
}

dsv4_status dsv4_engine_prof_start(dsv4_engine *e)
{
    return dsv4_bk_prof_start(e->b);
}

int dsv4_engine_prof_stop(dsv4_engine *e, dsv4_bk_prof_entry *out, int max)
{
    return dsv4_bk_prof_stop(e->b, out, max);
}
