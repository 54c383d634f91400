/*
 * engine_internal.h - what stands behind a dsv4_engine: the backend copies of the weights, the
 * decoded small vectors, the per-slot state and the step's scratch. Shared by engine.c (setup,
 * slots, steps, graphs) and engine_layer.c (the layer loop).
 */
#ifndef DSV4_ENGINE_ENGINE_INTERNAL_H
#define DSV4_ENGINE_ENGINE_INTERNAL_H

#include "engine/engine.h"
#include "model/model.h"

/* Decode graph buckets (engine.c bucket_rows: 1 .. 32,768 rows). */
enum { ENG_BUCKETS = 151 };

/* One compressor's state for all slots: rows ring [S, Rc, width] (kv and gate), entries
 * S cap (the attention's in the serving layout, kv_layout.h; the indexer's bf16 [S, cap, dim]),
 * slot_bytes a slot. */
typedef struct eng_comp {
    int ratio, width, dim;
    float *ring_kv, *ring_gate;
    void *ent;
    int64_t cap;
    uint64_t slot_bytes;
    float *ape, *norm; /* [ratio, width], [dim] */
} eng_comp;

typedef struct eng_layer {
    dsv4_layer_weights w; /* backend copies (w.experts: its own array) */
    dsv4_bk_experts *experts;
    int ratio, hash;
    /* decoded vectors, f32 in backend memory */
    float *attn_norm, *ffn_norm, *q_norm, *kv_norm, *sink;
    float *hc_attn_base, *hc_attn_scale, *hc_ffn_base, *hc_ffn_scale;
    float *gate_bias;   /* NULL on hash layers or when absent */
    int32_t *tid2eid;   /* hash layers: [vocab, K] */
    uint8_t *win;       /* S R window keys (serving layout, kv_layout.h) */
    eng_comp comp, idx; /* ratio > 0; ratio 4 (the indexer's) */
} eng_layer;

/* The step's activations, sized for max_chunk rows (see engine_layer.c for each one's use). */
typedef struct eng_scratch {
    float *X, *Xo, *post, *comb, *h, *f;
    float *post2, *comb2, *f2; /* the seams' other post, comb and f (engine_layer.c hc_seam) */
    float *xh, *xq;            /* act_quant(h) [N, D]; act_quant of any other input [N, max cols] */
    float *qr, *q, *kv, *o, *z;
    float *ck, *cg;   /* compressor rows [N, max width] */
    float *ick, *icg; /* the indexer compressor's rows [N, its width] (same launch as ck, cg) */
    float *iq, *iw;
    int32_t *sel;    /* [N, topk] indexer picks */
    float *logits_e; /* [N, E] router logits */
    int32_t *msel;   /* [N, K] */
    float *wts;      /* [N, K] */
    void *moe_ws, *idx_ws;
    int32_t *rows; /* [3, max_chunk]: slot, pos, ids */
    int32_t *ixflag; /* [layers]: the indexer queries' signal (engine_layer.c attention) */
    float *logits; /* [logit_rows, V] */
} eng_scratch;

struct dsv4_engine {
    dsv4_model *m;
    const dsv4_config *c;
    dsv4_engine_options o;
    dsv4_engine_plan plan;
    dsv4_backend *b;
    int S;             /* slots held for sequences; slot S is the padding rows' scratch slot */
    int R, Rc4, Rc128; /* window ring, compressor rings (ratio 4 and 128); R, caps: whole pages */
    int logit_rows;
    int n_layers;
    eng_layer *L;
    dsv4_weight embed, head, hc_head_fn;
    float *norm, *hc_head_base, hc_head_scale;
    float *rope_main, *rope_comp; /* [rope_dim / 2] */
    eng_scratch s;
    int64_t *pos;                   /* [S + 1] host: tokens held per slot */
    int32_t *hrows;                 /* [3, max_chunk] host staging of the rows */
    void *graphs[ENG_BUCKETS];      /* decode graph of bucket i (engine.c bucket_rows; NULL
                                       until first use) */
    int graph_kernels[ENG_BUCKETS]; /* kernel launches in graphs[i] */
    int last_rows;                  /* rows of logits written by the last step */
};

/* The layer loop: runs one step over n rows already uploaded to e->s.rows (slot, pos, ids);
 * leaves the final hidden rows in e->s.h [n, D]. engine_layer.c */
dsv4_status dsv4_engine_forward(dsv4_engine *e, int n);

#endif
