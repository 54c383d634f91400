/*
 * linear_mmv.cu - the decode projection on tensor cores (MMV): y = x W^T for N <= 16 rows of x
 * (BF16 weights: N <= 32), FP8 and BF16 weights, dispatched by bk_linear.cu. Decode batches of 5-16
 * rows are where the f32 FMA GEMV stops streaming (it re-reads x from L1 for every weight row pair
 * and, at N = 16, needs more f32 FMAs than the H100 has); on tensor cores the FMAs are free and x
 * is read once per CTA from shared memory.
 *
 * Two kernels of the same numerics. mmv_kernel: any shape; each warp loads one step of its rows
 * at a time (the first before the PDL wait). mmv_pipe_kernel, where it takes the call (FP8, N <=
 * 8, one wave of 256-row tiles of <= 8 steps a K slice: the Flash projections at batches 4-8,
 * mmv_pipe_plan; bk_linear.cu mmv_wins): each warp keeps two steps in flight, x goes to shared
 * memory by cp.async (no registers, one latency) and is converted in place. H100, N = 8, us: Flash
 * wq_b 27.9 -> 25.2, wo_b 34.4 -> 28.2, wo_a 29.9 -> 28.2, indexer wq_b 13.6 -> 12.1 (cuBLASLt FP8:
 * 14-19).
 *
 * Limits (H100, test_gpu_linear --mmv-bench): the time hardly depends on N but carries a fixed
 * ~8 us (launch, x staging, first weight latency, cluster reduction) and then streams at
 * 1.9-2.6 TB/s. Tried and slower: a persistent grid whose CTAs loop over several tiles (each
 * tile's cluster reduction, barrier.cluster.arrive = MEMBAR.ALL.GPU, waits for the next tile's
 * loads already in flight: wq_b 35.5 us at 2 tiles of 2 steps), four steps in flight at one
 * CTA an SM (245 registers: wo_b 43.2, wo_a 43.1), clusters of 4-8 at two CTAs an SM, and
 * slices of more than 8 steps (Pro wq_b 57.4 against 52.6).
 */
#include "backend/cuda/linear_common.cuh"

#include <string.h>

/* ---- MMV: decode GEMV on tensor cores --------------------------------------------------------
 * y [N, nrows] = x [N, cols] . W^T for N <= 16 (BF16: 32), FP8 (e4m3, 128 x 128 block scales) and
 * BF16 weights, as mma.sync m16n8k16 with the weight rows as the 16-row operand A and the tokens,
 * padded to 8 (N <= 8), 16 or 32, as the 8-column operand B; f32 accumulation. The f32 FMA GEMV
 * cannot go past N ~ 4 at bandwidth (16 FMAs per FP8 weight byte at N = 16 exceed the H100's f32
 * rate), the tensor cores have room to spare.
 *
 * Operands, exact or split:
 *   FP8  A = the e4m3 values as f16 (exact, one cvt per two values). x is scaled per token and
 *        128-column block by 2^e, e chosen so that the block's max |x| lands in [2^14, 2^15),
 *        then split as hi = f16(x 2^e), lo = f16(x 2^e - hi): |x 2^e - hi - lo| <=
 *        max(2^-22 |x 2^e|, 2^-14) (the second term where lo, or hi, is an f16 subnormal or
 *        flushed), i.e. <= max(2^-22 |x|, 2^-28 max_block |x|). Inputs that are e4m3 or bf16
 *        values times a power of two (act_quant output, bf16 activations) are exact in hi alone
 *        unless 2^-22 below their block's max. Each block's f32 sum is multiplied by 2^-e
 *        (exact) and then by the weight block's scale, as the GEMV does.
 *   BF16 A = the bf16 weights as stored; x split as hi = bf16(x), lo = bf16(x - hi):
 *        |x - hi - lo| <= 2^-18 |x| (linear_tiled.cu's MMA split).
 * When every lo of a CTA's x slice is zero the lo products are skipped (adding exact zeros
 * changes no sum).
 *
 * Layout. A "step" is 128 bytes of each weight row (FP8 128 columns, BF16 64): lane (g, t) of a
 * warp loads 16 bytes at 16 t and 16 at 64 + 16 t of rows g and g + 8 of each of its MV_MT
 * 16-row tiles. The k order inside an mma is free as long as A and B agree, so each lane's
 * registers are used as they come: register r of a row holds columns cmap(t, r), cmap(t, r) + 1,
 * with FP8 cmap = 64 (r / 8) + 16 t + 2 (r % 8) and BF16 cmap = 32 (r / 4) + 8 t + 2 (r % 4); mma
 * q of the step takes registers 2q, 2q + 1 (k slots 2t.., 2t + 8..), so lane (g, t) needs x of
 * token g at the four columns cmap(t, 2q) + 0..3 as its B fragment. x is staged once per CTA in
 * shared memory in exactly that order: slot [n-tile][k16 step][lane] = {hi b0, hi b1, lo b0,
 * lo b1}, one 16-byte load per fragment, conflict-free.
 *
 * Work: a CTA of 8 warps = RW row warps x KW = 8 / RW K warps; a warp owns 32 rows (MV_MT = 2
 * tiles) and every KW-th step of the CTA's K slice; the KW partial sums are added in shared
 * memory in warp order, then the KS CTAs of a cluster (the K slices) in rank order
 * (lin_cluster_store). The grid is (row tiles, groups, KS). */
