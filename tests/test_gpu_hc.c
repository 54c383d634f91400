/*
 * test_gpu_hc.c - GPU op test (ctest -L gpu) of dsv4_bk_hc_site, the fused mHC pre-sublayer
 * site: the CUDA kernel (bk_hc.cu) against the CPU op (bk_hc.c: rmsnorm -> linear -> hc_pre ->
 * rmsnorm, the four ops the engine used to call) on seeded random inputs at the Flash (D 4096)
 * and Pro (D 7168) shapes, n = 4, N in {1, 7, 64}; F32 fn (the checkpoints'), BF16 and F16 fn,
 * with and without the norm weight, and several launch shapes (CTAs a cluster, rows a cluster).
 * Then the time of one site at the decode shapes: the four old CUDA ops against the fused op.
 *
 * Bounds: the fused op must stay within the bounds of the ops it replaces (test_gpu_linear,
 * test_gpu_rows), composed stage by stage: each stage of the GPU's result is checked against
 * the CPU op applied to the GPU's own input of that stage.
 *   mix   vs CPU rmsnorm + linear on X:   |d| <= (1e-5 + 2^-21) * 1.001 * S + 1e-35,
 *         S = sum_c |flat_c| |fn_oc|, flat = rmsnorm(X): test_gpu_linear's 1e-5 S (f32 sums in
 *         another order) plus test_gpu_rows' 2^-21 relative on each flat_c (the GPU scales the
 *         sum by rsqrt instead of each element: the same f32 roundings, moved), which moves each
 *         product by 2^-21 of its magnitude; 1.001 covers S's own rounding, as there.
 *   post, comb vs CPU hc_pre on the GPU's mix: 2^-17 relative (test_gpu_rows HC_W: exp 1 ulp,
 *         40 Sinkhorn divisions).
 *   y     vs the same CPU hc_pre: 1 bf16 ulp + 2^-19 * 1.01 * sum_j |X_j| (test_gpu_rows).
 *   h     vs CPU rmsnorm(norm) to bf16 on the GPU's y: 2^-21 relative + 1 bf16 ulp (RMS_BF16).
 * The end-to-end difference against the CPU's own chain is printed, not bounded (how far a
 * 1e-7 change of mix moves 20 Sinkhorn sweeps has no simple closed form; in practice h differs
 * by a bf16 ulp in a few elements). Also: the same call twice gives the same bits, with or
 * without the optional y / mix outputs, and a captured graph replays the eager call's bits.
 *
 * usage: test_gpu_hc [--small]   (--small: D 256 and few rows, for compute-sanitizer)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "core/float_formats.h"
#include "test_util.h"

#include <float.h>
#include <math.h>
#include <stdint.h>

/* bk_hc.cu: the op with a chosen launch shape (cluster 0 / rows 0: the op's own choice). */
dsv4_status dsv4_cuda_bk_hc_site_ex(dsv4_backend *b, float *h, float *y, float *mix, float *post,
                                    float *comb, const float *X, const dsv4_weight *fn,
                                    const float *base, const float *scale, const float *norm,
                                    int64_t N, int n, int64_t D, int iters, float hc_eps,
                                    float rms_eps, int cluster, int rows, int *used_cluster,
                                    int *used_rows);

static dsv4_backend *cpu, *gpu;

enum { ITERS = 20 };
static const float HC_EPS = 1e-6f, RMS_EPS = 1e-6f;

/* ---- random inputs -------------------------------------------------------------------------- */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(void) /* [0, 1) */
{
    return (float)(rng_next() >> 40) * 0x1p-24f;
}

