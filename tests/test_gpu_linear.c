/*
 * test_gpu_linear.c - GPU op test (ctest -L gpu) of dsv4_bk_linear: the CUDA projections against
 * the CPU reference (the session forward's dsv4_cpu_linear_rows), in every stored weight format,
 * at the Flash and Pro shapes, N in {1, 3, 16, 64, 257}, strided x and y, bf16 rounding on and
 * off; every CUDA kernel (GEMV, MMA, SIMT) on each call it accepts, not only the dispatcher's
 * pick. Then the decode bandwidth and prefill rate of a few projections.
 *
 * Bound, per output element (the CUDA kernels differ from the CPU only in f32 summation order,
 * plus, on the MMA path, x split into two bf16 halves whose remainder is <= 2^-18 |x|):
 *   |y_gpu - y_cpu| <= 1e-5 * S + 1e-35,   S = sum_c |x_c| |w_rc| (times |scale2|)
 * S is computed by the CPU op itself on |x| and a copy of W with every sign bit cleared; its own
 * f32 rounding (<= cols * 2^-24 relative, non-negative terms) is covered by a 1.001 factor.
 * 1e-5 * S holds for any order of f32 sums over <= 16384 terms in blocks (worst case grows as
 * depth * 2^-24 * S; random-sign data stays far below). With round_bf16 the GPU's value must be
 * the bf16 rounding of some real within that bound of the CPU's unrounded sum: the two differ by
 * one bf16 ulp (2^-8 relative) at most, and only where the CPU sum lies within 1e-5 * S of a
 * rounding boundary.
 * Outside [N, nrows] the output buffer must be untouched; the same call twice must give the same
 * bits.
 *
 * usage: test_gpu_linear [--small]   (--small: a few small shapes, for compute-sanitizer)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cuda/linear_path.cuh"
#include "test_util.h"

#include <math.h>
#include <stdint.h>

/* ---- random data ------------------------------------------------------------------------------
 */
static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rnd_unit(void)
{
    return (double)(rnd() >> 11) * 0x1p-53;
}

static int rnd_int(int lo, int hi) /* inclusive */
{
    return lo + (int)(rnd() % (uint64_t)(hi - lo + 1));
}

/* x: 5% zeros, 5% large (2^10..2^14), 5% tiny (2^-30..2^-20), the rest uniform in (-4, 4);
 * half negative. */
static void fill_x(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const int k = (int)(rnd() % 100);
        float v;
        if (k < 5)
            v = 0.0f;
        else if (k < 10)
            v = ldexpf((float)(1.0 + rnd_unit()), rnd_int(10, 13));
        else if (k < 15)
            v = ldexpf((float)(1.0 + rnd_unit()), rnd_int(-30, -21));
        else
            v = (float)(rnd_unit() * 4.0);
        x[i] = (rnd() & 1) ? -v : v;
    }
}

/* ---- host weights in their stored formats ------------------------------------------------------
 */
typedef struct hweight {
    dsv4_weight w;
    uint8_t *data, *scale;
} hweight;

/* The descriptor alone (sizes, dtypes), data not allocated. */
static void weight_desc(dsv4_weight *w, const char *name, int fmt, int sdt, int64_t rows,
                        int64_t cols)
{
    memset(w, 0, sizeof *w);
    w->name = name;
    w->format = (dsv4_weight_format)fmt;
    w->ndim = 2;
    w->rows = rows;
    w->cols = cols;
    w->scale2 = 1.0f;
    switch (fmt) {
    case DSV4_FORMAT_F32:
        w->dtype = DSV4_DT_F32;
        w->data_bytes = (uint64_t)(rows * cols * 4);
        break;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16:
        w->dtype = fmt == DSV4_FORMAT_BF16 ? DSV4_DT_BF16 : DSV4_DT_F16;
        w->data_bytes = (uint64_t)(rows * cols * 2);
        break;
    case DSV4_FORMAT_FP8:
        w->dtype = DSV4_DT_F8_E4M3;
        w->data_bytes = (uint64_t)(rows * cols);
        w->scale_dtype = (dsv4_dtype)sdt;
        w->scale_rows = (rows + 127) / 128;
        w->scale_cols = (cols + 127) / 128;
        w->scale_bytes = (uint64_t)(w->scale_rows * w->scale_cols * (sdt == DSV4_DT_F32 ? 4 : 1));
        break;
    default: /* MXFP4, NVFP4 */
        w->dtype = DSV4_DT_U8;
        w->data_bytes = (uint64_t)(rows * cols / 2);
        w->scale_dtype = fmt == DSV4_FORMAT_MXFP4 ? DSV4_DT_F8_E8M0 : DSV4_DT_F8_E4M3;
        w->scale_rows = rows;
        w->scale_cols = cols / (fmt == DSV4_FORMAT_MXFP4 ? 32 : 16);
        w->scale_bytes = (uint64_t)(w->scale_rows * w->scale_cols);
        break;
    }
}

