/*
 * test_gpu_rows.c - GPU test (ctest -L gpu) of the backend's per-row ops (bk_rows): every CUDA
 * op against the CPU reference on the same seeded random inputs, at the Flash (D 4096, 64 heads)
 * and Pro (D 7168, 128 heads) shapes, N in {1, 7, 64} rows (the row kernels and the fused q / kv
 * chains also 2 and 257), strided rows, in-place calls, bf16 rounding on and off, RoPE at large
 * positions and inverse, and the kernels' fallbacks for wide rows; and the device's e4m3 and
 * e2m1 roundings (quant_dev.cuh) on every bf16 value, e2m1 on every f32 (a test hook).
 *
 * Each case prints the max abs error, the max relative error |a-b| / max(|b|, floor) (floor
 * stated per case) and the bound with its reason; the exit status counts the failures.
 *
 * usage: test_gpu_rows [--small]   (--small: tiny shapes and e2m1 on the bf16 values only, for
 *                                   compute-sanitizer)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/ops.h"
#include "backend/cuda/quant_hook.cuh"
#include "core/float_formats.h"
#include "model/quant_sim.h"
#include "test_rand.h"
#include "test_util.h"

#include <float.h>
#include <math.h>
#include <stdint.h>

static dsv4_backend *cpu, *gpu;

/* ---- backend memory ------------------------------------------------------------------------- */
static void *dev_from(const void *host, size_t bytes)
{
    void *d = NULL;
    if (dsv4_bk_alloc(gpu, bytes, &d) != DSV4_OK ||
        (host && dsv4_bk_upload(gpu, d, host, bytes) != DSV4_OK)) {
        fprintf(stderr, "device memory: %s\n", dsv4_last_error());
        exit(2);
    }
    return d;
}

static void host_from(void *host, const void *dev, size_t bytes)
{
    if (dsv4_bk_download(gpu, host, dev, bytes) != DSV4_OK) {
        fprintf(stderr, "download: %s\n", dsv4_last_error());
        exit(2);
    }
}

static float *dup(const float *x, int64_t n)
{
    float *y = malloc((size_t)n * sizeof *y);
    memcpy(y, x, (size_t)n * sizeof *y);
    return y;
}

/* ---- comparison (bound: test_rand.h) --------------------------------------------------------- */
static const bound EXACT = {0, FLT_MIN, 0, NULL, "bit-exact"};

static double case_time_us; /* the CUDA call of the case, enqueue to sync */

static void compare(const char *op, const char *shape, const float *got, const float *want,
                    int64_t n, bound b)
{
    const bound_result r = bound_scan(got, want, n, b);
    printf("%-15s %-38s n=%-9lld differ=%-7lld max_abs=%-9.3g max_rel=%-9.3g (floor %.3g) "
           "bound: %s  [%.0f us]\n",
           op, shape, (long long)n, (long long)r.differ, r.max_abs, r.max_rel, b.floor, b.why,
           case_time_us);
    CHECK_MSG(
        r.bad == 0, "%s %s: %lld of %lld elements outside the bound; first [%lld] %.9g vs %.9g", op,
        shape, (long long)r.bad, (long long)n, (long long)r.first_bad,
        r.first_bad >= 0 ? got[r.first_bad] : 0.0, r.first_bad >= 0 ? want[r.first_bad] : 0.0);
}

static void ok(dsv4_status st, const char *what)
{
    if (st != DSV4_OK) {
        fprintf(stderr, "%s: %s\n", what, dsv4_last_error());
        exit(2);
    }
}

/* Runs a CUDA call and waits for it, timing the pair. */
#define GPU_CALL(call)                                                                             \
    do {                                                                                           \
        const double t0_ = test_now();                                                             \
        ok((call), #call);                                                                         \
        ok(dsv4_bk_sync(gpu), "sync after " #call);                                                \
        case_time_us = (test_now() - t0_) * 1e6;                                                   \
    } while (0)

/* The rows of a step: n rows, positions pos[], ids[]; host copy and device copy. */
typedef struct rowset {
    dsv4_bk_rows h, d;
    int32_t *slot, *pos, *ids;
} rowset;

static rowset make_rows(int n, const int32_t *pos, const int32_t *ids)
{
    rowset r;
    r.slot = calloc((size_t)n, sizeof(int32_t));
    r.pos = malloc((size_t)n * sizeof(int32_t));
    r.ids = malloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        r.pos[i] = pos ? pos[i] : i;
        r.ids[i] = ids ? ids[i] : 0;
    }
    r.h = (dsv4_bk_rows){n, r.slot, r.pos, r.ids};
    r.d = (dsv4_bk_rows){n, dev_from(r.slot, (size_t)n * 4), dev_from(r.pos, (size_t)n * 4),
                         dev_from(r.ids, (size_t)n * 4)};
    return r;
}

static void free_rows(rowset *r)
{
    dsv4_bk_free(gpu, (void *)r->d.slot);
    dsv4_bk_free(gpu, (void *)r->d.pos);
    dsv4_bk_free(gpu, (void *)r->d.ids);
    free(r->slot);
    free(r->pos);
    free(r->ids);
}

/* ---- shapes -----------------------------------------------------------------------------------
 */
typedef struct shape {
    const char *name;
    int64_t D;      /* hidden */
    int H, hd, r;   /* heads, head_dim, rope dims */
    int64_t ql, I;  /* q_lora, moe_intermediate */
    int nh_idx, di; /* indexer heads x head_dim */
    int hc;         /* hc_mult */
} shape;

static const shape FLASH = {"flash", 4096, 64, 512, 64, 1024, 2048, 64, 128, 4};
static const shape PRO = {"pro", 7168, 128, 512, 64, 1536, 3072, 64, 128, 4};
static const shape SMALL = {"small", 256, 4, 64, 16, 96, 160, 4, 32, 4};

/* ---- embed ------------------------------------------------------------------------------------
 */
/* A [V, D] table in `format` with random contents; the buffers are returned for freeing. */
static dsv4_weight make_table(dsv4_weight_format format, int64_t V, int64_t D, void **data,
                              void **scale)
{
    dsv4_weight w;
    memset(&w, 0, sizeof w);
    w.name = "embed";
    w.format = format;
    w.ndim = 2;
    w.rows = V;
    w.cols = D;
    w.scale2 = 1.0f;
    *data = *scale = NULL;
    const int64_t n = V * D;
    switch (format) {
    case DSV4_FORMAT_F32: {
        float *p = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) p[i] = rng_normal() * 0.02f; /* not bf16: the op rounds */
        w.dtype = DSV4_DT_F32;
        w.data_bytes = (uint64_t)n * 4;
        *data = p;
        break;
    }
    case DSV4_FORMAT_BF16: {
        uint16_t *p = malloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) p[i] = bf16_bits(rng_normal() * 0.02f);
        w.dtype = DSV4_DT_BF16;
        w.data_bytes = (uint64_t)n * 2;
        *data = p;
        break;
    }
    case DSV4_FORMAT_FP8: {
        uint8_t *p = malloc((size_t)n);
        for (int64_t i = 0; i < n; i++) {
            uint8_t b = (uint8_t)rng_next();
            if ((b & 0x7f) == 0x7f) b ^= 1; /* no NaN code */
            p[i] = b;
        }
        w.scale_rows = (V + 127) / 128;
        w.scale_cols = (D + 127) / 128;
        uint8_t *s = malloc((size_t)(w.scale_rows * w.scale_cols));
        for (int64_t i = 0; i < w.scale_rows * w.scale_cols; i++)
            s[i] = (uint8_t)(112 + rng_next() % 16); /* 2^-15 .. 2^0 */
        w.dtype = DSV4_DT_F8_E4M3;
        w.scale_dtype = DSV4_DT_F8_E8M0;
        w.data_bytes = (uint64_t)n;
        w.scale_bytes = (uint64_t)(w.scale_rows * w.scale_cols);
        *data = p;
        *scale = s;
        break;
    }
    case DSV4_FORMAT_MXFP4: {
        uint8_t *p = malloc((size_t)n / 2);
        for (int64_t i = 0; i < n / 2; i++) p[i] = (uint8_t)rng_next();
        w.scale_rows = V;
        w.scale_cols = D / 32;
        uint8_t *s = malloc((size_t)(V * D / 32));
        for (int64_t i = 0; i < V * D / 32; i++) s[i] = (uint8_t)(118 + rng_next() % 8);
        w.dtype = DSV4_DT_U8;
        w.scale_dtype = DSV4_DT_F8_E8M0;
        w.data_bytes = (uint64_t)n / 2;
        w.scale_bytes = (uint64_t)(V * D / 32);
        *data = p;
        *scale = s;
        break;
    }
    default:
        break;
    }
    w.data = *data;
    w.scale = *scale;
    return w;
}

