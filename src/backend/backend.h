/*
 * backend.h - the op set the batched engine's layer loop (engine/engine_layer.c) is written
 * against, once, for every backend. Each op has a CPU implementation (backend/cpu/bk_*.c, the
 * reference, always built) and a CUDA one (backend/cuda/bk_*.cu, built with DSV4_HAVE_CUDA);
 * backend.c dispatches on b->kind. The GPU op tests (tests/test_gpu_*.c) run both on the same
 * inputs and compare.
 *
 * Numerics: every op implements the "faithful" mode of docs/numeric-modes.md, the official
 * reference's roundings, exactly as model/forward*.c does it on the CPU (the loop over sessions
 * that tests check against transformers). Activations are f32 arrays in backend memory; a
 * "bf16" rounding below is f32 -> bf16 -> f32, nearest-even (dsv4_round_bf16). The attention's
 * cached keys and compressed entries are stored in the serving layout (kv_layout.h: e4m3 bytes
 * with a power-of-two scale a 64 non-RoPE dims, the RoPE dims bf16; 584 B at hd 512), the
 * indexer's keys too (dsv4_ik_layout_of: e2m1 nibbles with a power-of-two scale a 32 dims; 68 B
 * at 128 dims): in faithful mode every cached value is exact in either, so this loses nothing.
 *
 * Batching: an op runs on N "rows", one token each; row r belongs to the sequence held in state
 * slot slot[r] and sits at position pos[r] (dsv4_bk_rows). Rows of one slot appear in
 * ascending position order and are contiguous positions. A prefill chunk is N rows of one slot;
 * a batched decode step is one row for each of N slots. Row arrays live in backend memory, so a
 * step never goes back to the host (routing, top-k and window logic all read them there).
 *
 * Per-slot state layout (all in backend memory, slot-major):
 *   window keys     win      S R entries (kv_layout.h of hd, r); position p of slot s is entry
 *                            s R + p % R (R >= W + chunk)
 *   compressor rows ring_kv  [S, Rc, width] f32, ring_gate likewise (gate already + ape);
 *                   position p at p % Rc (Rc >= 2m + chunk)
 *   entries         ent      S cap_e entries (kv_layout.h of hd, r; the indexer's keys:
 *                            dsv4_ik_layout_of(dim)); entry i of slot s (index s cap_e + i)
 *                            pools positions [i*m, (i+1)*m)
 *
 * Shapes in comments: `x [N, width]` row-major; ld* are row strides in elements (>= width).
 * Every op returns DSV4_OK or an error with dsv4_last_error() text; a CUDA op only enqueues work
 * on the context's stream (errors of a launch are reported, errors inside a kernel surface at
 * the next dsv4_bk_sync).
 */
#ifndef DSV4_BACKEND_BACKEND_H
#define DSV4_BACKEND_BACKEND_H

#include "backend/kv_layout.h"
#include "dsv4.h"
#include "model/weights.h"

#include <stddef.h>
#include <stdint.h>

typedef struct dsv4_cpu_pool dsv4_cpu_pool;
typedef struct dsv4_cuda_ctx dsv4_cuda_ctx;
typedef struct dsv4_bk_prof dsv4_bk_prof;

typedef struct dsv4_backend {
    dsv4_device_kind kind; /* DSV4_DEVICE_CPU or DSV4_DEVICE_CUDA */
    dsv4_cpu_pool *pool;   /* CPU: the thread pool (NULL: the calling thread) */
    dsv4_cuda_ctx *cuda;   /* CUDA: the device context (stream, memory) */
    dsv4_bk_prof *prof;    /* per-op timing when on (dsv4_bk_prof_*) */
    int pdl; /* CUDA graphs: kernel -> kernel edges programmatic (dsv4_bk_graph_end) */
    int graph_kernels; /* kernel nodes of the last graph dsv4_bk_graph_end made */
} dsv4_backend;

/* CPU: pool may be NULL. CUDA: device index. */
dsv4_status dsv4_backend_create(dsv4_device_kind kind, int device, dsv4_cpu_pool *pool,
                                dsv4_backend **out);
void dsv4_backend_destroy(dsv4_backend *b);

/* The rows of one step (see above). n is known on the host; the arrays are backend memory. */
typedef struct dsv4_bk_rows {
    int32_t n;
    const int32_t *slot; /* [n] state slot */
    const int32_t *pos;  /* [n] position in its sequence */
    const int32_t *ids;  /* [n] token id */
} dsv4_bk_rows;

