/*
 * bk_attn.c - CPU implementation of the window-key store and the faithful sparse attention with
 * sinks (backend.h). This is the reference the CUDA ops are tested against, so the attention is
 * the session forward's own code: the key list of forward_attn.c attn_body (faithful branch)
 * built per row, and dsv4_op_faithful_attend_head (ops_faithful.c) per (row, head). Cached keys
 * are in the serving layout (kv_layout.h), so each row's keys are decoded to f32 once into a
 * scratch the heads share.
 * Row arrays and state are host memory on the CPU backend.
 */
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/float_formats.h"
#include "model/quant_sim.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Decoded keys held at once (f32 elements); rows beyond it run in further rounds. */
enum { ATTN_DECODE_BUDGET = 1 << 24 };

dsv4_status dsv4_cpu_bk_kv_store(dsv4_backend *b, uint8_t *win, int R, int hd, int r,
                                 const float *kv, const dsv4_bk_rows *rows)
{
    (void)b;
    if (R < 1 || hd < 1 || r < 0 || r >= hd || (r & 1))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "kv_store: R %d, hd %d, r %d", R, hd, r);
    const dsv4_kv_layout l = dsv4_kv_layout_of(hd, r);
    for (int32_t i = 0; i < rows->n; i++) {
        if (rows->slot[i] < 0 || rows->pos[i] < 0)
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "kv_store: row %d has slot %d, pos %d", i,
                             rows->slot[i], rows->pos[i]);
        dsv4_kv_encode(&l, win, (int64_t)rows->slot[i] * R + rows->pos[i] % R,
                       kv + (int64_t)i * hd);
    }
    return DSV4_OK;
}

/* One round of rows [r0, r0 + n): keys decoded per row, then the (row, head) items. */
typedef struct attn_job {
    float *o;
    const float *q, *sink;
    const uint8_t *win, *ent;
    dsv4_kv_layout kl;
    const int32_t *sel, *slot, *pos;
    int H, hd, R, W, mode, topk; /* mode: 0 window only, 1 HCA, 2 CSA */
    int64_t cap_e;
    int m;
    float scale;
    int64_t r0;
    const int64_t *koff;  /* [n + 1] slot offsets of the round's rows */
    float *keys;          /* [koff[n], hd] decoded keys (empty slots unused) */
    const float **ptrs;   /* [koff[n]] slot pointers (NULL: empty slot) */
    double *contrib;      /* [lanes, hd] */
    int64_t n_items;      /* n * H */
    _Atomic int64_t next; /* next item */
} attn_job;

/* The row's entry count (HCA, CSA) as attn_body counts them. */
static int64_t row_entries(const attn_job *j, int64_t r)
{
    if (j->mode == 1) return (int64_t)(j->pos[r] + 1) / j->m;
    if (j->mode == 0) return 0;
    int64_t n = 0;
    for (int k = 0; k < j->topk; k++) n += j->sel[r * j->topk + k] >= 0;
    return n;
}

/* Row i of the round: window positions max(0, p-W+1) .. p oldest first, W - count empty slots,
 * then the entries (CSA: the picks sel >= 0 in order; HCA: 0 .. (p+1)/m - 1). */
static void build_row(int64_t i, void *ctx)
{
    attn_job *j = ctx;
    const int64_t r = j->r0 + i, hd = j->hd;
    const int64_t p = j->pos[r], lo = p - j->W + 1 > 0 ? p - j->W + 1 : 0;
    const int64_t wb = (int64_t)j->slot[r] * j->R, eb = (int64_t)j->slot[r] * j->cap_e;
    float *kf = j->keys + j->koff[i] * hd;
    const float **kp = j->ptrs + j->koff[i];
    int64_t s = 0;
    for (int64_t t = lo; t <= p; t++, s++) {
        dsv4_kv_decode(&j->kl, j->win, wb + t % j->R, kf + s * hd);
        kp[s] = kf + s * hd;
    }
    for (; s < j->W; s++) kp[s] = NULL;
    if (j->mode == 1) {
        const int64_t ne = (p + 1) / j->m;
        for (int64_t e = 0; e < ne; e++, s++) {
            dsv4_kv_decode(&j->kl, j->ent, eb + e, kf + s * hd);
            kp[s] = kf + s * hd;
        }
    } else if (j->mode == 2) {
        for (int k = 0; k < j->topk; k++) {
            const int32_t e = j->sel[r * j->topk + k];
            if (e < 0) continue;
            dsv4_kv_decode(&j->kl, j->ent, eb + e, kf + s * hd);
            kp[s] = kf + s * hd;
            s++;
        }
    }
}

/* One lane: takes (row, head) items until none is left, with its own contrib row. */
static void attend_lane(int64_t lane, void *ctx)
{
    attn_job *j = ctx;
    double *contrib = j->contrib + lane * j->hd;
    for (int64_t it; (it = atomic_fetch_add(&j->next, 1)) < j->n_items;) {
        const int64_t i = it / j->H, h = it % j->H, r = j->r0 + i;
        const int64_t off = (r * j->H + h) * j->hd;
        dsv4_op_faithful_attend_head(j->o + off, j->q + off, j->ptrs + j->koff[i],
                                     j->koff[i + 1] - j->koff[i], j->hd, j->scale, j->sink[h],
                                     contrib);
    }
}

