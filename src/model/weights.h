/*
 * weights.h - one internal description of every weight, whatever layout it was stored in.
 *
 * The loader (model/checkpoint.c) maps official, NVFP4 and HF tensor names onto these structs;
 * backends only ever see dsv4_weight. A weight is a logical [rows, cols] matrix (or vector,
 * rows = 1... see ndim) plus, for quantised formats, its scales:
 *
 *   F32/BF16/F16  data = rows*cols elements, row-major.
 *   FP8           data = e4m3 [rows, cols]; scale = [ceil(rows/128), ceil(cols/128)] of ue8m0
 *                 (scale_dtype F8_E8M0, value 2^(s-127)) or f32 (Base models).
 *   MXFP4         data = [rows, cols/2] bytes, low nibble = even column, e2m1;
 *                 scale = ue8m0 [rows, cols/32].
 *   NVFP4         data as MXFP4; scale = e4m3 [rows, cols/16]; value = e2m1 * scale * scale2.
 *   INT           tid2eid: I64 or I32 [rows, cols].
 *
 * Data pointers point into the memory-mapped files (no copies). An HF stacked expert tensor
 * [E, 2I, D] yields per-expert weights whose data pointers are offsets into it.
 */
#ifndef DSV4_MODEL_WEIGHTS_H
#define DSV4_MODEL_WEIGHTS_H

#include "dsv4.h"
#include "io/dtype.h"
#include "model/config.h"

#include <stdint.h>

typedef struct dsv4_weight {
    const char *name;           /* tensor name in the checkpoint (for messages) */
    dsv4_weight_format format;
    dsv4_dtype dtype;           /* element dtype of data */
    int ndim;                   /* 1 or 2 (logical) */
    int64_t rows, cols;         /* logical shape; a vector has rows = 1, cols = length */
    const void *data;
    uint64_t data_bytes;
    const void *scale;          /* NULL for dense formats */
    dsv4_dtype scale_dtype;
    int64_t scale_rows, scale_cols;
    uint64_t scale_bytes;
    float scale2;               /* NVFP4 global weight scale (weight_scale_2); 1 otherwise */
    float input_scale;          /* NVFP4 input_scale when present; 0 otherwise */
} dsv4_weight;

typedef struct dsv4_compressor_weights {
    dsv4_weight wkv, wgate, ape, norm;
} dsv4_compressor_weights;

typedef struct dsv4_expert_weights {
    dsv4_weight w1, w2, w3;     /* gate [I, D], down [D, I], up [I, D] */
} dsv4_expert_weights;

typedef struct dsv4_layer_weights {
    int index;                  /* global layer index (MTP blocks follow the main layers) */
    int is_mtp;
    int compress_ratio;
    int hash_routed;

    dsv4_weight hc_attn_fn, hc_attn_base, hc_attn_scale;
    dsv4_weight hc_ffn_fn, hc_ffn_base, hc_ffn_scale;
    dsv4_weight attn_norm, ffn_norm;

    /* attention */
    dsv4_weight wq_a, q_norm, wq_b, wkv, kv_norm, wo_a, wo_b, attn_sink;
    dsv4_compressor_weights compressor;     /* ratio > 0 */
    dsv4_weight idx_wq_b, idx_weights_proj; /* ratio == 4 */
    dsv4_compressor_weights idx_compressor; /* ratio == 4 */

    /* MoE */
    dsv4_weight gate, gate_bias, tid2eid;   /* gate_bias absent on hash layers, tid2eid present */
    dsv4_expert_weights *experts;           /* n_routed_experts entries, owned by the model */
    dsv4_expert_weights shared;

    /* MTP block extras */
    dsv4_weight e_proj, h_proj, enorm, hnorm, norm;
    dsv4_weight hc_head_fn, hc_head_base, hc_head_scale;
} dsv4_layer_weights;

typedef struct dsv4_model_weights {
    dsv4_weight embed, head, norm;
    dsv4_weight hc_head_fn, hc_head_base, hc_head_scale;
    int n_layers;                           /* main + MTP */
    dsv4_layer_weights *layers;
} dsv4_model_weights;

/* Number of logical elements (rows * cols). */
int64_t dsv4_weight_numel(const dsv4_weight *w);
/* Bytes as stored, data plus scales. */
uint64_t dsv4_weight_bytes(const dsv4_weight *w);
/* 1 when the weight was found in the checkpoint. */
static inline int dsv4_weight_present(const dsv4_weight *w)
{
    return w->data != 0;
}

/* Dequantises row `row` of `w` into `out[0..cols)` as f32 (the reference decoding that every
 * backend is tested against). */
dsv4_status dsv4_weight_dequant_row(const dsv4_weight *w, int64_t row, float *out);

#endif