/* ---- memory ------------------------------------------------------------------------------- */
dsv4_status dsv4_bk_alloc(dsv4_backend *b, size_t bytes, void **out); /* zero-filled */
void dsv4_bk_free(dsv4_backend *b, void *p);
dsv4_status dsv4_bk_upload(dsv4_backend *b, void *dst, const void *src, size_t bytes);
dsv4_status dsv4_bk_download(dsv4_backend *b, void *dst, const void *src, size_t bytes);
dsv4_status dsv4_bk_copy(dsv4_backend *b, void *dst, const void *src, size_t bytes);
dsv4_status dsv4_bk_memset0(dsv4_backend *b, void *p, size_t bytes);
/* p [n] = bf16 bits of values in (-1, 1), 2^-8 <= |v|, each a hash of (seed, i): the same bits
 * on every device (benchmarks fill a cache with varied keys). */
dsv4_status dsv4_bk_fill_bf16(dsv4_backend *b, uint16_t *p, size_t n, uint64_t seed);
/* p: n entries of layout l (dsv4_kv_bytes(l, n) bytes) of valid random values, byte i
 * dsv4_fill_kv_byte(l, seed, i) on every device (benchmarks fill the caches). */
dsv4_status dsv4_bk_fill_kv(dsv4_backend *b, uint8_t *p, const dsv4_kv_layout *l, int64_t n,
                            uint64_t seed);
/* dsv4_fill_bf16_bits (kv_layout.h): the value it writes at index i. */
dsv4_status dsv4_bk_sync(dsv4_backend *b);
/* Free and total bytes of the backend's memory (CPU: physical memory). */
dsv4_status dsv4_bk_mem_info(dsv4_backend *b, size_t *free_bytes, size_t *total_bytes);
/* *out describes w in backend memory: CUDA copies data and scales to the device; the CPU uses
 * the mapped bytes as they are. random_seed != 0: the data is not read (w->data may be NULL)
 * and the copy is filled with finite random values valid for the format (benchmarks). */
dsv4_status dsv4_bk_weight_upload(dsv4_backend *b, const dsv4_weight *w, uint64_t random_seed,
                                  dsv4_weight *out);
void dsv4_bk_weight_free(dsv4_backend *b, dsv4_weight *w);

/* ---- elementwise and per-row ops (bk_rows) ------------------------------------------------ */
/* X [N, n_copies, D] = bf16(embed row ids[r]) in every copy. */
dsv4_status dsv4_bk_embed(dsv4_backend *b, float *X, const dsv4_weight *embed,
                          const dsv4_bk_rows *rows, int n_copies, int64_t D);
/* y [N, width] = x * rsqrt(mean(x^2) + eps) (* w when w != NULL), bf16-rounded when round_bf16.
 * Sum of squares in f32 or wider. y may alias x (with ldy == ldx). */
dsv4_status dsv4_bk_rmsnorm(dsv4_backend *b, float *y, int64_t ldy, const float *x, int64_t ldx,
                            const float *w, int64_t N, int64_t width, float eps, int round_bf16);
/* The official per-head query norm with every op rounded to bf16 (forward_attn.c
 * faithful_q_norm): q [n_vec, c] in place, n_vec = rows x heads. */
dsv4_status dsv4_bk_head_norm_bf16(dsv4_backend *b, float *q, int64_t n_vec, int c, float eps);
/* dsv4_sim_act_quant on the first `width` elements of each row: bf16, then e4m3 in blocks of
 * `block` with power-of-two scales. y may alias x (with ldy == ldx). */
dsv4_status dsv4_bk_act_quant(dsv4_backend *b, float *y, int64_t ldy, const float *x, int64_t ldx,
                              int64_t N, int64_t width, int block);
/* x [n] = x * s, bf16-rounded when round_bf16. */
dsv4_status dsv4_bk_scale(dsv4_backend *b, float *x, int64_t n, float s, int round_bf16);
/* Interleaved RoPE (ops.h dsv4_op_rope) of the last r dims of each of row r's n_vec vectors of
 * width dim (x + r*ldx + v*dim), at position pos[r]; inverse rotates back. The whole n_vec x dim
 * values are bf16-rounded after when round_bf16. freqs [r/2] in backend memory. */
