/*
 * moe_gemm.cu - the grouped expert projections of dsv4_bk_moe on CUDA (sm_90a). One persistent
 * kernel per stage (moe.cuh moe_gemm_args) runs the rows of every active expert, reading the
 * device work list, so the host never learns which experts were chosen.
 *
 * Shape: a work item is (active expert, tile of rb batches of rg * RPW output rows). A CTA is
 * kw x rg warps; warp (kw, rg) owns input columns [1024 kw, 1024 kw + 1024), 32 per lane (one
 * 16-byte FP4 load, one MXFP4 scale group), of RPW rows of each batch (w1 and w3 side by side in
 * stage 1). The expert's tokens are taken TT at a time ("a pass") with their input slice in
 * registers while the weights of all rb batches stream past, then one barrier and one epilogue:
 * built for decode, where an expert sees one token (N = 1) or about two (N = 64) and the kernel
 * should be bound by weight bytes; with more tokens an item loops over passes, re-reading its
 * weight tile from L1/L2. The host picks rb so that there are about two items per resident CTA.
 * FP4 nibbles and FP8 bytes are widened with integer ops into f16 bit patterns (exponent
 * and mantissa fields land in place; the constant factor 2^-14 / 2^-8 is folded into the
 * scale), then to f32.
 *
 * Numerics: a decoded weight times an act_quant'ed input is exact in f32 (at most 8 x 4
 * significant bits), lanes sum their 32 columns with FMAs, power-of-two scales multiply the
 * lane's partial (exact), the warp sums by a shuffle tree and the kw warps in ascending order.
 * So the result differs from the CPU's only in f32 summation order; then bf16 as there. (The
 * SwiGLU's expf is exp in double rounded once: glibc's expf differs from that by 1 ulp on ~0.06%
 * of inputs.)
 */
#include "backend/cuda/check.cuh"
#include "backend/cuda/moe.cuh"
#include "backend/cuda/pdl.cuh"
#include "core/float_formats.h"

#include <cuda_fp16.h>

enum { TT = 2 }; /* tokens per pass */