enum { MV_THREADS = 256, MV_WARPS = 8, MV_MT = 2, MV_PRO = 6 };
enum { MV_STAGE_MAX = 73728, MV_TARGET = 2 * LIN_SMS };

__device__ __forceinline__ uint32_t mv_word(const uint4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* Two e4m3 values (low 16 bits) -> f16x2 bits, exact. */
__device__ __forceinline__ uint32_t mv_e4m3x2_f16x2(uint32_t two)
{
    const __half2_raw h =
        __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

/* The scale 2^e of x's 128-column block for the f16 split (FP8 weights), the warp's lanes
 * holding 4 columns each (v): its max |x| m in [2^(E-127), 2^(E-126)) -> e = 141 - E puts it in
 * [2^14, 2^15); capped so that 2^e and 2^-e are normal f32 (m = inf or NaN: E = 255, e = -114).
 * Lane 0 stores 2^-e to *xinv. */
__device__ __forceinline__ float mv_block_scale(const float *v, int lane, float *xinv)
{
    float m = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const int e = min(126, 141 - (int)(__float_as_uint(m) >> 23));
    const float sc = __uint_as_float((uint32_t)(e + 127) << 23);
    if (lane == 0) *xinv = __uint_as_float((uint32_t)(127 - e) << 23);
    return sc;
}

/* Four x values (consecutive columns) -> {hi01, hi23, lo01, lo23}: f16 of v * sc (FP8 weights)
 * or bf16 of v (BF16 weights), low half = lower column. */
template <int F16> __device__ __forceinline__ uint4 mv_split(const float *v, float sc)
{
    uint32_t w[4];
#pragma unroll
    for (int p = 0; p < 2; p++) {
        if constexpr (F16) {
            const float a = v[2 * p] * sc, b = v[2 * p + 1] * sc;
            const __half2 hi = __floats2half2_rn(a, b);
            const float2 hb = __half22float2(hi);
            const __half2 lo = __floats2half2_rn(a - hb.x, b - hb.y);
            memcpy(&w[p], &hi, 4);
            memcpy(&w[2 + p], &lo, 4);
        } else {
            const float a = v[2 * p], b = v[2 * p + 1];
            const __nv_bfloat162 hi = __floats2bfloat162_rn(a, b);
            const float2 hb = __bfloat1622float2(hi);
            const __nv_bfloat162 lo = __floats2bfloat162_rn(a - hb.x, b - hb.y);
            memcpy(&w[p], &hi, 4);
            memcpy(&w[2 + p], &lo, 4);
        }
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* The staging slot of token n, CTA column c (a multiple of 4): [n-tile][k16 step][lane]. */
template <int F16> __device__ __forceinline__ int mv_slot(int n, int c, int spc)
{
    constexpr int SC = F16 ? 128 : 64, KQ = SC / 16;
    const int st = c / SC, cs = c % SC;
    int t, q;
    if constexpr (F16) {
        t = (cs & 63) >> 4, q = 4 * (cs >> 6) + ((cs & 15) >> 2); /* cmap = 64h + 16t + 4q' */
    } else {
        t = (cs & 31) >> 3, q = 2 * (cs >> 5) + ((cs & 7) >> 2); /* cmap = 32u + 8t + 4j */
    }
    return (((n >> 3) * spc + st) * KQ + q) * 32 + (n & 7) * 4 + t;
}

/* The step's weight chunks (zeros for rows past the end): [MV_MT][2 rows][2 chunks]. */
__device__ __forceinline__ void mv_load(uint4 (*wv)[2][2], const uint8_t *const (*wp)[2],
                                        const bool (*wok)[2], int s)
{
#pragma unroll
    for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int u = 0; u < 2; u++) {
                wv[mt][r][u] = make_uint4(0u, 0u, 0u, 0u);
                if (wok[mt][r])
                    wv[mt][r][u] = __ldcs(
                        (const uint4 *)(const void *)(wp[mt][r] + (int64_t)s * 128 + 64 * u));
            }
}

/* One item of a warp's work, in registers: the 128-byte step of rows g and g + 8 of each of its
 * MV_MT 16-row tiles (zeros for rows past the end), and (FP8) those rows' block scales. */
typedef struct mv_buf {
    uint4 w[MV_MT][2][2]; /* [tile][row g, g + 8][chunk at 16 t, 64 + 16 t] */
    float sc[MV_MT][2];
} mv_buf;

/* The item of rows row .. (this lane's row g of the warp's first tile, in the group), step s of
 * the CTA's K slice; on = 0: zeros, nothing loaded. wk: the slice's first byte of the row, plus
 * 16 t; sblk: the slice's first scale column. */
template <int F16>
__device__ __forceinline__ void mv_fetch(mv_buf &b, const lin_args &a, int64_t row,
                                         const uint8_t *wk, int64_t sblk, int s, bool on)
{
#pragma unroll
    for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int64_t rr = row + mt * 16 + 8 * r;
            const bool ok = on && rr < a.nrows;
            const uint8_t *p = wk + (a.row0 + rr) * a.row_bytes + (int64_t)s * 128;
#pragma unroll
            for (int u = 0; u < 2; u++) {
                b.w[mt][r][u] = make_uint4(0u, 0u, 0u, 0u);
                if (ok) b.w[mt][r][u] = __ldcs((const uint4 *)(const void *)(p + 64 * u));
            }
            if constexpr (F16) b.sc[mt][r] = ok ? lin_scale(a, (a.row0 + rr) >> 7, sblk + s) : 0.0f;
        }
}

/* One step's mmas: out [MV_MT][NT] fragments += the step's weight chunks wv [MV_MT][2 rows][2]
 * times the staged x (xq: this step's first slot of n-tile 0 for this lane; n-tiles ntstride
 * slots apart); LO: with the lo halves. */
template <int F16, int NT, bool LO>
__device__ __forceinline__ void mv_step(const uint4 (*wv)[2][2], const uint4 *xq, int ntstride,
                                        int g, int N, float (*out)[NT][4])
{
    constexpr int KQ = F16 ? 8 : 4;
#pragma unroll
    for (int q = 0; q < KQ; q++) {
        uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (nt * 8 + g < N) v = xq[nt * ntstride + q * 32];
            bh[nt][0] = v.x, bh[nt][1] = v.y, bl[nt][0] = v.z, bl[nt][1] = v.w;
        }
#pragma unroll
        for (int mt = 0; mt < MV_MT; mt++) {
            uint32_t af[4];
            if constexpr (F16) { /* word q % 4 of chunk q / 4: columns cmap(t, 2q) + 0..3 */
                const uint32_t w0 = mv_word(wv[mt][0][q >> 2], q & 3);
                const uint32_t w1 = mv_word(wv[mt][1][q >> 2], q & 3);
                af[0] = mv_e4m3x2_f16x2(w0), af[2] = mv_e4m3x2_f16x2(w0 >> 16);
                af[1] = mv_e4m3x2_f16x2(w1), af[3] = mv_e4m3x2_f16x2(w1 >> 16);
            } else { /* words 2(q % 2), +1 of chunk q / 2 */
                const int u = q >> 1, j = 2 * (q & 1);
                af[0] = mv_word(wv[mt][0][u], j), af[2] = mv_word(wv[mt][0][u], j + 1);
                af[1] = mv_word(wv[mt][1][u], j), af[3] = mv_word(wv[mt][1][u], j + 1);
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                if constexpr (F16) {
                    lin_mma_f16(out[mt][nt], af, bh[nt]);
                    if constexpr (LO) lin_mma_f16(out[mt][nt], af, bl[nt]);
                } else {
                    lin_mma_bf16(out[mt][nt], af, bh[nt]);
                    if constexpr (LO) lin_mma_bf16(out[mt][nt], af, bl[nt]);
                }
            }
        }
    }
}

/* FP8: acc += (a step's block sums tmp * the tokens' 2^-e) * the weight block scales of rows g
 * (ws0) and g + 8 (ws1), one fmaf an element; xinv [8 NT][spc] at step s, t = lane % 4. */
template <int NT>
__device__ __forceinline__ void mv_scale_add(float (*acc)[4], const float (*tmp)[4], float ws0,
                                             float ws1, const float *xinv, int spc, int s, int t,
                                             int N)
{
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int n0 = nt * 8 + 2 * t;
        const float xi0 = n0 < N ? xinv[n0 * spc + s] : 0.0f;
        const float xi1 = n0 + 1 < N ? xinv[(n0 + 1) * spc + s] : 0.0f;
        acc[nt][0] = fmaf(tmp[nt][0] * xi0, ws0, acc[nt][0]);
        acc[nt][1] = fmaf(tmp[nt][1] * xi1, ws0, acc[nt][1]);
        acc[nt][2] = fmaf(tmp[nt][2] * xi0, ws1, acc[nt][2]);
        acc[nt][3] = fmaf(tmp[nt][3] * xi1, ws1, acc[nt][3]);
    }
}