static float rng_normal(void)
{
    const float u = rng_uniform() + 0x1p-25f, v = rng_uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* n values ~ N(0, sigma^2), each run of w values scaled by 2^k, k in -6..5 (streams of one row
 * in different binades, as the residual streams drift apart). */
static float *rand_rows(int64_t n, int64_t w, float sigma)
{
    float *x = malloc((size_t)n * sizeof *x);
    float row_scale = 1.0f;
    for (int64_t i = 0; i < n; i++) {
        if (i % w == 0) row_scale = ldexpf(1.0f, (int)(rng_next() % 12) - 6);
        x[i] = rng_normal() * sigma * row_scale;
    }
    return x;
}

static uint16_t bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_value(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- backend memory ------------------------------------------------------------------------- */
static void ok(dsv4_status st, const char *what)
{
    if (st != DSV4_OK) {
        fprintf(stderr, "%s: %s\n", what, dsv4_last_error());
        exit(2);
    }
}

static void *dev_from(const void *host, size_t bytes)
{
    void *d = NULL;
    ok(dsv4_bk_alloc(gpu, bytes, &d), "device alloc");
    if (host) ok(dsv4_bk_upload(gpu, d, host, bytes), "upload");
    return d;
}

static void host_from(void *host, const void *dev, size_t bytes)
{
    ok(dsv4_bk_download(gpu, host, dev, bytes), "download");
}

/* ---- comparison -----------------------------------------------------------------------------
 * An element passes when the bits are equal (or both NaN), else when
 *   |got - want| <= rel * max(|want|, floor) + bf16_ulps * ulp_bf16(max(|got|, |want|)) + slack[i]
 * (as test_gpu_rows). */
typedef struct bound {
    double rel, floor;
    int bf16_ulps;
    const float *slack;
    const char *why;
} bound;

static double ulp_bf16(double a)
{
    if (a < FLT_MIN) return ldexp(1.0, -133);
    int e;
    (void)frexp(a, &e);
    return ldexp(1.0, e - 1 - 7);
}

static void compare(const char *what, const char *label, const float *got, const float *want,
                    int64_t n, bound b)
{
    double max_abs = 0, max_rel = 0;
    int64_t differ = 0, bad = 0, first_bad = -1;
    for (int64_t i = 0; i < n; i++) {
        const float g = got[i], w = want[i];
        if (memcmp(&g, &w, sizeof g) == 0 || (isnan(g) && isnan(w))) continue;
        differ++;
        const double d = fabs((double)g - (double)w), aw = fabs((double)w);
        const double den = aw > b.floor ? aw : b.floor;
        double lim = b.rel * den;
        if (b.bf16_ulps) {
            const double ag = fabs((double)g);
            lim += b.bf16_ulps * ulp_bf16(ag > aw ? ag : aw);
        }
        if (b.slack) lim += b.slack[i];
        if (!(d <= lim)) {
            if (first_bad < 0) first_bad = i;
            bad++;
        }
        if (!(d <= max_abs)) max_abs = d;
        if (!(d / den <= max_rel)) max_rel = d / den;
    }
    printf("  %-6s %-40s n=%-7lld differ=%-6lld max_abs=%-9.3g max_rel=%-9.3g (floor %.3g) "
           "bound: %s\n",
           what, label, (long long)n, (long long)differ, max_abs, max_rel, b.floor, b.why);
    CHECK_MSG(bad == 0, "%s %s: %lld of %lld elements outside the bound; first [%lld] %.9g vs %.9g",
              what, label, (long long)bad, (long long)n, (long long)first_bad,
              first_bad >= 0 ? got[first_bad] : 0.0, first_bad >= 0 ? want[first_bad] : 0.0);
}

/* The end-to-end difference, printed only. */
static void report(const char *what, const float *got, const float *want, int64_t n)
{
    double max_rel = 0;
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) == 0) continue;
        differ++;
        const double d = fabs((double)got[i] - want[i]) / fmax(fabs((double)want[i]), 1e-3);
        if (!(d <= max_rel)) max_rel = d;
    }
    printf(" %s %lld/%lld differ (max_rel %.3g)", what, (long long)differ, (long long)n, max_rel);
}

