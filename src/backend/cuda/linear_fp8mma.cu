/*
 * linear_fp8mma.cu - FP8 projections for 17..64 rows of x on tensor cores (FMM): y = x W^T with
 * e4m3 weights in 128 x 128 scale blocks (the attention projections, the shared expert, the
 * indexer's wq_b at batched decode). Dispatched by bk_linear.cu between MMV (N <= 16) and the
 * tiled MMA kernel (N > 64, other formats). Also MMX: dsv4_bk_linear_multi's entries (FP8 and
 * BF16) at 3..64 rows as one launch of the same scheme.
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
 *
 * MMX (below): dsv4_bk_linear_multi's FP8 and BF16 entries at 9..64 rows in one FMM-style
 * launch, CTAs shared in proportion to bytes. H100, one call, test_gpu_linear --multi-bench
 * (graph replay; one launch per entry -> MMX): Flash CSA layer's projections of h (wq_a, wkv
 * FP8; compressor, indexer compressor, weights_proj BF16; 27.8 MB) N = 16 73.7 -> 21.6 us, 32
 * 146.6 -> 31.0, 64 167.7 -> 48.6 (19% of copy); HCA layer (14.7 MB) 39.2 -> 15.0, 76.1 -> 22.0,
 * 98.5 -> 34.9. Engine (dsv4 bench --shape flash --layers 4 --contexts 4096, same call, two
 * runs each): batch 32 6.299 / 6.298 -> 5.955 / 5.977 ms, batch 64 9.673 / 9.668 -> 9.310 /
 * 9.311; batch 1, 8 (the GEMV's multi) unchanged. The kernel with NT = 8 spills 32 bytes.
 *
 * x conversion (fm_convert, FMM and MMX): a block's max |x| by one redux on the bits in place of
 * five shuffles, two (token, block) tasks a warp at once; bit-identical. H100, one call,
 * --fmm-bench graph replay, us, N = 32 / 64 (before -> after): wq_b 33.9 -> 33.1 / 58.3 -> 56.4,
 * wo_b 37.5 -> 35.9 / 64.5 -> 61.8, wo_a 37.1 -> 36.0 / 64.6 -> 62.5, wq_a 15.2 -> 14.8 / 25.6 ->
 * 25.2, indexer wq_b 15.1 -> 14.7 / 24.5 -> 23.9; MMX CSA N = 64 48.5 -> 46.8, HCA 34.8 -> 33.1;
 * dsv4 bench (Flash, 4 layers, context 4096, 2 runs each) batch 32 5.982 / 6.016 -> 5.951 /
 * 5.986 ms, batch 64 9.338 / 9.342 -> 9.298 / 9.305 (attn.q + attn.out at batch 64 0.711 ->
 * 0.690 ms/step), batch 1 and 8 unchanged. Measured in the same call and not kept: each step's
 * weight scales loaded a step ahead (sum of the ten --fmm-bench lines 375.5 -> 376.6 us: no
 * gain), two raw x buffers so the next chunk's copy is issued before this one is converted
 * (370.7), all three together (366.5; the conversion alone 364.1). ncu (wq_b N = 64, 128 CTAs):
 * DRAM 15% of peak, L1/shared pipe 59%, a warp issues every 10.7 cycles (10.3 with the new
 * conversion): latency-bound, x's share of the shared-memory traffic being the next suspect.
 *
 * FMM on wgmma (fw_step, session 7): a warpgroup's 64 rows as one wgmma.m64nNk16 per k16 step,
 * A = the weight registers (converted as before), B = x's hi / lo planes read from shared memory
 * by the tensor cores through a matrix descriptor, in place of per warp 16 mma.sync a step each
 * fed by ld.shared of x fragments. Same numerics but the f32 summation order within a step (hi
 * of the 128 columns, then lo); test_gpu_linear's bound unchanged (fmm worst err/bound 0.151,
 * lo-free x 0.153). H100, one call, --fmm-bench graph replay, us, N = 32 / 64 (mma.sync ->
 * wgmma): wq_b 33.5 -> 30.7 / 57.5 -> 50.1, wo_b 35.7 -> 33.7 / 62.4 -> 53.7, wo_a 35.9 -> 33.4
 * / 62.5 -> 52.9, wq_a 15.0 -> 13.7 / 25.4 -> 21.7, indexer wq_b 14.6 -> 13.8 / 23.5 -> 21.2.
 * dsv4 bench (context 4096, 2 runs each): Flash 4 layers batch 32 5.775 / 5.801 -> 5.729 / 5.749
 * ms, batch 64 9.064 / 9.066 -> 9.028 / 9.030 (attn.q + attn.out 0.655 -> 0.618 ms/step); Pro 2
 * layers batch 64 11.558 / 11.565 -> 11.494 / 11.493; batch 1, 8 unchanged. ncu (wq_b N = 64,
 * 51 us): DRAM 21% busy, L2 47%, issue slots 36%, 0.89 eligible warps per scheduler, a warp
 * issues every 9.9 cycles: still latency-bound (each step: convert, wgmma, wait, promote, with
 * one step of weights in registers; 128 registers, NT = 8 spills 24 bytes). Not kept: the L2
 * prefetch 4 steps ahead (FM_PD 4), 1-4% slower.
 *
 * MMX on wgmma too (fw_step, fw_step_bf16 for the BF16 entries; a warpgroup = one K warp's 64
 * rows): H100, one call, --multi-bench graph replay, us, N = 16 / 32 / 64 (mma.sync -> wgmma):
 * CSA 22.0 -> 21.1 / 28.5 -> 26.0 / 45.5 -> 37.5, HCA 14.9 -> 14.8 / 20.6 -> 19.2 / 33.2 -> 30.1;
 * mmx worst err/bound 0.359 (lo-free x 0.604, as before). dsv4 bench Flash 4 layers (context
 * 4096, 2 runs each): batch 16 3.623 / 3.607 -> 3.620 / 3.603 ms, 32 5.751 / 5.755 -> 5.747 /
 * 5.730, 64 8.979 / 8.982 -> 8.971 / 8.972 (attn.proj 0.152 -> 0.143 ms/step); Pro 2 layers
 * batch 64 11.470 / 11.461 -> 11.470 / 11.447; batch 1, 8 unchanged. The kernels spill more
 * (NT 2 / 4 / 8: 16 / 24 / 152 bytes; the A fragments of a step's 8 k16 steps stay live).
 */
