/*
 * linear_scalar.c - the portable projection kernel. One weight row is decoded a chunk at a time
 * into a stack buffer with table lookups (FP8: 256-entry table, FP4: 16-entry table, BF16: a
 * shift; never ldexpf per element) and each chunk is dotted with every token, so a row is
 * decoded once whatever n_tokens is. It is the fallback for CPUs without AVX2, the path the AVX2
 * kernels are tested against, and its decoder fills the AVX2 kernels' column tails.
 */
#include "backend/cpu/linear_kernels.h"
#include "core/error.h"
#include "core/float_formats.h"

#include <pthread.h>

/* The e4m3 table is filled once from the reference decoder, so the two agree by construction. */
static float e4m3_lut[256];
static pthread_once_t e4m3_once = PTHREAD_ONCE_INIT;

static void e4m3_init(void)
{
    for (int i = 0; i < 256; i++) e4m3_lut[i] = dsv4_e4m3_to_f32((uint8_t)i);
}

const float *dsv4_linear_e4m3_table(void)
{
    pthread_once(&e4m3_once, e4m3_init);
    return e4m3_lut;
}

static const float e2m1_lut[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* f16 without ldexpf: subnormals are man * 2^-24, exact in f32. */
static float f16_to_f32(uint16_t h)
{
    const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        const float v = (float)man * 0x1p-24f;
        return (h & 0x8000) ? -v : v;
    }
    return dsv4_f16_to_f32(h);
}

void dsv4_linear_decode_scalar(const dsv4_linear_plan *p, int64_t row, int64_t c0, int64_t n,
                               float *out)
{
    const uint8_t *d = p->data + row * p->row_bytes;
    const uint8_t *srow = dsv4_linear_scale_row(p, row);
    const int64_t end = c0 + n;
    switch (p->format) {
    case DSV4_FORMAT_F32:
        memcpy(out, d + 4 * c0, (size_t)n * 4);
        return;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16:
        for (int64_t c = c0; c < end; c++) {
            uint16_t h;
            memcpy(&h, d + 2 * c, 2);
            out[c - c0] = p->format == DSV4_FORMAT_BF16 ? dsv4_bf16_to_f32(h) : f16_to_f32(h);
        }
        return;
    case DSV4_FORMAT_FP8:
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4:
        /* One scale per group of columns; the group loop keeps the scale decode out of the
         * element loop. */
        for (int64_t c = c0; c < end;) {
            const int64_t g = c / p->group;
            const int64_t gend = (g + 1) * p->group < end ? (g + 1) * p->group : end;
            const float s = dsv4_linear_group_scale(p, srow, g);
            if (p->format == DSV4_FORMAT_FP8) {
                for (; c < gend; c++) out[c - c0] = p->e4m3_lut[d[c]] * s;
            } else {
                for (; c < gend; c++) {
                    const uint8_t b = d[c / 2];
                    out[c - c0] = e2m1_lut[(c & 1) ? b >> 4 : b & 0xf] * s;
                }
            }
        }
        return;
    case DSV4_FORMAT_INT:
    case DSV4_FORMAT_COUNT:
        break;
    }
    DSV4_ASSERT(!"dsv4_linear_decode_scalar: format without a plan");
}

/* Columns per decoded chunk: 1 KiB of stack, and a multiple of every scale group. */
enum { KC = 256 };

/* y[t][r - r0] = sum_c x[t][c] * W[r][c], r in [r0, r1), t < n_tokens.
 * Per output: chunks of 256 columns, each summed with four interleaved accumulators
 * ((a0 + a1) + (a2 + a3)), the chunk sums added in column order, then times out_scale. */
void dsv4_linear_rows_scalar(const dsv4_linear_plan *p, int64_t r0, int64_t r1, const float *x,
                             int64_t n_tokens, float *y, int64_t ldy)
{
    const int64_t cols = p->cols;
    float wbuf[KC];
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t kb = 0; kb < cols; kb += KC) {
            const int64_t n = cols - kb < KC ? cols - kb : KC;
            dsv4_linear_decode_scalar(p, r, kb, n, wbuf);
            for (int64_t t = 0; t < n_tokens; t++) {
                const float *xt = x + t * cols + kb;
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                int64_t c = 0;
                for (; c + 4 <= n; c += 4) {
                    a0 += xt[c] * wbuf[c];
                    a1 += xt[c + 1] * wbuf[c + 1];
                    a2 += xt[c + 2] * wbuf[c + 2];
                    a3 += xt[c + 3] * wbuf[c + 3];
                }
                for (; c < n; c++) a0 += xt[c] * wbuf[c];
                const float s = (a0 + a1) + (a2 + a3);
                float *yo = y + t * ldy + (r - r0);
                *yo = kb == 0 ? s : *yo + s;
            }
        }
        if (cols == 0)
            for (int64_t t = 0; t < n_tokens; t++) y[t * ldy + (r - r0)] = 0.0f;
        for (int64_t t = 0; t < n_tokens; t++) y[t * ldy + (r - r0)] *= p->out_scale;
    }
}
