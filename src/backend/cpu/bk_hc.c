/*
 * bk_hc.c - CPU implementations of the fused mHC ops (dsv4_bk_hc_site, dsv4_bk_hc_seam and
 * its weights half dsv4_bk_hc_seam_weights, dsv4_bk_hc_head_site). They are the references the
 * fused CUDA kernels (bk_hc.cu) are tested against, so they are nothing but the CPU ops the engine
 * used to call, in the same order on the same buffers: [hc_post ->] RMSNorm of the flattened
 * streams (no weight, f32), the fn projection, hc_pre (hc_head for the head), RMSNorm(norm) to bf16
 * [-> act_quant]. The engine on the CPU therefore gives the same bits as before the ops existed.
 */
#include "backend/backend_impl.h"
#include "core/error.h"

#include <stdlib.h>

dsv4_status dsv4_cpu_bk_hc_site(dsv4_backend *b, float *h, float *xq, float *y, float *mix,
                                float *post, float *comb, const float *X, const dsv4_weight *fn,
                                const float *base, const float *scale, const float *norm, int64_t N,
                                int n, int64_t D, int iters, float hc_eps, float rms_eps)
{
    const int64_t nD = (int64_t)n * D, M = (int64_t)(2 + n) * n;
    if (N < 0 || n < 1 || D < 1 || fn->rows != M || fn->cols != nD)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "hc_site: N %lld n %d D %lld, fn [%lld, %lld] (want [%lld, %lld])",
                         (long long)N, n, (long long)D, (long long)fn->rows, (long long)fn->cols,
                         (long long)M, (long long)nD);
    if (N == 0) return DSV4_OK;
    /* scratch the fused op keeps on chip: the normalised streams, and y / mix when not wanted */
    float *flat = malloc((size_t)(N * nD) * sizeof *flat);
    float *yb = y ? y : malloc((size_t)(N * D) * sizeof *yb);
    float *mb = mix ? mix : malloc((size_t)(N * M) * sizeof *mb);
    dsv4_status st = DSV4_OK;
    if (!flat || !yb || !mb)
        st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "hc_site: scratch for %lld rows", (long long)N);
    if (st == DSV4_OK) st = dsv4_cpu_bk_rmsnorm(b, flat, nD, X, nD, NULL, N, nD, rms_eps, 0);
    if (st == DSV4_OK) st = dsv4_cpu_bk_linear(b, fn, 0, M, flat, nD, N, mb, M, 0);
    if (st == DSV4_OK)
        st = dsv4_cpu_bk_hc_pre(b, yb, post, comb, X, mb, base, scale, N, n, D, iters, hc_eps);
    if (st == DSV4_OK) st = dsv4_cpu_bk_rmsnorm(b, h, D, yb, D, norm, N, D, rms_eps, 1);
    if (st == DSV4_OK && xq) st = dsv4_cpu_bk_act_quant(b, xq, D, h, D, N, D, 128);
    free(flat);
    if (yb != y) free(yb);
    if (mb != mix) free(mb);
    return st;
}

dsv4_status dsv4_cpu_bk_hc_seam(dsv4_backend *b, float *h, float *xq, float *Xo, float *post,
                                float *comb, const float *X, const float *f, const float *post_in,
                                const float *comb_in, const dsv4_weight *fn, const float *base,
                                const float *scale, const float *norm, int64_t N, int n, int64_t D,
                                int iters, float hc_eps, float rms_eps)
{
    if (!post != !comb)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "hc_seam: post and comb both or neither");
    if (N < 0 || n < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "hc_seam: N %lld n %d", (long long)N, n);
    /* post = comb = NULL: the site's post and comb are made (hc_seam_weights' business) and
     * dropped */
    float *pw = post ? NULL : malloc((size_t)(N * n + 1) * sizeof *pw);
    float *cw = comb ? NULL : malloc((size_t)(N * n * n + 1) * sizeof *cw);
    dsv4_status st = DSV4_OK;
    if ((!post && !pw) || (!comb && !cw))
        st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "hc_seam: scratch for %lld rows", (long long)N);
    /* hc_post reads all of post_in / comb_in before hc_site writes post / comb: they may alias */
    if (st == DSV4_OK) st = dsv4_cpu_bk_hc_post(b, Xo, X, f, post_in, comb_in, N, n, D);
    if (st == DSV4_OK)
        st = dsv4_cpu_bk_hc_site(b, h, xq, NULL, NULL, post ? post : pw, comb ? comb : cw, Xo, fn,
                                 base, scale, norm, N, n, D, iters, hc_eps, rms_eps);
    free(pw);
    free(cw);
    return st;
}