#include "backend/cuda/linear_common.cuh"

#include <string.h>

/* ---- FMM --------------------------------------------------------------------------------------
 * CTA: 16 warps, each 16 weight rows (FM_MT = 1 tile) x all tokens (NT 8-token tiles), so
 * a CTA covers FM_BM = 256 rows over its K slice of spc steps (a step = 128 columns = one weight
 * scale block). Lane (g, t) loads 16 bytes at 16 t and at 64 + 16 t of rows g and g + 8 of each
 * tile; MMV's column map (register word w of chunk u holds columns 64 u + 16 t + 4 w .. + 3, mma
 * q = 4 u + w of the step) lets the registers be used as loaded. A warpgroup's four warps (64
 * rows) multiply as one wgmma per k16 step (fw_step, below); the next step's chunks are requested
 * as soon as the step's A fragments are made.
 *
 * x goes through shared memory in chunks of XC steps: the raw f32 rows of the next chunk are
 * copied by cp.async while the current one is multiplied; a chunk is then converted in place to
 * the planes hi, lo (wgmma's B layout, fw_step) and 2^-e [TOK][XC]. After the K loop the CTA's
 * partial [TOK][FM_BM] goes to the same shared memory and the KS CTAs of the cluster (the K slices)
 * add up in rank order (fm_cluster_store). Token tiles past N multiply zeros (their outputs are not
 * stored). */
enum { FM_THREADS = 512, FM_WARPS = 16, FM_MT = 1, FM_BM = FM_WARPS * FM_MT * 16, FM_KS_MAX = 8 };
/* Steps ahead of the loop whose weight lines are prefetched into L2: the registers hold one step
 * ahead (all the kernel's registers allow), the L2 prefetch keeps more bytes in flight. */
enum { FM_PD = 2 };
/* CTAs of a grid split over clusters (fm_plan) */
enum { FM_SPLIT_CTAS = 120 };

/* Shared-memory layout for NT token tiles (XC = 16 / NT steps per chunk, TOK = 8 NT tokens):
 * raw f32 [TOK][XC 128], planes hi, lo (WPLANE bytes each), 2^-e [TOK][XC] f32. */
template <int NT> struct fm_shape {
    static constexpr int XC = 16 / NT, TOK = 8 * NT;
    static constexpr int RAW = TOK * XC * 128 * 4; /* bytes */
    /* a plane holds per 128 columns 8 k16 regions of QB bytes (wgmma's B operand, fw_step; 16
     * bytes of padding so that a warp's conversion stores meet 32 banks) */
    static constexpr int QB = TOK * 32 + 16, WPLANE = XC * 8 * QB; /* bytes */
    static constexpr int XINV = TOK * XC * 4;                      /* bytes */
    static constexpr int BYTES = RAW + 2 * WPLANE + XINV;
    static_assert(TOK * FM_BM * 4 <= BYTES, "the partial tile fits the staging area");
    static_assert(2 * TOK * FM_BM * 4 <= BYTES, "MMX: the K warps' partials and their sum fit");
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

/* |x| bits of v's largest non-NaN element (0 when all are NaN), as fmaxf would order them. */
__device__ __forceinline__ uint32_t fm_absmax_bits(float4 v)
{
    const float f[4] = {v.x, v.y, v.z, v.w};
    uint32_t m = 0u;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t u = __float_as_uint(f[k]) & 0x7fffffffu;
        m = max(m, u > 0x7f800000u ? 0u : u);
    }
    return m;
}

/* One (token n, block b) task of fm_convert: v (this lane's four columns), m its block's max
 * |x| bits. */
