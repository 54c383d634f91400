/*
 * test_gpu_hc.c - GPU op test (ctest -L gpu) of the fused mHC ops of bk_hc.cu against their CPU
 * implementations (bk_hc.c: the CPU ops the engine used to call, composed) on seeded random
 * inputs at the Flash (D 4096) and Pro (D 7168) shapes, n = 4, N in {1, 2, 7, 64}:
 *   hc_site       rmsnorm -> linear -> hc_pre -> rmsnorm; F32 fn (the checkpoints'), BF16 and
 *                 F16 fn, with and without the norm weight, several launch shapes (CTAs a
 *                 cluster, rows a cluster);
 *   hc_seam       hc_post -> hc_site; and its halves: the seam without post / comb (fn's
 *                 first n rows) and hc_seam_weights (post / comb from fn's other rows);
 *   hc_head_site  [hc_post ->] rmsnorm -> linear (n rows) -> hc_head -> rmsnorm.
 * Then the time of each at the decode shapes (N = 1, 7, 8 .. 64) against the ops it replaces, a
 * traced seam launch (the clock at the end of each of its phases, bk_hc.cu TR_*) and the seam's
 * time at other launch shapes.
 *
 * What is bit-identical to the CPU: the post-mix X' (hc_post's f32 operations in its order, then
 * bf16), and xq = act_quant(h) against the CPU act_quant of the GPU's own h. What is bounded: the
 * fn projection, whose f32 sums run in another order than the CPU's (a split-K over the GPU's SMs
 * cannot reproduce the CPU's serial 16-lane FMA chains, and the CPU's own order differs between its
 * AVX2 and scalar kernels and between 1 and more rows), and what follows from it. The fused ops
 * must stay within the bounds of the ops they replace (test_gpu_linear, test_gpu_rows), composed
 * stage by stage: each stage of the GPU's result is checked against the CPU op applied to the GPU's
 * own input of that stage. mix   vs CPU rmsnorm + linear on X:   |d| <= (1e-5 + 2^-21) * 1.001 * S
 * + 1e-35, S = sum_c |flat_c| |fn_oc|, flat = rmsnorm(X): test_gpu_linear's 1e-5 S (f32 sums in
 *         another order) plus test_gpu_rows' 2^-21 relative on each flat_c (the GPU scales the
 *         sum by rsqrt instead of each element: the same f32 roundings, moved), which moves each
 *         product by 2^-21 of its magnitude; 1.001 covers S's own rounding, as there.
 *   post, comb vs CPU hc_pre on the GPU's mix: 2^-17 relative (test_gpu_rows HC_W: exp 1 ulp,
 *         40 Sinkhorn divisions).
 *   y     vs the same CPU hc_pre (hc_head for the head): 1 bf16 ulp + 2^-19 * 1.01 * sum_j |X_j|
 *         (test_gpu_rows: pre a few ulp apart through exp).
 *   h     vs CPU rmsnorm(norm) to bf16 on the GPU's y: 2^-21 relative + 1 bf16 ulp (RMS_BF16).
 * The end-to-end difference against the CPU's own chain is printed, not bounded (how far a
 * 1e-7 change of mix moves 20 Sinkhorn sweeps has no simple closed form; in practice h differs
 * by a bf16 ulp in a few elements). Exact GPU identities: the seam gives the bits of the GPU's
 * hc_site on the CPU's X' with the same launch shape (and so of hc_post -> hc_site); the head
 * with its post-mix gives the bits of the head on the CPU's X'; post / comb updated in place
 * give the bits of separate buffers; the seam's two halves give the whole seam's bits (Xo, h, xq;
 * post, comb), on the GPU with the same launch shape (theirs too: each plans for half the GPU)
 * and on the CPU, and so do the seam's kernels of one and of two CTAs an SM; the same call twice
 * gives the same bits, with or without the optional y / mix outputs, and a captured graph replays
 * the eager call's bits.
 *
 * usage: test_gpu_hc [--small]   (--small: D 256 and few rows, for compute-sanitizer)
 *        test_gpu_hc --profile flash|pro N   (only the bench's seam launches, 40 fn in turn:
 *        for a profiler, e.g. ncu -k regex:hc_site_kernel --launch-skip 39 --launch-count 1)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "core/float_formats.h"
#include "test_rand.h"
#include "test_util.h"

#include <float.h>
#include <math.h>
#include <stdint.h>

/* bk_hc.cu: the ops with a chosen launch shape (cluster 0 / rows 0: the op's own choice). */
dsv4_status dsv4_cuda_bk_hc_site_ex(dsv4_backend *b, float *h, float *xq, float *y, float *mix,
                                    float *post, float *comb, const float *X, const dsv4_weight *fn,
                                    const float *base, const float *scale, const float *norm,
                                    int64_t N, int n, int64_t D, int iters, float hc_eps,
                                    float rms_eps, int cluster, int rows, int *used_cluster,
                                    int *used_rows);
dsv4_status dsv4_cuda_bk_hc_seam_ex(dsv4_backend *b, float *h, float *xq, float *y, float *mix,
                                    float *Xo, float *post, float *comb, const float *X,
                                    const float *f, const float *post_in, const float *comb_in,
                                    const dsv4_weight *fn, const float *base, const float *scale,
                                    const float *norm, int64_t N, int n, int64_t D, int iters,
                                    float hc_eps, float rms_eps, int cluster, int rows,
                                    int *used_cluster, int *used_rows, long long *trace);
dsv4_status dsv4_cuda_bk_hc_seam_weights_ex(dsv4_backend *b, float *post, float *comb,
                                            const float *X, const float *f, const float *post_in,
                                            const float *comb_in, const dsv4_weight *fn,
                                            const float *base, const float *scale, int64_t N, int n,
                                            int64_t D, int iters, float hc_eps, float rms_eps,
                                            int cluster, int rows, int *used_cluster,
                                            int *used_rows);
dsv4_status dsv4_cuda_bk_hc_head_site_ex(dsv4_backend *b, float *h, float *y, float *mix, float *Xo,
                                         const float *X, const float *f, const float *post_in,
                                         const float *comb_in, const dsv4_weight *fn,
                                         const float *base, float scale, const float *norm,
                                         int64_t N, int n, int64_t D, float hc_eps, float rms_eps,
                                         int cluster, int rows, int *used_cluster, int *used_rows);
/* bk_hc.cu: the kernels of two CTAs an SM forced on (1, where they fit) or off (-1); 0: the
 * launch plan's rule. Returns the previous setting. */
int dsv4_cuda_hc_force_two(int mode);

static dsv4_backend *cpu, *gpu;

enum { ITERS = 20 };
static const float HC_EPS = 1e-6f, RMS_EPS = 1e-6f;