__device__ __forceinline__ float dev_bf16(float x)
{
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(u | 0x00400000u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}

/* ops_moe.c dsv4_op_swiglu_clamped on one element; expf as exp in double rounded once (glibc's
 * expf is correctly rounded but for rare halfway cases). */
__device__ __forceinline__ float dev_swiglu(float g, float u, float limit)
{
    const float a = g > limit ? limit : g;
    const float b = u > limit ? limit : u < -limit ? -limit : u;
    const float e = (float)exp(-(double)a);
    return __fmul_rn(__fdiv_rn(a, __fadd_rn(1.0f, e)), b);
}

__device__ __forceinline__ float2 half2_bits(uint32_t h)
{
    __half2 v;
    memcpy(&v, &h, 4);
    return __half22float2(v);
}

/* w: 8 e2m1 nibbles, nibble n = column n -> v[n] = e2m1 * 2^-14, exact: the nibble's 3 magnitude
 * bits go to f16 bits 9..11 (exponent 0..3, top mantissa bit), its sign to bit 15; nibbles n and
 * n + 4 share one f16x2. */
__device__ __forceinline__ void fp4x8(uint32_t w, float (&v)[8])
{
    const uint32_t M = 0x0E000E00u, S = 0x80008000u;
    float2 p = half2_bits(((w << 9) & M) | ((w << 12) & S));
    v[0] = p.x, v[4] = p.y;
    p = half2_bits(((w << 5) & M) | ((w << 8) & S));
    v[1] = p.x, v[5] = p.y;
    p = half2_bits(((w << 1) & M) | ((w << 4) & S));
    v[2] = p.x, v[6] = p.y;
    p = half2_bits(((w >> 3) & M) | (w & S));
    v[3] = p.x, v[7] = p.y;
}

/* w: 4 e4m3 bytes, byte n = column n -> v[n] = e4m3 * 2^-8, exact (e4m3's exponent and mantissa
 * fields become f16 bits 7..13, the sign bit 15; the NaN code is not kept). */
__device__ __forceinline__ void fp8x4(uint32_t w, float (&v)[4])
{
    const uint32_t M = 0x3F803F80u, S = 0x80008000u;
    float2 p = half2_bits(((w << 7) & M) | ((w << 8) & S));
    v[0] = p.x, v[2] = p.y;
    p = half2_bits(((w >> 1) & M) | (w & S));
    v[1] = p.x, v[3] = p.y;
}

__device__ __forceinline__ uint32_t word(const uint4 &q, int k)
{
    return k == 0 ? q.x : k == 1 ? q.y : k == 2 ? q.z : q.w;
}

/* ---- per-format dot products of one lane's 32 columns with TT tokens ----------------------
 * x [TT][32] (the lane's input columns), rows row0 .. row0 + nv - 1 of each of the NM matrices
 * -> part [RPW][NM][TT] (the lane's partial sums). Loads first, then arithmetic. */
template <int NM, int RPW>
__device__ __forceinline__ void dot_fp4(const moe_mat (&w)[NM], int64_t row0, int nv, int64_t col,
                                        const float (&x)[TT][32], float (&part)[RPW][NM][TT])
{
    uint4 q[RPW][NM];
    uint32_t sb[RPW][NM];
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int m = 0; m < NM; m++) {
            q[r][m] = make_uint4(0, 0, 0, 0);
            sb[r][m] = 0;
            if (r < nv) {
                const int64_t row = row0 + r;
                q[r][m] = __ldg((const uint4 *)moe_data_at(w[m], row, col));
                const uint8_t *s = w[m].scale + row * w[m].scale_cols;
                if (w[m].fmt == MOE_MXFP4)
                    sb[r][m] = __ldg(moe_scale_at(w[m], row, col));
                else /* NVFP4: never tiled */
                    sb[r][m] = __ldg(s + (col >> 4)) | ((uint32_t)__ldg(s + (col >> 4) + 1) << 8);
            }
        }
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int m = 0; m < NM; m++) {
            if (r >= nv) continue;
            float s[TT];
#pragma unroll
            for (int t = 0; t < TT; t++) s[t] = 0.0f;
            if (w[m].fmt == MOE_MXFP4) {
                /* one ue8m0 scale for the 32 columns: applied to the partial, exactly */
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float v[8];
                    fp4x8(word(q[r][m], k), v);
#pragma unroll
                    for (int n = 0; n < 8; n++)
#pragma unroll
                        for (int t = 0; t < TT; t++) s[t] = fmaf(v[n], x[t][8 * k + n], s[t]);
                }
                const float sc = dsv4_e8m0_to_f32((uint8_t)sb[r][m]);
#pragma unroll
                for (int t = 0; t < TT; t++)
                    part[r][m][t] = __fmul_rn(__fmul_rn(s[t], 16384.0f), sc);
            } else {
                /* NVFP4: e4m3 scales per 16 columns, multiplied into each weight as the CPU does
                 * (e2m1 * e4m3 is exact); weight_scale_2 comes in the epilogue */
                const float f0 = __fmul_rn(dsv4_e4m3_to_f32((uint8_t)(sb[r][m] & 0xff)), 16384.0f);
                const float f1 = __fmul_rn(dsv4_e4m3_to_f32((uint8_t)(sb[r][m] >> 8)), 16384.0f);
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float v[8];
                    fp4x8(word(q[r][m], k), v);
#pragma unroll
                    for (int n = 0; n < 8; n++) {
                        const float wv = __fmul_rn(v[n], k < 2 ? f0 : f1);
#pragma unroll
                        for (int t = 0; t < TT; t++) s[t] = fmaf(wv, x[t][8 * k + n], s[t]);
                    }
                }
#pragma unroll
                for (int t = 0; t < TT; t++) part[r][m][t] = s[t];
            }
        }
}

