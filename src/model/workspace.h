/*
 * workspace.h - the per-session workspace of the CPU forward pass: every temporary of a step
 * (activations, queries, key lists, attention and indexer scratch, MoE buffers, the faithful
 * mode's quantised-input copy, MTP draft tokens) is carved from one block that the session owns,
 * so that a decode step allocates nothing (docs/style.md, "no allocation inside the decode
 * step").
 *
 * Sizing. The block is laid out for a chunk of T tokens and a history capacity of `cap` tokens
 * (session.h: s->cap). T is the largest chunk evaluated so far (prefill or MTP catch-up); the
 * only regions that depend on cap are those whose length follows the tokens already held: the
 * key-pointer lists (an HCA layer's token sees (p + 1) / ratio entries) and the per-lane
 * attention and indexer scratch. dsv4_workspace_reserve() lays the block out again (one
 * realloc) only when a chunk is longer than any before or when the history capacity has grown;
 * the history grows by doubling (session.c, reserve), so over a run of one-token decode steps
 * the workspace reallocates only on the steps where the history's capacity doubles, and never
 * between them.
 *
 * Regions live for one step. The attention and MoE sublayers never run at once, so their
 * regions share one area (they alias: `attn.*` and `moe.*` point into the same bytes).
 */
#ifndef DSV4_MODEL_WORKSPACE_H
#define DSV4_MODEL_WORKSPACE_H

#include "dsv4.h"

#include <stddef.h>
#include <stdint.h>

/* Activations of one chunk, live across all layers of a step. model/forward.c */
typedef struct dsv4_fwd_buf {
    float *X, *Xo;     /* [T, n, D] residual streams (current, next) */
    float *flat;       /* [T, n * D] normalised streams */
    float *mix;        /* [T, (2+n)n] */
    float *pre, *post; /* [T, n] */
    float *comb;       /* [T, n, n] */
    float *y, *h, *f;  /* [T, D] collapsed, normalised sublayer input, sublayer output */
} dsv4_fwd_buf;

/* The attention sublayer's temporaries (model/forward_attn.c). nk_max: the most keys one token
 * sees, window + compressed entries (session capacity `cap`); lanes: the thread pool's size. */
typedef struct dsv4_attn_buf {
    float *qr;          /* [T, q_lora_rank] */
    float *q, *o;       /* [T, H, head_dim] queries, attention output */
    float *og;          /* [T, H * head_dim / o_groups] one output group */
    float *z;           /* [T, o_groups * o_lora_rank] */
    float *za;          /* [T, o_lora_rank] */
    float *iq, *iw;     /* indexer: [T, index_n_heads, index_head_dim], [T, index_n_heads] */
    int32_t *sel;       /* [T, index_topk] the indexer's picks */
    int *nsel;          /* [T] */
    const float **keys; /* [T, nk_max] key pointers; token t's at keys[koff[t] .. koff[t+1]) */
    int64_t *koff;      /* [T + 1] */
    float *scratch;     /* [lanes, nk_max] attention scores, one row per lane */
    double *contrib;    /* [lanes, head_dim] faithful attention's block sums */
    float *iscores;     /* [lanes, cap / 4 + 1] indexer scores */
    int64_t nk_max, iscores_len;
} dsv4_attn_buf;

/* The MoE sublayer's temporaries (model/forward_moe.c). K: experts per token; I: the widest
 * expert's intermediate size (shared included). */
typedef struct dsv4_moe_buf {
    float *logits, *scores; /* [T, E] router logits, scores */
    float *wts;             /* [T, K] routing weights */
    int32_t *sel;           /* [T, K] routed experts */
    float *xg, *yg;         /* [T * K, D] gathered inputs, expert outputs */
    float *g, *u;           /* [T * K, I] gate and up projections */
    float *acc;             /* [T, D] routed sum */
    int64_t *tok;           /* [T * K] tokens routed to one expert, and */
    int *slot;              /* [T * K] the slot of that expert in their selection, */
    float *wg;              /* [T * K] and its weight */
} dsv4_moe_buf;

typedef struct dsv4_workspace {
    void *mem;      /* the one block (owned by the workspace; dsv4_workspace_free) */
    size_t bytes;   /* its size */
    int64_t T, cap; /* the chunk and history capacity it is laid out for (0: none yet) */
    int lanes;      /* scratch rows: the thread pool's size */

    dsv4_fwd_buf fwd;
    float *xq; /* [T * max(K, n), max input width] faithful mode's act_quant copy of an input */
    int64_t xq_len;
    int32_t *mtp_tok;   /* [T] the MTP block's input tokens (forward_mtp.c) */
    dsv4_attn_buf attn; /* attn and moe share one area */
    dsv4_moe_buf moe;
} dsv4_workspace;

/* Makes the session's workspace fit a chunk of T tokens at the current history capacity
 * (s->cap). Allocates only when T exceeds every earlier chunk or s->cap has grown; the
 * regions' contents are not kept across a reallocation. */
dsv4_status dsv4_workspace_reserve(dsv4_session *s, int64_t T);
void dsv4_workspace_free(dsv4_workspace *ws);

/* Reallocations of any workspace in this process so far (tests and diagnostics). */
int64_t dsv4_workspace_grow_count(void);

#endif