/* Random values valid for the format: zeros, subnormals, both signs, wide exponent ranges; FP8
 * without the NaN codes; scales from tiny to large. */
static void make_weight(hweight *h, const char *name, int fmt, int sdt, int64_t rows, int64_t cols)
{
    dsv4_weight *w = &h->w;
    weight_desc(w, name, fmt, sdt, rows, cols);
    h->data = malloc(w->data_bytes);
    h->scale = w->scale_bytes ? malloc(w->scale_bytes) : NULL;
    const int64_t n = rows * cols;
    switch (fmt) {
    case DSV4_FORMAT_F32: {
        uint32_t *d = (uint32_t *)(void *)h->data;
        for (int64_t i = 0; i < n; i++) {
            const uint64_t r = rnd();
            d[i] = r % 100 < 3
                       ? 0u
                       : (uint32_t)((r >> 63) << 31) | ((uint32_t)(97 + (r >> 32) % 39) << 23) |
                             (uint32_t)(r & 0x7fffffu);
        }
        break;
    }
    case DSV4_FORMAT_BF16: {
        uint16_t *d = (uint16_t *)(void *)h->data;
        for (int64_t i = 0; i < n; i++) {
            const uint64_t r = rnd();
            d[i] = r % 100 < 3
                       ? 0
                       : (uint16_t)(((r >> 63) << 15) | ((97 + (r >> 32) % 39) << 7) | (r & 0x7f));
        }
        break;
    }
    case DSV4_FORMAT_F16: {
        uint16_t *d = (uint16_t *)(void *)h->data;
        for (int64_t i = 0; i < n; i++) {
            const uint64_t r = rnd(), k = r % 100;
            const uint16_t sign = (uint16_t)((r >> 63) << 15), man = (uint16_t)(r & 0x3ff);
            d[i] = k < 3   ? 0
                   : k < 5 ? (uint16_t)(sign | man)
                           : (uint16_t)(sign | ((1 + (r >> 32) % 30) << 10) | man);
        }
        break;
    }
    case DSV4_FORMAT_FP8: {
        for (int64_t i = 0; i < n; i++) {
            uint8_t b;
            do b = (uint8_t)rnd();
            while ((b & 0x7f) == 0x7f);
            h->data[i] = rnd() % 100 < 3 ? 0 : b;
        }
        const int64_t ns = w->scale_rows * w->scale_cols;
        for (int64_t i = 0; i < ns; i++) {
            if (sdt == DSV4_DT_F32) {
                const float s = ldexpf((float)(1.0 + rnd_unit()), rnd_int(-20, 2));
                memcpy(h->scale + 4 * i, &s, 4);
            } else {
                h->scale[i] = (uint8_t)rnd_int(107, 131); /* 2^-20 .. 2^4 */
            }
        }
        break;
    }
    default: { /* MXFP4, NVFP4 */
        for (uint64_t i = 0; i < w->data_bytes; i++) h->data[i] = (uint8_t)rnd();
        const int mx = fmt == DSV4_FORMAT_MXFP4;
        for (uint64_t i = 0; i < w->scale_bytes; i++)
            h->scale[i] = mx ? (uint8_t)rnd_int(100, 135) /* 2^-27 .. 2^8 */
                             : (uint8_t)rnd_int(0, 0x7e); /* e4m3 >= 0: 0, subnormals .. 448 */
        if (!mx) w->scale2 = (float)((0.5 + rnd_unit()) / 2688.0);
        break;
    }
    }
    w->data = h->data;
    w->scale = h->scale;
}

