/*
 * dsv4.h - the public interface of libdsv4, a DeepSeek-V4 inference engine.
 *
 * This is the only header a program using the library includes. Everything behind it is
 * reached through opaque handles; no tensor or backend type leaks out.
 *
 * Errors: every call that can fail returns a dsv4_status. DSV4_OK is zero. On failure the
 * library also records a human-readable detail text (naming the file, tensor or field involved
 * and what was expected) that dsv4_last_error() returns. The text is kept per thread, so two
 * threads using the library do not overwrite each other's messages. Status values never change
 * meaning once published; new ones are only appended.
 *
 * Ownership: a handle returned through an out-parameter belongs to the caller, who releases it
 * with the matching _close/_free call. Strings returned as `const char *` belong to the library
 * and live as long as the handle they came from.
 */
#ifndef DSV4_H
#define DSV4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * Status codes
 * ---------------------------------------------------------------------------------------- */
typedef enum dsv4_status {
    DSV4_OK = 0,
    DSV4_ERR_INVALID_ARGUMENT = 1, /* a caller passed NULL, an out-of-range value, a bad flag */
    DSV4_ERR_IO = 2,               /* a file could not be opened, read, stat'ed or mapped */
    DSV4_ERR_FORMAT = 3,           /* a file is malformed: safetensors header, JSON syntax */
    DSV4_ERR_CONFIG = 4,           /* config.json lacks a key, or a value is out of range */
    DSV4_ERR_MISSING_TENSOR = 5,   /* a tensor the model needs is not in the checkpoint */
    DSV4_ERR_TENSOR_SHAPE = 6,     /* a tensor's shape disagrees with the model geometry */
    DSV4_ERR_TENSOR_DTYPE = 7,     /* a tensor's dtype is unknown or not valid for its role */
    DSV4_ERR_UNSUPPORTED = 8,      /* a valid input this version does not handle */
    DSV4_ERR_OUT_OF_MEMORY = 9,    /* host or device allocation failed */
    DSV4_ERR_DEVICE = 10,          /* a GPU call failed (the text names the call and place) */
    DSV4_ERR_INPUT = 11,           /* user input is invalid: bad UTF-8, unknown token id */
    DSV4_ERR_CONTEXT_OVERFLOW = 12 /* a prompt or generation exceeds the context length */
} dsv4_status;

/* The enum's name as text, e.g. "DSV4_ERR_IO". Never NULL. */
const char *dsv4_status_name(dsv4_status status);

/* The detail text of the most recent failing call on this thread ("" if none). The pointer is
 * valid until the next library call on this thread. */
const char *dsv4_last_error(void);

/* Library version, "MAJOR.MINOR.PATCH". */
const char *dsv4_version(void);

/* ------------------------------------------------------------------------------------------
 * Compute devices
 * ---------------------------------------------------------------------------------------- */
typedef enum dsv4_device_kind {
    DSV4_DEVICE_AUTO = 0, /* the GPU when one answers, else the CPU */
    DSV4_DEVICE_CPU = 1,
    DSV4_DEVICE_CUDA = 2
} dsv4_device_kind;

/* Resolves `wanted` to the device a run would use. AUTO falls back to the CPU when the library
 * was built without CUDA or no GPU answers. Asking for CUDA explicitly when none is usable is
 * DSV4_ERR_DEVICE. `name` (may be NULL) receives a description such as "NVIDIA H100 80GB HBM3"
 * or "CPU (16 threads)". */
dsv4_status dsv4_device_resolve(dsv4_device_kind wanted, dsv4_device_kind *resolved, char *name,
                                size_t name_size);

/* ------------------------------------------------------------------------------------------
 * Models: a checkpoint directory, opened and validated
 * ---------------------------------------------------------------------------------------- */
typedef struct dsv4_model dsv4_model;

/* Checkpoint layouts the loader recognises. */
typedef enum dsv4_layout {
    DSV4_LAYOUT_OFFICIAL = 0, /* DeepSeek's published files: flat names, FP8 + MXFP4 (or FP8) */
    DSV4_LAYOUT_NVFP4 = 1,    /* NVIDIA's re-quantisation: NVFP4 routed experts */
    DSV4_LAYOUT_HF = 2        /* transformers' save_pretrained: "model." prefix, dense dtypes */
} dsv4_layout;

/* Opens the checkpoint in `dir`: reads config.json (or inference/config.json), maps every
 * safetensors shard, detects the layout, and checks that each tensor the geometry calls for is
 * present with a valid dtype and shape. Nothing is copied: weights stay memory-mapped. */