template <int NM, int RPW>
__device__ __forceinline__ void dot_fp8(const moe_mat (&w)[NM], int64_t row0, int nv, int64_t col,
                                        const float (&x)[TT][32], float (&part)[RPW][NM][TT])
{
#pragma unroll
    for (int m = 0; m < NM; m++) { /* one matrix at a time: 32 bytes a row */
        uint4 q[RPW][2];
        float sc[RPW];
        const int f32s = w[m].scale_f32;
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            q[r][0] = q[r][1] = make_uint4(0, 0, 0, 0);
            sc[r] = 0.0f;
            if (r < nv) {
                const int64_t row = row0 + r;
                const uint4 *p = (const uint4 *)moe_data_at(w[m], row, col);
                q[r][0] = __ldg(p);
                q[r][1] = __ldg(p + 1);
                const int64_t si = (row >> 7) * w[m].scale_cols + (col >> 7);
                sc[r] = f32s ? __ldg((const float *)w[m].scale + si)
                             : dsv4_e8m0_to_f32(__ldg(w[m].scale + si));
            }
        }
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            if (r >= nv) continue;
            float s[TT];
#pragma unroll
            for (int t = 0; t < TT; t++) s[t] = 0.0f;
                /* ue8m0: the block scale multiplies the partial (exact); f32: each weight, as the
                 * CPU decodes e4m3 * scale (v * 256 is the e4m3 value) */
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float v[4];
                fp8x4(word(q[r][k >> 2], k & 3), v);
#pragma unroll
                for (int n = 0; n < 4; n++) {
                    const float wv = f32s ? __fmul_rn(__fmul_rn(v[n], 256.0f), sc[r]) : v[n];
#pragma unroll
                    for (int t = 0; t < TT; t++) s[t] = fmaf(wv, x[t][4 * k + n], s[t]);
                }
            }
#pragma unroll
            for (int t = 0; t < TT; t++)
                part[r][m][t] = f32s ? s[t] : __fmul_rn(__fmul_rn(s[t], 256.0f), sc[r]);
        }
    }
}

template <int NM, int RPW>
__device__ __forceinline__ void dot_bf16(const moe_mat (&w)[NM], int64_t row0, int nv, int64_t col,
                                         const float (&x)[TT][32], float (&part)[RPW][NM][TT])
{
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int m = 0; m < NM; m++) {
            if (r >= nv) continue;
            const uint4 *p = (const uint4 *)(w[m].data + ((row0 + r) * w[m].cols + col) * 2);
            uint4 q[4];
#pragma unroll
            for (int i = 0; i < 4; i++) q[i] = __ldg(p + i);
            float s[TT];
#pragma unroll
            for (int t = 0; t < TT; t++) s[t] = 0.0f;
#pragma unroll
            for (int k = 0; k < 16; k++) {
                const uint32_t u = word(q[k >> 2], k & 3);
                const float v0 = __uint_as_float(u << 16), v1 = __uint_as_float(u & 0xffff0000u);
#pragma unroll
                for (int t = 0; t < TT; t++) {
                    s[t] = fmaf(v0, x[t][2 * k], s[t]);
                    s[t] = fmaf(v1, x[t][2 * k + 1], s[t]);
                }
            }
#pragma unroll
            for (int t = 0; t < TT; t++) part[r][m][t] = s[t];
        }
}

/* F32 and F16 experts (transformers-layout checkpoints saved in those dtypes): the lane's 32
 * columns are 128 or 64 bytes of one row. */
template <int NM, int RPW>
__device__ __forceinline__ void dot_wide(const moe_mat (&w)[NM], int64_t row0, int nv, int64_t col,
                                         const float (&x)[TT][32], float (&part)[RPW][NM][TT])
{
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int m = 0; m < NM; m++) {
            if (r >= nv) continue;
            const int64_t e0 = (row0 + r) * w[m].cols + col;
            float s[TT];
#pragma unroll
            for (int t = 0; t < TT; t++) s[t] = 0.0f;
            for (int k = 0; k < 32; k++) {
                const float v = w[m].fmt == MOE_F32
                                    ? __ldg((const float *)w[m].data + e0 + k)
                                    : __half2float(__ldg((const __half *)w[m].data + e0 + k));
#pragma unroll
                for (int t = 0; t < TT; t++) s[t] = fmaf(v, x[t][k], s[t]);
            }
#pragma unroll
            for (int t = 0; t < TT; t++) part[r][m][t] = s[t];
        }
}