/* This K warp's partials into red [KW][8 NT][BM] (row warp rw, lane (g, t)). */
template <int NT>
__device__ __forceinline__ void mv_put_partials(float *red, const float (*acc)[NT][4], int kw,
                                                int BM, int rw, int g, int t)
{
    constexpr int TOK = 8 * NT;
#pragma unroll
    for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = rw * 32 + mt * 16 + g + 8 * (e >> 1),
                          tok = nt * 8 + 2 * t + (e & 1);
                red[(kw * TOK + tok) * BM + row] = acc[mt][nt][e];
            }
}

/* red[e] = the KW partials [KW][n] of element e added in warp order (the block's threads). */
__device__ __forceinline__ void mv_sum_partials(float *red, int KW, int n)
{
    for (int e = threadIdx.x; e < n; e += MV_THREADS) {
        float sum = red[e];
        for (int k = 1; k < KW; k++) sum += red[k * n + e];
        red[e] = sum;
    }
}

/* The work of one CTA, shared by its warps' item loops: the K slice's staged x and the tile
 * loop's cursors. */
typedef struct mv_cta {
    const uint4 *xs;   /* x slots [NT][spc KQ][32] */
    const float *xinv; /* FP8: 2^-e per token and step [8 NT][spc] */
    float *red;        /* the K warps' partials [KW][TOK][BM] */
    const uint8_t *wk; /* weight bytes of the slice's first column, plus 16 t */
    int64_t s0;        /* the slice's first step */
    int spc, nst, nsw; /* steps per slice, in this slice, items per tile per warp */
    int kw, KW, rw, BM, N, g, t, lane, has_lo;
} mv_cta;

