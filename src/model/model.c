/*
 * model.c - the dsv4_model handle: open (config + shards + bind), describe, plan memory.
 */
#include "backend/kv_layout.h"
#include "engine/engine.h"
#include "model/model.h"
#include "core/error.h"
#include "model/schema.h"

#include <stdlib.h>
#include <string.h>

const char *dsv4_weight_format_name(dsv4_weight_format format)
{
    switch (format) {
    case DSV4_FORMAT_F32:
        return "F32";
    case DSV4_FORMAT_BF16:
        return "BF16";
    case DSV4_FORMAT_F16:
        return "F16";
    case DSV4_FORMAT_FP8:
        return "FP8";
    case DSV4_FORMAT_MXFP4:
        return "MXFP4";
    case DSV4_FORMAT_NVFP4:
        return "NVFP4";
    case DSV4_FORMAT_INT:
        return "INT";
    case DSV4_FORMAT_COUNT:
        break;
    }
    return "?";
}

void dsv4_model_close(dsv4_model *m)
{
    if (!m) return;
    dsv4_engine_destroy(m->engine);
    dsv4_checkpoint_free(m);
    st_set_close(m->set);
    free(m->dir);
    free(m);
}

dsv4_status dsv4_model_open(const char *dir, dsv4_model **out)
{
    dsv4_clear_error();
    if (!dir || !out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_model_open: NULL argument");
    *out = NULL;
    dsv4_model *m = calloc(1, sizeof *m);
    if (!m) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating the model handle");
    m->dir = strdup(dir);
    dsv4_status st = m->dir ? DSV4_OK : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "copying a path");
    if (st == DSV4_OK) st = dsv4_config_load_dir(dir, &m->cfg);
    if (st == DSV4_OK) st = st_set_open(dir, &m->set);
    if (st == DSV4_OK) st = dsv4_checkpoint_bind(m);
    if (st != DSV4_OK) {
        dsv4_model_close(m);
        return st;
    }
    *out = m;
    return DSV4_OK;
}

typedef struct foreach_ctx {
    int (*fn)(const char *, const dsv4_weight *, void *);
    void *ctx;
} foreach_ctx;

static int foreach_slot(schema_slot *s, void *ctx)
{
    foreach_ctx *f = ctx;
    if (!dsv4_weight_present(s->w)) return 0;
    return f->fn(s->name, s->w, f->ctx);
}

int dsv4_model_foreach_weight(const struct dsv4_model *m,
                              int (*fn)(const char *, const dsv4_weight *, void *), void *ctx)
{
    foreach_ctx f = {fn, ctx};
    /* The walk only reads through the pointers it hands out; the cast keeps one walker. */
    return schema_walk((struct dsv4_model *)m, foreach_slot, &f);
}

typedef struct totals {
    dsv4_model_info *info;
    int64_t mtp_from; /* canonical names starting "mtp." */
} totals;

static int add_weight(const char *name, const dsv4_weight *w, void *ctx)
{
    dsv4_model_info *info = ((totals *)ctx)->info;
    const int64_t n = dsv4_weight_numel(w);
    const uint64_t b = dsv4_weight_bytes(w);
    info->total_bytes += b;
    info->params_by_format[w->format] += n;
    info->bytes_by_format[w->format] += b;
    if (w->format == DSV4_FORMAT_INT) return 0; /* tid2eid is a lookup table, not a parameter */
    info->total_params += n;
    if (!strncmp(name, "mtp.", 4)) info->mtp_params += n;
    return 0;
}

dsv4_status dsv4_model_get_info(const dsv4_model *m, dsv4_model_info *info)
{
    dsv4_clear_error();
    if (!m || !info)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_model_get_info: NULL argument");
    const dsv4_config *c = &m->cfg;
    memset(info, 0, sizeof *info);
    info->layout = m->layout;
    info->vocab_size = c->vocab_size;
    info->hidden_size = c->hidden_size;
    info->num_layers = c->num_layers;
    info->num_mtp_layers = m->w.n_layers - c->num_layers;
    info->num_heads = c->num_heads;
    info->head_dim = c->head_dim;
    info->rope_dim = c->rope_dim;
    info->q_lora_rank = c->q_lora_rank;
    info->o_groups = c->o_groups;
    info->o_lora_rank = c->o_lora_rank;
    info->n_routed_experts = c->n_routed_experts;
    info->n_experts_per_tok = c->n_experts_per_tok;
    info->n_shared_experts = c->n_shared_experts;
    info->moe_intermediate_size = c->moe_intermediate_size;
    info->num_hash_layers = c->num_hash_layers;
    info->index_n_heads = c->index_n_heads;
    info->index_head_dim = c->index_head_dim;
    info->index_topk = c->index_topk;
    info->sliding_window = c->sliding_window;
    info->hc_mult = c->hc_mult;
    info->hc_sinkhorn_iters = c->hc_sinkhorn_iters;
    info->max_position_embeddings = c->max_position_embeddings;
    info->rms_norm_eps = c->rms_norm_eps;
    info->hc_eps = c->hc_eps;
    info->rope_theta = c->rope_theta;
    info->compress_rope_theta = c->compress_rope_theta;
    info->routed_scaling_factor = c->routed_scaling_factor;
    info->swiglu_limit = c->swiglu_limit;
    info->yarn_factor = c->yarn_factor;
    info->yarn_beta_fast = c->yarn_beta_fast;
    info->yarn_beta_slow = c->yarn_beta_slow;
    info->yarn_original_max_position = c->yarn_original_max_position;
    info->bos_token_id = c->bos_token_id;
    info->eos_token_id = c->eos_token_id;
    info->num_files = (int)st_set_num_files(m->set);
    totals t = {info, 0};
    dsv4_model_foreach_weight(m, add_weight, &t);
    return DSV4_OK;
}