static void test_embed(const shape *s, int N)
{
    static const dsv4_weight_format fmts[] = {DSV4_FORMAT_BF16, DSV4_FORMAT_FP8, DSV4_FORMAT_F32,
                                              DSV4_FORMAT_MXFP4};
    const int64_t V = 300, D = s->D;
    for (size_t f = 0; f < sizeof fmts / sizeof *fmts; f++) {
        void *data = NULL, *scale = NULL;
        dsv4_weight w = make_table(fmts[f], V, D, &data, &scale), dw;
        ok(dsv4_bk_weight_upload(gpu, &w, 0, &dw), "embed upload");
        int32_t *ids = malloc((size_t)N * 4);
        for (int i = 0; i < N; i++) ids[i] = i == 0 ? (int32_t)(V - 1) : (int32_t)(rng_next() % V);
        rowset rs = make_rows(N, NULL, ids);
        const int copies = f == 0 ? 1 : s->hc;
        const int64_t n = (int64_t)N * copies * D;
        float *want = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
        float *dX = dev_from(NULL, (size_t)n * 4);
        ok(dsv4_cpu_bk_embed(cpu, want, &w, &rs.h, copies, D), "cpu embed");
        GPU_CALL(dsv4_cuda_bk_embed(gpu, dX, &dw, &rs.d, copies, D));
        host_from(got, dX, (size_t)n * 4);
        char label[96];
        snprintf(label, sizeof label, "%s %s N=%d x%d D=%lld", s->name,
                 dsv4_weight_format_name(fmts[f]), N, copies, (long long)D);
        /* decoding is exact and bf16 rounding deterministic */
        compare("embed", label, got, want, n, EXACT);
        dsv4_bk_free(gpu, dX);
        dsv4_bk_weight_free(gpu, &dw);
        free_rows(&rs);
        free(ids);
        free(want);
        free(got);
        free(data);
        free(scale);
    }
}

/* ---- rmsnorm ----------------------------------------------------------------------------------
 */
/* The CPU sums the squares in double and rounds the mean once to f32; the GPU's double sum in
 * another order differs by ~1e-16 relative, so the f32 mean is the same but for a rare
 * halfway case (then 1 f32 ulp). rsqrt, the products and their roundings are the same IEEE
 * operations: an f32 result is within a few ulp: 2^-21 relative (4 ulp) is a safe bound. */
static const bound RMS_F32 = {0x1p-21, FLT_MIN, 0, NULL,
                              "2^-21 rel (double sums in another order: mean off by <= 1 ulp)"};
static const bound RMS_BF16 = {0x1p-21, FLT_MIN, 1, NULL,
                               "1 bf16 ulp (f32 results a few ulp apart may round to the "
                               "neighbouring bf16)"};

static void rms_case(const char *label, int64_t N, int64_t width, int64_t ldx, int64_t ldy,
                     int with_w, int in_place, int round_bf16)
{
    if (in_place) ldy = ldx;
    const int64_t nx = N * ldx, ny = N * ldy;
    float *x = rand_rows(nx, ldx, 1.0f), *w = with_w ? rand_rows(width, width, 0.3f) : NULL;
    for (int64_t i = 0; w && i < width; i++) w[i] = 1.0f + w[i];
    float *want = in_place ? dup(x, nx) : calloc((size_t)ny, 4), *got = malloc((size_t)ny * 4);
    float *dx = dev_from(x, (size_t)nx * 4), *dw = w ? dev_from(w, (size_t)width * 4) : NULL;
    float *dy = in_place ? dx : dev_from(NULL, (size_t)ny * 4);
    ok(dsv4_cpu_bk_rmsnorm(cpu, want, ldy, in_place ? want : x, ldx, w, N, width, 1e-6f,
                           round_bf16),
       "cpu rmsnorm");
    GPU_CALL(dsv4_cuda_bk_rmsnorm(gpu, dy, ldy, dx, ldx, dw, N, width, 1e-6f, round_bf16));
    host_from(got, dy, (size_t)ny * 4);
    char l[120];
    snprintf(l, sizeof l, "%s N=%lld w=%lld ld=%lld/%lld%s%s%s", label, (long long)N,
             (long long)width, (long long)ldx, (long long)ldy, w ? " +w" : "",
             in_place ? " inplace" : "", round_bf16 ? " bf16" : "");
    /* untouched columns of a strided y are compared too (both zero, or both x in place) */
    compare("rmsnorm", l, got, want, ny, round_bf16 ? RMS_BF16 : RMS_F32);
    if (dy != dx) dsv4_bk_free(gpu, dy);
    dsv4_bk_free(gpu, dx);
    dsv4_bk_free(gpu, dw);
    free(x);
    free(w);
    free(want);
    free(got);
}

static void test_rmsnorm(const shape *s, int N)
{
    char l[32];
    snprintf(l, sizeof l, "%s", s->name);
    rms_case(l, N, s->D, s->D, s->D, 1, 0, 1);                         /* attn_norm / ffn_norm */
    rms_case(l, N, s->D, s->D, s->D, 1, 0, 0);                         /* f32 output */
    rms_case(l, N, s->hc * s->D, s->hc * s->D, s->hc * s->D, 0, 0, 0); /* hc flat, no weight */
    rms_case(l, N, s->ql, s->ql, s->ql, 1, 1, 1);                      /* q_norm in place */
    rms_case(l, N, s->hd, s->hd + 64, s->hd + 32, 1, 0, 1);            /* kv_norm, strided */
    rms_case(l, N, s->hd, s->hd + 64, 0, 1, 1, 0);                     /* strided in place */
    if (N <= 2 && s->D > 1024) { /* rows over the shared-memory budget: unstaged; w not staged */
        rms_case(l, N, 41000, 41000, 41000, 1, 1, 1);
        rms_case(l, N, 24000, 24000, 24000, 1, 0, 0);
    }
}

/* ---- head_norm_bf16 ---------------------------------------------------------------------------
 */