dsv4_status dsv4_bk_rope(dsv4_backend *b, float *x, int64_t ldx, const dsv4_bk_rows *rows,
                         int n_vec, int dim, int r, const float *freqs, int inverse,
                         int round_bf16);
/* The q and kv chains of the attention in one launch each (CUDA); each is exactly the composition
 * of the ops above that it names (the CPU runs them in turn):
 * rmsnorm_quant: y [N, width] = rmsnorm(x, w, round_bf16 = 1) (y may alias x), then
 *   yq [N, width] = act_quant(y, block).  Rows contiguous.
 * head_norm_rope: q [N, H, hd] in place: head_norm_bf16 (N H vectors), then rope of the last r
 *   dims (pos[r], freqs, round_bf16 = 1).
 * kv_norm_rope_store: kv [N, hd] in place: rmsnorm(w, round_bf16 = 1), rope of the last r dims
 *   (1 vector), act_quant of dims [0, hd - r) in blocks of qblock (the cache's 64), then
 *   kv_store into win. */
dsv4_status dsv4_bk_rmsnorm_quant(dsv4_backend *b, float *y, float *yq, const float *x,
                                  const float *w, int64_t N, int64_t width, float eps, int block);
dsv4_status dsv4_bk_head_norm_rope(dsv4_backend *b, float *q, const dsv4_bk_rows *rows, int H,
                                   int hd, int r, const float *freqs, float eps);
dsv4_status dsv4_bk_kv_norm_rope_store(dsv4_backend *b, uint8_t *win, int R, float *kv,
                                       const float *w, const dsv4_bk_rows *rows, int hd, int r,
                                       const float *freqs, float eps, int qblock);
/* head_norm_rope(q, rows, H, hd, r, freqs, eps), then kv_norm_rope_store(win, R, kv, w, rows, hd,
 * r, freqs, eps, qblock): the step's query heads and its key/value row, independent chains that
 * CUDA runs side by side in one launch. */
dsv4_status dsv4_bk_q_kv_norm_rope(dsv4_backend *b, float *q, int H, uint8_t *win, int R, float *kv,
                                   const float *w, const dsv4_bk_rows *rows, int hd, int r,
                                   const float *freqs, float eps, int qblock);

/* ---- projections ---------------------------------------------------------------------------
 * y [N, nrows] (row stride ldy) = x [N, w->cols] (row stride ldx) . W[row0 .. row0+nrows)^T,
 * W in its stored format (FP8 block-scaled, MXFP4, NVFP4, BF16, F16, F32), f32 accumulation;
 * y bf16-rounded when round_bf16. Faithful-mode FP8/FP4 projections quantise x first with
 * dsv4_bk_act_quant (block 128). */
dsv4_status dsv4_bk_linear(dsv4_backend *b, const dsv4_weight *w, int64_t row0, int64_t nrows,
                           const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy,
                           int round_bf16);
/* y [N, w->rows] = act_quant(x) . W^T (dsv4_bk_act_quant, block 128, then dsv4_bk_linear of all
 * rows): the faithful projection of an activation that is not quantised yet (the attention's
 * wo_b). xq [N, w->cols] (row stride w->cols) is scratch: the CPU writes act_quant(x) there, CUDA
 * too unless the projection's kernel quantises x itself (F8W's prologue: one launch fewer); its
 * contents are unspecified after the call. */
dsv4_status dsv4_bk_linear_aq(dsv4_backend *b, const dsv4_weight *w, const float *x, int64_t ldx,
                              float *xq, int64_t N, float *y, int64_t ldy, int round_bf16);
/* The grouped projection (the attention's wo_a): for each group g in [0, groups), with
 * R = w->rows / groups, y columns [g R, (g+1) R) = x columns [g w->cols, (g+1) w->cols) .
 * W[g R .. (g+1) R)^T. x [N, groups * w->cols] (row stride ldx), y [N, w->rows] (row stride ldy).
 * Exactly the dsv4_bk_linear calls of each group (the CPU makes them), one launch on CUDA. */
dsv4_status dsv4_bk_linear_grouped(dsv4_backend *b, const dsv4_weight *w, int groups,
                                   const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy,
                                   int round_bf16);