/* ---- the stage kernel ---------------------------------------------------------------------
 * NM = 2: stage 1 (w1 and w3 of each row, fused SwiGLU * weight epilogue); NM = 1: stage 2.
 * x [*, ldx] -> out [*, ldo], rows of pairs as moe.cuh describes. An item is a.rb batches of
 * rg * RPW rows: the tokens' inputs are loaded once per pass and every batch of the item is run
 * on them before the one barrier and epilogue of the pass. */
template <int NM>
__global__ void __launch_bounds__(MOE_MAX_WARPS * 32) moe_gemm_kernel(const moe_gemm_args a)
{
    DSV4_PDL_WAIT();
    constexpr int RPW = NM == 2 ? MOE_RPW1 : MOE_RPW2;
    /* [batch][warp][row][matrix][token] */
    __shared__ float red[MOE_MAX_RB * MOE_MAX_WARPS * RPW * NM * TT];
    __shared__ int64_t s_pair[TT];
    __shared__ float s_wt[TT];
    const int KW = a.kw, NW = a.kw * a.rg, RB = a.rb, BR = a.rg * RPW, RT = BR * RB;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kw = warp % KW, rg = warp / KW;
    const int64_t NK = a.N * a.K;
    const int n_active = *a.list.n_active;
    const int total = (n_active + 1) * a.tiles;

    for (int item = blockIdx.x; item < total; item += gridDim.x) {
        const int ai = item / a.tiles, tile = item - ai * a.tiles;
        int e = a.E, ntok = (int)a.N, off = 0;
        if (ai > 0) {
            e = a.list.active[ai - 1];
            ntok = a.list.cnt[ai - 1];
            off = a.list.off[ai - 1];
        }
        moe_mat w[NM];
        if constexpr (NM == 2) {
            w[0] = a.table[e].w1;
            w[1] = a.table[e].w3;
        } else {
            w[0] = a.table[e].w2;
        }
        const int64_t rows = w[0].rows, cols = w[0].cols, row0 = (int64_t)tile * RT;
        if (row0 >= rows) continue; /* the whole CTA: item is uniform */
        const int64_t col = (int64_t)kw * MOE_WARP_COLS + lane * MOE_LANE_COLS;

        for (int t0 = 0; t0 < ntok; t0 += TT) {
            /* the TT tokens: pair ids (and routing weights) for the epilogue, input columns of
             * this lane in registers */
            if (threadIdx.x < TT) {
                const int tok = t0 + threadIdx.x;
                int64_t pair = -1;
                float wt = 1.0f;
                if (tok < ntok) {
                    pair = ai == 0 ? NK + tok : a.list.pairs[off + tok];
                    if (NM == 2 && ai > 0) wt = a.wts[pair];
                }
                s_pair[threadIdx.x] = pair;
                s_wt[threadIdx.x] = wt;
            }
            float x[TT][32];
#pragma unroll
            for (int t = 0; t < TT; t++) {
                const int tok = t0 + t;
                if (tok < ntok && col < cols) {
                    const int64_t pair = ai == 0 ? NK + tok : a.list.pairs[off + tok];
                    const int64_t in = NM == 2 ? (ai == 0 ? tok : pair / a.K) : pair;
                    const float4 *src = (const float4 *)(a.x + in * a.ldx + col);
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        const float4 f = __ldg(src + i);
                        x[t][4 * i] = f.x, x[t][4 * i + 1] = f.y;
                        x[t][4 * i + 2] = f.z, x[t][4 * i + 3] = f.w;
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < 32; i++) x[t][i] = 0.0f;
                }
            }

            for (int b = 0; b < RB; b++) {
                const int64_t wrow0 = row0 + (int64_t)b * BR + rg * RPW;
                int nv = col < cols ? (int)(rows - wrow0 < RPW ? rows - wrow0 : RPW) : 0;
                if (nv < 0) nv = 0;
                float part[RPW][NM][TT];
#pragma unroll
                for (int r = 0; r < RPW; r++)
#pragma unroll
                    for (int m = 0; m < NM; m++)
#pragma unroll
                        for (int t = 0; t < TT; t++) part[r][m][t] = 0.0f;
                if (nv > 0) {
                    const int fmt = w[0].fmt;
                    if (fmt == MOE_MXFP4 || fmt == MOE_NVFP4)
                        dot_fp4<NM, RPW>(w, wrow0, nv, col, x, part);
                    else if (fmt == MOE_FP8)
                        dot_fp8<NM, RPW>(w, wrow0, nv, col, x, part);
                    else if (fmt == MOE_BF16)
                        dot_bf16<NM, RPW>(w, wrow0, nv, col, x, part);
                    else
                        dot_wide<NM, RPW>(w, wrow0, nv, col, x, part);
                }
                /* warp sums (a fixed shuffle tree), lane 0 keeps them for the cross-warp sum */
#pragma unroll
                for (int r = 0; r < RPW; r++)
#pragma unroll
                    for (int m = 0; m < NM; m++)
#pragma unroll
                        for (int t = 0; t < TT; t++) {
                            float v = part[r][m][t];
#pragma unroll
                            for (int d = 16; d > 0; d >>= 1)
                                v += __shfl_xor_sync(0xffffffffu, v, d);
                            if (lane == 0) red[(((b * NW + warp) * RPW + r) * NM + m) * TT + t] = v;
                        }
            }
            __syncthreads();

            /* epilogue: thread (row, token) sums the kw warps in ascending order */
            for (int idx = threadIdx.x; idx < RT * TT; idx += blockDim.x) {
                const int rl = idx % RT, t = idx / RT, tok = t0 + t;
                const int64_t row = row0 + rl;
                if (row >= rows || tok >= ntok) continue;
                const int b = rl / BR, rgi = (rl % BR) / RPW, r = rl % RPW;
                float s[NM];
#pragma unroll
                for (int m = 0; m < NM; m++) {
                    s[m] = 0.0f;
                    for (int k = 0; k < KW; k++)
                        s[m] = __fadd_rn(
                            s[m], red[(((b * NW + rgi * KW + k) * RPW + r) * NM + m) * TT + t]);
                    s[m] = dev_bf16(__fmul_rn(s[m], w[m].out_scale));
                }
                const int64_t pair = s_pair[t];
                float v;
                if constexpr (NM == 2) {
                    v = dev_swiglu(s[0], s[1], a.limit);
                    if (ai > 0) v = __fmul_rn(v, s_wt[t]);
                } else {
                    v = s[0];
                }
                a.out[pair * a.ldo + row] = v;
            }
            __syncthreads();
        }
    }
}

void moe_gemm_shape(int64_t cols, int *kw, int *rg)
{
    *kw = (int)((cols + MOE_WARP_COLS - 1) / MOE_WARP_COLS);
    if (*kw < 1) *kw = 1;
    *rg = 8 / *kw > 1 ? 8 / *kw : 1;
}

dsv4_status moe_gemm_occupancy(int gemm1, int kw, int rg, int *per_sm)
{
    const int threads = 32 * kw * rg;
    if (gemm1)
        CUDA_TRY(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, moe_gemm_kernel<2>, threads, 0));
    else
        CUDA_TRY(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, moe_gemm_kernel<1>, threads, 0));
    if (*per_sm < 1) *per_sm = 1;
    return DSV4_OK;
}

dsv4_status moe_gemm_launch(cudaStream_t st, int gemm1, const moe_gemm_args *a, int grid)
{
    const unsigned threads = 32u * (unsigned)(a->kw * a->rg);
    if (gemm1)
        moe_gemm_kernel<2><<<grid, threads, 0, st>>>(*a);
    else
        moe_gemm_kernel<1><<<grid, threads, 0, st>>>(*a);
    CUDA_LAUNCHED();
    return DSV4_OK;
}
