/*
 * linear_mmv.cu - the decode projection on tensor cores (MMV): y = x W^T for N <= 16 rows of x,
 * FP8 and BF16 weights, dispatched by bk_linear.cu. Decode batches of 5-16 rows are where the
 * f32 FMA GEMV stops streaming (it re-reads x from L1 for every weight row pair and, at N = 16,
 * needs more f32 FMAs than the H100 has); on tensor cores the FMAs are free and x is read once
 * per CTA from shared memory.
 *
 * Limits (H100, test_gpu_linear): its time hardly depends on N (FP8 32 MB: 25 us at N = 1, 35 us
 * at N = 16; the lo halves cost nothing), but each CTA pays a fixed cost (x staging, one
 * exposed weight latency per step, the cluster reduction) that only large matrices amortise:
 * 70% of bandwidth on the 100 MB Pro wq_b at N = 2, 40% on the 32 MB Flash ones, 11-25% on
 * 2-8 MB. A persistent grid with weights double-buffered in shared memory is the next step.
 */
#include "backend/cuda/linear_common.cuh"

#include <string.h>

/* ---- MMV: decode GEMV on tensor cores --------------------------------------------------------
 * y [N, nrows] = x [N, cols] . W^T for N <= 16, FP8 (e4m3, 128 x 128 block scales) and BF16
 * weights, as mma.sync m16n8k16 with the weight rows as the 16-row operand A and the tokens,
 * padded to 8 (N <= 8) or 16, as the 8-column operand B; f32 accumulation. The f32 FMA GEMV
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
            if constexpr (F16) {
                float m = fmaxf(fmaxf(fabsf(v[i][0]), fabsf(v[i][1])),
                                fmaxf(fabsf(v[i][2]), fabsf(v[i][3])));
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
                /* m in [2^(E-127), 2^(E-126)) -> e = 141 - E puts it in [2^14, 2^15); capped
                 * so that 2^e and 2^-e are normal f32 (m = inf or NaN: E = 255, e = -114) */
                const int e = min(126, 141 - (int)(__float_as_uint(m) >> 23));
                sc = __uint_as_float((uint32_t)(e + 127) << 23);
                if (lane == 0) xinv[n * spc + b] = __uint_as_float((uint32_t)(127 - e) << 23);
            }
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
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const int n0 = nt * 8 + 2 * t;
                    const float xi0 = n0 < N ? xinv[n0 * spc + s] : 0.0f;
                    const float xi1 = n0 + 1 < N ? xinv[(n0 + 1) * spc + s] : 0.0f;
                    acc[mt][nt][0] = fmaf(tmp[mt][nt][0] * xi0, ws0, acc[mt][nt][0]);
                    acc[mt][nt][1] = fmaf(tmp[mt][nt][1] * xi1, ws0, acc[mt][nt][1]);
                    acc[mt][nt][2] = fmaf(tmp[mt][nt][2] * xi0, ws1, acc[mt][nt][2]);
                    acc[mt][nt][3] = fmaf(tmp[mt][nt][3] * xi1, ws1, acc[mt][nt][3]);
                }
            }
        }
    }

    /* K warps' partials [KW][TOK][BM] over the staging area, summed in warp order */
    __syncthreads();
    float *red = (float *)(void *)mv_sm;
#pragma unroll
    for (int mt = 0; mt < MV_MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int row = rw * 32 + mt * 16 + g + 8 * (j >> 1),
                          tok = nt * 8 + 2 * t + (j & 1);
                red[(kw * TOK + tok) * BM + row] = acc[mt][nt][j];
            }
    __syncthreads();
    if (KW > 1)
        for (int e = threadIdx.x; e < TOK * BM; e += MV_THREADS) {
            float sum = red[e];
            for (int k = 1; k < KW; k++) sum += red[k * TOK * BM + e];
            red[e] = sum;
        }
    lin_cluster_store(a, red, TOK, BM, 0, (int64_t)blockIdx.x * BM);
}

typedef void (*mmv_fn)(lin_args, int, int);

/* Bytes of x staging per step (slots, and the FP8 scales). */
static int64_t mmv_step_bytes(const lin_args *a)
{
    const int f16 = a->fmt == DSV4_FORMAT_FP8, NT = a->N <= 8 ? 1 : 2;
    return (int64_t)NT * (f16 ? 8 : 4) * 512 + (f16 ? 32 * NT : 0);
}

int dsv4_lin_mmv_ok(const lin_args *a)
{
    const int fp8 = a->fmt == DSV4_FORMAT_FP8 && a->skind != LIN_SCALE_NONE;
    if (!(fp8 || a->fmt == DSV4_FORMAT_BF16) || a->N > 16 || (uintptr_t)a->data % 16) return 0;
    const int64_t SC = fp8 ? 128 : 64;
    if (a->cols % SC || a->row_bytes % 16) return 0;
    /* a K slice of at most 16 clusters' ranks must fit the staging limit */
    const int64_t cap = MV_STAGE_MAX / mmv_step_bytes(a);
    return (a->cols / SC + 15) / 16 <= cap;
}

dsv4_status dsv4_lin_launch_mmv(const lin_args *a, cudaStream_t st)
{
    static const mmv_fn table[2][2] = {{mmv_kernel<0, 1>, mmv_kernel<0, 2>},
                                       {mmv_kernel<1, 1>, mmv_kernel<1, 2>}};
    const int f16 = a->fmt == DSV4_FORMAT_FP8, NT = a->N <= 8 ? 1 : 2;
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
    const mmv_fn fn = table[f16][NT - 1];
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