static void same_bits(const char *what, const char *label, const float *a, const float *b,
                      int64_t n)
{
    CHECK_MSG(memcmp(a, b, (size_t)n * sizeof(float)) == 0, "%s %s: not the same bits", what,
              label);
}

/* ---- shapes -----------------------------------------------------------------------------------
 */
typedef struct shape {
    const char *name;
    int64_t D;
    int n;
} shape;

static const shape FLASH = {"flash", 4096, 4};
static const shape PRO = {"pro", 7168, 4};
static const shape SMALL = {"small", 256, 4};

/* ---- one set of inputs and the CPU's answers -------------------------------------------------
 */
typedef struct hc_case {
    const shape *s;
    int N, M, with_norm;
    dsv4_weight_format fmt;
    float *X, *base, scale[3], *norm;
    void *fn_data;
    dsv4_weight fn, dfn;
    float *h, *y, *mix, *post, *comb; /* the CPU's chain */
    float *mix_slack, *y_slack;       /* the mix and y bounds' per-element allowances */
    float *dX, *dbase, *dscale, *dnorm, *dh, *dy, *dmix, *dpost, *dcomb;
} hc_case;

static hc_case case_make(const shape *s, int N, dsv4_weight_format fmt, int with_norm)
{
    hc_case c;
    memset(&c, 0, sizeof c);
    c.s = s;
    c.N = N;
    c.fmt = fmt;
    c.with_norm = with_norm;
    const int n = s->n;
    const int64_t D = s->D, nD = n * D, M = (int64_t)(2 + n) * n;
    c.M = (int)M;
    c.X = rand_rows(N * nD, D, 1.0f);
    c.base = rand_rows(M, M, 1.0f);
    c.scale[0] = 0.5f + rng_uniform();
    c.scale[1] = rng_uniform();
    c.scale[2] = 2.0f + rng_uniform();
    if (with_norm) {
        c.norm = rand_rows(D, D, 0.3f);
        for (int64_t i = 0; i < D; i++) c.norm[i] = 1.0f + c.norm[i] * 0.1f;
    }
    /* fn ~ N(0, 1 / nD): mix = fn . flat of unit RMS comes out ~ N(0, 1) */
    const float sigma = 1.0f / sqrtf((float)nD);
    const int64_t ne = M * nD;
    c.fn.name = "hc_fn";
    c.fn.format = fmt;
    c.fn.ndim = 2;
    c.fn.rows = M;
    c.fn.cols = nD;
    c.fn.scale2 = 1.0f;
    if (fmt == DSV4_FORMAT_F32) {
        float *p = malloc((size_t)ne * 4);
        for (int64_t i = 0; i < ne; i++) p[i] = rng_normal() * sigma;
        c.fn.dtype = DSV4_DT_F32;
        c.fn.data_bytes = (uint64_t)ne * 4;
        c.fn_data = p;
    } else if (fmt == DSV4_FORMAT_BF16) {
        uint16_t *p = malloc((size_t)ne * 2);
        for (int64_t i = 0; i < ne; i++) p[i] = bf16_bits(rng_normal() * sigma);
        c.fn.dtype = DSV4_DT_BF16;
        c.fn.data_bytes = (uint64_t)ne * 2;
        c.fn_data = p;
    } else { /* F16: random sign, exponent 2^-10 .. 2^-6, mantissa */
        uint16_t *p = malloc((size_t)ne * 2);
        for (int64_t i = 0; i < ne; i++) {
            const uint64_t r = rng_next();
            p[i] = (uint16_t)(((r & 1) << 15) | ((5 + (r >> 1) % 5) << 10) | ((r >> 8) & 0x3ff));
        }
        c.fn.dtype = DSV4_DT_F16;
        c.fn.data_bytes = (uint64_t)ne * 2;
        c.fn_data = p;
    }
    c.fn.data = c.fn_data;

    /* the CPU's chain */
    c.h = malloc((size_t)(N * D) * 4);
    c.y = malloc((size_t)(N * D) * 4);
    c.mix = malloc((size_t)(N * M) * 4);
    c.post = malloc((size_t)N * n * 4);
    c.comb = malloc((size_t)N * n * n * 4);
    ok(dsv4_cpu_bk_hc_site(cpu, c.h, c.y, c.mix, c.post, c.comb, c.X, &c.fn, c.base, c.scale,
                           c.norm, N, n, D, ITERS, HC_EPS, RMS_EPS),
       "cpu hc_site");

    /* mix bound: S = sum_c |flat_c| |fn_oc| from the CPU's own flat and the decoded fn */
    float *flat = malloc((size_t)(N * nD) * 4), *wrow = malloc((size_t)nD * 4);
    ok(dsv4_cpu_bk_rmsnorm(cpu, flat, nD, c.X, nD, NULL, N, nD, RMS_EPS, 0), "cpu rmsnorm");
    c.mix_slack = malloc((size_t)(N * M) * 4);
    for (int64_t o = 0; o < M; o++) {
        for (int64_t k = 0; k < nD; k++) {
            const int64_t i = o * nD + k;
            wrow[k] = fmt == DSV4_FORMAT_F32    ? ((const float *)c.fn_data)[i]
                      : fmt == DSV4_FORMAT_BF16 ? bf16_value(((const uint16_t *)c.fn_data)[i])
                                                : dsv4_f16_to_f32(((const uint16_t *)c.fn_data)[i]);
        }
        for (int r = 0; r < N; r++) {
            double S = 0;
            for (int64_t k = 0; k < nD; k++) S += fabs((double)flat[r * nD + k]) * fabs(wrow[k]);
            c.mix_slack[r * M + o] = (float)((1e-5 + 0x1p-21) * 1.001 * S + 1e-35);
        }
    }
    free(flat);
    free(wrow);
    /* y bound's slack: 2^-19 * 1.01 * sum_j |X_j| (test_gpu_rows collapse_slack) */
    c.y_slack = malloc((size_t)(N * D) * 4);
    for (int r = 0; r < N; r++)
        for (int64_t d = 0; d < D; d++) {
            float a = 0;
            for (int j = 0; j < n; j++) a += fabsf(c.X[(r * n + j) * D + d]);
            c.y_slack[r * D + d] = 0x1p-19f * 1.01f * a;
        }

    c.dX = dev_from(c.X, (size_t)(N * nD) * 4);
    c.dbase = dev_from(c.base, (size_t)M * 4);
    c.dscale = dev_from(c.scale, sizeof c.scale);
    c.dnorm = with_norm ? dev_from(c.norm, (size_t)D * 4) : NULL;
    ok(dsv4_bk_weight_upload(gpu, &c.fn, 0, &c.dfn), "fn upload");
    c.dh = dev_from(NULL, (size_t)(N * D) * 4);
    c.dy = dev_from(NULL, (size_t)(N * D) * 4);
    c.dmix = dev_from(NULL, (size_t)(N * M) * 4);
    c.dpost = dev_from(NULL, (size_t)N * n * 4);
    c.dcomb = dev_from(NULL, (size_t)N * n * n * 4);
    return c;
}

