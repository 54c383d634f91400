/*
 * bk_linear.c - CPU implementation of the projections y = x W^T in every stored weight format
 * (backend.h dsv4_bk_linear). It is the reference the CUDA op is tested against, so the product
 * is the session forward's own: one dsv4_cpu_linear_rows call over all N rows (a one-row call may
 * differ in the last bits from an N-row call, so rows are never split into several calls), then
 * dsv4_sim_bf16 as dsv4_fw_linear_rows_bf16 does. Strided x or y go through a contiguous
 * temporary: gathered before, scattered after, exactly like forward_attn.c's grouped wo_a.
 * The grouped projection (dsv4_bk_linear_grouped) is that call once per group, as the engine
 * made them before the op existed, so its bits are the per-group calls' bits; the multi
 * projection (dsv4_bk_linear_multi) is likewise one call per entry.
 */
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "core/error.h"
#include "model/quant_sim.h"

#include <stdlib.h>
#include <string.h>

dsv4_status dsv4_cpu_bk_linear(dsv4_backend *b, const dsv4_weight *w, int64_t row0, int64_t nrows,
                               const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy,
                               int round_bf16)
{
    const int64_t cols = w->cols;
    if (N < 0 || nrows < 0 || row0 < 0 || row0 + nrows > w->rows || ldx < cols || ldy < nrows)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "linear %s [%lld, %lld]: rows [%lld, +%lld), N %lld, ldx %lld, ldy %lld",
                         w->name, (long long)w->rows, (long long)cols, (long long)row0,
                         (long long)nrows, (long long)N, (long long)ldx, (long long)ldy);
    if (N == 0 || nrows == 0) return DSV4_OK;

    /* x [N, cols] contiguous (one row is contiguous whatever ldx), y [N, nrows] likewise. */
    const int gather = N > 1 && ldx != cols, scatter = N > 1 && ldy != nrows;
    float *xt = NULL, *yt = NULL;
    if (gather) xt = malloc((size_t)(N * cols) * sizeof *xt);
    if (scatter) yt = malloc((size_t)(N * nrows) * sizeof *yt);
    if ((gather && !xt) || (scatter && !yt)) {
        free(xt);
        free(yt);
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "linear %s: staging [%lld rows]", w->name,
                         (long long)N);
    }
    if (gather)
        for (int64_t t = 0; t < N; t++)
            memcpy(xt + t * cols, x + t * ldx, (size_t)cols * sizeof *xt);
    float *yo = scatter ? yt : y;
    dsv4_status st = dsv4_cpu_linear_rows(b->pool, w, row0, nrows, gather ? xt : x, N, yo);
    if (st == DSV4_OK && round_bf16) dsv4_sim_bf16(yo, N * nrows);
    if (st == DSV4_OK && scatter)
        for (int64_t t = 0; t < N; t++)
            memcpy(y + t * ldy, yt + t * nrows, (size_t)nrows * sizeof *yt);
    free(xt);
    free(yt);
    return st;
}

dsv4_status dsv4_cpu_bk_linear_grouped(dsv4_backend *b, const dsv4_weight *w, int groups,
                                       const float *x, int64_t ldx, int64_t N, float *y,
                                       int64_t ldy, int round_bf16)
{
    const int64_t cols = w->cols;
    if (groups < 1 || w->rows % groups || N < 0 || ldx < groups * cols || ldy < w->rows)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "linear_grouped %s [%lld, %lld]: %d groups, N %lld, ldx %lld, ldy %lld",
                         w->name, (long long)w->rows, (long long)cols, groups, (long long)N,
                         (long long)ldx, (long long)ldy);
    const int64_t R = w->rows / groups;
    for (int g = 0; g < groups; g++)
        DSV4_TRY(
            dsv4_cpu_bk_linear(b, w, g * R, R, x + g * cols, ldx, N, y + g * R, ldy, round_bf16));
    return DSV4_OK;
}

dsv4_status dsv4_cpu_bk_linear_aq(dsv4_backend *b, const dsv4_weight *w, const float *x,
                                  int64_t ldx, float *xq, int64_t N, float *y, int64_t ldy,
                                  int round_bf16)
{
    const int64_t cols = w->cols; /* arguments checked by dsv4_bk_linear_aq */
    if (N == 0) return DSV4_OK;
    DSV4_TRY(dsv4_cpu_bk_act_quant(b, xq, cols, x, ldx, N, cols, 128));
    return dsv4_cpu_bk_linear(b, w, 0, w->rows, xq, cols, N, y, ldy, round_bf16);
}

dsv4_status dsv4_cpu_bk_linear_multi(dsv4_backend *b, const dsv4_bk_linear_entry *e, int n,
                                     int64_t N)
{
    if (n < 0 || n > DSV4_BK_LINEAR_MULTI_MAX || N < 0 || (n > 0 && !e))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "linear_multi: %d entries (at most %d), N %lld",
                         n, DSV4_BK_LINEAR_MULTI_MAX, (long long)N);
    for (int i = 0; i < n; i++) /* every entry checked before any is computed, as on CUDA */
        if (!e[i].w || e[i].ldx < e[i].w->cols || e[i].ldy < e[i].w->rows)
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                             "linear_multi entry %d %s: ldx %lld, ldy %lld for [%lld, %lld]", i,
                             e[i].w ? e[i].w->name : "(no weight)", (long long)e[i].ldx,
                             (long long)e[i].ldy, e[i].w ? (long long)e[i].w->rows : 0LL,
                             e[i].w ? (long long)e[i].w->cols : 0LL);
    for (int i = 0; i < n; i++) {
        DSV4_TRY(dsv4_cpu_bk_linear(b, e[i].w, 0, e[i].w->rows, e[i].x, e[i].ldx, N, e[i].y,
                                    e[i].ldy, e[i].round_bf16));
        if (e[i].norm)
            DSV4_TRY(dsv4_cpu_bk_rmsnorm_quant(b, e[i].y, e[i].yq, e[i].y, e[i].norm, N,
                                               e[i].w->rows, e[i].eps, e[i].qblock));
        if (e[i].signal) *e[i].signal = 1;
    }
    return DSV4_OK;
}
