/*
 * model_shape.c - a dsv4_model with the real DeepSeek-V4-Flash or -Pro geometry and no weight
 * bytes, for benchmarks: every descriptor carries the format, dtype, shape, byte counts and scale
 * layout of the official checkpoint (as tools/make_checkpoints.py's sparse full-size checkpoints
 * declare them), with data = scale = NULL. The engine uploads such a model with random values
 * (dsv4_bk_weight_upload's random_seed), so no 160-865 GB download is needed to time it.
 *
 * Formats, as the official files: FP8 e4m3 with ue8m0 128x128 scales for the attention
 * projections (wq_a, wq_b, wkv, wo_a, wo_b), the indexer's wq_b and the shared expert; MXFP4 (or
 * NVFP4) routed experts; BF16 embed, head, router gate, the compressors' wkv / wgate, the
 * indexer's weights_proj and every norm; F32 mHC (hc_*), attn_sink, ape and the router bias;
 * tid2eid I64 (the engine makes its own table for random models).
 *
 * Layers: with the full count, the real schedule. A model of fewer layers takes the compress
 * ratios of the real layers 2, 3, ... (both models run 4, 128, 4, 128, ... from layer 2 on; their
 * layers 0-1 are sliding / HCA-only), so any model of >= 2 layers holds a CSA and an HCA layer
 * and is made of the layer kinds the real bulk is made of. Hash routing: the first 3 layers as in
 * the real models when more than 3 layers are asked for, else all but the last (so one layer
 * always routes by top-k); or the first hash_layers when that is given (>= 0; at most the real
 * count and the layers): the real bulk routes by top-k (40 of Flash's 43 layers, 58 of Pro's
 * 61), which 4 layers with 3 hash-routed underweight. No MTP block.
 *
 * Ownership: the handle is freed by dsv4_model_close. The weight names live in the same block as
 * m->dir (the label, then every name), so the free(m->dir) there releases them; the layers and
 * expert arrays are freed by dsv4_checkpoint_free as for a loaded model; m->set stays NULL.
 */
#include "core/error.h"
#include "model/schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* tests/fixtures/configs/flash_hub.json and pro_hub.json: the hub config.json files. */
static const char FLASH_HUB_JSON[] =
    "{\"architectures\":[\"DeepseekV4ForCausalLM\"],\"attention_bias\":false,"
    "\"attention_dropout\":0.0,\"bos_token_id\":0,\"eos_token_id\":1,"
    "\"expert_dtype\":\"fp4\",\"hc_eps\":1e-06,\"hc_mult\":4,\"hc_sinkhorn_iters\":20,"
    "\"head_dim\":512,\"hidden_act\":\"silu\",\"hidden_size\":4096,\"index_head_dim\":128,"
    "\"index_n_heads\":64,\"index_topk\":512,\"initializer_range\":0.02,"
    "\"max_position_embeddings\":1048576,\"model_type\":\"deepseek_v4\","
    "\"moe_intermediate_size\":2048,\"n_routed_experts\":256,\"n_shared_experts\":1,"
    "\"norm_topk_prob\":true,\"num_attention_heads\":64,\"num_experts_per_tok\":6,"
    "\"num_hidden_layers\":43,\"num_hash_layers\":3,\"num_key_value_heads\":1,"
    "\"num_nextn_predict_layers\":1,\"o_groups\":8,\"o_lora_rank\":1024,\"q_lora_rank\":1024,"
    "\"qk_rope_head_dim\":64,\"quantization_config\":{\"activation_scheme\":\"dynamic\","
    "\"fmt\":\"e4m3\",\"quant_method\":\"fp8\",\"scale_fmt\":\"ue8m0\","
    "\"weight_block_size\":[128,128]},\"rms_norm_eps\":1e-06,"
    "\"rope_scaling\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":16,"
    "\"original_max_position_embeddings\":65536,\"type\":\"yarn\"},\"rope_theta\":10000,"
    "\"routed_scaling_factor\":1.5,\"scoring_func\":\"sqrtsoftplus\",\"sliding_window\":128,"
    "\"swiglu_limit\":10.0,\"tie_word_embeddings\":false,\"topk_method\":\"noaux_tc\","
    "\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.57.1\",\"use_cache\":true,"
    "\"vocab_size\":129280,\"compress_rope_theta\":160000,\"compress_ratios\":[0,0,4,128,4,"
    "128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,"
    "4,128,4,128,4,128,4,128,4,0]}";
