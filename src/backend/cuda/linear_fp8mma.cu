/*
 * linear_fp8mma.cu - FP8 projections for 17..64 rows of x on tensor cores (FMM): y = x W^T with
 * e4m3 weights in 128 x 128 scale blocks (the attention projections, the shared expert, the
 * indexer's wq_b at batched decode). Dispatched by bk_linear.cu between MMV (N <= 16) and the
 * tiled MMA kernel (N > 64, other formats).
 *
 * Why a kernel of its own: the tiled MMA kernel decodes every weight tile to bf16 in shared
 * memory and multiplies x split per tile, spending ~1.5 us of a CTA per 32-column tile (11-17% of
 * copy bandwidth at N = 64). Here the weight rows are the 16-row MMA operand straight from global
 * memory into registers (as MMV), and the tokens the 8-column one, so each weight byte is loaded
 * once, converted once (e4m3 -> f16, exact) and used for all N tokens; x is converted to f16 once
 * per CTA and step, not per weight tile.
 *
 * Numerics (MMV's FP8 scheme): x is scaled per token and 128-column block by 2^e (the block's
 * max |x| into [2^14, 2^15)) and split as hi = f16(x 2^e), lo = f16(x 2^e - hi), remainder <=
 * max(2^-22 |x|, 2^-28 max_block |x|); inputs that are e4m3 or bf16 values times a power of two
 * (act_quant output, bf16 activations) are exact in hi alone, and where every lo of a staged
 * chunk is zero the lo products are skipped. Each 128-column block's f32 sum (one mma chain) is
 * multiplied by 2^-e (exact) and then by the weight block's scale and added to the f32 total, as
 * the official fp8_gemm promotes per 128-K block.
 *
 * Limits (H100, one device call, test_gpu_linear graph replay, bf16-valued x; MMA -> FMM):
 * Flash wq_b 32 MB N = 32 61.6 -> 35.2 us, N = 64 64.2 -> 57.8; wo_a (8 groups) 97.5 -> 40.4,
 * 99.4 -> 68.2; indexer wq_b 8 MB 34.2 -> 15.8, 34.8 -> 25.0; wo_b 95.7 -> 72.6 at N = 32 but
 * 100.2 -> 115.1 at N = 64, where its 16 clusters of 7 CTAs take two waves (so N > 32 stays on
 * MMA for such grids: dsv4_lin_fmm_wins; fm_plan now splits them 6 ways).
 * 16 warps of 16 rows (<= 128 registers) in place of 8 of 32 (252 registers; ncu: a warp issued
 * only every ~6 cycles, fixed-latency dependencies), H100, one call, old/new 3 times interleaved,
 * graph replay (us, N = 32 / 64): wq_b 35.4 -> 33.9 / 58.8 -> 58.4, wo_b 39.9 -> 37.1 / 65.8 ->
 * 64.5, wo_a 39.9 -> 36.8 / 65.6 -> 64.0, indexer wq_b 15.7 -> 15.1 / 25.2 -> 24.5, wq_a 15.7
 * -> 15.1 / 25.5 -> 25.7 (the one not faster). Still 16-32% of copy bandwidth on the 32 MB
 * matrices, far from cuBLASLt (15-21 us), and not for the mmas: f32 x (lo on, twice the mmas)
 * times the same as bf16-valued x (wq_b N = 64 58.5 / 58.4). What grows with N is x: f32 in
 * the API, it is read and split by each CTA for its 256 rows (as many bytes as the weights). The
 * way on: x converted once per call (hi/lo planes in a workspace; one per stream, the side
 * stream runs projections too), more weight rows per x byte, FP8 x for act_quant inputs.
 */
#include "backend/cuda/linear_common.cuh"

#include <string.h>