static void test_head_norm(const shape *s, int N, int c) /* c > 512: the one-CTA kernel */
{
    const int64_t nv = (int64_t)N * s->H, n = nv * c;
    float *q = rand_rows(n, c, 1.0f), *got = malloc((size_t)n * 4);
    float *dq = dev_from(q, (size_t)n * 4);
    ok(dsv4_cpu_bk_head_norm_bf16(cpu, q, nv, c, 1e-6f), "cpu head_norm");
    GPU_CALL(dsv4_cuda_bk_head_norm_bf16(gpu, dq, nv, c, 1e-6f));
    host_from(got, dq, (size_t)n * 4);
    char l[96];
    snprintf(l, sizeof l, "%s N=%d H=%d c=%d", s->name, N, s->H, c);
    /* bf16 squares summed in double: exact in any order; then the same f32 ops */
    compare("head_norm_bf16", l, got, q, n, EXACT);
    dsv4_bk_free(gpu, dq);
    free(q);
    free(got);
}

/* ---- act_quant --------------------------------------------------------------------------------
 */
static void aq_case(const char *label, int64_t N, int64_t width, int64_t ldx, int64_t ldy,
                    int block, int in_place)
{
    if (in_place) ldy = ldx;
    const int64_t nx = N * ldx, ny = N * ldy;
    float *x = rand_rows(nx, ldx, 1.0f);
    /* edge cases in row 0: an all-zero block, f32 subnormals, a huge block, exact ties */
    for (int64_t i = 0; i < block && i < width; i++) x[i] = 0.0f;
    for (int64_t i = block; i < 2 * block && i < width; i++) x[i] = (float)(i - block) * 1e-39f;
    for (int64_t i = 2 * block; i < 3 * block && i < width; i++) x[i] *= 3e4f;
    for (int64_t i = 3 * block; i < 4 * block && i < width; i++) x[i] = (float)(i % 29) * 0.0625f;
    float *want = in_place ? dup(x, nx) : calloc((size_t)ny, 4), *got = malloc((size_t)ny * 4);
    float *dx = dev_from(x, (size_t)nx * 4), *dy = in_place ? dx : dev_from(NULL, (size_t)ny * 4);
    ok(dsv4_cpu_bk_act_quant(cpu, want, ldy, in_place ? want : x, ldx, N, width, block),
       "cpu act_quant");
    GPU_CALL(dsv4_cuda_bk_act_quant(gpu, dy, ldy, dx, ldx, N, width, block));
    host_from(got, dy, (size_t)ny * 4);
    char l[120];
    snprintf(l, sizeof l, "%s N=%lld w=%lld ld=%lld/%lld blk=%d%s", label, (long long)N,
             (long long)width, (long long)ldx, (long long)ldy, block, in_place ? " inplace" : "");
    /* max-reduction, power-of-two scale and e4m3 rounding: all exact, order-free */
    compare("act_quant", l, got, want, ny, EXACT);
    if (dy != dx) dsv4_bk_free(gpu, dy);
    dsv4_bk_free(gpu, dx);
    free(x);
    free(want);
    free(got);
}

/* Every finite bf16 value through act_quant's e4m3 rounding (the device's hardware conversion,
 * quant_dev.cuh) against the CPU's dsv4_round_e4m3, bit for bit: blocks of 128 that open with
 * 448 * 2^k, so that the block scale is 2^k (the floor of 1e-4 / 448 where that is larger), then
 * 127 of the values up to it in magnitude, both signs, zeros, subnormals. k from -40 (results
 * that underflow into e4m3's subnormals and to zero) to 40. */
static void test_act_quant_bf16_sweep(void)
{
    static const int ks[] = {-40, -13, -1, 0, 1, 13, 40};
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
        const float top = ldexpf(448.0f, ks[ki]);
        float *x = malloc((size_t)(65536 / 127 + 2) * 128 * 4);
        int64_t n = 0;
        for (uint32_t u = 0; u < 65536; u++) {
            const float v = dsv4_bf16_to_f32((uint16_t)u);
            if (!isfinite(v) || fabsf(v) > top) continue;
            if (n % 128 == 0) x[n++] = top;
            x[n++] = v;
        }
        while (n % 128) x[n++] = 0.0f;
        float *want = calloc((size_t)n, 4), *got = malloc((size_t)n * 4);
        float *dx = dev_from(x, (size_t)n * 4), *dy = dev_from(NULL, (size_t)n * 4);
        ok(dsv4_cpu_bk_act_quant(cpu, want, n, x, n, 1, n, 128), "cpu act_quant");
        GPU_CALL(dsv4_cuda_bk_act_quant(gpu, dy, n, dx, n, 1, n, 128));
        host_from(got, dy, (size_t)n * 4);
        char l[64];
        snprintf(l, sizeof l, "every bf16 value, scale 2^%d", ks[ki]);
        compare("act_quant", l, got, want, n, EXACT);
        dsv4_bk_free(gpu, dx);
        dsv4_bk_free(gpu, dy);
        free(x);
        free(want);
        free(got);
    }
}

/* The device's e2m1 rounding (quant_dev.cuh dev_round_e2m1: the indexer's FP4 keys and queries)
 * against the CPU's dsv4_round_e2m1, bit for bit (NaNs with their payload), on every one of the
 * 2^32 f32 bit patterns, in slices of 2^26 (--small: the bit patterns of the 65,536 bf16
 * values, which are what the indexer's FP4 rounds: bf16 values over a power of two). */
static void test_e2m1_every_float(int small)
{
    const uint64_t slice = small ? 65536 : (uint64_t)1 << 26,
                   total = small ? 65536 : (uint64_t)1 << 32;
    uint32_t *x = malloc(slice * 4), *got = malloc(slice * 4);
    float *dx = dev_from(NULL, slice * 4);
    int64_t bad = 0;
    uint32_t first = 0;
    case_time_us = 0;
    for (uint64_t s0 = 0; s0 < total; s0 += slice) {
        for (uint64_t i = 0; i < slice; i++) x[i] = small ? (uint32_t)i << 16 : (uint32_t)(s0 + i);
        ok(dsv4_bk_upload(gpu, dx, x, slice * 4), "upload");
        GPU_CALL(dsv4_cuda_round_e2m1_check(gpu, dx, dx, slice));
        host_from(got, dx, slice * 4);
        for (uint64_t i = 0; i < slice; i++) {
            float v, w;
            memcpy(&v, &x[i], 4);
            w = dsv4_round_e2m1(v);
            uint32_t wb;
            memcpy(&wb, &w, 4);
            if (wb != got[i] && bad++ == 0) first = x[i];
        }
    }
    printf("%-15s %-38s n=%-9llu differ=%lld (first 0x%08x)  bound: bit-exact\n", "e2m1",
           small ? "every bf16 bit pattern" : "every f32 bit pattern", (unsigned long long)total,
           (long long)bad, first);
    CHECK_MSG(bad == 0, "e2m1: %lld of %llu inputs differ from dsv4_round_e2m1, first 0x%08x",
              (long long)bad, (unsigned long long)total, first);
    dsv4_bk_free(gpu, dx);
    free(x);
    free(got);
}

static void test_act_quant(const shape *s, int N)
{
    aq_case(s->name, N, s->D, s->D, s->D, 128, 0);                   /* linear input */
    aq_case(s->name, N, s->I, s->I, s->I, 128, 1);                   /* expert w2 input, in place */
    aq_case(s->name, N, s->hd - s->r, s->hd, 0, 64, 1);              /* kv non-RoPE dims */
    aq_case(s->name, N, s->D + 100, s->D + 128, s->D + 112, 128, 0); /* short last block */
}

/* ---- scale ------------------------------------------------------------------------------------
 */