static const char PRO_HUB_JSON[] =
    "{\"architectures\":[\"DeepseekV4ForCausalLM\"],\"attention_bias\":false,"
    "\"attention_dropout\":0.0,\"bos_token_id\":0,\"eos_token_id\":1,"
    "\"expert_dtype\":\"fp4\",\"hc_eps\":1e-06,\"hc_mult\":4,\"hc_sinkhorn_iters\":20,"
    "\"head_dim\":512,\"hidden_act\":\"silu\",\"hidden_size\":7168,\"index_head_dim\":128,"
    "\"index_n_heads\":64,\"index_topk\":1024,\"initializer_range\":0.02,"
    "\"max_position_embeddings\":1048576,\"model_type\":\"deepseek_v4\","
    "\"moe_intermediate_size\":3072,\"n_routed_experts\":384,\"n_shared_experts\":1,"
    "\"norm_topk_prob\":true,\"num_attention_heads\":128,\"num_experts_per_tok\":6,"
    "\"num_hidden_layers\":61,\"num_hash_layers\":3,\"num_key_value_heads\":1,"
    "\"num_nextn_predict_layers\":1,\"o_groups\":16,\"o_lora_rank\":1024,"
    "\"q_lora_rank\":1536,\"qk_rope_head_dim\":64,"
    "\"quantization_config\":{\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\","
    "\"quant_method\":\"fp8\",\"scale_fmt\":\"ue8m0\",\"weight_block_size\":[128,128]},"
    "\"rms_norm_eps\":1e-06,\"rope_scaling\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":16,"
    "\"original_max_position_embeddings\":65536,\"type\":\"yarn\"},\"rope_theta\":10000,"
    "\"routed_scaling_factor\":2.5,\"scoring_func\":\"sqrtsoftplus\",\"sliding_window\":128,"
    "\"swiglu_limit\":10.0,\"tie_word_embeddings\":false,\"topk_method\":\"noaux_tc\","
    "\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.57.1\",\"use_cache\":true,"
    "\"vocab_size\":129280,\"compress_rope_theta\":160000,\"compress_ratios\":[128,128,4,128,"
    "4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,"
    "128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,0]}";

