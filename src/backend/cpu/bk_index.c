/*
 * bk_index.c - CPU implementation of the compressor's rows and the windows they close
 * (comp_append), the lightning indexer queries, scores and top-k (backend.h). This is the reference
 * the CUDA ops are tested against, so it is the faithful branch of model/forward_attn.c
 * (comp_append, pool_entry, the indexer query path, index_token) moved onto the batched rows and
 * the per-slot ring/entry layout, built from the same ops (ops.h, quant_sim.h) in the same order.
 */
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/float_formats.h"
#include "model/quant_sim.h"

#include <string.h>

enum {
    POOL_SLOTS = 256,  /* 2m slots at most (ratios 4 and 128), dsv4_op_faithful_pool's limit */
    DIM_MAX = 4096,    /* widest pooled entry / indexer head this file accepts */
    KEY_CHUNK = 16384, /* f32 keys converted at a time by indexer_topk (64 KiB of stack) */
    HEADS_MAX = 1024,  /* indexer heads */
};

/* ---- compressor rows: comp_append of forward_attn.c ---------------------------------------- */
static void comp_store(float *ring_kv, float *ring_gate, int Rc, int width, const float *kv,
                       const float *gate, const float *ape, int m, const dsv4_bk_rows *rows)
{
    for (int32_t r = 0; r < rows->n; r++) {
        const int64_t p = rows->pos[r];
        const int64_t at = ((int64_t)rows->slot[r] * Rc + p % Rc) * width;
        const float *g = gate + (int64_t)r * width, *a = ape + (p % m) * width;
        float *rg = ring_gate + at;
        memcpy(ring_kv + at, kv + (int64_t)r * width, (size_t)width * sizeof(float));
        for (int i = 0; i < width; i++) rg[i] = g[i] + a[i];
    }
}

/* ---- closing windows: pool_entry of forward_attn.c ----------------------------------------- */
typedef struct pool_job {
    void *ent; /* the serving layout (kv_layout.h): is_index dsv4_ik_layout_of(dim) */
    int64_t cap_e;
    const float *ring_kv, *ring_gate, *norm, *freqs;
    int Rc, width, dim, m, r, is_index;
    float eps;
    const dsv4_bk_rows *rows;
} pool_job;

/* Row `row`: when its position closes a window, entry i = (pos + 1) / m - 1 of its slot. */
static void pool_row(int64_t row, void *ctx)
{
    const pool_job *j = ctx;
    const int64_t p = j->rows->pos[row], m = j->m;
    if ((p + 1) % m) return;
    const int64_t i = (p + 1) / m - 1, base = (int64_t)j->rows->slot[row] * j->Rc;
    const int d = j->dim, w = j->width, overlap = w == 2 * d;
    const float *kvp[POOL_SLOTS], *gp[POOL_SLOTS];
    int ns = 0;
    if (overlap && i > 0) /* the previous window's first halves */
        for (int64_t q = (i - 1) * m; q < i * m; q++) {
            const int64_t at = (base + q % j->Rc) * w;
            kvp[ns] = j->ring_kv + at;
            gp[ns++] = j->ring_gate + at;
        }
    for (int64_t q = i * m; q < (i + 1) * m; q++) { /* this window (second halves) */
        const int64_t at = (base + q % j->Rc) * w + (overlap ? d : 0);
        kvp[ns] = j->ring_kv + at;
        gp[ns++] = j->ring_gate + at;
    }
    float e[DIM_MAX];
    dsv4_op_faithful_pool(e, kvp, gp, ns, d);
    dsv4_sim_bf16(e, d);
    dsv4_op_rmsnorm(e, e, j->norm, 1, d, j->eps);
    dsv4_sim_bf16(e, d);
    dsv4_op_rope(e, 1, d, j->r, j->freqs, i * m, 0);
    dsv4_sim_bf16(e, d);
    if (j->is_index) { /* indexer keys: Hadamard, then FP4 in blocks of 32 */
        dsv4_sim_rotate_activation(e, d);
        dsv4_sim_fp4_act_quant(e, d, 32);
    } else { /* the non-RoPE dims: FP8 in blocks of 64 */
        dsv4_sim_act_quant(e, d - j->r, 64);
    }
    /* stores e exactly: it is act_quant-ed (FP4-rounded) already */
    const dsv4_kv_layout l = j->is_index ? dsv4_ik_layout_of(d) : dsv4_kv_layout_of(d, j->r);
    dsv4_kv_encode(&l, j->ent, (int64_t)j->rows->slot[row] * j->cap_e + i, e);
}