/* The fetch cursor: loads item (tile, j) into b (zeros past this CTA's last tile), advances. */
template <int F16>
__device__ __forceinline__ void mv_next(mv_buf &b, const lin_args &a, const mv_cta &c,
                                        int64_t &tile, int &j)
{
    const int s = c.kw + j * c.KW;
    const int64_t row = tile * c.BM + c.rw * 32 + c.g;
    mv_fetch<F16>(b, a, row, c.wk, c.s0, s, s < c.nst && tile * c.BM < a.nrows);
    if (++j == c.nsw) j = 0, tile += gridDim.x;
}

/* The compute cursor: item (tile, j) from b into acc; after the tile's last item the K warps'
 * and the cluster's partial sums are added up and the tile stored (every thread of the cluster
 * takes part: the item counts are the CTA's and the cluster's). */
template <int F16, int NT>
__device__ __forceinline__ void mv_item(const mv_buf &b, const lin_args &a, const mv_cta &c,
                                        int64_t &tile, int &j, float (*acc)[NT][4])
{
    constexpr int KQ = F16 ? 8 : 4, TOK = 8 * NT;
    if (j == 0)
#pragma unroll
        for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[mt][nt][e] = 0.0f;
    const int s = c.kw + j * c.KW;
    if (s < c.nst) {
        const uint4 *xq = c.xs + (size_t)s * KQ * 32 + c.lane;
        const int nts = c.spc * KQ * 32;
        if constexpr (F16) { /* per scale block: tmp, then acc += (tmp 2^-e) * weight scale */
            float tmp[MV_MT][NT][4];
#pragma unroll
            for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) tmp[mt][nt][e] = 0.0f;
            if (c.has_lo)
                mv_step<F16, NT, true>(b.w, xq, nts, c.g, c.N, tmp);
            else
                mv_step<F16, NT, false>(b.w, xq, nts, c.g, c.N, tmp);
#pragma unroll
            for (int mt = 0; mt < MV_MT; mt++)
                mv_scale_add<NT>(acc[mt], tmp[mt], b.sc[mt][0], b.sc[mt][1], c.xinv, c.spc, s, c.t,
                                 c.N);
        } else {
            if (c.has_lo)
                mv_step<F16, NT, true>(b.w, xq, nts, c.g, c.N, acc);
            else
                mv_step<F16, NT, false>(b.w, xq, nts, c.g, c.N, acc);
        }
    }
    if (j + 1 < c.nsw) {
        j++;
        return;
    }
    /* the tile's K warps' partials, summed in warp order, then the cluster's in rank order; the
     * previous tile's store ended with a cluster barrier, so red is free */
    mv_put_partials<NT>(c.red, acc, c.kw, c.BM, c.rw, c.g, c.t);
    if (c.KW > 1) {
        __syncthreads();
        mv_sum_partials(c.red, c.KW, TOK * c.BM);
    }
    lin_cluster_store(a, c.red, TOK, c.BM, 0, tile * c.BM);
    j = 0, tile += gridDim.x;
}