template <int NT>
__device__ __forceinline__ int fm_convert_one(float4 v, uint32_t mbits, int n, int b, uint4 *hi,
                                              uint4 *lo, float *xinv)
{
    constexpr int XC = fm_shape<NT>::XC;
    const int lane = threadIdx.x & 31;
    /* lane j: chunk u = j / 16, t = j / 4 % 4, word w = j % 4 -> mma q = 4 u + w */
    const int u = lane >> 4, t = (lane >> 2) & 3, w = lane & 3, q = 4 * u + w;
    /* max in [2^(E-127), 2^(E-126)) -> e = 141 - E puts it in [2^14, 2^15); capped so that 2^e
     * and 2^-e are normal f32 (max = inf: E = 255, e = -114; a block of NaNs alone: max 0,
     * e = 126, its products NaN either way) */
    const int e = min(126, 141 - (int)(mbits >> 23));
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
    /* B of k16 step q: h[0] at k 2t, 2t + 1 (core matrix 0), h[1] at k 2t + 8, 2t + 9 (core
     * matrix 1, 128 bytes on) */
    const int off = (b * 8 + q) * fm_shape<NT>::QB + (n >> 3) * 256 + (n & 7) * 16 + 4 * t;
    unsigned char *hb = (unsigned char *)(void *)hi, *lb = (unsigned char *)(void *)lo;
    *(uint32_t *)(void *)(hb + off) = h[0], *(uint32_t *)(void *)(hb + off + 128) = h[1];
    *(uint32_t *)(void *)(lb + off) = l[0], *(uint32_t *)(void *)(lb + off + 128) = l[1];
    return (l[0] | l[1]) != 0u;
}

/* raw -> the planes and 2^-e of blocks [0, xn); a warp per (token, block), lane j its columns
 * 4 j .. 4 j + 3, two tasks a warp at once, the block's max |x| by one warp reduction (redux on
 * the bits; NaNs ignored as fmaxf does). Returns whether any lo this thread wrote is nonzero. */
template <int NT>
__device__ __forceinline__ int fm_convert(const float *raw, uint4 *hi, uint4 *lo, float *xinv,
                                          int N, int xn)
{
    constexpr int XC = fm_shape<NT>::XC, TOK = fm_shape<NT>::TOK;
    static_assert(TOK * XC % (2 * FM_WARPS) == 0, "whole task pairs");
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int lo_any = 0;
    for (int task = warp; task < TOK * XC; task += 2 * FM_WARPS) {
        float4 v[2];
        uint32_t m[2];
#pragma unroll
        for (int p = 0; p < 2; p++) {
            const int tk = task + p * FM_WARPS, n = tk / XC, b = tk % XC;
            v[p] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (n < N && b < xn)
                v[p] = *(const float4 *)(const void *)(raw + n * (XC * 128) + b * 128 + 4 * lane);
        }
#pragma unroll
        for (int p = 0; p < 2; p++) m[p] = __reduce_max_sync(0xffffffffu, fm_absmax_bits(v[p]));
#pragma unroll
        for (int p = 0; p < 2; p++) {
            const int tk = task + p * FM_WARPS, n = tk / XC, b = tk % XC;
            if (b < xn) lo_any |= fm_convert_one<NT>(v[p], m[p], n, b, hi, lo, xinv);
        }
    }
    /* the planes are read by wgmma (the async proxy) after the caller's barrier */
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    return lo_any;
}

/* ---- FMM's wgmma (fw_*) --------------------------------------------------------------------
 * A warpgroup's four warps (64 rows) multiply as one wgmma.m64nNk16 (N = TOK) per k16 step: A = the
 * weight registers (per warp the same fragment as mma.m16n8k16's A, so FMM's column map and e4m3 ->
 * f16 conversion carry over), B = x's hi or lo plane read from shared memory by the tensor cores
 * through a matrix descriptor (no ld.shared per mma). B layout (K-major, no swizzle): per k16 step
 * q of step b a region at (8 b + q) QB of TOK / 8 core-matrix pairs 256 bytes apart (SBO), the
 * pair's k 0..7 then k 8..15 (LBO 128), a core matrix 8 tokens x 16 bytes. The accumulator (m64nN
 * f32) is per warp the same fragment as FMM's tmp [nt][4]. */

/* Matrix descriptor of a K-major B at shared address s: start >> 4, LBO 128, SBO 256, no
 * swizzle. */
__device__ __forceinline__ uint64_t fw_desc(uint32_t s)
{
    return (uint64_t)((s & 0x3ffffu) >> 4) | ((uint64_t)(128 >> 4) << 16) |
           ((uint64_t)(256 >> 4) << 32);
}

/* d [NT][4] (+)= A (a: the m64k16 fragment of this warp's 16 rows) . B (desc: k16 x 8 NT), f32;
 * f16 operands (BF: bf16); acc = 0: d = A . B. */
template <int NT, int BF>
__device__ __forceinline__ void fw_wgmma(float (&d)[NT][4], const uint32_t (&a)[4], uint64_t desc,
                                         int acc);

/* The specialisations, one per (NT, operand type T: "f16" / "bf16"): the asm of each shape
 * spelled out (its accumulator list is NT * 4 registers). */
#define FW_ASM_HEAD(ACC, SHAPE, T)                                                                 \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %" ACC ", 0;\nwgmma.mma_async.sync.aligned." SHAPE ".f32." T \
    "." T " "
#define FW_ASM_TAIL "p, 1, 1, 0;\n}\n"
#define FW_D2(d)                                                                                   \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),      \
        "+f"(d[1][2]), "+f"(d[1][3])
#define FW_D4(d)                                                                                   \
    FW_D2(d), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]),           \
        "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
#define FW_D8(d)                                                                                   \
    FW_D4(d), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),           \
        "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]),  \
        "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define FW_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc)
