/*
 * test_gpu_moe.c - GPU test (ctest -L gpu) of the moe op group (backend.h): dsv4_bk_router and
 * dsv4_bk_moe on CUDA against the CPU implementation (backend/cpu/bk_moe.c, the session
 * forward's faithful MoE) on fresh seeded inputs, at the Flash shape (D 4096, I 2048, E 256,
 * top 6, MXFP4 routed experts, FP8 shared expert), the Pro shape (D 7168, I 3072, E 384) and
 * small shapes in every expert format (NVFP4, FP8 with f32 scales, BF16, F16, F32). Each moe case
 * runs every CUDA path (moe_path.cuh: the SIMT grouped GEMMs; where the formats allow it,
 * MXFP4 / FP8-ue8m0, the tensor-core stage kernels) against the same CPU result, twice each
 * (the two outputs must be bit-equal: deterministic), with routings
 * that stress the work split: random, a row naming one expert twice, every row on the same
 * experts (one expert sees all N rows: many token passes), every row on its own experts. On
 * the tensor-core path each case runs again with the shared expert's tokens forced into 1 and 3
 * slots (as many as it has rows; moe_path.cuh), and with stage 2's per-slot wait forced on and
 * off (moe_mma.cu RDY): each bit-equal to the rule's choice. Decode timings of
 * every path at the Flash shape (N = 1, 8, 64, 300) and the Pro shape (N = 1, 64): µs and distinct
 * expert bytes / time.
 *
 * usage: test_gpu_moe [--small | --profile N]
 *   --small: small shapes only (for compute-sanitizer); --profile N: only the Flash timing calls
 *   of the tensor-core path at N rows (for ncu: -k regex:moe_mma_stage --launch-skip 4
 *   --launch-count 2 profiles one call's two stage kernels)
 *
 * dsv4_bk_moe_routed (router + moe) on every path: bit-equal to the same path's router + moe,
 * and within the bounds below of the CPU composition; several N in turn, smaller after larger.
 *
 * Bounds (why they are what they are):
 * - router: sel must be equal (rows with a NaN logit too: NaN ranks above every number on both,
 *   torch.topk's order; their weights are NaN on both). The scores sqrt(log1pf(expf(x))) are
 *   not bit-equal: the GPU evaluates exp and log1p in double and rounds once (correctly
 *   rounded), glibc's log1pf is only faithful (checked over every float logit in [-30, 20]:
 *   0.77% of the scores differ, by 1 ulp, never more). Through w = s / (s_1 + ... + s_K +
 *   1e-20) * route_scale that is <= 1 ulp in s (2^-23 relative), <= 7 ulp of the partial sums
 *   in the sum (the input difference plus one differing rounding per addition), and 2 more
 *   roundings: |gpu - cpu| <= 10 * 2^-23 |w| (the first GPU run, held to 1 ulp, measured up to
 *   4 ulp).
 * - moe: the GPU differs from the CPU in f32 summation order before each bf16 rounding (and in
 *   SwiGLU's expf: correctly rounded on the GPU, glibc's differs by 1 ulp on ~0.06% of inputs,
 *   a smaller effect than the sums'). A g or u that lands on the neighbouring bf16 (1 ulp,
 *   2^-8..2^-7 relative) moves a by as much, which moves act_quant(a) to the neighbouring e4m3
 *   value (up to 1/8 of it) once in a while, and that shifts all D outputs of the pair by
 *   w2[:, k] times that step; y and out may each then round to a neighbouring bf16. Expected: a
 *   few such events per row, each worth about one bf16 ulp of |out| (<= 2^-7 of the row's max
 *   |out|). Bound: |gpu - cpu| <= 2^-4 max|out| of the row (8x that, for a few coinciding
 *   events; a wrong index, scale or rounding step gives errors of the order of the values).
 * - moe on "grid" inputs: h on the grid k/8, |h| <= 1, and weight scales chosen so that every
 *   w1/w3 partial sum is exact in f32 in any order: g, u, a and act_quant(a) are then equal on
 *   both (but for the rare expf difference above); only w2's sums (over act_quant(a), not on
 *   a grid) may round y differently, which is rare (~1e-3 of the y values) and worth <= 1 ulp
 *   of y: at least 95% of the outputs must be bit-equal (a missing or misplaced rounding step
 *   breaks nearly all of them), and the 2^-4 bound above.
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cuda/moe_path.cuh"
#include "backend/cpu/cpu_linear.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>

/* ---- seeded random numbers ----------------------------------------------------------------- */
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd64(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rndu(float lo, float hi)
{
    return lo + (hi - lo) * (float)(rnd64() >> 40) * (1.0f / 16777216.0f);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static void fill_bytes(uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint64_t v = rnd64();
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) p[i] = (uint8_t)rnd64();
}

static float bf16r(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* ---- weights in their stored layouts (model/weights.h) -------------------------------------
 * Magnitudes keep w1 x within a few units so that the SwiGLU clamp (10) is sometimes reached:
 * MXFP4 scales 2^-7 / 2^-6, FP8 values 2^-3 .. 1.875 (exponent field 4..7) times 2^-7 / 2^-6.
 * These also make the grid inputs' w1/w3 sums exact (see the header). */
static uint8_t e4m3_code(uint64_t r)
{
    return (uint8_t)((r & 0x80) | ((4 + ((r >> 8) & 3)) << 3) | ((r >> 12) & 7));
}

static void gen_weight(dsv4_weight *w, dsv4_weight_format f, int f32_scale, int64_t rows,
                       int64_t cols)
{
    memset(w, 0, sizeof *w);
    w->name = "test expert weight";
    w->format = f;
    w->ndim = 2;
    w->rows = rows;
    w->cols = cols;
    w->scale2 = 1.0f;
    const int64_t n = rows * cols;
    uint8_t *d = NULL, *s = NULL;
    switch (f) {
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const int mx = f == DSV4_FORMAT_MXFP4;
        w->dtype = DSV4_DT_U8;
        w->data_bytes = (uint64_t)n / 2;
        d = xmalloc(w->data_bytes);
        fill_bytes(d, w->data_bytes);
        w->scale_dtype = mx ? DSV4_DT_F8_E8M0 : DSV4_DT_F8_E4M3;
        w->scale_rows = rows;
        w->scale_cols = cols / (mx ? 32 : 16);
        w->scale_bytes = (uint64_t)(w->scale_rows * w->scale_cols);
        s = xmalloc(w->scale_bytes);
        for (uint64_t i = 0; i < w->scale_bytes; i++)
            s[i] = mx ? (uint8_t)(120 + (rnd64() & 1)) : (uint8_t)(e4m3_code(rnd64()) & 0x7f);
        if (!mx) w->scale2 = 0.0123f;
        break;
    }
    case DSV4_FORMAT_FP8: {
        w->dtype = DSV4_DT_F8_E4M3;
        w->data_bytes = (uint64_t)n;
        d = xmalloc(w->data_bytes);
        for (int64_t i = 0; i < n; i++) d[i] = e4m3_code(rnd64());
        w->scale_rows = (rows + 127) / 128;
        w->scale_cols = (cols + 127) / 128;
        const int64_t ns = w->scale_rows * w->scale_cols;
        w->scale_dtype = f32_scale ? DSV4_DT_F32 : DSV4_DT_F8_E8M0;
        w->scale_bytes = (uint64_t)ns * (f32_scale ? 4 : 1);
        s = xmalloc(w->scale_bytes);
        for (int64_t i = 0; i < ns; i++) {
            if (f32_scale) {
                const float v = rndu(0.004f, 0.02f);
                memcpy(s + 4 * i, &v, 4);
            } else {
                s[i] = (uint8_t)(120 + (rnd64() & 1));
            }
        }
        break;
    }
    case DSV4_FORMAT_BF16: {
        w->dtype = DSV4_DT_BF16;
        w->data_bytes = (uint64_t)n * 2;
        d = xmalloc(w->data_bytes);
        for (int64_t i = 0; i < n; i++) {
            const float v = bf16r(rndu(-0.03f, 0.03f));
            uint32_t u;
            memcpy(&u, &v, 4);
            const uint16_t hb = (uint16_t)(u >> 16);
            memcpy(d + 2 * i, &hb, 2);
        }
        break;
    }
    case DSV4_FORMAT_F16: { /* exponents 2^-10 .. 2^-3 */
        w->dtype = DSV4_DT_F16;
        w->data_bytes = (uint64_t)n * 2;
        d = xmalloc(w->data_bytes);
        for (int64_t i = 0; i < n; i++) {
            const uint64_t r = rnd64();
            const uint16_t hb =
                (uint16_t)((r & 0x8000) | ((5 + ((r >> 16) & 7)) << 10) | (r & 0x3ff));
            memcpy(d + 2 * i, &hb, 2);
        }
        break;
    }
    case DSV4_FORMAT_F32: {
        w->dtype = DSV4_DT_F32;
        w->data_bytes = (uint64_t)n * 4;
        d = xmalloc(w->data_bytes);
        for (int64_t i = 0; i < n; i++) {
            const float v = rndu(-0.03f, 0.03f);
            memcpy(d + 4 * i, &v, 4);
        }
        break;
    }
    default:
        abort();
    }
    w->data = d;
    w->scale = s;
}

static void free_host_weight(dsv4_weight *w)
{
    free((void *)w->data);
    free((void *)w->scale);
}

/* The experts of one test layer: nd distinct weight sets (expert e uses set e % nd), on the host
 * for the CPU and uploaded once each for the GPU. */
typedef struct layer {
    const char *name;
    int64_t D, I;
    int E, K, nd;
    dsv4_expert_weights *hx, *gx; /* [nd] distinct sets: host, device */
    dsv4_expert_weights hsh, gsh; /* shared */
    dsv4_expert_weights *he, *ge; /* [E] the expert arrays the tables see */
    dsv4_bk_experts *tc, *tg;
} layer;

static void gen_expert(dsv4_expert_weights *x, dsv4_weight_format f, int f32s, int64_t D, int64_t I)
{
    gen_weight(&x->w1, f, f32s, I, D);
    gen_weight(&x->w2, f, f32s, D, I);
    gen_weight(&x->w3, f, f32s, I, D);
}

static int upload_expert(dsv4_backend *g, const dsv4_expert_weights *h, dsv4_expert_weights *o)
{
    return dsv4_bk_weight_upload(g, &h->w1, 0, &o->w1) == DSV4_OK &&
           dsv4_bk_weight_upload(g, &h->w2, 0, &o->w2) == DSV4_OK &&
           dsv4_bk_weight_upload(g, &h->w3, 0, &o->w3) == DSV4_OK;
}

static int layer_make(layer *L, dsv4_backend *c, dsv4_backend *g, dsv4_weight_format routed,
                      int routed_f32s, dsv4_weight_format shared, int shared_f32s)
{
    const double t0 = test_now();
    L->hx = calloc((size_t)L->nd, sizeof *L->hx);
    L->gx = calloc((size_t)L->nd, sizeof *L->gx);
    L->he = calloc((size_t)L->E, sizeof *L->he);
    L->ge = calloc((size_t)L->E, sizeof *L->ge);
    if (!L->hx || !L->gx || !L->he || !L->ge) abort();
    int ok = 1;
    for (int i = 0; i < L->nd && ok; i++) {
        gen_expert(&L->hx[i], routed, routed_f32s, L->D, L->I);
        ok = upload_expert(g, &L->hx[i], &L->gx[i]);
    }
    gen_expert(&L->hsh, shared, shared_f32s, L->D, L->I);
    ok = ok && upload_expert(g, &L->hsh, &L->gsh);
    CHECK_MSG(ok, "%s: upload: %s", L->name, dsv4_last_error());
    if (!ok) return 0;
    for (int e = 0; e < L->E; e++) L->he[e] = L->hx[e % L->nd], L->ge[e] = L->gx[e % L->nd];
    dsv4_status st = dsv4_bk_experts_create(c, L->he, L->E, &L->hsh, &L->tc);
    CHECK_MSG(st == DSV4_OK, "%s: cpu experts_create: %s", L->name, dsv4_last_error());
    if (st == DSV4_OK) st = dsv4_bk_experts_create(g, L->ge, L->E, &L->gsh, &L->tg);
    CHECK_MSG(st == DSV4_OK, "%s: cuda experts_create: %s", L->name, dsv4_last_error());
    printf("%-28s D %lld I %lld E %d (%d distinct) K %d, routed %s, shared %s: %.1f s\n", L->name,
           (long long)L->D, (long long)L->I, L->E, L->nd, L->K, dsv4_weight_format_name(routed),
           dsv4_weight_format_name(shared), test_now() - t0);
    return st == DSV4_OK;
}

static void layer_free(layer *L, dsv4_backend *c, dsv4_backend *g)
{
    /* the tables directly: dsv4_bk_experts_free does not reach the CPU one in a CUDA build */
    if (L->tc) dsv4_cpu_bk_experts_free(c, L->tc);
    if (L->tg) dsv4_cuda_bk_experts_free(g, L->tg);
    for (int i = 0; i < L->nd && L->hx; i++) {
        dsv4_expert_weights *h = &L->hx[i], *d = &L->gx[i];
        free_host_weight(&h->w1), free_host_weight(&h->w2), free_host_weight(&h->w3);
        dsv4_bk_weight_free(g, &d->w1), dsv4_bk_weight_free(g, &d->w2);
        dsv4_bk_weight_free(g, &d->w3);
    }
    free_host_weight(&L->hsh.w1), free_host_weight(&L->hsh.w2), free_host_weight(&L->hsh.w3);
    dsv4_bk_weight_free(g, &L->gsh.w1), dsv4_bk_weight_free(g, &L->gsh.w2);
    dsv4_bk_weight_free(g, &L->gsh.w3);
    free(L->hx), free(L->gx), free(L->he), free(L->ge);
}

static uint64_t expert_bytes(const dsv4_expert_weights *x)
{
    return dsv4_weight_bytes(&x->w1) + dsv4_weight_bytes(&x->w2) + dsv4_weight_bytes(&x->w3);
}

/* ---- device buffers ------------------------------------------------------------------------ */
static void *dev_copy(dsv4_backend *g, const void *src, size_t bytes)
{
    void *p = NULL;
    if (dsv4_bk_alloc(g, bytes, &p) != DSV4_OK) return NULL;
    if (src && dsv4_bk_upload(g, p, src, bytes) != DSV4_OK) {
        dsv4_bk_free(g, p);
        return NULL;
    }
    return p;
}

/* ---- router -------------------------------------------------------------------------------- */
static uint32_t ulp_dist(float a, float b)
{
    int32_t x, y;
    memcpy(&x, &a, 4), memcpy(&y, &b, 4);
    if (x < 0) x = INT32_MIN - x;
    if (y < 0) y = INT32_MIN - y;
    const int64_t d = (int64_t)x - y;
    return (uint32_t)(d < 0 ? -d : d);
}

/* A hash layer's table tab [V, K]: K distinct experts per token, as real tables. */
static void hash_table(int32_t *tab, int V, int K, int E)
{
    for (int v = 0; v < V; v++)
        for (int j = 0; j < K; j++) {
            int e, dup;
            do {
                e = (int)(rnd64() % (uint64_t)E);
                dup = 0;
                for (int i = 0; i < j; i++) dup |= tab[v * K + i] == e;
            } while (dup);
            tab[v * K + j] = e;
        }
}

/* kind: 0 biased top-k, 1 no bias, 2 hash, 3 ties (logits and bias from a few values), 4 NaN
 * logits (biased top-k) */
static void test_router(dsv4_backend *c, dsv4_backend *g, int E, int K, int N, int kind)
{
    static const char *names[] = {"top-k + bias", "top-k", "hash", "top-k, tied scores",
                                  "top-k, NaN logits"};
    const int V = 1000;
    float *logits = xmalloc((size_t)N * E * 4), *bias = xmalloc((size_t)E * 4);
    int32_t *tab = xmalloc((size_t)V * K * 4), *ids = xmalloc((size_t)N * 4);
    for (int64_t i = 0; i < (int64_t)N * E; i++) {
        logits[i] = kind == 3 ? (float)(rnd64() % 4) * 0.5f - 1.0f : rndu(-6.0f, 6.0f);
        if (kind != 3 && rnd64() % 97 == 0) logits[i] = rndu(19.0f, 30.0f); /* softplus threshold */
        if (kind == 4 && rnd64() % 257 == 0) logits[i] = NAN; /* about every other row */
    }
    for (int e = 0; e < E; e++)
        bias[e] = kind == 3 ? (float)(rnd64() % 2) * 0.25f : rndu(-0.5f, 0.5f);
    hash_table(tab, V, K, E);
    for (int r = 0; r < N; r++) ids[r] = (int32_t)(rnd64() % V);

    const float *use_bias = kind == 1 || kind == 2 ? NULL : bias;
    const int32_t *use_tab = kind == 2 ? tab : NULL;
    int32_t *sc = xmalloc((size_t)N * K * 4), *sg = xmalloc((size_t)N * K * 4);
    float *wc = xmalloc((size_t)N * K * 4), *wg = xmalloc((size_t)N * K * 4);
    dsv4_bk_rows rc = {N, NULL, NULL, ids};
    dsv4_status st = dsv4_bk_router(c, sc, wc, logits, use_bias, use_tab, &rc, E, K, 1.5f);
    CHECK_MSG(st == DSV4_OK, "cpu router: %s", dsv4_last_error());

    float *dl = dev_copy(g, logits, (size_t)N * E * 4), *db = dev_copy(g, bias, (size_t)E * 4);
    int32_t *dt = dev_copy(g, tab, (size_t)V * K * 4), *di = dev_copy(g, ids, (size_t)N * 4);
    int32_t *ds = dev_copy(g, NULL, (size_t)N * K * 4);
    float *dw = dev_copy(g, NULL, (size_t)N * K * 4);
    dsv4_bk_rows rg = {N, NULL, NULL, di};
    st = dsv4_bk_router(g, ds, dw, dl, use_bias ? db : NULL, use_tab ? dt : NULL, &rg, E, K, 1.5f);
    if (st == DSV4_OK) st = dsv4_bk_download(g, sg, ds, (size_t)N * K * 4);
    if (st == DSV4_OK) st = dsv4_bk_download(g, wg, dw, (size_t)N * K * 4);
    CHECK_MSG(st == DSV4_OK, "cuda router: %s", dsv4_last_error());
    int sel_bad = 0, nan_rows = 0;
    uint32_t max_ulp = 0;
    double max_rel = 0;
    const double bound = 10.0 * 0x1p-23;
    for (int64_t i = 0; st == DSV4_OK && i < (int64_t)N * K; i++) {
        const int64_t row = i / K;
        int has_nan = 0;
        for (int e = 0; e < E; e++) has_nan |= isnan(logits[row * E + e]);
        sel_bad += sc[i] != sg[i];
        if (has_nan) { /* NaN ranks first (dsv4_op_topk); its weights are NaN on both */
            nan_rows += i % K == 0;
            sel_bad += isnan(wc[i]) != isnan(wg[i]);
            continue;
        }
        const uint32_t u = ulp_dist(wc[i], wg[i]);
        if (u > max_ulp) max_ulp = u;
        const double rel = fabs((double)wg[i] - wc[i]) / fmax(fabs((double)wc[i]), 1e-30);
        if (rel > max_rel) max_rel = rel;
    }
    printf("router E %3d K %d N %3d %-20s sel mismatches %d (bound 0), wts max %u ulp, max rel "
           "%.3g (bound %.3g)%s\n",
           E, K, N, names[kind], sel_bad, max_ulp, max_rel, bound,
           kind == 4 ? (nan_rows ? ", rows with NaN: the same sel, NaN weights alike"
                                 : ", no row with NaN")
                     : "");
    if (kind == 4) CHECK(nan_rows > 0);
    CHECK(sel_bad == 0);
    CHECK(max_rel <= bound);
    dsv4_bk_free(g, dl), dsv4_bk_free(g, db), dsv4_bk_free(g, dt), dsv4_bk_free(g, di);
    dsv4_bk_free(g, ds), dsv4_bk_free(g, dw);
    free(logits), free(bias), free(tab), free(ids), free(sc), free(sg), free(wc), free(wg);
}

/* ---- moe ----------------------------------------------------------------------------------- */
/* Routing for N rows: the CPU router on random logits and bias (ascending distinct experts). */
static void make_routing(const layer *L, dsv4_backend *c, int N, int32_t *sel, float *wts)
{
    float *logits = xmalloc((size_t)N * L->E * 4), *bias = xmalloc((size_t)L->E * 4);
    for (int64_t i = 0; i < (int64_t)N * L->E; i++) logits[i] = rndu(-4.0f, 4.0f);
    for (int e = 0; e < L->E; e++) bias[e] = rndu(-0.3f, 0.3f);
    dsv4_bk_rows rows = {N, NULL, NULL, NULL};
    dsv4_status st = dsv4_bk_router(c, sel, wts, logits, bias, NULL, &rows, L->E, L->K,
                                    L->E == 384 ? 2.5f : 1.5f);
    CHECK_MSG(st == DSV4_OK, "routing: %s", dsv4_last_error());
    free(logits), free(bias);
}

static const char *path_name(int path)
{
    return path == DSV4_MOE_PATH_MMA ? "mma" : "simt";
}

enum { NPATHS = 2 };
static const int paths[NPATHS] = {DSV4_MOE_PATH_SIMT, DSV4_MOE_PATH_MMA};

/* One GPU evaluation on `path` (moe_path.cuh): an untimed call, then a timed one whose output
 * must equal the first bit for bit (deterministic). Returns 0 where the path does not take the
 * layer (the dispatcher fell back to the other one). */
static int gpu_moe(const layer *L, dsv4_backend *g, int path, int N, const float *dh,
                   const int32_t *dsel, const float *dwt, float *dout, void *wsg, float *og,
                   float *og2, double *us, dsv4_status *st)
{
    const int64_t ND = N * L->D;
    const int old = dsv4_cuda_moe_force_path(path);
    *st = dsv4_bk_moe(g, dout, dh, dsel, dwt, L->tg, N, L->K, L->D, 10.0f, wsg);
    const int took = dsv4_cuda_moe_last_path();
    if (*st == DSV4_OK) *st = dsv4_bk_download(g, og2, dout, (size_t)ND * 4);
    if (*st == DSV4_OK) *st = dsv4_bk_memset0(g, dout, (size_t)ND * 4);
    if (*st == DSV4_OK) *st = dsv4_bk_prof_start(g);
    if (*st == DSV4_OK) *st = dsv4_bk_moe(g, dout, dh, dsel, dwt, L->tg, N, L->K, L->D, 10.0f, wsg);
    dsv4_bk_prof_mark(g, "moe");
    dsv4_bk_prof_entry pe[2];
    const int np = dsv4_bk_prof_stop(g, pe, 2);
    if (*st == DSV4_OK) *st = dsv4_bk_download(g, og, dout, (size_t)ND * 4);
    dsv4_cuda_moe_force_path(old);
    *us = np > 0 ? 1e3 * pe[0].ms / (double)pe[0].calls : 0.0;
    return took == path;
}

/* The tensor-core path's variants (moe_path.cuh hooks, set then reset): the shared expert's
 * tokens in other slots (bk_moe.cu shared_slots; as many as there are rows), stage 2's
 * per-slot wait (moe_mma.cu RDY) on and off. Each gives the bits of the rule's choice. */
typedef struct variant {
    int (*set)(int);
    int v;
    const char *what;
} variant;
enum { NVARIANTS = 4 };
static const variant variants[NVARIANTS] = {
    {dsv4_cuda_moe_force_shared_slots, 1, "shared expert in 1 slot"},
    {dsv4_cuda_moe_force_shared_slots, 3, "shared expert in 3 slots"},
    {dsv4_cuda_moe_force_ready, 1, "stage 2's per-slot wait on"},
    {dsv4_cuda_moe_force_ready, -1, "stage 2's per-slot wait off"},
};

/* grid: h = k/8, |k| <= 8. route: ROUTE_* (the router on random logits; its selection with
 * every other row naming its first expert twice; every row on the same K experts, so that one
 * expert sees all N rows; every row on its own K experts, N K <= E) */
enum { ROUTE_RANDOM = 0, ROUTE_DUP = 1, ROUTE_SAME = 2, ROUTE_DISTINCT = 3 };

static void test_moe(const layer *L, dsv4_backend *c, dsv4_backend *g, int N, int grid, int route)
{
    static const char *rnames[] = {"", " dup", " same", " distinct"};
    const int64_t D = L->D, K = L->K, ND = N * D, NK = N * K;
    float *h = xmalloc((size_t)ND * 4), *oc = xmalloc((size_t)ND * 4),
          *og = xmalloc((size_t)ND * 4), *og2 = xmalloc((size_t)ND * 4);
    int32_t *sel = xmalloc((size_t)NK * 4);
    float *wts = xmalloc((size_t)NK * 4);
    for (int r = 0; r < N; r++) {
        const float scale = ldexpf(1.0f, (int)(rnd64() % 5) - 2);
        for (int64_t d = 0; d < D; d++)
            h[r * D + d] = grid ? (float)((int)(rnd64() % 17) - 8) / 8.0f
                                : scale * (rndu(-1, 1) + rndu(-1, 1) + rndu(-1, 1));
    }
    make_routing(L, c, N, sel, wts);
    if (route == ROUTE_DUP)
        for (int r = 0; r < N; r += 2) sel[r * K + K - 1] = sel[r * K];
    if (route == ROUTE_SAME || route == ROUTE_DISTINCT)
        for (int r = 0; r < N; r++)
            for (int64_t j = 0; j < K; j++) {
                sel[r * K + j] =
                    route == ROUTE_SAME ? (int32_t)(j * (L->E / K)) : (int32_t)((r * K + j) % L->E);
                wts[r * K + j] = rndu(0.05f, 0.6f);
            }

    const size_t wsb = dsv4_bk_moe_ws_bytes(N, (int)K, D, L->I, L->E);
    void *wsc = xmalloc(wsb);
    double t = test_now();
    dsv4_status st = dsv4_bk_moe(c, oc, h, sel, wts, L->tc, N, (int)K, D, 10.0f, wsc);
    const double cpu_s = test_now() - t;
    CHECK_MSG(st == DSV4_OK, "cpu moe: %s", dsv4_last_error());

    float *dh = dev_copy(g, h, (size_t)ND * 4), *dwt = dev_copy(g, wts, (size_t)NK * 4);
    int32_t *dsel = dev_copy(g, sel, (size_t)NK * 4);
    float *dout = dev_copy(g, NULL, (size_t)ND * 4);
    void *wsg = dev_copy(g, NULL, wsb);
    st = dh && dwt && dsel && dout && wsg ? DSV4_OK : DSV4_ERR_OUT_OF_MEMORY;
    CHECK_MSG(st == DSV4_OK, "cuda buffers: %s", dsv4_last_error());
    for (int pi = 0; st == DSV4_OK && pi < NPATHS; pi++) {
        double us = 0;
        const int took = gpu_moe(L, g, paths[pi], N, dh, dsel, dwt, dout, wsg, og, og2, &us, &st);
        CHECK_MSG(st == DSV4_OK, "cuda moe (%s): %s", path_name(paths[pi]), dsv4_last_error());
        if (st != DSV4_OK) break;
        if (!took) {
            printf("moe %-22s N %3d%s%s [%s]: not taken (formats)\n", L->name, N,
                   grid ? " grid" : "", rnames[route], path_name(paths[pi]));
            continue;
        }
        double max_abs = 0, max_rel = 0;
        int64_t equal = 0, nonfinite = 0, rerun = 0;
        for (int r = 0; r < N; r++) {
            float rowmax = 0;
            for (int64_t d = 0; d < D; d++) rowmax = fmaxf(rowmax, fabsf(oc[r * D + d]));
            for (int64_t d = 0; d < D; d++) {
                const float a = og[r * D + d], b = oc[r * D + d];
                if (!isfinite(a) || !isfinite(b)) nonfinite++;
                const double err = fabs((double)a - b), rel = err / fmax(rowmax, 1e-30);
                equal += a == b;
                rerun += memcmp(&og[r * D + d], &og2[r * D + d], 4) != 0;
                if (err > max_abs) max_abs = err;
                if (rel > max_rel) max_rel = rel;
            }
        }
        const double frac = (double)equal / (double)ND, bound = 1.0 / 16;
        printf("moe %-22s N %3d%s%s [%s]: max abs %.3g, max rel %.3g (floor: row max |out|; bound "
               "%.4g), equal %.2f%%%s, rerun diffs %lld; cpu %.0f ms, gpu %.1f us\n",
               L->name, N, grid ? " grid" : "", rnames[route], path_name(paths[pi]), max_abs,
               max_rel, bound, 100 * frac, grid ? " (bound >= 95%)" : "", (long long)rerun,
               1e3 * cpu_s, us);
        CHECK(nonfinite == 0);
        CHECK(max_rel <= bound);
        CHECK(rerun == 0);
        if (grid) CHECK(frac >= 0.95);
        /* the tensor-core path's variants: the same bits as the rule's choice above */
        for (int v = 0; paths[pi] == DSV4_MOE_PATH_MMA && v < NVARIANTS; v++) {
            const variant *x = &variants[v];
            if (x->set == dsv4_cuda_moe_force_shared_slots && x->v > N) continue;
            const int old = x->set(x->v);
            gpu_moe(L, g, paths[pi], N, dh, dsel, dwt, dout, wsg, og2, og2, &us, &st);
            x->set(old);
            int64_t differ = 0;
            for (int64_t i = 0; st == DSV4_OK && i < ND; i++)
                differ += memcmp(&og[i], &og2[i], 4) != 0;
            printf("    %s: %lld of %lld outputs differ from the rule's choice (bound 0)\n",
                   x->what, (long long)differ, (long long)ND);
            CHECK_MSG(st == DSV4_OK && differ == 0, "moe %s N %d: %s: %s", L->name, N, x->what,
                      st == DSV4_OK ? "differs" : dsv4_last_error());
        }
    }
    dsv4_bk_free(g, dh), dsv4_bk_free(g, dwt), dsv4_bk_free(g, dsel), dsv4_bk_free(g, dout);
    dsv4_bk_free(g, wsg);
    free(h), free(oc), free(og), free(og2), free(sel), free(wts), free(wsc);
}

/* dsv4_bk_moe_routed (router + moe in fewer launches; moe_route.cu on the tensor-core path) on
 * each CUDA path for each N of ns in turn (a smaller N after a larger one: stale tickets, list
 * or counter would show), top-k (biased) or hash routing. Against the same path's router +
 * dsv4_bk_moe on the GPU: sel, wts and out bit-equal (the same roundings in the same order;
 * only the launches differ). Against the CPU composition: sel equal, wts and out within the
 * router's and the moe's bounds (file header). */
static void test_routed(const layer *L, dsv4_backend *c, dsv4_backend *g, const int *ns, int nn,
                        int hash)
{
    const int E = L->E, K = L->K, V = 500;
    const int64_t D = L->D;
    int nmax = 0;
    for (int i = 0; i < nn; i++) nmax = ns[i] > nmax ? ns[i] : nmax;
    const int64_t NK = (int64_t)nmax * K, ND = (int64_t)nmax * D;
    const float scale = E == 384 ? 2.5f : 1.5f;
    float *logits = xmalloc((size_t)nmax * E * 4), *bias = xmalloc((size_t)E * 4);
    float *h = xmalloc((size_t)ND * 4);
    int32_t *tab = xmalloc((size_t)V * K * 4), *ids = xmalloc((size_t)nmax * 4);
    for (int64_t i = 0; i < (int64_t)nmax * E; i++) logits[i] = rndu(-4.0f, 4.0f);
    for (int e = 0; e < E; e++) bias[e] = rndu(-0.3f, 0.3f);
    for (int64_t i = 0; i < ND; i++) h[i] = rndu(-2.0f, 2.0f);
    hash_table(tab, V, K, E);
    for (int r = 0; r < nmax; r++) ids[r] = (int32_t)(rnd64() % V);
    const int32_t *use_tab = hash ? tab : NULL;
    const float *use_bias = hash ? NULL : bias;

    const size_t wsb = dsv4_bk_moe_ws_bytes(nmax, K, D, L->I, E);
    int32_t *sc = xmalloc((size_t)NK * 4), *sg = xmalloc((size_t)NK * 4),
            *sr = xmalloc((size_t)NK * 4);
    float *wc = xmalloc((size_t)NK * 4), *wg = xmalloc((size_t)NK * 4),
          *wr = xmalloc((size_t)NK * 4);
    float *oc = xmalloc((size_t)ND * 4), *og = xmalloc((size_t)ND * 4),
          *orf = xmalloc((size_t)ND * 4);
    void *wsc = xmalloc(wsb);
    float *dl = dev_copy(g, logits, (size_t)nmax * E * 4), *db = dev_copy(g, bias, (size_t)E * 4);
    float *dh = dev_copy(g, h, (size_t)ND * 4), *dw = dev_copy(g, NULL, (size_t)NK * 4);
    float *dwr = dev_copy(g, NULL, (size_t)NK * 4), *dout = dev_copy(g, NULL, (size_t)ND * 4);
    float *doutr = dev_copy(g, NULL, (size_t)ND * 4);
    int32_t *dt = dev_copy(g, tab, (size_t)V * K * 4), *di = dev_copy(g, ids, (size_t)nmax * 4);
    int32_t *ds = dev_copy(g, NULL, (size_t)NK * 4), *dsr = dev_copy(g, NULL, (size_t)NK * 4);
    void *wsg = dev_copy(g, NULL, wsb), *wsr = dev_copy(g, NULL, wsb);
    dsv4_status st =
        dl && db && dh && dw && dwr && dout && doutr && dt && di && ds && dsr && wsg && wsr
            ? DSV4_OK
            : DSV4_ERR_OUT_OF_MEMORY;
    CHECK_MSG(st == DSV4_OK, "cuda buffers: %s", dsv4_last_error());
    for (int ni = 0; st == DSV4_OK && ni < nn; ni++) {
        const int N = ns[ni];
        const int64_t nk = (int64_t)N * K, nd = (int64_t)N * D;
        dsv4_bk_rows rc = {N, NULL, NULL, ids}, rg = {N, NULL, NULL, di};
        st = dsv4_bk_moe_routed(c, oc, sc, wc, h, logits, use_bias, use_tab, &rc, L->tc, E, K, D,
                                scale, 10.0f, wsc);
        CHECK_MSG(st == DSV4_OK, "cpu moe_routed: %s", dsv4_last_error());
        for (int pi = 0; st == DSV4_OK && pi < NPATHS; pi++) {
            const int old = dsv4_cuda_moe_force_path(paths[pi]);
            st = dsv4_bk_moe_routed(g, dout, ds, dw, dh, dl, use_bias ? db : NULL,
                                    use_tab ? dt : NULL, &rg, L->tg, E, K, D, scale, 10.0f, wsg);
            const int took = dsv4_cuda_moe_last_path() == paths[pi];
            if (st == DSV4_OK)
                st = dsv4_bk_router(g, dsr, dwr, dl, use_bias ? db : NULL, use_tab ? dt : NULL, &rg,
                                    E, K, scale);
            if (st == DSV4_OK) st = dsv4_bk_moe(g, doutr, dh, dsr, dwr, L->tg, N, K, D, 10.0f, wsr);
            dsv4_cuda_moe_force_path(old);
            if (st == DSV4_OK) st = dsv4_bk_download(g, sg, ds, (size_t)nk * 4);
            if (st == DSV4_OK) st = dsv4_bk_download(g, wg, dw, (size_t)nk * 4);
            if (st == DSV4_OK) st = dsv4_bk_download(g, og, dout, (size_t)nd * 4);
            if (st == DSV4_OK) st = dsv4_bk_download(g, sr, dsr, (size_t)nk * 4);
            if (st == DSV4_OK) st = dsv4_bk_download(g, wr, dwr, (size_t)nk * 4);
            if (st == DSV4_OK) st = dsv4_bk_download(g, orf, doutr, (size_t)nd * 4);
            CHECK_MSG(st == DSV4_OK, "cuda moe_routed (%s): %s", path_name(paths[pi]),
                      dsv4_last_error());
            if (st != DSV4_OK) break;
            const int unfused = memcmp(sg, sr, (size_t)nk * 4) != 0 ||
                                memcmp(wg, wr, (size_t)nk * 4) != 0 ||
                                memcmp(og, orf, (size_t)nd * 4) != 0;
            int sel_bad = 0;
            double w_rel = 0, o_rel = 0;
            for (int64_t i = 0; i < nk; i++) {
                sel_bad += sc[i] != sg[i];
                w_rel = fmax(w_rel, fabs((double)wg[i] - wc[i]) / fmax(fabs((double)wc[i]), 1e-30));
            }
            int64_t nonfinite = 0;
            for (int r = 0; r < N; r++) {
                float rowmax = 0;
                for (int64_t d = 0; d < D; d++) rowmax = fmaxf(rowmax, fabsf(oc[r * D + d]));
                for (int64_t d = 0; d < D; d++) {
                    const float a = og[r * D + d], b = oc[r * D + d];
                    nonfinite += !isfinite(a) || !isfinite(b);
                    o_rel = fmax(o_rel, fabs((double)a - b) / fmax(rowmax, 1e-30));
                }
            }
            printf("moe_routed %-22s N %3d %s [%s%s]: vs router + moe: %s; vs cpu: sel "
                   "mismatches %d (bound 0), wts max rel %.3g (bound %.3g), out max rel %.3g "
                   "(bound %.4g)\n",
                   L->name, N, hash ? "hash" : "top-k", path_name(paths[pi]),
                   took ? "" : ", not taken", unfused ? "DIFFERS" : "bit-equal", sel_bad, w_rel,
                   10.0 * 0x1p-23, o_rel, 1.0 / 16);
            CHECK(!unfused);
            CHECK(sel_bad == 0);
            CHECK(w_rel <= 10.0 * 0x1p-23);
            CHECK(nonfinite == 0);
            CHECK(o_rel <= 1.0 / 16);
        }
    }
    dsv4_bk_free(g, dl), dsv4_bk_free(g, db), dsv4_bk_free(g, dh), dsv4_bk_free(g, dw);
    dsv4_bk_free(g, dwr), dsv4_bk_free(g, dout), dsv4_bk_free(g, doutr), dsv4_bk_free(g, dt);
    dsv4_bk_free(g, di), dsv4_bk_free(g, ds), dsv4_bk_free(g, dsr), dsv4_bk_free(g, wsg);
    dsv4_bk_free(g, wsr);
    free(logits), free(bias), free(h), free(tab), free(ids), free(sc), free(sg), free(sr);
    free(wc), free(wg), free(wr), free(oc), free(og), free(orf), free(wsc);
}

/* Decode timing on `path`: R different routings back to back (the weights of one step are not
 * in L2 from the previous one); bytes = the distinct experts' w1/w2/w3 (data + scales) + the
 * shared one. */
static void bench(const layer *L, dsv4_backend *c, dsv4_backend *g, int N, int path)
{
    enum { R = 16 };
    const int64_t D = L->D, K = L->K, NK = N * K;
    int32_t *sel = xmalloc((size_t)R * NK * 4);
    float *wts = xmalloc((size_t)R * NK * 4), *h = xmalloc((size_t)N * D * 4);
    for (int64_t i = 0; i < N * D; i++) h[i] = rndu(-2, 2);
    uint64_t bytes = 0;
    char *seen = xmalloc((size_t)L->E);
    for (int i = 0; i < R; i++) {
        make_routing(L, c, N, sel + i * NK, wts + i * NK);
        memset(seen, 0, (size_t)L->E);
        for (int64_t j = 0; j < NK; j++) {
            const int e = sel[i * NK + j];
            if (!seen[e]) bytes += expert_bytes(&L->he[e]);
            seen[e] = 1;
        }
        bytes += expert_bytes(&L->hsh);
    }
    const size_t wsb = dsv4_bk_moe_ws_bytes(N, (int)K, D, L->I, L->E);
    int32_t *dsel = dev_copy(g, sel, (size_t)R * NK * 4);
    float *dwt = dev_copy(g, wts, (size_t)R * NK * 4), *dh = dev_copy(g, h, (size_t)N * D * 4);
    float *dout = dev_copy(g, NULL, (size_t)N * D * 4);
    void *wsg = dev_copy(g, NULL, wsb);
    dsv4_status st = dsel && dwt && dh && dout && wsg ? DSV4_OK : DSV4_ERR_OUT_OF_MEMORY;
    const int old = dsv4_cuda_moe_force_path(path);
    for (int i = 0; st == DSV4_OK && i < 2; i++)
        st = dsv4_bk_moe(g, dout, dh, dsel + i * NK, dwt + i * NK, L->tg, N, (int)K, D, 10.0f, wsg);
    const int took = dsv4_cuda_moe_last_path() == path;
    if (st == DSV4_OK) st = dsv4_bk_sync(g);
    if (st == DSV4_OK) st = dsv4_bk_prof_start(g);
    for (int i = 0; st == DSV4_OK && i < R; i++) {
        st = dsv4_bk_moe(g, dout, dh, dsel + i * NK, dwt + i * NK, L->tg, N, (int)K, D, 10.0f, wsg);
        dsv4_bk_prof_mark(g, "moe");
    }
    dsv4_bk_prof_entry pe[2];
    const int np = dsv4_bk_prof_stop(g, pe, 2);
    dsv4_cuda_moe_force_path(old);
    if (!took) {
        printf("bench %s N %3d [%s]: not taken\n", L->name, N, path_name(path));
        dsv4_bk_free(g, dsel), dsv4_bk_free(g, dwt), dsv4_bk_free(g, dh), dsv4_bk_free(g, dout);
        dsv4_bk_free(g, wsg);
        free(sel), free(wts), free(h), free(seen);
        return;
    }
    CHECK_MSG(st == DSV4_OK && np == 1, "bench [%s]: %s", path_name(path), dsv4_last_error());
    if (st == DSV4_OK && np == 1) {
        const double us = 1e3 * pe[0].ms / (double)pe[0].calls;
        printf("bench %s N %3d [%s]: %8.1f us per moe, %7.1f MB of experts per step, %5.0f GB/s "
               "(H100 copy: ~3000)\n",
               L->name, N, path_name(path), us, (double)bytes / R / 1e6,
               (double)bytes / (1e-3 * pe[0].ms) / 1e9);
    }
    dsv4_bk_free(g, dsel), dsv4_bk_free(g, dwt), dsv4_bk_free(g, dh), dsv4_bk_free(g, dout);
    dsv4_bk_free(g, wsg);
    free(sel), free(wts), free(h), free(seen);
}

int main(int argc, char **argv)
{
    const int small = argc > 1 && !strcmp(argv[1], "--small");
    const int profile = argc > 2 && !strcmp(argv[1], "--profile") ? atoi(argv[2]) : 0;
    dsv4_cpu_pool *pool = NULL;
    dsv4_backend *c = NULL, *g = NULL;
    dsv4_status st = dsv4_cpu_pool_create(0, &pool);
    if (st == DSV4_OK) st = dsv4_backend_create(DSV4_DEVICE_CPU, 0, pool, &c);
    if (st == DSV4_OK) st = dsv4_backend_create(DSV4_DEVICE_CUDA, 0, NULL, &g);
    CHECK_MSG(st == DSV4_OK, "backends: %s", dsv4_last_error());
    if (st != DSV4_OK) return test_finish();

    if (profile > 0) { /* only the Flash timing calls of the tensor-core path (for ncu) */
        layer F = {.name = "flash", .D = 4096, .I = 2048, .E = 256, .K = 6, .nd = 256};
        if (layer_make(&F, c, g, DSV4_FORMAT_MXFP4, 0, DSV4_FORMAT_FP8, 0))
            bench(&F, c, g, profile, DSV4_MOE_PATH_MMA);
        layer_free(&F, c, g);
        dsv4_backend_destroy(g);
        dsv4_backend_destroy(c);
        dsv4_cpu_pool_destroy(pool);
        return test_finish();
    }

    /* router: Flash and Pro expert counts */
    const int RN = small ? 9 : 64;
    test_router(c, g, 256, 6, 1, 0);
    test_router(c, g, 256, 6, 1, 2);
    test_router(c, g, 384, 6, 1, 1);
    test_router(c, g, 256, 6, RN, 0);
    test_router(c, g, 256, 6, RN, 2);
    test_router(c, g, 256, 6, RN, 3);
    test_router(c, g, 384, 6, RN, 0);
    test_router(c, g, 384, 6, RN, 1);
    test_router(c, g, 384, 6, RN, 2);
    test_router(c, g, 256, 6, RN, 4);
    /* the router's edges (E, K, kind): E not a multiple of 32 (ties, NaN), K = E, K = MOE_MAX_K
     * (16), more experts than Pro's 384 */
    static const int edges[][3] = {{72, 8, 3},   {72, 8, 4},  {16, 16, 0},
                                   {384, 16, 3}, {512, 8, 0}, {512, 8, 3}};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        test_router(c, g, edges[i][0], edges[i][1], RN, edges[i][2]);
    if (!small) test_router(c, g, 256, 6, 300, 0);

    /* every expert format, small shapes (widths not multiples of 128 or 1024) */
    {
        layer L = {.name = "nvfp4 / bf16 shared", .D = 1536, .I = 352, .E = 16, .K = 4, .nd = 16};
        if (layer_make(&L, c, g, DSV4_FORMAT_NVFP4, 0, DSV4_FORMAT_BF16, 0)) {
            test_moe(&L, c, g, 1, 0, 0);
            test_moe(&L, c, g, 33, 0, 1);
        }
        layer_free(&L, c, g);
        layer M = {
            .name = "fp8-f32 / mxfp4 shared", .D = 1536, .I = 352, .E = 16, .K = 4, .nd = 16};
        if (layer_make(&M, c, g, DSV4_FORMAT_FP8, 1, DSV4_FORMAT_MXFP4, 0)) {
            test_moe(&M, c, g, 5, 0, 0);
            test_moe(&M, c, g, 33, 0, 0);
        }
        layer_free(&M, c, g);
        layer B = {.name = "bf16 / nvfp4 shared", .D = 1024, .I = 256, .E = 8, .K = 2, .nd = 8};
        if (layer_make(&B, c, g, DSV4_FORMAT_BF16, 0, DSV4_FORMAT_NVFP4, 0)) {
            test_moe(&B, c, g, 7, 0, 1);
        }
        layer_free(&B, c, g);
        layer W = {.name = "f16 / f32 shared", .D = 1024, .I = 256, .E = 8, .K = 2, .nd = 8};
        if (layer_make(&W, c, g, DSV4_FORMAT_F16, 0, DSV4_FORMAT_F32, 0))
            test_moe(&W, c, g, 6, 0, 0);
        layer_free(&W, c, g);
        layer S = {.name = "mxfp4 / fp8 small", .D = 1536, .I = 352, .E = 16, .K = 4, .nd = 16};
        if (layer_make(&S, c, g, DSV4_FORMAT_MXFP4, 0, DSV4_FORMAT_FP8, 0)) {
            test_moe(&S, c, g, 1, 0, ROUTE_RANDOM);
            test_moe(&S, c, g, 5, 1, ROUTE_RANDOM);
            test_moe(&S, c, g, 33, 0, ROUTE_RANDOM);
            test_moe(&S, c, g, 12, 0, ROUTE_SAME);
            test_moe(&S, c, g, 4, 1, ROUTE_DISTINCT);
            static const int rn[] = {33, 7, 1, 12};
            test_routed(&S, c, g, rn, 4, 0);
            test_routed(&S, c, g, rn, 4, 1);
        }
        layer_free(&S, c, g);
        /* routing over more experts than 256 threads (the fused kernel's CTA takes E) */
        layer H = {.name = "mxfp4 / fp8 E 384", .D = 1024, .I = 256, .E = 384, .K = 6, .nd = 8};
        if (layer_make(&H, c, g, DSV4_FORMAT_MXFP4, 0, DSV4_FORMAT_FP8, 0)) {
            static const int rn[] = {70, 1, 9};
            test_routed(&H, c, g, rn, 3, 0);
            test_routed(&H, c, g, rn, 3, 1);
            /* N K = 1.125 E: stage 1's 1-group kernel with stage 2's 2-group one (moe_mma_run) */
            test_moe(&H, c, g, 72, 0, ROUTE_RANDOM);
        }
        layer_free(&H, c, g);
        /* the tensor-core path's other format pairs, and K split over 4 / 2 warps (D 4096) */
        layer X = {.name = "mxfp4 / mxfp4 shared", .D = 1024, .I = 256, .E = 8, .K = 2, .nd = 8};
        if (layer_make(&X, c, g, DSV4_FORMAT_MXFP4, 0, DSV4_FORMAT_MXFP4, 0)) {
            test_moe(&X, c, g, 3, 0, ROUTE_RANDOM);
            test_moe(&X, c, g, 11, 1, ROUTE_SAME);
        }
        layer_free(&X, c, g);
        layer Y = {.name = "fp8 / fp8 shared", .D = 1024, .I = 256, .E = 16, .K = 2, .nd = 16};
        if (layer_make(&Y, c, g, DSV4_FORMAT_FP8, 0, DSV4_FORMAT_FP8, 0)) {
            test_moe(&Y, c, g, 8, 0, ROUTE_DISTINCT);
            test_moe(&Y, c, g, 6, 1, ROUTE_DUP);
            test_moe(&Y, c, g, 9, 0, ROUTE_RANDOM); /* 1.125 E, as H's 72 rows */
        }
        layer_free(&Y, c, g);
        /* wider rows, widths a multiple of 512 (D 5120: not a power of two); MXFP4 routed
         * experts with an FP8 shared one and the other way round */
        layer Q = {.name = "mxfp4 / fp8 5120", .D = 5120, .I = 512, .E = 16, .K = 4, .nd = 16};
        if (layer_make(&Q, c, g, DSV4_FORMAT_MXFP4, 0, DSV4_FORMAT_FP8, 0)) {
            test_moe(&Q, c, g, 1, 0, ROUTE_RANDOM);
            test_moe(&Q, c, g, 1, 1, ROUTE_RANDOM);
            test_moe(&Q, c, g, 5, 1, ROUTE_DUP);
            test_moe(&Q, c, g, 33, 0, ROUTE_RANDOM);
            test_moe(&Q, c, g, 13, 0, ROUTE_SAME);
            test_moe(&Q, c, g, 4, 1, ROUTE_DISTINCT);
            test_moe(&Q, c, g, 64, 0, ROUTE_DUP);
        }
        layer_free(&Q, c, g);
        layer R = {.name = "fp8 / mxfp4 4096", .D = 4096, .I = 1536, .E = 8, .K = 2, .nd = 8};
        if (layer_make(&R, c, g, DSV4_FORMAT_FP8, 0, DSV4_FORMAT_MXFP4, 0)) {
            test_moe(&R, c, g, 1, 0, ROUTE_RANDOM);
            test_moe(&R, c, g, 7, 1, ROUTE_SAME);
            test_moe(&R, c, g, 5, 0, ROUTE_DISTINCT);
        }
        layer_free(&R, c, g);
        layer V = {.name = "mxfp4 / fp8 wide", .D = 4096, .I = 2048, .E = 8, .K = 2, .nd = 8};
        if (layer_make(&V, c, g, DSV4_FORMAT_MXFP4, 0, DSV4_FORMAT_FP8, 0)) {
            test_moe(&V, c, g, 3, 1, ROUTE_RANDOM);
            test_moe(&V, c, g, small ? 5 : 17, 0, ROUTE_DUP);
        }
        layer_free(&V, c, g);
    }
    if (!small) {
        layer F = {.name = "flash", .D = 4096, .I = 2048, .E = 256, .K = 6, .nd = 256};
        if (layer_make(&F, c, g, DSV4_FORMAT_MXFP4, 0, DSV4_FORMAT_FP8, 0)) {
            test_moe(&F, c, g, 1, 0, 0);
            test_moe(&F, c, g, 5, 0, 0);
            test_moe(&F, c, g, 64, 0, 0);
            test_moe(&F, c, g, 64, 1, 0);
            test_moe(&F, c, g, 300, 0, 0);
            test_moe(&F, c, g, 24, 0, ROUTE_SAME);
            test_moe(&F, c, g, 40, 0, ROUTE_DISTINCT);
            static const int rn[] = {300, 64, 7, 1};
            test_routed(&F, c, g, rn, 4, 0);
            test_routed(&F, c, g, rn, 4, 1);
            static const int bn[] = {1, 8, 64, 300};
            for (int i = 0; i < 4; i++)
                for (int pi = 0; pi < NPATHS; pi++) bench(&F, c, g, bn[i], paths[pi]);
        }
        layer_free(&F, c, g);
        layer P = {.name = "pro", .D = 7168, .I = 3072, .E = 384, .K = 6, .nd = 32};
        if (layer_make(&P, c, g, DSV4_FORMAT_MXFP4, 0, DSV4_FORMAT_FP8, 0)) {
            test_moe(&P, c, g, 1, 0, 0);
            test_moe(&P, c, g, 5, 1, 0);
            test_moe(&P, c, g, 64, 0, 0);
            static const int rn[] = {64, 1};
            test_routed(&P, c, g, rn, 2, 0);
            test_routed(&P, c, g, rn, 2, 1);
            for (int pi = 0; pi < NPATHS; pi++) bench(&P, c, g, 1, paths[pi]);
            for (int pi = 1; pi < NPATHS; pi++) bench(&P, c, g, 64, paths[pi]);
        }
        layer_free(&P, c, g);
    }
    dsv4_backend_destroy(g);
    dsv4_backend_destroy(c);
    dsv4_cpu_pool_destroy(pool);
    return test_finish();
}