static void run_n(dsv4_cpu_pool *pool, int64_t n, void (*fn)(int64_t, void *), void *ctx)
{
    if (pool && n > 1) {
        dsv4_cpu_pool_run(pool, n, fn, ctx);
        return;
    }
    for (int64_t i = 0; i < n; i++) fn(i, ctx);
}

/* The attention alone (rope_r == 0 of dsv4_cpu_bk_attention). */
static dsv4_status attention(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                             const uint8_t *win, int R, int W, const uint8_t *ent, int64_t cap_e,
                             int m, const int32_t *sel, int topk, const float *sink,
                             const dsv4_bk_rows *rows)
{
    const int64_t N = rows->n;
    if (H < 1 || hd < 1 || kr < 0 || kr >= hd || (kr & 1) || W < 1 || R < W || m < 0 ||
        (sel && topk < 0))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "attention: H %d, hd %d, key RoPE dims %d, R %d, W %d, m %d", H, hd, kr, R,
                         W, m);
    attn_job j = {.o = o,
                  .q = q,
                  .sink = sink,
                  .win = win,
                  .ent = ent,
                  .kl = dsv4_kv_layout_of(hd, kr),
                  .sel = sel,
                  .slot = rows->slot,
                  .pos = rows->pos,
                  .H = H,
                  .hd = hd,
                  .R = R,
                  .W = W,
                  .mode = m > 0 && ent ? (sel ? 2 : 1) : 0,
                  .topk = topk,
                  .cap_e = cap_e,
                  .m = m,
                  .scale = 1.0f / sqrtf((float)hd)};
    /* checks, and each row's slot count */
    int64_t *nk = malloc((size_t)(N + 1) * sizeof *nk);
    if (!nk) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "attention: %lld rows", (long long)N);
    for (int64_t r = 0; r < N; r++) {
        if (rows->slot[r] < 0 || rows->pos[r] < 0) {
            free(nk);
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "attention: row %lld has slot %d, pos %d",
                             (long long)r, rows->slot[r], rows->pos[r]);
        }
        if (j.mode == 2)
            for (int k = 0; k < topk; k++)
                if (sel[r * topk + k] >= cap_e) {
                    free(nk);
                    return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                                     "attention: row %lld picks entry %d of %lld", (long long)r,
                                     sel[r * topk + k], (long long)cap_e);
                }
        const int64_t ne = row_entries(&j, r);
        if (j.mode == 1 && ne > cap_e) {
            free(nk);
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                             "attention: row %lld at %d sees %lld entries, capacity %lld",
                             (long long)r, rows->pos[r], (long long)ne, (long long)cap_e);
        }
        nk[r] = W + ne;
    }
    /* rounds of rows whose decoded keys fit the budget (at least one row each) */
    const int64_t lanes = b->pool ? dsv4_cpu_pool_size(b->pool) : 1;
    int64_t *koff = malloc((size_t)(N + 1) * sizeof *koff);
    double *contrib = malloc((size_t)(lanes * hd) * sizeof *contrib);
    dsv4_status st =
        koff && contrib ? DSV4_OK : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "attention scratch");
    for (int64_t r0 = 0, r1; st == DSV4_OK && r0 < N; r0 = r1) {
        int64_t tot = 0;
        for (r1 = r0; r1 < N && (r1 == r0 || (tot + nk[r1]) * hd <= ATTN_DECODE_BUDGET); r1++)
            tot += nk[r1];
        koff[0] = 0;
        for (int64_t i = 0; i < r1 - r0; i++) koff[i + 1] = koff[i] + nk[r0 + i];
        float *keys = malloc((size_t)(tot * hd) * sizeof *keys);
        const float **ptrs = malloc((size_t)tot * sizeof *ptrs);
        if (keys && ptrs) {
            j.r0 = r0;
            j.koff = koff;
            j.keys = keys;
            j.ptrs = ptrs;
            j.contrib = contrib;
            j.n_items = (r1 - r0) * H;
            atomic_store(&j.next, 0);
            run_n(b->pool, r1 - r0, build_row, &j);
            run_n(b->pool, j.n_items < lanes ? j.n_items : lanes, attend_lane, &j);
        } else {
            st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "attention: %lld decoded keys", (long long)tot);
        }
        free(keys);
        free(ptrs);
    }
    free(koff);
    free(contrib);
    free(nk);
    return st;
}

/* The attention, then (rope_r > 0) the inverse RoPE op over o: the composition the CUDA op
 * fuses into its epilogue. */
dsv4_status dsv4_cpu_bk_attention(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                                  const uint8_t *win, int R, int W, const uint8_t *ent,
                                  int64_t cap_e, int m, const int32_t *sel, int topk,
                                  const float *sink, const dsv4_bk_rows *rows, int rope_r,
                                  const float *rope_freqs)
{
    if (rope_r < 0 || (rope_r && !rope_freqs))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "attention: rope_r %d", rope_r);
    DSV4_TRY(attention(b, o, q, H, hd, kr, win, R, W, ent, cap_e, m, sel, topk, sink, rows));
    if (rope_r == 0) return DSV4_OK;
    return dsv4_cpu_bk_rope(b, o, (int64_t)H * hd, rows, H, hd, rope_r, rope_freqs, 1, 1);
}