/* x columns [c, c + 4) of token n -> its slot, raw f32 (converted in place afterwards). */
__device__ __forceinline__ void mv_copy_x(uint4 *dst, const float *src, bool x16)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    if (x16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++)
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d + 4 * j), "l"(src + j)
                         : "memory");
    }
}

// MMV pipelined: x [N, cols] (ldx), W rows row0 + [0, nrows) -> y [N, nrows] (ldy), per group;
// grid (gx, groups, KS) in clusters of (1, 1, KS): CTA (x, ., z) takes the row tiles of BM = 32 <<
// rw_log2 rows x, x + gx, .. and the steps [z spc, (z+1) spc) of each; each warp keeps D items
// (a step of its rows) in flight. Dynamic shared memory: x slots [NT][spc KQ][32] uint4 (+ FP8:
// 2^-e [8 NT][spc] f32), then the K warps' partials [KW][8 NT][BM] f32. Launched (mmv_pipe_plan)
// with one tile a CTA: a CTA's later tiles would each wait in the cluster barrier for the loads
// already in flight.
template <int F16, int NT, int D>
__global__ void __launch_bounds__(MV_THREADS, 2) mmv_pipe_kernel(lin_args a, int rw_log2, int spc)
{
    DSV4_PDL_LATE(); /* the first two items' weights go out before the wait */
    extern __shared__ __align__(16) unsigned char mv_sm[];
    constexpr int SC = F16 ? 128 : 64, KQ = SC / 16, TOK = 8 * NT;
    uint4 *xs = (uint4 *)(void *)mv_sm;
    float *xinv = (float *)(void *)(xs + (size_t)NT * spc * KQ * 32);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    lin_at_group(a, blockIdx.y);
    mv_cta c;
    c.xs = xs, c.xinv = xinv, c.red = xinv + (F16 ? TOK * spc : 0);
    c.g = lane >> 2, c.t = lane & 3, c.lane = lane;
    c.KW = MV_WARPS >> rw_log2, c.kw = warp & (c.KW - 1), c.rw = warp >> (3 - rw_log2);
    c.BM = 32 << rw_log2, c.N = (int)a.N, c.spc = spc;
    c.s0 = (int64_t)blockIdx.z * spc;
    const int64_t k0 = c.s0 * SC;
    c.nst = (int)max((int64_t)0, min((int64_t)spc, a.cols / SC - c.s0));
    c.nsw = (spc + c.KW - 1) / c.KW;
    c.wk = a.data + k0 * (F16 ? 1 : 2) + 16 * c.t;
    const int kc = c.nst * SC, N = c.N;
    const int64_t ntile = (a.nrows + c.BM - 1) / c.BM;
    const int nit = (int)((ntile - blockIdx.x + gridDim.x - 1) / gridDim.x) * c.nsw;

    /* two items in flight per warp from the start, requested before the PDL wait and before x
     * is staged, so that their latencies overlap each other and the previous launch's tail */
    mv_buf b[D];
    int64_t ft = blockIdx.x, ct = blockIdx.x;
    int fj = 0, cj = 0;
#pragma unroll
    for (int d = 0; d < D; d++) mv_next<F16>(b[d], a, c, ft, fj);
    DSV4_PDL_WAIT();

    /* stage x: every 4-column piece straight to its slot (cp.async, no registers held), then
     * each warp converts (token, 128-column block) tasks in place, lane j its columns 4j .. */
    const bool x16 = (uintptr_t)a.x % 16 == 0 && a.ldx % 4 == 0;
    for (int n = 0; n < N; n++)
        for (int col = 4 * (int)threadIdx.x; col < kc; col += 4 * MV_THREADS)
            mv_copy_x(xs + mv_slot<F16>(n, col, spc), a.x + n * a.ldx + k0 + col, x16);
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
    int lo_any = 0;
    const int nb = (kc + 127) >> 7, ntask = N * nb;
    for (int task = warp; task < ntask; task += MV_WARPS) {
        const int n = task / nb, b = task - n * nb, col = b * 128 + 4 * lane;
        uint4 *slot = xs + (col < kc ? mv_slot<F16>(n, col, spc) : 0);
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (col < kc) {
            const float4 f = *(const float4 *)(const void *)slot;
            v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
        }
        float sc = 1.0f;
        if constexpr (F16) sc = mv_block_scale(v, lane, xinv + n * spc + b);
        if (col < kc) {
            const uint4 q = mv_split<F16>(v, sc);
            *slot = q;
            lo_any |= (q.z | q.w) != 0u;
        }
    }
    c.has_lo = __syncthreads_or(lo_any);

    /* the items, two buffers in turn: each refilled (two items on) as soon as it is used */
    float acc[MV_MT][NT][4];
    for (int it = 0; it < nit; it += D)
#pragma unroll
        for (int d = 0; d < D; d++)
            if (it + d < nit) {
                mv_item<F16, NT>(b[d], a, c, ct, cj, acc);
                mv_next<F16>(b[d], a, c, ft, fj);
            }
}