static void test_scale(const shape *s, int N)
{
    const int64_t n = (int64_t)N * s->nh_idx;
    const float sc = (float)(pow(s->di, -0.5) * pow(s->nh_idx, -0.5));
    for (int rb = 0; rb < 2; rb++) {
        float *x = rand_rows(n, s->nh_idx, 1.0f), *got = malloc((size_t)n * 4);
        float *dx = dev_from(x, (size_t)n * 4);
        ok(dsv4_cpu_bk_scale(cpu, x, n, sc, rb), "cpu scale");
        GPU_CALL(dsv4_cuda_bk_scale(gpu, dx, n, sc, rb));
        host_from(got, dx, (size_t)n * 4);
        char l[96];
        snprintf(l, sizeof l, "%s N=%d nh=%d%s", s->name, N, s->nh_idx, rb ? " bf16" : "");
        compare("scale", l, got, x, n, EXACT); /* one IEEE product (and rounding) each */
        dsv4_bk_free(gpu, dx);
        free(x);
        free(got);
    }
}

/* ---- rope -------------------------------------------------------------------------------------
 */
/* cos / sin: glibc's cosf / sinf and the device's double cos / sin rounded to f32 are each
 * within ~0.5 ulp of the exact value, so they differ by <= 1 ulp (<= 2^-24 absolute, as
 * |cos|, |sin| <= 1); allowing 2 ulp, a.c - b.s moves by <= 2^-23 (|a| + |b|), and the product
 * and sum roundings that may then differ add <= 2^-23 (|a| + |b|) more: the bound on a rotated
 * element is 2^-21 (|a| + |b|) of its input pair (slack), plus one bf16 ulp when rounded. The
 * relative error printed is against the pair magnitude |a| + |b| (the floor). The other dims
 * are untouched or only bf16-rounded: exact. */
static void rope_case(const char *label, const rowset *rs, int n_vec, int dim, int r,
                      const float *freqs_h, const float *freqs_d, int64_t ldx, int inverse,
                      int round_bf16)
{
    const int N = rs->h.n;
    const int64_t n = (int64_t)N * ldx;
    float *x = rand_rows(n, ldx, 1.0f), *want = dup(x, n), *got = malloc((size_t)n * 4);
    float *slack = calloc((size_t)n, 4);
    for (int64_t row = 0; row < N; row++)
        for (int v = 0; v < n_vec; v++)
            for (int i = dim - r; i < dim; i += 2) {
                const int64_t k = row * ldx + (int64_t)v * dim + i;
                slack[k] = slack[k + 1] = 0x1p-21f * (fabsf(x[k]) + fabsf(x[k + 1]));
            }
    float *dx = dev_from(x, (size_t)n * 4);
    ok(dsv4_cpu_bk_rope(cpu, want, ldx, &rs->h, n_vec, dim, r, freqs_h, inverse, round_bf16),
       "cpu rope");
    GPU_CALL(dsv4_cuda_bk_rope(gpu, dx, ldx, &rs->d, n_vec, dim, r, freqs_d, inverse, round_bf16));
    host_from(got, dx, (size_t)n * 4);
    /* the printed relative error: against the pair magnitude (slack / 2^-21) */
    double max_pair_rel = 0;
    for (int64_t k = 0; k < n; k++)
        if (slack[k] > 0) {
            const double e = fabs((double)got[k] - want[k]) / (slack[k] * 0x1p21);
            if (e > max_pair_rel) max_pair_rel = e;
        }
    char l[160];
    snprintf(l, sizeof l, "%s N=%d %dx%d r=%d ld=%lld%s%s", label, N, n_vec, dim, r, (long long)ldx,
             inverse ? " inv" : "", round_bf16 ? " bf16" : "");
    bound b = {0, 1e-3, round_bf16, slack,
               round_bf16 ? "2^-21 (|a|+|b|) + 1 bf16 ulp (cos/sin 1-2 ulp apart)"
                          : "2^-21 (|a|+|b|) (cos/sin 1-2 ulp apart)"};
    compare("rope", l, got, want, n, b);
    printf("%-15s %-38s max |err| / (|a|+|b|) = %.3g (bound 2^-21 = %.3g)\n", "", "", max_pair_rel,
           0x1p-21);
    dsv4_bk_free(gpu, dx);
    free(x);
    free(want);
    free(got);
    free(slack);
}

static void test_rope(const shape *s, int N, const float *fr_h[3], float *fr_d[3])
{
    static const int32_t big[] = {0, 1, 65535, 1000003, 65536, 131071, 999999, 4095};
    int32_t *pos = malloc((size_t)N * 4);
    for (int i = 0; i < N; i++)
        pos[i] = i < 8 ? big[(i + N) % 8] : (int32_t)(rng_next() % (1u << 20));
    if (N == 1) pos[0] = 1000003;
    rowset rs = make_rows(N, pos, NULL);
    const int hd = s->hd, r = s->r, H = s->H;
    char l[48];
    snprintf(l, sizeof l, "%s main", s->name);
    rope_case(l, &rs, H, hd, r, fr_h[0], fr_d[0], (int64_t)H * hd, 0, 1); /* q */
    snprintf(l, sizeof l, "%s comp", s->name);
    rope_case(l, &rs, H, hd, r, fr_h[2], fr_d[2], (int64_t)H * hd, 1, 1); /* o, inverse */
    rope_case(l, &rs, 1, hd, r, fr_h[2], fr_d[2], hd + 64, 0, 1);         /* kv, strided */
    rope_case(l, &rs, s->nh_idx, s->di, r, fr_h[2], fr_d[2], (int64_t)s->nh_idx * s->di, 0, 0);
    snprintf(l, sizeof l, "%s main-yarn", s->name);
    rope_case(l, &rs, H, hd, r, fr_h[1], fr_d[1], (int64_t)H * hd + 96, 1, 0);
    free_rows(&rs);
    free(pos);
}

/* ---- the fused q / kv chains -----------------------------------------------------------------
 * Each fused op is checked twice:
 * - against the separate CUDA ops it stands for, run on a copy of the same input: bit-exact (the
 *   same operations in the same order, RMSNorm's sum in the one device order);
 * - against the CPU op (the composition of the CPU ops). RMSNorm's double sum of squares runs in
 *   another order on the device; the f32 mean is the same unless the exact mean sits within
 *   ~2^-43 of an f32 rounding boundary (~2^-19 a row). Such rows are found by replaying the
 *   device's order on the host (rms_mean_differs); they get the RMSNorm test's 1 bf16 ulp, and
 *   on quantised values one e4m3 step at a scale that may double: 2^-2 of the row's max (slack).
 *   Every other row must be bit-exact outside the rotated dims; those carry the RoPE test's
 *   bound (cos / sin 1-2 ulp apart): 2^-21 (|a| + |b|) of the pair + 1 bf16 ulp. */

/* The f32 mean of squares of x [width] as dsv4_op_rmsnorm (a sequential double sum) and as the
 * device (bk_rows.cu dev_rms_scale: 256 sum threads strided, a warp xor-butterfly, warp sums in
 * order) compute it; nonzero when they differ. */
static int rms_mean_differs(const float *x, int64_t width)
{
    double seq = 0.0, part[256] = {0}, tmp[32];
    for (int64_t i = 0; i < width; i++) seq += (double)x[i] * x[i];
    for (int t = 0; t < 256; t++)
        for (int64_t i = t; i < width; i += 256) part[t] += (double)x[i] * (double)x[i];
    double tot = 0.0;
    for (int w = 0; w < 8; w++) {
        double *v = part + 32 * w;
        for (int o = 16; o > 0; o >>= 1) {
            for (int l = 0; l < 32; l++) tmp[l] = v[l] + v[l ^ o];
            memcpy(v, tmp, sizeof tmp);
        }
        tot += v[0];
    }
    return (float)(seq / (double)width) != (float)(tot / (double)width);
}

