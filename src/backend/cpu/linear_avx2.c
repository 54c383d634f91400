/*
 * linear_avx2.c - AVX2 + FMA + F16C projection kernels. Each function carries its own target
 * attribute (the build has no global -mavx2); cpu_linear.c calls them only after
 * dsv4_linear_avx2_supported() said yes.
 *
 * Every decoder turns 16 stored weights of one row into two __m256 (columns k..k+7, k+8..k+15):
 *   F32   two loads;  BF16  zero-extend and shift left 16;  F16  vcvtph2ps.
 *   FP8   e4m3 byte b -> the f16 with bits sign(b) << 15 | (b & 0x7f) << 7, which is exactly
 *         e4m3(b) / 256 for every code, subnormals included (both have 3 mantissa bits and the
 *         exponent biases differ by 8); 0x7f/0xff are forced to an f16 NaN. vcvtph2ps, then one
 *         multiply by 256 * block scale, so the decoded weight equals the reference bit for bit.
 *   FP4   e2m1 nibbles, interleaved into column order, go through pshufb with a 16-entry table of
 *         2 * e2m1 as int8, are widened to f32 and multiplied by scale / 2 (exact).
 * T == 1 (decode, memory-bound GEMV): decode fused with the FMAs, four rows at a time so each x
 *   vector load serves four rows; nothing is written to memory but y.
 * T > 1 (prefill): 16 rows x 256 columns are decoded into a 16 KiB stack tile (L1), then a
 *   4-row x 3-token register-tiled micro-kernel runs over it for every token; the tile's partial
 *   sums are added into y, so each weight element is decoded once per call.
 * Both keep the per-output summation order independent of which rows share a tile (partial
 * tiles repeat a row or token and drop its result), hence of the thread count.
 */
#include "backend/cpu/linear_kernels.h"

#if defined(__x86_64__) || defined(__i386__)

#include <cpuid.h>
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>

#define AVX2_FN     __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* F16C is read from CPUID directly: clang 14's __builtin_cpu_supports does not know it. */
static int cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int avx2_usable;
static pthread_once_t avx2_once = PTHREAD_ONCE_INIT;

static void detect_avx2(void)
{
    __builtin_cpu_init();
    avx2_usable =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
}

/* Asked on every projection: the answer is computed once (CPUID traps to the hypervisor in a
 * virtual machine and costs microseconds). */
int dsv4_linear_avx2_supported(void)
{
    pthread_once(&avx2_once, detect_avx2);
    return avx2_usable;
}

AVX2_INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The multiplier a decoder applies for a group with scale s (see the file comment). *exact is
 * cleared for an FP8 scale so large that 256 * s overflows: that group is decoded by the scalar
 * code instead. */
static inline float decoder_scale(dsv4_weight_format fmt, float s, int *exact)
{
    if (fmt == DSV4_FORMAT_FP8) {
        if (fabsf(s) >= 0x1p119f && fabsf(s) <= FLT_MAX) *exact = 0;
        return s * 256.0f;
    }
    if (fmt == DSV4_FORMAT_MXFP4 || fmt == DSV4_FORMAT_NVFP4) return s * 0.5f;
    return 1.0f;
}

/* Columns [k, k + 16) of the row at d -> w0, w1, times sc (decoder_scale of k's group) when
 * `scaled`; unscaled FP8 is e4m3 / 256, unscaled FP4 is 2 * e2m1. */