/* dst = |src| element by element: every sign bit cleared (data and scales). */
static void make_abs(const hweight *src, hweight *dst)
{
    *dst = *src;
    dst->data = malloc(src->w.data_bytes);
    memcpy(dst->data, src->data, src->w.data_bytes);
    dst->scale = NULL;
    if (src->scale) {
        dst->scale = malloc(src->w.scale_bytes);
        memcpy(dst->scale, src->scale, src->w.scale_bytes);
    }
    const uint64_t nb = src->w.data_bytes;
    switch (src->w.format) {
    case DSV4_FORMAT_F32:
        for (uint64_t i = 3; i < nb; i += 4) dst->data[i] &= 0x7f;
        break;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16:
        for (uint64_t i = 1; i < nb; i += 2) dst->data[i] &= 0x7f;
        break;
    case DSV4_FORMAT_FP8:
        for (uint64_t i = 0; i < nb; i++) dst->data[i] &= 0x7f;
        if (src->w.scale_dtype == DSV4_DT_F32)
            for (uint64_t i = 3; i < src->w.scale_bytes; i += 4) dst->scale[i] &= 0x7f;
        break;
    default:
        for (uint64_t i = 0; i < nb; i++) dst->data[i] &= 0x77;
        if (src->w.format == DSV4_FORMAT_NVFP4)
            for (uint64_t i = 0; i < src->w.scale_bytes; i++) dst->scale[i] &= 0x7f;
        dst->w.scale2 = fabsf(src->w.scale2);
        break;
    }
    dst->w.data = dst->data;
    dst->w.scale = dst->scale;
}

static void free_weight(hweight *h)
{
    free(h->data);
    free(h->scale);
}

/* ---- cases ----------------------------------------------------------------------------------- */
typedef struct tcase {
    const char *name;
    int fmt, sdt;
    int64_t rows, cols, row0, nrows;
    int64_t ldx, xoff; /* 0: cols, 0 */
    int64_t ldy, yoff; /* 0: nrows, 0 */
    int64_t ns[6];     /* N values, 0-terminated */
} tcase;

#define FP8 DSV4_FORMAT_FP8
#define MX  DSV4_FORMAT_MXFP4
#define NV  DSV4_FORMAT_NVFP4
#define B16 DSV4_FORMAT_BF16
#define H16 DSV4_FORMAT_F16
#define F32 DSV4_FORMAT_F32
#define E8  DSV4_DT_F8_E8M0
#define SF  DSV4_DT_F32