/* slack for the elements of row `row` [width] of want when its mean differs: 2^-2 max|want|. */
static int mean_slack(float *slack, const float *x, const float *want, int64_t row, int64_t width)
{
    if (!rms_mean_differs(x + row * width, width)) return 0;
    float mx = 0;
    for (int64_t i = 0; i < width; i++)
        if (fabsf(want[row * width + i]) > mx) mx = fabsf(want[row * width + i]);
    for (int64_t i = 0; i < width; i++) slack[row * width + i] += 0.25f * mx;
    return 1;
}

/* slack of the rotated dims [dim - r, dim) of the vectors [nv, dim] at v (the values before the
 * rotation): 2^-21 (|a| + |b|) + one bf16 ulp of |a| + |b| (>= the rotated values). */
static void rope_slack(float *slack, const float *v, int64_t nv, int dim, int r)
{
    for (int64_t k = 0; k < nv; k++)
        for (int i = dim - r; i < dim; i += 2) {
            const int64_t j = k * dim + i;
            const double m = fabs((double)v[j]) + fabs((double)v[j + 1]);
            const float e = (float)(0x1p-21 * m + ulp_bf16(m));
            slack[j] += e;
            slack[j + 1] += e;
        }
}

/* Positions for n rows: the RoPE test's large ones first, then random below 2^20. */
static int32_t *test_positions(int n)
{
    static const int32_t big[] = {0, 1, 65535, 1000003, 65536, 131071, 999999, 4095};
    int32_t *pos = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++)
        pos[i] = i < 8 ? big[(i + n) % 8] : (int32_t)(rng_next() % (1u << 20));
    return pos;
}

static void test_rmsnorm_quant(const shape *s, int N, int64_t width)
{
    const int64_t n = N * width;
    float *x = rand_rows(n, width, 1.0f), *w = rand_rows(width, width, 0.3f);
    for (int64_t i = 0; i < width; i++) w[i] = 1.0f + w[i];
    float *want = dup(x, n), *wantq = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
    float *gotq = malloc((size_t)n * 4), *sep = malloc((size_t)n * 4),
          *sepq = malloc((size_t)n * 4);
    float *dx = dev_from(x, (size_t)n * 4), *dq = dev_from(NULL, (size_t)n * 4);
    float *dx2 = dev_from(x, (size_t)n * 4), *dq2 = dev_from(NULL, (size_t)n * 4);
    float *dw = dev_from(w, (size_t)width * 4);
    ok(dsv4_cpu_bk_rmsnorm_quant(cpu, want, wantq, want, w, N, width, 1e-6f, 128), "cpu");
    ok(dsv4_cuda_bk_rmsnorm(gpu, dx2, width, dx2, width, dw, N, width, 1e-6f, 1), "separate");
    ok(dsv4_cuda_bk_act_quant(gpu, dq2, width, dx2, width, N, width, 128), "separate");
    GPU_CALL(dsv4_cuda_bk_rmsnorm_quant(gpu, dx, dq, dx, dw, N, width, 1e-6f, 128));
    host_from(got, dx, (size_t)n * 4);
    host_from(gotq, dq, (size_t)n * 4);
    host_from(sep, dx2, (size_t)n * 4);
    host_from(sepq, dq2, (size_t)n * 4);
    float *sl = calloc((size_t)n, 4), *slq = calloc((size_t)n, 4);
    int odd = 0;
    for (int64_t r = 0; r < N; r++) {
        odd += mean_slack(sl, x, want, r, width);
        (void)mean_slack(slq, x, wantq, r, width);
    }
    char l[120];
    snprintf(l, sizeof l, "%s N=%d w=%lld blk=128 (%d odd-mean rows)", s->name, N, (long long)width,
             odd);
    compare("rmsnorm_quant", l, got, sep, n, (bound){0, FLT_MIN, 0, NULL, "= separate ops"});
    compare("rmsnorm_quant.q", l, gotq, sepq, n, (bound){0, FLT_MIN, 0, NULL, "= separate ops"});
    compare("rmsnorm_quant", l, got, want, n,
            (bound){0, FLT_MIN, 0, sl, "bit-exact (odd-mean rows: 2^-2 row max)"});
    compare("rmsnorm_quant.q", l, gotq, wantq, n,
            (bound){0, FLT_MIN, 0, slq, "bit-exact (odd-mean rows: 2^-2 row max)"});
    float *dev[] = {dx, dq, dx2, dq2, dw};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) dsv4_bk_free(gpu, dev[i]);
    float *host[] = {x, w, want, wantq, got, gotq, sep, sepq, sl, slq};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
}

static void test_head_norm_rope(const shape *s, int N, int H, int hd, const float *fr_h,
                                const float *fr_d, const char *tag)
{
    const int r = s->r;
    const int64_t n = (int64_t)N * H * hd;
    int32_t *pos = test_positions(N);
    rowset rs = make_rows(N, pos, NULL);
    float *q = rand_rows(n, hd, 1.0f), *want = dup(q, n), *normed = dup(q, n);
    float *got = malloc((size_t)n * 4), *sep = malloc((size_t)n * 4);
    float *dq = dev_from(q, (size_t)n * 4), *dq2 = dev_from(q, (size_t)n * 4);
    ok(dsv4_cpu_bk_head_norm_rope(cpu, want, &rs.h, H, hd, r, fr_h, 1e-6f), "cpu");
    ok(dsv4_cpu_bk_head_norm_bf16(cpu, normed, (int64_t)N * H, hd, 1e-6f), "cpu head_norm");
    ok(dsv4_cuda_bk_head_norm_bf16(gpu, dq2, (int64_t)N * H, hd, 1e-6f), "separate");
    ok(dsv4_cuda_bk_rope(gpu, dq2, (int64_t)H * hd, &rs.d, H, hd, r, fr_d, 0, 1), "separate");
    GPU_CALL(dsv4_cuda_bk_head_norm_rope(gpu, dq, &rs.d, H, hd, r, fr_d, 1e-6f));
    host_from(got, dq, (size_t)n * 4);
    host_from(sep, dq2, (size_t)n * 4);
    float *sl = calloc((size_t)n, 4);
    rope_slack(sl, normed, (int64_t)N * H, hd, r);
    char l[120];
    snprintf(l, sizeof l, "%s %s N=%d %dx%d r=%d", s->name, tag, N, H, hd, r);
    compare("head_norm_rope", l, got, sep, n, (bound){0, FLT_MIN, 0, NULL, "= separate ops"});
    compare("head_norm_rope", l, got, want, n,
            (bound){0, 1e-3, 0, sl, "exact; rotated: 2^-21 (|a|+|b|) + 1 bf16 ulp"});
    dsv4_bk_free(gpu, dq);
    dsv4_bk_free(gpu, dq2);
    free_rows(&rs);
    float *host[] = {q, want, normed, got, sep, sl};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
    free(pos);
}

/* Rows over S slots: row i in slot i % S at consecutive positions from a per-slot base, so no
 * two rows share a ring index (R > rows a slot); the rest of the ring keeps its contents. */
/* A window ring of n entries (kv_layout.h of hd, r) filled with valid random entries. */
static uint8_t *kv_ring(const dsv4_kv_layout *l, int64_t n, size_t *bytes)
{
    *bytes = (size_t)dsv4_kv_bytes(l, n);
    uint8_t *p = malloc(*bytes);
    for (size_t i = 0; i < *bytes; i++) p[i] = dsv4_fill_kv_byte(l, 77, (int64_t)i);
    return p;
}

