/*
 * ops.h - the DeepSeek-V4-specific operations of the forward pass on f32 arrays (CPU reference).
 *
 * The layer loop (model/forward*.c) is written once against this list; matrix products go
 * through cpu_linear.h. A later CUDA backend provides the same set. Every op follows the
 * semantics of transformers 5.17's modeling_deepseek_v4.py (the oracle of "exact" mode), with
 * the order of operations kept where it matters for rounding. Shapes are written kernel-style:
 * `x [T, D] -> y [T, D]`, row-major, T tokens.
 *
 * Files: ops_norm_rope.c (RMSNorm, RoPE tables and rotation), ops_hc.c (the mHC sites and the
 * head collapse), ops_attn.c (attention with sinks, compressor pooling, indexer, top-k),
 * ops_moe.c (router, clamped SwiGLU).
 */
#ifndef DSV4_BACKEND_CPU_OPS_H
#define DSV4_BACKEND_CPU_OPS_H

#include <stdint.h>

/* ---- RMSNorm --------------------------------------------------------------------------------
 * x [T, n] -> y [T, n]:  y = x * rsqrt(mean(x^2) + eps) (* w when w != NULL).
 * y may alias x. */
void dsv4_op_rmsnorm(float *y, const float *x, const float *w, int64_t T, int64_t n, float eps);

/* ---- RoPE -----------------------------------------------------------------------------------
 * Frequency tables, one entry per rotated pair (r/2 entries), as transformers builds them in
 * fp32: default  inv_freq[i] = 1 / theta^(2i/r);  YaRN (factor > 1)  a blend of inv_freq and
 * inv_freq/factor with a linear ramp between the correction dims of beta_fast and beta_slow
 * (floor/ceil truncated, as _compute_yarn_parameters with truncate=True). No mscale: V4 sets
 * attention_factor = 1. */
void dsv4_rope_freqs(float *inv_freq, int r, float theta, float yarn_factor,
                     int64_t yarn_original_max_position, float beta_fast, float beta_slow);

enum { DSV4_ROPE_MAX = 512 }; /* largest rope_dim the ops accept */

/* Interleaved RoPE on the LAST r dims of each vector: pairs (2i, 2i+1) rotated by
 * angle = inv_freq[i] * pos (fp32 product, as torch computes it).
 * x [n_vec, dim] at one position -> x (in place).  inverse: rotate by -angle. */
void dsv4_op_rope(float *x, int64_t n_vec, int64_t dim, int r, const float *inv_freq, int64_t pos,
                  int inverse);

/* ---- Manifold-constrained hyper-connections (mHC) ------------------------------------------
 * One token, n streams of width D. `mix` [(2+n)n] = fn . rmsnorm_noweight(flatten(X)) (the
 * caller does the product with cpu_linear). base [(2+n)n], scale [3]:
 *   pre  [n]    = sigmoid(mix[0:n] * scale0 + base[0:n]) + eps
 *   post [n]    = 2 sigmoid(mix[n:2n] * scale1 + base[n:2n])
 *   comb [n, n] = Sinkhorn(softmax_rows(mix[2n:] * scale2 + base[2n:]) + eps): columns, then
 *                 (iters - 1) x {rows, columns}, each dividing by (sum + eps). */
void dsv4_op_hc_weights(const float *mix, const float *base, const float *scale, int n, int iters,
                        float eps, float *pre, float *post, float *comb);

/* X [n, D], pre [n] -> y [D] = sum_j pre[j] X[j]. */
void dsv4_op_hc_collapse(float *y, const float *X, const float *pre, int n, int64_t D);

/* X [n, D], f [D], post [n], comb [n, n] -> Xo [n, D]:
 * Xo[k] = post[k] f + sum_j comb[j, k] X[j]   (comb^T X). Xo must not alias X. */
void dsv4_op_hc_expand(float *Xo, const float *X, const float *f, const float *post,
                       const float *comb, int n, int64_t D);

/* Head collapse weights: mix [n] = hc_head_fn . rmsnorm_noweight(flatten(X)),
 * pre [n] = sigmoid(mix * scale + base) + eps. */
