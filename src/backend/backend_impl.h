/*
 * backend_impl.h - the two implementations behind backend.h: dsv4_cpu_bk_* (backend/cpu/bk_*.c,
 * always built) and dsv4_cuda_bk_* (backend/cuda/bk_*.cu, built with DSV4_HAVE_CUDA). Same
 * arguments and semantics as the dsv4_bk_* op of the same name; backend.c picks one by b->kind.
 * The GPU op tests call both directly.
 */
#ifndef DSV4_BACKEND_BACKEND_IMPL_H
#define DSV4_BACKEND_BACKEND_IMPL_H

#ifdef __cplusplus
extern "C" {
#endif

#include "backend/backend.h"

/* ---- cpu ---- */
dsv4_status dsv4_cpu_bk_embed(dsv4_backend *b, float *X, const dsv4_weight *embed,
                              const dsv4_bk_rows *rows, int n_copies, int64_t D);
dsv4_status dsv4_cpu_bk_rmsnorm(dsv4_backend *b, float *y, int64_t ldy, const float *x, int64_t ldx,
                                const float *w, int64_t N, int64_t width, float eps,
                                int round_bf16);
dsv4_status dsv4_cpu_bk_head_norm_bf16(dsv4_backend *b, float *q, int64_t n_vec, int c, float eps);
dsv4_status dsv4_cpu_bk_act_quant(dsv4_backend *b, float *y, int64_t ldy, const float *x,
                                  int64_t ldx, int64_t N, int64_t width, int block);
dsv4_status dsv4_cpu_bk_scale(dsv4_backend *b, float *x, int64_t n, float s, int round_bf16);
dsv4_status dsv4_cpu_bk_rope(dsv4_backend *b, float *x, int64_t ldx, const dsv4_bk_rows *rows,
                             int n_vec, int dim, int r, const float *freqs, int inverse,
                             int round_bf16);
dsv4_status dsv4_cpu_bk_rmsnorm_quant(dsv4_backend *b, float *y, float *yq, const float *x,
                                      const float *w, int64_t N, int64_t width, float eps,
                                      int block);
dsv4_status dsv4_cpu_bk_head_norm_rope(dsv4_backend *b, float *q, const dsv4_bk_rows *rows, int H,
                                       int hd, int r, const float *freqs, float eps);
dsv4_status dsv4_cpu_bk_kv_norm_rope_store(dsv4_backend *b, uint8_t *win, int R, float *kv,
                                           const float *w, const dsv4_bk_rows *rows, int hd, int r,
                                           const float *freqs, float eps, int qblock);
dsv4_status dsv4_cpu_bk_linear(dsv4_backend *b, const dsv4_weight *w, int64_t row0, int64_t nrows,
                               const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy,
                               int round_bf16);
dsv4_status dsv4_cpu_bk_linear_aq(dsv4_backend *b, const dsv4_weight *w, const float *x,
                                  int64_t ldx, float *xq, int64_t N, float *y, int64_t ldy,
                                  int round_bf16);
dsv4_status dsv4_cpu_bk_linear_grouped(dsv4_backend *b, const dsv4_weight *w, int groups,
                                       const float *x, int64_t ldx, int64_t N, float *y,
                                       int64_t ldy, int round_bf16);
dsv4_status dsv4_cpu_bk_linear_multi(dsv4_backend *b, const dsv4_bk_linear_entry *e, int n,
                                     int64_t N);
dsv4_status dsv4_cpu_bk_hc_pre(dsv4_backend *b, float *y, float *post, float *comb, const float *X,
                               const float *mix, const float *base, const float *scale, int64_t N,
                               int n, int64_t D, int iters, float eps);
dsv4_status dsv4_cpu_bk_hc_post(dsv4_backend *b, float *Xo, const float *X, const float *f,
                                const float *post, const float *comb, int64_t N, int n, int64_t D);
dsv4_status dsv4_cpu_bk_hc_head(dsv4_backend *b, float *y, const float *X, const float *mix,
                                const float *base, float scale, int64_t N, int n, int64_t D,
                                float eps);
dsv4_status dsv4_cpu_bk_hc_site(dsv4_backend *b, float *h, float *xq, float *y, float *mix,
                                float *post, float *comb, const float *X, const dsv4_weight *fn,
                                const float *base, const float *scale, const float *norm, int64_t N,
                                int n, int64_t D, int iters, float hc_eps, float rms_eps);
dsv4_status dsv4_cpu_bk_hc_seam(dsv4_backend *b, float *h, float *xq, float *Xo, float *post,
                                float *comb, const float *X, const float *f, const float *post_in,
                                const float *comb_in, const dsv4_weight *fn, const float *base,
                                const float *scale, const float *norm, int64_t N, int n, int64_t D,
                                int iters, float hc_eps, float rms_eps);
dsv4_status dsv4_cpu_bk_hc_seam_weights(dsv4_backend *b, float *post, float *comb, const float *X,
                                        const float *f, const float *post_in, const float *comb_in,
                                        const dsv4_weight *fn, const float *base,
                                        const float *scale, int64_t N, int n, int64_t D, int iters,
                                        float hc_eps, float rms_eps);
dsv4_status dsv4_cpu_bk_hc_head_site(dsv4_backend *b, float *h, float *Xo, const float *X,
                                     const float *f, const float *post_in, const float *comb_in,
                                     const dsv4_weight *fn, const float *base, float scale,
                                     const float *norm, int64_t N, int n, int64_t D, float hc_eps,
                                     float rms_eps);
dsv4_status dsv4_cpu_bk_kv_store(dsv4_backend *b, uint8_t *win, int R, int hd, int r,
                                 const float *kv, const dsv4_bk_rows *rows);
dsv4_status dsv4_cpu_bk_comp_append(dsv4_backend *b, void *ent, int64_t cap_e, float *ring_kv,
                                    float *ring_gate, int Rc, int width, int dim, int m,
                                    const float *kv, const float *gate, const float *ape,
                                    const float *norm, float eps, const float *freqs, int r,
                                    int is_index, const dsv4_bk_rows *rows);
dsv4_status dsv4_cpu_bk_indexer_q(dsv4_backend *b, float *iq, const dsv4_bk_rows *rows, int nh,
                                  int d, int r, const float *freqs);
dsv4_status dsv4_cpu_bk_indexer_topk(dsv4_backend *b, int32_t *sel, const float *iq,
                                     const float *iw, float w_scale, const uint8_t *ent,
                                     int64_t cap_e, int nh, int d, int m, int topk,
                                     const dsv4_bk_rows *rows, void *ws);
dsv4_status dsv4_cpu_bk_attention(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                                  const uint8_t *win, int R, int W, const uint8_t *ent,
                                  int64_t cap_e, int m, const int32_t *sel, int topk,
                                  const float *sink, const dsv4_bk_rows *rows, int rope_r,
                                  const float *rope_freqs);
dsv4_status dsv4_cpu_bk_router(dsv4_backend *b, int32_t *sel, float *wts, const float *logits,
                               const float *bias, const int32_t *tid2eid,
                               const dsv4_bk_rows *rows, int E, int K, float route_scale);
dsv4_status dsv4_cpu_bk_experts_create(dsv4_backend *b, const dsv4_expert_weights *experts, int E,
                                       const dsv4_expert_weights *shared, dsv4_bk_experts **out);
void dsv4_cpu_bk_experts_free(dsv4_backend *b, dsv4_bk_experts *t);
dsv4_status dsv4_cpu_bk_moe(dsv4_backend *b, float *out, const float *h, const int32_t *sel,
                            const float *wts, const dsv4_bk_experts *t, int64_t N, int K, int64_t D,
                            float limit, void *ws);
/* ---- cuda ---- */
dsv4_status dsv4_cuda_bk_embed(dsv4_backend *b, float *X, const dsv4_weight *embed,
                               const dsv4_bk_rows *rows, int n_copies, int64_t D);
dsv4_status dsv4_cuda_bk_rmsnorm(dsv4_backend *b, float *y, int64_t ldy, const float *x,
                                 int64_t ldx, const float *w, int64_t N, int64_t width, float eps,
                                 int round_bf16);
dsv4_status dsv4_cuda_bk_head_norm_bf16(dsv4_backend *b, float *q, int64_t n_vec, int c, float eps);
dsv4_status dsv4_cuda_bk_act_quant(dsv4_backend *b, float *y, int64_t ldy, const float *x,
                                   int64_t ldx, int64_t N, int64_t width, int block);
dsv4_status dsv4_cuda_bk_scale(dsv4_backend *b, float *x, int64_t n, float s, int round_bf16);
dsv4_status dsv4_cuda_bk_rope(dsv4_backend *b, float *x, int64_t ldx, const dsv4_bk_rows *rows,
                              int n_vec, int dim, int r, const float *freqs, int inverse,
                              int round_bf16);
dsv4_status dsv4_cuda_bk_rmsnorm_quant(dsv4_backend *b, float *y, float *yq, const float *x,
                                       const float *w, int64_t N, int64_t width, float eps,
                                       int block);
dsv4_status dsv4_cuda_bk_head_norm_rope(dsv4_backend *b, float *q, const dsv4_bk_rows *rows, int H,
                                        int hd, int r, const float *freqs, float eps);
dsv4_status dsv4_cuda_bk_kv_norm_rope_store(dsv4_backend *b, uint8_t *win, int R, float *kv,
                                            const float *w, const dsv4_bk_rows *rows, int hd, int r,
                                            const float *freqs, float eps, int qblock);
dsv4_status dsv4_cuda_bk_q_kv_norm_rope(dsv4_backend *b, float *q, int H, uint8_t *win, int R,
                                        float *kv, const float *w, const dsv4_bk_rows *rows, int hd,
                                        int r, const float *freqs, float eps, int qblock);
dsv4_status dsv4_cuda_bk_linear(dsv4_backend *b, const dsv4_weight *w, int64_t row0, int64_t nrows,
                                const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy,
                                int round_bf16);
dsv4_status dsv4_cuda_bk_linear_aq(dsv4_backend *b, const dsv4_weight *w, const float *x,
                                   int64_t ldx, float *xq, int64_t N, float *y, int64_t ldy,
                                   int round_bf16);
dsv4_status dsv4_cuda_bk_linear_grouped(dsv4_backend *b, const dsv4_weight *w, int groups,
                                        const float *x, int64_t ldx, int64_t N, float *y,
                                        int64_t ldy, int round_bf16);
dsv4_status dsv4_cuda_bk_linear_multi(dsv4_backend *b, const dsv4_bk_linear_entry *e, int n,
                                      int64_t N);
dsv4_status dsv4_cuda_bk_hc_pre(dsv4_backend *b, float *y, float *post, float *comb, const float *X,
                                const float *mix, const float *base, const float *scale, int64_t N,
                                int n, int64_t D, int iters, float eps);
dsv4_status dsv4_cuda_bk_hc_post(dsv4_backend *b, float *Xo, const float *X, const float *f,
                                 const float *post, const float *comb, int64_t N, int n, int64_t D);
dsv4_status dsv4_cuda_bk_hc_head(dsv4_backend *b, float *y, const float *X, const float *mix,
                                 const float *base, float scale, int64_t N, int n, int64_t D,
                                 float eps);
dsv4_status dsv4_cuda_bk_hc_site(dsv4_backend *b, float *h, float *xq, float *y, float *mix,
                                 float *post, float *comb, const float *X, const dsv4_weight *fn,
                                 const float *base, const float *scale, const float *norm,
                                 int64_t N, int n, int64_t D, int iters, float hc_eps,
                                 float rms_eps);
dsv4_status dsv4_cuda_bk_hc_seam(dsv4_backend *b, float *h, float *xq, float *Xo, float *post,
                                 float *comb, const float *X, const float *f, const float *post_in,
                                 const float *comb_in, const dsv4_weight *fn, const float *base,
                                 const float *scale, const float *norm, int64_t N, int n, int64_t D,
                                 int iters, float hc_eps, float rms_eps);
dsv4_status dsv4_cuda_bk_hc_seam_weights(dsv4_backend *b, float *post, float *comb, const float *X,
                                         const float *f, const float *post_in, const float *comb_in,
                                         const dsv4_weight *fn, const float *base,
                                         const float *scale, int64_t N, int n, int64_t D, int iters,
                                         float hc_eps, float rms_eps);
dsv4_status dsv4_cuda_bk_hc_head_site(dsv4_backend *b, float *h, float *Xo, const float *X,
                                      const float *f, const float *post_in, const float *comb_in,
                                      const dsv4_weight *fn, const float *base, float scale,
                                      const float *norm, int64_t N, int n, int64_t D, float hc_eps,
                                      float rms_eps);
dsv4_status dsv4_cuda_bk_kv_store(dsv4_backend *b, uint8_t *win, int R, int hd, int r,
                                  const float *kv, const dsv4_bk_rows *rows);
dsv4_status dsv4_cuda_bk_comp_append(dsv4_backend *b, void *ent, int64_t cap_e, float *ring_kv,
                                     float *ring_gate, int Rc, int width, int dim, int m,
                                     const float *kv, const float *gate, const float *ape,
                                     const float *norm, float eps, const float *freqs, int r,
                                     int is_index, const dsv4_bk_rows *rows);
dsv4_status dsv4_cuda_bk_indexer_q(dsv4_backend *b, float *iq, const dsv4_bk_rows *rows, int nh,
                                   int d, int r, const float *freqs);
dsv4_status dsv4_cuda_bk_comp_append_multi(dsv4_backend *b, const dsv4_bk_comp_job *jobs, int n,
                                           float eps, const float *freqs, int r,
                                           const dsv4_bk_rows *rows);
dsv4_status dsv4_cuda_bk_indexer_q_topk(dsv4_backend *b, int32_t *sel, float *iq, const float *iw,
                                        float w_scale, const uint8_t *ent, int64_t cap_e, int nh,
                                        int d, int r, const float *freqs, int m, int topk,
                                        const dsv4_bk_rows *rows, void *ws, const int32_t *after);
dsv4_status dsv4_cuda_bk_indexer_topk(dsv4_backend *b, int32_t *sel, const float *iq,
                                      const float *iw, float w_scale, const uint8_t *ent,
                                      int64_t cap_e, int nh, int d, int m, int topk,
                                      const dsv4_bk_rows *rows, void *ws);
dsv4_status dsv4_cuda_bk_attention(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                                   const uint8_t *win, int R, int W, const uint8_t *ent,
                                   int64_t cap_e, int m, const int32_t *sel, int topk,
                                   const float *sink, const dsv4_bk_rows *rows, int rope_r,
                                   const float *rope_freqs);
dsv4_status dsv4_cuda_bk_router(dsv4_backend *b, int32_t *sel, float *wts, const float *logits,
                                const float *bias, const int32_t *tid2eid,
                                const dsv4_bk_rows *rows, int E, int K, float route_scale);
dsv4_status dsv4_cuda_bk_experts_create(dsv4_backend *b, const dsv4_expert_weights *experts, int E,
                                        const dsv4_expert_weights *shared, dsv4_bk_experts **out);
void dsv4_cuda_bk_experts_free(dsv4_backend *b, dsv4_bk_experts *t);
dsv4_status dsv4_cuda_bk_moe(dsv4_backend *b, float *out, const float *h, const int32_t *sel,
                             const float *wts, const dsv4_bk_experts *t, int64_t N, int K,
                             int64_t D, float limit, void *ws);
dsv4_status dsv4_cuda_bk_moe_routed(dsv4_backend *b, float *out, int32_t *sel, float *wts,
                                    const float *h, const float *logits, const float *bias,
                                    const int32_t *tid2eid, const dsv4_bk_rows *rows,
                                    const dsv4_bk_experts *t, int E, int K, int64_t D,
                                    float route_scale, float limit, void *ws);
dsv4_status dsv4_cuda_bk_alloc(dsv4_backend *b, size_t bytes, void **out);
void dsv4_cuda_bk_free(dsv4_backend *b, void *p);
dsv4_status dsv4_cuda_bk_upload(dsv4_backend *b, void *dst, const void *src, size_t bytes);
dsv4_status dsv4_cuda_bk_download(dsv4_backend *b, void *dst, const void *src, size_t bytes);
dsv4_status dsv4_cuda_bk_copy(dsv4_backend *b, void *dst, const void *src, size_t bytes);
dsv4_status dsv4_cuda_bk_memset0(dsv4_backend *b, void *p, size_t bytes);
dsv4_status dsv4_cuda_bk_fill_bf16(dsv4_backend *b, uint16_t *p, size_t n, uint64_t seed);
dsv4_status dsv4_cuda_bk_fill_kv(dsv4_backend *b, uint8_t *p, const dsv4_kv_layout *l, int64_t n,
                                 uint64_t seed);
dsv4_status dsv4_cuda_bk_sync(dsv4_backend *b);
dsv4_status dsv4_cuda_bk_mem_info(dsv4_backend *b, size_t *free_bytes, size_t *total_bytes);
dsv4_status dsv4_cuda_bk_weight_upload(dsv4_backend *b, const dsv4_weight *w, uint64_t random_seed,
                                       dsv4_weight *out);
void dsv4_cuda_bk_weight_free(dsv4_backend *b, dsv4_weight *w);
dsv4_status dsv4_cuda_bk_graph_begin(dsv4_backend *b);
dsv4_status dsv4_cuda_bk_graph_end(dsv4_backend *b, void **graph);
dsv4_status dsv4_cuda_bk_graph_launch(dsv4_backend *b, void *graph);
void dsv4_cuda_bk_graph_free(dsv4_backend *b, void *graph);
dsv4_status dsv4_cuda_bk_trace_begin(dsv4_backend *b, int64_t max_records);
dsv4_status dsv4_cuda_bk_trace_end(dsv4_backend *b, const char *path, const char *tag);

#ifdef __cplusplus
}
#endif
#endif
