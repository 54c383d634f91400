/*
 * test_gpu_linear_norm.c - GPU op test (ctest -L gpu) of dsv4_bk_linear_multi's norm: an entry
 * with a norm is its projection, then dsv4_bk_rmsnorm_quant of its y in place (-> y, yq). On
 * CUDA, at the rows where the GEMV's one launch takes the entries (bk_linear.cu: 1-2 rows, 1-16
 * forced), the launch's last CTA of the first such entry runs that norm (gv_norm_tail); any other
 * norm is its own launch after the projections. The contract is the composition, so each call is
 * checked bit for bit against it on the same backend:
 *   - GPU: the multi op with the norms against the same op without them (the same path and K
 *     split, forced alike), then dsv4_bk_rmsnorm_quant on the GPU: every entry's y and each yq
 *     (the norm op itself is checked against the CPU in test_gpu_rows); three calls in a row give
 *     the same bits (the tail's ticket is back to 0 after each); the entry the tail ran is the one
 *     expected (dsv4_cuda_linear_last_norm_tail), and some calls ran it;
 *   - CPU: the multi op with the norms against its projections, then the CPU norm op;
 *   - both: a norm without yq, with qblock 0, or on y rows that are not contiguous is refused;
 *   - the signal (dsv4_bk_linear_entry.signal) on every call's last entry: 1 after each call,
 *     raised in the GEMV's launch where it has no norm tail (some calls do), by a launch after
 *     the op otherwise, the outputs the same bits either way.
 * Shapes: the engine's projections of h (Flash and Pro CSA layers, q_norm on wq_a), two norms in
 * one set (an MXFP4 entry: the GEMV's general kernel), a row wider than the tail takes
 * (GV_NORM_MAX), at N = 1, 2 (the tail), 3, 16 (forced: the tail over 16 rows) and 70 (the
 * dispatcher's chunks of <= 64 rows, the norm over all 70).
 *
 * usage: test_gpu_linear_norm [--small] (--small: small shapes, for compute-sanitizer)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cuda/linear_path.cuh"
#include "core/error.h"

#include <math.h>
#include <stdint.h>

#define LIN_TEST_SEED 0x3f84d5b5b5470917ull /* this binary's inputs (test_linear.h) */
#include "test_linear.h"

enum { NORM_MAX = 6 * 1024 }; /* bk_linear.cu GV_NORM_MAX: the widest row the tail takes */
enum { MAXE = 4, NMODE = 4 };

typedef struct nentry {
    const char *name;
    int fmt, sdt;
    int64_t rows, cols;
    int round, norm; /* norm: q_norm-like weight, then act_quant in blocks of 128 */
} nentry;

typedef struct ncase {
    const char *name;
    int n;
    nentry e[MAXE];
    int64_t ns[8]; /* 0-terminated */
} ncase;

#define FP8 DSV4_FORMAT_FP8
#define B16 DSV4_FORMAT_BF16
#define MX  DSV4_FORMAT_MXFP4
#define E8  DSV4_DT_F8_E8M0

static const ncase full_cases[] = {
    {"flash csa projections",
     4,
     {{"wq_a fp8 + q_norm", FP8, E8, 1024, 4096, 1, 1},
      {"wkv fp8", FP8, E8, 512, 4096, 1, 0},
      {"comp wkv bf16", B16, 0, 1024, 4096, 0, 0},
      {"idx weights_proj bf16", B16, 0, 64, 4096, 1, 0}},
     {1, 2, 3, 16, 70, 0}},
    {"pro csa projections",
     3,
     {{"wq_a fp8 + q_norm", FP8, E8, 1536, 7168, 1, 1},
      {"wkv fp8", FP8, E8, 512, 7168, 1, 0},
      {"comp wgate bf16", B16, 0, 1024, 7168, 0, 0}},
     {1, 2, 5, 0}},
    {"two norms, mxfp4",
     3,
     {{"fp8 256x2048", FP8, E8, 256, 2048, 1, 0},
      {"mxfp4 300x2048 + norm", MX, E8, 300, 2048, 1, 1},
      {"bf16 100x2048 + norm", B16, 0, 100, 2048, 0, 1}},
     {1, 2, 4, 16, 0}},
    {"row wider than the tail",
     2,
     {{"bf16 6656x256 + norm", B16, 0, NORM_MAX + 512, 256, 1, 1},
      {"fp8 256x256", FP8, E8, 256, 256, 1, 0}},
     {1, 2, 0}},
};