/* The f32 values of a ring's n entries, [n, hd] (dsv4_kv_decode). */
static float *kv_values(const dsv4_kv_layout *l, const uint8_t *p, int64_t n)
{
    float *x = malloc((size_t)(n * l->hd) * 4);
    for (int64_t e = 0; e < n; e++) dsv4_kv_decode(l, p, e, x + e * l->hd);
    return x;
}

/* Bytes of a and b that differ (both n bytes). */
static size_t bytes_differ(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += a[i] != b[i];
    return d;
}

static void test_kv_norm_rope_store(const shape *s, int N, const float *fr_h, const float *fr_d)
{
    enum { S = 3 };
    static const int32_t base[S] = {1000003, 65530, 7};
    const int hd = s->hd, r = s->r, R = (N + S - 1) / S + 5;
    const dsv4_kv_layout kl = dsv4_kv_layout_of(hd, r);
    const int64_t n = (int64_t)N * hd, ne = (int64_t)S * R, nw = ne * hd;
    int32_t *slot = malloc((size_t)N * 4), *pos = malloc((size_t)N * 4);
    for (int i = 0; i < N; i++) {
        slot[i] = i % S;
        pos[i] = base[i % S] + i / S;
    }
    rowset rs = make_rows(N, pos, NULL);
    memcpy(rs.slot, slot, (size_t)N * 4);
    ok(dsv4_bk_upload(gpu, (void *)rs.d.slot, slot, (size_t)N * 4), "upload slots");
    size_t wb;
    uint8_t *win = kv_ring(&kl, ne, &wb), *gwin = malloc(wb), *swin = malloc(wb);
    float *kv = rand_rows(n, hd, 1.0f), *w = rand_rows(hd, hd, 0.3f);
    for (int i = 0; i < hd; i++) w[i] = 1.0f + w[i];
    float *want = dup(kv, n), *normed = dup(kv, n), *got = malloc((size_t)n * 4);
    float *sep = malloc((size_t)n * 4);
    float *dkv = dev_from(kv, (size_t)n * 4), *dkv2 = dev_from(kv, (size_t)n * 4);
    float *dw = dev_from(w, (size_t)hd * 4);
    uint8_t *dwin = dev_from(win, wb), *dwin2 = dev_from(win, wb);
    ok(dsv4_cpu_bk_kv_norm_rope_store(cpu, win, R, want, w, &rs.h, hd, r, fr_h, 1e-6f, 64), "cpu");
    ok(dsv4_cpu_bk_rmsnorm(cpu, normed, hd, normed, hd, w, N, hd, 1e-6f, 1), "cpu rmsnorm");
    ok(dsv4_cuda_bk_rmsnorm(gpu, dkv2, hd, dkv2, hd, dw, N, hd, 1e-6f, 1), "separate");
    ok(dsv4_cuda_bk_rope(gpu, dkv2, hd, &rs.d, 1, hd, r, fr_d, 0, 1), "separate");
    ok(dsv4_cuda_bk_act_quant(gpu, dkv2, hd, dkv2, hd, N, hd - r, 64), "separate");
    ok(dsv4_cuda_bk_kv_store(gpu, dwin2, R, hd, r, dkv2, &rs.d), "separate");
    GPU_CALL(dsv4_cuda_bk_kv_norm_rope_store(gpu, dwin, R, dkv, dw, &rs.d, hd, r, fr_d, 1e-6f, 64));
    host_from(got, dkv, (size_t)n * 4);
    host_from(sep, dkv2, (size_t)n * 4);
    host_from(gwin, dwin, wb);
    host_from(swin, dwin2, wb);
    /* bounds per row, then the ring's copies of them */
    float *sl = calloc((size_t)n, 4);
    int odd = 0;
    for (int64_t row = 0; row < N; row++) odd += mean_slack(sl, kv, want, row, hd);
    rope_slack(sl, normed, N, hd, r);
    float *fw = kv_values(&kl, win, ne), *fg = kv_values(&kl, gwin, ne);
    float *fs = kv_values(&kl, swin, ne);
    float *wsl = calloc((size_t)nw, 4);
    for (int row = 0; row < N; row++)
        memcpy(wsl + ((int64_t)slot[row] * R + pos[row] % R) * hd, sl + (int64_t)row * hd,
               (size_t)hd * 4);
    char l[120];
    snprintf(l, sizeof l, "%s N=%d hd=%d r=%d R=%d (%d odd-mean rows)", s->name, N, hd, r, R, odd);
    const bound same = {0, FLT_MIN, 0, NULL, "= separate ops"};
    const bound ref = {0, 1e-3, 0, sl, "exact; rotated: 2^-21 (|a|+|b|) + 1 bf16 ulp"};
    compare("kv_nrs.kv", l, got, sep, n, same);
    /* values, not bytes: the fused op stores a block with the scale it quantised with, the
     * separate kv_store with the one its amax gives (half of it when the amax rounded to 224 s) */
    compare("kv_nrs.win", l, fg, fs, nw, same);
    compare("kv_nrs.kv", l, got, want, n, ref);
    compare("kv_nrs.win", l, fg, fw, nw, (bound){0, 1e-3, 0, wsl, ref.why});
    /* the stored values are the returned kv rows exactly (the layout loses nothing) */
    float *fk = calloc((size_t)n, 4);
    for (int row = 0; row < N; row++)
        memcpy(fk + (int64_t)row * hd, fg + ((int64_t)slot[row] * R + pos[row] % R) * hd,
               (size_t)hd * 4);
    compare("kv_nrs.win=kv", l, fk, got, n, same);
    dsv4_bk_free(gpu, dkv);
    dsv4_bk_free(gpu, dkv2);
    dsv4_bk_free(gpu, dw);
    dsv4_bk_free(gpu, dwin);
    dsv4_bk_free(gpu, dwin2);
    free_rows(&rs);
    float *host[] = {kv, w, want, normed, got, sep, sl, fw, fg, fs, wsl, fk};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
    free(win);
    free(gwin);
    free(swin);
    free(slot);
    free(pos);
}

/* dsv4_bk_q_kv_norm_rope: the query heads and the kv row in one launch must equal the two ops
 * (head_norm_rope, kv_norm_rope_store; each checked against the CPU above) bit for bit, q, kv and
 * the ring's bytes alike; H heads of width hd (hd over the register tile: the two launches). */
