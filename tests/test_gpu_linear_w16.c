/*
 * test_gpu_linear_w16.c - GPU op test (ctest -L gpu) of W16 (src/backend/cuda/linear_w16.cu,
 * DSV4_LIN_PATH_W16: bf16 wgmma from a TMA-fed shared-memory ring, BF16 weights and FP8 weights
 * widened to bf16) against the CPU op (dsv4_bk_linear / _grouped on the CPU backend), on its own
 * file because test_gpu_linear.c is past the size guide. Shapes: the MoE gate of Flash (256 x
 * 4096) and Pro (384 x 7168; K split over a cluster), a head-like BF16 matrix (16384 x 4096,
 * persistent grid) and one of rows not a multiple of 64 with row0 > 0, wo_a grouped of Flash (8 x
 * 1024 x 4096) and Pro (16 x 1024 x 4096), FP8 with f32 scales and groups of rows that are not
 * multiples of 64 (tiles across scale blocks), ungrouped FP8; N 1..200 incl. odd N; round_bf16 on
 * and off; x three ways: bf16-exact (the wgmma path), general f32 (every tile on the exact f32
 * path), and bf16 but for one 128-column block of some tokens (tiles or K slices of both paths
 * in one call). W16 forced (N <= 128: its 128-token tiles above 64), and the dispatcher's pick
 * (which must be W16 on the engine's shapes: BF16 at N >= 3, FP8 grouped at N >= 3, 2 on >= 64 MB
 * (w16_takes); above 128 in
 * chunks of <= 128). Outside [N, nrows] the output stays untouched; the same
 * call twice gives the same bits.
 *
 * Bound, per output element, S = sum_c |x_c| |w_c| (the CPU op on |x| and |W|; its own f32
 * rounding covered by a 1.001 factor):
 *   wgmma path (x bf16-exact): |y_gpu - y_cpu| <= (1e-5 + 136 * 2^-13) * S
 * from the accumulation model in linear_w16.cu (F8W's, test_gpu_linear.c): per 128-column block
 * eight k16 wgmmas, each adding 17 addends (16 exact bf16 x bf16 products and the accumulator)
 * aligned to the largest and truncated to 14 significant bits, each off by < 2^-13 of the
 * block's sum |w x|; 1e-5 S covers the f32 promotions and split sums as for every kernel.
 *   f32 path (any other x): |y_gpu - y_cpu| <= 1e-5 * S, test_gpu_linear's bound.
 * With round_bf16 the GPU's value must be the bf16 rounding of some real within the bound of the
 * CPU's unrounded sum. The test also prints the wgmma path's worst error in units of 1e-5 S
 * (how far below the model the hardware stays).
 *
 * usage: test_gpu_linear_w16 [--small | --bench [NAME [N]]] (--small: small shapes, for
 * compute-sanitizer; --bench: W16 against the kernels it replaces, graph replay, weights from HBM;
 * NAME: only the shapes whose name contains it, N: only that row count)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cuda/linear_path.cuh"
#include "model/quant_sim.h"

#include <math.h>
#include <stdint.h>

#define LIN_TEST_SEED 0x13198a2e03707344ull /* this binary's inputs (test_linear.h) */
#include "test_linear.h"

#define FP8 DSV4_FORMAT_FP8
#define B16 DSV4_FORMAT_BF16
#define E8  DSV4_DT_F8_E8M0
#define SF  DSV4_DT_F32

/* ---- cases ----------------------------------------------------------------------------------- */
typedef struct tcase {
    const char *name;
    int fmt, sdt;
    int64_t rows, cols, row0, nrows; /* groups > 0: all rows, row0 0 */
    int groups;                      /* > 0: dsv4_bk_linear_grouped */
    int64_t ns[8];                   /* N values, 0-terminated */
    int engine;                      /* an engine shape: the dispatcher must pick W16 where
                                        w16_takes says */
} tcase;