AVX2_INLINE void decode16(dsv4_weight_format fmt, const uint8_t *d, int64_t k, int scaled,
                          __m256 sc, __m256 *w0, __m256 *w1)
{
    switch (fmt) {
    case DSV4_FORMAT_F32:
        *w0 = _mm256_loadu_ps((const float *)(const void *)(d + 4 * k));
        *w1 = _mm256_loadu_ps((const float *)(const void *)(d + 4 * k + 32));
        return;
    case DSV4_FORMAT_BF16: {
        const __m128i h0 = _mm_loadu_si128((const __m128i *)(const void *)(d + 2 * k));
        const __m128i h1 = _mm_loadu_si128((const __m128i *)(const void *)(d + 2 * k + 16));
        *w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h0), 16));
        *w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h1), 16));
        return;
    }
    case DSV4_FORMAT_F16:
        *w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(d + 2 * k)));
        *w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(d + 2 * k + 16)));
        return;
    case DSV4_FORMAT_FP8: {
        const __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(d + k));
        /* sign-extended b << 7: bit 15 = sign, bit 14 = sign again (cleared), 13..7 = b & 0x7f */
        __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7),
                                     _mm256_set1_epi16((short)0xbf80));
        const __m256i nan = _mm256_cmpeq_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)),
                                               _mm256_set1_epi16(0x3f80));
        h = _mm256_or_si256(h, nan);
        *w0 = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
        *w1 = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
        if (scaled) *w0 = _mm256_mul_ps(*w0, sc), *w1 = _mm256_mul_ps(*w1, sc);
        return;
    }
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
        const __m128i m = _mm_set1_epi8(0x0f);
        const __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(d + k / 2));
        const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
        const __m128i v = _mm_shuffle_epi8(lut, _mm_unpacklo_epi8(lo, hi)); /* column order */
        *w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
        *w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
        if (scaled) *w0 = _mm256_mul_ps(*w0, sc), *w1 = _mm256_mul_ps(*w1, sc);
        return;
    }
    case DSV4_FORMAT_INT:
    case DSV4_FORMAT_COUNT:
        break;
    }
}

/* MXFP4: columns [k, k + 32) (one scale group, 16 bytes) of the row at d -> w[0..4) as 2 * e2m1,
 * unscaled. One load, one nibble split and two pshufb serve 32 weights. */
AVX2_INLINE void decode32_fp4(const uint8_t *d, int64_t k, __m256 w[4])
{
    const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(d + k / 2));
    const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    const __m128i v0 = _mm_shuffle_epi8(lut, _mm_unpacklo_epi8(lo, hi)); /* columns 0..15 */
    const __m128i v1 = _mm_shuffle_epi8(lut, _mm_unpackhi_epi8(lo, hi)); /* columns 16..31 */
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v0));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v0, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v1));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v1, 8)));
}

/* Columns [k, k + 16) of `row` through the scalar decoder (column tails, huge FP8 scales). */
AVX2_INLINE void decode16_scalar(const dsv4_linear_plan *p, int64_t row, int64_t k, __m256 *w0,
                                 __m256 *w1)
{
    _Alignas(32) float t[16] = {0};
    const int64_t n = p->cols - k < 16 ? p->cols - k : 16;
    dsv4_linear_decode_scalar(p, row, k, n, t);
    *w0 = _mm256_load_ps(t);
    *w1 = _mm256_load_ps(t + 8);
}

/* ---- T == 1: fused decode + GEMV ------------------------------------------------------------ */

/* out[i] = sum_c x[c] * W[rows[i]][c], i < 2 (rows may repeat).   x: [cols]  W rows: [cols].
 * Per row, per scale group: unscaled weights summed into two 8-lane partials (columns
 * 16j..16j+7 and 16j+8..16j+15), which then join the row's two accumulators times the group's
 * scale (FP8: * 256 then FMA with s; MXFP4: FMA with s / 2), so the inner loop has no
 * multiply but the FMAs. NVFP4's 16-column groups are scaled while decoded instead. The
 * column tail (scalar-decoded, scaled, zero-padded to 16) is FMA'd last; out = hsum(a0 + a1). Two
 * rows per tile keep the 8 partials + 4 accumulators in registers. */
