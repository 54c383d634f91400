/*
 * schema.c - every weight of a DeepSeek-V4 model, in checkpoint order (see schema.h).
 */
#include "model/schema.h"

#include <stdio.h>

typedef struct walker {
    struct dsv4_model *m;
    int (*fn)(schema_slot *, void *);
    void *ctx;
    char name[192];
    int layer, expert, proj;
} walker;

static int emit(walker *k, const char *prefix, const char *suffix, dsv4_weight *w, schema_role role,
                int ndim, int64_t rows, int64_t cols, const char *dims)
{
    snprintf(k->name, sizeof k->name, "%s%s", prefix, suffix);
    schema_slot s = {k->name, w,    role,     ndim,      ndim == 1 ? 1 : rows,
                     cols,    dims, k->layer, k->expert, k->proj};
    return k->fn(&s, k->ctx);
}

#define EMIT(prefix, suffix, w, role, ndim, rows, cols, dims)                                      \
    do {                                                                                           \
        int emit_rc_ = emit(k, prefix, suffix, w, role, ndim, rows, cols, dims);                   \
        if (emit_rc_) return emit_rc_;                                                             \
    } while (0)

static int walk_compressor(walker *k, const char *prefix, dsv4_compressor_weights *c, int ratio,
                           int64_t head, int64_t D)
{
    const int64_t w = head * (ratio == 4 ? 2 : 1);
    char p[128];
    snprintf(p, sizeof p, "%scompressor.", prefix);
    EMIT(p, "wkv", &c->wkv, ROLE_MATRIX, 2, w, D, "[compress width, hidden_size]");
    EMIT(p, "wgate", &c->wgate, ROLE_MATRIX, 2, w, D, "[compress width, hidden_size]");
    EMIT(p, "ape", &c->ape, ROLE_DENSE_MATRIX, 2, ratio, w, "[compress ratio, compress width]");
    EMIT(p, "norm", &c->norm, ROLE_VECTOR, 1, 1, head, "[head dim]");
    return 0;
}

