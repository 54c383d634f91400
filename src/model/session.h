/*
 * session.h - what stands behind a dsv4_session: the per-sequence state of the forward pass and
 * the small model constants it reads (norm weights, biases, sinks... decoded to f32 once).
 *
 * State design (a reference, so simple over small): every token's window key and every
 * compressor's per-token projection rows are kept for the whole sequence. The sliding window
 * is the tail of that history, a compressor's partial window is the rows after its last
 * entry, and the CSA overlap halves are the rows of the previous window. Truncation therefore
 * only lowers counters (entries past the new end are dropped; partial windows follow), and a
 * fork is a copy of the arrays.
 */
#ifndef DSV4_MODEL_SESSION_H
#define DSV4_MODEL_SESSION_H

#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/ops.h"
#include "dsv4.h"
#include "model/model.h"
#include "model/workspace.h"

/* One compressor (the attention's, or the CSA indexer's). */
typedef struct dsv4_comp_state {
    int ratio;      /* m: tokens per entry (4 or 128) */
    int width;      /* projection row width: 2 * dim with overlap (ratio 4), else dim */
    int dim;        /* entry width */
    int is_index;   /* the indexer's compressor (faithful mode rounds its entries to FP4) */
    float *kv;      /* [cap, width] every token's wkv . h */
    float *gate;    /* [cap, width] every token's wgate . h + ape[t % m] */
    float *entries; /* [cap / m + 1, dim] pooled, normalised, rotated entries */
    int64_t n_entries;
} dsv4_comp_state;

typedef struct dsv4_layer_state {
    float *kv;            /* [cap, head_dim] every token's key (= value), normalised + rotated */
    dsv4_comp_state comp; /* ratio > 0 */
    dsv4_comp_state idx;  /* ratio 4: the lightning indexer's own compressor */
} dsv4_layer_state;

/* Vectors of one layer decoded to f32 (owned by the session). */
typedef struct dsv4_layer_consts {
    float *attn_norm, *ffn_norm, *q_norm, *kv_norm, *sink;
    float *hc_attn_base, *hc_attn_scale, *hc_ffn_base, *hc_ffn_scale;
    float *comp_ape, *comp_norm; /* ratio > 0: [m, width], [dim] */
    float *idx_ape, *idx_norm;   /* ratio 4 */
    float *gate_bias;            /* non-hash layers: [E] */
} dsv4_layer_consts;

struct dsv4_session {
    dsv4_model *m;
    const dsv4_config *cfg;
    dsv4_session_options opt;
    dsv4_cpu_pool *pool;

    dsv4_layer_consts *lc;      /* [n_layers]: main layers, then MTP blocks */
    float *norm, *hc_head_base; /* [D], [n] */
    float hc_head_scale;
    float rope_main[DSV4_ROPE_MAX / 2], rope_comp[DSV4_ROPE_MAX / 2];

    int64_t pos;          /* tokens held */
    int64_t cap;          /* tokens the per-token arrays have room for */
    int32_t *ids;         /* [cap] the sequence so far (hash routing reads it) */
    dsv4_layer_state *ls; /* [n_layers] */

    dsv4_capture_fn capture;
    void *capture_user;

    /* MTP (forward_mtp.c). Block j is layer num_layers + j of lc/ls/m->w.layers; only block 0
     * drafts. MTP entry t (its window key at position t) was computed from hmain[t] and the
     * token mtp_ids[t]; entries 0 .. mtp_pos-1 are held, mtp_pos <= pos. Every held entry but
     * the last has mtp_ids[t] == ids[t+1] (truncate keeps the entry before the cut, whose token
     * may then be replaced: a draft checks that one before reusing it). */
    int n_mtp;                          /* MTP blocks in the checkpoint (0: none) */
    int n_layers;                       /* num_layers + n_mtp: the length of lc and ls */
    float *mtp_enorm, *mtp_hnorm;       /* [D] */
    float *mtp_norm, *mtp_hc_head_base; /* [D], [n] */
    float mtp_hc_head_scale;
    float *hmain;     /* [cap, n, D] main streams after the last layer (NULL when n_mtp == 0) */
    int32_t *mtp_ids; /* [cap] (NULL when n_mtp == 0) */
    int64_t mtp_pos;