AVX2_INLINE void gemv2(dsv4_weight_format fmt, const dsv4_linear_plan *p, const int64_t rows[2],
                       const float *x, float out[2])
{
    const int64_t cols = p->cols, c16 = cols & ~(int64_t)15, group = p->group;
    const int scaled = p->scale_kind != DSV4_LINEAR_SCALE_NONE;
    const uint8_t *d0 = p->data + rows[0] * p->row_bytes, *d1 = p->data + rows[1] * p->row_bytes;
    const uint8_t *sr0 = dsv4_linear_scale_row(p, rows[0]),
                  *sr1 = dsv4_linear_scale_row(p, rows[1]);
    const __m256 zero = _mm256_setzero_ps();
    __m256 a00 = zero, a01 = zero, a10 = zero, a11 = zero, w0, w1;
    int64_t g = 0, g0 = 0;
    if (fmt == DSV4_FORMAT_NVFP4) {
        /* Two 16-column groups per 32-column step, scaled while decoded (exact) and FMA'd
         * straight into a; a last odd group goes through decode16. cols % 16 == 0: no tail. */
        for (; g0 + 32 <= c16; g0 += 32, g += 2) {
            __m256 w[4];
            const __m256 x0 = _mm256_loadu_ps(x + g0), x1 = _mm256_loadu_ps(x + g0 + 8);
            const __m256 x2 = _mm256_loadu_ps(x + g0 + 16), x3 = _mm256_loadu_ps(x + g0 + 24);
#define NVFP4_ROW(D, SR, A0, A1)                                                                   \
    {                                                                                              \
        const __m256 sa = _mm256_set1_ps(0.5f * dsv4_linear_group_scale(p, SR, g));                \
        const __m256 sb = _mm256_set1_ps(0.5f * dsv4_linear_group_scale(p, SR, g + 1));            \
        decode32_fp4(D, g0, w);                                                                    \
        A0 = _mm256_fmadd_ps(x0, _mm256_mul_ps(w[0], sa), A0);                                     \
        A1 = _mm256_fmadd_ps(x1, _mm256_mul_ps(w[1], sa), A1);                                     \
        A0 = _mm256_fmadd_ps(x2, _mm256_mul_ps(w[2], sb), A0);                                     \
        A1 = _mm256_fmadd_ps(x3, _mm256_mul_ps(w[3], sb), A1);                                     \
    }
            NVFP4_ROW(d0, sr0, a00, a01)
            NVFP4_ROW(d1, sr1, a10, a11)
#undef NVFP4_ROW
        }
        if (g0 < c16) {
            const __m256 x0 = _mm256_loadu_ps(x + g0), x1 = _mm256_loadu_ps(x + g0 + 8);
            decode16(fmt, d0, g0, 1, _mm256_set1_ps(0.5f * dsv4_linear_group_scale(p, sr0, g)), &w0,
                     &w1);
            a00 = _mm256_fmadd_ps(x0, w0, a00), a01 = _mm256_fmadd_ps(x1, w1, a01);
            decode16(fmt, d1, g0, 1, _mm256_set1_ps(0.5f * dsv4_linear_group_scale(p, sr1, g)), &w0,
                     &w1);
            a10 = _mm256_fmadd_ps(x0, w0, a10), a11 = _mm256_fmadd_ps(x1, w1, a11);
            g0 = c16;
        }
    }
    for (; g0 < c16; g0 += group, g++) {
        const int64_t gend = g0 + group < c16 ? g0 + group : c16;
        __m256 b00 = zero, b01 = zero, b10 = zero, b11 = zero;
        if (fmt == DSV4_FORMAT_MXFP4) {
            /* The group is one 32-column step (cols % 32 == 0): same partials, fewer ops. */
            __m256 w[4];
            const __m256 x0 = _mm256_loadu_ps(x + g0), x1 = _mm256_loadu_ps(x + g0 + 8);
            const __m256 x2 = _mm256_loadu_ps(x + g0 + 16), x3 = _mm256_loadu_ps(x + g0 + 24);
            decode32_fp4(d0, g0, w);
            b00 = _mm256_fmadd_ps(x2, w[2], _mm256_mul_ps(x0, w[0]));
            b01 = _mm256_fmadd_ps(x3, w[3], _mm256_mul_ps(x1, w[1]));
            decode32_fp4(d1, g0, w);
            b10 = _mm256_fmadd_ps(x2, w[2], _mm256_mul_ps(x0, w[0]));
            b11 = _mm256_fmadd_ps(x3, w[3], _mm256_mul_ps(x1, w[1]));
        }
        for (int64_t k = g0; fmt != DSV4_FORMAT_MXFP4 && k < gend; k += 16) {
            const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
            decode16(fmt, d0, k, 0, zero, &w0, &w1);
            b00 = _mm256_fmadd_ps(x0, w0, b00);
            b01 = _mm256_fmadd_ps(x1, w1, b01);
            decode16(fmt, d1, k, 0, zero, &w0, &w1);
            b10 = _mm256_fmadd_ps(x0, w0, b10);
            b11 = _mm256_fmadd_ps(x1, w1, b11);
        }
        if (!scaled) {
            a00 = _mm256_add_ps(a00, b00), a01 = _mm256_add_ps(a01, b01);
            a10 = _mm256_add_ps(a10, b10), a11 = _mm256_add_ps(a11, b11);
            continue;
        }
        const float s0 = dsv4_linear_group_scale(p, sr0, g),
                    s1 = dsv4_linear_group_scale(p, sr1, g);
        if (fmt == DSV4_FORMAT_FP8) {
            const __m256 k256 = _mm256_set1_ps(256.0f);
            b00 = _mm256_mul_ps(b00, k256), b01 = _mm256_mul_ps(b01, k256);
            b10 = _mm256_mul_ps(b10, k256), b11 = _mm256_mul_ps(b11, k256);
        }
        const float m = fmt == DSV4_FORMAT_FP8 ? 1.0f : 0.5f;
        const __m256 v0 = _mm256_set1_ps(s0 * m), v1 = _mm256_set1_ps(s1 * m);
        a00 = _mm256_fmadd_ps(b00, v0, a00), a01 = _mm256_fmadd_ps(b01, v0, a01);
        a10 = _mm256_fmadd_ps(b10, v1, a10), a11 = _mm256_fmadd_ps(b11, v1, a11);
    }
    if (c16 < cols) {
        _Alignas(32) float xt[16] = {0};
        memcpy(xt, x + c16, (size_t)(cols - c16) * sizeof *xt);
        const __m256 x0 = _mm256_load_ps(xt), x1 = _mm256_load_ps(xt + 8);
        decode16_scalar(p, rows[0], c16, &w0, &w1);
        a00 = _mm256_fmadd_ps(x0, w0, a00), a01 = _mm256_fmadd_ps(x1, w1, a01);
        decode16_scalar(p, rows[1], c16, &w0, &w1);
        a10 = _mm256_fmadd_ps(x0, w0, a10), a11 = _mm256_fmadd_ps(x1, w1, a11);
    }
    out[0] = hsum(_mm256_add_ps(a00, a01));
    out[1] = hsum(_mm256_add_ps(a10, a11));
}