void dsv4_op_hc_head_weights(const float *mix, const float *base, float scale, int n, float eps,
                             float *pre);

/* ---- Attention ------------------------------------------------------------------------------
 * One query token, H heads over nk keys of width c (the single shared KV head: values are the
 * keys). logits = q . k * scale; the per-head sink joins the softmax denominator and
 * contributes no value; out = sum_k p_k key_k.
 * One head: q [c], keys: nk pointers to [c] vectors -> out [c];  scratch [nk].
 * bf16_p (faithful mode): the unnormalised exp(s - max) that multiplies V is rounded to bf16
 * while the denominator sums the f32 values (the official kernel; it uses the running max of
 * 64-slot blocks, this the global max, so it is close to, not bit-exact with, the kernel). */
void dsv4_op_attend_head(float *out, const float *q, const float *const *keys, int64_t nk, int c,
                         float scale, float sink, float *scratch, int bf16_p);

/* Compressor pooling of one entry: per channel, softmax over nslots of gate, weighted sum of kv.
 * kv, gate: nslots pointers to [d] rows -> out [d]. (Slots absent from a window are simply not
 * passed: softmax weight 0, as transformers' -inf gates.) */
void dsv4_op_compress_pool(float *out, const float *const *kv, const float *const *gate, int nslots,
                           int d);

/* Lightning-indexer scores of one query against n_e keys:
 * q [nh, d], w [nh] (already scaled by nh^-0.5), keys [n_e, d] ->
 * s [n_e] = sum_h w[h] * (relu(q[h] . key) * softmax_scale). */
void dsv4_op_indexer_scores(float *s, const float *q, const float *w, const float *keys,
                            int64_t n_e, int nh, int d, float softmax_scale);

/* Indices of the k largest of s[0..n) (k <= n), in ascending index order. Ties between equal
 * scores go to the lower index; NaN ranks above every number (as torch.topk). s [n] -> idx [k]. */
void dsv4_op_topk(int32_t *idx, const float *s, int64_t n, int k);

/* ---- MoE ------------------------------------------------------------------------------------
 * logits [E] -> scores [E] = sqrt(softplus(logits)) (softplus threshold 20, as torch). */
void dsv4_op_router_scores(float *scores, const float *logits, int E);

/* Weights of the chosen experts idx [k]: w[j] = scores[idx[j]] / (sum + 1e-20) * route_scale. */
void dsv4_op_router_weights(float *w, const float *scores, const int32_t *idx, int k,
                            float route_scale);

/* Clamped SwiGLU: g [n], u [n] -> g [n] = silu(min(g, limit)) * clamp(u, -limit, limit). */
void dsv4_op_swiglu_clamped(float *g, const float *u, int64_t n, float limit);

/* ---- faithful mode (ops_faithful.c): the official reference's arithmetic ------------------
 * faithful_pool: dsv4_op_compress_pool as the official Compressor (f32 softmax over the slots,
 *   sums in double rounded once); ns <= 256.
 * faithful_q_norm: the official per-head query norm with every op rounded to bf16;
 *   q [n_vec, c] in place.
 * faithful_attend_head: one head of the official sparse_attn_kernel: slots (NULL = empty, index
 *   -1) in blocks of 64, running max without the sink, f32 exps, bf16-rounded exps times V, the
 *   sink in the final denominator, output rounded to bf16; contrib [c] scratch.
 * faithful_index_scores: the official indexer's scores: per head bf16(q.k), relu, bf16(* w[h]),
 *   summed over heads, rounded to bf16.  q [nh, d], w [nh], keys [n_e, d] -> s [n_e]. */
void dsv4_op_faithful_pool(float *out, const float *const *kv, const float *const *gate, int ns,
                           int d);
void dsv4_op_faithful_q_norm(float *q, int64_t n_vec, int c, float eps);
void dsv4_op_faithful_attend_head(float *out, const float *q, const float *const *slots, int64_t ns,
                                  int c, float scale, float sink, double *contrib);
void dsv4_op_faithful_index_scores(float *s, const float *q, const float *w, const float *keys,
                                   int64_t n_e, int nh, int d);

#endif
