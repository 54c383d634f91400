/*
 * linear_common.cuh - what the CUDA projection kernels share (bk_linear.cu: the dispatcher and
 * the decode kernels; linear_tiled.cu, linear_mmv.cu, linear_fp8mma.cu: the tensor-core and SIMT
 * kernels): the argument block, the register decoders of each stored format, the scale lookups,
 * the output rounding, the mma.sync wrappers and the split-K reduction over a thread-block
 * cluster.
 *
 * Every decoder is exact: it yields the f32 value of the reference decoding (model/weights.c),
 * possibly times a power of two that the caller folds back in (noted at each one).
 */
#ifndef DSV4_CUDA_LINEAR_COMMON_CUH
#define DSV4_CUDA_LINEAR_COMMON_CUH

#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/pdl.cuh"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

/* How the scale bytes are decoded. */
enum { LIN_SCALE_NONE = 0, LIN_SCALE_E8M0, LIN_SCALE_E4M3, LIN_SCALE_F32 };

/* Launch shapes are planned for this many SMs (H100 / H200 SXM), from the matrix shape alone so
 * that a call makes no device queries; on another GPU the kernels are as correct, only the
 * balance of the grid changes. */
enum { LIN_SMS = 132 };

/* One projection: y [N, nrows] (stride ldy) = x [N, cols] (stride ldx) . W[row0 ..)^T, for each
 * of `groups` groups: group g uses weight rows row0 + g nrows .., x columns g xg .. and y
 * columns g nrows .. (dsv4_bk_linear_grouped; groups = 1 otherwise). The kernels take the group
 * from a grid index (lin_at_group). All pointers are device memory. */
typedef struct lin_args {
    int fmt;   /* dsv4_weight_format */
    int skind; /* LIN_SCALE_* */
    const uint8_t *data;
    const uint8_t *scale;
    int64_t cols, row_bytes, scale_cols;
    int64_t row0, nrows;
    float out_scale; /* NVFP4 scale2, applied to each finished sum (as the CPU kernels do) */
    const float *x;
    int64_t ldx, N;
    float *y;
    int64_t ldy;
    int round_bf16;
    int64_t groups, xg;
    int aq; /* x not quantised yet: the call is of act_quant(x) (F8W only: dsv4_cuda_bk_linear_aq)
             */
} lin_args;

/* a, moved to group g. */
__device__ __forceinline__ void lin_at_group(lin_args &a, int64_t g)
{
    a.row0 += g * a.nrows;
    a.x += g * a.xg;
    a.y += g * a.nrows;
}

/* ue8m0 byte -> 2^(s-127): the exponent field itself, except 0 (2^-127, subnormal) and 0xff. */
__device__ __forceinline__ float lin_e8m0(uint32_t s)
{
    return __uint_as_float(s == 0xffu ? 0x7fc00000u : s == 0u ? 0x00400000u : s << 23);
}

/* e4m3fn byte -> f32, exact (the hardware converter; NaN codes give NaN). */
__device__ __forceinline__ float lin_e4m3(uint32_t b)
{
    const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
    return __half2float(__half(h));
}

/* Two e4m3 bytes (low 16 bits, low byte = lower column) -> f32 pair, exact. */
__device__ __forceinline__ float2 lin_fp8x2(uint32_t two)
{
    const __half2_raw h =
        __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
    return __half22float2(__half2(h));
}

/* One FP4 byte (low nibble = even column) -> f32 pair equal to e2m1 * 2^-14, exactly: each
 * nibble's sign, two exponent bits and mantissa bit are placed into an f16 (bias 15 vs 1), which
 * makes the code 1 (0.5) an f16 subnormal, also exact. Integer ops only, then one conversion. */
__device__ __forceinline__ float2 lin_fp4x2(uint32_t byte)
{
    const uint32_t t = (byte & 0x0fu) | ((byte & 0xf0u) << 12);
    const uint32_t h = ((t & 0x00070007u) << 9) | ((t & 0x00080008u) << 12);
    __half2_raw r;
    r.x = (unsigned short)(h & 0xffffu);
    r.y = (unsigned short)(h >> 16);
    return __half22float2(__half2(r));
}

/* Scale element (srow, g) of the weight, decoded. */
__device__ __forceinline__ float lin_scale(const lin_args &a, int64_t srow, int64_t g)
{
    const int64_t i = srow * a.scale_cols + g;
    switch (a.skind) {
    case LIN_SCALE_E8M0:
        return lin_e8m0(__ldg(a.scale + i));
    case LIN_SCALE_E4M3:
        return lin_e4m3(__ldg(a.scale + i));
    case LIN_SCALE_F32:
        return __ldg((const float *)(const void *)a.scale + i);
    default:
        break;
    }
    return 1.0f;
}

/* Element (r, c) of W (absolute row r) as the reference decodes it, except that FP4 leaves out
 * scale2 (applied to the sum, lin_finish). The slow generic path of the SIMT kernel. */
__device__ __forceinline__ float lin_wval(const lin_args &a, int64_t r, int64_t c)
{
    switch (a.fmt) {
    case DSV4_FORMAT_F32:
        return __ldg((const float *)(const void *)a.data + r * a.cols + c);
    case DSV4_FORMAT_BF16: {
        const unsigned short h =
            __ldg((const unsigned short *)(const void *)a.data + r * a.cols + c);
        return __uint_as_float((uint32_t)h << 16);
    }
    case DSV4_FORMAT_F16: {
        const unsigned short h =
            __ldg((const unsigned short *)(const void *)a.data + r * a.cols + c);
        __half_raw hr;
        hr.x = h;
        return __half2float(__half(hr));
    }
    case DSV4_FORMAT_FP8:
        return lin_e4m3(__ldg(a.data + r * a.row_bytes + c)) * lin_scale(a, r / 128, c / 128);
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const uint32_t b = __ldg(a.data + r * a.row_bytes + c / 2);
        const float2 v = lin_fp4x2(b);
        const float e = ((c & 1) ? v.y : v.x) * 16384.0f; /* e2m1, exact */
        return e * lin_scale(a, r, a.fmt == DSV4_FORMAT_MXFP4 ? c / 32 : c / 16);
    }
    default:
        break;
    }
    return __uint_as_float(0x7fc00000u);
}