dsv4_status dsv4_model_open(const char *dir, dsv4_model **out);
void dsv4_model_close(dsv4_model *model);

/* Weight storage formats, as the loader classifies each matrix. */
typedef enum dsv4_weight_format {
    DSV4_FORMAT_F32 = 0,
    DSV4_FORMAT_BF16 = 1,
    DSV4_FORMAT_F16 = 2,
    DSV4_FORMAT_FP8 = 3,      /* e4m3 with ue8m0 (or f32) 128x128 block scales */
    DSV4_FORMAT_MXFP4 = 4,    /* e2m1 pairs with ue8m0 scales per 32 inputs */
    DSV4_FORMAT_NVFP4 = 5,    /* e2m1 pairs with e4m3 scales per 16 inputs and an f32 global */
    DSV4_FORMAT_INT = 6,      /* integer tables (tid2eid) */
    DSV4_FORMAT_COUNT = 7
} dsv4_weight_format;

const char *dsv4_weight_format_name(dsv4_weight_format format);

/* Attention type of one layer. */
typedef enum dsv4_attention_kind {
    DSV4_ATTN_SLIDING = 0, /* compress ratio 0: window only */
    DSV4_ATTN_CSA = 1,     /* compressed sparse attention: ratio 4 + lightning indexer */
    DSV4_ATTN_HCA = 2      /* heavily compressed attention: ratio 128, dense over entries */
} dsv4_attention_kind;

/* Model geometry and what the checkpoint holds, as read and cross-checked at open time. */
typedef struct dsv4_model_info {
    dsv4_layout layout;
    int vocab_size, hidden_size, num_layers, num_mtp_layers;
    int num_heads, head_dim, rope_dim, q_lora_rank, o_groups, o_lora_rank;
    int n_routed_experts, n_experts_per_tok, n_shared_experts, moe_intermediate_size;
    int num_hash_layers, index_n_heads, index_head_dim, index_topk;
    int sliding_window, hc_mult, hc_sinkhorn_iters;
    int64_t max_position_embeddings;
    float rms_norm_eps, hc_eps, rope_theta, compress_rope_theta, routed_scaling_factor,
        swiglu_limit;
    float yarn_factor, yarn_beta_fast, yarn_beta_slow;
    int64_t yarn_original_max_position;
    int bos_token_id, eos_token_id;
    int64_t total_params;                         /* logical elements, scales excluded */
    int64_t mtp_params;                           /* of which in mtp.* */
    uint64_t total_bytes;                         /* as stored, scales included */
    uint64_t bytes_by_format[DSV4_FORMAT_COUNT];  /* weight bytes + their scales */
    int64_t params_by_format[DSV4_FORMAT_COUNT];
    int num_files;                                /* safetensors shards mapped */
} dsv4_model_info;

typedef struct dsv4_layer_info {
    int index;                  /* 0..num_layers-1; num_layers.. for MTP blocks */
    int is_mtp;
    int compress_ratio;         /* 0, 4, 128 */
    dsv4_attention_kind attention;
    int hash_routed;            /* 1: experts picked by tid2eid[token] */
    dsv4_weight_format attn_format;    /* format of wq_a (the attention projections) */
    dsv4_weight_format expert_format;  /* format of the routed experts */
    uint64_t bytes;             /* all weights of this layer as stored */
} dsv4_layer_info;

dsv4_status dsv4_model_get_info(const dsv4_model *model, dsv4_model_info *info);
/* i in [0, num_layers + num_mtp_layers). */
dsv4_status dsv4_model_get_layer_info(const dsv4_model *model, int i, dsv4_layer_info *info);

/* Memory a run would need, in bytes, for `batch` sequences of up to `context` tokens each:
 * weights as stored, per-sequence attention state in the serving layout (window + compressed
 * entries + indexer keys), and an activation workspace estimate. */
typedef struct dsv4_memory_plan {
    uint64_t weight_bytes;
    uint64_t state_bytes_per_token;   /* per sequence, averaged over a `context`-token run */
    uint64_t state_bytes;             /* batch * context tokens of state */
    uint64_t workspace_bytes;
    uint64_t total_bytes;
} dsv4_memory_plan;

dsv4_status dsv4_model_plan_memory(const dsv4_model *model, int64_t context, int batch,
                                   dsv4_memory_plan *plan);

#ifdef __cplusplus
}
#endif
#endif /* DSV4_H */