static int walk_layer(walker *k, dsv4_layer_weights *L, const char *prefix)
{
    const dsv4_config *c = &k->m->cfg;
    const int64_t D = c->hidden_size, n = c->hc_mult, H = c->num_heads, hd = c->head_dim;
    const int64_t mix = (2 + n) * n, I = c->moe_intermediate_size;
    char p[96];

    EMIT(prefix, "hc_attn_fn", &L->hc_attn_fn, ROLE_DENSE_MATRIX, 2, mix, n * D,
         "[(2+hc_mult)*hc_mult, hc_mult*hidden_size]");
    EMIT(prefix, "hc_attn_base", &L->hc_attn_base, ROLE_VECTOR, 1, 1, mix, "[(2+hc_mult)*hc_mult]");
    EMIT(prefix, "hc_attn_scale", &L->hc_attn_scale, ROLE_VECTOR, 1, 1, 3, "[3]");
    EMIT(prefix, "hc_ffn_fn", &L->hc_ffn_fn, ROLE_DENSE_MATRIX, 2, mix, n * D,
         "[(2+hc_mult)*hc_mult, hc_mult*hidden_size]");
    EMIT(prefix, "hc_ffn_base", &L->hc_ffn_base, ROLE_VECTOR, 1, 1, mix, "[(2+hc_mult)*hc_mult]");
    EMIT(prefix, "hc_ffn_scale", &L->hc_ffn_scale, ROLE_VECTOR, 1, 1, 3, "[3]");
    EMIT(prefix, "attn_norm", &L->attn_norm, ROLE_VECTOR, 1, 1, D, "[hidden_size]");
    EMIT(prefix, "ffn_norm", &L->ffn_norm, ROLE_VECTOR, 1, 1, D, "[hidden_size]");

    snprintf(p, sizeof p, "%sattn.", prefix);
    EMIT(p, "wq_a", &L->wq_a, ROLE_MATRIX, 2, c->q_lora_rank, D, "[q_lora_rank, hidden_size]");
    EMIT(p, "q_norm", &L->q_norm, ROLE_VECTOR, 1, 1, c->q_lora_rank, "[q_lora_rank]");
    EMIT(p, "wq_b", &L->wq_b, ROLE_MATRIX, 2, H * hd, c->q_lora_rank,
         "[num_heads*head_dim, q_lora_rank]");
    EMIT(p, "wkv", &L->wkv, ROLE_MATRIX, 2, hd, D, "[head_dim, hidden_size]");
    EMIT(p, "kv_norm", &L->kv_norm, ROLE_VECTOR, 1, 1, hd, "[head_dim]");
    EMIT(p, "wo_a", &L->wo_a, ROLE_MATRIX, 2, (int64_t)c->o_groups * c->o_lora_rank,
         H * hd / c->o_groups, "[o_groups*o_lora_rank, num_heads*head_dim/o_groups]");
    EMIT(p, "wo_b", &L->wo_b, ROLE_MATRIX, 2, D, (int64_t)c->o_groups * c->o_lora_rank,
         "[hidden_size, o_groups*o_lora_rank]");
    EMIT(p, "attn_sink", &L->attn_sink, ROLE_VECTOR, 1, 1, H, "[num_heads]");
    if (L->compress_ratio > 0) {
        int rc = walk_compressor(k, p, &L->compressor, L->compress_ratio, hd, D);
        if (rc) return rc;
    }
    if (L->compress_ratio == 4) {
        char ip[128];
        snprintf(ip, sizeof ip, "%sindexer.", p);
        EMIT(ip, "wq_b", &L->idx_wq_b, ROLE_MATRIX, 2,
             (int64_t)c->index_n_heads * c->index_head_dim, c->q_lora_rank,
             "[index_n_heads*index_head_dim, q_lora_rank]");
        EMIT(ip, "weights_proj", &L->idx_weights_proj, ROLE_MATRIX, 2, c->index_n_heads, D,
             "[index_n_heads, hidden_size]");
        int rc = walk_compressor(k, ip, &L->idx_compressor, 4, c->index_head_dim, D);
        if (rc) return rc;
    }

    snprintf(p, sizeof p, "%sffn.", prefix);
    EMIT(p, "gate", &L->gate, ROLE_MATRIX, 2, c->n_routed_experts, D,
         "[n_routed_experts, hidden_size]");
    if (L->hash_routed)
        EMIT(p, "gate.tid2eid", &L->tid2eid, ROLE_TABLE, 2, c->vocab_size, c->n_experts_per_tok,
             "[vocab_size, num_experts_per_tok]");
    else
        EMIT(p, "gate.bias", &L->gate_bias, ROLE_VECTOR, 1, 1, c->n_routed_experts,
             "[n_routed_experts]");
    for (int e = 0; e < c->n_routed_experts; e++) {
        char ep[128];
        dsv4_expert_weights *x = &L->experts[e];
        snprintf(ep, sizeof ep, "%sexperts.%d.", p, e);
        k->expert = e;
        k->proj = 1;
        EMIT(ep, "w1", &x->w1, ROLE_EXPERT, 2, I, D, "[moe_intermediate_size, hidden_size]");
        k->proj = 2;
        EMIT(ep, "w2", &x->w2, ROLE_EXPERT, 2, D, I, "[hidden_size, moe_intermediate_size]");
        k->proj = 3;
        EMIT(ep, "w3", &x->w3, ROLE_EXPERT, 2, I, D, "[moe_intermediate_size, hidden_size]");
    }
    k->expert = -1;
    k->proj = 0;
    const int64_t S = I * c->n_shared_experts;
    EMIT(p, "shared_experts.w1", &L->shared.w1, ROLE_MATRIX, 2, S, D,
         "[n_shared_experts*moe_intermediate_size, hidden_size]");
    EMIT(p, "shared_experts.w2", &L->shared.w2, ROLE_MATRIX, 2, D, S,
         "[hidden_size, n_shared_experts*moe_intermediate_size]");
    EMIT(p, "shared_experts.w3", &L->shared.w3, ROLE_MATRIX, 2, S, D,
         "[n_shared_experts*moe_intermediate_size, hidden_size]");

    if (L->is_mtp) {
        EMIT(prefix, "e_proj", &L->e_proj, ROLE_MATRIX, 2, D, D, "[hidden_size, hidden_size]");
        EMIT(prefix, "h_proj", &L->h_proj, ROLE_MATRIX, 2, D, D, "[hidden_size, hidden_size]");
        EMIT(prefix, "enorm", &L->enorm, ROLE_VECTOR, 1, 1, D, "[hidden_size]");
        EMIT(prefix, "hnorm", &L->hnorm, ROLE_VECTOR, 1, 1, D, "[hidden_size]");
        EMIT(prefix, "norm", &L->norm, ROLE_VECTOR, 1, 1, D, "[hidden_size]");
        EMIT(prefix, "hc_head_fn", &L->hc_head_fn, ROLE_DENSE_MATRIX, 2, n, n * D,
             "[hc_mult, hc_mult*hidden_size]");
        EMIT(prefix, "hc_head_base", &L->hc_head_base, ROLE_VECTOR, 1, 1, n, "[hc_mult]");
        EMIT(prefix, "hc_head_scale", &L->hc_head_scale, ROLE_VECTOR, 1, 1, 1, "[1]");
    }
    return 0;
}

int schema_walk(struct dsv4_model *m, int (*fn)(schema_slot *, void *), void *ctx)
{
    walker kk = {m, fn, ctx, {0}, -1, -1, 0}, *k = &kk;
    const dsv4_config *c = &m->cfg;
    const int64_t D = c->hidden_size, n = c->hc_mult, V = c->vocab_size;
    dsv4_model_weights *w = &m->w;

    EMIT("", "embed", &w->embed, ROLE_MATRIX, 2, V, D, "[vocab_size, hidden_size]");
    for (int i = 0; i < w->n_layers; i++) {
        dsv4_layer_weights *L = &w->layers[i];
        char prefix[32];
        if (L->is_mtp)
            snprintf(prefix, sizeof prefix, "mtp.%d.", i - c->num_layers);
        else
            snprintf(prefix, sizeof prefix, "layers.%d.", i);
        k->layer = i;
        int rc = walk_layer(k, L, prefix);
        if (rc) return rc;
    }
    k->layer = -1;
    EMIT("", "norm", &w->norm, ROLE_VECTOR, 1, 1, D, "[hidden_size]");
    EMIT("", "hc_head_fn", &w->hc_head_fn, ROLE_DENSE_MATRIX, 2, n, n * D,
         "[hc_mult, hc_mult*hidden_size]");
    EMIT("", "hc_head_base", &w->hc_head_base, ROLE_VECTOR, 1, 1, n, "[hc_mult]");
    EMIT("", "hc_head_scale", &w->hc_head_scale, ROLE_VECTOR, 1, 1, 1, "[1]");
    EMIT("", "head", &w->head, ROLE_MATRIX, 2, V, D, "[vocab_size, hidden_size]");
    return 0;
}