// x [N, cols] (ldx), W rows row0 + [0, nrows) -> y [N, nrows] (ldy), per group; grid
// (ceil(nrows / (32 << rw_log2)), groups, KS) in clusters of (1, 1, KS); CTA z takes the steps
// [z spc, (z+1) spc). Dynamic shared memory: x slots [NT][spc KQ][32] uint4 (+ FP8: 2^-e
// [8 NT][spc] f32), reused for the K warps' partials [KW][8 NT][BM] f32.
template <int F16, int NT>
__global__ void __launch_bounds__(MV_THREADS, 2) mmv_kernel(lin_args a, int rw_log2, int spc)
{
    DSV4_PDL_LATE(); /* the first step's weights go out before the wait */
    extern __shared__ __align__(16) unsigned char mv_sm[];
    constexpr int SC = F16 ? 128 : 64, KQ = SC / 16, TOK = 8 * NT;
    uint4 *xs = (uint4 *)(void *)mv_sm;
    float *xinv = (float *)(void *)(xs + (size_t)NT * spc * KQ * 32);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int KW = MV_WARPS >> rw_log2, kw = warp & (KW - 1), rw = warp >> (3 - rw_log2);
    const int BM = 32 << rw_log2;
    lin_at_group(a, blockIdx.y);
    const int N = (int)a.N;
    const int64_t s0 = (int64_t)blockIdx.z * spc, k0 = s0 * SC;
    const int nst = (int)max((int64_t)0, min((int64_t)spc, a.cols / SC - s0));
    const int kc = nst * SC;

    /* this lane's weight rows: g and g + 8 of each tile; 16 bytes at 16 t and 64 + 16 t */
    const uint8_t *wp[MV_MT][2];
    int64_t wrow[MV_MT][2];
    bool wok[MV_MT][2];
#pragma unroll
    for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int64_t row = (int64_t)blockIdx.x * BM + rw * 32 + mt * 16 + g + 8 * r;
            wok[mt][r] = row < a.nrows;
            wrow[mt][r] = a.row0 + (wok[mt][r] ? row : 0);
            wp[mt][r] = a.data + wrow[mt][r] * a.row_bytes + k0 * (F16 ? 1 : 2) + 16 * t;
        }

    /* the first step's weights are requested before the PDL wait and before x is staged, so
     * the latencies overlap each other and the previous launch's tail */
    uint4 wv[MV_MT][2][2];
    if (kw < nst) mv_load(wv, wp, wok, kw);
    DSV4_PDL_WAIT();

    /* stage x: a warp takes (token, 128-column block) tasks, lane j its columns 4j .. 4j+3;
     * MV_PRO tasks' loads are issued before any is used */
    int lo_any = 0;
    const int nb = (kc + 127) >> 7, ntask = N * nb;
    for (int base = warp; base < ntask; base += MV_WARPS * MV_PRO) {
        float v[MV_PRO][4];
#pragma unroll
        for (int i = 0; i < MV_PRO; i++) {
            const int task = base + MV_WARPS * i, n = task / nb,
                      c = (task - n * nb) * 128 + 4 * lane;
            const bool ok = task < ntask && c < kc;
            const float *xp = a.x + (ok ? n * a.ldx + k0 + c : 0);
#pragma unroll
            for (int j = 0; j < 4; j++) v[i][j] = ok ? __ldg(xp + j) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < MV_PRO; i++) {
            const int task = base + MV_WARPS * i;
            if (task >= ntask) break; /* warp-uniform */
            const int n = task / nb, b = task - n * nb, c = b * 128 + 4 * lane;
            float sc = 1.0f;
            if constexpr (F16) sc = mv_block_scale(v[i], lane, xinv + n * spc + b);
            if (c < kc) {
                const uint4 q = mv_split<F16>(v[i], sc);
                xs[mv_slot<F16>(n, c, spc)] = q;
                lo_any |= (q.z | q.w) != 0u;
            }
        }
    }
    const int has_lo = __syncthreads_or(lo_any);

    float acc[MV_MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[mt][nt][j] = 0.0f;

    for (int s = kw; s < nst; s += KW) {
        if (s != kw) mv_load(wv, wp, wok, s);
        float tmp[MV_MT][NT][4]; /* FP8: this step's (one scale block's) sums */
#pragma unroll
        for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int j = 0; j < 4; j++) tmp[mt][nt][j] = 0.0f;
        const uint4 *xq = xs + (size_t)s * KQ * 32 + lane;
        const int nts = spc * KQ * 32;
        if constexpr (F16) { /* per scale block: tmp, scaled below */
            if (has_lo)
                mv_step<F16, NT, true>(wv, xq, nts, g, N, tmp);
            else
                mv_step<F16, NT, false>(wv, xq, nts, g, N, tmp);
        } else {
            if (has_lo)
                mv_step<F16, NT, true>(wv, xq, nts, g, N, acc);
            else
                mv_step<F16, NT, false>(wv, xq, nts, g, N, acc);
        }
        if constexpr (F16) { /* acc += (block sum * 2^-e) * weight block scale */
#pragma unroll
            for (int mt = 0; mt < MV_MT; mt++) {
                const float ws0 = wok[mt][0] ? lin_scale(a, wrow[mt][0] / 128, s0 + s) : 0.0f;
                const float ws1 = wok[mt][1] ? lin_scale(a, wrow[mt][1] / 128, s0 + s) : 0.0f;
                mv_scale_add<NT>(acc[mt], tmp[mt], ws0, ws1, xinv, spc, s, t, N);
            }
        }
    }

    /* K warps' partials [KW][TOK][BM] over the staging area, summed in warp order */
    __syncthreads();
    float *red = (float *)(void *)mv_sm;
    mv_put_partials<NT>(red, acc, kw, BM, rw, g, t);
    __syncthreads();
    if (KW > 1) mv_sum_partials(red, KW, TOK * BM);
    lin_cluster_store(a, red, TOK, BM, 0, (int64_t)blockIdx.x * BM);
}

