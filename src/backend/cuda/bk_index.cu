/*
 * bk_index.cu - CUDA implementation of the compressor rows, the closing of compressor windows
 * (pool, RMSNorm, RoPE, Hadamard, FP8/FP4) and the lightning indexer queries (backend.h); the
 * scores and top-k are in bk_topk.cu.
 *
 * The CPU ops (backend/cpu/bk_index.c) are the reference and these kernels reproduce them bit for
 * bit: the same f32 operations in the same order with no contraction into FMAs where the CPU
 * rounds twice (__fmul_rn/__fadd_rn), the pooling sums in double in slot order, the Hadamard
 * butterflies stage by stage as dsv4_hadamard, and quant_sim.c's FP8/FP4 roundings ported as
 * they are. Two things are not guaranteed identical: exp/cos/sin are computed in double and
 * rounded once (correctly rounded), where glibc's expf/cosf/sinf are within 1 ulp of that; and
 * the RMSNorm sum of squares is a tree, exact whenever the squares of the bf16 inputs span fewer
 * than 2^28 (then every partial sum is exact in double). Both only move a value by an f32 ulp
 * before a bf16 rounding, so a flip is rare (tests/test_gpu_index.c measures it).
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/quant_dev.cuh"

#include <cfloat>
#include <cmath>
#include <cstdint>

enum {
    POOL_SLOTS = 256,   /* 2m slots at most (ratios 4 and 128) */
    DIM_MAX = 4096,     /* widest pooled entry / indexer head */
    POOL_THREADS = 512, /* threads of one window-closing CTA (over dims) */
    STORE_THREADS = 256,
};

/* x [n] in shared memory: blocks of `block` (the last may be shorter), one warp per block,
 * scale from the block's amax (NaN skipped), then round(x / s) * s in e2m1 (fp4) or e4m3.
 * Every thread of the CTA calls it; blockDim.x is a multiple of 32. */
static __device__ void quant_blocks(float *x, int n, int block, int fp4)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int b0 = warp * block; b0 < n; b0 += nw * block) {
        const int len = n - b0 < block ? n - b0 : block;
        float mx = 0.0f;
        for (int j = lane; j < len; j += 32) {
            const float a = fabsf(x[b0 + j]);
            if (a > mx) mx = a;
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float t = __shfl_xor_sync(0xffffffffu, mx, o);
            if (t > mx) mx = t;
        }
        const float s = fp4 ? dev_scale_fp4(mx) : dev_scale_fp8(mx);
        for (int j = lane; j < len; j += 32) {
            const float v = __fdiv_rn(x[b0 + j], s);
            x[b0 + j] = __fmul_rn(fp4 ? dev_round_e2m1(v) : dev_round_e4m3(v), s);
        }
    }
    __syncthreads();
}

/* x [n] (n a power of two) in shared memory: dsv4_hadamard's butterflies, strides 1, 2, ...,
 * n/2, each (a, b) -> (a + b, a - b), then * scale; bf16 before and after (rotate_activation). */
static __device__ void rotate_activation(float *x, int n, float scale)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = dev_round_bf16(x[i]);
    __syncthreads();
    for (int h = 1; h < n; h <<= 1) {
        for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
            const int j = (t & ~(h - 1)) * 2 + (t & (h - 1));
            const float a = x[j], b = x[j + h];
            x[j] = __fadd_rn(a, b);
            x[j + h] = __fsub_rn(a, b);
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = dev_round_bf16(__fmul_rn(x[i], scale));
    __syncthreads();
}

/* x [dim] in shared memory: interleaved RoPE of the last r dims at pos (ops.h dsv4_op_rope) with
 * correctly rounded cos/sin, then bf16 (all dims: the others are bf16 already). */