/* Several projections of the same N rows in one op (a layer's projections of its normalised
 * input): entry i is exactly dsv4_bk_linear(b, w, 0, w->rows, x, ldx, N, y, ldy, round_bf16)
 * (the CPU makes those calls, in entry order), then, where the entry has a norm,
 * dsv4_bk_rmsnorm_quant(b, y, yq, y, norm, N, w->rows, eps, qblock) (y's rows contiguous: ldy
 * w->rows; yq [N, w->rows]). The weights may differ in format and shape. CUDA: at decode sizes
 * one launch over all entries' rows, which keeps every SM streaming where each matrix alone is
 * too small to; there the last CTA of an entry with a norm normalises its rows while the other
 * entries' CTAs still stream (the attention's q_norm: a kernel fewer on the step's chain).
 * Outputs must not overlap each other or any entry's x. An entry's signal (backend memory, 0
 * before the op: the caller zeroes it on a chain both ops follow) is set to 1 once that entry's
 * y is complete and visible: an op of a side chain begun at a mark before this op
 * (dsv4_bk_side_begin_marked) may wait for it instead of for the whole op (CUDA, one launch:
 * the entry's last CTA sets it, by a ticket; otherwise a launch after the op's). */
enum { DSV4_BK_LINEAR_MULTI_MAX = 8 };
typedef struct dsv4_bk_linear_entry {
    const dsv4_weight *w;
    const float *x; /* [N, w->cols], row stride ldx */
    int64_t ldx;
    float *y; /* [N, w->rows], row stride ldy */
    int64_t ldy;
    int round_bf16;
    const float *norm; /* NULL, or the RMSNorm weight [w->rows] applied after (above) */
    float *yq;         /* [N, w->rows]: act_quant of the normalised y, blocks of qblock */
    float eps;
    int qblock;
    int32_t *signal; /* NULL, or set to 1 once this entry's y is complete (above) */
} dsv4_bk_linear_entry;
/* An entry without a norm. */
dsv4_bk_linear_entry dsv4_bk_lin_entry(const dsv4_weight *w, const float *x, int64_t ldx, float *y,
                                       int64_t ldy, int round_bf16);
dsv4_status dsv4_bk_linear_multi(dsv4_backend *b, const dsv4_bk_linear_entry *e, int n, int64_t N);

/* ---- mHC ---------------------------------------------------------------------------------
 * mix [N, (2+n)n] = fn . rmsnorm_noweight(X) (the caller: dsv4_bk_rmsnorm + dsv4_bk_linear).
 * hc_pre: per row dsv4_op_hc_weights -> post [N, n], comb [N, n, n], and
 *         y [N, D] = bf16(sum_j pre_j X[r, j]).
 * hc_post: Xo [N, n, D] = bf16(post_k f + sum_j comb[j, k] X_j)   (ops.h dsv4_op_hc_expand).
 * hc_head: mix [N, n]; pre = sigmoid(mix * scale + base) + eps; y = bf16(sum_j pre_j X_j). */
dsv4_status dsv4_bk_hc_pre(dsv4_backend *b, float *y, float *post, float *comb, const float *X,
                           const float *mix, const float *base, const float *scale, int64_t N,
                           int n, int64_t D, int iters, float eps);
dsv4_status dsv4_bk_hc_post(dsv4_backend *b, float *Xo, const float *X, const float *f,
                            const float *post, const float *comb, int64_t N, int n, int64_t D);
dsv4_status dsv4_bk_hc_head(dsv4_backend *b, float *y, const float *X, const float *mix,
                            const float *base, float scale, int64_t N, int n, int64_t D, float eps);
/* hc_site: a whole pre-sublayer mHC site in one op, the same math and roundings as the four
 * calls rmsnorm -> linear -> hc_pre -> rmsnorm it replaces. Per row r of X [N, n, D]:
 *   mix [N, (2+n)n] = fn . rmsnorm_noweight(X[r])   (f32, rms_eps; fn [(2+n)n, n*D] dense
 *                     F32, BF16 or F16, f32 accumulation),
 *   post [N, n], comb [N, n, n], y [N, D] = hc_pre on that mix (iters, hc_eps),
 *   h [N, D] = bf16(rmsnorm(y) * norm)              (rms_eps; norm may be NULL),
 *   xq [N, D] = act_quant(h) (dsv4_bk_act_quant, block 128: the FP8 copy the attention's
 *                     projections read; CUDA: in the same kernel where D % 128 == 0).
 * xq, y and mix may be NULL (not stored). Outputs must not overlap X. CUDA: D % 4 == 0, X and
 * fn 16-byte aligned; no workspace, deterministic. */
