/*
 * test_cuda_dequant.c - GPU test (ctest -L gpu): every weight of the tiny checkpoints, uploaded
 * in its stored format and dequantised on the GPU, equals the CPU reference decoding bit for bit.
 *
 * usage: test_cuda_dequant MODEL_DIR...
 * (the committed checkpoints cover every format: tests/fixtures/hf-saved (F32/BF16),
 * goldens/hd512-fp8 (FP8 + MXFP4), goldens/hd512-nvfp4 (NVFP4), models/dsv4-tiny, mtp).
 */
#include "backend/cuda/cuda_backend.h"
#include "model/model.h"
#include "test_util.h"

#include <stdlib.h>

typedef struct gpu_ctx {
    dsv4_cuda_ctx *cuda;
    int compared;
} gpu_ctx;

static int compare_on_gpu(const char *name, const dsv4_weight *w, void *ctx)
{
    gpu_ctx *g = ctx;
    if (w->format == DSV4_FORMAT_INT && w->dtype != DSV4_DT_I64) return 0;
    dsv4_weight dw;
    dsv4_status st = dsv4_cuda_weight_upload(g->cuda, w, &dw);
    CHECK_MSG(st == DSV4_OK, "%s: upload: %s", name, dsv4_last_error());
    if (st != DSV4_OK) return 0;
    const size_t n = (size_t)(w->rows * w->cols);
    float *dev = NULL, *got = malloc(n * sizeof *got), *want = malloc(n * sizeof *want);
    st = dsv4_cuda_alloc(g->cuda, n * sizeof(float), (void **)&dev);
    if (st == DSV4_OK) st = dsv4_cuda_dequant_rows(g->cuda, &dw, 0, w->rows, dev);
    if (st == DSV4_OK) st = dsv4_cuda_copy_to_host(g->cuda, got, dev, n * sizeof(float));
    CHECK_MSG(st == DSV4_OK, "%s: %s", name, dsv4_last_error());
    for (int64_t r = 0; st == DSV4_OK && r < w->rows; r++)
        dsv4_weight_dequant_row(w, r, want + r * w->cols);
    if (st == DSV4_OK) {
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            if (memcmp(&got[i], &want[i], sizeof(float))) bad++;
        CHECK_MSG(bad == 0, "%s (%s): %zu of %zu elements differ from the CPU decoding", name,
                  dsv4_weight_format_name(w->format), bad, n);
        g->compared++;
    }
    free(got);
    free(want);
    dsv4_cuda_free(g->cuda, dev);
    dsv4_cuda_weight_free(g->cuda, &dw);
    return 0;
}

static void check_dir(dsv4_cuda_ctx *cuda, const char *dir)
{
    dsv4_model *m;
    dsv4_status st = dsv4_model_open(dir, &m);
    CHECK_MSG(st == DSV4_OK, "%s: %s", dir, dsv4_last_error());
    if (st != DSV4_OK) return;
    gpu_ctx g = {cuda, 0};
    dsv4_model_foreach_weight(m, compare_on_gpu, &g);
    printf("%-40s %d weights: GPU dequant == CPU dequant\n", dir, g.compared);
    dsv4_model_close(m);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_cuda_dequant MODEL_DIR...\n");
        return 2;
    }
    dsv4_cuda_ctx *cuda;
    dsv4_status st = dsv4_cuda_ctx_create(0, &cuda);
    CHECK_MSG(st == DSV4_OK, "no CUDA context: %s", dsv4_last_error());
    if (st != DSV4_OK) return test_finish();
    for (int i = 1; i < argc; i++) check_dir(cuda, argv[i]);
    dsv4_cuda_ctx_destroy(cuda);
    return test_finish();
}
