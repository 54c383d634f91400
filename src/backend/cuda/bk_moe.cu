/*
 * bk_moe.cu - CUDA implementation of the router, expert table and the routed + shared experts (backend.h).
 * STUB: to be written.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"

extern "C" dsv4_status dsv4_cuda_bk_router(dsv4_backend *b, int32_t *sel, float *wts, const float *logits,
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
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: router: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_experts_create(dsv4_backend *b, const dsv4_expert_weights *experts, int E,
                                        const dsv4_expert_weights *shared, dsv4_bk_experts **out)
{
    (void)b;
    (void)experts;
    (void)E;
    (void)shared;
    (void)out;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: experts_create: not implemented yet");
}

extern "C" void dsv4_cuda_bk_experts_free(dsv4_backend *b, dsv4_bk_experts *t)
{
    (void)b;
    (void)t;

}

extern "C" dsv4_status dsv4_cuda_bk_moe(dsv4_backend *b, float *out, const float *h, const int32_t *sel,
                             const float *wts, const dsv4_bk_experts *t, int64_t N, int K,
                             int64_t D, float limit, void *ws)
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
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: moe: not implemented yet");
}