/* A finished f32 sum -> the stored output: times scale2, then bf16 (nearest even) on request. */
__device__ __forceinline__ float lin_finish(const lin_args &a, float s)
{
    s *= a.out_scale;
    return a.round_bf16 ? __bfloat162float(__float2bfloat16_rn(s)) : s;
}

/* c [16 x 8] += a [16 x 16] . b [16 x 8], bf16 or f16 inputs, f32 accumulation. Fragments (PTX
 * m16n8k16, g = lane / 4, t = lane % 4; each register two elements, the lower k in the low half):
 * a0 (row g, k 2t..2t+1), a1 (g + 8, 2t), a2 (g, 2t + 8), a3 (g + 8, 2t + 8); b0 (k 2t, col g),
 * b1 (k 2t + 8, col g); c0, c1 (row g, cols 2t, 2t + 1), c2, c3 (row g + 8, same cols). */
__device__ __forceinline__ void lin_mma_bf16(float *c, const uint32_t *a, const uint32_t *b)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void lin_mma_f16(float *c, const uint32_t *a, const uint32_t *b)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Split-K without atomics: part [BM, BN] is this CTA's partial sum of output tile (tokens m0 ..,
 * rows n0 ..) in its shared memory, the cluster's CTAs (its ranks) hold the other K slices. Each
 * rank adds up 1/KS of the tile over the ranks in rank order (distributed shared memory) and
 * writes it, finished. The order depends only on the shape. A cluster of one works as well. */
__device__ __forceinline__ void lin_cluster_store(const lin_args &a, float *part, int BM, int BN,
                                                  int64_t m0, int64_t n0)
{
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync(); /* every rank's partial is in place */
    const int ks = (int)cl.num_blocks(), rank = (int)cl.block_rank();
    const int total = BM * BN, per = (total + ks - 1) / ks;
    const int e1 = min(rank * per + per, total);
    for (int e = rank * per + (int)threadIdx.x; e < e1; e += (int)blockDim.x) {
        const int m = e / BN, n = e - m * BN;
        if (m0 + m >= a.N || n0 + n >= a.nrows) continue;
        float s = *cl.map_shared_rank(part + e, 0);
        for (int r = 1; r < ks; r++) s += *cl.map_shared_rank(part + e, r);
        a.y[(m0 + m) * a.ldy + n0 + n] = lin_finish(a, s);
    }
    cl.sync(); /* no rank leaves while another still reads its shared memory */
}

/* The launch of grid CTAs of `threads` in thread-block clusters of (1, 1, ks): the split-K
 * slices of one tile along z, reduced in rank order (lin_cluster_store and the kernels' own
 * reductions). attr: the caller's storage for the cluster attribute. */
static inline cudaLaunchConfig_t lin_cluster_cfg(dim3 grid, int threads, size_t smem, int ks,
                                                 cudaStream_t st, cudaLaunchAttribute *attr)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3((unsigned)threads, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = 1;
    attr->val.clusterDim.y = 1;
    attr->val.clusterDim.z = (unsigned)ks;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

/* The tiled kernels (linear_tiled.cu), the tensor-core decode kernel (linear_mmv.cu) and the FP8
 * kernel for 17..64 rows of x (linear_fp8mma.cu). *_ok:
 * whether the kernel takes this weight and x. The launches cover a->groups groups. */
int dsv4_lin_mma_ok(const lin_args *a);
dsv4_status dsv4_lin_launch_mma(const lin_args *a, cudaStream_t st);
dsv4_status dsv4_lin_launch_simt(const lin_args *a, cudaStream_t st);
int dsv4_lin_mmv_ok(const lin_args *a);
dsv4_status dsv4_lin_launch_mmv(const lin_args *a, cudaStream_t st);
/* Whether MMV's pipelined kernel (two steps in flight) takes this call. */
int dsv4_lin_mmv_pipe_takes(const lin_args *a);
int dsv4_lin_fmm_ok(const lin_args *a);
/* Whether FMM was measured faster than the MMA kernel on a call it takes (linear_fp8mma.cu). */
int dsv4_lin_fmm_wins(const lin_args *a);
dsv4_status dsv4_lin_launch_fmm(const lin_args *a, cudaStream_t st);
/* F8W (linear_f8w.cu): FP8 on e4m3 wgmma from a shared-memory ring, x quantised per call into
 * ws, the workspace of the launch's stream (dsv4_cuda_f8w_ws). */
int dsv4_lin_f8w_ok(const lin_args *a);
dsv4_status dsv4_lin_launch_f8w(const lin_args *a, void *ws, cudaStream_t st);
/* MMX (linear_fp8mma.cu): dsv4_bk_linear_multi's entries as one tensor-core launch, FP8 and BF16
 * weights, N <= 64, every entry the same N; *_ok: whether an entry can join. force_ks > 0: that
 * K split (1..8), else the planner's; *ks: the split taken. */
int dsv4_lin_mmx_ok(const lin_args *a);
dsv4_status dsv4_lin_launch_mmx(const lin_args *as, int n, int force_ks, cudaStream_t st, int *ks);

#endif