static const tcase full_cases[] = {
    {"flash gate bf16", B16, 0, 256, 4096, 0, 256, 0, {33, 40, 64, 9, 16, 17, 32, 0}, 1},
    {"pro gate bf16", B16, 0, 384, 7168, 0, 384, 0, {33, 57, 64, 100, 128, 200, 0}, 1},
    {"head-like bf16", B16, 0, 16384, 4096, 0, 16384, 0, {35, 64, 128, 0}, 1},
    {"bf16 1000x4096 row0 24", B16, 0, 1000, 4096, 24, 955, 0, {33, 47, 64, 1, 77, 0}, 1},
    {"flash wo_a fp8 grouped", FP8, E8, 8192, 4096, 0, 8192, 8, {9, 16, 31, 64, 5, 65, 128}, 1},
    {"pro wo_a fp8 grouped", FP8, E8, 16384, 4096, 0, 16384, 16, {13, 64, 100, 0}, 1},
    {"fp8 f32-scale 4 x 100 grouped", FP8, SF, 400, 1024, 0, 400, 4, {9, 33, 64, 90, 0}, 1},
    {"fp8 1000x2048 row0 77", FP8, E8, 1000, 2048, 77, 901, 0, {9, 33, 64, 120, 0}, 0},
};

static const tcase small_cases[] = {
    {"small bf16 gate", B16, 0, 128, 1024, 0, 128, 0, {33, 64, 100, 130, 0}, 1},
    {"small bf16 odd rows", B16, 0, 200, 256, 8, 150, 0, {40, 128, 0}, 1},
    {"small fp8 grouped", FP8, E8, 192, 512, 0, 192, 3, {9, 24, 80, 0}, 1},
    {"small fp8 140 tiles", FP8, E8, 140 * 64, 256, 0, 140 * 64, 0, {12, 99, 0}, 0},
};

/* Where the dispatcher must pick W16 on an engine shape (bk_linear.cu w16_wins): BF16 from 3 rows,
 * FP8 grouped from 3 rows, 2 on matrices of >= 64 MB. */
static int w16_takes(const tcase *c, int64_t N)
{
    if (!c->engine) return 0;
    if (c->fmt == B16) return N >= 3;
    const double bytes = (double)c->rows * (double)c->cols; /* FP8: a byte a weight */
    return N >= (bytes >= 64e6 ? 2 : 3);
}

enum { XM_BF16 = 0, XM_F32 = 1, XM_MIXED = 2 };
static const char *xm_name[] = {"bf16 x", "f32 x", "mixed x"};
static const uint32_t SENTINEL = 0x7fc0deadu;
static const double W16_EXTRA = 136.0 * 0x1p-13;
static double worst_bound[2], worst_f32units; /* [0]: wgmma path, [1]: f32 path; info */
static int64_t checks;

/* got/want [N, ldy]; unr: the CPU's unrounded result (round); S [N, nrows]; extra: the path's
 * term of the bound (0: the f32 bound). */
static void compare(const tcase *c, const char *what, int64_t N, int round, int64_t ldy,
                    const float *got, const float *want, const float *unr, const float *S,
                    double extra, int wg)
{
    const int64_t nr = c->nrows;
    double worst = 0, worst_u = 0;
    int64_t bad = 0, clobbered = 0;
    for (int64_t t = 0; t < N; t++)
        for (int64_t j = 0; j < ldy; j++) {
            const int64_t i = t * ldy + j;
            if (j >= nr) {
                uint32_t u;
                memcpy(&u, &got[i], 4);
                clobbered += u != SENTINEL;
                continue;
            }
            const float g = got[i], w = want[i];
            if (isnan(g) || isnan(w)) {
                bad++;
                continue;
            }
            const double s = 1.001 * S[t * nr + j] + 1e-35, bound = (1e-5 + extra) * s;
            double err = fabs((double)g - (double)w);
            if (round && g != w) {
                double lo, hi;
                bf16_cell(g, &lo, &hi);
                const double u = unr[i];
                err = u < lo ? lo - u : u > hi ? u - hi : 0.0;
            }
            if (err / bound > worst) worst = err / bound;
            if (err / (1e-5 * s) > worst_u) worst_u = err / (1e-5 * s);
            if (err > bound) bad++;
        }
    checks++;
    if (worst > worst_bound[wg]) worst_bound[wg] = worst;
    if (wg == 0 && worst_u > worst_f32units) worst_f32units = worst_u;
    printf("  %-30s N=%-3lld rnd=%d %-7s %-5s err/bound %.4f (err / 1e-5 S %.3f)%s\n", c->name,
           (long long)N, round, what, wg ? "f32" : "wgmma", worst, worst_u,
           bad || clobbered ? "  FAIL" : "");
    CHECK_MSG(bad == 0, "%s N=%lld %s: %lld elements over the bound (worst %.3f)", c->name,
              (long long)N, what, (long long)bad, worst);
    CHECK_MSG(clobbered == 0, "%s N=%lld %s: %lld elements outside the output written", c->name,
              (long long)N, what, (long long)clobbered);
}