dsv4_status dsv4_cpu_bk_comp_append(dsv4_backend *b, void *ent, int64_t cap_e, float *ring_kv,
                                    float *ring_gate, int Rc, int width, int dim, int m,
                                    const float *kv, const float *gate, const float *ape,
                                    const float *norm, float eps, const float *freqs, int r,
                                    int is_index, const dsv4_bk_rows *rows)
{
    const int ns = width == 2 * dim ? 2 * m : m;
    if (m <= 0 || dim <= 0 || dim > DIM_MAX || (width != dim && width != 2 * dim) ||
        ns > POOL_SLOTS || (int64_t)Rc < (int64_t)ns + rows->n - 1 || r < 0 || r > dim || r % 2 ||
        (!is_index && r == dim) || r > DSV4_ROPE_MAX || (is_index && (dim & (dim - 1))))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "comp_append: m %d, dim %d, width %d, Rc %d (%d rows), rope %d, "
                         "is_index %d",
                         m, dim, width, Rc, rows->n, r, is_index);
    for (int32_t k = 0; k < rows->n; k++) {
        const int64_t p = rows->pos[k];
        if (p < 0 || rows->slot[k] < 0 || ((p + 1) % m == 0 && (p + 1) / m > cap_e))
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                             "comp_append: row %d at slot %d pos %lld (%lld entries per slot)", k,
                             rows->slot[k], (long long)p, (long long)cap_e);
    }
    /* every row into the ring first, then the windows they close read it */
    comp_store(ring_kv, ring_gate, Rc, width, kv, gate, ape, m, rows);
    pool_job j = {ent,   cap_e, ring_kv, ring_gate, norm,     freqs, Rc,
                  width, dim,   m,       r,         is_index, eps,   rows};
    dsv4_cpu_pool_run(b->pool, rows->n, pool_row, &j);
    return DSV4_OK;
}

/* ---- indexer queries --------------------------------------------------------------------- */
typedef struct q_job {
    float *iq;
    const float *freqs;
    const dsv4_bk_rows *rows;
    int nh, d, r;
} q_job;

/* RoPE, then per head bf16, Hadamard, FP4 (forward_attn.c's faithful indexer query path). */
static void q_row(int64_t row, void *ctx)
{
    const q_job *j = ctx;
    float *q = j->iq + row * j->nh * j->d;
    dsv4_op_rope(q, j->nh, j->d, j->r, j->freqs, j->rows->pos[row], 0);
    for (int h = 0; h < j->nh; h++) {
        float *qh = q + (int64_t)h * j->d;
        dsv4_sim_bf16(qh, j->d);
        dsv4_sim_rotate_activation(qh, j->d);
        dsv4_sim_fp4_act_quant(qh, j->d, 32);
    }
}

dsv4_status dsv4_cpu_bk_indexer_q(dsv4_backend *b, float *iq, const dsv4_bk_rows *rows, int nh,
                                  int d, int r, const float *freqs)
{
    if (nh <= 0 || d <= 0 || (d & (d - 1)) || r < 0 || r > d || r % 2 || r > DSV4_ROPE_MAX)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "indexer_q: %d heads of %d, rope %d", nh, d, r);
    q_job j = {iq, freqs, rows, nh, d, r};
    dsv4_cpu_pool_run(b->pool, rows->n, q_row, &j);
    return DSV4_OK;
}