static void case_free(hc_case *c)
{
    float *dev[] = {c->dX, c->dbase, c->dscale, c->dnorm, c->dh,
                    c->dy, c->dmix,  c->dpost,  c->dcomb};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) dsv4_bk_free(gpu, dev[i]);
    dsv4_bk_weight_free(gpu, &c->dfn);
    float *host[] = {c->X,   c->base, c->norm, c->h,         c->y,
                     c->mix, c->post, c->comb, c->mix_slack, c->y_slack};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
    free(c->fn_data);
}

/* The CUDA op on case c with launch shape (cluster, rows); every stage checked. */
static void check_case(hc_case *c, int cluster, int rows)
{
    const int N = c->N, n = c->s->n, M = c->M;
    const int64_t D = c->s->D;
    int C = 0, R = 0;
    const dsv4_status st = dsv4_cuda_bk_hc_site_ex(
        gpu, c->dh, c->dy, c->dmix, c->dpost, c->dcomb, c->dX, &c->dfn, c->dbase, c->dscale,
        c->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, cluster, rows, &C, &R);
    char label[120];
    snprintf(label, sizeof label, "%s N=%d D=%lld fn %s%s C=%d R=%d", c->s->name, N, (long long)D,
             dsv4_weight_format_name(c->fmt), c->with_norm ? "" : " no-norm", C ? C : cluster,
             R ? R : rows);
    if (st != DSV4_OK && cluster == 16) { /* a non-portable size this GPU need not place */
        printf("  (%s: cluster of 16 not launched: %s)\n", label, dsv4_last_error());
        return;
    }
    ok(st, "cuda hc_site");
    ok(dsv4_bk_sync(gpu), "sync after hc_site");
    printf("%s\n", label);
    float *h = malloc((size_t)(N * D) * 4), *y = malloc((size_t)(N * D) * 4);
    float *mix = malloc((size_t)(N * M) * 4), *post = malloc((size_t)N * n * 4);
    float *comb = malloc((size_t)N * n * n * 4);
    host_from(h, c->dh, (size_t)(N * D) * 4);
    host_from(y, c->dy, (size_t)(N * D) * 4);
    host_from(mix, c->dmix, (size_t)(N * M) * 4);
    host_from(post, c->dpost, (size_t)N * n * 4);
    host_from(comb, c->dcomb, (size_t)N * n * n * 4);

    /* stage 1: mix against the CPU chain's */
    compare("mix", "", mix, c->mix, (int64_t)N * M,
            (bound){0, 1e-3, 0, c->mix_slack, "(1e-5 + 2^-21) * 1.001 * sum|flat||fn|"});
    /* stage 2: hc_pre on the GPU's mix */
    float *y2 = malloc((size_t)(N * D) * 4), *post2 = malloc((size_t)N * n * 4);
    float *comb2 = malloc((size_t)N * n * n * 4), *h3 = malloc((size_t)(N * D) * 4);
    ok(dsv4_cpu_bk_hc_pre(cpu, y2, post2, comb2, c->X, mix, c->base, c->scale, N, n, D, ITERS,
                          HC_EPS),
       "cpu hc_pre");
    const bound HC_W = {0x1p-17, FLT_MIN, 0, NULL, "2^-17 rel (exp 1 ulp, 40 Sinkhorn steps)"};
    compare("post", "(CPU hc_pre on GPU mix)", post, post2, (int64_t)N * n, HC_W);
    compare("comb", "(CPU hc_pre on GPU mix)", comb, comb2, (int64_t)N * n * n, HC_W);
    compare("y", "(CPU hc_pre on GPU mix)", y, y2, N * D,
            (bound){0, 1e-3, 1, c->y_slack, "1 bf16 ulp + 2^-19 sum|X_j| (pre 3 ulp apart)"});
    /* stage 3: the final norm on the GPU's y */
    ok(dsv4_cpu_bk_rmsnorm(cpu, h3, D, y, D, c->norm, N, D, RMS_EPS, 1), "cpu rmsnorm");
    compare("h", "(CPU rmsnorm on GPU y)", h, h3, N * D,
            (bound){0x1p-21, FLT_MIN, 1, NULL, "2^-21 rel + 1 bf16 ulp"});
    /* end to end, printed */
    printf("  end to end vs the CPU chain:");
    report("h", h, c->h, N * D);
    report(" post", post, c->post, (int64_t)N * n);
    report(" comb", comb, c->comb, (int64_t)N * n * n);
    printf("\n");

    /* again, without the optional outputs: the same bits */
    ok(dsv4_cuda_bk_hc_site_ex(gpu, c->dh, NULL, NULL, c->dpost, c->dcomb, c->dX, &c->dfn, c->dbase,
                               c->dscale, c->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, cluster, rows,
                               NULL, NULL),
       "cuda hc_site again");
    float *h_again = malloc((size_t)(N * D) * 4), *post_again = malloc((size_t)N * n * 4);
    float *comb_again = malloc((size_t)N * n * n * 4);
    host_from(h_again, c->dh, (size_t)(N * D) * 4);
    host_from(post_again, c->dpost, (size_t)N * n * 4);
    host_from(comb_again, c->dcomb, (size_t)N * n * n * 4);
    same_bits("h (second call, no y/mix)", label, h_again, h, N * D);
    same_bits("post (second call)", label, post_again, post, (int64_t)N * n);
    same_bits("comb (second call)", label, comb_again, comb, (int64_t)N * n * n);

    float *f[] = {h, y, mix, post, comb, y2, post2, comb2, h3, h_again, post_again, comb_again};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
}

