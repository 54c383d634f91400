/*
 * bk_moe.c - CPU implementation of the router, expert table and the routed + shared experts (backend.h).
 * STUB: to be written.
 */
#include "backend/backend_impl.h"
#include "core/error.h"

dsv4_status dsv4_cpu_bk_router(dsv4_backend *b, int32_t *sel, float *wts, const float *logits,
                               const float *bias, const int32_t *tid2eid,
                               const dsv4_bk_rows *rows, int E, int K, float route_scale)
{
    (void)b;
    (void)sel;
    (void)wts;
    (void)logits;
    (void)bias;
    (void)tid2eid;
    (void)rows;
    (void)E;
    (void)K;
    (void)route_scale;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cpu: router: not implemented yet");
}

dsv4_status dsv4_cpu_bk_experts_create(dsv4_backend *b, const dsv4_expert_weights *experts, int E,
                                       const dsv4_expert_weights *shared, dsv4_bk_experts **out)
{
    (void)b;
    (void)experts;
    (void)E;
    (void)shared;
    (void)out;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cpu: experts_create: not implemented yet");
}

void dsv4_cpu_bk_experts_free(dsv4_backend *b, dsv4_bk_experts *t)
{
    (void)b;
    (void)t;

}

dsv4_status dsv4_cpu_bk_moe(dsv4_backend *b, float *out, const float *h, const int32_t *sel,
                            const float *wts, const dsv4_bk_experts *t, int64_t N, int K, int64_t D,
                            float limit, void *ws)
{
    (void)b;
    (void)out;
    (void)h;
    (void)sel;
    (void)wts;
    (void)t;
    (void)N;
    (void)K;
    (void)D;
    (void)limit;
    (void)ws;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cpu: moe: not implemented yet");
}
size_t dsv4_bk_moe_ws_bytes(int64_t N, int K, int64_t D, int64_t I_max, int E)
{
    (void)E;
    return (size_t)(N * (K + 1)) * (size_t)(2 * D + 3 * I_max + 4) * sizeof(float);
}