static const ncase small_cases[] = {
    {"small",
     3,
     {{"fp8 40x256 + norm", FP8, E8, 40, 256, 1, 1},
      {"bf16 24x256", B16, 0, 24, 256, 0, 0},
      {"mxfp4 64x256 + norm", MX, E8, 64, 256, 1, 1}},
     {1, 2, 3, 0}},
};

static const int mode_path[NMODE] = {DSV4_LIN_PATH_AUTO, DSV4_LIN_PATH_MULTI, DSV4_LIN_PATH_MULTI,
                                     DSV4_LIN_PATH_MULTI};
static const int mode_split[NMODE] = {0, 0, 2, 8};
static const char *const mode_name[NMODE] = {"auto", "fused", "fused split 2", "fused split 8"};
static const float EPS = 1e-6f;

typedef struct nbuf {
    hweight W;
    dsv4_weight dw;
    float *x, *nw, *dx, *dnw, *dy, *dq; /* host x, norm weight; device x, norm weight, y, yq */
    float *y0, *q0, *y1, *q1, *yc, *qc; /* host results */
} nbuf;

static int64_t n_tail;   /* calls whose GEMV launch ran a norm */
static int64_t n_signal; /* calls whose GEMV launch raised the signal */
static int32_t *g_sig;   /* the signal of every call's last entry (device) */

/* The GEMV takes the entry (bk_linear.cu gemv_ok; these shapes: whole chunks, aligned x). */
static int gemv_takes(const nentry *ne)
{
    const int E = ne->fmt == B16 ? 8 : ne->fmt == FP8 ? 16 : 32;
    return ne->cols % E == 0;
}

/* The GPU op on every entry (norms when with_norm), forced to mode md, the last entry with the
 * signal sig (zeroed first; 1 after the op: checked); the path it took, or -1. */
static int gpu_multi(ctx *cx, nbuf *m, const ncase *c, int64_t N, int md, int with_norm,
                     int32_t *sig)
{
    dsv4_bk_linear_entry e[MAXE];
    for (int i = 0; i < c->n; i++) {
        e[i] = dsv4_bk_lin_entry(&m[i].dw, m[i].dx, c->e[i].cols, m[i].dy, c->e[i].rows,
                                 c->e[i].round);
        if (with_norm && c->e[i].norm)
            e[i].norm = m[i].dnw, e[i].yq = m[i].dq, e[i].eps = EPS, e[i].qblock = 128;
    }
    e[c->n - 1].signal = sig;
    CHECK(dsv4_bk_memset0(cx->gpu, sig, sizeof *sig) == DSV4_OK);
    const int old = dsv4_cuda_linear_force_path(mode_path[md]);
    const int olds = dsv4_cuda_linear_force_split(mode_split[md]);
    dsv4_status st = dsv4_bk_linear_multi(cx->gpu, e, c->n, N);
    const int p = dsv4_cuda_linear_last_path();
    n_signal += st == DSV4_OK && dsv4_cuda_linear_last_signal() == c->n - 1;
    dsv4_cuda_linear_force_path(old);
    dsv4_cuda_linear_force_split(olds);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    CHECK_MSG(st == DSV4_OK, "%s N=%lld %s: %s", c->name, (long long)N, mode_name[md],
              dsv4_last_error());
    int32_t raised = 0;
    if (st == DSV4_OK) st = dsv4_bk_download(cx->gpu, &raised, sig, sizeof raised);
    CHECK_MSG(st != DSV4_OK || raised == 1, "%s N=%lld %s: the signal is %d after the op", c->name,
              (long long)N, mode_name[md], (int)raised);
    return st == DSV4_OK ? p : -1;
}