typedef void (*mmv_fn)(lin_args, int, int);

/* Bytes of x staging per step (slots, and the FP8 scales). */
static int mmv_nt(const lin_args *a)
{
    return a->N <= 8 ? 1 : a->N <= 16 ? 2 : 4;
}

static int64_t mmv_step_bytes(const lin_args *a)
{
    const int f16 = a->fmt == DSV4_FORMAT_FP8, NT = mmv_nt(a);
    return (int64_t)NT * (f16 ? 8 : 4) * 512 + (f16 ? 32 * NT : 0);
}

int dsv4_lin_mmv_ok(const lin_args *a)
{
    const int fp8 = a->fmt == DSV4_FORMAT_FP8 && a->skind != LIN_SCALE_NONE;
    /* BF16 up to 32 rows (four token tiles: the LM head and the gate above 16 rows, which the
     * tiled MMA kernel took at half the bandwidth), FP8 up to 16 (F8W above) */
    if (!(fp8 || a->fmt == DSV4_FORMAT_BF16) || a->N > (fp8 ? 16 : 32) || (uintptr_t)a->data % 16)
        return 0;
    const int64_t SC = fp8 ? 128 : 64;
    if (a->cols % SC || a->row_bytes % 16) return 0;
    /* a K slice of at most 16 clusters' ranks must fit the staging limit */
    const int64_t cap = MV_STAGE_MAX / mmv_step_bytes(a);
    return (a->cols / SC + 15) / 16 <= cap;
}

/* The pipelined kernel's launch, 0 where it does not take the call: FP8 weights, N <= 8, tiles
 * of 256 rows (a warp's 32 rows at every step of the CTA's slice), one tile a CTA, at most
 * MP_STEPS steps a slice, and one wave: up to LIN_SMS CTAs in clusters of up to 8, or up to
 * MV_TARGET (two an SM) in clusters of up to 2; the most CTAs win, then fewer slices. H100,
 * test_gpu_linear --mmv-bench, N = 8, us (mmv_kernel: 27.9 / 34.4 / 29.9 / 13.6): Flash wq_b 2
 * slices 25.2, 1 slice 28.9; wo_b 8 slices 28.2, 4 slices 36.7; wo_a 4 slices 28.2, 8 slices
 * (256 CTAs) 31.4; indexer wq_b 4 slices 12.1, 8 slices 16.1, 2 slices 14.1. Longer slices lose
 * to mmv_kernel (Pro wq_b, 12 steps: 57.4 against 52.6), as do four items in flight at one CTA
 * an SM (wo_b 43.2) and CTAs looping over several tiles (wq_b, 2 tiles of 2 steps: 35.5). */