static dsv4_status case_op(dsv4_backend *b, const dsv4_weight *w, const tcase *c, const float *x,
                           int64_t ldx, int64_t N, float *y, int64_t ldy, int round)
{
    if (c->groups) return dsv4_bk_linear_grouped(b, w, c->groups, x, ldx, N, y, ldy, round);
    return dsv4_bk_linear(b, w, c->row0, c->nrows, x, ldx, N, y, ldy, round);
}

/* One GPU call forced to `path` on a sentinel-filled output; returns the path taken, -1 on
 * error. */
static int gpu_call(ctx *cx, const dsv4_weight *dw, const tcase *c, const float *dx, int64_t ldx,
                    int64_t N, float *dy, int64_t ldy, int round, int path, const float *sent,
                    float *out)
{
    const size_t yb = (size_t)(N * ldy) * sizeof(float);
    dsv4_status st = dsv4_bk_upload(cx->gpu, dy, sent, yb);
    const int old = dsv4_cuda_linear_force_path(path);
    if (st == DSV4_OK) st = case_op(cx->gpu, dw, c, dx, ldx, N, dy, ldy, round);
    dsv4_cuda_linear_force_path(old);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    if (st == DSV4_OK) st = dsv4_bk_download(cx->gpu, out, dy, yb);
    CHECK_MSG(st == DSV4_OK, "%s N=%lld: %s", c->name, (long long)N, dsv4_last_error());
    return st == DSV4_OK ? dsv4_cuda_linear_last_path() : -1;
}

/* x [N, ldx] for mode xm: bf16-exact, general f32 (every row has non-bf16 values), or bf16 but
 * for block 1 (columns 128..255) of the tokens t % 5 == 2. */
static void make_x(float *x, int64_t N, int64_t ldx, int xm)
{
    fill_x(x, N * ldx); /* f32: every 128-column block holds values bf16 does not */
    if (xm == XM_F32) return;
    for (int64_t t = 0; t < N; t++) {
        float keep[128];
        const int mixed = xm == XM_MIXED && t % 5 == 2 && ldx >= 256;
        if (mixed) memcpy(keep, x + t * ldx + 128, sizeof keep);
        dsv4_sim_bf16(x + t * ldx, ldx);
        if (mixed) {
            memcpy(x + t * ldx + 128, keep, sizeof keep);
            x[t * ldx + 128] = 3.0f + 0x1p-20f;
        }
    }
}