static void test_q_kv_norm_rope(const shape *s, int N, int H, int hd, const float *fr_d)
{
    enum { S = 2 };
    const int r = s->r, R = (N + S - 1) / S + 3;
    const dsv4_kv_layout kl = dsv4_kv_layout_of(hd, r);
    const int64_t nq = (int64_t)N * H * hd, n = (int64_t)N * hd;
    int32_t *slot = malloc((size_t)N * 4), *pos = malloc((size_t)N * 4);
    for (int i = 0; i < N; i++) slot[i] = i % S, pos[i] = 4093 * (i % S) + i / S;
    rowset rs = make_rows(N, pos, NULL);
    ok(dsv4_bk_upload(gpu, (void *)rs.d.slot, slot, (size_t)N * 4), "upload slots");
    size_t wb;
    uint8_t *win = kv_ring(&kl, (int64_t)S * R, &wb), *gw = malloc(wb), *sw = malloc(wb);
    float *q = rand_rows(nq, hd, 1.0f), *kv = rand_rows(n, hd, 1.0f), *w = rand_rows(hd, hd, 0.3f);
    for (int i = 0; i < hd; i++) w[i] = 1.0f + w[i];
    float *gq = malloc((size_t)nq * 4), *sq = malloc((size_t)nq * 4);
    float *gk = malloc((size_t)n * 4), *sk = malloc((size_t)n * 4);
    float *dq = dev_from(q, (size_t)nq * 4), *dq2 = dev_from(q, (size_t)nq * 4);
    float *dkv = dev_from(kv, (size_t)n * 4), *dkv2 = dev_from(kv, (size_t)n * 4);
    float *dw = dev_from(w, (size_t)hd * 4);
    uint8_t *dwin = dev_from(win, wb), *dwin2 = dev_from(win, wb);
    ok(dsv4_cuda_bk_head_norm_rope(gpu, dq2, &rs.d, H, hd, r, fr_d, 1e-6f), "separate q");
    ok(dsv4_cuda_bk_kv_norm_rope_store(gpu, dwin2, R, dkv2, dw, &rs.d, hd, r, fr_d, 1e-6f, 64),
       "separate kv");
    GPU_CALL(
        dsv4_cuda_bk_q_kv_norm_rope(gpu, dq, H, dwin, R, dkv, dw, &rs.d, hd, r, fr_d, 1e-6f, 64));
    host_from(gq, dq, (size_t)nq * 4), host_from(sq, dq2, (size_t)nq * 4);
    host_from(gk, dkv, (size_t)n * 4), host_from(sk, dkv2, (size_t)n * 4);
    host_from(gw, dwin, wb), host_from(sw, dwin2, wb);
    char l[120];
    snprintf(l, sizeof l, "%s N=%d %dx%d r=%d R=%d", s->name, N, H, hd, r, R);
    const bound same = {0, FLT_MIN, 0, NULL, "= separate ops"};
    compare("q_kv.q", l, gq, sq, nq, same);
    compare("q_kv.kv", l, gk, sk, n, same);
    const size_t dwb = bytes_differ(gw, sw, wb);
    printf("q_kv.win bytes  %s: %zu of %zu differ from the separate ops (bound 0)\n", l, dwb, wb);
    CHECK_MSG(dwb == 0, "q_kv.win %s: %zu bytes differ from the separate ops", l, dwb);
    void *dev[] = {dq, dq2, dkv, dkv2, dw, dwin, dwin2};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) dsv4_bk_free(gpu, dev[i]);
    free_rows(&rs);
    void *host[] = {slot, pos, win, gw, sw, q, kv, w, gq, sq, gk, sk};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
}

/* dsv4_bk_fill_bf16: the CUDA kernel writes the CPU's bits (backend.h dsv4_fill_bf16_bits). */
static void test_fill_bf16(size_t n, uint64_t seed)
{
    uint16_t *want = malloc(n * 2), *got = malloc(n * 2), *d = NULL;
    ok(dsv4_bk_fill_bf16(cpu, want, n, seed), "cpu fill");
    ok(dsv4_bk_alloc(gpu, n * 2, (void **)&d), "alloc");
    GPU_CALL(dsv4_bk_fill_bf16(gpu, d, n, seed));
    host_from(got, d, n * 2);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += want[i] != got[i];
    printf("fill_bf16       n=%zu seed=%llu differ=%zu (bound 0)\n", n, (unsigned long long)seed,
           differ);
    CHECK_MSG(differ == 0, "fill_bf16: %zu of %zu values differ", differ, n);
    dsv4_bk_free(gpu, d);
    free(want);
    free(got);
}

/* dsv4_bk_fill_kv: the CUDA kernel writes the CPU's bytes (kv_layout.h dsv4_fill_kv_byte), and
 * they decode to finite values of at most 7. */
static void test_fill_kv(int hd, int r, int64_t n, uint64_t seed)
{
    const dsv4_kv_layout l = dsv4_kv_layout_of(hd, r);
    const size_t bytes = (size_t)dsv4_kv_bytes(&l, n);
    uint8_t *want = malloc(bytes), *got = malloc(bytes), *d = NULL;
    ok(dsv4_bk_fill_kv(cpu, want, &l, n, seed), "cpu fill");
    ok(dsv4_bk_alloc(gpu, bytes, (void **)&d), "alloc");
    GPU_CALL(dsv4_bk_fill_kv(gpu, d, &l, n, seed));
    host_from(got, d, bytes);
    const size_t differ = bytes_differ(want, got, bytes);
    float *x = kv_values(&l, want, n);
    size_t bad = 0;
    for (int64_t i = 0; i < n * hd; i++) bad += !isfinite(x[i]) || fabsf(x[i]) > 7.0f;
    printf("fill_kv         hd=%d r=%d n=%lld differ=%zu non-finite or > 7: %zu (bounds 0)\n", hd,
           r, (long long)n, differ, bad);
    CHECK_MSG(differ == 0 && bad == 0, "fill_kv: %zu of %zu bytes differ, %zu bad values", differ,
              bytes, bad);
    dsv4_bk_free(gpu, d);
    free(want);
    free(got);
    free(x);
}

/* ---- mHC --------------------------------------------------------------------------------------
 */
/* pre / post / comb: the device's exp (double, rounded) and glibc's expf differ by <= 1 ulp, so
 * sigmoid and softmax entries differ by <= 3 ulp; the Sinkhorn normalisations are non-expansive
 * (relative perturbations do not grow) but each of the 2 x 20 divisions may round differently
 * once the inputs differ: <= 3 + 40 ulp < 64 ulp = 2^-17 relative. */
static const bound HC_W = {0x1p-17, FLT_MIN, 0, NULL, "2^-17 rel (exp 1 ulp, 40 Sinkhorn steps)"};

/* y = bf16(sum_j pre_j X_j): pre within 3 ulp moves the f32 sum by <= 2^-21 sum_j |pre_j X_j|
 * plus its own roundings (n ulp of the same magnitude): slack 2^-19 sum_j |X_j| (pre < 1.01),
 * plus one bf16 ulp of the result (the f32 sums may round to neighbouring bf16). */
static float *collapse_slack(const float *X, int64_t N, int n, int64_t D)
{
    float *sl = malloc((size_t)(N * D) * 4);
    for (int64_t t = 0; t < N; t++)
        for (int64_t d = 0; d < D; d++) {
            float a = 0;
            for (int j = 0; j < n; j++) a += fabsf(X[(t * n + j) * D + d]);
            sl[t * D + d] = 0x1p-19f * 1.01f * a;
        }
    return sl;
}