/* ---- indexer scores and top-k: index_token of forward_attn.c ------------------------------ */
typedef struct topk_job {
    int32_t *sel;
    const float *iq, *iw;
    const uint8_t *ent; /* dsv4_ik_layout_of(d) */
    int64_t cap_e;
    float w_scale;
    int nh, d, m, topk;
    const dsv4_bk_rows *rows;
    float *scores; /* [N, cap_e] */
} topk_job;

static void topk_row(int64_t row, void *ctx)
{
    const topk_job *j = ctx;
    const int64_t nvis = ((int64_t)j->rows->pos[row] + 1) / j->m;
    const int k = nvis < j->topk ? (int)nvis : j->topk;
    int32_t *sel = j->sel + row * j->topk;
    for (int a = k; a < j->topk; a++) sel[a] = -1;
    if (k == 0) return;
    float *sc = j->scores + row * j->cap_e;
    const dsv4_kv_layout l = dsv4_ik_layout_of(j->d);
    const int64_t e_slot = (int64_t)j->rows->slot[row] * j->cap_e;
    const float *q = j->iq + row * j->nh * j->d, *iw = j->iw + row * j->nh;
    float w[HEADS_MAX]; /* the head weights as dsv4_bk_scale leaves them: bf16(iw * w_scale) */
    for (int h = 0; h < j->nh; h++) w[h] = dsv4_round_bf16(iw[h] * j->w_scale);
    /* the keys are FP4 in the state: scored a chunk at a time through an f32 copy */
    float kf[KEY_CHUNK];
    const int64_t per = KEY_CHUNK / j->d;
    for (int64_t e0 = 0; e0 < nvis; e0 += per) {
        const int64_t n = nvis - e0 < per ? nvis - e0 : per;
        for (int64_t i = 0; i < n; i++) dsv4_kv_decode(&l, j->ent, e_slot + e0 + i, kf + i * j->d);
        dsv4_op_faithful_index_scores(sc + e0, q, w, kf, n, j->nh, j->d);
    }
    dsv4_op_topk(sel, sc, nvis, k);
    /* the official top-k hands its picks in score order (ties: the lower index first) */
    for (int a = 1; a < k; a++) {
        const int32_t x = sel[a];
        int c = a;
        while (c > 0 && sc[sel[c - 1]] < sc[x]) sel[c] = sel[c - 1], c--;
        sel[c] = x;
    }
}

/* N rows of cap_e + 1 words: the CPU keeps row r's scores at ws + r cap_e, the CUDA op at
 * ws + r (cap_e + 1), each row's followed by its CTA ticket (zero between calls, as dsv4_bk_alloc
 * leaves them), so a call finds its rows' tickets whatever N the calls before it had. */
size_t dsv4_bk_indexer_ws_bytes(int64_t N, int64_t cap_e)
{
    return (size_t)(N * (cap_e + 1)) * sizeof(float);
}

dsv4_status dsv4_cpu_bk_indexer_topk(dsv4_backend *b, int32_t *sel, const float *iq,
                                     const float *iw, float w_scale, const uint8_t *ent,
                                     int64_t cap_e, int nh, int d, int m, int topk,
                                     const dsv4_bk_rows *rows, void *ws)
{
    if (nh <= 0 || nh > HEADS_MAX || d <= 0 || d > KEY_CHUNK || m <= 0 || topk <= 0 || cap_e <= 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "indexer_topk: %d heads of %d, m %d, topk %d, %lld entries", nh, d, m,
                         topk, (long long)cap_e);
    for (int32_t r = 0; r < rows->n; r++)
        if (rows->pos[r] < 0 || rows->slot[r] < 0 || (rows->pos[r] + 1LL) / m > cap_e)
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                             "indexer_topk: row %d at slot %d pos %d sees more than %lld entries",
                             r, rows->slot[r], rows->pos[r], (long long)cap_e);
    topk_job j = {sel, iq, iw, ent, cap_e, w_scale, nh, d, m, topk, rows, ws};
    dsv4_cpu_pool_run(b->pool, rows->n, topk_row, &j);
    return DSV4_OK;
}
