/*
 * test_gpu_linear_aq.c - GPU op test (ctest -L gpu) of dsv4_bk_linear_aq: y = act_quant(x) . W^T
 * on x that is not quantised yet (the attention's wo_b in the engine). Where F8W takes the call
 * (FP8 weights of >= 4096 rows, N >= 5) its prologue quantises x itself (bk_linear.cu
 * dsv4_cuda_bk_linear_aq); elsewhere the op is act_quant then the projection. Checked per case:
 *   - against the CPU op (act_quant, then the CPU projection), round_bf16 off, within F8W's bound
 *     (test_gpu_linear.c): |y_gpu - y_cpu| <= (1e-5 + 132 * 2^-13) * S, S = sum_c |q_c| |w_c| with
 *     q = act_quant(x) (the CPU op on |W| and |q|; its own f32 rounding covered by 1.001);
 *   - the same call twice, the same bits (round_bf16 on and off); the path taken is F8W where
 *     the engine relies on it.
 * Against the two CUDA ops in turn (dsv4_bk_act_quant, dsv4_bk_linear) the outputs that differ
 * are counted and printed, not required to be none: there F8W's prologue takes act_quant(x)'s
 * scale again, which comes out half of act_quant's where a block's largest code rounded down
 * to 224 (its codes then twice as large), and the tensor cores' truncated sums of the doubled
 * products need not be exactly twice (H100: 1-28 of 4096 N outputs of wo_b in the last bits).
 * x: general f32 (zeros, wide exponents, both signs), with row strides past the width.
 *
 * usage: test_gpu_linear_aq [--small] (--small: small shapes, for compute-sanitizer)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cuda/linear_path.cuh"
#include "core/error.h"

#include <math.h>
#include <stdint.h>

#define LIN_TEST_SEED 0x452821e638d01377ull /* this binary's inputs (test_linear.h) */
#include "test_linear.h"

typedef struct tcase {
    const char *name;
    int64_t rows, cols, ldx_pad; /* x row stride = cols + ldx_pad */
    int f8w;                     /* the dispatcher must take F8W at N >= 3 */
    int64_t ns[10];              /* 0-terminated */
} tcase;

static const tcase full_cases[] = {
    {"flash wo_b", 4096, 8192, 0, 1, {1, 4, 5, 8, 16, 33, 64, 100, 130, 0}},
    {"flash wq_b", 32768, 1024, 128, 1, {5, 8, 64, 128, 0}},
    {"8192x1024 (indexer wq_b)", 8192, 1024, 0, 1, {1, 6, 24, 0}},
    {"1024x4096 (not F8W)", 1024, 4096, 64, 0, {1, 8, 40, 0}},
};

static const tcase small_cases[] = {
    {"small 4096x512", 4096, 512, 128, 1, {1, 5, 9, 70, 0}},
    {"small 512x1024 (not F8W)", 512, 1024, 0, 0, {3, 12, 0}},
};

/* act_quant then the projection, on the GPU, as two ops. */
static dsv4_status two_ops(ctx *cx, const dsv4_weight *dw, const float *dx, int64_t ldx, float *dq,
                           int64_t N, float *dy, int64_t ldy, int round)
{
    const int64_t cols = dw->cols;
    DSV4_TRY(dsv4_bk_act_quant(cx->gpu, dq, cols, dx, ldx, N, cols, 128));
    return dsv4_bk_linear(cx->gpu, dw, 0, dw->rows, dq, cols, N, dy, ldy, round);
}