static void run_case(ctx *cx, const tcase *c)
{
    hweight W, A;
    dsv4_weight dw;
    dsv4_status st = make_weights(cx, &W, &A, &dw, c->name, c->fmt, c->sdt, c->rows, c->cols);
    const int64_t ldx = c->groups ? c->groups * c->cols : c->cols, ldy = c->nrows + 3;
    for (int k = 0; st == DSV4_OK && k < 8 && c->ns[k]; k++) {
        const int64_t N = c->ns[k];
        for (int xm = 0; xm < 3; xm++) {
            const int round = (k + xm) & 1;
            const size_t nx = (size_t)(N * ldx), ny = (size_t)(N * ldy);
            float *x = malloc(nx * sizeof *x), *xa = malloc(nx * sizeof *xa);
            float *yc = malloc(ny * sizeof *yc), *yu = malloc(ny * sizeof *yu);
            float *yg = malloc(ny * sizeof *yg), *yg2 = malloc(ny * sizeof *yg2);
            float *sent = malloc(ny * sizeof *sent);
            float *S = malloc((size_t)(N * c->nrows) * sizeof *S);
            make_x(x, N, ldx, xm);
            for (size_t i = 0; i < nx; i++) xa[i] = fabsf(x[i]);
            for (size_t i = 0; i < ny; i++) memcpy(&sent[i], &SENTINEL, 4);
            dsv4_status s2 = case_op(cx->cpu, &W.w, c, x, ldx, N, yc, ldy, round);
            if (s2 == DSV4_OK) s2 = case_op(cx->cpu, &W.w, c, x, ldx, N, yu, ldy, 0);
            if (s2 == DSV4_OK) s2 = case_op(cx->cpu, &A.w, c, xa, ldx, N, S, c->nrows, 0);
            CHECK_MSG(s2 == DSV4_OK, "%s: cpu: %s", c->name, dsv4_last_error());
            float *dx = NULL, *dy = NULL;
            if (s2 == DSV4_OK) s2 = dsv4_bk_alloc(cx->gpu, nx * sizeof *x, (void **)&dx);
            if (s2 == DSV4_OK) s2 = dsv4_bk_alloc(cx->gpu, ny * sizeof *yg, (void **)&dy);
            if (s2 == DSV4_OK) s2 = dsv4_bk_upload(cx->gpu, dx, x, nx * sizeof *x);
            CHECK_MSG(s2 == DSV4_OK, "%s: gpu buffers: %s", c->name, dsv4_last_error());
            if (s2 == DSV4_OK && N > 128) {
                /* above 128 rows the dispatcher runs chunks of <= 128 rows on W16 (bk_linear.cu
                 * lin_chunks): against the CPU with W16's bound, and the same bits twice */
                const int q =
                    gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, round, DSV4_LIN_PATH_AUTO, sent, yg);
                CHECK_MSG(q == DSV4_LIN_PATH_W16, "%s N=%lld: the dispatcher's chunks took path %d",
                          c->name, (long long)N, q);
                if (q == DSV4_LIN_PATH_W16)
                    compare(c, xm_name[xm], N, round, ldy, yg, yc, yu, S,
                            xm == XM_F32 ? 0.0 : W16_EXTRA, xm == XM_F32);
                gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, round, DSV4_LIN_PATH_AUTO, sent, yg2);
                CHECK_MSG(memcmp(yg, yg2, ny * sizeof *yg) == 0,
                          "%s N=%lld %s: two identical calls differ", c->name, (long long)N,
                          xm_name[xm]);
            } else if (s2 == DSV4_OK) {
                /* W16 forced, twice: the same bits */
                const int p =
                    gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, round, DSV4_LIN_PATH_W16, sent, yg);
                CHECK_MSG(p == DSV4_LIN_PATH_W16, "%s N=%lld: forced W16 took path %d", c->name,
                          (long long)N, p);
                if (p == DSV4_LIN_PATH_W16)
                    compare(c, xm_name[xm], N, round, ldy, yg, yc, yu, S,
                            xm == XM_F32 ? 0.0 : W16_EXTRA, xm == XM_F32);
                gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, round, DSV4_LIN_PATH_W16, sent, yg2);
                CHECK_MSG(memcmp(yg, yg2, ny * sizeof *yg) == 0,
                          "%s N=%lld %s: two identical calls differ", c->name, (long long)N,
                          xm_name[xm]);
                /* the dispatcher's pick */
                const int q =
                    gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, round, DSV4_LIN_PATH_AUTO, sent, yg2);
                const int want = w16_takes(c, N);
                CHECK_MSG((q == DSV4_LIN_PATH_W16) == want,
                          "%s N=%lld: the dispatcher took path %d (W16 %s)", c->name, (long long)N,
                          q, want ? "expected" : "not expected");
                if (q == DSV4_LIN_PATH_W16) CHECK(memcmp(yg, yg2, ny * sizeof *yg) == 0);
            }
            dsv4_bk_free(cx->gpu, dx);
            dsv4_bk_free(cx->gpu, dy);
            free(x), free(xa), free(yc), free(yu), free(yg), free(yg2), free(sent), free(S);
            fflush(stdout);
        }
    }
    dsv4_bk_weight_free(cx->gpu, &dw);
    free_weight(&W);
    free_weight(&A);
}