/* hc_seam's post and comb: hc_post into scratch, then the site on it (h dropped). */
dsv4_status dsv4_cpu_bk_hc_seam_weights(dsv4_backend *b, float *post, float *comb, const float *X,
                                        const float *f, const float *post_in, const float *comb_in,
                                        const dsv4_weight *fn, const float *base,
                                        const float *scale, int64_t N, int n, int64_t D, int iters,
                                        float hc_eps, float rms_eps)
{
    if (N < 0 || n < 1 || D < 1 || !post || !comb)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "hc_seam_weights: N %lld n %d D %lld",
                         (long long)N, n, (long long)D);
    if (N == 0) return DSV4_OK;
    float *xs = malloc((size_t)(N * n * D) * sizeof *xs);
    float *h = malloc((size_t)(N * D) * sizeof *h);
    dsv4_status st = DSV4_OK;
    if (!xs || !h)
        st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "hc_seam_weights: scratch for %lld rows",
                       (long long)N);
    if (st == DSV4_OK) st = dsv4_cpu_bk_hc_post(b, xs, X, f, post_in, comb_in, N, n, D);
    if (st == DSV4_OK)
        st = dsv4_cpu_bk_hc_site(b, h, NULL, NULL, NULL, post, comb, xs, fn, base, scale, NULL, N,
                                 n, D, iters, hc_eps, rms_eps);
    free(xs);
    free(h);
    return st;
}

dsv4_status dsv4_cpu_bk_hc_head_site(dsv4_backend *b, float *h, float *Xo, const float *X,
                                     const float *f, const float *post_in, const float *comb_in,
                                     const dsv4_weight *fn, const float *base, float scale,
                                     const float *norm, int64_t N, int n, int64_t D, float hc_eps,
                                     float rms_eps)
{
    const int64_t nD = (int64_t)n * D;
    if (N < 0 || n < 1 || D < 1 || fn->rows != n || fn->cols != nD)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "hc_head_site: N %lld n %d D %lld, fn [%lld, %lld] (want [%d, %lld])",
                         (long long)N, n, (long long)D, (long long)fn->rows, (long long)fn->cols, n,
                         (long long)nD);
    if (N == 0) return DSV4_OK;
    /* scratch the fused op keeps on chip: the post-mixed streams when not wanted, the normalised
     * streams, mix and y */
    float *xs = f && !Xo ? malloc((size_t)(N * nD) * sizeof *xs) : NULL;
    float *flat = malloc((size_t)(N * nD) * sizeof *flat);
    float *mix = malloc((size_t)(N * n) * sizeof *mix);
    float *y = malloc((size_t)(N * D) * sizeof *y);
    dsv4_status st = DSV4_OK;
    if ((f && !Xo && !xs) || !flat || !mix || !y)
        st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "hc_head_site: scratch for %lld rows", (long long)N);
    const float *Xs = X;
    if (st == DSV4_OK && f) {
        float *o = Xo ? Xo : xs;
        st = dsv4_cpu_bk_hc_post(b, o, X, f, post_in, comb_in, N, n, D);
        Xs = o;
    }
    if (st == DSV4_OK) st = dsv4_cpu_bk_rmsnorm(b, flat, nD, Xs, nD, NULL, N, nD, rms_eps, 0);
    if (st == DSV4_OK) st = dsv4_cpu_bk_linear(b, fn, 0, n, flat, nD, N, mix, n, 0);
    if (st == DSV4_OK) st = dsv4_cpu_bk_hc_head(b, y, Xs, mix, base, scale, N, n, D, hc_eps);
    if (st == DSV4_OK) st = dsv4_cpu_bk_rmsnorm(b, h, D, y, D, norm, N, D, rms_eps, 1);
    free(xs);
    free(flat);
    free(mix);
    free(y);
    return st;
}