static float bf16_value(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* rand_rows rounded to bf16: the residual streams and the sublayer outputs are bf16 values. */
static float *rand_rows_bf16(int64_t n, int64_t w, float sigma)
{
    float *x = rand_rows(n, w, sigma);
    for (int64_t i = 0; i < n; i++) x[i] = bf16_value(bf16_bits(x[i]));
    return x;
}

/* post_in in (0, 2) and comb_in in (0, 1), as hc_weights leaves them. */
static float *rand_unit(int64_t n, float scale)
{
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = scale * (rng_uniform() + 0x1p-20f);
    return x;
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

static float *host_from(const void *dev, size_t bytes)
{
    float *h = malloc(bytes);
    ok(dsv4_bk_download(gpu, h, dev, bytes), "download");
    return h;
}

/* ---- comparison (bound: test_rand.h) --------------------------------------------------------- */
static void compare(const char *what, const char *label, const float *got, const float *want,
                    int64_t n, bound b)
{
    const bound_result r = bound_scan(got, want, n, b);
    printf("  %-6s %-40s n=%-7lld differ=%-6lld max_abs=%-9.3g max_rel=%-9.3g (floor %.3g) "
           "bound: %s\n",
           what, label, (long long)n, (long long)r.differ, r.max_abs, r.max_rel, b.floor, b.why);
    CHECK_MSG(
        r.bad == 0, "%s %s: %lld of %lld elements outside the bound; first [%lld] %.9g vs %.9g",
        what, label, (long long)r.bad, (long long)n, (long long)r.first_bad,
        r.first_bad >= 0 ? got[r.first_bad] : 0.0, r.first_bad >= 0 ? want[r.first_bad] : 0.0);
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
    int64_t first = -1;
    for (int64_t i = 0; i < n && first < 0; i++)
        if (memcmp(&a[i], &b[i], sizeof(float))) first = i;
    CHECK_MSG(first < 0, "%s %s: not the same bits, first [%lld] %.9g vs %.9g", what, label,
              (long long)first, first >= 0 ? a[first] : 0.0, first >= 0 ? b[first] : 0.0);
}

static void free_all(float **p, size_t n)
{
    for (size_t i = 0; i < n; i++) free(p[i]);
}

static void dev_free_all(float **p, size_t n)
{
    for (size_t i = 0; i < n; i++) dsv4_bk_free(gpu, p[i]);
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

/* ---- fn matrices and the bounds' allowances -------------------------------------------------- */

/* A random fn [M, nD] in format fmt, ~ N(0, 1 / nD) so that fn . flat of unit RMS comes out
 * ~ N(0, 1); *data: the host bytes (fn->data points at them). */
static void make_fn(dsv4_weight_format fmt, int64_t M, int64_t nD, dsv4_weight *fn, void **data)
{
    const float sigma = 1.0f / sqrtf((float)nD);
    const int64_t ne = M * nD;
    memset(fn, 0, sizeof *fn);
    fn->name = "hc_fn";
    fn->format = fmt;
    fn->ndim = 2;
    fn->rows = M;
    fn->cols = nD;
    fn->scale2 = 1.0f;
    if (fmt == DSV4_FORMAT_F32) {
        float *p = malloc((size_t)ne * 4);
        for (int64_t i = 0; i < ne; i++) p[i] = rng_normal() * sigma;
        fn->dtype = DSV4_DT_F32;
        fn->data_bytes = (uint64_t)ne * 4;
        *data = p;
    } else if (fmt == DSV4_FORMAT_BF16) {
        uint16_t *p = malloc((size_t)ne * 2);
        for (int64_t i = 0; i < ne; i++) p[i] = bf16_bits(rng_normal() * sigma);
        fn->dtype = DSV4_DT_BF16;
        fn->data_bytes = (uint64_t)ne * 2;
        *data = p;
    } else { /* F16: random sign, exponent 2^-10 .. 2^-6, mantissa */
        uint16_t *p = malloc((size_t)ne * 2);
        for (int64_t i = 0; i < ne; i++) {
            const uint64_t r = rng_next();
            p[i] = (uint16_t)(((r & 1) << 15) | ((5 + (r >> 1) % 5) << 10) | ((r >> 8) & 0x3ff));
        }
        fn->dtype = DSV4_DT_F16;
        fn->data_bytes = (uint64_t)ne * 2;
        *data = p;
    }
    fn->data = *data;
}

/* The mix bound's allowance [N, M]: (1e-5 + 2^-21) * 1.001 * S + 1e-35, S = sum_c |flat_c|
 * |fn_oc| from the CPU's own flat = rmsnorm(X) and the decoded fn. */
static float *mix_slack(const dsv4_weight *fn, const float *X, int N, int64_t M, int64_t nD)
{
    float *flat = malloc((size_t)(N * nD) * 4), *wrow = malloc((size_t)nD * 4);
    ok(dsv4_cpu_bk_rmsnorm(cpu, flat, nD, X, nD, NULL, N, nD, RMS_EPS, 0), "cpu rmsnorm");
    float *slack = malloc((size_t)(N * M) * 4);
    for (int64_t o = 0; o < M; o++) {
        for (int64_t k = 0; k < nD; k++) {
            const int64_t i = o * nD + k;
            wrow[k] = fn->format == DSV4_FORMAT_F32 ? ((const float *)fn->data)[i]
                      : fn->format == DSV4_FORMAT_BF16
                          ? bf16_value(((const uint16_t *)fn->data)[i])
                          : dsv4_f16_to_f32(((const uint16_t *)fn->data)[i]);
        }
        for (int r = 0; r < N; r++) {
            double S = 0;
            for (int64_t k = 0; k < nD; k++) S += fabs((double)flat[r * nD + k]) * fabs(wrow[k]);
            slack[r * M + o] = (float)((1e-5 + 0x1p-21) * 1.001 * S + 1e-35);
        }
    }
    free(flat);
    free(wrow);
    return slack;
}

/* The y bound's allowance [N, D]: 2^-19 * 1.01 * sum_j |X_j| (test_gpu_rows collapse_slack). */
static float *y_slack(const float *X, int N, int n, int64_t D)
{
    float *s = malloc((size_t)(N * D) * 4);
    for (int r = 0; r < N; r++)
        for (int64_t d = 0; d < D; d++) {
            float a = 0;
            for (int j = 0; j < n; j++) a += fabsf(X[(r * n + j) * D + d]);
            s[r * D + d] = 0x1p-19f * 1.01f * a;
        }
    return s;
}

/* ---- the site: one set of inputs and the CPU's answers --------------------------------------- */
typedef struct hc_case {
    const shape *s;
    int N, M, with_norm;
    dsv4_weight_format fmt;
    float *X, *base, scale[3], *norm;
    void *fn_data;
    dsv4_weight fn, dfn;
    float *h, *y, *mix, *post, *comb; /* the CPU's chain */
    float *mix_slack, *y_slack;       /* the mix and y bounds' per-element allowances */
    float *dX, *dbase, *dscale, *dnorm, *dh, *dxq, *dy, *dmix, *dpost, *dcomb;
} hc_case;

/* X: the streams (copied), or NULL for random ones. */
static hc_case case_make(const shape *s, int N, dsv4_weight_format fmt, int with_norm,
                         const float *X)
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
    if (X) {
        c.X = malloc((size_t)(N * nD) * 4);
        memcpy(c.X, X, (size_t)(N * nD) * 4);
    } else {
        c.X = rand_rows(N * nD, D, 1.0f);
    }
    c.base = rand_rows(M, M, 1.0f);
    c.scale[0] = 0.5f + rng_uniform();
    c.scale[1] = rng_uniform();
    c.scale[2] = 2.0f + rng_uniform();
    if (with_norm) {
        c.norm = rand_rows(D, D, 0.3f);
        for (int64_t i = 0; i < D; i++) c.norm[i] = 1.0f + c.norm[i] * 0.1f;
    }
    make_fn(fmt, M, nD, &c.fn, &c.fn_data);

    /* the CPU's chain */
    c.h = malloc((size_t)(N * D) * 4);
    c.y = malloc((size_t)(N * D) * 4);
    c.mix = malloc((size_t)(N * M) * 4);
    c.post = malloc((size_t)N * n * 4);
    c.comb = malloc((size_t)N * n * n * 4);
    ok(dsv4_cpu_bk_hc_site(cpu, c.h, NULL, c.y, c.mix, c.post, c.comb, c.X, &c.fn, c.base, c.scale,
                           c.norm, N, n, D, ITERS, HC_EPS, RMS_EPS),
       "cpu hc_site");
    c.mix_slack = mix_slack(&c.fn, c.X, N, M, nD);
    c.y_slack = y_slack(c.X, N, n, D);

    c.dX = dev_from(c.X, (size_t)(N * nD) * 4);
    c.dbase = dev_from(c.base, (size_t)M * 4);
    c.dscale = dev_from(c.scale, sizeof c.scale);
    c.dnorm = with_norm ? dev_from(c.norm, (size_t)D * 4) : NULL;
    ok(dsv4_bk_weight_upload(gpu, &c.fn, 0, &c.dfn), "fn upload");
    c.dh = dev_from(NULL, (size_t)(N * D) * 4);
    c.dxq = dev_from(NULL, (size_t)(N * D) * 4);
    c.dy = dev_from(NULL, (size_t)(N * D) * 4);
    c.dmix = dev_from(NULL, (size_t)(N * M) * 4);
    c.dpost = dev_from(NULL, (size_t)N * n * 4);
    c.dcomb = dev_from(NULL, (size_t)N * n * n * 4);
    return c;
}

static void case_free(hc_case *c)
{
    float *dev[] = {c->dX,  c->dbase, c->dscale, c->dnorm, c->dh,
                    c->dxq, c->dy,    c->dmix,   c->dpost, c->dcomb};
    dev_free_all(dev, sizeof dev / sizeof *dev);
    dsv4_bk_weight_free(gpu, &c->dfn);
    float *host[] = {c->X,   c->base, c->norm, c->h,         c->y,
                     c->mix, c->post, c->comb, c->mix_slack, c->y_slack};
    free_all(host, sizeof host / sizeof *host);
    free(c->fn_data);
}

/* The site's outputs downloaded. */
typedef struct site_out {
    float *h, *y, *mix, *post, *comb;
} site_out;

static site_out site_download(const hc_case *c, float *dh, float *dy, float *dmix, float *dpost,
                              float *dcomb)
{
    const int N = c->N, n = c->s->n;
    const int64_t D = c->s->D;
    site_out o = {host_from(dh, (size_t)(N * D) * 4),
                  dy ? host_from(dy, (size_t)(N * D) * 4) : NULL,
                  dmix ? host_from(dmix, (size_t)(N * c->M) * 4) : NULL,
                  host_from(dpost, (size_t)N * n * 4), host_from(dcomb, (size_t)N * n * n * 4)};
    return o;
}

static void site_out_free(site_out *o)
{
    float *p[] = {o->h, o->y, o->mix, o->post, o->comb};
    free_all(p, 5);
}

/* Every stage of a GPU site's result o on case c (see the header). */
static void check_stages(const hc_case *c, const site_out *o)
{
    const int N = c->N, n = c->s->n, M = c->M;
    const int64_t D = c->s->D;
    /* stage 1: mix against the CPU chain's */
    compare("mix", "", o->mix, c->mix, (int64_t)N * M,
            (bound){0, 1e-3, 0, c->mix_slack, "(1e-5 + 2^-21) * 1.001 * sum|flat||fn|"});
    /* stage 2: hc_pre on the GPU's mix */
    float *y2 = malloc((size_t)(N * D) * 4), *post2 = malloc((size_t)N * n * 4);
    float *comb2 = malloc((size_t)N * n * n * 4), *h3 = malloc((size_t)(N * D) * 4);
    ok(dsv4_cpu_bk_hc_pre(cpu, y2, post2, comb2, c->X, o->mix, c->base, c->scale, N, n, D, ITERS,
                          HC_EPS),
       "cpu hc_pre");
    const bound HC_W = {0x1p-17, FLT_MIN, 0, NULL, "2^-17 rel (exp 1 ulp, 40 Sinkhorn steps)"};
    compare("post", "(CPU hc_pre on GPU mix)", o->post, post2, (int64_t)N * n, HC_W);
    compare("comb", "(CPU hc_pre on GPU mix)", o->comb, comb2, (int64_t)N * n * n, HC_W);
    compare("y", "(CPU hc_pre on GPU mix)", o->y, y2, N * D,
            (bound){0, 1e-3, 1, c->y_slack, "1 bf16 ulp + 2^-19 sum|X_j| (pre 3 ulp apart)"});
    /* stage 3: the final norm on the GPU's y */
    ok(dsv4_cpu_bk_rmsnorm(cpu, h3, D, o->y, D, c->norm, N, D, RMS_EPS, 1), "cpu rmsnorm");
    compare("h", "(CPU rmsnorm on GPU y)", o->h, h3, N * D,
            (bound){0x1p-21, FLT_MIN, 1, NULL, "2^-21 rel + 1 bf16 ulp"});
    /* end to end, printed */
    printf("  end to end vs the CPU chain:");
    report("h", o->h, c->h, N * D);
    report(" post", o->post, c->post, (int64_t)N * n);
    report(" comb", o->comb, c->comb, (int64_t)N * n * n);
    printf("\n");
    float *f[] = {y2, post2, comb2, h3};
    free_all(f, 4);
}

/* xq = act_quant(h) (block 128) in c->dxq against the CPU act_quant of the GPU's h: the same bits
 * (the kernel runs act_quant_kernel's operations; h is already bf16). */
static void check_xq(const hc_case *c, const float *h, const char *label)
{
    const int64_t ND = c->N * c->s->D;
    float *xq = host_from(c->dxq, (size_t)ND * 4), *want = malloc((size_t)ND * 4);
    ok(dsv4_cpu_bk_act_quant(cpu, want, c->s->D, h, c->s->D, c->N, c->s->D, 128), "act_quant");
    same_bits("xq vs CPU act_quant(h)", label, xq, want, ND);
    free(xq);
    free(want);
}

/* The CUDA site on case c with launch shape (cluster, rows); every stage checked. */
static void check_case(hc_case *c, int cluster, int rows)
{
    const int N = c->N, n = c->s->n;
    const int64_t D = c->s->D;
    int C = 0, R = 0;
    const dsv4_status st = dsv4_cuda_bk_hc_site_ex(
        gpu, c->dh, c->dxq, c->dy, c->dmix, c->dpost, c->dcomb, c->dX, &c->dfn, c->dbase, c->dscale,
        c->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, cluster, rows, &C, &R);
    char label[120];
    snprintf(label, sizeof label, "site %s N=%d D=%lld fn %s%s C=%d R=%d", c->s->name, N,
             (long long)D, dsv4_weight_format_name(c->fmt), c->with_norm ? "" : " no-norm",
             C ? C : cluster, R ? R : rows);
    if (st != DSV4_OK && cluster == 16) { /* a non-portable size this GPU need not place */
        printf("  (%s: cluster of 16 not launched: %s)\n", label, dsv4_last_error());
        return;
    }
    ok(st, "cuda hc_site");
    ok(dsv4_bk_sync(gpu), "sync after hc_site");
    printf("%s\n", label);
    site_out o = site_download(c, c->dh, c->dy, c->dmix, c->dpost, c->dcomb);
    check_stages(c, &o);
    check_xq(c, o.h, label);

    /* again, without the optional outputs: the same bits */
    ok(dsv4_cuda_bk_hc_site_ex(gpu, c->dh, NULL, NULL, NULL, c->dpost, c->dcomb, c->dX, &c->dfn,
                               c->dbase, c->dscale, c->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS,
                               cluster, rows, NULL, NULL),
       "cuda hc_site again");
    site_out a = site_download(c, c->dh, NULL, NULL, c->dpost, c->dcomb);
    same_bits("h (second call, no y/mix)", label, a.h, o.h, N * D);
    same_bits("post (second call)", label, a.post, o.post, (int64_t)N * n);
    same_bits("comb (second call)", label, a.comb, o.comb, (int64_t)N * n * n);
    site_out_free(&o);
    site_out_free(&a);
}

/* ---- the seam: hc_post's inputs, and the site case on the CPU's X' --------------------------- */
typedef struct seam_case {
    hc_case c; /* on X' = CPU hc_post(Xin, f, pin, cin): the CPU chain's answers */
    float *Xin, *f, *pin, *cin;
    float *dXin, *df, *dpin, *dcin, *dXo;
} seam_case;

static seam_case seam_make(const shape *s, int N, dsv4_weight_format fmt)
{
    seam_case sc;
    memset(&sc, 0, sizeof sc);
    const int n = s->n;
    const int64_t D = s->D, nD = n * D;
    sc.Xin = rand_rows_bf16(N * nD, D, 1.0f);
    sc.f = rand_rows_bf16(N * D, D, 1.0f);
    sc.pin = rand_unit((int64_t)N * n, 2.0f);
    sc.cin = rand_unit((int64_t)N * n * n, 1.0f);
    float *Xp = malloc((size_t)(N * nD) * 4);
    ok(dsv4_cpu_bk_hc_post(cpu, Xp, sc.Xin, sc.f, sc.pin, sc.cin, N, n, D), "cpu hc_post");
    sc.c = case_make(s, N, fmt, 1, Xp);
    /* the CPU op itself is the composition */
    float *h = malloc((size_t)(N * D) * 4), *Xo = malloc((size_t)(N * nD) * 4);
    float *post = malloc((size_t)N * n * 4), *comb = malloc((size_t)N * n * n * 4);
    float *xq = malloc((size_t)(N * D) * 4), *xq2 = malloc((size_t)(N * D) * 4);
    ok(dsv4_cpu_bk_hc_seam(cpu, h, xq, Xo, post, comb, sc.Xin, sc.f, sc.pin, sc.cin, &sc.c.fn,
                           sc.c.base, sc.c.scale, sc.c.norm, N, n, D, ITERS, HC_EPS, RMS_EPS),
       "cpu hc_seam");
    same_bits("cpu hc_seam Xo", s->name, Xo, Xp, N * nD);
    same_bits("cpu hc_seam h", s->name, h, sc.c.h, N * D);
    same_bits("cpu hc_seam comb", s->name, comb, sc.c.comb, (int64_t)N * n * n);
    ok(dsv4_cpu_bk_act_quant(cpu, xq2, D, h, D, N, D, 128), "cpu act_quant");
    same_bits("cpu hc_seam xq", s->name, xq, xq2, N * D);
    /* the halves: the seam without post / comb, and hc_seam_weights */
    float *h2 = malloc((size_t)(N * D) * 4), *Xo2 = malloc((size_t)(N * nD) * 4);
    float *post2 = malloc((size_t)N * n * 4), *comb2 = malloc((size_t)N * n * n * 4);
    ok(dsv4_cpu_bk_hc_seam(cpu, h2, xq2, Xo2, NULL, NULL, sc.Xin, sc.f, sc.pin, sc.cin, &sc.c.fn,
                           sc.c.base, sc.c.scale, sc.c.norm, N, n, D, ITERS, HC_EPS, RMS_EPS),
       "cpu hc_seam without post / comb");
    same_bits("cpu hc_seam pre half Xo", s->name, Xo2, Xo, N * nD);
    same_bits("cpu hc_seam pre half h", s->name, h2, h, N * D);
    same_bits("cpu hc_seam pre half xq", s->name, xq2, xq, N * D);
    ok(dsv4_cpu_bk_hc_seam_weights(cpu, post2, comb2, sc.Xin, sc.f, sc.pin, sc.cin, &sc.c.fn,
                                   sc.c.base, sc.c.scale, N, n, D, ITERS, HC_EPS, RMS_EPS),
       "cpu hc_seam_weights");
    same_bits("cpu hc_seam_weights post", s->name, post2, post, (int64_t)N * n);
    same_bits("cpu hc_seam_weights comb", s->name, comb2, comb, (int64_t)N * n * n);
    float *t[] = {h, Xo, post, comb, Xp, xq, xq2, h2, Xo2, post2, comb2};
    free_all(t, 11);
    sc.dXin = dev_from(sc.Xin, (size_t)(N * nD) * 4);
    sc.df = dev_from(sc.f, (size_t)(N * D) * 4);
    sc.dpin = dev_from(sc.pin, (size_t)N * n * 4);
    sc.dcin = dev_from(sc.cin, (size_t)N * n * n * 4);
    sc.dXo = dev_from(NULL, (size_t)(N * nD) * 4);
    return sc;
}

static void seam_free(seam_case *sc)
{
    case_free(&sc->c);
    float *h[] = {sc->Xin, sc->f, sc->pin, sc->cin};
    free_all(h, 4);
    float *d[] = {sc->dXin, sc->df, sc->dpin, sc->dcin, sc->dXo};
    dev_free_all(d, 5);
}

static void check_seam(seam_case *sc, int cluster, int rows)
{
    hc_case *c = &sc->c;
    const int N = c->N, n = c->s->n, M = c->M;
    const int64_t D = c->s->D, nD = n * D;
    int C = 0, R = 0;
    const dsv4_status st = dsv4_cuda_bk_hc_seam_ex(
        gpu, c->dh, c->dxq, c->dy, c->dmix, sc->dXo, c->dpost, c->dcomb, sc->dXin, sc->df, sc->dpin,
        sc->dcin, &c->dfn, c->dbase, c->dscale, c->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, cluster,
        rows, &C, &R, NULL);
    char label[120];
    snprintf(label, sizeof label, "seam %s N=%d D=%lld fn %s C=%d R=%d", c->s->name, N,
             (long long)D, dsv4_weight_format_name(c->fmt), C ? C : cluster, R ? R : rows);
    if (st != DSV4_OK && cluster == 16) {
        printf("  (%s: cluster of 16 not launched: %s)\n", label, dsv4_last_error());
        return;
    }
    ok(st, "cuda hc_seam");
    ok(dsv4_bk_sync(gpu), "sync after hc_seam");
    printf("%s\n", label);
    float *Xo = host_from(sc->dXo, (size_t)(N * nD) * 4);
    same_bits("Xo vs CPU hc_post", label, Xo, c->X, N * nD);
    site_out o = site_download(c, c->dh, c->dy, c->dmix, c->dpost, c->dcomb);
    check_stages(c, &o);
    check_xq(c, o.h, label);

    /* the GPU site on the CPU's X' with the same launch shape: the same bits */
    float *dh = dev_from(NULL, (size_t)(N * D) * 4), *dy = dev_from(NULL, (size_t)(N * D) * 4);
    float *dmix = dev_from(NULL, (size_t)(N * M) * 4), *dpost = dev_from(NULL, (size_t)N * n * 4);
    float *dcomb = dev_from(NULL, (size_t)N * n * n * 4);
    ok(dsv4_cuda_bk_hc_site_ex(gpu, dh, NULL, dy, dmix, dpost, dcomb, c->dX, &c->dfn, c->dbase,
                               c->dscale, c->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, C, R, NULL,
                               NULL),
       "cuda hc_site on X'");
    site_out s = site_download(c, dh, dy, dmix, dpost, dcomb);
    same_bits("h (seam vs site on CPU X')", label, o.h, s.h, N * D);
    same_bits("y (seam vs site on CPU X')", label, o.y, s.y, N * D);
    same_bits("mix (seam vs site on CPU X')", label, o.mix, s.mix, (int64_t)N * M);
    same_bits("post (seam vs site on CPU X')", label, o.post, s.post, (int64_t)N * n);
    same_bits("comb (seam vs site on CPU X')", label, o.comb, s.comb, (int64_t)N * n * n);

    /* post / comb updated in place (the engine's use), without y / mix: the same bits */
    ok(dsv4_bk_upload(gpu, dpost, sc->pin, (size_t)N * n * 4), "upload");
    ok(dsv4_bk_upload(gpu, dcomb, sc->cin, (size_t)N * n * n * 4), "upload");
    ok(dsv4_bk_memset0(gpu, sc->dXo, (size_t)(N * nD) * 4), "memset");
    ok(dsv4_cuda_bk_hc_seam_ex(gpu, dh, NULL, NULL, NULL, sc->dXo, dpost, dcomb, sc->dXin, sc->df,
                               dpost, dcomb, &c->dfn, c->dbase, c->dscale, c->dnorm, N, n, D, ITERS,
                               HC_EPS, RMS_EPS, cluster, rows, NULL, NULL, NULL),
       "cuda hc_seam in place");
    site_out p = site_download(c, dh, NULL, NULL, dpost, dcomb);
    float *Xo2 = host_from(sc->dXo, (size_t)(N * nD) * 4);
    same_bits("Xo (in place)", label, Xo2, Xo, N * nD);
    same_bits("h (in place)", label, p.h, o.h, N * D);
    same_bits("post (in place)", label, p.post, o.post, (int64_t)N * n);
    same_bits("comb (in place)", label, p.comb, o.comb, (int64_t)N * n * n);

    /* the halves as the engine runs them, the same launch shape: the seam without post / comb
     * (Xo, h, xq), and hc_seam_weights (post, comb), from the same inputs: the whole seam's bits */
    float *dxq = dev_from(NULL, (size_t)(N * D) * 4);
    ok(dsv4_bk_memset0(gpu, sc->dXo, (size_t)(N * nD) * 4), "memset");
    ok(dsv4_bk_memset0(gpu, dpost, (size_t)N * n * 4), "memset");
    ok(dsv4_bk_memset0(gpu, dcomb, (size_t)N * n * n * 4), "memset");
    ok(dsv4_cuda_bk_hc_seam_weights_ex(gpu, dpost, dcomb, sc->dXin, sc->df, sc->dpin, sc->dcin,
                                       &c->dfn, c->dbase, c->dscale, N, n, D, ITERS, HC_EPS,
                                       RMS_EPS, C, R, NULL, NULL),
       "cuda hc_seam_weights");
    ok(dsv4_cuda_bk_hc_seam_ex(gpu, dh, dxq, NULL, NULL, sc->dXo, NULL, NULL, sc->dXin, sc->df,
                               sc->dpin, sc->dcin, &c->dfn, c->dbase, c->dscale, c->dnorm, N, n, D,
                               ITERS, HC_EPS, RMS_EPS, C, R, NULL, NULL, NULL),
       "cuda hc_seam without post / comb");
    site_out q = site_download(c, dh, NULL, NULL, dpost, dcomb);
    float *Xo3 = host_from(sc->dXo, (size_t)(N * nD) * 4);
    float *xq3 = host_from(dxq, (size_t)(N * D) * 4), *xq1 = host_from(c->dxq, (size_t)(N * D) * 4);
    same_bits("Xo (pre half)", label, Xo3, Xo, N * nD);
    same_bits("h (pre half)", label, q.h, o.h, N * D);
    same_bits("xq (pre half)", label, xq3, xq1, N * D);
    same_bits("post (weights half)", label, q.post, o.post, (int64_t)N * n);
    same_bits("comb (weights half)", label, q.comb, o.comb, (int64_t)N * n * n);

    /* the kernels of one CTA an SM and of two (where they fit), the same launch shape: the whole
     * seam's bits */
    for (int m = -1; m <= 1; m += 2) {
        const int old = dsv4_cuda_hc_force_two(m);
        ok(dsv4_bk_memset0(gpu, sc->dXo, (size_t)(N * nD) * 4), "memset");
        ok(dsv4_cuda_bk_hc_seam_ex(gpu, dh, dxq, NULL, NULL, sc->dXo, dpost, dcomb, sc->dXin,
                                   sc->df, sc->dpin, sc->dcin, &c->dfn, c->dbase, c->dscale,
                                   c->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, C, R, NULL, NULL,
                                   NULL),
           m < 0 ? "cuda hc_seam, one CTA an SM" : "cuda hc_seam, two CTAs an SM");
        dsv4_cuda_hc_force_two(old);
        site_out k = site_download(c, dh, NULL, NULL, dpost, dcomb);
        float *Xo4 = host_from(sc->dXo, (size_t)(N * nD) * 4);
        float *xq4 = host_from(dxq, (size_t)(N * D) * 4);
        char l2[160];
        snprintf(l2, sizeof l2, "%s, %s CTA(s) an SM", label, m < 0 ? "one" : "two");
        same_bits("Xo", l2, Xo4, Xo, N * nD);
        same_bits("h", l2, k.h, o.h, N * D);
        same_bits("xq", l2, xq4, xq1, N * D);
        same_bits("post", l2, k.post, o.post, (int64_t)N * n);
        same_bits("comb", l2, k.comb, o.comb, (int64_t)N * n * n);
        site_out_free(&k);
        free(Xo4);
        free(xq4);
    }
    if (!cluster && !rows) { /* the halves with their own plan (each plans for half the GPU):
                              * both the same shape, and the whole seam's bits with it */
        int C2 = 0, R2 = 0, C3 = 0, R3 = 0;
        ok(dsv4_cuda_bk_hc_seam_weights_ex(gpu, dpost, dcomb, sc->dXin, sc->df, sc->dpin, sc->dcin,
                                           &c->dfn, c->dbase, c->dscale, N, n, D, ITERS, HC_EPS,
                                           RMS_EPS, 0, 0, &C2, &R2),
           "cuda hc_seam_weights, own plan");
        ok(dsv4_cuda_bk_hc_seam_ex(gpu, dh, dxq, NULL, NULL, sc->dXo, NULL, NULL, sc->dXin, sc->df,
                                   sc->dpin, sc->dcin, &c->dfn, c->dbase, c->dscale, c->dnorm, N, n,
                                   D, ITERS, HC_EPS, RMS_EPS, 0, 0, &C3, &R3, NULL),
           "cuda hc_seam without post / comb, own plan");
        site_out u = site_download(c, dh, NULL, NULL, dpost, dcomb);
        float *xqu = host_from(dxq, (size_t)(N * D) * 4);
        char l3[160];
        snprintf(l3, sizeof l3, "seam %s N=%d halves' own plan C=%d R=%d / C=%d R=%d", c->s->name,
                 N, C2, R2, C3, R3);
        CHECK_MSG(C2 == C3 && R2 == R3, "%s: the halves plan alike", l3);
        ok(dsv4_cuda_bk_hc_seam_ex(gpu, dh, dxq, NULL, NULL, sc->dXo, dpost, dcomb, sc->dXin,
                                   sc->df, sc->dpin, sc->dcin, &c->dfn, c->dbase, c->dscale,
                                   c->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, C3, R3, NULL, NULL,
                                   NULL),
           "cuda hc_seam with the halves' shape");
        site_out w = site_download(c, dh, NULL, NULL, dpost, dcomb);
        float *xqw = host_from(dxq, (size_t)(N * D) * 4);
        printf("%s\n", l3);
        same_bits("h (halves, own plan)", l3, u.h, w.h, N * D);
        same_bits("xq (halves, own plan)", l3, xqu, xqw, N * D);
        same_bits("post (halves, own plan)", l3, u.post, w.post, (int64_t)N * n);
        same_bits("comb (halves, own plan)", l3, u.comb, w.comb, (int64_t)N * n * n);
        site_out_free(&u);
        site_out_free(&w);
        free(xqu);
        free(xqw);
    }
    site_out_free(&q);
    free(Xo3);
    free(xq3);
    free(xq1);
    float *dq[] = {dxq};
    dev_free_all(dq, 1);

    site_out_free(&o);
    site_out_free(&s);
    site_out_free(&p);
    free(Xo);
    free(Xo2);
    float *d[] = {dh, dy, dmix, dpost, dcomb};
    dev_free_all(d, 5);
}

/* ---- the head collapse ----------------------------------------------------------------------- */
typedef struct head_case {
    const shape *s;
    int N, with_post;
    dsv4_weight_format fmt;
    float *X, *f, *pin, *cin, *Xs; /* Xs: the streams the collapse reads (CPU hc_post, or X) */
    float *base, scale, *norm;
    void *fn_data;
    dsv4_weight fn, dfn;
    float *h, *mix; /* the CPU's chain */
    float *mix_slack, *y_slack;
    float *dX, *df, *dpin, *dcin, *dXs, *dXo, *dbase, *dnorm, *dh, *dy, *dmix;
} head_case;

static head_case head_make(const shape *s, int N, dsv4_weight_format fmt, int with_post)
{
    head_case c;
    memset(&c, 0, sizeof c);
    c.s = s;
    c.N = N;
    c.fmt = fmt;
    c.with_post = with_post;
    const int n = s->n;
    const int64_t D = s->D, nD = n * D;
    c.X = rand_rows_bf16(N * nD, D, 1.0f);
    c.f = rand_rows_bf16(N * D, D, 1.0f);
    c.pin = rand_unit((int64_t)N * n, 2.0f);
    c.cin = rand_unit((int64_t)N * n * n, 1.0f);
    c.base = rand_rows(n, n, 1.0f);
    c.scale = 0.5f + rng_uniform();
    c.norm = rand_rows(D, D, 0.3f);
    for (int64_t i = 0; i < D; i++) c.norm[i] = 1.0f + c.norm[i] * 0.1f;
    make_fn(fmt, n, nD, &c.fn, &c.fn_data);
    c.Xs = malloc((size_t)(N * nD) * 4);
    if (with_post)
        ok(dsv4_cpu_bk_hc_post(cpu, c.Xs, c.X, c.f, c.pin, c.cin, N, n, D), "cpu hc_post");
    else
        memcpy(c.Xs, c.X, (size_t)(N * nD) * 4);

    /* the CPU's chain, op by op (the engine's calls before the fused op) */
    float *flat = malloc((size_t)(N * nD) * 4), *y = malloc((size_t)(N * D) * 4);
    c.mix = malloc((size_t)N * n * 4);
    c.h = malloc((size_t)(N * D) * 4);
    ok(dsv4_cpu_bk_rmsnorm(cpu, flat, nD, c.Xs, nD, NULL, N, nD, RMS_EPS, 0), "cpu rmsnorm");
    ok(dsv4_cpu_bk_linear(cpu, &c.fn, 0, n, flat, nD, N, c.mix, n, 0), "cpu linear");
    ok(dsv4_cpu_bk_hc_head(cpu, y, c.Xs, c.mix, c.base, c.scale, N, n, D, HC_EPS), "cpu hc_head");
    ok(dsv4_cpu_bk_rmsnorm(cpu, c.h, D, y, D, c.norm, N, D, RMS_EPS, 1), "cpu rmsnorm");
    /* the CPU op is that chain */
    float *h2 = malloc((size_t)(N * D) * 4), *Xo2 = malloc((size_t)(N * nD) * 4);
    ok(dsv4_cpu_bk_hc_head_site(cpu, h2, with_post ? Xo2 : NULL, c.X, with_post ? c.f : NULL, c.pin,
                                c.cin, &c.fn, c.base, c.scale, c.norm, N, n, D, HC_EPS, RMS_EPS),
       "cpu hc_head_site");
    same_bits("cpu hc_head_site h", s->name, h2, c.h, N * D);
    if (with_post) same_bits("cpu hc_head_site Xo", s->name, Xo2, c.Xs, N * nD);
    float *t[] = {flat, y, h2, Xo2};
    free_all(t, 4);
    c.mix_slack = mix_slack(&c.fn, c.Xs, N, n, nD);
    c.y_slack = y_slack(c.Xs, N, n, D);

    c.dX = dev_from(c.X, (size_t)(N * nD) * 4);
    c.df = dev_from(c.f, (size_t)(N * D) * 4);
    c.dpin = dev_from(c.pin, (size_t)N * n * 4);
    c.dcin = dev_from(c.cin, (size_t)N * n * n * 4);
    c.dXs = dev_from(c.Xs, (size_t)(N * nD) * 4);
    c.dXo = dev_from(NULL, (size_t)(N * nD) * 4);
    c.dbase = dev_from(c.base, (size_t)n * 4);
    c.dnorm = dev_from(c.norm, (size_t)D * 4);
    ok(dsv4_bk_weight_upload(gpu, &c.fn, 0, &c.dfn), "fn upload");
    c.dh = dev_from(NULL, (size_t)(N * D) * 4);
    c.dy = dev_from(NULL, (size_t)(N * D) * 4);
    c.dmix = dev_from(NULL, (size_t)N * n * 4);
    return c;
}

static void head_free(head_case *c)
{
    float *d[] = {c->dX,    c->df,    c->dpin, c->dcin, c->dXs, c->dXo,
                  c->dbase, c->dnorm, c->dh,   c->dy,   c->dmix};
    dev_free_all(d, sizeof d / sizeof *d);
    dsv4_bk_weight_free(gpu, &c->dfn);
    float *h[] = {c->X,    c->f, c->pin, c->cin,       c->Xs,     c->base,
                  c->norm, c->h, c->mix, c->mix_slack, c->y_slack};
    free_all(h, sizeof h / sizeof *h);
    free(c->fn_data);
}

static void check_head(head_case *c, int cluster, int rows)
{
    const int N = c->N, n = c->s->n;
    const int64_t D = c->s->D, nD = n * D;
    int C = 0, R = 0;
    const dsv4_status st = dsv4_cuda_bk_hc_head_site_ex(
        gpu, c->dh, c->dy, c->dmix, c->dXo, c->dX, c->with_post ? c->df : NULL, c->dpin, c->dcin,
        &c->dfn, c->dbase, c->scale, c->dnorm, N, n, D, HC_EPS, RMS_EPS, cluster, rows, &C, &R);
    char label[120];
    snprintf(label, sizeof label, "head %s N=%d D=%lld fn %s%s C=%d R=%d", c->s->name, N,
             (long long)D, dsv4_weight_format_name(c->fmt), c->with_post ? " +post" : "",
             C ? C : cluster, R ? R : rows);
    if (st != DSV4_OK && cluster == 16) {
        printf("  (%s: cluster of 16 not launched: %s)\n", label, dsv4_last_error());
        return;
    }
    ok(st, "cuda hc_head_site");
    ok(dsv4_bk_sync(gpu), "sync after hc_head_site");
    printf("%s\n", label);
    float *h = host_from(c->dh, (size_t)(N * D) * 4), *y = host_from(c->dy, (size_t)(N * D) * 4);
    float *mix = host_from(c->dmix, (size_t)N * n * 4);
    if (c->with_post) {
        float *Xo = host_from(c->dXo, (size_t)(N * nD) * 4);
        same_bits("Xo vs CPU hc_post", label, Xo, c->Xs, N * nD);
        free(Xo);
    }
    compare("mix", "", mix, c->mix, (int64_t)N * n,
            (bound){0, 1e-3, 0, c->mix_slack, "(1e-5 + 2^-21) * 1.001 * sum|flat||fn|"});
    float *y2 = malloc((size_t)(N * D) * 4), *h3 = malloc((size_t)(N * D) * 4);
    ok(dsv4_cpu_bk_hc_head(cpu, y2, c->Xs, mix, c->base, c->scale, N, n, D, HC_EPS), "hc_head");
    compare("y", "(CPU hc_head on GPU mix)", y, y2, N * D,
            (bound){0, 1e-3, 1, c->y_slack, "1 bf16 ulp + 2^-19 sum|X_j| (pre 3 ulp apart)"});
    ok(dsv4_cpu_bk_rmsnorm(cpu, h3, D, y, D, c->norm, N, D, RMS_EPS, 1), "cpu rmsnorm");
    compare("h", "(CPU rmsnorm on GPU y)", h, h3, N * D,
            (bound){0x1p-21, FLT_MIN, 1, NULL, "2^-21 rel + 1 bf16 ulp"});
    printf("  end to end vs the CPU chain:");
    report("h", h, c->h, N * D);
    report(" mix", mix, c->mix, (int64_t)N * n);
    printf("\n");

    /* again without y / mix; and on the CPU's X' without the post-mix: the same bits */
    ok(dsv4_cuda_bk_hc_head_site_ex(gpu, c->dh, NULL, NULL, c->dXo, c->dX,
                                    c->with_post ? c->df : NULL, c->dpin, c->dcin, &c->dfn,
                                    c->dbase, c->scale, c->dnorm, N, n, D, HC_EPS, RMS_EPS, cluster,
                                    rows, NULL, NULL),
       "cuda hc_head_site again");
    float *h2 = host_from(c->dh, (size_t)(N * D) * 4);
    same_bits("h (second call, no y/mix)", label, h2, h, N * D);
    free(h2);
    if (c->with_post) {
        ok(dsv4_cuda_bk_hc_head_site_ex(gpu, c->dh, NULL, NULL, NULL, c->dXs, NULL, NULL, NULL,
                                        &c->dfn, c->dbase, c->scale, c->dnorm, N, n, D, HC_EPS,
                                        RMS_EPS, C, R, NULL, NULL),
           "cuda hc_head_site on X'");
        h2 = host_from(c->dh, (size_t)(N * D) * 4);
        same_bits("h (head on CPU X' without the post-mix)", label, h2, h, N * D);
        free(h2);
    }
    float *f[] = {h, y, mix, y2, h3};
    free_all(f, 5);
}

/* ---- timing ---------------------------------------------------------------------------------
 * NF different fn matrices (together larger than the 50 MB L2) in turn, as the layers' sites
 * read theirs from HBM; X stays (the engine's X was just written by the previous op). Per op:
 * eager (launch after launch, then one sync) and graph replay (NF ops captured once). */
enum { NF = 40 };

enum {
    B_SITE_OLD,  /* rmsnorm, linear, hc_pre, rmsnorm: the four ops hc_site replaced */
    B_SITE,      /* hc_site (cluster, rows) */
    B_POST_SITE, /* hc_post + hc_site: what hc_seam replaces */
    B_SEAM,      /* hc_seam */
    B_SEAM_PRE,  /* hc_seam without post / comb: the half the next sublayer waits for */
    B_SEAM_W,    /* hc_seam_weights: the half the engine runs beside it */
    B_HEAD_OLD,  /* hc_post, rmsnorm, linear, hc_head, rmsnorm: what hc_head_site replaces */
    B_HEAD,      /* hc_head_site with the post-mix (the last: the graph check below) */
    B_N
};

typedef struct bench_ctx {
    const shape *s;
    int N, M;
    dsv4_weight fns[NF], hfns[NF];
    float *dX, *dXo, *df, *dflat, *dmix, *dy, *dh, *dpost, *dcomb, *dbase, *dscale, *dnorm;
    float *dpost2, *dcomb2;
} bench_ctx;

static void bench_op(bench_ctx *b, int i, int mode, int cluster, int rows)
{
    const int n = b->s->n, M = b->M, N = b->N;
    const int64_t D = b->s->D, nD = n * D;
    const dsv4_weight *fn = &b->fns[i % NF], *hfn = &b->hfns[i % NF];
    switch (mode) {
    case B_SITE_OLD:
        ok(dsv4_cuda_bk_rmsnorm(gpu, b->dflat, nD, b->dX, nD, NULL, N, nD, RMS_EPS, 0), "rmsnorm");
        ok(dsv4_cuda_bk_linear(gpu, fn, 0, M, b->dflat, nD, N, b->dmix, M, 0), "linear");
        ok(dsv4_cuda_bk_hc_pre(gpu, b->dy, b->dpost, b->dcomb, b->dX, b->dmix, b->dbase, b->dscale,
                               N, n, D, ITERS, HC_EPS),
           "hc_pre");
        ok(dsv4_cuda_bk_rmsnorm(gpu, b->dh, D, b->dy, D, b->dnorm, N, D, RMS_EPS, 1), "rmsnorm");
        break;
    case B_SITE:
        ok(dsv4_cuda_bk_hc_site_ex(gpu, b->dh, NULL, NULL, NULL, b->dpost, b->dcomb, b->dX, fn,
                                   b->dbase, b->dscale, b->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS,
                                   cluster, rows, NULL, NULL),
           "hc_site");
        break;
    case B_POST_SITE:
        ok(dsv4_cuda_bk_hc_post(gpu, b->dXo, b->dX, b->df, b->dpost, b->dcomb, N, n, D), "post");
        ok(dsv4_cuda_bk_hc_site_ex(gpu, b->dh, NULL, NULL, NULL, b->dpost, b->dcomb, b->dXo, fn,
                                   b->dbase, b->dscale, b->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS,
                                   cluster, rows, NULL, NULL),
           "hc_site");
        break;
    case B_SEAM:
        ok(dsv4_cuda_bk_hc_seam_ex(gpu, b->dh, b->dflat, NULL, NULL, b->dXo, b->dpost, b->dcomb,
                                   b->dX, b->df, b->dpost, b->dcomb, fn, b->dbase, b->dscale,
                                   b->dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, cluster, rows, NULL,
                                   NULL, NULL),
           "hc_seam");
        break;
    case B_HEAD_OLD:
        ok(dsv4_cuda_bk_hc_post(gpu, b->dXo, b->dX, b->df, b->dpost, b->dcomb, N, n, D), "post");
        ok(dsv4_cuda_bk_rmsnorm(gpu, b->dflat, nD, b->dXo, nD, NULL, N, nD, RMS_EPS, 0), "rmsnorm");
        ok(dsv4_cuda_bk_linear(gpu, hfn, 0, n, b->dflat, nD, N, b->dmix, n, 0), "linear");
        ok(dsv4_cuda_bk_hc_head(gpu, b->dy, b->dXo, b->dmix, b->dbase, 0.75f, N, n, D, HC_EPS),
           "hc_head");
        ok(dsv4_cuda_bk_rmsnorm(gpu, b->dh, D, b->dy, D, b->dnorm, N, D, RMS_EPS, 1), "rmsnorm");
        break;
    case B_SEAM_PRE:
        ok(dsv4_cuda_bk_hc_seam_ex(gpu, b->dh, b->dflat, NULL, NULL, b->dXo, NULL, NULL, b->dX,
                                   b->df, b->dpost, b->dcomb, fn, b->dbase, b->dscale, b->dnorm, N,
                                   n, D, ITERS, HC_EPS, RMS_EPS, cluster, rows, NULL, NULL, NULL),
           "hc_seam without post / comb");
        break;
    case B_SEAM_W:
        ok(dsv4_cuda_bk_hc_seam_weights_ex(gpu, b->dpost2, b->dcomb2, b->dX, b->df, b->dpost,
                                           b->dcomb, fn, b->dbase, b->dscale, N, n, D, ITERS,
                                           HC_EPS, RMS_EPS, cluster, rows, NULL, NULL),
           "hc_seam_weights");
        break;
    default:
        ok(dsv4_cuda_bk_hc_head_site_ex(gpu, b->dh, NULL, NULL, b->dXo, b->dX, b->df, b->dpost,
                                        b->dcomb, hfn, b->dbase, 0.75f, b->dnorm, N, n, D, HC_EPS,
                                        RMS_EPS, cluster, rows, NULL, NULL),
           "hc_head_site");
        break;
    }
}

/* Microseconds per op: *eager, *graph. */
static void bench_time(bench_ctx *b, int mode, int cluster, int rows, double *eager, double *graph)
{
    for (int i = 0; i < NF; i++) bench_op(b, i, mode, cluster, rows);
    ok(dsv4_bk_sync(gpu), "sync");
    const int reps = 3;
    double t0 = test_now();
    for (int i = 0; i < reps * NF; i++) bench_op(b, i, mode, cluster, rows);
    ok(dsv4_bk_sync(gpu), "sync");
    *eager = (test_now() - t0) * 1e6 / (reps * NF);
    void *g = NULL;
    ok(dsv4_bk_graph_begin(gpu), "graph begin");
    for (int i = 0; i < NF; i++) bench_op(b, i, mode, cluster, rows);
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

/* One seam launch's phase clocks (bk_hc.cu TR_*: clock64 of thread 0 of rank 0, cluster 0, the
 * Sinkhorn's by its warp 7; globaltimer for the clock rate), each after the NF fn matrices in
 * turn so that its fn comes from HBM: where the time of a launch goes. pre: the seam without
 * post / comb (the engine's critical half). */
static void trace_seam(bench_ctx *b, int cluster, int rows, int pre)
{
    enum { NT = 14 };
    static const char *name[NT] = {"start",    "issued", "staged", "postmix", "dots", "mix", "pre",
                                   "collapse", "rs2",    "end",    "sk0",     "sk1",  "gt0", "gt1"};
    const int n = b->s->n, N = b->N;
    const int64_t D = b->s->D;
    long long *dt = NULL, t[NT];
    ok(dsv4_bk_alloc(gpu, sizeof t, (void **)&dt), "trace alloc");
    for (int rep = 0; rep < 2; rep++) {
        for (int i = 0; i < NF; i++) bench_op(b, i, B_SEAM, cluster, rows);
        int C = 0, R = 0;
        ok(dsv4_cuda_bk_hc_seam_ex(gpu, b->dh, b->dflat, NULL, NULL, b->dXo, pre ? NULL : b->dpost,
                                   pre ? NULL : b->dcomb, b->dX, b->df, b->dpost, b->dcomb,
                                   &b->fns[rep], b->dbase, b->dscale, b->dnorm, N, n, D, ITERS,
                                   HC_EPS, RMS_EPS, cluster, rows, &C, &R, dt),
           "traced seam");
        ok(dsv4_bk_sync(gpu), "sync");
        ok(dsv4_bk_download(gpu, t, dt, sizeof t), "download");
        const double ns = (double)(t[13] - t[12]), cyc = (double)(t[9] - t[0]);
        const double ghz = ns > 0 ? cyc / ns : 0.0;
        printf("      trace%s %s N=%d C=%d R=%d: %.0f cycles, %.0f ns (%.2f GHz); phase ends, us:",
               pre ? " (pre half)" : "", b->s->name, N, C, R, cyc, ns, ghz);
        for (int k = 1; k <= 11; k++)
            printf(" %s %.2f", name[k], ghz > 0 ? (double)(t[k] - t[0]) / ghz / 1e3 : 0.0);
        printf("\n");
    }
    dsv4_bk_free(gpu, dt);
}

static void random_fn(dsv4_weight *out, int64_t M, int64_t nD, uint64_t seed)
{
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
    ok(dsv4_bk_weight_upload(gpu, &w, seed, out), "random fn");
}

static int profile_only; /* --profile: the seam's launches only */

static void bench(const shape *s, int N, int sweep)
{
    bench_ctx b;
    memset(&b, 0, sizeof b);
    b.s = s;
    b.N = N;
    const int n = s->n;
    const int64_t D = s->D, nD = n * D, M = (int64_t)(2 + n) * n;
    b.M = (int)M;
    for (int i = 0; i < NF; i++) {
        random_fn(&b.fns[i], M, nD, 1000 + (uint64_t)i);
        random_fn(&b.hfns[i], n, nD, 2000 + (uint64_t)i);
    }
    float *X = rand_rows_bf16(N * nD, D, 1.0f), *f = rand_rows_bf16(N * D, D, 1.0f);
    float *base = rand_rows(M, M, 1.0f), *norm = rand_rows(D, D, 0.1f);
    float *post = rand_unit((int64_t)N * n, 2.0f), *comb = rand_unit((int64_t)N * n * n, 0.5f);
    float scale[3] = {1.0f, 0.5f, 2.5f};
    b.dX = dev_from(X, (size_t)(N * nD) * 4);
    b.dXo = dev_from(NULL, (size_t)(N * nD) * 4);
    b.df = dev_from(f, (size_t)(N * D) * 4);
    b.dflat = dev_from(NULL, (size_t)(N * nD) * 4);
    b.dmix = dev_from(NULL, (size_t)(N * M) * 4);
    b.dy = dev_from(NULL, (size_t)(N * D) * 4);
    b.dh = dev_from(NULL, (size_t)(N * D) * 4);
    b.dpost = dev_from(post, (size_t)N * n * 4);
    b.dcomb = dev_from(comb, (size_t)N * n * n * 4);
    b.dpost2 = dev_from(NULL, (size_t)N * n * 4);
    b.dcomb2 = dev_from(NULL, (size_t)N * n * n * 4);
    b.dbase = dev_from(base, (size_t)M * 4);
    b.dscale = dev_from(scale, sizeof scale);
    b.dnorm = dev_from(norm, (size_t)D * 4);

    int C = 0, R = 0;
    if (profile_only) { /* NF seams (a profiler takes the last), nothing else */
        for (int i = 0; i < NF; i++) bench_op(&b, i, B_SEAM, 0, 0);
        ok(dsv4_bk_sync(gpu), "sync");
        goto done;
    }
    ok(dsv4_cuda_bk_hc_site_ex(gpu, b.dh, NULL, NULL, NULL, b.dpost, b.dcomb, b.dX, &b.fns[0],
                               b.dbase, b.dscale, b.dnorm, N, n, D, ITERS, HC_EPS, RMS_EPS, 0, 0,
                               &C, &R),
       "hc_site");
    double e[B_N], g[B_N];
    for (int m = B_SITE_OLD; m < B_N; m++) bench_time(&b, m, 0, 0, &e[m], &g[m]);
    printf("bench %-5s N=%-3d C=%d R=%d (fn %.2f MB, %d in turn), us eager / graph:\n"
           "      site: old 4 ops %7.1f / %7.1f | hc_site %6.1f / %6.1f (%.1fx)\n"
           "      seam: hc_post + hc_site %6.1f / %6.1f | hc_seam %6.1f / %6.1f (%.2fx)\n"
           "      seam halves: without post / comb %6.1f / %6.1f | hc_seam_weights %6.1f / %6.1f\n"
           "      head: hc_post + old 4 ops %6.1f / %6.1f | hc_head_site %6.1f / %6.1f (%.1fx)\n",
           s->name, N, C, R, (double)(M * nD * 4) / 1e6, NF, e[B_SITE_OLD], g[B_SITE_OLD],
           e[B_SITE], g[B_SITE], g[B_SITE_OLD] / g[B_SITE], e[B_POST_SITE], g[B_POST_SITE],
           e[B_SEAM], g[B_SEAM], g[B_POST_SITE] / g[B_SEAM], e[B_SEAM_PRE], g[B_SEAM_PRE],
           e[B_SEAM_W], g[B_SEAM_W], e[B_HEAD_OLD], g[B_HEAD_OLD], e[B_HEAD], g[B_HEAD],
           g[B_HEAD_OLD] / g[B_HEAD]);
    /* graph replay == eager, bit for bit: the graph's last op used fn NF-1 (B_HEAD: hfns) */
    float *hg = host_from(b.dh, (size_t)(N * D) * 4);
    bench_op(&b, NF - 1, B_HEAD, 0, 0);
    ok(dsv4_bk_sync(gpu), "sync");
    float *he = host_from(b.dh, (size_t)(N * D) * 4);
    char l[64];
    snprintf(l, sizeof l, "%s N=%d", s->name, N);
    same_bits("h (head graph replay vs eager)", l, hg, he, N * D);
    free(hg);
    free(he);
    trace_seam(&b, 0, 0, 0);
    trace_seam(&b, 0, 0, 1);
    if (sweep) { /* other launch shapes of the seam, graph replay */
        static const int shapes[][2] = {{8, 0}, {16, 1}, {16, 2}, {16, 4}, {16, 8}, {8, 1},
                                        {8, 2}, {8, 3},  {8, 4},  {8, 5},  {8, 6},  {8, 8}};
        printf("      seam launch shapes (graph us):");
        for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
            const int c = shapes[k][0], r = shapes[k][1];
            if (r && (N + r - 1) / r > 64) continue; /* many waves: not a decode shape */
            dsv4_status st = dsv4_cuda_bk_hc_seam_ex(gpu, b.dh, b.dflat, NULL, NULL, b.dXo, b.dpost,
                                                     b.dcomb, b.dX, b.df, b.dpost, b.dcomb,
                                                     &b.fns[0], b.dbase, b.dscale, b.dnorm, N, n, D,
                                                     ITERS, HC_EPS, RMS_EPS, c, r, &C, &R, NULL);
            if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
            if (st != DSV4_OK) {
                printf(" C=%d R=%d: %s;", c, r, dsv4_last_error());
                continue;
            }
            double e1, g1;
            bench_time(&b, B_SEAM, c, r, &e1, &g1);
            printf(" C=%d R=%d %.1f;", C, R, g1);
        }
        printf("\n");
    }
done:;
    float *h[] = {X, f, base, norm, post, comb};
    free_all(h, 6);
    float *dev[] = {b.dX,    b.dXo,   b.df,    b.dflat,  b.dmix,  b.dy,     b.dh,
                    b.dpost, b.dcomb, b.dbase, b.dscale, b.dnorm, b.dpost2, b.dcomb2};
    dev_free_all(dev, sizeof dev / sizeof *dev);
    for (int i = 0; i < NF; i++) {
        dsv4_bk_weight_free(gpu, &b.fns[i]);
        dsv4_bk_weight_free(gpu, &b.hfns[i]);
    }
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

    if (argc > 3 && strcmp(argv[1], "--profile") == 0) { /* --profile flash|pro N */
        profile_only = 1;
        bench(strcmp(argv[2], "pro") == 0 ? &PRO : &FLASH, atoi(argv[3]), 0);
    } else if (small) {
        for (int N = 1; N <= 5; N += 4) {
            hc_case c = case_make(&SMALL, N, DSV4_FORMAT_F32, 1, NULL);
            check_case(&c, 0, 0);
            check_case(&c, 16, 2);
            check_case(&c, 2, 8);
            check_case(&c, 4, 5);
            case_free(&c);
        }
        hc_case c = case_make(&SMALL, 3, DSV4_FORMAT_BF16, 0, NULL);
        check_case(&c, 0, 0);
        case_free(&c);
        for (int N = 1; N <= 5; N += 4) {
            seam_case sc = seam_make(&SMALL, N, DSV4_FORMAT_F32);
            check_seam(&sc, 0, 0);
            check_seam(&sc, 16, 2);
            check_seam(&sc, 2, 8);
            check_seam(&sc, 2, 3);
            seam_free(&sc);
            for (int wp = 0; wp < 2; wp++) {
                head_case hc = head_make(&SMALL, N, DSV4_FORMAT_F32, wp);
                check_head(&hc, 0, 0);
                check_head(&hc, 16, 2);
                head_free(&hc);
            }
        }
    } else {
        const shape *shapes[] = {&FLASH, &PRO};
        static const int Ns[] = {1, 2, 7, 64};
        for (int si = 0; si < 2; si++)
            for (int ni = 0; ni < 4; ni++) {
                const int N = Ns[ni];
                hc_case c = case_make(shapes[si], N, DSV4_FORMAT_F32, 1, NULL);
                check_case(&c, 0, 0);
                if (N == 64) check_case(&c, 8, 6);
                if (N == 7) { /* other launch shapes on the same inputs */
                    check_case(&c, 16, 0);
                    check_case(&c, 8, 8);
                    check_case(&c, 4, 2);
                    check_case(&c, 1, 1);
                }
                case_free(&c);
                seam_case sc = seam_make(shapes[si], N, DSV4_FORMAT_F32);
                check_seam(&sc, 0, 0);
                if (N == 64) { /* rows a cluster that are no power of two */
                    check_seam(&sc, 8, 5);
                    check_seam(&sc, 8, 3);
                }
                if (N == 7) {
                    check_seam(&sc, 8, 0);
                    check_seam(&sc, 16, 8);
                    check_seam(&sc, 2, 1);
                }
                seam_free(&sc);
                head_case hc = head_make(shapes[si], N, DSV4_FORMAT_F32, 1);
                check_head(&hc, 0, 0);
                if (N == 7) check_head(&hc, 8, 4);
                head_free(&hc);
            }
        hc_case c = case_make(&FLASH, 7, DSV4_FORMAT_BF16, 0, NULL);
        check_case(&c, 0, 0);
        case_free(&c);
        c = case_make(&PRO, 3, DSV4_FORMAT_F16, 1, NULL);
        check_case(&c, 0, 0);
        case_free(&c);
        seam_case sc = seam_make(&PRO, 3, DSV4_FORMAT_BF16);
        check_seam(&sc, 0, 0);
        seam_free(&sc);
        head_case hc = head_make(&FLASH, 2, DSV4_FORMAT_BF16, 0);
        check_head(&hc, 0, 0);
        head_free(&hc);

        /* the decode batches (1, 7; 8 .. 64: the engine's larger batches), with other launch
         * shapes of the seam where marked */
        static const int bn[2][6] = {{1, 7, 8, 16, 32, 64}, {1, 7, 16, 64, 0, 0}};
        static const int bsweep[2][6] = {{1, 0, 1, 1, 1, 1}, {0, 0, 1, 1, 0, 0}};
        for (int si = 0; si < 2; si++)
            for (int k = 0; k < 6 && bn[si][k]; k++) bench(shapes[si], bn[si][k], bsweep[si][k]);
    }
    printf("total %.1f s\n", test_now() - t0);
    dsv4_backend_destroy(gpu);
    dsv4_backend_destroy(cpu);
    dsv4_cpu_pool_destroy(pool);
    return test_finish();
}