/* ---- timing: the four old ops against the fused op ------------------------------------------
 * NF different fn matrices (together larger than the 50 MB L2) in turn, as the layers' sites
 * read theirs from HBM; X stays (the engine's X was just written by hc_post). Per site: eager
 * (launch after launch, then one sync) and graph replay (NF sites captured once). */
enum { NF = 40 };

typedef struct bench_ctx {
    const shape *s;
    int N, M;
    dsv4_weight fns[NF];
    float *dX, *dflat, *dmix, *dy, *dh, *dpost, *dcomb, *dbase, *dscale, *dnorm;
} bench_ctx;

/* mode 0: the old four ops; else the fused op with cluster = mode - 1 (0: its own choice) */
static void bench_site(bench_ctx *b, int i, int mode, int rows)
{
    const int n = b->s->n, M = b->M, N = b->N;
    const int64_t D = b->s->D, nD = n * D;
    const dsv4_weight *fn = &b->fns[i % NF];
    if (mode == 0) {
        ok(dsv4_cuda_bk_rmsnorm(gpu, b->dflat, nD, b->dX, nD, NULL, N, nD, RMS_EPS, 0), "rmsnorm");
        ok(dsv4_cuda_bk_linear(gpu, fn, 0, M, b->dflat, nD, N, b->dmix, M, 0), "linear");
        ok(dsv4_cuda_bk_hc_pre(gpu, b->dy, b->dpost, b->dcomb, b->dX, b->dmix, b->dbase, b->dscale,
                               N, n, D, ITERS, HC_EPS),
           "hc_pre");
        ok(dsv4_cuda_bk_rmsnorm(gpu, b->dh, D, b->dy, D, b->dnorm, N, D, RMS_EPS, 1), "rmsnorm");
    } else {
        ok(dsv4_cuda_bk_hc_site_ex(gpu, b->dh, NULL, NULL, b->dpost, b->dcomb, b->dX, fn, b->dbase,
                                   b->dscale, b->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, mode - 1,
                                   rows, NULL, NULL),
           "hc_site");
    }
}