#define FW_WGMMA2(BF, T)                                                                           \
    template <>                                                                                    \
    __device__ __forceinline__ void fw_wgmma<2, BF>(float(&d)[2][4], const uint32_t(&a)[4],        \
                                                    uint64_t desc, int acc)                        \
    {                                                                                              \
        asm volatile(FW_ASM_HEAD("13", "m64n16k16", T) "{%0, %1, %2, %3, %4, %5, %6, %7}, "        \
                                                       "{%8, %9, %10, %11}, %12, " FW_ASM_TAIL     \
                     : FW_D2(d)                                                                    \
                     : FW_IN);                                                                     \
    }
#define FW_WGMMA4(BF, T)                                                                           \
    template <>                                                                                    \
    __device__ __forceinline__ void fw_wgmma<4, BF>(float(&d)[4][4], const uint32_t(&a)[4],        \
                                                    uint64_t desc, int acc)                        \
    {                                                                                              \
        asm volatile(FW_ASM_HEAD("21", "m64n32k16", T) "{%0, %1, %2, %3, %4, %5, %6, %7, "         \
                                                       "%8, %9, %10, %11, %12, %13, %14, %15}, "   \
                                                       "{%16, %17, %18, %19}, %20, " FW_ASM_TAIL   \
                     : FW_D4(d)                                                                    \
                     : FW_IN);                                                                     \
    }
#define FW_WGMMA8(BF, T)                                                                           \
    template <>                                                                                    \
    __device__ __forceinline__ void fw_wgmma<8, BF>(float(&d)[8][4], const uint32_t(&a)[4],        \
                                                    uint64_t desc, int acc)                        \
    {                                                                                              \
        asm volatile(FW_ASM_HEAD("37", "m64n64k16", T) "{%0, %1, %2, %3, %4, %5, %6, %7, "         \
                                                       "%8, %9, %10, %11, %12, %13, %14, %15, "    \
                                                       "%16, %17, %18, %19, %20, %21, %22, %23, "  \
                                                       "%24, %25, %26, %27, %28, %29, %30, %31}, " \
                                                       "{%32, %33, %34, %35}, %36, " FW_ASM_TAIL   \
                     : FW_D8(d)                                                                    \
                     : FW_IN);                                                                     \
    }
FW_WGMMA2(0, "f16")
FW_WGMMA4(0, "f16")
FW_WGMMA8(0, "f16")
FW_WGMMA2(1, "bf16")
FW_WGMMA4(1, "bf16")
FW_WGMMA8(1, "bf16")

/* One step's wgmmas: tmp [NT][4] = the step's weight chunks wv
 * [2 rows][2] times the staged x (hq, lq: shared addresses of this step's hi / lo regions);
 * LO: with the lo plane. The next step's chunks (sn >= 0) are loaded into wv once the A
 * fragments are made; the fragments stay live until the wgmmas are waited for. */
template <int NT, bool LO>
__device__ __forceinline__ void
fw_step(uint4 (&wv)[FM_MT][2][2], const uint8_t *const (&wp)[FM_MT][2], const bool (&wok)[FM_MT][2],
        int sn, uint32_t hq, uint32_t lq, float (&tmp)[FM_MT][NT][4])
{
    constexpr int QB = fm_shape<NT>::QB;
    uint32_t af[8][4];
#pragma unroll
    for (int q = 0; q < 8; q++) {
        const uint32_t w0 = fm_word(wv[0][0][q >> 2], q & 3);
        const uint32_t w1 = fm_word(wv[0][1][q >> 2], q & 3);
        af[q][0] = fm_e4m3x2(w0), af[q][2] = fm_e4m3x2(w0 >> 16);
        af[q][1] = fm_e4m3x2(w1), af[q][3] = fm_e4m3x2(w1 >> 16);
    }
    if (sn >= 0)
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int u = 0; u < 2; u++)
                if (wok[0][r])
                    wv[0][r][u] = __ldcs(
                        (const uint4 *)(const void *)(wp[0][r] + (int64_t)sn * 128 + 64 * u));
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int q = 0; q < 8; q++) fw_wgmma<NT, 0>(tmp[0], af[q], fw_desc(hq + q * QB), q > 0);
    if constexpr (LO)
#pragma unroll
        for (int q = 0; q < 8; q++) fw_wgmma<NT, 0>(tmp[0], af[q], fw_desc(lq + q * QB), 1);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    /* the compiler keeps the fragments and reads the sums only after the wait */
#pragma unroll
    for (int q = 0; q < 8; q++)
#pragma unroll
        for (int i = 0; i < 4; i++) asm volatile("" : "+r"(af[q][i])::"memory");
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 4; j++) asm volatile("" : "+f"(tmp[0][nt][j])::"memory");
}

/* lin_cluster_store for part [TOK][bm] (tokens < N only; bm a multiple of 4), four rows a load:
 * each rank adds up its share of the tile over the ranks in rank order and writes it finished. */