dsv4_status dsv4_bk_hc_site(dsv4_backend *b, float *h, float *xq, float *y, float *mix, float *post,
                            float *comb, const float *X, const dsv4_weight *fn, const float *base,
                            const float *scale, const float *norm, int64_t N, int n, int64_t D,
                            int iters, float hc_eps, float rms_eps);
/* hc_seam: the seam between two sublayers in one op, the calls hc_post -> hc_site it replaces:
 *   Xo [N, n, D] = hc_post(X, f, post_in, comb_in)   (the residual streams after the sublayer),
 *   then hc_site on Xo -> h, post, comb (and xq = act_quant(h) unless xq is NULL).
 * post / comb may be post_in / comb_in (read before they are written); Xo must not overlap X,
 * f or the other outputs. CUDA: as hc_site, and f, Xo 16-byte aligned.
 * With post = comb = NULL only Xo, h (and xq) are made, from fn's first n rows: the next
 * sublayer waits for nothing else. hc_seam_weights makes that site's post and comb from the same
 * inputs (hc_post recomputed, not stored; fn's other rows) and may run beside it: post / comb
 * must then not overlap post_in / comb_in. Together the two give hc_seam's bits.
 * CUDA with PDL (a graph of the step): X is read before the kernel's dependency wait, so
 * neither of the two launches before may write it (the engine's X is the seam before the
 * previous sublayer's Xo); f, post_in and comb_in are read after it. */
dsv4_status dsv4_bk_hc_seam(dsv4_backend *b, float *h, float *xq, float *Xo, float *post,
                            float *comb, const float *X, const float *f, const float *post_in,
                            const float *comb_in, const dsv4_weight *fn, const float *base,
                            const float *scale, const float *norm, int64_t N, int n, int64_t D,
                            int iters, float hc_eps, float rms_eps);
dsv4_status dsv4_bk_hc_seam_weights(dsv4_backend *b, float *post, float *comb, const float *X,
                                    const float *f, const float *post_in, const float *comb_in,
                                    const dsv4_weight *fn, const float *base, const float *scale,
                                    int64_t N, int n, int64_t D, int iters, float hc_eps,
                                    float rms_eps);
/* hc_head_site: the head collapse in one op, the calls [hc_post ->] rmsnorm -> linear ->
 * hc_head -> rmsnorm it replaces. With f != NULL the streams are first Xs = hc_post(X, f,
 * post_in, comb_in) (stored to Xo unless Xo is NULL), else Xs = X. Per row:
 *   mix [n] = fn . rmsnorm_noweight(Xs[r])   (f32, rms_eps; fn [n, n*D] dense F32/BF16/F16),
 *   y [D] = hc_head(Xs[r], mix, base, scale, hc_eps),  h [N, D] = bf16(rmsnorm(y) * norm).
 * With f, X is read before the PDL wait as in hc_seam (neither launch before may write it). */
dsv4_status dsv4_bk_hc_head_site(dsv4_backend *b, float *h, float *Xo, const float *X,
                                 const float *f, const float *post_in, const float *comb_in,
                                 const dsv4_weight *fn, const float *base, float scale,
                                 const float *norm, int64_t N, int n, int64_t D, float hc_eps,
                                 float rms_eps);

/* ---- attention state ---------------------------------------------------------------------- */
/* Entry slot R + pos % R of win (kv_layout.h of hd, r) = kv row (already normalised, rotated,
 * quantised: stored exactly; other values are act_quant-ed as dsv4_kv_encode does).
 * kv [N, hd]. */
dsv4_status dsv4_bk_kv_store(dsv4_backend *b, uint8_t *win, int R, int hd, int r, const float *kv,
                             const dsv4_bk_rows *rows);