/* Microseconds per site: *eager, *graph. */
static void bench_time(bench_ctx *b, int mode, int rows, double *eager, double *graph)
{
    for (int i = 0; i < NF; i++) bench_site(b, i, mode, rows);
    ok(dsv4_bk_sync(gpu), "sync");
    const int reps = 5;
    double t0 = test_now();
    for (int i = 0; i < reps * NF; i++) bench_site(b, i, mode, rows);
    ok(dsv4_bk_sync(gpu), "sync");
    *eager = (test_now() - t0) * 1e6 / (reps * NF);
    void *g = NULL;
    ok(dsv4_bk_graph_begin(gpu), "graph begin");
    for (int i = 0; i < NF; i++) bench_site(b, i, mode, rows);
    ok(dsv4_bk_graph_end(gpu, &g), "graph end");
    ok(dsv4_bk_graph_launch(gpu, g), "graph launch");
    ok(dsv4_bk_sync(gpu), "sync");
    const int greps = 10;
    t0 = test_now();
    for (int r = 0; r < greps; r++) ok(dsv4_bk_graph_launch(gpu, g), "graph launch");
    ok(dsv4_bk_sync(gpu), "sync");
    *graph = (test_now() - t0) * 1e6 / (greps * NF);
    dsv4_bk_graph_free(gpu, g);
}