static __device__ void rope_bf16(float *x, int dim, int r, const float *freqs, int64_t pos)
{
    float *p = x + dim - r;
    for (int i = threadIdx.x; i < r / 2; i += blockDim.x) {
        const float ang = __fmul_rn(freqs[i], (float)pos);
        const float c = (float)cos((double)ang), s = (float)sin((double)ang);
        const float a = p[2 * i], b = p[2 * i + 1];
        p[2 * i] = dev_round_bf16(__fadd_rn(__fmul_rn(a, c), __fmul_rn(-b, s)));
        p[2 * i + 1] = dev_round_bf16(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
    }
    __syncthreads();
}

static __device__ __forceinline__ float exp_cr(float x)
{
    return (float)exp((double)x);
}

/* ---- compressor rows ---------------------------------------------------------------------- */
/* kv, gate [N, width] -> ring_kv, ring_gate [S, Rc, width] at row slot*Rc + pos % Rc;
 * the gate row gets ape [m, width] row pos % m added. One CTA per row. */
__global__ void comp_store_kernel(float *ring_kv, float *ring_gate, int Rc, int width,
                                  const float *kv, const float *gate, const float *ape, int m,
                                  const int32_t *slot, const int32_t *pos)
{
    const int row = blockIdx.x;
    const int64_t p = pos[row];
    const int64_t at = ((int64_t)slot[row] * Rc + p % Rc) * width;
    const float *k = kv + (int64_t)row * width, *g = gate + (int64_t)row * width;
    const float *a = ape + (p % m) * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        ring_kv[at + i] = k[i];
        ring_gate[at + i] = __fadd_rn(g[i], a[i]);
    }
}

extern "C" dsv4_status dsv4_cuda_bk_comp_store(dsv4_backend *b, float *ring_kv, float *ring_gate,
                                               int Rc, int width, const float *kv,
                                               const float *gate, const float *ape, int m,
                                               const dsv4_bk_rows *rows)
{
    if (Rc <= 0 || width <= 0 || m <= 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "comp_store: Rc %d, width %d, m %d", Rc, width,
                         m);
    if (rows->n <= 0) return DSV4_OK;
    comp_store_kernel<<<rows->n, STORE_THREADS, 0, dsv4_cuda_stream(b->cuda)>>>(
        ring_kv, ring_gate, Rc, width, kv, gate, ape, m, rows->slot, rows->pos);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- closing windows ---------------------------------------------------------------------- */
/* One CTA per row; rows whose position closes no window exit. The entry i = (pos + 1) / m - 1
 * pools ring positions [(i-1)m, im) (first halves, overlap only, i > 0) and [im, (i+1)m)
 * (second halves with overlap) per dim c: f32 softmax of the gates, sums in double in slot order
 * (dsv4_op_faithful_pool), then bf16, RMSNorm(norm), bf16, RoPE at i*m, bf16, and the quantiser.
 * ring_* [S, Rc, width] -> ent [S, cap_e, dim] bf16. Shared: x [dim] f32, red [32] double. */
__global__ void comp_pool_kernel(uint16_t *ent, int64_t cap_e, const float *ring_kv,
                                 const float *ring_gate, int Rc, int width, int dim, int m,
                                 const float *norm, float eps, const float *freqs, int r,
                                 int is_index, float had_scale, const int32_t *slot,
                                 const int32_t *pos)
{
    extern __shared__ double pool_smem[];
    double *red = pool_smem;
    float *x = (float *)(pool_smem + 32);
    const int row = blockIdx.x;
    const int64_t p = pos[row];
    if ((p + 1) % m != 0) return;
    const int64_t i = (p + 1) / m - 1;
    if (i >= cap_e) return; /* the CPU reports it; here it cannot be */
    const int64_t base = (int64_t)slot[row] * Rc;
    const int overlap = width == 2 * dim;
    const int nprev = overlap && i > 0 ? m : 0, ns = nprev + m;
    const int64_t q0 = i * m - nprev; /* position of slot 0; slot k sits at q0 + k */

    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float mx = -INFINITY;
        for (int k = 0; k < ns; k++) {
            const int off = k < nprev ? 0 : (overlap ? dim : 0);
            const float g = ring_gate[(base + (q0 + k) % Rc) * width + off + c];
            if (g > mx) mx = g;
        }
        double sum = 0.0;
        for (int k = 0; k < ns; k++) {
            const int off = k < nprev ? 0 : (overlap ? dim : 0);
            sum += (double)exp_cr(ring_gate[(base + (q0 + k) % Rc) * width + off + c] - mx);
        }
        const float fs = (float)sum;
        double acc = 0.0;
        for (int k = 0; k < ns; k++) {
            const int64_t at =
                (base + (q0 + k) % Rc) * width + (k < nprev ? 0 : (overlap ? dim : 0));
            const float e = exp_cr(ring_gate[at + c] - mx);
            acc += (double)ring_kv[at + c] * (double)__fdiv_rn(e, fs); /* exact product */
        }
        x[c] = dev_round_bf16((float)acc);
    }
    __syncthreads();

    /* RMSNorm: squares of bf16 values are exact in double; a tree sum of them */
    double ss = 0.0;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) ss += (double)x[c] * (double)x[c];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        double t = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (threadIdx.x == 0) red[0] = t;
    }
    __syncthreads();
    const float var = (float)(red[0] / (double)dim);
    const float rr = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        x[c] = dev_round_bf16(__fmul_rn(norm[c], __fmul_rn(x[c], rr)));
    __syncthreads();

    rope_bf16(x, dim, r, freqs, i * m);
    if (is_index) { /* indexer keys: Hadamard, then FP4 in blocks of 32 */
        rotate_activation(x, dim, had_scale);
        quant_blocks(x, dim, 32, 1);
    } else { /* the non-RoPE dims: FP8 in blocks of 64 (x is bf16 already) */
        quant_blocks(x, dim - r, 64, 0);
    }
    uint16_t *out = ent + ((int64_t)slot[row] * cap_e + i) * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        out[c] = (uint16_t)(__float_as_uint(dev_round_bf16(x[c])) >> 16);
}

