/*
 * linear_tiled.cu - the projection kernels for many rows of x (prefill chunks, routed experts):
 * each decoded weight tile serves a tile of up to 64 rows of x. Dispatched by bk_linear.cu.
 *
 *   MMA   FP8, MXFP4, NVFP4, BF16: weights decoded to bf16 in shared memory, which is exact for
 *         these formats (e4m3 and e2m1 values, e2m1 * e4m3 NVFP4 products, bf16 itself); x,
 *         any f32, is split as hi = bf16(x), lo = bf16(x - hi) and both halves are multiplied
 *         (mma.sync m16n8k16, f32 accumulation), so each product is x * w to within
 *         |x - hi - lo| |w| <= 2^-18 |x w| (below). Block scales that are not folded into the bf16
 * value (FP8: per 128 x 128 block, MXFP4: per 32 columns) multiply the f32 sum of their group, as
 * the official fp8_gemm promotes. SIMT  any format: elements decoded to f32 (lin_wval), 64 x 64 f32
 * tiles with 4 x 4 outputs per thread. Used for F16/F32 weights (not exact in bf16) and odd widths.
 *
 * Error of the split: hi is x rounded to 8 significant bits, |x - hi| <= 2^-9 |x|; lo is that
 * remainder rounded to 8 bits, so |x - hi - lo| <= 2^-9 |x - hi| <= 2^-18 |x|.
 *
 * Split K without atomics: when the output tiles alone do not fill the GPU, KS CTAs (one
 * thread-block cluster, KS <= 8) each sum a slice of K into their shared memory; then each CTA
 * adds up 1/KS of the tile over the cluster's ranks in rank order (distributed shared memory,
 * lin_cluster_store) and writes it. The order depends only on the shape, so results are
 * reproducible. Grouped projections (dsv4_bk_linear_grouped) stack the groups' token tiles
 * along the grid's y.
 */
#include "backend/cuda/linear_common.cuh"

#include <string.h>

static dsv4_status launch_cluster(void (*kernel)(lin_args, int), dim3 grid, int ks,
                                  const lin_args *a, int tps, cudaStream_t st)
{
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = lin_cluster_cfg(grid, 256, 0, ks, st, &attr);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, kernel, *a, tps));
    return DSV4_OK;
}

/* ---- MMA ------------------------------------------------------------------------------------
 * CTA tile: 64 rows of x (tokens) x 128 weight rows, K in steps of 32. 8 warps as 2 (tokens) x
 * 4 (weight rows), each 32 x 32 = 2 x 4 m16n8 fragments. Shared rows are 32 bf16 + 8 padding
 * (20 words: the fragment reads of a warp hit 32 distinct banks). Two stages: the next tile's
 * global loads are issued before the current tile's MMAs and stored after them.
 *
 * Limits (H100, test_gpu_linear graph replay, N = 64, FP8): far from both the bandwidth and the
 * tensor-core limits: Flash wq_b 32 MB 65 us (ncu), wo_b 97.6 us, wo_a 98.9 us (11-17% of copy
 * bandwidth; cuBLASLt block-scaled FP8: wo_b 20 us), wq_a 4 MB 28 us (ncu, 5%). A CTA spends 1.5 us
 * per 32-column tile alone on the GPU, 2-4.6 us with 256 in flight. Tried in session 4 without gain
 * (each within -5% .. +10% of this kernel or worse): two K tiles per stage (84 KB of dynamic shared
 * memory), cp.async.bulk L2 prefetch of the weight rows 8 tiles ahead, skipping the lo MMAs of
 * bf16-valued x, a per-CTA rotation of the K order (against all CTAs reading the same x tile at
 * once), one kernel per weight format. The kernel sits at the 128-register cap of two CTAs per SM;
 * every variant that spilled (100+ bytes) was 1.5x slower. The way on is structural: the weights as
 * the 16-row operand straight from global memory into registers (as linear_mmv.cu does), x
 * converted to bf16 hi/lo once per call rather than per CTA and tile, far fewer instructions per
 * weight byte. */
enum { TM_BM = 64, TM_BN = 128, TM_BK = 32, TM_LDS = 40, TM_THREADS = 256 };