    /* Every per-step temporary of the forward pass (workspace.h); owned by the session. */
    dsv4_workspace ws;

    /* CUDA sessions (session_gpu.c): the model's engine and this session's slot in it; only
     * pos, cap and ids above are used then. NULL for CPU sessions. */
    struct dsv4_engine *eng;
    int slot;
};

/* The CUDA branch of the public session calls (model/session_gpu.c). */
dsv4_status dsv4_session_gpu_open(dsv4_session *s);
void dsv4_session_gpu_close(dsv4_session *s);
dsv4_status dsv4_session_gpu_eval(dsv4_session *s, const int32_t *ids, int64_t n, float *logits,
                                  int all_positions);
dsv4_status dsv4_session_gpu_truncate(dsv4_session *s, int64_t n);
dsv4_status dsv4_session_gpu_fork(const dsv4_session *s, dsv4_session *d);

/* One block (main layer or MTP block `li`) at positions s->pos .. s->pos+T-1: b->X [T, n, D]
 * -> b->X after the attention and FFN sites. ids [T]: the tokens hash routing reads. */
dsv4_status dsv4_forward_block(dsv4_session *s, int li, const int32_t *ids, int64_t T,
                               dsv4_fwd_buf *b);

/* Head collapse and final norm: b->X [T, n, D] -> b->h [T, D]; emits "<tag>.hc_head" and
 * "<tag>.final". */
dsv4_status dsv4_forward_head(dsv4_session *s, const dsv4_weight *hc_fn, const float *hc_base,
                              float hc_scale, const float *norm, const char *tag, int64_t T,
                              dsv4_fwd_buf *b);

/* Drops MTP entries at positions >= n (window keys and compressor entries). model/forward_mtp.c */
void dsv4_mtp_truncate(dsv4_session *s, int64_t n);

/* Runs the forward pass for ids[0..T) at positions s->pos .. s->pos+T-1 (capacity ensured and
 * ids already stored by the caller; s->pos is advanced by the caller). logits: [T, V] rows
 * for every token when all_positions, else [V] for the last; NULL skips the head.
 * model/forward.c */
dsv4_status dsv4_forward(dsv4_session *s, const int32_t *ids, int64_t T, float *logits,
                         int all_positions);

/* Attention sublayer of main layer `layer`: h [T, D] -> out [T, D]; appends the tokens' keys
 * and compressor rows to the layer state and closes finished windows. model/forward_attn.c */
dsv4_status dsv4_forward_attn(dsv4_session *s, int layer, const float *h, int64_t T, float *out);

/* MoE sublayer: h [T, D], ids [T] -> out [T, D]. model/forward_moe.c */
dsv4_status dsv4_forward_moe(dsv4_session *s, int layer, const float *h, const int32_t *ids,
                             int64_t T, float *out);

/* Faithful mode (docs/numeric-modes.md): the official reference's roundings. No-ops in exact
 * mode. dsv4_fw_bf16: x [n] to bf16. dsv4_fw_linear_q: y = x W^T for a projection the official
 * model runs as an FP8/FP4 GEMM (wq_a, wq_b, wkv, wo_b, indexer wq_b, experts): the input rows
 * [T, cols] go through act_quant (bf16, then e4m3 in blocks of 128) in a copy, and y is rounded
 * to bf16. dsv4_fw_linear_bf16: a bf16 GEMM (wo_a, indexer weights_proj): y rounded to bf16.
 * model/forward.c */
void dsv4_fw_bf16(const dsv4_session *s, float *x, int64_t n);
dsv4_status dsv4_fw_linear_q(dsv4_session *s, const dsv4_weight *w, const float *x, int64_t T,
                             float *y);
dsv4_status dsv4_fw_linear_rows_bf16(dsv4_session *s, const dsv4_weight *w, int64_t row0,
                                     int64_t nrows, const float *x, int64_t T, float *y);

/* Calls the capture hook when one is set. */
void dsv4_session_emit(dsv4_session *s, const char *name, const float *data, int64_t rows,
                       int64_t width);

#endif