/* A compressor's rows of a step and the windows they close (forward_attn.c comp_append), in one
 * op. First every row goes into the ring: ring_kv[slot][pos % Rc] = kv row r, ring_gate[...] =
 * gate row r + ape[pos % m] (kv, gate [N, width]; ape [m, width]). Then for each row with
 * (pos + 1) % m == 0, entry i = (pos + 1) / m - 1 of its slot is pooled from the ring exactly as
 * forward_attn.c pool_entry does in faithful mode (ns = 2m slots when width == 2 * dim: the
 * previous window's first halves, then this window's second halves; else ns = m), RMSNorm(norm),
 * RoPE at position i * m (freqs, last r dims), then quantised: is_index -> Hadamard + FP4 (block
 * 32), else FP8 on the dim - r non-RoPE dims (block 64); each step bf16-rounded as there.
 * -> entry slot cap_e + i of ent (kv_layout.h: is_index dsv4_ik_layout_of(dim), else
 * dsv4_kv_layout_of(dim, r)).
 * Rc >= ns + N - 1 (no row of the step overwrites a ring row a window
 * of the same step reads; the engine's 2m + max_chunk). */
dsv4_status dsv4_bk_comp_append(dsv4_backend *b, void *ent, int64_t cap_e, float *ring_kv,
                                float *ring_gate, int Rc, int width, int dim, int m,
                                const float *kv, const float *gate, const float *ape,
                                const float *norm, float eps, const float *freqs, int r,
                                int is_index, const dsv4_bk_rows *rows);
/* comp_append_multi: dsv4_bk_comp_append of each job in turn (a CSA layer's compressor and its
 * indexer's, which share eps, freqs, r and rows), one launch on CUDA. The jobs' rings and
 * entries must not overlap. */
enum { DSV4_BK_COMP_MULTI_MAX = 2 };
typedef struct dsv4_bk_comp_job {
    void *ent; /* as dsv4_bk_comp_append's */
    int64_t cap_e;
    float *ring_kv, *ring_gate;
    int Rc, width, dim, m;
    const float *kv, *gate, *ape, *norm;
    int is_index;
} dsv4_bk_comp_job;
dsv4_status dsv4_bk_comp_append_multi(dsv4_backend *b, const dsv4_bk_comp_job *jobs, int n,
                                      float eps, const float *freqs, int r,
                                      const dsv4_bk_rows *rows);

/* ---- lightning indexer -------------------------------------------------------------------- */
/* iq [N, nh, d] in place: RoPE of the last r dims at pos[r] (freqs), then per head bf16,
 * Hadamard (rotate_activation), FP4 (block 32): the faithful branch of forward_attn.c. */
dsv4_status dsv4_bk_indexer_q(dsv4_backend *b, float *iq, const dsv4_bk_rows *rows, int nh, int d,
                              int r, const float *freqs);
/* Row r sees n_vis = (pos[r] + 1) / m entries of its slot; k = min(n_vis, topk). Scores as
 * forward_attn.c faithful_index_scores (iq [N, nh, d] as dsv4_bk_indexer_q leaves it, keys
 * entries slot cap_e .. of ent, layout dsv4_ik_layout_of(d)) with the head weights bf16(iw *
 * w_scale) (iw [N, nh]: dsv4_bk_scale folded in); the k best go to sel[r][0..k) in descending score
 * order, equal scores lower index first; sel[r][k..topk) = -1.  sel [N, topk]. ws:
 * dsv4_bk_indexer_ws_bytes(N, cap_e) bytes, zero-filled once (dsv4_bk_alloc) and left so by every
 * call. */
size_t dsv4_bk_indexer_ws_bytes(int64_t N, int64_t cap_e);
dsv4_status dsv4_bk_indexer_topk(dsv4_backend *b, int32_t *sel, const float *iq, const float *iw,
                                 float w_scale, const uint8_t *ent, int64_t cap_e, int nh, int d,
                                 int m, int topk, const dsv4_bk_rows *rows, void *ws);
/* indexer_q_topk: dsv4_bk_indexer_q(iq, rows, nh, d, r, freqs), then dsv4_bk_indexer_topk on
 * the result, in one op (CUDA at nh 64, d 128, N <= 16: the queries' chain in the cluster
 * top-k kernel's prologue for the rows of at most 2,048 visible entries; with cap_e <= 2048 that
 * is every row and one launch, else a second launch takes the longer rows). iq [N, nh, d] is
 * clobbered: afterwards each row holds indexer_q's result or is unchanged (the rows the cluster
 * kernel ranked). after: NULL, or the signal of the linear entry that writes iq (a main-chain op
 * issued between a side_mark and this side chain's side_begin_marked): iq is read only once it
 * is 1 (the CPU, which runs in issue order, checks that it is). */