/* y[r - r0] = out_scale * sum_c x[c] * W[r][c], r in [r0, r1). */
AVX2_INLINE void gemv_rows(dsv4_weight_format fmt, const dsv4_linear_plan *p, int64_t r0,
                           int64_t r1, const float *x, float *y)
{
    for (int64_t r = r0; r < r1; r += 2) {
        const int64_t rows[2] = {r, r + 1 < r1 ? r + 1 : r};
        float out[2];
        gemv2(fmt, p, rows, x, out);
        y[r - r0] = out[0] * p->out_scale;
        if (r + 1 < r1) y[r + 1 - r0] = out[1] * p->out_scale;
    }
}

/* ---- T > 1: decoded tile + register-tiled micro-kernel -------------------------------------- */

enum { RB = 16, KC = 256 }; /* rows x columns of the decoded tile: 16 KiB of f32 */

/* out[0 .. round_up(n, 16)) = columns [kb, kb + n) of `row`, zero-padded. */
AVX2_INLINE void decode_tile_row(dsv4_weight_format fmt, const dsv4_linear_plan *p, int64_t row,
                                 int64_t kb, int64_t n, float *out)
{
    const uint8_t *d = p->data + row * p->row_bytes, *sr = dsv4_linear_scale_row(p, row);
    const int64_t end16 = kb + (n & ~(int64_t)15);
    __m256 w0, w1;
    for (int64_t k = kb; k < end16;) {
        const int64_t g = k / p->group;
        const int64_t gend = (g + 1) * p->group < end16 ? (g + 1) * p->group : end16;
        int exact = 1;
        __m256 s = _mm256_set1_ps(1.0f);
        if (p->scale_kind != DSV4_LINEAR_SCALE_NONE)
            s = _mm256_set1_ps(decoder_scale(fmt, dsv4_linear_group_scale(p, sr, g), &exact));
        for (; k < gend; k += 16) {
            if (__builtin_expect(exact, 1))
                decode16(fmt, d, k, 1, s, &w0, &w1);
            else
                decode16_scalar(p, row, k, &w0, &w1);
            _mm256_storeu_ps(out + (k - kb), w0);
            _mm256_storeu_ps(out + (k - kb) + 8, w1);
        }
    }
    if (end16 < kb + n) {
        decode16_scalar(p, row, end16, &w0, &w1);
        _mm256_storeu_ps(out + (end16 - kb), w0);
        _mm256_storeu_ps(out + (end16 - kb) + 8, w1);
    }
}