__device__ __forceinline__ void fm_cluster_store(const lin_args &a, float *part, int tok,
                                                 int64_t n0, int bm = FM_BM)
{
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync(); /* every rank's partial is in place */
    const int ks = (int)cl.num_blocks(), rank = (int)cl.block_rank();
    const int Q = bm / 4, total = (int)min(a.N, (int64_t)tok) * Q, per = (total + ks - 1) / ks;
    const int e1 = min(rank * per + per, total);
    for (int e = rank * per + (int)threadIdx.x; e < e1; e += FM_THREADS) {
        const int m = e / Q, n = (e - m * Q) * 4;
        float4 *p = (float4 *)(void *)(part + m * bm + n);
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
// [z spc, (z+1) spc), on wgmma (a warpgroup's 64 rows as one operand). Dynamic shared memory:
// fm_shape<NT>::BYTES.
template <int NT>
__global__ void __launch_bounds__(FM_THREADS, 1) fmm_kernel(lin_args a, int spc, int al)
{
    DSV4_PDL_WAIT();
    extern __shared__ __align__(128) unsigned char fm_sm[];
    typedef fm_shape<NT> S;
    constexpr int XC = S::XC, TOK = S::TOK;
    float *raw = (float *)(void *)fm_sm;
    uint4 *hip = (uint4 *)(void *)(fm_sm + S::RAW), *lop = hip + S::WPLANE / 16;
    float *xinv = (float *)(void *)(lop + S::WPLANE / 16);
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
            const uint32_t hq = (uint32_t)__cvta_generic_to_shared(hip) + b * 8 * S::QB,
                           lq = (uint32_t)__cvta_generic_to_shared(lop) + b * 8 * S::QB;
            if (has_lo)
                fw_step<NT, true>(wv, wp, wok, more ? s + 1 : -1, hq, lq, tmp);
            else
                fw_step<NT, false>(wv, wp, wok, more ? s + 1 : -1, hq, lq, tmp);
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

    cudaLaunchAttribute attr;
    const dim3 grid((unsigned)((a->nrows + FM_BM - 1) / FM_BM), (unsigned)a->groups, (unsigned)ks);
    const cudaLaunchConfig_t cfg = lin_cluster_cfg(grid, FM_THREADS, (size_t)smem, ks, st, &attr);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, fn, *a, spc, al));
    return DSV4_OK;
}

/* ---- MMX: dsv4_bk_linear_multi at 3..64 rows of x, one launch ---------------------------------
 * The projections of one input (a layer's wq_a and wkv in FP8, the compressors' and the indexer's
 * BF16 matrices: 0.5-8 MB each) as one FMM-style launch instead of one launch per entry (each
 * too small to fill the GPU: 15-25 us apiece at N = 64). Entry i owns the CTAs [cta0[i],
 * cta0[i + 1]) of the grid's x, one per tile of 16 RW of its rows; the grid's z is the K split,
 * one cluster of KS CTAs per tile as FMM (KS is the same for every entry; each entry's slice is
 * its own spc 128-column blocks).
 *
 * A CTA's 16 warps are RW row warps (16 rows each) x KW = 16 / RW K warps, a warpgroup's four
 * warps one K warp's 64 consecutive rows (wgmma, FMM's fw_step): K warp kw takes the
 * steps s = kw (mod KW) of the slice, and the KW partial sums are added in warp order in shared
 * memory before the cluster's rank-order sum. RW is 16 (FP8) or 8 (BF16: twice the bytes per
 * row), halved for small entries or to fill the GPU (mx_plan), so that CTAs carry about the
 * same bytes: the CTAs are shared in proportion to bytes.
 *
 * FP8 entries: FMM's numerics (x 2^e split into f16 hi + lo per 128-column block, each step's
 * f32 sum times 2^-e times the weight block's scale). BF16 entries: the weights as stored, x
 * split as hi = bf16(x), lo = bf16(x - hi) (|x - hi - lo| <= 2^-18 |x|, as the tiled MMA kernel
 * and MMV), exact products summed in f32 per 64-column step and the steps' sums added to the
 * total in order (one f32 chain over all of K at K split 1 went past test_gpu_linear's bound, by
 * up to 1.108x, on x with lo-free blocks; per step: worst 0.606). A BF16 step is 64 columns (128
 * bytes of a row, two 16-byte chunks a lane as FP8); k16 step q = 2 u + j of a step takes
 * columns 32 u + 8 t + 4 j + 0..3 (chunk u, words 2 j, 2 j + 1), its B the plane region 4 bs + q
 * of BF16 step bs (fw_step_bf16): per 128 columns as many regions as FP8. */
enum { MX_RW_MIN_LOG2 = 2 };

typedef struct mx_multi {
    lin_args e[DSV4_BK_LINEAR_MULTI_MAX];
    int cta0[DSV4_BK_LINEAR_MULTI_MAX + 1];
    int spc[DSV4_BK_LINEAR_MULTI_MAX];     /* 128-column blocks per cluster rank */
    int rw_log2[DSV4_BK_LINEAR_MULTI_MAX]; /* row warps per CTA, log2 */
    int al[DSV4_BK_LINEAR_MULTI_MAX];      /* x rows 16-byte aligned */
    int n;
} mx_multi;

/* raw -> BF16 planes (no 2^e) of 128-column blocks [0, xn); a warp per (token, block), lane j
 * its columns 4 j .. 4 j + 3: BF16 step 2 b + j / 16, columns 32 u + 8 t + 4 jj of it. Returns
 * whether any lo this thread wrote is nonzero. */