static const tcase full_cases[] = {
    /* Flash: hidden 4096, q_lora 1024, 64 heads x 512, o_groups 8 x o_lora 1024, experts 2048 */
    {"flash wq_a fp8", FP8, E8, 1024, 4096, 0, 1024, 0, 0, 0, 0, {1, 3, 16, 64, 257}},
    {"flash wq_a fp8 strided",
     FP8,
     E8,
     1024,
     4096,
     0,
     1024,
     4160,
     32,
     1056,
     16,
     {1, 3, 16, 64, 257}},
    {"flash wq_b fp8", FP8, E8, 32768, 1024, 0, 32768, 0, 0, 0, 0, {1, 16, 64, 257}},
    {"flash wkv fp8", FP8, E8, 512, 4096, 0, 512, 0, 0, 0, 0, {1, 3, 16, 64, 257}},
    {"flash wo_a fp8 group 3",
     FP8,
     E8,
     8192,
     4096,
     3072,
     1024,
     32768,
     3 * 4096,
     8192,
     3072,
     {1, 3, 16, 64, 257}},
    {"flash wo_b fp8", FP8, E8, 4096, 8192, 0, 4096, 0, 0, 0, 0, {1, 16, 64, 257}},
    {"flash w1 mxfp4", MX, E8, 2048, 4096, 0, 2048, 0, 0, 0, 0, {1, 3, 16, 64, 257}},
    {"flash w2 mxfp4", MX, E8, 4096, 2048, 0, 4096, 0, 0, 0, 0, {1, 3, 16, 64, 257}},
    {"flash w1 nvfp4", NV, 0, 2048, 4096, 0, 2048, 0, 0, 0, 0, {1, 3, 16, 64, 257}},
    {"flash w2 nvfp4", NV, 0, 4096, 2048, 0, 4096, 0, 0, 0, 0, {1, 16, 257}},
    {"base wq_a fp8 f32-scale", FP8, SF, 1024, 4096, 0, 1024, 0, 0, 0, 0, {1, 3, 16, 64, 257}},
    {"bf16 1024x4096", B16, 0, 1024, 4096, 0, 1024, 0, 0, 0, 0, {1, 3, 16, 64, 257}},
    {"bf16 weights_proj", B16, 0, 64, 4096, 0, 64, 0, 0, 0, 0, {1, 16, 64}},
    {"flash head bf16", B16, 0, 129280, 4096, 0, 129280, 0, 0, 0, 0, {1}},
    {"f16 512x4096", H16, 0, 512, 4096, 0, 512, 0, 0, 0, 0, {1, 3, 16, 64, 257}},
    {"f32 gate 256x4096", F32, 0, 256, 4096, 0, 256, 0, 0, 0, 0, {1, 16, 64, 257}},
    {"f32 hc fn 24x16384", F32, 0, 24, 16384, 0, 24, 0, 0, 0, 0, {1, 3, 64, 257}},
    /* odd shapes: partial scale blocks, unaligned row0, widths the fast paths refuse */
    {"fp8 1000x4000 row0 7", FP8, E8, 1000, 4000, 7, 990, 0, 0, 0, 0, {1, 5, 33}},
    {"bf16 1000x4100", B16, 0, 1000, 4100, 0, 1000, 0, 0, 0, 0, {1, 17}},
    {"nvfp4 300x4112", NV, 0, 300, 4112, 0, 300, 0, 0, 0, 0, {1, 20}},
    {"fp8 ldx 4097", FP8, E8, 1024, 4096, 0, 1024, 4097, 1, 0, 0, {3, 40}},
    /* Pro: hidden 7168, q_lora 1536, 128 heads, o_groups 16, experts 3072 */
    {"pro wq_a fp8", FP8, E8, 1536, 7168, 0, 1536, 0, 0, 0, 0, {1, 16, 64, 257}},
    {"pro wq_b fp8", FP8, E8, 65536, 1536, 0, 65536, 0, 0, 0, 0, {1, 16, 129}},
    {"pro wo_a fp8 group 15",
     FP8,
     E8,
     16384,
     4096,
     15360,
     1024,
     65536,
     15 * 4096,
     16384,
     15360,
     {1, 64}},
    {"pro wo_b fp8", FP8, E8, 7168, 16384, 0, 7168, 0, 0, 0, 0, {1, 64}},
    {"pro w1 mxfp4", MX, E8, 3072, 7168, 0, 3072, 0, 0, 0, 0, {1, 16, 257}},
    {"pro w2 mxfp4", MX, E8, 7168, 3072, 0, 7168, 0, 0, 0, 0, {1, 16, 257}},
};

static const tcase small_cases[] = {
    {"small fp8", FP8, E8, 200, 384, 40, 150, 388, 4, 155, 2, {1, 3, 17, 70}},
    {"small fp8 f32-scale", FP8, SF, 200, 256, 0, 200, 0, 0, 0, 0, {1, 17, 70}},
    {"small mxfp4", MX, E8, 160, 256, 10, 150, 0, 0, 0, 0, {1, 3, 17, 70}},
    {"small nvfp4", NV, 0, 160, 256, 0, 160, 0, 0, 0, 0, {1, 3, 17, 70}},
    {"small nvfp4 48 cols", NV, 0, 40, 48, 0, 40, 0, 0, 0, 0, {1, 20}},
    {"small bf16", B16, 0, 150, 256, 0, 150, 0, 0, 0, 0, {1, 3, 17, 70}},
    {"small bf16 100x100", B16, 0, 100, 100, 0, 100, 0, 0, 0, 0, {1, 20}},
    {"small f16", H16, 0, 150, 256, 0, 150, 0, 0, 0, 0, {1, 17, 70}},
    {"small f32", F32, 0, 24, 512, 0, 24, 0, 0, 0, 0, {1, 3, 70}},
    {"small fp8 ldx 257", FP8, E8, 128, 256, 0, 128, 257, 1, 0, 0, {3, 20}},
};

/* ---- comparison ------------------------------------------------------------------------------ */
static const char *path_name[] = {"auto", "gemv", "mma", "simt"};
static const uint32_t SENTINEL = 0x7fc0deadu;