static dsv4_status download(ctx *cx, nbuf *m, const ncase *c, int64_t N, int second)
{
    for (int i = 0; i < c->n; i++) {
        const size_t ny = (size_t)(N * c->e[i].rows) * sizeof(float);
        DSV4_TRY(dsv4_bk_download(cx->gpu, second ? m[i].y1 : m[i].y0, m[i].dy, ny));
        if (c->e[i].norm)
            DSV4_TRY(dsv4_bk_download(cx->gpu, second ? m[i].q1 : m[i].q0, m[i].dq, ny));
    }
    return DSV4_OK;
}

/* Entries whose y (and yq) differ between the reference (y0, q0) and the call (y1, q1). */
static int differ(const nbuf *m, const ncase *c, int64_t N)
{
    int bad = 0;
    for (int i = 0; i < c->n; i++) {
        const size_t ny = (size_t)(N * c->e[i].rows) * sizeof(float);
        bad += memcmp(m[i].y0, m[i].y1, ny) != 0 || (c->e[i].norm && memcmp(m[i].q0, m[i].q1, ny));
    }
    return bad;
}

/* The CPU op with the norms against its projections, then the CPU norm op. */
static void cpu_check(ctx *cx, nbuf *m, const ncase *c, int64_t N)
{
    dsv4_bk_linear_entry e[MAXE];
    dsv4_status st = DSV4_OK;
    for (int i = 0; i < c->n && st == DSV4_OK; i++) {
        e[i] = dsv4_bk_lin_entry(&m[i].W.w, m[i].x, c->e[i].cols, m[i].y0, c->e[i].rows,
                                 c->e[i].round);
        st = dsv4_bk_linear(cx->cpu, &m[i].W.w, 0, c->e[i].rows, m[i].x, c->e[i].cols, N, m[i].yc,
                            c->e[i].rows, c->e[i].round);
        if (st == DSV4_OK && c->e[i].norm) {
            st = dsv4_bk_rmsnorm_quant(cx->cpu, m[i].yc, m[i].qc, m[i].yc, m[i].nw, N, c->e[i].rows,
                                       EPS, 128);
            e[i].norm = m[i].nw, e[i].yq = m[i].q0, e[i].eps = EPS, e[i].qblock = 128;
        }
    }
    if (st == DSV4_OK) st = dsv4_bk_linear_multi(cx->cpu, e, c->n, N);
    CHECK_MSG(st == DSV4_OK, "%s N=%lld cpu: %s", c->name, (long long)N, dsv4_last_error());
    int bad = 0;
    for (int i = 0; i < c->n && st == DSV4_OK; i++) {
        const size_t ny = (size_t)(N * c->e[i].rows) * sizeof(float);
        bad += memcmp(m[i].y0, m[i].yc, ny) != 0 ||
               (c->e[i].norm && memcmp(m[i].q0, m[i].qc, ny) != 0);
    }
    CHECK_MSG(bad == 0, "%s N=%lld cpu: %d entries not the composition", c->name, (long long)N,
              bad);
}