template <int NT>
__device__ __forceinline__ int mx_convert_bf16(const float *raw, uint4 *hi, uint4 *lo, int N,
                                               int xn)
{
    constexpr int XC = fm_shape<NT>::XC, TOK = fm_shape<NT>::TOK;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int cc = (4 * lane) & 63, u = cc >> 5, t = (cc >> 3) & 3, jj = (cc >> 2) & 1;
    int lo_any = 0;
    for (int task = warp; task < TOK * XC; task += FM_WARPS) {
        const int n = task / XC, b = task % XC;
        if (b >= xn) continue; /* warp-uniform */
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (n < N) v = *(const float4 *)(const void *)(raw + n * (XC * 128) + b * 128 + 4 * lane);
        const float f[4] = {v.x, v.y, v.z, v.w};
        uint32_t h[2], l[2];
#pragma unroll
        for (int p = 0; p < 2; p++) {
            const __nv_bfloat162 hv = __floats2bfloat162_rn(f[2 * p], f[2 * p + 1]);
            const float2 hb = __bfloat1622float2(hv);
            const __nv_bfloat162 lv = __floats2bfloat162_rn(f[2 * p] - hb.x, f[2 * p + 1] - hb.y);
            memcpy(&h[p], &hv, 4);
            memcpy(&l[p], &lv, 4);
        }
        lo_any |= (l[0] | l[1]) != 0u;
        const int bs = 2 * b + (lane >> 4);
        /* k16 step q = 2 u + jj of BF16 step bs: region 4 bs + q (FMM's layout, fw_step) */
        const int off =
            (bs * 4 + 2 * u + jj) * fm_shape<NT>::QB + (n >> 3) * 256 + (n & 7) * 16 + 4 * t;
        unsigned char *hb = (unsigned char *)(void *)hi, *lb = (unsigned char *)(void *)lo;
        *(uint32_t *)(void *)(hb + off) = h[0], *(uint32_t *)(void *)(hb + off + 128) = h[1];
        *(uint32_t *)(void *)(lb + off) = l[0], *(uint32_t *)(void *)(lb + off + 128) = l[1];
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    return lo_any;
}

/* One BF16 step's wgmmas (MMX on wgmma): tmp [NT][4] = the step's weight chunks wv [2 rows][2]
 * (64 columns; mma q = 2 u + h takes words 2 h, 2 h + 1 of chunk u) times the staged x (hq, lq:
 * shared addresses of the step's 4 hi / lo regions); the next step's chunks (sn >= 0) are loaded
 * once the A fragments are made. */
template <int NT, bool LO>
__device__ __forceinline__ void
fw_step_bf16(uint4 (&wv3)[1][2][2], const uint8_t *const (&wp3)[1][2], const bool (&wok3)[1][2],
             int sn, uint32_t hq, uint32_t lq, float (&tmp)[NT][4])
{
    uint4(&wv)[2][2] = wv3[0];
    constexpr int QB = fm_shape<NT>::QB;
    uint32_t af[4][4];
#pragma unroll
    for (int q = 0; q < 4; q++) {
        const int u = q >> 1, h = q & 1;
        af[q][0] = fm_word(wv[0][u], 2 * h), af[q][2] = fm_word(wv[0][u], 2 * h + 1);
        af[q][1] = fm_word(wv[1][u], 2 * h), af[q][3] = fm_word(wv[1][u], 2 * h + 1);
    }
    if (sn >= 0)
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int u = 0; u < 2; u++)
                if (wok3[0][r])
                    wv[r][u] = __ldcs(
                        (const uint4 *)(const void *)(wp3[0][r] + (int64_t)sn * 128 + 64 * u));
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int q = 0; q < 4; q++) fw_wgmma<NT, 1>(tmp, af[q], fw_desc(hq + q * QB), q > 0);
    if constexpr (LO)
#pragma unroll
        for (int q = 0; q < 4; q++) fw_wgmma<NT, 1>(tmp, af[q], fw_desc(lq + q * QB), 1);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int i = 0; i < 4; i++) asm volatile("" : "+r"(af[q][i])::"memory");
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 4; j++) asm volatile("" : "+f"(tmp[nt][j])::"memory");
}