/* The reals that round to bf16 value g (nearest even; ties count as inside): [*lo, *hi]. */
static void bf16_cell(float g, double *lo, double *hi)
{
    uint32_t u;
    memcpy(&u, &g, 4);
    const uint32_t s = u & 0x80000000u, mag = (u >> 16) & 0x7fffu;
    float up, dn;
    const uint32_t ub = s | ((mag + 1) << 16),
                   db = mag ? s | ((mag - 1) << 16) : (s ^ 0x80000000u) | 0x10000u;
    memcpy(&up, &ub, 4);
    memcpy(&dn, &db, 4);
    const double a = 0.5 * ((double)g + up), b = 0.5 * ((double)g + dn);
    *lo = a < b ? a : b;
    *hi = a < b ? b : a;
}

/* got/want: [N, ldy] buffers, the op's output at yoff; S [N, nrows]; unr [N, ldy]: the CPU's
 * unrounded result when round (NULL otherwise). Prints one line.
 * err/bound: unrounded, |gpu - cpu| / (1e-5 S); rounded, how far the CPU's unrounded sum lies
 * from the reals that round to the GPU's value, over 1e-5 S (0 when both agree). */
static void compare(const tcase *c, const char *what, int64_t N, int round, int64_t ldy,
                    int64_t yoff, const float *got, const float *want, const float *unr,
                    const float *S)
{
    const int64_t nr = c->nrows;
    double max_abs = 0, max_rel = 0, worst = 0, ss = 0;
    int64_t differ = 0, bad = 0, clobbered = 0;
    for (int64_t t = 0; t < N; t++)
        for (int64_t j = 0; j < nr; j++)
            ss += (double)want[t * ldy + yoff + j] * want[t * ldy + yoff + j];
    const double floor_ = 1e-3 * sqrt(ss / (double)(N * nr)) + 1e-30;
    for (int64_t t = 0; t < N; t++) {
        for (int64_t j = 0; j < ldy; j++) {
            const int64_t i = t * ldy + j;
            if (j < yoff || j >= yoff + nr) {
                uint32_t u;
                memcpy(&u, &got[i], 4);
                clobbered += u != SENTINEL;
                continue;
            }
            const float g = got[i], w = want[i];
            if (memcmp(&g, &w, 4)) differ++;
            if (isnan(g) || isnan(w)) {
                bad++;
                continue;
            }
            const double err = fabs((double)g - (double)w);
            const double bound = 1e-5 * 1.001 * S[t * nr + j - yoff] + 1e-35;
            double ratio = err / bound;
            if (round && g != w) {
                double lo, hi;
                bf16_cell(g, &lo, &hi);
                const double u = unr[i];
                ratio = (u < lo ? lo - u : u > hi ? u - hi : 0.0) / bound;
            }
            if (err > max_abs) max_abs = err;
            if (err / fmax(fabs(w), floor_) > max_rel) max_rel = err / fmax(fabs(w), floor_);
            if (ratio > worst) worst = ratio;
            if (ratio > 1.0) bad++;
        }
    }
    printf("  %-26s N=%-3lld rnd=%d %-4s max_abs %.3e max_rel %.3e (floor %.1e) err/bound %.3f "
           "differ %lld/%lld%s\n",
           c->name, (long long)N, round, what, max_abs, max_rel, floor_, worst, (long long)differ,
           (long long)(N * nr), bad || clobbered ? "  FAIL" : "");
    CHECK_MSG(bad == 0, "%s N=%lld %s: %lld elements over the bound (worst %.3f)", c->name,
              (long long)N, what, (long long)bad, worst);
    CHECK_MSG(clobbered == 0, "%s N=%lld %s: %lld elements outside the output were written",
              c->name, (long long)N, what, (long long)clobbered);
}

typedef struct ctx {
    dsv4_backend *cpu, *gpu;
} ctx;

/* One GPU call on a sentinel-filled output, forced to `path`; returns the path taken (-1 on
 * error). */