static int ends_with(const char *s, const char *suffix)
{
    const size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static const char *leaf_of(const char *name)
{
    const char *d = strrchr(name, '.');
    return d ? d + 1 : name;
}

/* Format of a non-expert matrix as the official checkpoint stores it. */
static dsv4_weight_format matrix_format(const char *name)
{
    if (!strcmp(name, "embed") || !strcmp(name, "head") || ends_with(name, ".compressor.wkv") ||
        ends_with(name, ".compressor.wgate") || ends_with(name, ".indexer.weights_proj") ||
        ends_with(name, ".ffn.gate"))
        return DSV4_FORMAT_BF16;
    return DSV4_FORMAT_FP8;
}

/* Norm weights are BF16; hc_* base/scale, attn_sink and the router bias F32. */
static dsv4_weight_format vector_format(const char *name)
{
    const char *leaf = leaf_of(name);
    if (!strncmp(leaf, "hc_", 3) || !strcmp(leaf, "attn_sink") || !strcmp(leaf, "bias"))
        return DSV4_FORMAT_F32;
    return DSV4_FORMAT_BF16;
}

/* Fills *w as checkpoint.c's binder would for a stored tensor of this format and shape. */
static void describe(dsv4_weight *w, const char *name, dsv4_weight_format f, int ndim, int64_t rows,
                     int64_t cols)
{
    memset(w, 0, sizeof *w);
    w->name = name;
    w->format = f;
    w->ndim = ndim;
    w->rows = rows;
    w->cols = cols;
    w->scale2 = 1.0f;
    const uint64_t n = (uint64_t)(rows * cols);
    switch (f) {
    case DSV4_FORMAT_F32:
        w->dtype = DSV4_DT_F32;
        w->data_bytes = 4 * n;
        break;
    case DSV4_FORMAT_BF16:
        w->dtype = DSV4_DT_BF16;
        w->data_bytes = 2 * n;
        break;
    case DSV4_FORMAT_F16:
        w->dtype = DSV4_DT_F16;
        w->data_bytes = 2 * n;
        break;
    case DSV4_FORMAT_FP8:
        w->dtype = DSV4_DT_F8_E4M3;
        w->data_bytes = n;
        w->scale_dtype = DSV4_DT_F8_E8M0;
        w->scale_rows = (rows + 127) / 128;
        w->scale_cols = (cols + 127) / 128;
        break;
    case DSV4_FORMAT_MXFP4:
        w->dtype = DSV4_DT_I8;
        w->data_bytes = n / 2;
        w->scale_dtype = DSV4_DT_F8_E8M0;
        w->scale_rows = rows;
        w->scale_cols = cols / 32;
        break;
    case DSV4_FORMAT_NVFP4:
        w->dtype = DSV4_DT_U8;
        w->data_bytes = n / 2;
        w->scale_dtype = DSV4_DT_F8_E4M3;
        w->scale_rows = rows;
        w->scale_cols = cols / 16;
        break;
    case DSV4_FORMAT_INT:
        w->dtype = DSV4_DT_I64;
        w->data_bytes = 8 * n;
        break;
    case DSV4_FORMAT_COUNT:
        break;
    }
    w->scale_bytes = (uint64_t)(w->scale_rows * w->scale_cols); /* 1-byte scales */
}

typedef struct shape_ctx {
    dsv4_weight_format expert_format;
    char *pool;  /* NULL on the sizing pass */
    size_t used; /* bytes of names (sizing) or the next free byte of pool */
} shape_ctx;

static int shape_slot(schema_slot *s, void *ctx)
{
    shape_ctx *k = ctx;
    const size_t len = strlen(s->name) + 1;
    if (!k->pool) {
        k->used += len;
        return 0;
    }
    char *name = k->pool + k->used;
    memcpy(name, s->name, len);
    k->used += len;
    dsv4_weight_format f = DSV4_FORMAT_F32;
    switch (s->role) {
    case ROLE_MATRIX:
        f = matrix_format(s->name);
        break;
    case ROLE_EXPERT:
        f = k->expert_format;
        break;
    case ROLE_DENSE_MATRIX:
        f = DSV4_FORMAT_F32;
        break;
    case ROLE_VECTOR:
        f = vector_format(s->name);
        break;
    case ROLE_TABLE:
        f = DSV4_FORMAT_INT;
        break;
    }
    describe(s->w, name, f, s->ndim, s->rows, s->cols);
    return 0;
}

/* The config of a shape model: the real one cut to `layers` (see the file comment). */
static dsv4_status shape_config(const char *shape, int *layers, int hash_layers,
                                dsv4_weight_format ef, dsv4_config *cfg)
{
    const char *json = !strcmp(shape, "flash") ? FLASH_HUB_JSON : PRO_HUB_JSON;
    DSV4_TRY(dsv4_config_parse(json, strlen(json), shape, cfg));
    const int real = cfg->num_layers;
    if (*layers <= 0) *layers = real;
    const int L = *layers;
    if (L > real)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "DeepSeek-V4-%s has %d layers; %d layers were asked for",
                         !strcmp(shape, "flash") ? "Flash" : "Pro", real, L);
    int ratio[DSV4_MAX_LAYERS];
    for (int i = 0; i < L; i++) {
        const int src = L == real ? i : (i + 2 < real ? i + 2 : real - 1);
        ratio[i] = cfg->compress_ratio[src];
    }
    if (hash_layers > cfg->num_hash_layers || hash_layers > L)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "%d hash-routed layers asked for: DeepSeek-V4-%s has %d, the model %d "
                         "layers",
                         hash_layers, !strcmp(shape, "flash") ? "Flash" : "Pro",
                         cfg->num_hash_layers, L);
    const int hash = hash_layers >= 0                        ? hash_layers
                     : L == real || L > cfg->num_hash_layers ? cfg->num_hash_layers
                                                             : L - 1;
    memset(cfg->compress_ratio, 0, sizeof cfg->compress_ratio);
    memset(cfg->hash_layer, 0, sizeof cfg->hash_layer);
    for (int i = 0; i < L; i++) {
        cfg->compress_ratio[i] = ratio[i];
        cfg->hash_layer[i] = i < hash;
    }
    cfg->num_layers = L;
    cfg->num_mtp_layers = 0;
    cfg->num_hash_layers = hash;
    cfg->expert_quant = ef == DSV4_FORMAT_NVFP4 ? DSV4_EXPERT_QUANT_NVFP4 : DSV4_EXPERT_QUANT_FP4;
    snprintf(cfg->source, sizeof cfg->source, "%s hub config, %d of %d layers, no weights", shape,
             L, real);
    return DSV4_OK;
}

