/*
 * dequant.cu - stored-format weights -> f32 on the GPU, bit-identical to the CPU reference
 * (model/weights.c). Used to check uploads and as the slow path of later kernels' tests.
 *
 * Shapes: w logical [rows, cols]; out [nrows, cols] f32, row-major, rows row0..row0+nrows-1.
 * One thread per output element; FP8 scales are per 128x128 block, MXFP4 per 32 and NVFP4 per 16
 * inputs of a row.
 */
#include "backend/cuda/check.cuh"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/weight_dev.cuh"
#include "core/float_formats.h"

struct dequant_args {
    int format;
    int scale_dtype;
    const uint8_t *data;
    const uint8_t *scale;
    int64_t cols, scale_cols, row0, nrows;
    float scale2;
};

__global__ static void dequant_kernel(dequant_args a, float *out)
{
    DSV4_PDL_WAIT();
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= a.nrows * a.cols) return;
    const int64_t r = a.row0 + idx / a.cols, j = idx % a.cols;
    float v = 0.0f;
    switch (a.format) {
    case DSV4_FORMAT_F32:
        memcpy(&v, a.data + 4 * (r * a.cols + j), 4);
        break;
    case DSV4_FORMAT_BF16:
    case DSV4_FORMAT_F16: {
        uint16_t h;
        memcpy(&h, a.data + 2 * (r * a.cols + j), 2);
        v = a.format == DSV4_FORMAT_BF16 ? dsv4_bf16_to_f32(h) : dsv4_f16_to_f32(h);
        break;
    }
    case DSV4_FORMAT_FP8:
        v = dsv4_e4m3_to_f32(a.data[r * a.cols + j]) * dev_weight_scale(a, r / 128, j / 128);
        break;
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const uint8_t b = a.data[r * (a.cols / 2) + j / 2];
        const int64_t group = a.format == DSV4_FORMAT_MXFP4 ? 32 : 16;
        v = dsv4_e2m1_to_f32((j & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0xf));
        v = __fmul_rn(__fmul_rn(v, dev_weight_scale(a, r, j / group)), a.scale2);
        break;
    }
    case DSV4_FORMAT_INT: {
        int64_t x;
        memcpy(&x, a.data + 8 * (r * a.cols + j), 8);
        v = (float)x;
        break;
    }
    }
    out[idx] = v;
}

extern "C" dsv4_status dsv4_cuda_dequant_rows(dsv4_cuda_ctx *ctx, const dsv4_weight *w,
                                              int64_t row0, int64_t nrows, float *out)
{
    if (row0 < 0 || nrows < 0 || row0 + nrows > w->rows)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: rows [%lld, %lld) outside [0, %lld)",
                         w->name, (long long)row0, (long long)(row0 + nrows), (long long)w->rows);
    if (w->format == DSV4_FORMAT_INT && w->dtype != DSV4_DT_I64)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: GPU dequant of %s tables", w->name,
                         dsv4_dtype_name(w->dtype));
    dequant_args a;
    a.format = (int)w->format;
    a.scale_dtype = (int)w->scale_dtype;
    a.data = (const uint8_t *)w->data;
    a.scale = (const uint8_t *)w->scale;
    a.cols = w->cols;
    a.scale_cols = w->scale_cols;
    a.row0 = row0;
    a.nrows = nrows;
    a.scale2 = w->scale2;
    const int64_t n = nrows * w->cols;
    if (n == 0) return DSV4_OK;
    const int threads = 256;
    dequant_kernel<<<(unsigned)((n + threads - 1) / threads), threads, 0, dsv4_cuda_stream(ctx)>>>(
        a, out);
    CUDA_TRY(cudaGetLastError());
    return DSV4_OK;
}
