/*
 * moe_layout.cu - rewrites the expert matrices of a MoE table into the tiled layout of moe.cuh
 * (16-row x 128-column blocks stored one after another along a row band), once, when the
 * table is built. Why: the tensor-core path streams each 16-row tile of a matrix chunk by
 * chunk; stored row-major, those 16 rows are 16 runs 2-4 KB apart, an access pattern the H100's
 * memory serves at ~2 TB/s where a contiguous stream reaches ~3 (docs/PERF.md, session 15).
 *
 * In place where the tiled size equals the stored one (rows % 16 == 0 and cols % 128 == 0: all
 * published shapes): the bytes are copied to a scratch buffer and written back tiled. Other
 * shapes (rows or columns padded with zeros) get a new buffer, which the table owns.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/moe.cuh"
#include "backend/cuda/pdl.cuh"

#include <stdlib.h>

/* dst (tiled, rows_p x cols_p) <- src (row-major [rows, cols], row stride rb_src bytes), one
 * thread a 16-byte segment of dst; padding is zero. RB: bytes of a row in a chunk (64 MXFP4,
 * 128 FP8); bpc2: bytes per 2 columns (1 MXFP4, 2 FP8). cols % 32 == 0, so a segment is either
 * all inside the stored columns or all padding. */
__global__ void moe_tile_data_kernel(uint8_t *dst, const uint8_t *src, int64_t rows, int64_t cols,
                                     int64_t nch, int64_t segs, int rb, int bpc2)
{
    DSV4_PDL_WAIT();
    const int64_t s = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= segs) return;
    const int64_t o = 16 * s, blk = o / (16 * rb), in = o - blk * 16 * rb;
    const int64_t row = (blk / nch) * 16 + in / rb;
    const int64_t byte = (blk % nch) * rb + in % rb; /* of the row */
    const int64_t row_bytes = cols * bpc2 / 2;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (row < rows && byte < row_bytes) v = *(const uint4 *)(src + row * row_bytes + byte);
    *(uint4 *)(dst + o) = v;
}

/* MXFP4 scales: dst (tiled, 16 rows x 4 bytes a block) <- src [rows, scale_cols], one thread a
 * byte; padding is 0 (2^-127, met by zero weights). */
__global__ void moe_tile_scale_kernel(uint8_t *dst, const uint8_t *src, int64_t rows, int64_t cols,
                                      int64_t scale_cols, int64_t nch, int64_t n)
{
    DSV4_PDL_WAIT();
    const int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n) return;
    const int64_t blk = o / 64, in = o % 64;
    const int64_t row = (blk / nch) * 16 + in / 4, grp = (blk % nch) * 4 + in % 4;
    dst[o] = row < rows && grp < cols / 32 ? src[row * scale_cols + grp] : 0;
}

typedef struct tiling {
    dsv4_backend *b;
    cudaStream_t st;
    uint8_t *scratch;
    size_t scratch_bytes;
    void **owned; /* new buffers, freed with the table */
    int n_owned, cap_owned;
    const uint8_t **done_from, **done_to; /* stored pointer -> tiled pointer, once per buffer */
    int n_done, cap_done;
} tiling;

static dsv4_status remember(tiling *g, const uint8_t *from, const uint8_t *to)
{
    if (g->n_done == g->cap_done) {
        const int cap = g->cap_done ? 2 * g->cap_done : 64;
        const uint8_t **f = (const uint8_t **)realloc(g->done_from, cap * sizeof *f);
        if (f) g->done_from = f;
        const uint8_t **t = (const uint8_t **)realloc(g->done_to, cap * sizeof *t);
        if (t) g->done_to = t;
        if (!f || !t) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cuda moe: tiling records");
        g->cap_done = cap;
    }
    g->done_from[g->n_done] = from;
    g->done_to[g->n_done++] = to;
    return DSV4_OK;
}

static const uint8_t *already(const tiling *g, const uint8_t *from)
{
    for (int i = 0; i < g->n_done; i++)
        if (g->done_from[i] == from) return g->done_to[i];
    return NULL;
}

/* A buffer of `bytes` for a tiled copy: `stored` itself when the sizes agree (its bytes then
 * copied to the scratch first, *src = scratch), else a new one the table owns. */