static void run_case(ctx *cx, const ncase *c)
{
    nbuf m[MAXE];
    memset(m, 0, sizeof m);
    int64_t nmax = 0;
    for (int k = 0; k < 8 && c->ns[k]; k++) nmax = c->ns[k] > nmax ? c->ns[k] : nmax;
    dsv4_status st = DSV4_OK;
    for (int i = 0; i < c->n && st == DSV4_OK; i++) {
        const nentry *ne = &c->e[i];
        const size_t nx = (size_t)(nmax * ne->cols), ny = (size_t)(nmax * ne->rows);
        make_weight(&m[i].W, ne->name, ne->fmt, ne->sdt, ne->rows, ne->cols);
        st = dsv4_bk_weight_upload(cx->gpu, &m[i].W.w, 0, &m[i].dw);
        m[i].x = malloc(nx * sizeof(float));
        m[i].nw = malloc((size_t)ne->rows * sizeof(float));
        fill_x(m[i].x, (int64_t)nx);
        for (int64_t j = 0; j < ne->rows; j++) m[i].nw[j] = (float)(0.25 + 1.5 * rnd_unit());
        float **h[] = {&m[i].y0, &m[i].q0, &m[i].y1, &m[i].q1, &m[i].yc, &m[i].qc};
        for (size_t k = 0; k < sizeof h / sizeof *h; k++) *h[k] = malloc(ny * sizeof(float));
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, nx * sizeof(float), (void **)&m[i].dx);
        if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, m[i].dx, m[i].x, nx * sizeof(float));
        if (st == DSV4_OK)
            st = dsv4_bk_alloc(cx->gpu, (size_t)ne->rows * sizeof(float), (void **)&m[i].dnw);
        if (st == DSV4_OK)
            st = dsv4_bk_upload(cx->gpu, m[i].dnw, m[i].nw, (size_t)ne->rows * sizeof(float));
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, ny * sizeof(float), (void **)&m[i].dy);
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, ny * sizeof(float), (void **)&m[i].dq);
    }
    CHECK_MSG(st == DSV4_OK, "%s: setup: %s", c->name, dsv4_last_error());
    for (int k = 0; st == DSV4_OK && k < 8 && c->ns[k]; k++) {
        const int64_t N = c->ns[k];
        cpu_check(cx, m, c, N);
        for (int md = 0; md < NMODE; md++) {
            if (md > 0 && N > 16) continue;
            /* the reference: the op without norms, then the GPU norm op */
            int p = gpu_multi(cx, m, c, N, md, 0, g_sig);
            for (int i = 0; i < c->n && p >= 0; i++)
                if (c->e[i].norm &&
                    dsv4_bk_rmsnorm_quant(cx->gpu, m[i].dy, m[i].dq, m[i].dy, m[i].dnw, N,
                                          c->e[i].rows, EPS, 128) != DSV4_OK)
                    p = -1;
            if (p < 0 || download(cx, m, c, N, 0) != DSV4_OK) {
                CHECK_MSG(0, "%s N=%lld %s: reference: %s", c->name, (long long)N, mode_name[md],
                          dsv4_last_error());
                continue;
            }
            int want = -1; /* the first normed entry in a GEMV launch, if its row fits */
            for (int i = 0; i < c->n && want < 0; i++)
                if (c->e[i].norm && gemv_takes(&c->e[i]) && c->e[i].rows <= NORM_MAX) want = i;
            int bad = 0, tail = -1;
            for (int r = 0; r < 3; r++) {
                const int q = gpu_multi(cx, m, c, N, md, 1, g_sig);
                if (q != p || download(cx, m, c, N, 1) != DSV4_OK) {
                    CHECK_MSG(0, "%s N=%lld %s: path %d, reference's %d", c->name, (long long)N,
                              mode_name[md], q, p);
                    break;
                }
                tail = dsv4_cuda_linear_last_norm_tail();
                bad += differ(m, c, N);
            }
            if (p != DSV4_LIN_PATH_MULTI) want = -1;
            n_tail += tail >= 0;
            CHECK_MSG(bad == 0, "%s N=%lld %s: %d entry results not the composition's", c->name,
                      (long long)N, mode_name[md], bad);
            CHECK_MSG(tail == want, "%s N=%lld %s: the tail ran entry %d's norm, expected %d",
                      c->name, (long long)N, mode_name[md], tail, want);
            printf("  %-26s N=%-3lld %-13s path %d, tail on entry %2d: %s\n", c->name, (long long)N,
                   mode_name[md], p, tail, bad ? "DIFFERENT" : "same bits x3");
        }
    }
    for (int i = 0; i < c->n; i++) {
        if (m[i].dw.data) dsv4_bk_weight_free(cx->gpu, &m[i].dw);
        dsv4_bk_free(cx->gpu, m[i].dx), dsv4_bk_free(cx->gpu, m[i].dnw);
        dsv4_bk_free(cx->gpu, m[i].dy), dsv4_bk_free(cx->gpu, m[i].dq);
        free(m[i].x), free(m[i].nw), free(m[i].y0), free(m[i].q0), free(m[i].y1), free(m[i].q1);
        free(m[i].yc), free(m[i].qc);
        free_weight(&m[i].W);
    }
}