static void bench(const shape *s, int N)
{
    bench_ctx b;
    memset(&b, 0, sizeof b);
    b.s = s;
    b.N = N;
    const int n = s->n;
    const int64_t D = s->D, nD = n * D, M = (int64_t)(2 + n) * n;
    b.M = (int)M;
    for (int i = 0; i < NF; i++) {
        dsv4_weight w;
        memset(&w, 0, sizeof w);
        w.name = "hc_fn";
        w.format = DSV4_FORMAT_F32;
        w.dtype = DSV4_DT_F32;
        w.ndim = 2;
        w.rows = M;
        w.cols = nD;
        w.data_bytes = (uint64_t)(M * nD) * 4;
        w.scale2 = 1.0f;
        ok(dsv4_bk_weight_upload(gpu, &w, 1000 + (uint64_t)i, &b.fns[i]), "random fn");
    }
    float *X = rand_rows(N * nD, D, 1.0f), *base = rand_rows(M, M, 1.0f);
    float *norm = rand_rows(D, D, 0.1f), scale[3] = {1.0f, 0.5f, 2.5f};
    b.dX = dev_from(X, (size_t)(N * nD) * 4);
    b.dflat = dev_from(NULL, (size_t)(N * nD) * 4);
    b.dmix = dev_from(NULL, (size_t)(N * M) * 4);
    b.dy = dev_from(NULL, (size_t)(N * D) * 4);
    b.dh = dev_from(NULL, (size_t)(N * D) * 4);
    b.dpost = dev_from(NULL, (size_t)N * n * 4);
    b.dcomb = dev_from(NULL, (size_t)N * n * n * 4);
    b.dbase = dev_from(base, (size_t)M * 4);
    b.dscale = dev_from(scale, sizeof scale);
    b.dnorm = dev_from(norm, (size_t)D * 4);

    int C = 0, R = 0;
    ok(dsv4_cuda_bk_hc_site_ex(gpu, b.dh, NULL, NULL, b.dpost, b.dcomb, b.dX, &b.fns[0], b.dbase,
                               b.dscale, b.dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, 0, 0, &C, &R),
       "hc_site");
    double oe, og, ne, ng;
    bench_time(&b, 0, 0, &oe, &og);
    bench_time(&b, 1, 0, &ne, &ng);
    printf("bench %-5s N=%-3d (fn %.2f MB, %d in turn) old 4 ops: %8.1f us eager %8.1f us graph | "
           "fused C=%d R=%d: %6.1f us eager %6.1f us graph (%.1fx)\n",
           s->name, N, (double)(M * nD * 4) / 1e6, NF, oe, og, C, R, ne, ng, og / ng);
    /* graph replay == eager, bit for bit: the graph's last site is fn NF-1 */
    float *hg = malloc((size_t)(N * D) * 4), *he = malloc((size_t)(N * D) * 4);
    host_from(hg, b.dh, (size_t)(N * D) * 4);
    bench_site(&b, NF - 1, 1, 0);
    ok(dsv4_bk_sync(gpu), "sync");
    host_from(he, b.dh, (size_t)(N * D) * 4);
    char l[64];
    snprintf(l, sizeof l, "%s N=%d", s->name, N);
    same_bits("h (graph replay vs eager)", l, hg, he, N * D);
    /* other launch shapes, graph replay */
    static const int shapes[][2] = {{16, 0}, {8, 1}, {8, 2}, {8, 4}, {8, 8}, {16, 1}, {16, 4}};
    printf("      launch shapes (graph us/site):");
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const int c = shapes[k][0], r = shapes[k][1];
        if (r && (N + r - 1) / r > 64) continue; /* many waves: not a decode shape */
        dsv4_status st = dsv4_cuda_bk_hc_site_ex(gpu, b.dh, NULL, NULL, b.dpost, b.dcomb, b.dX,
                                                 &b.fns[0], b.dbase, b.dscale, b.dnorm, N, n, D,
                                                 ITERS, HC_EPS, RMS_EPS, c, r, &C, &R);
        if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
        if (st != DSV4_OK) {
            printf(" C=%d R=%d: %s;", c, r, dsv4_last_error());
            continue;
        }
        double e1, g1;
        bench_time(&b, c + 1, r, &e1, &g1);
        printf(" C=%d R=%d %.1f;", C, R, g1);
    }
    printf("\n");
    free(hg);
    free(he);
    free(X);
    free(base);
    free(norm);
    float *dev[] = {b.dX,    b.dflat, b.dmix,  b.dy,     b.dh,
                    b.dpost, b.dcomb, b.dbase, b.dscale, b.dnorm};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) dsv4_bk_free(gpu, dev[i]);
    for (int i = 0; i < NF; i++) dsv4_bk_weight_free(gpu, &b.fns[i]);
}