/* acc[i][t] = sum_k w[i][k] * x[t][k], k < n, for 4 tile rows x 3 tokens (repeats allowed);
 * y[t * ldy + i] = (first ? 0 : y) + hsum(acc[i][t]) for i < ni, t < nt.
 * w: [4][>= round_up(n, 8)] zero-padded   x: 3 pointers to [n] (masked past n). */
AVX2_FN static void micro4x3(const float *const w[4], const float *const xp[3], int64_t n, float *y,
                             int64_t ldy, int ni, int nt, int first)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
    __m256 c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    const int64_t n8 = n & ~(int64_t)7;
#define MICRO_STEP(LOADX)                                                                          \
    {                                                                                              \
        const __m256 x0 = LOADX(xp[0] + k), x1 = LOADX(xp[1] + k), x2 = LOADX(xp[2] + k);          \
        __m256 v = _mm256_loadu_ps(w[0] + k);                                                      \
        c00 = _mm256_fmadd_ps(v, x0, c00);                                                         \
        c01 = _mm256_fmadd_ps(v, x1, c01);                                                         \
        c02 = _mm256_fmadd_ps(v, x2, c02);                                                         \
        v = _mm256_loadu_ps(w[1] + k);                                                             \
        c10 = _mm256_fmadd_ps(v, x0, c10);                                                         \
        c11 = _mm256_fmadd_ps(v, x1, c11);                                                         \
        c12 = _mm256_fmadd_ps(v, x2, c12);                                                         \
        v = _mm256_loadu_ps(w[2] + k);                                                             \
        c20 = _mm256_fmadd_ps(v, x0, c20);                                                         \
        c21 = _mm256_fmadd_ps(v, x1, c21);                                                         \
        c22 = _mm256_fmadd_ps(v, x2, c22);                                                         \
        v = _mm256_loadu_ps(w[3] + k);                                                             \
        c30 = _mm256_fmadd_ps(v, x0, c30);                                                         \
        c31 = _mm256_fmadd_ps(v, x1, c31);                                                         \
        c32 = _mm256_fmadd_ps(v, x2, c32);                                                         \
    }
    int64_t k = 0;
#define LOADU(ptr) _mm256_loadu_ps(ptr)
    for (; k < n8; k += 8) MICRO_STEP(LOADU)
    if (k < n) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - k)), lane);
#define LOADM(ptr) _mm256_maskload_ps(ptr, mask)
        MICRO_STEP(LOADM)
#undef LOADM
    }
#undef LOADU
#undef MICRO_STEP
    const float s[4][3] = {{hsum(c00), hsum(c01), hsum(c02)},
                           {hsum(c10), hsum(c11), hsum(c12)},
                           {hsum(c20), hsum(c21), hsum(c22)},
                           {hsum(c30), hsum(c31), hsum(c32)}};
    for (int t = 0; t < nt; t++)
        for (int i = 0; i < ni; i++) {
            float *yo = y + t * ldy + i;
            *yo = first ? s[i][t] : *yo + s[i][t];
        }
}

/* y[t * ldy + (r - r0)] = out_scale * sum_c x[t][c] * W[r][c], r in [r0, r1), t < n_tokens.
 * Per output: the 256-column chunks' hsums added in column order. */