/* ---- FMM --------------------------------------------------------------------------------------
 * CTA: 16 warps, each 16 weight rows (FM_MT = 1 tile) x all tokens (NT 8-token tiles), so
 * a CTA covers FM_BM = 256 rows over its K slice of spc steps (a step = 128 columns = one weight
 * scale block). Lane (g, t) loads 16 bytes at 16 t and at 64 + 16 t of rows g and g + 8 of each
 * tile; MMV's column map (register word w of chunk u holds columns 64 u + 16 t + 4 w .. + 3, mma
 * q = 4 u + w of the step) lets the registers be used as loaded. The next step's chunks are
 * requested as soon as this step's mmas no longer need the registers (chunk 0 after mma 3,
 * chunk 1 after mma 7).
 *
 * x goes through shared memory in chunks of XC steps: the raw f32 rows of the next chunk are
 * copied by cp.async while the current one is multiplied; a chunk is then converted in place to
 * the fragment planes: hi [NT][XC][qp 4][lane 32] uint4 = {hi b0, hi b1 of mma 2 qp, the same of
 * mma 2 qp + 1}, lo likewise, and 2^-e [TOK][XC]. One 16-byte load feeds two mmas of one token
 * tile. After the K loop the CTA's partial [TOK][FM_BM] goes to the same shared memory and the
 * KS CTAs of the cluster (the K slices) add up in rank order (fm_cluster_store). Token tiles past
 * N multiply zeros (their outputs are not stored). */
enum { FM_THREADS = 512, FM_WARPS = 16, FM_MT = 1, FM_BM = FM_WARPS * FM_MT * 16, FM_KS_MAX = 8 };
/* Steps ahead of the loop whose weight lines are prefetched into L2: the registers hold one step
 * ahead (all the kernel's registers allow), the L2 prefetch keeps more bytes in flight. */
enum { FM_PD = 2 };
/* CTAs of a grid split over clusters (fm_plan) */
enum { FM_SPLIT_CTAS = 120 };

/* Shared-memory layout for NT token tiles (XC = 16 / NT steps per chunk, TOK = 8 NT tokens):
 * raw f32 [TOK][XC 128], planes hi, lo [NT][XC][4][32] uint4, 2^-e [TOK][XC] f32. */
template <int NT> struct fm_shape {
    static constexpr int XC = 16 / NT, TOK = 8 * NT;
    static constexpr int RAW = TOK * XC * 128 * 4; /* bytes */
    static constexpr int PLANE = NT * XC * 4 * 32; /* uint4 per plane */
    static constexpr int XINV = TOK * XC * 4;      /* bytes */
    static constexpr int BYTES = RAW + 2 * PLANE * 16 + XINV;
    static_assert(TOK * FM_BM * 4 <= BYTES, "the partial tile fits the staging area");
};

__device__ __forceinline__ uint32_t fm_word(const uint4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* Two e4m3 values (low 16 bits) -> f16x2 bits, exact. */
__device__ __forceinline__ uint32_t fm_e4m3x2(uint32_t two)
{
    const __half2_raw h =
        __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

__device__ __forceinline__ void fm_cp4(void *dst, const void *src)
{
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src) : "memory");
}

__device__ __forceinline__ void fm_cp16(void *dst, const void *src)
{
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
}

/* The line holding p into L2, no registers (per lane: cp.async.bulk.prefetch takes a uniform
 * address, which the compiler serialises over the lanes). */
