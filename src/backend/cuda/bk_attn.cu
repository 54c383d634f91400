/*
 * bk_attn.cu - CUDA implementation of the the window-key store and the faithful sparse attention with sinks (backend.h).
 * STUB: to be written.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"

extern "C" dsv4_status dsv4_cuda_bk_kv_store(dsv4_backend *b, uint16_t *win, int R, int hd, const float *kv,
                                  const dsv4_bk_rows *rows)
{
    (void)b;
    (void)win;
    (void)R;
    (void)hd;
    (void)kv;
    (void)rows;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: kv_store: not implemented yet");
}

extern "C" dsv4_status dsv4_cuda_bk_attention(dsv4_backend *b, float *o, const float *q, int H, int hd,
                                   const uint16_t *win, int R, int W, const uint16_t *ent,
                                   int64_t cap_e, int m, const int32_t *sel, int topk,
                                   const float *sink, const dsv4_bk_rows *rows)
{
    (void)b;
    (void)o;
    (void)q;
    (void)H;
    (void)hd;
    (void)win;
    (void)R;
    (void)W;
    (void)ent;
    (void)cap_e;
    (void)m;
    (void)sel;
    (void)topk;
    (void)sink;
    (void)rows;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda: attention: not implemented yet");
}