static int gpu_call(ctx *cx, const dsv4_weight *dw, const tcase *c, const float *dx, int64_t ldx,
                    int64_t N, float *dy, int64_t ldy, int64_t yoff, int round, int path,
                    const float *sentinel, float *out)
{
    const size_t ybytes = (size_t)(N * ldy) * sizeof(float);
    dsv4_status st = dsv4_bk_upload(cx->gpu, dy, sentinel, ybytes);
    const int old = dsv4_cuda_linear_force_path(path);
    if (st == DSV4_OK)
        st = dsv4_bk_linear(cx->gpu, dw, c->row0, c->nrows, dx + c->xoff, ldx, N, dy + yoff, ldy,
                            round);
    dsv4_cuda_linear_force_path(old);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    if (st == DSV4_OK) st = dsv4_bk_download(cx->gpu, out, dy, ybytes);
    CHECK_MSG(st == DSV4_OK, "%s N=%lld %s: %s", c->name, (long long)N, path_name[path],
              dsv4_last_error());
    return st == DSV4_OK ? dsv4_cuda_linear_last_path() : -1;
}

static void run_case(ctx *cx, const tcase *c)
{
    hweight W, A;
    make_weight(&W, c->name, c->fmt, c->sdt, c->rows, c->cols);
    make_abs(&W, &A);
    dsv4_weight dw;
    dsv4_status st = dsv4_bk_weight_upload(cx->gpu, &W.w, 0, &dw);
    CHECK_MSG(st == DSV4_OK, "%s: upload: %s", c->name, dsv4_last_error());
    if (st != DSV4_OK) goto out;
    for (int k = 0; k < 6 && c->ns[k]; k++) {
        const int64_t N = c->ns[k];
        const int round = k & 1;
        const int64_t ldx = c->ldx ? c->ldx : c->cols, ldy = c->ldy ? c->ldy : c->nrows;
        const size_t nx = (size_t)(N * ldx), ny = (size_t)(N * ldy);
        float *x = malloc(nx * sizeof *x), *xa = malloc(nx * sizeof *xa);
        float *yc = malloc(ny * sizeof *yc), *yg = malloc(ny * sizeof *yg);
        float *yg2 = malloc(ny * sizeof *yg2), *sent = malloc(ny * sizeof *sent);
        float *S = malloc((size_t)(N * c->nrows) * sizeof *S), *yu = malloc(ny * sizeof *yu);
        fill_x(x, (int64_t)nx);
        for (size_t i = 0; i < nx; i++) xa[i] = fabsf(x[i]);
        for (size_t i = 0; i < ny; i++) memcpy(&sent[i], &SENTINEL, 4);
        memcpy(yc, sent, ny * sizeof *yc);

        st = dsv4_bk_linear(cx->cpu, &W.w, c->row0, c->nrows, x + c->xoff, ldx, N, yc + c->yoff,
                            ldy, round);
        if (st == DSV4_OK && round)
            st = dsv4_bk_linear(cx->cpu, &W.w, c->row0, c->nrows, x + c->xoff, ldx, N, yu + c->yoff,
                                ldy, 0);
        if (st == DSV4_OK)
            st = dsv4_bk_linear(cx->cpu, &A.w, c->row0, c->nrows, xa + c->xoff, ldx, N, S, c->nrows,
                                0);
        CHECK_MSG(st == DSV4_OK, "%s N=%lld: cpu: %s", c->name, (long long)N, dsv4_last_error());
        /* the CPU reference must itself keep out of the gaps */
        int64_t cpu_clobbered = 0;
        for (int64_t t = 0; t < N; t++)
            for (int64_t j = 0; j < ldy; j++)
                if (j < c->yoff || j >= c->yoff + c->nrows)
                    cpu_clobbered += memcmp(&yc[t * ldy + j], &SENTINEL, 4) != 0;
        CHECK(cpu_clobbered == 0);

        float *dx = NULL, *dy = NULL;
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, nx * sizeof *x, (void **)&dx);
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, ny * sizeof *yg, (void **)&dy);
        if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, dx, x, nx * sizeof *x);
        CHECK_MSG(st == DSV4_OK, "%s: gpu buffers: %s", c->name, dsv4_last_error());
        if (st == DSV4_OK) {
            const int p = gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round,
                                   DSV4_LIN_PATH_AUTO, sent, yg);
            const int p2 = gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round,
                                    DSV4_LIN_PATH_AUTO, sent, yg2);
            if (p > 0 && p2 == p) {
                compare(c, path_name[p], N, round, ldy, c->yoff, yg, yc, yu, S);
                CHECK_MSG(memcmp(yg, yg2, ny * sizeof *yg) == 0,
                          "%s N=%lld: two identical calls differ", c->name, (long long)N);
            }
            for (int q = DSV4_LIN_PATH_GEMV; q <= DSV4_LIN_PATH_SIMT; q++) {
                if (q == p) continue;
                if (gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round, q, sent, yg) == q)
                    compare(c, path_name[q], N, round, ldy, c->yoff, yg, yc, yu, S);
            }
        }
        dsv4_bk_free(cx->gpu, dx);
        dsv4_bk_free(cx->gpu, dy);
        free(x), free(xa), free(yc), free(yg), free(yg2), free(sent), free(S), free(yu);
        fflush(stdout);
    }
    dsv4_bk_weight_free(cx->gpu, &dw);