/* ---- bench: W16 against the kernels it replaces (MMA for BF16 above N = 32, MMV up to 32 and
 * FMM above for FP8; at N = 128 two W16 calls of 64 rows, the dispatcher's chunks before the
 * 128-token tiles), bf16-valued x (the engine's), output bf16-rounded, weights from HBM (copies
 * in turn, together > 160 MB), CUDA-graph replay. -------------------------------------------- */
enum { BENCH_COPIES = 64 };

/* Per call: each copy's N rows in `parts` calls of N / parts rows (consecutive, as chunks). */
static double bench_one(ctx *cx, dsv4_weight *dw, int nw, int groups, int64_t rows, int64_t cols,
                        const float *dx, float *dy, int64_t N, int path, int parts)
{
    const int old = dsv4_cuda_linear_force_path(path);
    const int64_t ldx = groups * cols, n = N / parts;
    void *g = NULL;
    dsv4_status st = dsv4_bk_graph_begin(cx->gpu);
    for (int i = 0; st == DSV4_OK && i < nw; i++)
        for (int p = 0; st == DSV4_OK && p < parts; p++) {
            const float *x = dx + p * n * ldx;
            float *y = dy + p * n * rows;
            st = groups > 1 ? dsv4_bk_linear_grouped(cx->gpu, &dw[i], groups, x, ldx, n, y, rows, 1)
                            : dsv4_bk_linear(cx->gpu, &dw[i], 0, rows, x, ldx, n, y, rows, 1);
        }
    const int taken = dsv4_cuda_linear_last_path();
    dsv4_cuda_linear_force_path(old);
    dsv4_status se = dsv4_bk_graph_end(cx->gpu, &g);
    if (st == DSV4_OK) st = se;
    const int reps = nw >= 60 ? 4 : 240 / nw;
    if (st == DSV4_OK) st = dsv4_bk_graph_launch(cx->gpu, g);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    const double t0 = test_now();
    for (int r = 0; st == DSV4_OK && r < reps; r++) st = dsv4_bk_graph_launch(cx->gpu, g);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    const double us = (test_now() - t0) * 1e6 / (reps * nw);
    if (g) dsv4_bk_graph_free(cx->gpu, g);
    CHECK_MSG(st == DSV4_OK, "bench: %s", dsv4_last_error());
    static const char *names[] = {"auto",  "gemv", "mma", "simt", "mmv",
                                  "multi", "fmm",  "mmx", "f8w",  "w16"};
    printf(" %s %.2f", taken >= 0 && taken <= 9 ? names[taken] : "?", us);
    return us;
}

