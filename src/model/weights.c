/*
 * weights.c - sizes of a dsv4_weight and the reference dequantisation of one row. Backends
 * implement faster paths; tests compare them with this one.
 */
#include "model/weights.h"
#include "core/error.h"
#include "core/float_formats.h"

int64_t dsv4_weight_numel(const dsv4_weight *w)
{
    return w->rows * w->cols;
}

uint64_t dsv4_weight_bytes(const dsv4_weight *w)
{
    return w->data_bytes + w->scale_bytes;
}

static float scale_at(const dsv4_weight *w, int64_t srow, int64_t scol)
{
    int64_t i = srow * w->scale_cols + scol;
    switch (w->scale_dtype) {
    case DSV4_DT_F8_E8M0:
        return dsv4_e8m0_to_f32(((const uint8_t *)w->scale)[i]);
    case DSV4_DT_F8_E4M3:
        return dsv4_e4m3_to_f32(((const uint8_t *)w->scale)[i]);
    case DSV4_DT_F32:
        return ((const float *)w->scale)[i];
    default:
        return NAN;
    }
}

dsv4_status dsv4_weight_dequant_row(const dsv4_weight *w, int64_t row, float *out)
{
    if (row < 0 || row >= w->rows)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: row %lld out of range [0, %lld)", w->name,
                         (long long)row, (long long)w->rows);
    const int64_t n = w->cols;
    const uint8_t *bytes = (const uint8_t *)w->data;
    switch (w->format) {
    case DSV4_FORMAT_F32:
        memcpy(out, bytes + row * n * 4, (size_t)n * 4);
        return DSV4_OK;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16: {
        const uint16_t *p = (const uint16_t *)(bytes + row * n * 2);
        for (int64_t j = 0; j < n; j++) {
            uint16_t h;
            memcpy(&h, p + j, 2);
            out[j] = w->format == DSV4_FORMAT_BF16 ? dsv4_bf16_to_f32(h) : dsv4_f16_to_f32(h);
        }
        return DSV4_OK;
    }
    case DSV4_FORMAT_FP8: {
        const uint8_t *p = bytes + row * n;
        for (int64_t j = 0; j < n; j++)
            out[j] = dsv4_e4m3_to_f32(p[j]) * scale_at(w, row / 128, j / 128);
        return DSV4_OK;
    }
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const uint8_t *p = bytes + row * (n / 2);
        const int64_t group = w->format == DSV4_FORMAT_MXFP4 ? 32 : 16;
        for (int64_t j = 0; j < n; j++) {
            uint8_t b = p[j / 2];
            float v = dsv4_e2m1_to_f32((j & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0xf));
            /* NVFP4: (e2m1 * e4m3) is exact in f32; one rounding when the global scale joins. */
            out[j] = v * scale_at(w, row, j / group) * w->scale2;
        }
        return DSV4_OK;
    }
    case DSV4_FORMAT_INT: {
        for (int64_t j = 0; j < n; j++) {
            if (w->dtype == DSV4_DT_I64) {
                int64_t v;
                memcpy(&v, bytes + (row * n + j) * 8, 8);
                out[j] = (float)v;
            } else {
                int32_t v;
                memcpy(&v, bytes + (row * n + j) * 4, 4);
                out[j] = (float)v;
            }
        }
        return DSV4_OK;
    }
    case DSV4_FORMAT_COUNT:
        break;
    }
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: unknown weight format %d", w->name, (int)w->format);
}