static void run_case(ctx *cx, const tcase *c, double *worst)
{
    hweight W, A;
    dsv4_weight dw;
    dsv4_status st =
        make_weights(cx, &W, &A, &dw, c->name, DSV4_FORMAT_FP8, DSV4_DT_F8_E8M0, c->rows, c->cols);
    for (int k = 0; st == DSV4_OK && k < 10 && c->ns[k]; k++) {
        const int64_t N = c->ns[k], ldx = c->cols + c->ldx_pad, ldy = c->rows;
        const size_t nx = (size_t)(N * ldx), nq = (size_t)(N * c->cols), ny = (size_t)(N * ldy);
        float *x = malloc(nx * 4), *q = malloc(nq * 4), *qa = malloc(nq * 4);
        float *yc = malloc(ny * 4), *S = malloc(ny * 4), *yg = malloc(ny * 4);
        float *yg2 = malloc(ny * 4), *yu = malloc(ny * 4);
        fill_x(x, (int64_t)nx);
        /* the CPU op, and S from |act_quant(x)| (the CPU op's own xq) and |W| */
        st = dsv4_bk_linear_aq(cx->cpu, &W.w, x, ldx, q, N, yc, ldy, 0);
        for (size_t i = 0; i < nq; i++) qa[i] = fabsf(q[i]);
        if (st == DSV4_OK)
            st = dsv4_bk_linear(cx->cpu, &A.w, 0, c->rows, qa, c->cols, N, S, ldy, 0);
        CHECK_MSG(st == DSV4_OK, "%s N=%lld: cpu: %s", c->name, (long long)N, dsv4_last_error());
        float *dx = NULL, *dq = NULL, *dy = NULL;
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, nx * 4, (void **)&dx);
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, nq * 4, (void **)&dq);
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, ny * 4, (void **)&dy);
        if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, dx, x, nx * 4);
        for (int round = 0; st == DSV4_OK && round <= 1; round++) {
            st = dsv4_bk_linear_aq(cx->gpu, &dw, dx, ldx, dq, N, dy, ldy, round);
            const int path = dsv4_cuda_linear_last_path();
            if (st == DSV4_OK) st = dsv4_bk_download(cx->gpu, yg, dy, ny * 4);
            if (st == DSV4_OK) st = dsv4_bk_linear_aq(cx->gpu, &dw, dx, ldx, dq, N, dy, ldy, round);
            if (st == DSV4_OK) st = dsv4_bk_download(cx->gpu, yg2, dy, ny * 4);
            if (st == DSV4_OK) st = two_ops(cx, &dw, dx, ldx, dq, N, dy, ldy, round);
            if (st == DSV4_OK) st = dsv4_bk_download(cx->gpu, yu, dy, ny * 4);
            CHECK_MSG(st == DSV4_OK, "%s N=%lld: gpu: %s", c->name, (long long)N,
                      dsv4_last_error());
            if (st != DSV4_OK) break;
            if (c->f8w && N >= 3)
                CHECK_MSG(path == DSV4_LIN_PATH_F8W, "%s N=%lld: path %d, not F8W", c->name,
                          (long long)N, path);
            CHECK_MSG(memcmp(yg, yg2, ny * 4) == 0, "%s N=%lld round %d: two calls differ", c->name,
                      (long long)N, round);
            int64_t diff = 0;
            for (size_t i = 0; i < ny; i++) diff += memcmp(&yg[i], &yu[i], 4) != 0;
            if (diff)
                printf("  %s N=%lld round %d: %lld of %zu outputs not those of the two ops\n",
                       c->name, (long long)N, round, (long long)diff, ny);
            if (round) continue;
            int64_t bad = 0;
            for (size_t i = 0; i < ny; i++) {
                const double b = (1e-5 + 132.0 * 0x1p-13) * 1.001 * (double)S[i];
                const double e = fabs((double)yg[i] - (double)yc[i]);
                if (!(e <= b)) {
                    if (bad++ < 3)
                        printf("  %s N=%lld [%lld]: gpu %.9g cpu %.9g bound %.3g\n", c->name,
                               (long long)N, (long long)i, yg[i], yc[i], b);
                } else if (b > 0 && e / b > *worst) {
                    *worst = e / b;
                }
            }
            CHECK_MSG(bad == 0, "%s N=%lld: %lld outputs past the bound", c->name, (long long)N,
                      (long long)bad);
        }
        dsv4_bk_free(cx->gpu, dx);
        dsv4_bk_free(cx->gpu, dq);
        dsv4_bk_free(cx->gpu, dy);
        free(x), free(q), free(qa), free(yc), free(S), free(yg), free(yg2), free(yu);
    }
    dsv4_bk_weight_free(cx->gpu, &dw);
    free(W.data), free(W.scale), free(A.data), free(A.scale);
}

int main(int argc, char **argv)
{
    const int small = argc > 1 && !strcmp(argv[1], "--small");
    dsv4_cpu_pool *pool;
    ctx cx;
    if (ctx_open(&cx, &pool) != DSV4_OK) return test_finish();
    const tcase *cases = small ? small_cases : full_cases;
    const size_t n =
        small ? sizeof small_cases / sizeof *small_cases : sizeof full_cases / sizeof *full_cases;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) run_case(&cx, &cases[i], &worst);
    printf("linear_aq: worst err/bound %.3f\n", worst);
    ctx_close(&cx, pool);
    return test_finish();
}