dsv4_status dsv4_model_create_shape(const char *shape, int layers, int hash_layers,
                                    dsv4_weight_format expert_format, dsv4_model **out)
{
    dsv4_clear_error();
    if (!shape || !out)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_model_create_shape: NULL argument");
    *out = NULL;
    if (strcmp(shape, "flash") && strcmp(shape, "pro"))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "model shape '%s': expected flash or pro",
                         shape);
    if (expert_format != DSV4_FORMAT_MXFP4 && expert_format != DSV4_FORMAT_NVFP4)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "routed experts must be MXFP4 or NVFP4 (got %s)",
                         dsv4_weight_format_name(expert_format));
    dsv4_config cfg;
    DSV4_TRY(shape_config(shape, &layers, hash_layers, expert_format, &cfg));

    dsv4_model *m = calloc(1, sizeof *m);
    if (!m) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating the model handle");
    m->cfg = cfg;
    m->layout = expert_format == DSV4_FORMAT_NVFP4 ? DSV4_LAYOUT_NVFP4 : DSV4_LAYOUT_OFFICIAL;
    m->w.n_layers = layers;
    m->w.layers = calloc((size_t)layers, sizeof *m->w.layers);
    dsv4_status st =
        m->w.layers ? DSV4_OK : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %d layers", layers);
    for (int i = 0; st == DSV4_OK && i < layers; i++) {
        dsv4_layer_weights *L = &m->w.layers[i];
        L->index = i;
        L->compress_ratio = cfg.compress_ratio[i];
        L->hash_routed = cfg.hash_layer[i];
        L->experts = calloc((size_t)cfg.n_routed_experts, sizeof *L->experts);
        if (!L->experts)
            st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %d experts", cfg.n_routed_experts);
    }
    char label[96];
    snprintf(label, sizeof label, "<random %s, %d layers, %s experts>", shape, layers,
             dsv4_weight_format_name(expert_format));
    shape_ctx k = {expert_format, NULL, 0};
    if (st == DSV4_OK) {
        schema_walk(m, shape_slot, &k); /* sizing pass: the names' bytes */
        const size_t lab = strlen(label) + 1;
        m->dir = malloc(lab + k.used);
        if (!m->dir) {
            st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %zu bytes of weight names",
                           lab + k.used);
        } else {
            memcpy(m->dir, label, lab);
            k.pool = m->dir + lab;
            k.used = 0;
            schema_walk(m, shape_slot, &k);
        }
    }
    if (st != DSV4_OK) {
        dsv4_model_close(m);
        return st;
    }
    *out = m;
    return DSV4_OK;
}

typedef struct bytes_ctx {
    int layer;
    uint64_t dense, expert;
} bytes_ctx;

static int add_bytes(schema_slot *s, void *ctx)
{
    bytes_ctx *b = ctx;
    if (s->layer != b->layer || s->role == ROLE_TABLE) return 0;
    if (s->expert < 0)
        b->dense += dsv4_weight_bytes(s->w);
    else if (s->expert == 0)
        b->expert += dsv4_weight_bytes(s->w);
    return 0;
}

void dsv4_model_layer_bytes(const dsv4_model *m, int layer, uint64_t *dense, uint64_t *expert)
{
    bytes_ctx b = {layer, 0, 0};
    schema_walk((struct dsv4_model *)m, add_bytes, &b); /* the walk only reads */
    *dense = b.dense;
    *expert = b.expert;
}
