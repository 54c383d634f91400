/*
 * config.h - model hyper-parameters, read from a checkpoint's JSON config.
 *
 * Three spellings are accepted and mapped onto one struct:
 *  - the hub config.json (HF keys with the legacy V4 names: compress_ratios, num_hash_layers,
 *    qk_rope_head_dim, rope_scaling);
 *  - what transformers 5.x writes (layer_types, compress_rates, mlp_layer_types,
 *    rope_parameters {main, compress}, partial_rotary_factor);
 *  - the official inference/config.json (dim, n_layers, n_heads, moe_inter_dim, window_size,
 *    rope_factor, original_seq_len, ...).
 * Missing keys fall back to the DeepSeek-V4 defaults only where every published config agrees
 * (e.g. hc_mult 4); the geometry keys (sizes, layer counts) are required.
 */
#ifndef DSV4_MODEL_CONFIG_H
#define DSV4_MODEL_CONFIG_H

#include "dsv4.h"

#include <stdint.h>

enum { DSV4_MAX_LAYERS = 256 };

typedef enum dsv4_expert_quant {
    DSV4_EXPERT_QUANT_NONE = 0, /* dense dtype (HF layout) */
    DSV4_EXPERT_QUANT_FP4,      /* MXFP4 (expert_dtype "fp4") */
    DSV4_EXPERT_QUANT_FP8,      /* Base models: FP8 experts */
    DSV4_EXPERT_QUANT_NVFP4     /* hf_quant_config.json: NVFP4 */
} dsv4_expert_quant;

typedef struct dsv4_config {
    int vocab_size;
    int hidden_size;            /* D */
    int num_layers;             /* main layers, MTP excluded */
    int num_mtp_layers;         /* num_nextn_predict_layers / n_mtp_layers */
    int num_heads;              /* H */
    int num_kv_heads;           /* must be 1 */
    int head_dim;               /* c */
    int rope_dim;               /* r: qk_rope_head_dim */
    int q_lora_rank;
    int o_groups;
    int o_lora_rank;
    int n_routed_experts;       /* E */
    int n_experts_per_tok;      /* k */
    int n_shared_experts;
    int moe_intermediate_size;  /* I */
    int num_hash_layers;
    int index_n_heads;
    int index_head_dim;
    int index_topk;
    int sliding_window;
    int hc_mult;                /* n */
    int hc_sinkhorn_iters;
    int64_t max_position_embeddings;
    int bos_token_id;
    int eos_token_id;
    float rms_norm_eps;
    float hc_eps;
    float rope_theta;
    float compress_rope_theta;
    float routed_scaling_factor;
    float swiglu_limit;
    int norm_topk_prob;
    /* YaRN on compressed layers (factor 1 = none). */
    float yarn_factor;
    int64_t yarn_original_max_position;
    float yarn_beta_fast;
    float yarn_beta_slow;
    /* Per layer, main layers then MTP layers: compress ratio (0, 4 or 128) and hash routing. */
    int compress_ratio[DSV4_MAX_LAYERS];
    int hash_layer[DSV4_MAX_LAYERS];
    /* Quantisation as the config declares it (the loader checks tensors agree). */
    int fp8_block_size;         /* 128 when quantization_config says so, else 0 */
    dsv4_expert_quant expert_quant;
    char source[64];            /* which file/spelling was parsed, for messages */
} dsv4_config;

/* Parses JSON text `json[0..len)`; `label` names the file in errors. Fills *cfg completely and
 * validates ranges (positive sizes, H divisible by o_groups, rope_dim even and <= head_dim,
 * ratios in {0,4,128}, layer counts <= DSV4_MAX_LAYERS, ...). Pure: safe to fuzz. */
dsv4_status dsv4_config_parse(const char *json, size_t len, const char *label, dsv4_config *cfg);

/* Reads `dir`/config.json, else `dir`/inference/config.json; if `dir`/hf_quant_config.json
 * exists, marks the experts NVFP4. */
dsv4_status dsv4_config_load_dir(const char *dir, dsv4_config *cfg);

#endif