typedef union mma_smem {
    struct {
        uint16_t a[2][2][TM_BM][TM_LDS]; /* [stage][hi, lo] x tile, bf16 bits */
        uint16_t b[2][TM_BN][TM_LDS];    /* [stage] weight tile [row][k], bf16 bits */
        float sc[2][TM_BN];              /* [stage] scale of the tile's group, per weight row */
    } t;
    float part[TM_BM * TM_BN]; /* after the K loop: this CTA's partial tile */
} mma_smem;

/* What one thread carries from a tile's global loads to its shared-memory stores. */
typedef struct mma_regs {
    uint4 w[2];  /* raw weight chunks */
    float ws[2]; /* FP8/MXFP4: the group scale; NVFP4: the two e4m3 scales */
    float x[8];  /* x elements */
} mma_regs;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* Weight chunk assignment (which row n of the tile and which bytes of the tile's K range):
 * FP8  32 bytes a row: thread t -> row t/2, bytes 16 (t%2) ..
 * BF16 64 bytes a row: chunk t and t + 256 -> row c/4, bf16 columns 8 (c%4) ..
 * FP4  16 bytes a row: thread t < 128 -> row t. */
__device__ __forceinline__ void mma_load(const lin_args &a, int64_t n0, int64_t m0, int kt,
                                         mma_regs *r)
{
    const int tid = threadIdx.x;
    r->w[0] = r->w[1] = make_uint4(0u, 0u, 0u, 0u);
    r->ws[0] = r->ws[1] = 0.0f;
    switch (a.fmt) {
    case DSV4_FORMAT_FP8: {
        const int64_t n = n0 + (tid >> 1), row = a.row0 + n;
        if (n < a.nrows) {
            r->w[0] = __ldcs((const uint4 *)(const void *)(a.data + row * a.row_bytes +
                                                           (int64_t)kt * 32 + (tid & 1) * 16));
            r->ws[0] = lin_scale(a, row / 128, (int64_t)kt * 32 / 128);
        }
        break;
    }
    case DSV4_FORMAT_BF16:
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int c = tid + 256 * q;
            const int64_t n = n0 + (c >> 2), row = a.row0 + n;
            if (n < a.nrows)
                r->w[q] =
                    __ldcs((const uint4 *)(const void *)(a.data + row * a.row_bytes +
                                                         ((int64_t)kt * 32 + (c & 3) * 8) * 2));
        }
        break;
    default: { /* MXFP4, NVFP4 */
        const int64_t n = n0 + tid, row = a.row0 + n;
        if (tid < TM_BN && n < a.nrows) {
            r->w[0] = __ldcs(
                (const uint4 *)(const void *)(a.data + row * a.row_bytes + (int64_t)kt * 16));
            if (a.fmt == DSV4_FORMAT_MXFP4) {
                r->ws[0] = lin_scale(a, row, kt);
            } else {
                r->ws[0] = lin_scale(a, row, 2 * (int64_t)kt);
                r->ws[1] = lin_scale(a, row, 2 * (int64_t)kt + 1);
            }
        }
        break;
    }
    }
    /* x: column tid % 32 of the tile, tokens tid / 32 + 8 q (coalesced rows) */
    const int64_t mb = m0 + (tid >> 5);
    const float *xp = a.x + mb * a.ldx + (int64_t)kt * TM_BK + (tid & 31);
#pragma unroll
    for (int q = 0; q < 8; q++) {
        r->x[q] = mb + 8 * q < a.N ? __ldg(xp) : 0.0f;
        xp += 8 * a.ldx;
    }
}