static int is_pow2(int n)
{
    return n > 0 && (n & (n - 1)) == 0;
}

static int threads_for(int n, int max)
{
    int t = (n + 31) / 32 * 32;
    return t > max ? max : t;
}

extern "C" dsv4_status dsv4_cuda_bk_comp_pool(dsv4_backend *b, uint16_t *ent, int64_t cap_e,
                                              const float *ring_kv, const float *ring_gate, int Rc,
                                              int width, int dim, int m, const float *norm,
                                              float eps, const float *freqs, int r, int is_index,
                                              const dsv4_bk_rows *rows)
{
    const int ns = width == 2 * dim ? 2 * m : m;
    if (m <= 0 || dim <= 0 || dim > DIM_MAX || (width != dim && width != 2 * dim) ||
        ns > POOL_SLOTS || Rc < ns || r < 0 || r > dim || r % 2 || (is_index && !is_pow2(dim)))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "comp_pool: m %d, dim %d, width %d, Rc %d, rope %d, is_index %d", m, dim,
                         width, Rc, r, is_index);
    if (rows->n <= 0) return DSV4_OK;
    /* the Hadamard scale exactly as dsv4_hadamard: the double n^-0.5 as an f32 */
    const float had_scale = (float)pow((double)dim, -0.5);
    const size_t smem = 32 * sizeof(double) + (size_t)dim * sizeof(float);
    comp_pool_kernel<<<rows->n, threads_for(dim, POOL_THREADS), smem, dsv4_cuda_stream(b->cuda)>>>(
        ent, cap_e, ring_kv, ring_gate, Rc, width, dim, m, norm, eps, freqs, r, is_index, had_scale,
        rows->slot, rows->pos);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- indexer queries ---------------------------------------------------------------------- */
/* iq [N, nh, d] in place, one CTA of d threads per (row, head): RoPE of the last r dims at
 * pos[row], bf16, rotate_activation, FP4 in blocks of 32 (bf16 first: a no-op here). */
__global__ void indexer_q_kernel(float *iq, int nh, int d, int r, const float *freqs,
                                 float had_scale, const int32_t *pos)
{
    extern __shared__ float xq[];
    const int row = blockIdx.y, h = blockIdx.x;
    float *q = iq + ((int64_t)row * nh + h) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) xq[c] = q[c];
    __syncthreads();
    rope_bf16(xq, d, r, freqs, pos[row]);
    rotate_activation(xq, d, had_scale);
    quant_blocks(xq, d, 32, 1);
    for (int c = threadIdx.x; c < d; c += blockDim.x) q[c] = xq[c];
}

extern "C" dsv4_status dsv4_cuda_bk_indexer_q(dsv4_backend *b, float *iq, const dsv4_bk_rows *rows,
                                              int nh, int d, int r, const float *freqs)
{
    if (nh <= 0 || nh > 65535 || !is_pow2(d) || d > DIM_MAX || r < 0 || r > d || r % 2)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "indexer_q: %d heads of %d, rope %d", nh, d, r);
    if (rows->n <= 0) return DSV4_OK;
    if (rows->n > 65535)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "indexer_q: %d rows (at most 65535)", rows->n);
    const float had_scale = (float)pow((double)d, -0.5);
    const dim3 grid((unsigned)nh, (unsigned)rows->n);
    indexer_q_kernel<<<grid, threads_for(d, 1024), (size_t)d * sizeof(float),
                       dsv4_cuda_stream(b->cuda)>>>(iq, nh, d, r, freqs, had_scale, rows->pos);
    CUDA_LAUNCHED();
    return DSV4_OK;
}