/* only: the shapes whose name contains it (NULL: all); only_n: that N alone (0: all) */
static void bench(ctx *cx, const char *only, int64_t only_n)
{
    static const struct {
        const char *name;
        int fmt;
        int64_t rows, cols;
        int groups;
    } sh[] = {
        {"flash gate bf16", B16, 256, 4096, 1},     {"pro gate bf16", B16, 384, 7168, 1},
        {"flash head bf16", B16, 129280, 4096, 1},  {"flash wo_a fp8 g8", FP8, 8192, 4096, 8},
        {"pro wo_a fp8 g16", FP8, 16384, 4096, 16},
    };
    static const int64_t ns[] = {1, 2, 4, 8, 16, 24, 32, 40, 48, 64, 128};
    for (size_t i = 0; i < sizeof sh / sizeof *sh; i++) {
        if (only && !strstr(sh[i].name, only)) continue;
        dsv4_weight w, dw[BENCH_COPIES];
        weight_desc(&w, sh[i].name, sh[i].fmt, E8, sh[i].rows, sh[i].cols);
        const uint64_t bytes = w.data_bytes + w.scale_bytes;
        int nw = (int)((160000000ull + bytes - 1) / bytes);
        if (nw > BENCH_COPIES) nw = BENCH_COPIES;
        dsv4_status st = DSV4_OK;
        int n = 0;
        for (; st == DSV4_OK && n < nw; n++)
            st = dsv4_bk_weight_upload(cx->gpu, &w, 0x77ull + 31ull * (uint64_t)n, &dw[n]);
        if (st != DSV4_OK) n--;
        const int64_t nx = 128 * sh[i].groups * sh[i].cols;
        float *x = malloc((size_t)nx * sizeof *x), *dx = NULL, *dy = NULL;
        fill_x(x, nx);
        dsv4_sim_bf16(x, nx);
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, (size_t)nx * sizeof *x, (void **)&dx);
        if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, dx, x, (size_t)nx * sizeof *x);
        if (st == DSV4_OK)
            st = dsv4_bk_alloc(cx->gpu, (size_t)(128 * sh[i].rows) * sizeof *x, (void **)&dy);
        CHECK_MSG(st == DSV4_OK, "bench %s: %s", sh[i].name, dsv4_last_error());
        for (size_t k = 0; st == DSV4_OK && k < sizeof ns / sizeof *ns; k++) {
            const int64_t N = ns[k];
            if ((only_n && N != only_n) || (N < 8 && sh[i].fmt != FP8)) continue;
            const int old = N > 64             ? DSV4_LIN_PATH_W16
                            : sh[i].fmt == B16 ? (N > 32 ? DSV4_LIN_PATH_MMA : DSV4_LIN_PATH_MMV)
                                               : (N > 16 ? DSV4_LIN_PATH_FMM : DSV4_LIN_PATH_MMV);
            printf("  %-20s N=%-3lld us:", sh[i].name, (long long)N);
            const double a = bench_one(cx, dw, n, sh[i].groups, sh[i].rows, sh[i].cols, dx, dy, N,
                                       old, N > 64 ? 2 : 1);
            const double b = bench_one(cx, dw, n, sh[i].groups, sh[i].rows, sh[i].cols, dx, dy, N,
                                       DSV4_LIN_PATH_W16, 1);
            printf("  old / w16 %.2fx  (%.0f GB/s)\n", a / b, (double)bytes / b * 1e-3);
            fflush(stdout);
        }
        for (int j = 0; j < n; j++) dsv4_bk_weight_free(cx->gpu, &dw[j]);
        dsv4_bk_free(cx->gpu, dx);
        dsv4_bk_free(cx->gpu, dy);
        free(x);
    }
}

int main(int argc, char **argv)
{
    const int small = argc > 1 && !strcmp(argv[1], "--small");
    const int do_bench = argc > 1 && !strcmp(argv[1], "--bench");
    dsv4_cpu_pool *pool;
    ctx cx;
    if (ctx_open(&cx, &pool) != DSV4_OK) return test_finish();
    if (do_bench) {
        bench(&cx, argc > 2 ? argv[2] : NULL, argc > 3 ? atoll(argv[3]) : 0);
    } else {
        printf("w16: bound wgmma path (x bf16-exact) (1e-5 + 136 2^-13) S, f32 path 1e-5 S\n");
        const double t0 = test_now();
        const tcase *cs = small ? small_cases : full_cases;
        const size_t n = small ? sizeof small_cases / sizeof *small_cases
                               : sizeof full_cases / sizeof *full_cases;
        for (size_t i = 0; i < n; i++) run_case(&cx, &cs[i]);
        printf("%.1f s, %lld checks; worst err/bound: wgmma path %.4f, f32 path %.4f; wgmma "
               "path's worst err in units of 1e-5 S: %.3f\n",
               test_now() - t0, (long long)checks, worst_bound[0], worst_bound[1], worst_f32units);
    }
    ctx_close(&cx, pool);
    return test_finish();
}