AVX2_INLINE void gemm_rows(dsv4_weight_format fmt, const dsv4_linear_plan *p, int64_t r0,
                           int64_t r1, const float *x, int64_t n_tokens, float *y, int64_t ldy)
{
    const int64_t cols = p->cols;
    _Alignas(32) float tile[RB][KC];
    for (int64_t rb = r0; rb < r1; rb += RB) {
        const int nr = (int)(r1 - rb < RB ? r1 - rb : RB);
        float *yb = y + (rb - r0);
        for (int64_t kb = 0; kb < cols; kb += KC) {
            const int64_t n = cols - kb < KC ? cols - kb : KC;
            for (int i = 0; i < nr; i++) decode_tile_row(fmt, p, rb + i, kb, n, tile[i]);
            for (int64_t t0 = 0; t0 < n_tokens; t0 += 3) {
                const int nt = (int)(n_tokens - t0 < 3 ? n_tokens - t0 : 3);
                const float *xp[3];
                for (int j = 0; j < 3; j++) xp[j] = x + (t0 + (j < nt ? j : nt - 1)) * cols + kb;
                for (int i0 = 0; i0 < nr; i0 += 4) {
                    const int ni = nr - i0 < 4 ? nr - i0 : 4;
                    const float *w[4];
                    for (int j = 0; j < 4; j++) w[j] = tile[i0 + (j < ni ? j : ni - 1)];
                    micro4x3(w, xp, n, yb + t0 * ldy + i0, ldy, ni, nt, kb == 0);
                }
            }
        }
        for (int64_t t = 0; t < n_tokens; t++)
            for (int i = 0; i < nr; i++) {
                float *yo = yb + t * ldy + i;
                *yo = cols == 0 ? 0.0f : *yo * p->out_scale;
            }
    }
}

/* One specialised pair of kernels per format, so decode16's switch folds away. */
#define LINEAR_FORMAT(NAME, FMT)                                                                   \
    AVX2_FN static void rows_##NAME(const dsv4_linear_plan *p, int64_t r0, int64_t r1,             \
                                    const float *x, int64_t n_tokens, float *y, int64_t ldy)       \
    {                                                                                              \
        if (n_tokens == 1)                                                                         \
            gemv_rows(FMT, p, r0, r1, x, y);                                                       \
        else                                                                                       \
            gemm_rows(FMT, p, r0, r1, x, n_tokens, y, ldy);                                        \
    }
LINEAR_FORMAT(f32, DSV4_FORMAT_F32)
LINEAR_FORMAT(bf16, DSV4_FORMAT_BF16)
LINEAR_FORMAT(f16, DSV4_FORMAT_F16)
LINEAR_FORMAT(fp8, DSV4_FORMAT_FP8)
LINEAR_FORMAT(mxfp4, DSV4_FORMAT_MXFP4)
LINEAR_FORMAT(nvfp4, DSV4_FORMAT_NVFP4)
#undef LINEAR_FORMAT

void dsv4_linear_rows_avx2(const dsv4_linear_plan *p, int64_t r0, int64_t r1, const float *x,
                           int64_t n_tokens, float *y, int64_t ldy)
{
    switch (p->format) {
    case DSV4_FORMAT_F32:
        rows_f32(p, r0, r1, x, n_tokens, y, ldy);
        return;
    case DSV4_FORMAT_BF16:
        rows_bf16(p, r0, r1, x, n_tokens, y, ldy);
        return;
    case DSV4_FORMAT_F16:
        rows_f16(p, r0, r1, x, n_tokens, y, ldy);
        return;
    case DSV4_FORMAT_FP8:
        rows_fp8(p, r0, r1, x, n_tokens, y, ldy);
        return;
    case DSV4_FORMAT_MXFP4:
        rows_mxfp4(p, r0, r1, x, n_tokens, y, ldy);
        return;
    case DSV4_FORMAT_NVFP4:
        rows_nvfp4(p, r0, r1, x, n_tokens, y, ldy);
        return;
    case DSV4_FORMAT_INT:
    case DSV4_FORMAT_COUNT:
        break;
    }
    dsv4_linear_rows_scalar(p, r0, r1, x, n_tokens, y, ldy);
}

#else /* not x86: the scalar kernel serves */

int dsv4_linear_avx2_supported(void)
{
    return 0;
}

void dsv4_linear_rows_avx2(const dsv4_linear_plan *p, int64_t r0, int64_t r1, const float *x,
                           int64_t n_tokens, float *y, int64_t ldy)
{
    dsv4_linear_rows_scalar(p, r0, r1, x, n_tokens, y, ldy);
}

#endif