static dsv4_status target(tiling *g, const uint8_t *stored, size_t stored_bytes, size_t bytes,
                          uint8_t **dst, const uint8_t **src)
{
    if (bytes == stored_bytes) {
        if (bytes > g->scratch_bytes) {
            if (g->scratch) dsv4_cuda_bk_free(g->b, g->scratch);
            g->scratch = NULL;
            g->scratch_bytes = 0;
            DSV4_TRY(dsv4_cuda_bk_alloc(g->b, bytes, (void **)&g->scratch));
            g->scratch_bytes = bytes;
        }
        CUDA_TRY(cudaMemcpyAsync(g->scratch, stored, bytes, cudaMemcpyDeviceToDevice, g->st));
        *dst = (uint8_t *)stored;
        *src = g->scratch;
        return DSV4_OK;
    }
    if (g->n_owned == g->cap_owned) {
        const int cap = g->cap_owned ? 2 * g->cap_owned : 16;
        void **o = (void **)realloc(g->owned, cap * sizeof *o);
        if (!o) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cuda moe: tiling buffers");
        g->owned = o;
        g->cap_owned = cap;
    }
    DSV4_TRY(dsv4_cuda_bk_alloc(g->b, bytes, (void **)dst));
    g->owned[g->n_owned++] = *dst;
    *src = stored;
    return DSV4_OK;
}

static dsv4_status tile_mat(tiling *g, moe_mat *m)
{
    const int64_t R = m->rows, C = m->cols, nch = (C + 127) / 128, rp = (R + 15) / 16 * 16;
    const int rb = (int)moe_chunk_row_bytes(m->fmt), bpc2 = m->fmt == MOE_FP8 ? 2 : 1;
    const uint8_t *t = already(g, m->data);
    if (!t) {
        const size_t stored = (size_t)(R * C * bpc2 / 2), bytes = (size_t)(rp * nch * rb);
        uint8_t *dst;
        const uint8_t *src;
        DSV4_TRY(target(g, m->data, stored, bytes, &dst, &src));
        const int64_t segs = (int64_t)bytes / 16;
        moe_tile_data_kernel<<<(unsigned)((segs + 255) / 256), 256, 0, g->st>>>(dst, src, R, C, nch,
                                                                                segs, rb, bpc2);
        CUDA_LAUNCHED();
        DSV4_TRY(remember(g, m->data, dst));
        t = dst;
    }
    if (m->fmt == MOE_MXFP4) {
        const uint8_t *ts = already(g, m->scale);
        if (!ts) {
            const size_t stored = (size_t)(R * m->scale_cols), bytes = (size_t)(rp * nch * 4);
            uint8_t *dst;
            const uint8_t *src;
            /* in place where it fits: the tiled scales never take more than the stored ones */
            DSV4_TRY(target(g, m->scale, stored, bytes <= stored && rp == R ? stored : bytes, &dst,
                            &src));
            const int64_t n = (int64_t)bytes;
            moe_tile_scale_kernel<<<(unsigned)((n + 255) / 256), 256, 0, g->st>>>(
                dst, src, R, C, m->scale_cols, nch, n);
            CUDA_LAUNCHED();
            DSV4_TRY(remember(g, m->scale, dst));
            ts = dst;
        }
        m->scale = ts;
    }
    m->data = t;
    m->tiled = 1;
    return DSV4_OK;
}

dsv4_status moe_layout_tile(dsv4_backend *b, moe_expert *t, int n, void ***owned, int *n_owned)
{
    tiling g = {};
    g.b = b;
    g.st = dsv4_cuda_stream(b->cuda);
    dsv4_status st = DSV4_OK;
    for (int e = 0; st == DSV4_OK && e < n; e++) {
        st = tile_mat(&g, &t[e].w1);
        if (st == DSV4_OK) st = tile_mat(&g, &t[e].w2);
        if (st == DSV4_OK) st = tile_mat(&g, &t[e].w3);
    }
    if (st == DSV4_OK) st = dsv4_cuda_bk_sync(b); /* the scratch is free to go */
    if (g.scratch) dsv4_cuda_bk_free(b, g.scratch);
    free(g.done_from);
    free(g.done_to);
    if (st != DSV4_OK) {
        for (int i = 0; i < g.n_owned; i++) dsv4_cuda_bk_free(b, g.owned[i]);
        free(g.owned);
        return st;
    }
    *owned = g.owned;
    *n_owned = g.n_owned;
    return DSV4_OK;
}
