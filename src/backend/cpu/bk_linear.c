/*
 * bk_linear.c - CPU implementation of the projections y = x W^T in every stored weight format (backend.h).
 * STUB: to be written.
 */
#include "backend/backend_impl.h"
#include "core/error.h"

dsv4_status dsv4_cpu_bk_linear(dsv4_backend *b, const dsv4_weight *w, int64_t row0, int64_t nrows,
                               const float *x, int64_t ldx, int64_t N, float *y, int64_t ldy,
                               int round_bf16)
{
    (void)b;
    (void)w;
    (void)row0;
    (void)nrows;
    (void)x;
    (void)ldx;
    (void)N;
    (void)y;
    (void)ldy;
    (void)round_bf16;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cpu: linear: not implemented yet");
}