// One entry's tile: x [N, cols] (ldx), W rows row0 + tile 16 RW + [0, 16 RW) (of nrows) ->
// y [N, nrows] (ldy), the cluster's sum over its ranks' slices of spc 128-column blocks; BF: the
// weights are BF16 (else FP8). sm: the dynamic shared memory (fm_shape<NT>::BYTES).
template <int NT, int BF>
__device__ __forceinline__ void mx_body(const lin_args &a, int64_t tile, int rw_log2, int spc,
                                        int al, unsigned char *sm)
{
    typedef fm_shape<NT> S;
    constexpr int XC = S::XC, TOK = S::TOK;
    constexpr int SPB = BF ? 2 : 1;          /* steps per 128-column block */
    constexpr int QS = (BF ? 4 : 8) * S::QB; /* plane bytes per step */
    float *raw = (float *)(void *)sm;
    uint4 *hip = (uint4 *)(void *)(sm + S::RAW), *lop = hip + S::WPLANE / 16;
    float *xinv = (float *)(void *)(lop + S::WPLANE / 16);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    /* a warpgroup's four warps: one K warp, 64 consecutive rows (RW >= 4) */
    const int KW = FM_WARPS >> rw_log2, kw = warp >> rw_log2, rw = warp & ((1 << rw_log2) - 1);
    const int BM = 16 << rw_log2;
    const int N = (int)a.N;
    const int64_t b0 = (int64_t)blockIdx.z * spc, k0 = b0 * 128;
    const int nbs = (int)max((int64_t)0, min((int64_t)spc, a.cols / 128 - b0));
    const int nst = nbs * SPB;

    /* this lane's weight rows g and g + 8 of its warp's 16 ([1]: fw_step's one tile) */
    const uint8_t *wp[1][2];
    int64_t srow[2];
    bool wok[1][2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t row = tile * BM + rw * 16 + g + 8 * r;
        wok[0][r] = row < a.nrows;
        const int64_t arow = a.row0 + (wok[0][r] ? row : 0);
        srow[r] = arow / 128;
        wp[0][r] = a.data + arow * a.row_bytes + k0 * (BF ? 2 : 1) + 16 * t;
    }
    for (int j = 1; j <= FM_PD && kw + KW * j < nst; j++)
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int u = 0; u < 2; u++)
                if (wok[0][r]) fm_prefetch_l2(wp[0][r] + (int64_t)(kw + KW * j) * 128 + 64 * u);
    if (nbs > 0) fm_issue_raw<NT>(a, raw, k0, 0, min(XC, nbs), al != 0);
    uint4 wv[1][2][2];
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int u = 0; u < 2; u++) {
            wv[0][r][u] = make_uint4(0u, 0u, 0u, 0u);
            if (wok[0][r] && kw < nst)
                wv[0][r][u] =
                    __ldcs((const uint4 *)(const void *)(wp[0][r] + (int64_t)kw * 128 + 64 * u));
        }

    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[nt][j] = 0.0f;

    for (int c = 0; c < nbs; c += XC) {
        const int xn = min(XC, nbs - c);
        fm_cp_wait();
        __syncthreads(); /* raw landed for all; the planes of the last chunk are no longer read */
        const int lo_mine = BF ? mx_convert_bf16<NT>(raw, hip, lop, N, xn)
                               : fm_convert<NT>(raw, hip, lop, xinv, N, xn);
        const int has_lo = __syncthreads_or(lo_mine);
        if (c + XC < nbs) fm_issue_raw<NT>(a, raw, k0, c + XC, min(XC, nbs - c - XC), al != 0);

        const int sb0 = c * SPB, sb1 = (c + xn) * SPB;
        int s = sb0 + ((kw - sb0) % KW + KW) % KW; /* this warp's first step of the chunk */
        for (; s < sb1; s += KW) {
            const int b = s - sb0;
            const int sn = s + KW < nst ? s + KW : -1;
            if (s + KW * (1 + FM_PD) < nst)
#pragma unroll
                for (int r = 0; r < 2; r++)
#pragma unroll
                    for (int u = 0; u < 2; u++)
                        if (wok[0][r])
                            fm_prefetch_l2(wp[0][r] + (int64_t)(s + KW * (1 + FM_PD)) * 128 +
                                           64 * u);
            const uint32_t hq = (uint32_t)__cvta_generic_to_shared(hip) + b * QS,
                           lq = (uint32_t)__cvta_generic_to_shared(lop) + b * QS;
            if constexpr (BF) {
                /* the step's 64 columns summed apart, then added to the total: a chain of
                 * K / 64 adds instead of one f32 chain over all K (whose rounding went past
                 * test_gpu_linear's bound at K split 1) */
                float tmp[NT][4];
                if (has_lo)
                    fw_step_bf16<NT, true>(wv, wp, wok, sn, hq, lq, tmp);
                else
                    fw_step_bf16<NT, false>(wv, wp, wok, sn, hq, lq, tmp);
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int j = 0; j < 4; j++) acc[nt][j] = __fadd_rn(acc[nt][j], tmp[nt][j]);
            } else {
                float tmp[1][NT][4];
                if (has_lo)
                    fw_step<NT, true>(wv, wp, wok, sn, hq, lq, tmp);
                else
                    fw_step<NT, false>(wv, wp, wok, sn, hq, lq, tmp);
                /* acc += (block sum * 2^-e) * weight block scale */
                const float ws0 = wok[0][0] ? lin_scale(a, srow[0], b0 + s) : 0.0f;
                const float ws1 = wok[0][1] ? lin_scale(a, srow[1], b0 + s) : 0.0f;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const int n0 = nt * 8 + 2 * t;
                    const float xi0 = xinv[n0 * XC + b], xi1 = xinv[(n0 + 1) * XC + b];
                    acc[nt][0] = fmaf(tmp[0][nt][0] * xi0, ws0, acc[nt][0]);
                    acc[nt][1] = fmaf(tmp[0][nt][1] * xi1, ws0, acc[nt][1]);
                    acc[nt][2] = fmaf(tmp[0][nt][2] * xi0, ws1, acc[nt][2]);
                    acc[nt][3] = fmaf(tmp[0][nt][3] * xi1, ws1, acc[nt][3]);
                }
            }
        }
    }

    /* the K warps' partials [KW][TOK][BM] over the staging area (no cp.async pending), summed
     * in warp order into [TOK][BM], then the cluster's ranks in rank order */
    __syncthreads();
    float *part = (float *)(void *)sm;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int row = rw * 16 + g + 8 * (j >> 1), tok = nt * 8 + 2 * t + (j & 1);
            part[(kw * TOK + tok) * BM + row] = acc[nt][j];
        }
    float *red = part;
    if (KW > 1) { /* the sums go behind the partials' 16 x 16 TOK floats (fm_shape: room) */
        __syncthreads();
        red = part + FM_WARPS * 16 * TOK;
        const int per = TOK * BM;
        for (int e = threadIdx.x; e < per; e += FM_THREADS) {
            float v = part[e];
            for (int w = 1; w < KW; w++) v += part[w * per + e];
            red[e] = v;
        }
    } /* fm_cluster_store's cluster barrier orders these writes before its reads */
    fm_cluster_store(a, red, TOK, tile * BM, BM);
}

