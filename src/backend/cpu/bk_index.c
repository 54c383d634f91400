/*
 * bk_index.c - CPU implementation of the compressor rows and pooling, the lightning indexer queries, scores and top-k (backend.h).
 * STUB: to be written.
 */
#include "backend/backend_impl.h"
#include "core/error.h"

dsv4_status dsv4_cpu_bk_comp_store(dsv4_backend *b, float *ring_kv, float *ring_gate, int Rc,
                                   int width, const float *kv, const float *gate, const float *ape,
                                   int m, const dsv4_bk_rows *rows)
{
    (void)b;
    (void)ring_kv;
    (void)ring_gate;
    (void)Rc;
    (void)width;
    (void)kv;
    (void)gate;
    (void)ape;
    (void)m;
    (void)rows;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cpu: comp_store: not implemented yet");
}

dsv4_status dsv4_cpu_bk_comp_pool(dsv4_backend *b, uint16_t *ent, int64_t cap_e,
                                  const float *ring_kv, const float *ring_gate, int Rc, int width,
                                  int dim, int m, const float *norm, float eps, const float *freqs,
                                  int r, int is_index, const dsv4_bk_rows *rows)
{
    (void)b;
    (void)ent;
    (void)cap_e;
    (void)ring_kv;
    (void)ring_gate;
    (void)Rc;
    (void)width;
    (void)dim;
    (void)m;
    (void)norm;
    (void)eps;
    (void)freqs;
    (void)r;
    (void)is_index;
    (void)rows;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cpu: comp_pool: not implemented yet");
}

dsv4_status dsv4_cpu_bk_indexer_q(dsv4_backend *b, float *iq, const dsv4_bk_rows *rows, int nh,
                                  int d, int r, const float *freqs)
{
    (void)b;
    (void)iq;
    (void)rows;
    (void)nh;
    (void)d;
    (void)r;
    (void)freqs;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cpu: indexer_q: not implemented yet");
}

dsv4_status dsv4_cpu_bk_indexer_topk(dsv4_backend *b, int32_t *sel, const float *iq,
                                     const float *iw, const uint16_t *ent, int64_t cap_e, int nh,
                                     int d, int m, int topk, const dsv4_bk_rows *rows, void *ws)
{
    (void)b;
    (void)sel;
    (void)iq;
    (void)iw;
    (void)ent;
    (void)cap_e;
    (void)nh;
    (void)d;
    (void)m;
    (void)topk;
    (void)rows;
    (void)ws;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cpu: indexer_topk: not implemented yet");
}
size_t dsv4_bk_indexer_ws_bytes(int64_t N, int64_t cap_e)
{
    return (size_t)(N * (cap_e + 1)) * sizeof(float);
}