dsv4_status dsv4_bk_indexer_q_topk(dsv4_backend *b, int32_t *sel, float *iq, const float *iw,
                                   float w_scale, const uint8_t *ent, int64_t cap_e, int nh, int d,
                                   int r, const float *freqs, int m, int topk,
                                   const dsv4_bk_rows *rows, void *ws, const int32_t *after);

/* ---- attention ---------------------------------------------------------------------------
 * o [N, H, hd] = bf16(attention) of q [N, H, hd] over, in this slot order (forward_attn.c
 * attn_body, faithful): the window positions max(0, p-W+1) .. p (win ring, oldest first), then
 * W - (count) empty slots, then the compressed entries (win and ent: kv_layout.h of hd, kr):
 * CSA (sel != NULL) ent[slot][sel[r][j]]
 * for j < topk with sel >= 0; HCA (sel == NULL, m > 0) entries 0 .. (p+1)/m - 1; none when
 * m == 0. Per head: faithful_attend_head (64-slot blocks, running max, bf16 p, sink[h] in the
 * denominator), scale = hd^-0.5. rope_r > 0 (even, <= hd): then the inverse RoPE of the last
 * rope_r dims of every head at pos[r] with rope_freqs [rope_r / 2] (backend memory), all of o
 * bf16-rounded after: exactly dsv4_bk_rope(o, H * hd, rows, H, hd, rope_r, rope_freqs, 1, 1),
 * which the CPU calls and CUDA runs in the attention's epilogue. rope_r == 0: no RoPE. */
dsv4_status dsv4_bk_attention(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                              const uint8_t *win, int R, int W, const uint8_t *ent, int64_t cap_e,
                              int m, const int32_t *sel, int topk, const float *sink,
                              const dsv4_bk_rows *rows, int rope_r, const float *rope_freqs);

/* ---- MoE ---------------------------------------------------------------------------------
 * Router (forward_moe.c): scores = sqrt(softplus(logits [N, E])); hash layers (tid2eid != NULL:
 * [vocab, K] int32 in backend memory, range-checked at load) take sel[r][j] = tid2eid[ids[r]][j];
 * others the top-K of scores + bias (bias may be NULL) with dsv4_op_topk's order (ascending
 * index). wts[r][j] = scores[sel] / (sum + 1e-20) * route_scale.  sel, wts [N, K]. */
dsv4_status dsv4_bk_router(dsv4_backend *b, int32_t *sel, float *wts, const float *logits,
                           const float *bias, const int32_t *tid2eid, const dsv4_bk_rows *rows,
                           int E, int K, float route_scale);

/* The experts of one layer in backend memory (an opaque table built once at load). `experts`
 * [E] and `shared` are backend copies (dsv4_bk_weight_upload); they must outlive the table.
 * The table takes their bytes over: CUDA may rewrite them in place into its kernels' layout
 * (backend/cuda/moe.cuh), so after create no other op reads them and no second table is built
 * on them (entries of one table may share copies). */
typedef struct dsv4_bk_experts dsv4_bk_experts;
dsv4_status dsv4_bk_experts_create(dsv4_backend *b, const dsv4_expert_weights *experts, int E,
                                   const dsv4_expert_weights *shared, dsv4_bk_experts **out);
void dsv4_bk_experts_free(dsv4_backend *b, dsv4_bk_experts *t);
/* out [N, D] = bf16(sum over the row's K routed experts + shared expert), faithful
 * (forward_moe.c moe_body): each expert on act_quant(h): g = bf16(w1 x), u = bf16(w3 x),
 * a = swiglu_clamped(g, u, limit) * wts (routed only), y = bf16(w2 act_quant(a)); the routed
 * y summed in f32 in ascending expert order, then + shared, then bf16.
 * h [N, D], sel/wts [N, K]. ws: dsv4_bk_moe_ws_bytes bytes. */
size_t dsv4_bk_moe_ws_bytes(int64_t N, int K, int64_t D, int64_t I_max, int E);
dsv4_status dsv4_bk_moe(dsv4_backend *b, float *out, const float *h, const int32_t *sel,
                        const float *wts, const dsv4_bk_experts *t, int64_t N, int K, int64_t D,
                        float limit, void *ws);
/* dsv4_bk_router (sel, wts [N, K] from logits) then dsv4_bk_moe on them, N = rows->n; the same
 * results. CUDA does both in fewer launches (on the tensor-core path the routing, the work list
 * and act_quant(h) are one kernel). t must have E experts. ws: dsv4_bk_moe_ws_bytes. */