out:
    free_weight(&W);
    free_weight(&A);
}

/* Arguments the op must refuse, on both backends. */
static void check_errors(ctx *cx)
{
    hweight W;
    make_weight(&W, "err bf16", B16, 0, 64, 256);
    dsv4_weight dw;
    dsv4_status st = dsv4_bk_weight_upload(cx->gpu, &W.w, 0, &dw);
    CHECK(st == DSV4_OK);
    if (st != DSV4_OK) return;
    float *x = calloc(4 * 256, sizeof *x), *y = calloc(4 * 64, sizeof *y), *dx = NULL, *dy = NULL;
    CHECK(dsv4_bk_alloc(cx->gpu, 4 * 256 * sizeof *x, (void **)&dx) == DSV4_OK);
    CHECK(dsv4_bk_alloc(cx->gpu, 4 * 64 * sizeof *y, (void **)&dy) == DSV4_OK);
    for (int g = 0; g < 2; g++) {
        dsv4_backend *b = g ? cx->gpu : cx->cpu;
        const dsv4_weight *w = g ? &dw : &W.w;
        float *xx = g ? dx : x, *yy = g ? dy : y;
        CHECK(dsv4_bk_linear(b, w, 32, 64, xx, 256, 2, yy, 64, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear(b, w, 0, 64, xx, 255, 2, yy, 64, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear(b, w, 0, 64, xx, 256, 2, yy, 63, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear(b, w, 0, 64, xx, 256, 0, yy, 64, 0) == DSV4_OK);
        dsv4_weight wi = *w;
        wi.format = DSV4_FORMAT_INT;
        wi.dtype = DSV4_DT_I32;
        if (g) CHECK(dsv4_bk_linear(b, &wi, 0, 64, xx, 256, 2, yy, 64, 0) == DSV4_ERR_UNSUPPORTED);
    }
    dsv4_bk_free(cx->gpu, dx);
    dsv4_bk_free(cx->gpu, dy);
    dsv4_bk_weight_free(cx->gpu, &dw);
    free(x), free(y);
    free_weight(&W);
}

/* ---- timing ---------------------------------------------------------------------------------- */
static void bench(ctx *cx, const char *name, int fmt, int sdt, int64_t rows, int64_t cols,
                  int64_t N)
{
    dsv4_weight w, dw;
    weight_desc(&w, name, fmt, sdt, rows, cols);
    dsv4_status st = dsv4_bk_weight_upload(cx->gpu, &w, 0x5eedull + (uint64_t)rows, &dw);
    float *x = malloc((size_t)(N * cols) * sizeof *x), *dx = NULL, *dy = NULL;
    fill_x(x, N * cols);
    if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, (size_t)(N * cols) * sizeof *x, (void **)&dx);
    if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, (size_t)(N * rows) * sizeof *x, (void **)&dy);
    if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, dx, x, (size_t)(N * cols) * sizeof *x);
    for (int i = 0; st == DSV4_OK && i < 5; i++)
        st = dsv4_bk_linear(cx->gpu, &dw, 0, rows, dx, cols, N, dy, rows, 0);
    dsv4_bk_prof_entry e[4];
    int ne = 0;
    if (st == DSV4_OK) st = dsv4_bk_prof_start(cx->gpu);
    if (st == DSV4_OK) {
        for (int i = 0; st == DSV4_OK && i < 5; i++)
            st = dsv4_bk_linear(cx->gpu, &dw, 0, rows, dx, cols, N, dy, rows, 0);
        dsv4_bk_prof_mark(cx->gpu, "warm");
        for (int i = 0; st == DSV4_OK && i < 50; i++)
            st = dsv4_bk_linear(cx->gpu, &dw, 0, rows, dx, cols, N, dy, rows, 0);
        dsv4_bk_prof_mark(cx->gpu, "timed");
        ne = dsv4_bk_prof_stop(cx->gpu, e, 4);
    }
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    CHECK_MSG(st == DSV4_OK, "bench %s: %s", name, dsv4_last_error());
    for (int i = 0; st == DSV4_OK && i < ne; i++) {
        if (strcmp(e[i].label, "timed")) continue;
        const double us = 1e3 * e[i].ms / 50.0;
        const double bytes = (double)(w.data_bytes + w.scale_bytes);
        printf("  %-22s %6lld x %-6lld N=%-3lld %-4s %9.2f us  %7.1f GB/s (%5.1f%% of 3.0 TB/s)  "
               "%7.1f TFLOP/s\n",
               name, (long long)rows, (long long)cols, (long long)N,
               path_name[dsv4_cuda_linear_last_path()], us, bytes / us * 1e-3,
               bytes / us * 1e-3 / 30.0, 2.0 * (double)N * (double)rows * (double)cols / us * 1e-6);
    }
    dsv4_bk_free(cx->gpu, dx);
    dsv4_bk_free(cx->gpu, dy);
    dsv4_bk_weight_free(cx->gpu, &dw);
    free(x);
}