int main(int argc, char **argv)
{
    const int small = argc > 1 && strcmp(argv[1], "--small") == 0;
    dsv4_cpu_pool *pool = NULL;
    ok(dsv4_cpu_pool_create(0, &pool), "pool");
    ok(dsv4_backend_create(DSV4_DEVICE_CPU, 0, pool, &cpu), "cpu backend");
    ok(dsv4_backend_create(DSV4_DEVICE_CUDA, 0, NULL, &gpu), "cuda backend");
    rng_state = 0x5eed00c0ull;
    const double t0 = test_now();

    if (small) {
        for (int N = 1; N <= 5; N += 4) {
            hc_case c = case_make(&SMALL, N, DSV4_FORMAT_F32, 1);
            check_case(&c, 0, 0);
            check_case(&c, 16, 2);
            check_case(&c, 2, 8);
            case_free(&c);
        }
        hc_case c = case_make(&SMALL, 3, DSV4_FORMAT_BF16, 0);
        check_case(&c, 0, 0);
        case_free(&c);
    } else {
        const shape *shapes[] = {&FLASH, &PRO};
        static const int Ns[] = {1, 7, 64};
        for (int si = 0; si < 2; si++)
            for (int ni = 0; ni < 3; ni++) {
                hc_case c = case_make(shapes[si], Ns[ni], DSV4_FORMAT_F32, 1);
                check_case(&c, 0, 0);
                if (Ns[ni] > 1) { /* other launch shapes on the same inputs */
                    check_case(&c, 16, 0);
                    check_case(&c, 8, 8);
                    check_case(&c, 4, 2);
                    check_case(&c, 1, 1);
                }
                case_free(&c);
            }
        hc_case c = case_make(&FLASH, 7, DSV4_FORMAT_BF16, 0);
        check_case(&c, 0, 0);
        case_free(&c);
        c = case_make(&PRO, 3, DSV4_FORMAT_F16, 1);
        check_case(&c, 0, 0);
        case_free(&c);

        for (int si = 0; si < 2; si++) {
            bench(shapes[si], 1);
            bench(shapes[si], 7);
            bench(shapes[si], 64);
        }
    }
    printf("total %.1f s\n", test_now() - t0);
    dsv4_backend_destroy(gpu);
    dsv4_backend_destroy(cpu);
    dsv4_cpu_pool_destroy(pool);
    return test_finish();
}
