/*
 * test_loader.c - the checkpoint loader against checkpoints written by tools/make_checkpoints.py.
 *
 * usage: test_loader FIXTURE_DIR COMMITTED_DIR [--no-sparse]
 *  - tests/fixtures/hf-saved, written by transformers 5.17 itself (tools/hf_save_tiny.py), opens
 *    and every weight equals what transformers saved;
 *  - every tiny-* checkpoint opens, its layout is detected, and every weight dequantised by our
 *    reference decoder equals the generator's own decoding (numpy + ml_dtypes) bit for bit;
 *    every reference tensor is matched by exactly one weight;
 *  - every corrupt/ case fails with the status and message cases.json names;
 *  - the full-size sparse Flash and Pro checkpoints report the published parameter counts
 *    (--no-sparse skips these where the sparse files cannot be made, e.g. the GPU machine).
 */
#include "io/safetensors.h"
#include "model/model.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>

static char fixtures[1024];

typedef struct compare_ctx {
    st_file *ref;
    int matched;
    int mismatched;
    float *row;
    float *want;
} compare_ctx;

static const st_tensor *ref_find(const st_file *f, const char *name)
{
    for (size_t i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static int compare_weight(const char *name, const dsv4_weight *w, void *ctx)
{
    compare_ctx *c = ctx;
    const st_tensor *r = ref_find(c->ref, name);
    if (!r) {
        CHECK_MSG(0, "no reference tensor for %s", name);
        return 0;
    }
    int64_t rows = r->ndim == 2 ? r->shape[0] : 1;
    int64_t cols = r->ndim == 2 ? r->shape[1] : r->ndim == 1 ? r->shape[0] : 1;
    CHECK_MSG(rows == w->rows && cols == w->cols, "%s: shape %lldx%lld vs reference %lldx%lld",
              name, (long long)w->rows, (long long)w->cols, (long long)rows, (long long)cols);
    if (rows != w->rows || cols != w->cols) return 0;
    c->row = realloc(c->row, (size_t)cols * sizeof(float));
    int bad = 0;
    for (int64_t i = 0; i < rows && !bad; i++) {
        dsv4_status st = dsv4_weight_dequant_row(w, i, c->row);
        CHECK_MSG(st == DSV4_OK, "%s: dequant row %lld: %s", name, (long long)i, dsv4_last_error());
        for (int64_t j = 0; j < cols; j++) {
            double want;
            if (r->dtype == DSV4_DT_I64) {
                int64_t v;
                memcpy(&v, r->data + (i * cols + j) * 8, 8);
                want = (double)v;
            } else {
                float v;
                memcpy(&v, r->data + (i * cols + j) * 4, 4);
                want = v;
            }
            if ((float)want != c->row[j]) {
                CHECK_MSG(0, "%s (%s) [%lld, %lld]: got %.9g, reference %.9g", name,
                          dsv4_weight_format_name(w->format), (long long)i, (long long)j,
                          (double)c->row[j], want);
                bad = 1;
                break;
            }
        }
    }
    if (bad)
        c->mismatched++;
    else
        c->matched++;
    return 0;
}

static void check_tiny(const char *base, const char *name, dsv4_layout layout, int mtp_layers,
                       int want_formats)
{
    char dir[1200], ref[1300];
    snprintf(dir, sizeof dir, "%s/%s", base, name);
    snprintf(ref, sizeof ref, "%s/%s.ref.safetensors", base, name);
    dsv4_model *m = NULL;
    dsv4_status st = dsv4_model_open(dir, &m);
    CHECK_MSG(st == DSV4_OK, "%s: %s: %s", name, dsv4_status_name(st), dsv4_last_error());
    if (st != DSV4_OK) return;
    dsv4_model_info info;
    CHECK(dsv4_model_get_info(m, &info) == DSV4_OK);
    CHECK_MSG(info.layout == layout, "%s: layout %d, expected %d", name, info.layout, layout);
    CHECK_MSG(info.num_mtp_layers == mtp_layers, "%s: %d MTP layers, expected %d", name,
              info.num_mtp_layers, mtp_layers);
    int formats = 0;
    for (int f = 0; f < DSV4_FORMAT_COUNT; f++)
        if (info.params_by_format[f]) formats |= 1 << f;
    CHECK_MSG(formats == want_formats, "%s: formats mask 0x%x, expected 0x%x", name, formats,
              want_formats);

    compare_ctx c = {0};
    st = st_file_open(ref, &c.ref);
    CHECK_MSG(st == DSV4_OK, "%s: %s", ref, dsv4_last_error());
    if (st == DSV4_OK) {
        dsv4_model_foreach_weight(m, compare_weight, &c);
        CHECK_MSG(c.mismatched == 0, "%s: %d weights differ", name, c.mismatched);
        CHECK_MSG((size_t)c.matched == c.ref->n_tensors,
                  "%s: %d weights matched, reference has %zu", name, c.matched, c.ref->n_tensors);
        printf("%-22s layout %d, %d weights equal the reference decoding\n", name, info.layout,
               c.matched);
        st_file_close(c.ref);
    }
    free(c.row);
    dsv4_model_close(m);
}

static void check_corrupt(void)
{
    char path[1300];
    snprintf(path, sizeof path, "%s/corrupt/cases.json", fixtures);
    char *text = test_read_file(path, NULL);
    CHECK_MSG(text != NULL, "cannot read %s", path);
    if (!text) return;
    cJSON *cases = cJSON_Parse(text);
    free(text);
    CHECK(cJSON_IsArray(cases) && cJSON_GetArraySize(cases) >= 10);
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cases)
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(cs, "name"));
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(cs, "status"));
        if (!name || !want) {
            CHECK_MSG(0, "malformed case in cases.json");
            continue;
        }
        char dir[1400];
        snprintf(dir, sizeof dir, "%s/corrupt/%s", fixtures, name);
        dsv4_model *m = NULL;
        dsv4_status st = dsv4_model_open(dir, &m);
        CHECK_MSG(m == NULL, "%s: opened a corrupt checkpoint", name);
        dsv4_model_close(m);
        CHECK_MSG(!strcmp(dsv4_status_name(st), want), "%s: got %s (%s), expected %s", name,
                  dsv4_status_name(st), dsv4_last_error(), want);
        const cJSON *sub;
        cJSON_ArrayForEach(sub, cJSON_GetObjectItem(cs, "must_mention"))
        {
            const char *s = cJSON_GetStringValue(sub);
            if (s)
                CHECK_MSG(strstr(dsv4_last_error(), s) != NULL, "%s: message \"%s\" lacks \"%s\"",
                          name, dsv4_last_error(), s);
        }
        printf("corrupt %-28s -> %s: %s\n", name, dsv4_status_name(st), dsv4_last_error());
    }
    cJSON_Delete(cases);
}

