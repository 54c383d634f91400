/*
 * bk_hc.c - CPU implementation of dsv4_bk_hc_site, the whole pre-sublayer mHC site in one op.
 * It is the reference the fused CUDA kernel (bk_hc.cu) is tested against, so it is nothing but
 * the four CPU ops the engine used to call, in the same order on the same buffers: RMSNorm of
 * the flattened streams (no weight, f32), the fn projection, hc_pre, RMSNorm(norm) to bf16.
 * The engine on the CPU therefore gives the same bits as before the op existed.
 */
#include "backend/backend_impl.h"
#include "core/error.h"

#include <stdlib.h>

dsv4_status dsv4_cpu_bk_hc_site(dsv4_backend *b, float *h, float *y, float *mix, float *post,
                                float *comb, const float *X, const dsv4_weight *fn,
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
    free(flat);
    if (yb != y) free(yb);
    if (mb != mix) free(mb);
    return st;
}