__device__ __forceinline__ void fm_prefetch_l2(const void *p)
{
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

__device__ __forceinline__ void fm_cp_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

__device__ __forceinline__ void fm_cp_wait()
{
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

/* Copies x of steps [c, c + xn) of the slice (columns k0 + 128 c ..), tokens < N, into raw
 * [TOK][XC 128]; 16-byte pieces where x rows are 16-byte aligned (al), else 4-byte ones. */
template <int NT>
__device__ __forceinline__ void fm_issue_raw(const lin_args &a, float *raw, int64_t k0, int c,
                                             int xn, bool al)
{
    constexpr int XC = fm_shape<NT>::XC, TOK = fm_shape<NT>::TOK;
    const int N = (int)min(a.N, (int64_t)TOK);
    const float *src = a.x + k0 + (int64_t)c * 128;
    if (al) { /* piece i: token i / (32 XC), 16 bytes j = i % (32 XC) of its row */
        constexpr int W = 32 * XC;
        for (int i = threadIdx.x; i < N * W; i += FM_THREADS) {
            const int n = i / W, j = i % W;
            if (j < 32 * xn) fm_cp16(raw + n * (XC * 128) + 4 * j, src + n * a.ldx + 4 * j);
        }
    } else {
        constexpr int W = 128 * XC;
        for (int i = threadIdx.x; i < N * W; i += FM_THREADS) {
            const int n = i / W, j = i % W;
            if (j < 128 * xn) fm_cp4(raw + n * (XC * 128) + j, src + n * a.ldx + j);
        }
    }
    fm_cp_commit();
}

/* raw -> the planes and 2^-e of blocks [0, xn); a warp per (token, block), lane j its columns
 * 4 j .. 4 j + 3. Returns whether any lo this thread wrote is nonzero. */
template <int NT>
__device__ __forceinline__ int fm_convert(const float *raw, uint4 *hi, uint4 *lo, float *xinv,
                                          int N, int xn)
{
    constexpr int XC = fm_shape<NT>::XC, TOK = fm_shape<NT>::TOK;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* lane j: chunk u = j / 16, t = j / 4 % 4, word w = j % 4 -> mma q = 4 u + w */
    const int u = lane >> 4, t = (lane >> 2) & 3, w = lane & 3, q = 4 * u + w;
    int lo_any = 0;
    for (int task = warp; task < TOK * XC; task += FM_WARPS) {
        const int n = task / XC, b = task % XC;
        if (b >= xn) continue; /* warp-uniform */
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (n < N) v = *(const float4 *)(const void *)(raw + n * (XC * 128) + b * 128 + 4 * lane);
        float m = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        /* m in [2^(E-127), 2^(E-126)) -> e = 141 - E puts it in [2^14, 2^15); capped so that
         * 2^e and 2^-e are normal f32 (m = inf or NaN: E = 255, e = -114) */
        const int e = min(126, 141 - (int)(__float_as_uint(m) >> 23));
        const float sc = __uint_as_float((uint32_t)(e + 127) << 23);
        if (lane == 0) xinv[n * XC + b] = __uint_as_float((uint32_t)(127 - e) << 23);
        const float f[4] = {v.x * sc, v.y * sc, v.z * sc, v.w * sc};
        uint32_t h[2], l[2];
#pragma unroll
        for (int p = 0; p < 2; p++) {
            const __half2 hv = __floats2half2_rn(f[2 * p], f[2 * p + 1]);
            const float2 hb = __half22float2(hv);
            const __half2 lv = __floats2half2_rn(f[2 * p] - hb.x, f[2 * p + 1] - hb.y);
            memcpy(&h[p], &hv, 4);
            memcpy(&l[p], &lv, 4);
        }
        lo_any |= (l[0] | l[1]) != 0u;
        const int slot = (((n >> 3) * XC + b) * 4 + (q >> 1)) * 32 + (n & 7) * 4 + t;
        uint2 *hp = (uint2 *)(void *)(hi + slot), *lp = (uint2 *)(void *)(lo + slot);
        hp[q & 1] = make_uint2(h[0], h[1]);
        lp[q & 1] = make_uint2(l[0], l[1]);
    }
    return lo_any;
}

/* One step's mmas: tmp [FM_MT][NT] = the step's weight chunks wv [FM_MT][2 rows][2] times the
 * staged x (hq, lq: this step's hi / lo slot of token tile 0 for this lane; tiles XC * 128 slots
 * apart); LO: with the lo halves. Chunk u of the next step (sn >= 0) is loaded into wv as soon
 * as mma 4 u + 3 no longer needs it. */
template <int NT, bool LO>
__device__ __forceinline__ void
fm_step(uint4 (&wv)[FM_MT][2][2], const uint8_t *const (&wp)[FM_MT][2], const bool (&wok)[FM_MT][2],
        int sn, const uint4 *hq, const uint4 *lq, float (&tmp)[FM_MT][NT][4])
{
    constexpr int XC = fm_shape<NT>::XC;
#pragma unroll
    for (int mt = 0; mt < FM_MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) tmp[mt][nt][j] = 0.0f;
#pragma unroll
    for (int qp = 0; qp < 4; qp++) {
        /* A fragments of mmas 2 qp, 2 qp + 1: word q % 4 of chunk q / 4 */
        uint32_t af[2][FM_MT][4];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int q = 2 * qp + h;
#pragma unroll
            for (int mt = 0; mt < FM_MT; mt++) {
                const uint32_t w0 = fm_word(wv[mt][0][q >> 2], q & 3);
                const uint32_t w1 = fm_word(wv[mt][1][q >> 2], q & 3);
                af[h][mt][0] = fm_e4m3x2(w0), af[h][mt][2] = fm_e4m3x2(w0 >> 16);
                af[h][mt][1] = fm_e4m3x2(w1), af[h][mt][3] = fm_e4m3x2(w1 >> 16);
            }
        }
        if ((qp == 1 || qp == 3) && sn >= 0) { /* chunk qp / 2 is free: the next step's */
            const int u = qp >> 1;
#pragma unroll
            for (int mt = 0; mt < FM_MT; mt++)
#pragma unroll
                for (int r = 0; r < 2; r++)
                    if (wok[mt][r])
                        wv[mt][r][u] = __ldcs(
                            (const uint4 *)(const void *)(wp[mt][r] + (int64_t)sn * 128 + 64 * u));
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const uint4 bh = hq[nt * XC * 128 + qp * 32];
            const uint32_t bh0[2] = {bh.x, bh.y}, bh1[2] = {bh.z, bh.w};
#pragma unroll
            for (int mt = 0; mt < FM_MT; mt++) {
                lin_mma_f16(tmp[mt][nt], af[0][mt], bh0);
                lin_mma_f16(tmp[mt][nt], af[1][mt], bh1);
            }
            if constexpr (LO) {
                const uint4 bl = lq[nt * XC * 128 + qp * 32];
                const uint32_t bl0[2] = {bl.x, bl.y}, bl1[2] = {bl.z, bl.w};
#pragma unroll
                for (int mt = 0; mt < FM_MT; mt++) {
                    lin_mma_f16(tmp[mt][nt], af[0][mt], bl0);
                    lin_mma_f16(tmp[mt][nt], af[1][mt], bl1);
                }
            }
        }
    }
}

/* lin_cluster_store for part [TOK][FM_BM] (tokens < N only), four rows a load: each rank adds up
 * its share of the tile over the ranks in rank order and writes it finished. */
__device__ __forceinline__ void fm_cluster_store(const lin_args &a, float *part, int tok,
                                                 int64_t n0)
{
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync(); /* every rank's partial is in place */
    const int ks = (int)cl.num_blocks(), rank = (int)cl.block_rank();
    const int Q = FM_BM / 4, total = (int)min(a.N, (int64_t)tok) * Q, per = (total + ks - 1) / ks;
    const int e1 = min(rank * per + per, total);
    for (int e = rank * per + (int)threadIdx.x; e < e1; e += FM_THREADS) {
        const int m = e / Q, n = (e - m * Q) * 4;
        float4 *p = (float4 *)(void *)(part + m * FM_BM + n);
        float4 v[FM_KS_MAX];
#pragma unroll
        for (int r = 0; r < FM_KS_MAX; r++)
            if (r < ks) v[r] = *cl.map_shared_rank(p, r);
        float sum[4] = {v[0].x, v[0].y, v[0].z, v[0].w};
#pragma unroll
        for (int r = 1; r < FM_KS_MAX; r++)
            if (r < ks) sum[0] += v[r].x, sum[1] += v[r].y, sum[2] += v[r].z, sum[3] += v[r].w;
        float *y = a.y + m * a.ldy + n0 + n;
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (n0 + n + j < a.nrows) y[j] = lin_finish(a, sum[j]);
    }
    cl.sync(); /* no rank leaves while another still reads its shared memory */
}

// x [N, cols] (ldx), W rows row0 + [0, nrows) -> y [N, nrows] (ldy), per group, N <= 8 NT; grid
// (ceil(nrows / 256), groups, KS) in clusters of (1, 1, KS); CTA z takes the steps
// [z spc, (z+1) spc). Dynamic shared memory: fm_shape<NT>::BYTES.
template <int NT>
__global__ void __launch_bounds__(FM_THREADS, 1) fmm_kernel(lin_args a, int spc, int al)
{
    DSV4_PDL_WAIT();
    extern __shared__ __align__(16) unsigned char fm_sm[];
    typedef fm_shape<NT> S;
    constexpr int XC = S::XC, TOK = S::TOK;
    float *raw = (float *)(void *)fm_sm;
    uint4 *hip = (uint4 *)(void *)(fm_sm + S::RAW), *lop = hip + S::PLANE;
    float *xinv = (float *)(void *)(lop + S::PLANE);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    lin_at_group(a, blockIdx.y);
    const int N = (int)a.N;
    const int64_t s0 = (int64_t)blockIdx.z * spc, k0 = s0 * 128;
    const int nst = (int)max((int64_t)0, min((int64_t)spc, a.cols / 128 - s0));

    /* this lane's weight rows: g and g + 8 of each tile */
    const uint8_t *wp[FM_MT][2];
    int64_t srow[FM_MT][2]; /* weight scale row */
    bool wok[FM_MT][2];
#pragma unroll
    for (int mt = 0; mt < FM_MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int64_t row =
                (int64_t)blockIdx.x * FM_BM + warp * (16 * FM_MT) + mt * 16 + g + 8 * r;
            wok[mt][r] = row < a.nrows;
            const int64_t arow = a.row0 + (wok[mt][r] ? row : 0);
            srow[mt][r] = arow / 128;
            wp[mt][r] = a.data + arow * a.row_bytes + k0 + 16 * t;
        }

    /* every lane prefetches its chunks of steps 1 .. FM_PD (then FM_PD ahead of the loop) */
    for (int s = 1; s <= FM_PD && s < nst; s++)
#pragma unroll
        for (int mt = 0; mt < FM_MT; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++)
#pragma unroll
                for (int u = 0; u < 2; u++)
                    if (wok[mt][r]) fm_prefetch_l2(wp[mt][r] + (int64_t)s * 128 + 64 * u);
    if (nst > 0) fm_issue_raw<NT>(a, raw, k0, 0, min(XC, nst), al != 0);
    uint4 wv[FM_MT][2][2];
#pragma unroll
    for (int mt = 0; mt < FM_MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int u = 0; u < 2; u++) {
                wv[mt][r][u] = make_uint4(0u, 0u, 0u, 0u);
                if (wok[mt][r] && nst > 0)
                    wv[mt][r][u] = __ldcs((const uint4 *)(const void *)(wp[mt][r] + 64 * u));
            }

    float acc[FM_MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < FM_MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[mt][nt][j] = 0.0f;

    for (int c = 0; c < nst; c += XC) {
        const int xn = min(XC, nst - c);
        fm_cp_wait();
        __syncthreads(); /* raw landed for all; the planes of the last chunk are no longer read */
        const int has_lo = __syncthreads_or(fm_convert<NT>(raw, hip, lop, xinv, N, xn));
        if (c + XC < nst) fm_issue_raw<NT>(a, raw, k0, c + XC, min(XC, nst - c - XC), al != 0);

        for (int b = 0; b < xn; b++) {
            const int s = c + b;
            const bool more = s + 1 < nst;
            if (s + 1 + FM_PD < nst)
#pragma unroll
                for (int mt = 0; mt < FM_MT; mt++)
#pragma unroll
                    for (int r = 0; r < 2; r++)
#pragma unroll
                        for (int u = 0; u < 2; u++)
                            if (wok[mt][r])
                                fm_prefetch_l2(wp[mt][r] + (int64_t)(s + 1 + FM_PD) * 128 + 64 * u);
            float tmp[FM_MT][NT][4];
            if (has_lo)
                fm_step<NT, true>(wv, wp, wok, more ? s + 1 : -1, hip + (int64_t)b * 128 + lane,
                                  lop + (int64_t)b * 128 + lane, tmp);
            else
                fm_step<NT, false>(wv, wp, wok, more ? s + 1 : -1, hip + (int64_t)b * 128 + lane,
                                   lop + (int64_t)b * 128 + lane, tmp);
                /* acc += (block sum * 2^-e) * weight block scale (C fragment: c0, c1 at row g,
                 * tokens 2t, 2t + 1; c2, c3 at row g + 8) */
#pragma unroll
            for (int mt = 0; mt < FM_MT; mt++) {
                const float ws0 = wok[mt][0] ? lin_scale(a, srow[mt][0], s0 + s) : 0.0f;
                const float ws1 = wok[mt][1] ? lin_scale(a, srow[mt][1], s0 + s) : 0.0f;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const int n0 = nt * 8 + 2 * t;
                    const float xi0 = xinv[n0 * XC + b], xi1 = xinv[(n0 + 1) * XC + b];
                    acc[mt][nt][0] = fmaf(tmp[mt][nt][0] * xi0, ws0, acc[mt][nt][0]);
                    acc[mt][nt][1] = fmaf(tmp[mt][nt][1] * xi1, ws0, acc[mt][nt][1]);
                    acc[mt][nt][2] = fmaf(tmp[mt][nt][2] * xi0, ws1, acc[mt][nt][2]);
                    acc[mt][nt][3] = fmaf(tmp[mt][nt][3] * xi1, ws1, acc[mt][nt][3]);
                }
            }
        }
    }

    /* the partial [TOK][FM_BM] over the staging area (no cp.async is pending: the last chunk's
     * copy was waited for before it was converted) */
    __syncthreads();
    float *part = (float *)(void *)fm_sm;
#pragma unroll
    for (int mt = 0; mt < FM_MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int row = warp * (16 * FM_MT) + mt * 16 + g + 8 * (j >> 1),
                          tok = nt * 8 + 2 * t + (j & 1);
                part[tok * FM_BM + row] = acc[mt][nt][j];
            }
    fm_cluster_store(a, part, TOK, (int64_t)blockIdx.x * FM_BM);
}

typedef void (*fmm_fn)(lin_args, int, int);

int dsv4_lin_fmm_ok(const lin_args *a)
{
    return a->fmt == DSV4_FORMAT_FP8 && a->skind != LIN_SCALE_NONE && a->N >= 1 && a->N <= 64 &&
           a->cols % 128 == 0 && a->row_bytes % 16 == 0 && (uintptr_t)a->data % 16 == 0;
}

/* The K split: *ks slices of *spc steps. The most slices (two steps each at least) whose grid
 * runs in one wave: a cluster's CTAs (one per SM here) must share a GPC, and the H100 holds 15
 * clusters of 8 at once (ncu, Max Active Clusters), so a split grid keeps to FM_SPLIT_CTAS; 16
 * clusters of 7 ran in two waves too (Flash wo_b), 16 of 6 in one, so more than 8 clusters
 * take at most 6 slices. */
static void fm_plan(const lin_args *a, int *ks, int *spc)
{
    const int64_t nsteps = a->cols / 128;
    const int64_t ctas = (a->nrows + FM_BM - 1) / FM_BM * a->groups;
    const int kmax = ctas > 8 ? 6 : FM_KS_MAX;
    int k = 1;
    for (int j = 2; j <= kmax; j++)
        if (ctas * j <= FM_SPLIT_CTAS && nsteps >= 2 * j) k = j;
    *spc = (int)((nsteps + k - 1) / k);
    *ks = (int)((nsteps + *spc - 1) / *spc); /* no empty slices */
}

/* Measured against MMA (H100, the Limits above): faster at N <= 32 on every Flash shape; at
 * N > 32 on all but grids of more than 8 clusters of 7-8 CTAs (Flash wo_b: 16 x 7, two waves,
 * 115 us against MMA's 100; 8 x 8, the shared expert's w1, runs in one: 26 against 33), which
 * fm_plan no longer makes (wo_b at 16 x 6: N = 32 39.7 us, N = 64 67.1 against MMA's 95.3 /
 * 97.6, test_gpu_linear graph replay, H100). */
int dsv4_lin_fmm_wins(const lin_args *a)
{
    if (a->N <= 32) return 1;
    int ks, spc;
    fm_plan(a, &ks, &spc);
    const int64_t clusters = (a->nrows + FM_BM - 1) / FM_BM * a->groups;
    return !(ks >= 7 && clusters > 8);
}

dsv4_status dsv4_lin_launch_fmm(const lin_args *a, cudaStream_t st)
{
    const int nt8 = a->N > 32;
    const fmm_fn fn = nt8 ? fmm_kernel<8> : fmm_kernel<4>;
    const int smem = nt8 ? fm_shape<8>::BYTES : fm_shape<4>::BYTES;
    int ks, spc;
    fm_plan(a, &ks, &spc);
    const int al = (uintptr_t)a->x % 16 == 0 && a->ldx % 4 == 0 && a->xg % 4 == 0;
    CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));

    cudaLaunchConfig_t cfg = {};
    cfg.gridDim =
        dim3((unsigned)((a->nrows + FM_BM - 1) / FM_BM), (unsigned)a->groups, (unsigned)ks);
    cfg.blockDim = dim3(FM_THREADS, 1, 1);
    cfg.dynamicSmemBytes = (size_t)smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = (unsigned)ks;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    CUDA_TRY(cudaLaunchKernelEx(&cfg, fn, *a, spc, al));
    return DSV4_OK;
}