/* Decodes the carried chunks to bf16 and stores them (and x hi/lo) into stage s. */
__device__ __forceinline__ void mma_store(const lin_args &a, mma_smem *sm, int s, const mma_regs *r)
{
    const int tid = threadIdx.x;
    switch (a.fmt) {
    case DSV4_FORMAT_FP8: {
        const int n = tid >> 1, h = tid & 1;
        const uint32_t q[4] = {r->w[0].x, r->w[0].y, r->w[0].z, r->w[0].w};
        uint32_t o[8];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float2 f0 = lin_fp8x2(q[k]), f1 = lin_fp8x2(q[k] >> 16);
            o[2 * k] = pack_bf16(f0.x, f0.y);
            o[2 * k + 1] = pack_bf16(f1.x, f1.y);
        }
        uint4 *dst = (uint4 *)(void *)&sm->t.b[s][n][h * 16];
        dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
        dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
        if (h == 0) sm->t.sc[s][n] = r->ws[0];
        break;
    }
    case DSV4_FORMAT_BF16:
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int c = tid + 256 * q;
            *(uint4 *)(void *)&sm->t.b[s][c >> 2][(c & 3) * 8] = r->w[q];
            if ((c & 3) == 0) sm->t.sc[s][c >> 2] = 1.0f;
        }
        break;
    default: { /* FP4: e2m1 * 2^-14 from the decoder, times 2^14 (MXFP4; its scale is applied
                * per group) or times 2^14 * the e4m3 scale (NVFP4, exact in bf16) */
        if (tid >= TM_BN) break;
        const int mx = a.fmt == DSV4_FORMAT_MXFP4;
        const float mul0 = mx ? 16384.0f : r->ws[0] * 16384.0f;
        const float mul1 = mx ? 16384.0f : r->ws[1] * 16384.0f;
        const uint32_t q[4] = {r->w[0].x, r->w[0].y, r->w[0].z, r->w[0].w};
        uint32_t o[16];
#pragma unroll
        for (int k = 0; k < 4; k++)
#pragma unroll
            for (int bb = 0; bb < 4; bb++) {
                const float mul = k < 2 ? mul0 : mul1; /* bytes 0-7: columns 0-15 */
                const float2 f = lin_fp4x2((q[k] >> (8 * bb)) & 0xffu);
                o[4 * k + bb] = pack_bf16(f.x * mul, f.y * mul);
            }
        uint4 *dst = (uint4 *)(void *)&sm->t.b[s][tid][0];
#pragma unroll
        for (int k = 0; k < 4; k++)
            dst[k] = make_uint4(o[4 * k], o[4 * k + 1], o[4 * k + 2], o[4 * k + 3]);
        sm->t.sc[s][tid] = mx ? r->ws[0] : 1.0f;
        break;
    }
    }
#pragma unroll
    for (int q = 0; q < 8; q++) {
        const int m = (tid >> 5) + 8 * q, k = tid & 31;
        const __nv_bfloat16 hi = __float2bfloat16_rn(r->x[q]);
        const __nv_bfloat16 lo = __float2bfloat16_rn(r->x[q] - __bfloat162float(hi));
        sm->t.a[s][0][m][k] = __bfloat16_as_ushort(hi);
        sm->t.a[s][1][m][k] = __bfloat16_as_ushort(lo);
    }
}

/* The warp's 32 x 32 block of stage s: two k16 steps, each 2 x 4 fragments, hi and lo. Fragment
 * layouts (PTX m16n8k16, g = lane / 4, t = lane % 4): a0 (row g, k 2t..2t+1), a1 (g + 8, 2t),
 * a2 (g, 2t + 8), a3 (g + 8, 2t + 8); b0 (k 2t, n g), b1 (k 2t + 8, n g). */
__device__ __forceinline__ void mma_tile(const mma_smem *sm, int s, int wm, int wn, int g, int t,
                                         float (*tmp)[4][4])
{
    const uint32_t *ah = (const uint32_t *)(const void *)&sm->t.a[s][0][0][0];
    const uint32_t *al = (const uint32_t *)(const void *)&sm->t.a[s][1][0][0];
    const uint32_t *bw = (const uint32_t *)(const void *)&sm->t.b[s][0][0];
    const int LW = TM_LDS / 2; /* words per shared row */
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
        uint32_t fb[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const int r0 = (wn * 32 + nt * 8 + g) * LW + ks * 8 + t;
            fb[nt][0] = bw[r0], fb[nt][1] = bw[r0 + 4];
        }
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            const int r0 = (wm * 32 + mt * 16 + g) * LW + ks * 8 + t, r1 = r0 + 8 * LW;
            const uint32_t fh[4] = {ah[r0], ah[r1], ah[r0 + 4], ah[r1 + 4]};
            const uint32_t fl[4] = {al[r0], al[r1], al[r0 + 4], al[r1 + 4]};
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                lin_mma_bf16(tmp[mt][nt], fl, fb[nt]);
                lin_mma_bf16(tmp[mt][nt], fh, fb[nt]);
            }
        }
    }
}