/* Published totals: DeepSeek-V4-Flash 284B, DeepSeek-V4-Pro 1.6T parameters. The model cards
 * count the main model; the MTP block comes on top (the checkpoint's total_size includes it). */
static void check_sparse(const char *name, double published, double unit)
{
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/%s", fixtures, name);
    dsv4_model *m = NULL;
    dsv4_status st = dsv4_model_open(dir, &m);
    CHECK_MSG(st == DSV4_OK, "%s: %s: %s", name, dsv4_status_name(st), dsv4_last_error());
    if (st != DSV4_OK) return;
    dsv4_model_info info;
    dsv4_memory_plan plan;
    CHECK(dsv4_model_get_info(m, &info) == DSV4_OK);
    CHECK(dsv4_model_plan_memory(m, 65536, 1, &plan) == DSV4_OK);
    double total = (double)(info.total_params - info.mtp_params);
    CHECK_MSG(round(total / unit) == published, "%s: %.4g parameters, published %g x %g", name,
              total, published, unit);
    CHECK(info.num_mtp_layers == 1);
    CHECK(plan.total_bytes > info.total_bytes);
    printf("%s: %.2fB parameters (MTP %.2fB), %.1f GB stored, %d files\n", name, total / 1e9,
           (double)info.mtp_params / 1e9, (double)info.total_bytes / 1e9, info.num_files);
    dsv4_model_close(m);
}

int main(int argc, char **argv)
{
    const int sparse = !(argc == 4 && !strcmp(argv[3], "--no-sparse"));
    if (argc != 3 && sparse) {
        fprintf(stderr, "usage: test_loader FIXTURE_DIR COMMITTED_DIR [--no-sparse]\n");
        return 2;
    }
    snprintf(fixtures, sizeof fixtures, "%s", argv[1]);
    const int F32 = 1 << DSV4_FORMAT_F32, BF16 = 1 << DSV4_FORMAT_BF16, FP8 = 1 << DSV4_FORMAT_FP8,
              MX = 1 << DSV4_FORMAT_MXFP4, NV = 1 << DSV4_FORMAT_NVFP4, INT = 1 << DSV4_FORMAT_INT;
    check_tiny(argv[2], "hf-saved", DSV4_LAYOUT_HF, 0, F32 | BF16 | INT);
    check_tiny(fixtures, "tiny-official", DSV4_LAYOUT_OFFICIAL, 1, F32 | BF16 | FP8 | MX | INT);
    check_tiny(fixtures, "tiny-official-base", DSV4_LAYOUT_OFFICIAL, 0, F32 | BF16 | FP8 | INT);
    check_tiny(fixtures, "tiny-nvfp4", DSV4_LAYOUT_NVFP4, 1, F32 | BF16 | FP8 | MX | NV | INT);
    check_tiny(fixtures, "tiny-hf", DSV4_LAYOUT_HF, 0, F32 | INT);
    check_tiny(fixtures, "tiny-hf-modules", DSV4_LAYOUT_HF, 0, BF16 | F32 | INT);
    check_corrupt();
    if (sparse) {
        check_sparse("flash-sparse", 284, 1e9);
        check_sparse("pro-sparse", 16, 1e11);
    }
    return test_finish();
}
