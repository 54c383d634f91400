/*
 * bk_index.cu - CUDA implementation of a compressor's step (backend.h dsv4_bk_comp_append: its
 * rows into the ring and, in the same kernel, the windows they close: pool, RMSNorm, RoPE,
 * Hadamard, FP8/FP4; dsv4_bk_comp_append_multi: a CSA layer's two compressors in one launch)
 * and of the lightning indexer queries; the scores and top-k are in bk_topk.cu.
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
#include "backend/cuda/kv_dev.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/quant_dev.cuh"

#include <cfloat>
#include <cmath>
#include <cstdint>

enum {
    POOL_SLOTS = 256,   /* 2m slots at most (ratios 4 and 128) */
    DIM_MAX = 4096,     /* widest pooled entry / indexer head */
    POOL_THREADS = 512, /* threads of one CTA (over dims) */
    POOL_REG = 8,       /* windows of up to this many slots pool from registers */
};

/* x [n] in shared memory: blocks of `block` (the last may be shorter), one warp per block,
 * scale from the block's amax (NaN skipped), then round(x / s) * s in e2m1 (the indexer's FP4;
 * the attention entries' FP8 is kv_dev.cuh's). Every thread of the CTA calls it; blockDim.x is
 * a multiple of 32. */
static __device__ void quant_blocks_fp4(float *x, int n, int block)
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
        const float s = dev_scale_fp4(mx);
        for (int j = lane; j < len; j += 32)
            x[b0 + j] = __fmul_rn(dev_round_e2m1(__fdiv_rn(x[b0 + j], s)), s);
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

/* ---- compressor rows and the windows they close --------------------------------------------
 * One CTA per row. First the row goes into the ring: kv, gate [N, width] -> ring_kv, ring_gate
 * [S, Rc, width] at row slot*Rc + pos % Rc, the gate plus ape [m, width] row pos % m. Then, when
 * pos closes a window, entry i = (pos + 1) / m - 1 pools ring positions [(i-1)m, im) (first
 * halves, overlap only, i > 0) and [im, (i+1)m) (second halves with overlap) per dim c: f32
 * softmax of the gates, sums in double in slot order (dsv4_op_faithful_pool), then bf16,
 * RMSNorm(norm), bf16, RoPE at i*m, bf16, and the quantiser -> entry slot cap_e + i of ent in
 * the serving layout (kv_layout.h; kv_dev.cuh dev_kv_quant_store, indexer keys dev_ik_store).
 *
 * The CPU stores every row before any window is pooled; here other CTAs store this step's rows
 * concurrently, so a position of the window that is one of this step's rows is read from the
 * inputs (kv, gate + ape: the same f32 add) instead of the ring, and only older positions from
 * the ring. The ring slots of those are not rewritten in this step when Rc >= ns + N - 1 (the
 * op checks it). Which row holds a position: rows of a slot are contiguous positions in
 * ascending order (backend.h), so when row j0 = row - (pos - q0) holds (slot, q0) the rows in
 * between hold the positions in between; otherwise the earlier rows are searched.
 * Shared: red [32] double, sources [3][POOL_SLOTS] pointers, src_row [POOL_SLOTS], x [dim] f32. */
typedef struct comp_jobs {
    dsv4_bk_comp_job j[DSV4_BK_COMP_MULTI_MAX];
    float had_scale[DSV4_BK_COMP_MULTI_MAX];
} comp_jobs;

/* Grid (N, jobs): CTA (row, y) runs job y's row (one launch for a CSA layer's two compressors;
 * blockDim is the larger job's, and a CTA's result does not depend on blockDim). */