/* A norm the op must refuse, on both backends: 64 x 256 weight, y rows of 64. */
static void check_errors(ctx *cx)
{
    hweight W;
    make_weight(&W, "err bf16", B16, 0, 64, 256);
    dsv4_weight dw;
    CHECK(dsv4_bk_weight_upload(cx->gpu, &W.w, 0, &dw) == DSV4_OK);
    float *h = calloc(4 * 256, sizeof(float)), *d = NULL;
    CHECK(dsv4_bk_alloc(cx->gpu, 4 * 256 * sizeof(float), (void **)&d) == DSV4_OK);
    if (d) CHECK(dsv4_bk_upload(cx->gpu, d, h, 4 * 256 * sizeof(float)) == DSV4_OK);
    for (int g = 0; g < 2 && d; g++) {
        dsv4_backend *b = g ? cx->gpu : cx->cpu;
        float *buf = g ? d : h; /* x [1, 256]; y, yq, the norm weight: 64 floats each after it */
        dsv4_bk_linear_entry e = dsv4_bk_lin_entry(g ? &dw : &W.w, buf, 256, buf + 256, 64, 1);
        e.norm = buf + 384, e.yq = buf + 320, e.eps = EPS, e.qblock = 128;
        CHECK(dsv4_bk_linear_multi(b, &e, 1, 1) == DSV4_OK);
        e.ldy = 65;
        CHECK(dsv4_bk_linear_multi(b, &e, 1, 1) == DSV4_ERR_INVALID_ARGUMENT);
        e.ldy = 64, e.yq = NULL;
        CHECK(dsv4_bk_linear_multi(b, &e, 1, 1) == DSV4_ERR_INVALID_ARGUMENT);
        e.yq = buf + 320, e.qblock = 0;
        CHECK(dsv4_bk_linear_multi(b, &e, 1, 1) == DSV4_ERR_INVALID_ARGUMENT);
    }
    dsv4_bk_free(cx->gpu, d);
    dsv4_bk_weight_free(cx->gpu, &dw);
    free(h);
    free_weight(&W);
}

int main(int argc, char **argv)
{
    const int small = argc > 1 && !strcmp(argv[1], "--small");
    dsv4_cpu_pool *pool;
    ctx cx;
    if (ctx_open(&cx, &pool) != DSV4_OK) return test_finish();
    check_errors(&cx);
    CHECK(dsv4_bk_alloc(cx.gpu, sizeof *g_sig, (void **)&g_sig) == DSV4_OK);
    const ncase *cases = small ? small_cases : full_cases;
    const size_t n =
        small ? sizeof small_cases / sizeof *small_cases : sizeof full_cases / sizeof *full_cases;
    for (size_t i = 0; i < n; i++) run_case(&cx, &cases[i]);
    printf("linear_multi norms: %lld calls ran a norm in the GEMV's launch\n", (long long)n_tail);
    CHECK_MSG(n_tail > 0, "no call ran the GEMV's norm tail");
    printf("linear_multi signals: %lld calls raised it in the GEMV's launch\n",
           (long long)n_signal);
    CHECK_MSG(n_signal > 0, "no call raised the signal in the GEMV's launch");
    dsv4_bk_free(cx.gpu, g_sig);
    ctx_close(&cx, pool);
    return test_finish();
}