enum { MP_STEPS = 8 };

static int mmv_pipe_plan(const lin_args *a, int *ks, int *spc)
{
    if (a->fmt != DSV4_FORMAT_FP8 || a->N > 8) return 0;
    const int64_t nsteps = a->cols / 128, tiles = (a->nrows + 255) / 256 * a->groups;
    int64_t best = 0;
    for (int64_t k = 1; k <= 8; k *= 2) {
        const int64_t s = (nsteps + k - 1) / k, ke = (nsteps + s - 1) / s, C = tiles * ke;
        if (s > MP_STEPS || (s & (s - 1)) || s * ke != nsteps ||
            !(C <= LIN_SMS || (C <= MV_TARGET && ke <= 2)))
            continue;
        if (C > best) best = C, *ks = (int)ke, *spc = (int)s;
    }
    return best > 0;
}

int dsv4_lin_mmv_pipe_takes(const lin_args *a)
{
    int ks = 0, spc = 0;
    return dsv4_lin_mmv_ok(a) && mmv_pipe_plan(a, &ks, &spc);
}

dsv4_status dsv4_lin_launch_mmv(const lin_args *a, cudaStream_t st)
{
    int pks = 0, pspc = 0;
    if (mmv_pipe_plan(a, &pks, &pspc)) {
        const size_t smem = (size_t)(pspc * mmv_step_bytes(a)) + (size_t)4 * 8 * 32 * MV_WARPS;
        if (smem > 48 * 1024)
            CUDA_TRY(cudaFuncSetAttribute(mmv_pipe_kernel<1, 1, 2>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        cudaLaunchAttribute attr;
        const dim3 grid((unsigned)((a->nrows + 255) / 256), (unsigned)a->groups, (unsigned)pks);
        const cudaLaunchConfig_t cfg = lin_cluster_cfg(grid, MV_THREADS, smem, pks, st, &attr);
        CUDA_TRY(cudaLaunchKernelEx(&cfg, mmv_pipe_kernel<1, 1, 2>, *a, 3, pspc));
        return DSV4_OK;
    }

    static const mmv_fn table[2][3] = {{mmv_kernel<0, 1>, mmv_kernel<0, 2>, mmv_kernel<0, 4>},
                                       {mmv_kernel<1, 1>, mmv_kernel<1, 2>, NULL}};
    const int f16 = a->fmt == DSV4_FORMAT_FP8, NT = mmv_nt(a);
    const int64_t nsteps = a->cols / (f16 ? 128 : 64), step_bytes = mmv_step_bytes(a);
    const int64_t cap = MV_STAGE_MAX / step_bytes;
    /* the fewest K slices whose x fits the staging area, then (per choice of row warps) more,
     * up to 8, while the CTAs do not fill two per SM and each K warp keeps a step; the choice
     * with the most CTAs (up to that target) wins, more rows per CTA on ties */
    int ks_min = 1;
    while ((nsteps + ks_min - 1) / ks_min > cap) ks_min *= 2;
    int rw_log2 = 3, ks = ks_min;
    int64_t best = -1;
    for (int l = 3; l >= 0; l--) {
        const int KW = MV_WARPS >> l;
        const int64_t tiles = (a->nrows + (32 << l) - 1) / (32 << l) * a->groups;
        int k = ks_min;
        while (k < 8 && tiles * k < MV_TARGET && (nsteps + 2 * k - 1) / (2 * k) >= KW) k *= 2;
        const int64_t score = tiles * k < MV_TARGET ? tiles * k : (int64_t)MV_TARGET;
        if (score > best) best = score, rw_log2 = l, ks = k;
    }
    const int spc = (int)((nsteps + ks - 1) / ks);
    ks = (int)((nsteps + spc - 1) / spc); /* no empty slices */
    const int TOK = 8 * NT;
    const int64_t stage = spc * step_bytes, red = (int64_t)4 * TOK * MV_THREADS;
    const size_t smem = (size_t)(stage > red ? stage : red);
    const mmv_fn fn = table[f16][NT == 4 ? 2 : NT - 1]; /* NT 4: BF16 only (dsv4_lin_mmv_ok) */
    if (smem > 48 * 1024)
        CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (ks > 8)
        CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));

    cudaLaunchAttribute attr;
    const dim3 grid((unsigned)((a->nrows + (32 << rw_log2) - 1) / (32 << rw_log2)),
                    (unsigned)a->groups, (unsigned)ks);
    const cudaLaunchConfig_t cfg = lin_cluster_cfg(grid, MV_THREADS, smem, ks, st, &attr);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, fn, *a, rw_log2, spc));
    return DSV4_OK;
}