__global__ void comp_append_kernel(comp_jobs J, float eps, const float *freqs, int r,
                                   const int32_t *slot, const int32_t *pos)
{
    DSV4_PDL_WAIT();
    const dsv4_bk_comp_job &jb = J.j[blockIdx.y];
    float *ring_kv = jb.ring_kv, *ring_gate = jb.ring_gate;
    const int64_t cap_e = jb.cap_e;
    const int Rc = jb.Rc, width = jb.width, dim = jb.dim, m = jb.m, is_index = jb.is_index;
    const float *kv = jb.kv, *gate = jb.gate, *ape = jb.ape, *norm = jb.norm;
    const float had_scale = J.had_scale[blockIdx.y];
    extern __shared__ double pool_smem[];
    double *red = pool_smem;
    const float **src_kv = (const float **)(pool_smem + 32);
    const float **src_g = src_kv + POOL_SLOTS, **src_a = src_g + POOL_SLOTS;
    int *src_row = (int *)(src_a + POOL_SLOTS);
    float *x = (float *)(src_row + POOL_SLOTS);
    const int row = blockIdx.x, nt = blockDim.x;
    const int s = slot[row];
    const int64_t p = pos[row];

    /* 1. this row into the ring */
    {
        const int64_t at = ((int64_t)s * Rc + p % Rc) * width;
        const float *k = kv + (int64_t)row * width, *g = gate + (int64_t)row * width;
        const float *a = ape + (p % m) * width;
        for (int c = threadIdx.x; c < width; c += nt) {
            ring_kv[at + c] = k[c];
            ring_gate[at + c] = __fadd_rn(g[c], a[c]);
        }
    }
    if ((p + 1) % m != 0) return;
    const int64_t i = (p + 1) / m - 1;
    if (i >= cap_e) return; /* the op checks it */

    /* 2. where each slot of the window comes from: this step's inputs or the ring */
    const int64_t base = (int64_t)s * Rc;
    const int overlap = width == 2 * dim;
    const int nprev = overlap && i > 0 ? m : 0, ns = nprev + m;
    const int64_t q0 =
        i * m - nprev; /* position of slot 0; slot k sits at q0 + k = p - ns + 1 + k */
    const int j0 = row - (ns - 1);
    if (j0 >= 0 && slot[j0] == s && pos[j0] == q0) { /* uniform: every thread reads the same */
        for (int k = threadIdx.x; k < ns; k += nt) src_row[k] = j0 + k;
    } else {
        for (int k = threadIdx.x; k < ns; k += nt) src_row[k] = k == ns - 1 ? row : -1;
        __syncthreads();
        for (int j = threadIdx.x; j < row; j += nt) {
            const int64_t pj = pos[j];
            if (slot[j] == s && pj >= q0 && pj < p) src_row[pj - q0] = j;
        }
    }
    __syncthreads();
    for (int k = threadIdx.x; k < ns; k += nt) {
        const int off = k < nprev ? 0 : (overlap ? dim : 0);
        const int j = src_row[k];
        if (j >= 0) {
            src_kv[k] = kv + (int64_t)j * width + off;
            src_g[k] = gate + (int64_t)j * width + off;
            src_a[k] = ape + ((q0 + k) % m) * width + off;
        } else {
            const int64_t at = (base + (q0 + k) % Rc) * width + off;
            src_kv[k] = ring_kv + at;
            src_g[k] = ring_gate + at;
            src_a[k] = NULL; /* the ring's gate has ape added */
        }
    }
    __syncthreads();

    /* 3. pool per dim. Windows of up to POOL_REG slots (ratio 4: every CSA decode step) load
     * their gates and values into registers first, all at once, so the three passes cost one
     * memory latency instead of one per slot and pass; the same operations in the same order. */
#define GATE(k) (src_a[k] ? __fadd_rn(src_g[k][c], src_a[k][c]) : src_g[k][c])
    if (ns <= POOL_REG) {
        for (int c = threadIdx.x; c < dim; c += nt) {
            float gv[POOL_REG], kvv[POOL_REG], ev[POOL_REG];
#pragma unroll
            for (int k = 0; k < POOL_REG; k++)
                if (k < ns) gv[k] = GATE(k), kvv[k] = src_kv[k][c];
            float mx = -INFINITY;
#pragma unroll
            for (int k = 0; k < POOL_REG; k++)
                if (k < ns && gv[k] > mx) mx = gv[k];
            double sum = 0.0;
#pragma unroll
            for (int k = 0; k < POOL_REG; k++)
                if (k < ns) {
                    ev[k] = exp_cr(gv[k] - mx);
                    sum += (double)ev[k];
                }
            const float fs = (float)sum;
            double acc = 0.0;
#pragma unroll
            for (int k = 0; k < POOL_REG; k++)
                if (k < ns) acc += (double)kvv[k] * (double)__fdiv_rn(ev[k], fs);
            x[c] = dev_round_bf16((float)acc);
        }
    }
    for (int c = threadIdx.x; ns > POOL_REG && c < dim; c += nt) {
        float mx = -INFINITY;
        for (int k = 0; k < ns; k++) {
            const float g = GATE(k);
            if (g > mx) mx = g;
        }
        double sum = 0.0;
        for (int k = 0; k < ns; k++) sum += (double)exp_cr(GATE(k) - mx);
        const float fs = (float)sum;
        double acc = 0.0;
        for (int k = 0; k < ns; k++) {
            const float e = exp_cr(GATE(k) - mx);
            acc += (double)src_kv[k][c] * (double)__fdiv_rn(e, fs); /* exact product */
        }
#undef GATE
        x[c] = dev_round_bf16((float)acc);
    }
    __syncthreads();

    /* RMSNorm: squares of bf16 values are exact in double; a tree sum of them */
    double ss = 0.0;
    for (int c = threadIdx.x; c < dim; c += nt) ss += (double)x[c] * (double)x[c];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        double t = threadIdx.x < (nt >> 5) ? red[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (threadIdx.x == 0) red[0] = t;
    }
    __syncthreads();
    const float var = (float)(red[0] / (double)dim);
    const float rr = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    for (int c = threadIdx.x; c < dim; c += nt)
        x[c] = dev_round_bf16(__fmul_rn(norm[c], __fmul_rn(x[c], rr)));
    __syncthreads();

    rope_bf16(x, dim, r, freqs, i * m);
    const int64_t at = (int64_t)s * cap_e + i;
    if (!is_index) { /* the non-RoPE dims: FP8 in blocks of 64 (x is bf16 already), stored */
        dev_kv_quant_store(dsv4_kv_layout_of(dim, r), (uint8_t *)jb.ent, at, x);
        return;
    }
    /* indexer keys: Hadamard, then FP4 in blocks of 32 */
    rotate_activation(x, dim, had_scale);
    quant_blocks_fp4(x, dim, 32);
    dev_ik_store(dsv4_ik_layout_of(dim), (uint8_t *)jb.ent, at, x);
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

extern "C" dsv4_status dsv4_cuda_bk_comp_append_multi(dsv4_backend *b, const dsv4_bk_comp_job *jobs,
                                                      int n, float eps, const float *freqs, int r,
                                                      const dsv4_bk_rows *rows)
{
    if (n < 1 || n > DSV4_BK_COMP_MULTI_MAX)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "comp_append: %d compressors", n);
    comp_jobs J;
    int threads = 32, dim_max = 1;
    for (int k = 0; k < n; k++) {
        const dsv4_bk_comp_job *c = &jobs[k];
        const int m = c->m, dim = c->dim, width = c->width, Rc = c->Rc, is_index = c->is_index;
        const int ns = width == 2 * dim ? 2 * m : m;
        if (m <= 0 || dim <= 0 || dim > DIM_MAX || (width != dim && width != 2 * dim) ||
            ns > POOL_SLOTS || (int64_t)Rc < (int64_t)ns + rows->n - 1 || r < 0 || r > dim ||
            r % 2 || (is_index && !is_pow2(dim)) || (!is_index && r == dim))
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                             "comp_append: m %d, dim %d, width %d, Rc %d (%d rows), rope %d, "
                             "is_index %d",
                             m, dim, width, Rc, rows->n, r, is_index);
        J.j[k] = *c;
        /* the Hadamard scale exactly as dsv4_hadamard: the double n^-0.5 as an f32 */
        J.had_scale[k] = (float)pow((double)dim, -0.5);
        const int t = threads_for(dim, POOL_THREADS);
        threads = t > threads ? t : threads;
        dim_max = dim > dim_max ? dim : dim_max;
    }
    if (rows->n <= 0) return DSV4_OK;
    const size_t smem = 32 * sizeof(double) + POOL_SLOTS * (3 * sizeof(float *) + sizeof(int)) +
                        (size_t)dim_max * sizeof(float);
    comp_append_kernel<<<dim3((unsigned)rows->n, (unsigned)n), threads, smem,
                         dsv4_cuda_stream(b->cuda)>>>(J, eps, freqs, r, rows->slot, rows->pos);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_comp_append(dsv4_backend *b, void *ent, int64_t cap_e,
                                                float *ring_kv, float *ring_gate, int Rc, int width,
                                                int dim, int m, const float *kv, const float *gate,
                                                const float *ape, const float *norm, float eps,
                                                const float *freqs, int r, int is_index,
                                                const dsv4_bk_rows *rows)
{
    const dsv4_bk_comp_job job = {ent, cap_e, ring_kv, ring_gate, Rc,   width,   dim,
                                  m,   kv,    gate,    ape,       norm, is_index};
    return dsv4_cuda_bk_comp_append_multi(b, &job, 1, eps, freqs, r, rows);
}

/* ---- indexer queries ---------------------------------------------------------------------- */
/* iq [N, nh, d] in place, one CTA of d threads per (row, head): RoPE of the last r dims at
 * pos[row], bf16, rotate_activation, FP4 in blocks of 32 (bf16 first: a no-op here). */
__global__ void indexer_q_kernel(float *iq, int nh, int d, int r, const float *freqs,
                                 float had_scale, const int32_t *pos)
{
    DSV4_PDL_WAIT();
    extern __shared__ float xq[];
    const int row = blockIdx.y, h = blockIdx.x;
    float *q = iq + ((int64_t)row * nh + h) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) xq[c] = q[c];
    __syncthreads();
    rope_bf16(xq, d, r, freqs, pos[row]);
    rotate_activation(xq, d, had_scale);
    quant_blocks_fp4(xq, d, 32);
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