int main(int argc, char **argv)
{
    const int small = argc > 1 && !strcmp(argv[1], "--small");
    dsv4_cpu_pool *pool = NULL;
    ctx cx = {NULL, NULL};
    CHECK(dsv4_cpu_pool_create(0, &pool) == DSV4_OK);
    CHECK(dsv4_backend_create(DSV4_DEVICE_CPU, 0, pool, &cx.cpu) == DSV4_OK);
    dsv4_status st = dsv4_backend_create(DSV4_DEVICE_CUDA, 0, NULL, &cx.gpu);
    CHECK_MSG(st == DSV4_OK, "no CUDA backend: %s", dsv4_last_error());
    if (st != DSV4_OK) return test_finish();

    printf("linear: bound |gpu - cpu| <= 1e-5 * sum|x||w| (rounded: gpu = bf16(v), |v - cpu "
           "unrounded| <= bound); err/bound <= 1 passes;\n  max_rel = |gpu - cpu| / max(|cpu|, "
           "floor), floor = 1e-3 * rms(cpu)\n");
    const double t0 = test_now();
    check_errors(&cx);
    const tcase *cases = small ? small_cases : full_cases;
    const size_t n_cases =
        small ? sizeof small_cases / sizeof *small_cases : sizeof full_cases / sizeof *full_cases;
    for (size_t i = 0; i < n_cases; i++) run_case(&cx, &cases[i]);
    printf("correctness: %.1f s\n", test_now() - t0);

    if (!small) {
        printf("timing (cudaEvent, 50 calls after warm-up; bytes = weights + scales):\n");
        bench(&cx, "fp8 wq_b", FP8, E8, 32768, 1024, 1);
        bench(&cx, "fp8 wo_b", FP8, E8, 4096, 8192, 1);
        bench(&cx, "mxfp4 expert w1", MX, E8, 2048, 4096, 1);
        bench(&cx, "bf16 1024x4096", B16, 0, 1024, 4096, 1);
        bench(&cx, "fp8 wq_a", FP8, E8, 1024, 4096, 1);
        bench(&cx, "fp8 wkv", FP8, E8, 512, 4096, 1);
        bench(&cx, "bf16 head", B16, 0, 129280, 4096, 1);
        bench(&cx, "pro fp8 wq_b", FP8, E8, 65536, 1536, 1);
        bench(&cx, "fp8 wo_b", FP8, E8, 4096, 8192, 4);
        bench(&cx, "fp8 wo_b", FP8, E8, 4096, 8192, 16);
        bench(&cx, "fp8 wo_b", FP8, E8, 4096, 8192, 64);
        bench(&cx, "fp8 wo_b", FP8, E8, 4096, 8192, 512);
        bench(&cx, "mxfp4 expert w1", MX, E8, 2048, 4096, 512);
        bench(&cx, "bf16 1024x4096", B16, 0, 1024, 4096, 512);
        bench(&cx, "f32 gate", F32, 0, 256, 4096, 512);
    }
    dsv4_backend_destroy(cx.gpu);
    dsv4_backend_destroy(cx.cpu);
    dsv4_cpu_pool_destroy(pool);
    return test_finish();
}