static void test_hc(const shape *s, int N)
{
    const int n = s->hc, iters = 20;
    const int64_t D = s->D, nX = (int64_t)N * n * D, mixn = (int64_t)(2 + n) * n;
    const float eps = 1e-6f;
    float *X = rand_rows(nX, D, 1.0f), *mix = rand_rows(N * mixn, mixn, 1.0f);
    float *base = rand_rows(mixn, mixn, 1.0f),
          scale[3] = {0.5f + rng_uniform(), rng_uniform(), 2.0f + rng_uniform()};
    float *dX = dev_from(X, (size_t)nX * 4), *dmix = dev_from(mix, (size_t)(N * mixn) * 4);
    float *dbase = dev_from(base, (size_t)mixn * 4), *dscale = dev_from(scale, sizeof scale);
    char l[96];

    /* hc_pre */
    float *y = malloc((size_t)(N * D) * 4), *post = malloc((size_t)N * n * 4);
    float *comb = malloc((size_t)N * n * n * 4), *gy = malloc((size_t)(N * D) * 4);
    float *gpost = malloc((size_t)N * n * 4), *gcomb = malloc((size_t)N * n * n * 4);
    float *dy = dev_from(NULL, (size_t)(N * D) * 4), *dpost = dev_from(NULL, (size_t)N * n * 4);
    float *dcomb = dev_from(NULL, (size_t)N * n * n * 4);
    ok(dsv4_cpu_bk_hc_pre(cpu, y, post, comb, X, mix, base, scale, N, n, D, iters, eps),
       "cpu hc_pre");
    GPU_CALL(
        dsv4_cuda_bk_hc_pre(gpu, dy, dpost, dcomb, dX, dmix, dbase, dscale, N, n, D, iters, eps));
    host_from(gy, dy, (size_t)(N * D) * 4);
    host_from(gpost, dpost, (size_t)N * n * 4);
    host_from(gcomb, dcomb, (size_t)N * n * n * 4);
    float *sl = collapse_slack(X, N, n, D);
    snprintf(l, sizeof l, "%s N=%d n=%d D=%lld", s->name, N, n, (long long)D);
    compare("hc_pre.post", l, gpost, post, (int64_t)N * n, HC_W);
    compare("hc_pre.comb", l, gcomb, comb, (int64_t)N * n * n, HC_W);
    compare("hc_pre.y", l, gy, y, N * D,
            (bound){0, 1e-3, 1, sl, "1 bf16 ulp + 2^-19 sum|X_j| (pre 3 ulp apart)"});

    /* hc_post on the CPU's post / comb (same inputs on both sides) */
    float *f = rand_rows(N * D, D, 1.0f), *Xo = malloc((size_t)nX * 4),
          *gXo = malloc((size_t)nX * 4);
    float *df = dev_from(f, (size_t)(N * D) * 4), *dXo = dev_from(NULL, (size_t)nX * 4);
    ok(dsv4_bk_upload(gpu, dpost, post, (size_t)N * n * 4), "upload post");
    ok(dsv4_bk_upload(gpu, dcomb, comb, (size_t)N * n * n * 4), "upload comb");
    ok(dsv4_cpu_bk_hc_post(cpu, Xo, X, f, post, comb, N, n, D), "cpu hc_post");
    GPU_CALL(dsv4_cuda_bk_hc_post(gpu, dXo, dX, df, dpost, dcomb, N, n, D));
    host_from(gXo, dXo, (size_t)nX * 4);
    compare("hc_post", l, gXo, Xo, nX, EXACT); /* the same f32 operations in the same order */

    /* hc_head */
    float *hmix = rand_rows((int64_t)N * n, n, 1.0f), hbase[16];
    for (int j = 0; j < n; j++) hbase[j] = rng_normal();
    const float hscale = 0.5f + rng_uniform();
    float *dhmix = dev_from(hmix, (size_t)N * n * 4), *dhbase = dev_from(hbase, (size_t)n * 4);
    ok(dsv4_cpu_bk_hc_head(cpu, y, X, hmix, hbase, hscale, N, n, D, eps), "cpu hc_head");
    GPU_CALL(dsv4_cuda_bk_hc_head(gpu, dy, dX, dhmix, dhbase, hscale, N, n, D, eps));
    host_from(gy, dy, (size_t)(N * D) * 4);
    compare("hc_head", l, gy, y, N * D,
            (bound){0, 1e-3, 1, sl, "1 bf16 ulp + 2^-19 sum|X_j| (pre 3 ulp apart)"});

    float *dev[] = {dX, dmix, dbase, dscale, dy, dpost, dcomb, df, dXo, dhmix, dhbase};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) dsv4_bk_free(gpu, dev[i]);
    float *host[] = {X, mix, base, y, post, comb, gy, gpost, gcomb, sl, f, Xo, gXo, hmix};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
}

int main(int argc, char **argv)
{
    const int small = argc > 1 && strcmp(argv[1], "--small") == 0;
    dsv4_cpu_pool *pool = NULL;
    ok(dsv4_cpu_pool_create(0, &pool), "pool");
    ok(dsv4_backend_create(DSV4_DEVICE_CPU, 0, pool, &cpu), "cpu backend");
    ok(dsv4_backend_create(DSV4_DEVICE_CUDA, 0, NULL, &gpu), "cuda backend");
    rng_state = 0x5eed0001;
    const double t0 = test_now();

    /* RoPE tables: main (theta 10000), main with YaRN, compressed (theta 160000, YaRN) */
    const shape *shapes_full[] = {&FLASH, &PRO}, *shapes_small[] = {&SMALL};
    const shape **shapes = small ? shapes_small : shapes_full;
    const int nshapes = small ? 1 : 2;
    /* the row kernels and fused chains at every N; the other ops at 1, 7, 64 (and --small) */
    static const int Ns_full[] = {1, 2, 7, 64, 257}, Ns_small[] = {1, 2, 5};
    const int *Ns = small ? Ns_small : Ns_full, nN = small ? 3 : 5;

    test_fill_bf16(small ? 1000 : 3000001, 7);
    test_fill_kv(512, 64, small ? 100 : 20001, 9);
    test_fill_kv(64, 16, 130, 11);
    test_act_quant_bf16_sweep();
    test_e2m1_every_float(small);
    for (int si = 0; si < nshapes; si++) {
        const shape *s = shapes[si];
        float fr[3][DSV4_ROPE_MAX / 2];
        dsv4_rope_freqs(fr[0], s->r, 10000.0f, 1.0f, 0, 0, 0);
        dsv4_rope_freqs(fr[1], s->r, 10000.0f, 16.0f, 65536, 32.0f, 1.0f);
        dsv4_rope_freqs(fr[2], s->r, 160000.0f, 16.0f, 65536, 32.0f, 1.0f);
        const float *fr_h[3] = {fr[0], fr[1], fr[2]};
        float *fr_d[3];
        for (int k = 0; k < 3; k++) fr_d[k] = dev_from(fr[k], (size_t)(s->r / 2) * 4);
        for (int ni = 0; ni < nN; ni++) {
            const int N = Ns[ni], all = small || N == 1 || N == 7 || N == 64;
            if (all) test_embed(s, N);
            test_rmsnorm(s, N);
            test_head_norm(s, N, s->hd);
            if (N <= 2 && !small) test_head_norm(s, N, 2 * s->hd);
            test_act_quant(s, N);
            if (all) test_scale(s, N);
            test_rope(s, N, fr_h, fr_d);
            test_rmsnorm_quant(s, N, s->ql);
            test_head_norm_rope(s, N, s->H, s->hd, fr_h[0], fr_d[0], "main");
            test_head_norm_rope(s, N, s->H, s->hd, fr_h[2], fr_d[2], "comp");
            if (N <= 2 && !small) /* hd over the register tile: the two ops */
                test_head_norm_rope(s, N, 4, 2 * s->hd, fr_h[2], fr_d[2], "comp");
            test_kv_norm_rope_store(s, N, fr_h[2], fr_d[2]);
            test_q_kv_norm_rope(s, N, s->H, s->hd, fr_d[2]);
            if (N <= 2 && !small) test_q_kv_norm_rope(s, N, 4, 2 * s->hd, fr_d[2]);
            if (all) test_hc(s, N);
        }
        for (int k = 0; k < 3; k++) dsv4_bk_free(gpu, fr_d[k]);
    }
    printf("total %.1f s\n", test_now() - t0);
    dsv4_backend_destroy(gpu);
    dsv4_backend_destroy(cpu);
    dsv4_cpu_pool_destroy(pool);
    return test_finish();
}
