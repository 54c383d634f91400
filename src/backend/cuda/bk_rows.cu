/*
 * bk_rows.cu - CUDA implementation of the per-row ops: embedding, RMSNorm, the per-head query norm, act_quant, scaling, RoPE, the mHC sites (backend.h).
 * STUB: to be written.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"

extern "C" dsv4_status dsv4_cuda_bk_embed(dsv4_backend *b, float *X, const dsv4_weight *embed,
                               const dsv4_bk_rows *rows, int n_copies, int64_t D)
{
    (void)b;
    (void)X;
    (void)embed;
    (void)rows;
    (void)n_copies;
    (void)D;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: embed: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_rmsnorm(dsv4_backend *b, float *y, int64_t ldy, const float *x,
                                 int64_t ldx, const float *w, int64_t N, int64_t width, float eps,
                                 int round_bf16)
{
    (void)b;
    (void)y;
    (void)ldy;
    (void)x;
    (void)ldx;
    (void)w;
    (void)N;
    (void)width;
    (void)eps;
    (void)round_bf16;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: rmsnorm: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_head_norm_bf16(dsv4_backend *b, float *q, int64_t n_vec, int c, float eps)
{
    (void)b;
    (void)q;
    (void)n_vec;
    (void)c;
    (void)eps;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: head_norm_bf16: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_act_quant(dsv4_backend *b, float *y, int64_t ldy, const float *x,
                                   int64_t ldx, int64_t N, int64_t width, int block)
{
    (void)b;
    (void)y;
    (void)ldy;
    (void)x;
    (void)ldx;
    (void)N;
    (void)width;
    (void)block;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: act_quant: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_scale(dsv4_backend *b, float *x, int64_t n, float s, int round_bf16)
{
    (void)b;
    (void)x;
    (void)n;
    (void)s;
    (void)round_bf16;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: scale: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_rope(dsv4_backend *b, float *x, int64_t ldx, const dsv4_bk_rows *rows,
                              int n_vec, int dim, int r, const float *freqs, int inverse,
                              int round_bf16)
{
    (void)b;
    (void)x;
    (void)ldx;
    (void)rows;
    (void)n_vec;
    (void)dim;
    (void)r;
    (void)freqs;
    (void)inverse;
    (void)round_bf16;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: rope: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_hc_pre(dsv4_backend *b, float *y, float *post, float *comb, const float *X,
                                const float *mix, const float *base, const float *scale, int64_t N,
                                int n, int64_t D, int iters, float eps)
{
    (void)b;
    (void)y;
    (void)post;
    (void)comb;
    (void)X;
    (void)mix;
    (void)base;
    (void)scale;
    (void)N;
    (void)n;
    (void)D;
    (void)iters;
    (void)eps;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: hc_pre: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_hc_post(dsv4_backend *b, float *Xo, const float *X, const float *f,
                                 const float *post, const float *comb, int64_t N, int n, int64_t D)
{
    (void)b;
    (void)Xo;
    (void)X;
    (void)f;
    (void)post;
    (void)comb;
    (void)N;
    (void)n;
    (void)D;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: hc_post: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_hc_head(dsv4_backend *b, float *y, const float *X, const float *mix,
                                 const float *base, float scale, int64_t N, int n, int64_t D,
                                 float eps)
{
    (void)b;
    (void)y;
    (void)X;
    (void)mix;
    (void)base;
    (void)scale;
    (void)N;
    (void)n;
    (void)D;
    (void)eps;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: hc_head: not implemented yet");
}