dsv4_status dsv4_bk_moe_routed(dsv4_backend *b, float *out, int32_t *sel, float *wts,
                               const float *h, const float *logits, const float *bias,
                               const int32_t *tid2eid, const dsv4_bk_rows *rows,
                               const dsv4_bk_experts *t, int E, int K, int64_t D,
                               float route_scale, float limit, void *ws);

/* ---- step machinery ----------------------------------------------------------------------
 * Graphs (CUDA only; the CPU answers DSV4_ERR_UNSUPPORTED): everything enqueued between begin
 * and end is captured, not run; launch replays it on the stream. */
dsv4_status dsv4_bk_graph_begin(dsv4_backend *b);
/* With b->pdl set, the graph's kernel -> kernel edges become programmatic dependencies: a
 * kernel is launched as soon as every CTA of the previous one has started, and waits in
 * DSV4_PDL_WAIT() (cuda/pdl.cuh, the first statement of every kernel) until that one has
 * finished and its writes are visible. This hides the launch latency between the kernels. */
dsv4_status dsv4_bk_graph_end(dsv4_backend *b, void **graph);
dsv4_status dsv4_bk_graph_launch(dsv4_backend *b, void *graph);
void dsv4_bk_graph_free(dsv4_backend *b, void *graph);
/* Two independent op chains at once: the ops issued between side_begin and side_end start
 * after everything issued before side_begin and may run beside the ops issued after side_end
 * (CUDA: a second stream; in a graph, a fork); side_join orders what follows after both. The
 * program order stays a valid serial order, which is what the CPU runs (the calls are no-ops
 * there, and on CUDA while the op timer runs). Every side_begin needs a side_join; several
 * begin .. end chains may come before one join, each after the last on the side (in order). */
dsv4_status dsv4_bk_side_begin(dsv4_backend *b);
dsv4_status dsv4_bk_side_end(dsv4_backend *b);
dsv4_status dsv4_bk_side_join(dsv4_backend *b);
/* side_join where the side chain's work is long done by the time the main chain gets here (a
 * sublayer or more later): the same order, but in a graph the join stays a plain dependency, so
 * that the next kernel keeps its programmatic (early) launch from the main chain's last kernel. */
dsv4_status dsv4_bk_side_join_settled(dsv4_backend *b);
/* side_mark notes the main chain's current point; side_begin_marked then begins a side chain
 * that starts after the ops issued before the mark only, so the main-chain ops issued between the
 * two may run beside it (in a graph, the fork is at the mark). The side chain reads their
 * outputs only through a signal (a linear entry's, waited for by the op that reads it:
 * dsv4_bk_indexer_q_topk's after), and the program order (producer first) stays a valid
 * serial order, as above. */
dsv4_status dsv4_bk_side_mark(dsv4_backend *b);
dsv4_status dsv4_bk_side_begin_marked(dsv4_backend *b);

/* Per-op timing: while on, dsv4_bk_prof_mark(b, label) closes the interval since the previous
 * mark and adds it to label's total (CUDA: events on the stream; CPU: wall clock). */
dsv4_status dsv4_bk_prof_start(dsv4_backend *b);
void dsv4_bk_prof_mark(dsv4_backend *b, const char *label);
typedef struct dsv4_bk_prof_entry {
    char label[48];
    double ms; /* total */
    int64_t calls;
} dsv4_bk_prof_entry;
/* Waits for the work, returns the totals in first-mark order (at most max) and stops. */
int dsv4_bk_prof_stop(dsv4_backend *b, dsv4_bk_prof_entry *out, int max);

/* Kernel timeline (CUDA trace builds only, cmake -DDSV4_TRACE=ON; src/backend/cuda/trace.cuh):
 * between begin and end each kernel's CTAs record their start, PDL wait and exit in a device
 * buffer of max_records; end waits for the work and appends the records to path as CSV lines
 * that begin with tag (tools/trace_step.py reads them). Elsewhere DSV4_ERR_UNSUPPORTED. */
dsv4_status dsv4_bk_trace_begin(dsv4_backend *b, int64_t max_records);
dsv4_status dsv4_bk_trace_end(dsv4_backend *b, const char *path, const char *tag);

#endif