// Every entry's y [N, nrows] = x [N, cols] . W^T (FP8 or BF16 weights), N <= 8 NT; grid
// (cta0[n], 1, KS) in clusters of (1, 1, KS). The CTA finds its entry, then branches on its
// format (uniform over the CTA). Dynamic shared memory: fm_shape<NT>::BYTES.
template <int NT>
__global__ void __launch_bounds__(FM_THREADS, 1) mmx_kernel(const __grid_constant__ mx_multi m)
{
    DSV4_PDL_WAIT();
    extern __shared__ __align__(128) unsigned char fm_sm[];
    int i = 0;
    while (i + 1 < m.n && (int)blockIdx.x >= m.cta0[i + 1]) i++;
    const int64_t tile = (int64_t)blockIdx.x - m.cta0[i];
    if (m.e[i].fmt == DSV4_FORMAT_FP8)
        mx_body<NT, 0>(m.e[i], tile, m.rw_log2[i], m.spc[i], m.al[i], fm_sm);
    else
        mx_body<NT, 1>(m.e[i], tile, m.rw_log2[i], m.spc[i], m.al[i], fm_sm);
}

typedef void (*mmx_fn)(mx_multi);

int dsv4_lin_mmx_ok(const lin_args *a)
{
    const int fp8 = a->fmt == DSV4_FORMAT_FP8 && a->skind != LIN_SCALE_NONE;
    return (fp8 || a->fmt == DSV4_FORMAT_BF16) && a->groups == 1 && a->N >= 1 && a->N <= 64 &&
           a->cols % 128 == 0 && a->row_bytes % 16 == 0 && (uintptr_t)a->data % 16 == 0;
}

/* Row warps (log2) of entry a at shrink d: 16 rows each, FP8 16 and BF16 8 (the same bytes per
 * CTA), d halvings, no more than the entry's rows need, at least 1 << MX_RW_MIN_LOG2. */
static int mx_rw_log2(const lin_args *a, int d)
{
    int l = (a->fmt == DSV4_FORMAT_FP8 ? 4 : 3) - d;
    while (l > MX_RW_MIN_LOG2 && (16 << (l - 1)) >= a->nrows) l--;
    return l < MX_RW_MIN_LOG2 ? MX_RW_MIN_LOG2 : l;
}

/* The grid: per shrink d (0, 1) the most K slices KS (<= 8; at most 6 past 8 clusters, as
 * fm_plan; two 128-column blocks per slice at least) whose CTAs fit FM_SPLIT_CTAS, then the
 * choice with the most CTAs, fewer tiles on ties. force_ks > 0: that KS at d = 0. */
static void mx_plan(const lin_args *as, int n, int force_ks, int *d_out, int *ks_out)
{
    int best = -1;
    *d_out = 0, *ks_out = 1;
    for (int d = 0; d <= (force_ks > 0 ? 0 : 1); d++) {
        int64_t tiles = 0, nbmin = INT64_MAX;
        for (int i = 0; i < n; i++) {
            const int64_t bm = 16 << mx_rw_log2(&as[i], d);
            tiles += (as[i].nrows + bm - 1) / bm;
            if (as[i].cols / 128 < nbmin) nbmin = as[i].cols / 128;
        }
        int k = 1;
        const int kmax = tiles > 8 ? 6 : FM_KS_MAX;
        for (int j = 2; j <= kmax; j++)
            if (tiles * j <= FM_SPLIT_CTAS && nbmin >= 2 * j) k = j;
        if (force_ks > 0) k = force_ks;
        if (tiles * k > best) best = (int)(tiles * k), *d_out = d, *ks_out = k;
    }
}

dsv4_status dsv4_lin_launch_mmx(const lin_args *as, int n, int force_ks, cudaStream_t st,
                                int *ks_out)
{
    const int64_t N = as[0].N;
    const int nt = N <= 16 ? 2 : N <= 32 ? 4 : 8;
    const mmx_fn fn = nt == 2 ? mmx_kernel<2> : nt == 4 ? mmx_kernel<4> : mmx_kernel<8>;
    const int smem = nt == 2   ? fm_shape<2>::BYTES
                     : nt == 4 ? fm_shape<4>::BYTES
                               : fm_shape<8>::BYTES;
    int d, ks;
    mx_plan(as, n, force_ks, &d, &ks);
    mx_multi m;
    memset(&m, 0, sizeof m);
    int64_t ctas = 0;
    for (int i = 0; i < n; i++) {
        const lin_args *a = &as[i];
        m.e[i] = *a;
        m.rw_log2[i] = mx_rw_log2(a, d);
        m.spc[i] = (int)((a->cols / 128 + ks - 1) / ks);
        m.al[i] = (uintptr_t)a->x % 16 == 0 && a->ldx % 4 == 0;
        m.cta0[i] = (int)ctas;
        ctas += (a->nrows + (16 << m.rw_log2[i]) - 1) / (16 << m.rw_log2[i]);
    }
    m.cta0[n] = (int)ctas;
    m.n = n;
    *ks_out = ks;
    CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));

    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = lin_cluster_cfg(dim3((unsigned)ctas, 1, (unsigned)ks),
                                                   FM_THREADS, (size_t)smem, ks, st, &attr);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, fn, m));
    return DSV4_OK;
}