// x [N, cols] (ldx), W rows row0 + [0, nrows) -> y [N, nrows] (ldy), per group; grid
// (ceil(nrows/128), ceil(N/64) * groups, KS) in clusters of (1, 1, KS); K tiles [z tps, (z+1) tps)
// per CTA.
__global__ void __launch_bounds__(TM_THREADS, 2) mma_kernel(lin_args a, int tps)
{
    DSV4_PDL_WAIT();
    __shared__ __align__(16) mma_smem sm;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3, wm = warp >> 2, wn = warp & 3;
    const int64_t gy = (a.N + TM_BM - 1) / TM_BM;
    lin_at_group(a, (int64_t)blockIdx.y / gy);
    const int64_t n0 = (int64_t)blockIdx.x * TM_BN, m0 = ((int64_t)blockIdx.y % gy) * TM_BM;
    const int ktiles = (int)(a.cols / TM_BK);
    const int kt0 = (int)blockIdx.z * tps, kt1 = min(kt0 + tps, ktiles);
    /* K tiles per scale group: MXFP4 32 columns; FP8 128 (BF16, NVFP4: scale 1, same cadence) */
    const int gtiles = a.fmt == DSV4_FORMAT_MXFP4 ? 1 : 4;

    float acc[2][4][4], tmp[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[mt][nt][j] = tmp[mt][nt][j] = 0.0f;

    if (kt0 < kt1) {
        mma_regs r;
        mma_load(a, n0, m0, kt0, &r);
        mma_store(a, &sm, 0, &r);
        __syncthreads();
        for (int kt = kt0; kt < kt1; kt++) {
            const int s = (kt - kt0) & 1;
            const bool more = kt + 1 < kt1;
            if (more) mma_load(a, n0, m0, kt + 1, &r);
            mma_tile(&sm, s, wm, wn, g, t, tmp);
            if ((kt + 1) % gtiles == 0 || kt + 1 == kt1) {
                /* the group ends: acc += its sum times its scale (C fragment: c0, c1 at row g,
                 * columns 2t, 2t+1; c2, c3 at row g + 8) */
#pragma unroll
                for (int nt = 0; nt < 4; nt++)
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        const float sc = sm.t.sc[s][wn * 32 + nt * 8 + 2 * t + j];
#pragma unroll
                        for (int mt = 0; mt < 2; mt++) {
                            acc[mt][nt][j] = fmaf(tmp[mt][nt][j], sc, acc[mt][nt][j]);
                            acc[mt][nt][j + 2] = fmaf(tmp[mt][nt][j + 2], sc, acc[mt][nt][j + 2]);
                            tmp[mt][nt][j] = tmp[mt][nt][j + 2] = 0.0f;
                        }
                    }
            }
            if (more) mma_store(a, &sm, s ^ 1, &r);
            __syncthreads();
        }
    }
    /* the partial tile into shared memory (the loop's last barrier freed the stages) */
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const int m = wm * 32 + mt * 16 + g, n = wn * 32 + nt * 8 + 2 * t;
            sm.part[m * TM_BN + n] = acc[mt][nt][0];
            sm.part[m * TM_BN + n + 1] = acc[mt][nt][1];
            sm.part[(m + 8) * TM_BN + n] = acc[mt][nt][2];
            sm.part[(m + 8) * TM_BN + n + 1] = acc[mt][nt][3];
        }
    lin_cluster_store(a, sm.part, TM_BM, TM_BN, m0, n0);
}

int dsv4_lin_mma_ok(const lin_args *a)
{
    const int fmt_ok = a->fmt == DSV4_FORMAT_FP8 || a->fmt == DSV4_FORMAT_MXFP4 ||
                       a->fmt == DSV4_FORMAT_NVFP4 || a->fmt == DSV4_FORMAT_BF16;
    return fmt_ok && a->cols % TM_BK == 0 && (uintptr_t)a->data % 16 == 0;
}