typedef struct layer_bytes {
    int layer;
    uint64_t bytes;
} layer_bytes;

static int sum_layer(schema_slot *s, void *ctx)
{
    layer_bytes *lb = ctx;
    if (s->layer == lb->layer && dsv4_weight_present(s->w)) lb->bytes += dsv4_weight_bytes(s->w);
    return 0;
}

dsv4_status dsv4_model_get_layer_info(const dsv4_model *m, int i, dsv4_layer_info *info)
{
    dsv4_clear_error();
    if (!m || !info)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_model_get_layer_info: NULL argument");
    if (i < 0 || i >= m->w.n_layers)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "layer %d out of range [0, %d)", i,
                         m->w.n_layers);
    const dsv4_layer_weights *L = &m->w.layers[i];
    memset(info, 0, sizeof *info);
    info->index = i;
    info->is_mtp = L->is_mtp;
    info->compress_ratio = L->compress_ratio;
    info->attention = L->compress_ratio == 0   ? DSV4_ATTN_SLIDING
                      : L->compress_ratio == 4 ? DSV4_ATTN_CSA
                                               : DSV4_ATTN_HCA;
    info->hash_routed = L->hash_routed;
    info->attn_format = L->wq_a.format;
    info->expert_format = L->experts[0].w1.format;
    layer_bytes lb = {i, 0};
    schema_walk((struct dsv4_model *)m, sum_layer, &lb);
    info->bytes = lb.bytes;
    return DSV4_OK;
}

/* Bytes of one cached attention entry (index: indexer key) in the serving layout the engine
 * stores (backend/kv_layout.h: 584 B at head_dim 512, rope_dim 64; 68 B at index_head_dim 128). */
static uint64_t kv_entry_bytes(const dsv4_config *c, int index)
{
    const dsv4_kv_layout l =
        index ? dsv4_ik_layout_of(c->index_head_dim) : dsv4_kv_layout_of(c->head_dim, c->rope_dim);
    return (uint64_t)dsv4_kv_entry_bytes(&l);
}

dsv4_status dsv4_model_plan_memory(const dsv4_model *m, int64_t context, int batch,
                                   dsv4_memory_plan *plan)
{
    dsv4_clear_error();
    if (!m || !plan)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_model_plan_memory: NULL argument");
    if (context <= 0 || batch <= 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "context (%lld) and batch (%d) must be positive", (long long)context,
                         batch);
    const dsv4_config *c = &m->cfg;
    dsv4_model_info info;
    DSV4_TRY(dsv4_model_get_info(m, &info));
    const uint64_t entry = kv_entry_bytes(c, 0), idx_entry = kv_entry_bytes(c, 1);
    uint64_t per_seq = 0;
    for (int i = 0; i < m->w.n_layers; i++) {
        const int r = m->w.layers[i].compress_ratio;
        const uint64_t window =
            (uint64_t)(context < c->sliding_window ? context : c->sliding_window);
        per_seq += window * entry;
        if (r > 0) {
            const uint64_t entries = (uint64_t)context / (uint64_t)r;
            per_seq += entries * entry;
            /* the compressor's partial window: kv + score (f32) for up to 2r tokens */
            per_seq += 2u * (uint64_t)r * (uint64_t)c->head_dim * (r == 4 ? 2u : 1u) * 8u;
            if (r == 4) {
                per_seq += entries * idx_entry;
                per_seq += 2u * (uint64_t)r * (uint64_t)c->index_head_dim * 2u * 8u;
            }
        }
    }
    /* Workspace: the residual streams and the widest intermediates for a 512-token prefill
     * chunk (or the batch, if larger), plus the logits of the batch, in f32. */
    const uint64_t tokens = (uint64_t)(batch > 512 ? batch : 512);
    const uint64_t D = (uint64_t)c->hidden_size, n = (uint64_t)c->hc_mult;
    uint64_t widest = (uint64_t)c->num_heads * (uint64_t)c->head_dim;
    const uint64_t moe = (uint64_t)c->moe_intermediate_size * 2u * (uint64_t)c->n_experts_per_tok;
    if (moe > widest) widest = moe;
    plan->workspace_bytes =
        tokens * (3u * n * D + 3u * widest) * 4u + (uint64_t)batch * (uint64_t)c->vocab_size * 4u;
    plan->weight_bytes = info.total_bytes;
    plan->state_bytes = per_seq * (uint64_t)batch;
    plan->state_bytes_per_token = per_seq / (uint64_t)context;
    plan->total_bytes = plan->weight_bytes + plan->state_bytes + plan->workspace_bytes;
    return DSV4_OK;
}