dsv4_status dsv4_lin_launch_mma(const lin_args *a, cudaStream_t st)
{
    const int64_t gx = (a->nrows + TM_BN - 1) / TM_BN, gy = (a->N + TM_BM - 1) / TM_BM * a->groups;
    const int ktiles = (int)(a->cols / TM_BK);
    /* split K while the tiles do not cover the SMs, slices of whole 128-column groups */
    int ks = 1;
    while (ks < 8 && gx * gy * ks < LIN_SMS && ktiles >= 8 * ks) ks *= 2;
    int tps = (ktiles + ks - 1) / ks;
    tps = (tps + 3) / 4 * 4;
    return launch_cluster(mma_kernel, dim3((unsigned)gx, (unsigned)gy, (unsigned)ks), ks, a, tps,
                          st);
}

/* ---- SIMT -----------------------------------------------------------------------------------
 * CTA tile 64 tokens x 64 weight rows, K in steps of 16, both operands as f32 [k][row] in
 * shared memory; thread (ty, tx) = (t / 16, t % 16) owns tokens 4ty.. and weight rows 4tx... */
enum { TS_BM = 64, TS_BN = 64, TS_BK = 16 };

typedef union simt_smem {
    struct {
        float x[TS_BK][TS_BM + 4];
        float w[TS_BK][TS_BN + 4];
    } t;
    float part[TS_BM * TS_BN];
} simt_smem;

// x [N, cols] (ldx), W rows row0 + [0, nrows) -> y [N, nrows] (ldy), per group; grid
// (ceil(nrows/64), ceil(N/64) * groups, KS) in clusters of (1, 1, KS); K tiles [z tps, (z+1) tps)
// per CTA.
__global__ void __launch_bounds__(256) simt_kernel(lin_args a, int tps)
{
    DSV4_PDL_WAIT();
    __shared__ __align__(16) simt_smem sm;
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const int64_t gy = (a.N + TS_BM - 1) / TS_BM;
    lin_at_group(a, (int64_t)blockIdx.y / gy);
    const int64_t n0 = (int64_t)blockIdx.x * TS_BN, m0 = ((int64_t)blockIdx.y % gy) * TS_BM;
    const int ktiles = (int)((a.cols + TS_BK - 1) / TS_BK);
    const int kt0 = (int)blockIdx.z * tps, kt1 = min(kt0 + tps, ktiles);
    const int kk = tid & 15, rr = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int kt = kt0; kt < kt1; kt++) {
        const int64_t k = (int64_t)kt * TS_BK + kk;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int64_t m = m0 + rr + 16 * q, n = n0 + rr + 16 * q;
            sm.t.x[kk][rr + 16 * q] = m < a.N && k < a.cols ? __ldg(a.x + m * a.ldx + k) : 0.0f;
            sm.t.w[kk][rr + 16 * q] = n < a.nrows && k < a.cols ? lin_wval(a, a.row0 + n, k) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k2 = 0; k2 < TS_BK; k2++) {
            const float4 xa = *(const float4 *)(const void *)&sm.t.x[k2][ty * 4];
            const float4 wb = *(const float4 *)(const void *)&sm.t.w[k2][tx * 4];
            const float xv[4] = {xa.x, xa.y, xa.z, xa.w}, wv[4] = {wb.x, wb.y, wb.z, wb.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(xv[i], wv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) sm.part[(ty * 4 + i) * TS_BN + tx * 4 + j] = acc[i][j];
    lin_cluster_store(a, sm.part, TS_BM, TS_BN, m0, n0);
}

dsv4_status dsv4_lin_launch_simt(const lin_args *a, cudaStream_t st)
{
    const int64_t gx = (a->nrows + TS_BN - 1) / TS_BN, gy = (a->N + TS_BM - 1) / TS_BM * a->groups;
    const int ktiles = (int)((a->cols + TS_BK - 1) / TS_BK);
    int ks = 1;
    while (ks < 8 && gx * gy * ks < LIN_SMS && ktiles >= 8 * ks) ks *= 2;
    const int tps = (ktiles + ks - 1) / ks;
    return launch_cluster(simt_kernel, dim3((unsigned)gx, (unsigned)gy, (unsigned)ks), ks, a, tps,
                          st);
}
