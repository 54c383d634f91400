/*
 * linear_w16.cu - projections at 8..128 rows of bf16-valued x on bf16 wgmma from a shared-memory
 * ring (W16): y = x W^T with BF16 weights (the MoE gate, the LM head: their x, h, is
 * bf16-rounded) or FP8 weights in 128 x 128 scale blocks whose x is bf16 but not act_quant'd
 * (wo_a, grouped: x is the attention output o), where F8W (linear_f8w.cu) cannot take it.
 *
 * Why: those calls ran on the tiled MMA kernel (BF16 at 33..64 rows; the head at N = 64 0.86 ms,
 * 41% of copy bandwidth) and on FMM (wo_a: 46 us at N = 64 against cuBLASLt's 15). The scheme is
 * F8W's: one producer warp streams each 64-row tile's weights and the tokens through a ring of
 * stages in shared memory (TMA copies completing on an mbarrier), a consumer warpgroup (two up to
 * 32 tokens, taking the stages in turn) multiplies them with the weights as wgmma's 64-row A
 * operand and the tokens as the narrow N one.
 * FP8 weights: the consumers widen the stage's e4m3 bytes to bf16 (exact; integer ops and one
 * bf16 multiply, w16_e4m3x4) straight into wgmma's A fragment registers (wgmma with A from
 * registers, B = the tokens from shared memory), with two fragment sets so that the next stage's
 * widening runs while this stage's wgmmas do; no widened copy in shared memory, so the ring holds
 * more stages. The widening pairs the bytes (0, 2) and (1, 3) of each 4 codes, so the prologue
 * stores x with each 16 columns of a k16 step permuted to match (w16_stage, perm): every k16
 * wgmma still sums the same 16 products.
 *
 * x: a prologue kernel (w16_stage) writes x rounded to bf16 into a workspace (the F8W workspace of
 * the stream, sized for both: context.cu), per 128-column block kb [kb][half][TOK][64], and per
 * block whether every token's values are bf16-exact. A tile whose blocks are all exact takes the
 * wgmma path; any other (general f32 x, NaN, ...) is computed by the consumer warpgroup in plain
 * f32 (exact products, f32 sums: the f32 bound of every kernel), so no x is ever rounded: the op
 * is right for any x, fast for the engine's (h and o are bf16-rounded there). That path is a
 * correctness net, not a fast one.
 *
 * Numerics: per 128-K block the block's eight k16 wgmmas into a fresh f32 accumulator (bf16 x
 * bf16 products exact in f32; the tensor cores' sum keeps fewer bits than f32), then total +=
 * block sum (BF16) or total = fmaf(block sum, weight block scale, total) (FP8): f32 promotion per
 * block. Accumulation model for the bound (F8W's, test_gpu_linear_w16): a k16 wgmma adds its 16
 * exact products and the running accumulator (17 addends) aligned to the largest exponent and
 * truncated to 14 significant bits, so each addend is off by less than 2^-13 S_blk (S_blk = sum
 * |w x| of the block, which bounds the accumulator too); eight k16 steps a block: |err_blk| <= 8 *
 * 17 * 2^-13 * S_blk; summed over the blocks with their positive weight scales: |err| <= 136 *
 * 2^-13 * S, plus the f32 promotion and K-split sums (< 1e-5 S as for every other kernel). The
 * model is F8W's conservative one; the test reports how far below it the hardware stays.
 *
 * K split: F8W's (tiles x K slices; more tiles than SMs: persistent; fewer: split over the CTAs
 * of a cluster (1, 1, KS), partials added in rank order through distributed shared memory):
 * deterministic, no atomics.
 *
 * PDL: the producer issues the first tile's weight copies before griddepcontrol.wait, the tokens
 * only after it.
 *
 * W16X (at the end): dsv4_bk_linear_multi's entries (the projections of h at 33..64 rows) as W16
 * calls of one launch, the kernel body shared (w16_body).
 */
#include "backend/cuda/linear_common.cuh"
#include "backend/cuda/wgmma_ring.cuh"

#include <string.h>

/* Session 13 (FP8 widened into the A registers; H100, test_gpu_linear_w16 --bench, us, Flash wo_a
 * N = 8 / 16 / 32 / 64 / 128, before -> after): 28.1 / 28.5 / 31.6 / 36.9 / 49.5 -> 23.0 / 23.9 /
 * 25.5 / 27.4 / 35.2 (MMV at 8: 28.9); Pro wo_a 50.0 / 51.4 / 56.5 / 66.3 / 90.2 -> 38.7 / 40.7 /
 * 44.5 / 48.9 / 65.6. The kernel alone (ncu, N = 16 / 64) 23.1 / 24.1 us, ~1.45 TB/s; with no
 * widening at all (a diagnostic with wrong values) 20.4 / 20.7: the widening is no longer what
 * bounds it (docs/PERF.md, session 13, helper w16).
 *
 * Session 12 (H100, test_gpu_linear_w16 --bench, graph replay, bf16 x, us, N = 16 / 32 / 64; old =
 * MMV to 32 (BF16) or 16 (FP8), then MMA (BF16) or FMM (FP8)): Flash gate 7.20 / 9.48 / 23.93
 * -> 6.94 / 8.17 / 10.47, Pro gate 10.49 / 13.96 / 36.94 -> 8.85 / 10.30 / 12.29, Flash head
 * 434.6 / 479.8 / 857.1 -> 361.3 / 372.1 / 387.2 (2.7-2.9 TB/s), Flash wo_a 40.5 / 34.4 / 54.4 ->
 * 29.0 / 31.3 / 37.3, Pro wo_a 54.3 / 83.6 / 135.1 -> 51.5 / 55.6 / 65.6. At N = 8 slower than
 * MMV on the Flash gate (5.7 -> 6.6) and Pro wo_a (43.5 -> 48.6). FP8 stayed at ~1.1 TB/s
 * (cuBLASLt: 2.2): the consumers widened each stage into shared memory in turn (tried then: the
 * same integer widening into shared memory while the previous stage's wgmmas ran, A in 3 slots:
 * slower at N <= 32). */
enum { W16_BM = RING_BM, W16_KS_MAX = 8, W16_SMEM = 227 * 1024 };
/* The workspace: x up to W16_KMAX columns (groups * cols) of 128 tokens. */
enum { W16_KMAX = 65536, W16_TOKMAX = 128, W16_NKB = W16_KMAX / 128 };
enum { W16_WS_X = W16_NKB * W16_TOKMAX * 256, W16_WS_BYTES = W16_WS_X + W16_NKB * 4 };

/* A workspace (the stream's, shared with F8W: both run in stream order): x [kb][2][TOK][64] bf16
 * (the block's columns 0-63, then 64-127), then exact [kb]. */
struct w16_ws {
    __nv_bfloat16 *x;
    int *exact;
};

static w16_ws w16_ws_at(void *base)
{
    w16_ws w;
    w.x = (__nv_bfloat16 *)base;
    w.exact = (int *)(void *)((unsigned char *)base + W16_WS_X);
    return w;
}

size_t dsv4_lin_w16_ws_bytes(void)
{
    return W16_WS_BYTES;
}

/* Ring stage: BF16: A = 64 weight rows x 128 K bf16 as two 64-column halves (8 KB each); B = the
 * block's TOK tokens likewise (two halves of TOK x 128 bytes); FP8: R = the 64 x 128 e4m3 bytes
 * the producer copies (the consumers widen them into registers), no A. Every half in wgmma's
 * K-major SWIZZLE_128B layout (TMA, 128-byte swizzle: row r at 128 r, its 16-byte chunk c at c ^
 * r % 8; k16 step q of a half starts 32 q bytes into its rows), R likewise (step q = chunk q). */
template <int TOK, bool F8> struct w16_shape {
    static constexpr int A = F8 ? 0 : W16_BM * 256, B = TOK * 256, R = F8 ? W16_BM * 128 : 0;
    static constexpr int STAGE = A + B + R; /* a multiple of 1024 (the swizzle's alignment) */
    static constexpr int PART = TOK * W16_BM * 4;
    /* The K split's partial has a region of its own up to 64 tokens (the layout measured there);
     * at 128 it lies over the ring's start (else 3 stages would fit): a split CTA has one tile and
     * writes it once the ring is done. */
    static constexpr bool OVER = TOK > 64;
    static constexpr int OWN = OVER ? 0 : PART;
    static constexpr int NST_FIT = (W16_SMEM - OWN - 2048) / STAGE;
    static constexpr int NST = NST_FIT > 16 ? 16 : NST_FIT;
    /* ring, partial (OWN), barriers; 1024 bytes to align the base */
    static constexpr int BYTES = 1024 + NST * STAGE + OWN + 2 * NST * 8;
    static_assert(NST >= 4 && STAGE % 1024 == 0, "a ring of at least 4 aligned stages");
    static_assert(!OVER || NST * STAGE >= PART, "the partial fits over the ring");
};

/* ---- the prologue: x -> bf16, exact flags ---------------------------------------------------- */
/* x's 128-column block kbx [N, 128] (ldx) -> the workspace's block kb (a CTA of 256 threads):
 * warp w the tokens w, w + 8, .. < TOK (past N: zeros; 4 tokens' loads in flight), lane l columns
 * 4 l .. 4 l + 3; perm (FP8): each 16 columns in w16_e4m3x4's order. */
__device__ __forceinline__ void w16_stage_block(const float *x, int64_t ldx, int N, int TOK,
                                                int perm, w16_ws ws, int kbx, int kb)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = lane >> 4, c = 4 * (lane & 15);
    int bad = 0;
    for (int n0 = warp; n0 < TOK; n0 += 32) {
        float4 vs[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int n = n0 + 8 * i;
            vs[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (n < N)
                vs[i] =
                    *(const float4 *)(const void *)(x + n * ldx + (int64_t)kbx * 128 + 4 * lane);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int n = n0 + 8 * i;
            if (n >= TOK) break;
            const float4 v = vs[i];
            const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y),
                                 hi = __floats2bfloat162_rn(v.z, v.w);
            const float2 l = __bfloat1622float2(lo), u = __bfloat1622float2(hi);
            /* exact: bf16 gives x back (NaN never does) */
            bad |= !(l.x == v.x && l.y == v.y && u.x == v.z && u.y == v.w);
            __nv_bfloat16 *d = ws.x + (((int64_t)kb * 2 + h) * TOK + n) * 64;
            if (perm) { /* FP8's order (w16_e4m3x4): columns 4 t, 4 t + 2 -> 2 t, + 1; 4 t + 1, + 3
                         * -> 2 t + 8, + 9 (t = the 4 columns' place in their 16) */
                const int base = c & ~15, t = (c >> 2) & 3;
                const __nv_bfloat162 p0 = __halves2bfloat162(lo.x, hi.x),
                                     p1 = __halves2bfloat162(lo.y, hi.y);
                *(__nv_bfloat162 *)(void *)(d + base + 2 * t) = p0;
                *(__nv_bfloat162 *)(void *)(d + base + 2 * t + 8) = p1;
            } else {
                uint2 word;
                word.x = *(const uint32_t *)(const void *)&lo;
                word.y = *(const uint32_t *)(const void *)&hi;
                *(uint2 *)(void *)(d + c) = word;
            }
        }
    }
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) ws.exact[kb] = !bad;
}

/* x [N, nkb 128] (ldx) -> workspace ws; grid nkb, 256 threads (w16_stage_block). */
__global__ void __launch_bounds__(256)
    w16_stage(const float *x, int64_t ldx, int N, int TOK, int perm, w16_ws ws)
{
    DSV4_PDL_WAIT();
    w16_stage_block(x, ldx, N, TOK, perm, ws, (int)blockIdx.x, (int)blockIdx.x);
}

/* d [NT][4] (+)= A (64 x k16 at descriptor da) . B (k16 x 8 NT at db), bf16, f32 accumulation;
 * acc = 0: d = A . B. Both operands K-major (no transpose). */
template <int NT>
__device__ __forceinline__ void w16_wgmma(float (&d)[NT][4], uint64_t da, uint64_t db, int acc);

#define W16_HEAD(ACC, SHAPE) RING_HEAD(ACC, SHAPE, "bf16.bf16")
#define W16_TAIL             "p, 1, 1, 0, 0;\n}\n"

RING_WGMMAS(w16_wgmma, "k16", W16_HEAD, W16_TAIL)

/* The same with A from registers (FP8: the weights widened in registers, w16_e4m3x4): a [4] the
 * warp's A fragment of rows 16 w + g, + 8 (g = lane / 4), k16 columns 2 t, 2 t + 1 (a0 row g, a1
 * row g + 8) and 2 t + 8, 2 t + 9 (a2, a3), t = lane % 4. */
template <int NT>
__device__ __forceinline__ void w16_wgmma_ra(float (&d)[NT][4], const uint32_t (&a)[4], uint64_t db,
                                             int acc);

#define W16_RA_TAIL "p, 1, 1, 0;\n}\n"
#define W16_RA_IN   "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc)
#define W16_RA(NT, ACC, SHAPE, OPS)                                                                \
    template <>                                                                                    \
    __device__ __forceinline__ void w16_wgmma_ra<NT>(float(&d)[NT][4], const uint32_t(&a)[4],      \
                                                     uint64_t db, int acc)                         \
    {                                                                                              \
        asm volatile(W16_HEAD(ACC, SHAPE) OPS W16_RA_TAIL : RING_D##NT(d) : W16_RA_IN);            \
    }
W16_RA(1, "9", "m64n8k16", "{%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, ")
W16_RA(2, "13", "m64n16k16", "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, ")
W16_RA(4, "21", "m64n32k16",
       "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, "
       "%19}, %20, ")
W16_RA(8, "37", "m64n64k16",
       "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
       "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, ")
W16_RA(16, "69", "m64n128k16",
       "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
       "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
       "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
       "%56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, ")

/* Four e4m3 codes [b3 b2 b1 b0] (a u32 of shared memory) -> bf16 pairs lo = (b0, b2), hi = (b1,
 * b3), exactly: each code's sign to bit 15 and its exponent and mantissa bits to bits 4..10 make
 * a bf16 of the code's value times 2^-120 (bias 127 against 7; the subnormal codes become bf16
 * subnormals), and one bf16 multiply by 2^120 (0x7b80) restores the value: no conversions (16 a
 * clock an SM), integer ops and one bf16x2 multiply a pair. The pairs' order is the x
 * permutation of the prologue (w16_stage, perm). */
__device__ __forceinline__ uint32_t w16_bf2_x2p120(uint32_t v)
{
    uint32_t d;
    asm("mul.rn.bf16x2 %0, %1, %2;\n" : "=r"(d) : "r"(v), "r"(0x7b807b80u));
    return d;
}

__device__ __forceinline__ void w16_e4m3x4(uint32_t q, uint32_t &lo, uint32_t &hi)
{
    hi = w16_bf2_x2p120(((q & 0x7f007f00u) >> 4) | (q & 0x80008000u));
    lo = w16_bf2_x2p120(((q & 0x007f007fu) << 4) | ((q << 8) & 0x80008000u));
}

/* The A fragments of a stage's 8 k16 steps, widened: R the stage's e4m3 tile [64][128 bytes]
 * (TMA's 128-byte swizzle: row r's 16-byte chunk q at q ^ r % 8; chunk q = step q's columns), row
 * offsets o0, o1 (the thread's two rows, 4 t bytes in), g = the rows' r % 8. */
__device__ __forceinline__ void w16_frag(uint32_t (&a)[8][4], const unsigned char *R, int o0,
                                         int o1, int g)
{
    uint32_t w0[8], w1[8];
#pragma unroll
    for (int q = 0; q < 8; q++) {
        w0[q] = *(const uint32_t *)(const void *)(R + o0 + ((q ^ g) << 4));
        w1[q] = *(const uint32_t *)(const void *)(R + o1 + ((q ^ g) << 4));
    }
#pragma unroll
    for (int q = 0; q < 8; q++) {
        w16_e4m3x4(w0[q], a[q][0], a[q][2]);
        w16_e4m3x4(w1[q], a[q][1], a[q][3]);
    }
}

/* ---- the kernel ------------------------------------------------------------------------------ */
typedef struct w16_plan {
    int rtiles, tiles; /* 64-row tiles per group, in all */
    int nkb, spc;      /* 128-column blocks of a group's row, per K slice */
    w16_ws ws;
    int xkb; /* the call's first block of x in the workspace (a multi call's entry: w16_gx) */
} w16_plan;

/* Tile t of plan p (ring_at), its x blocks where the plan's are in the workspace (MX: a multi
 * call's entry, else from block 0). */
template <bool MX> __device__ __forceinline__ ring_tile w16_at(const w16_plan &p, int t)
{
    ring_tile u = ring_at(p.rtiles, p.spc, p.nkb, t);
    if (MX) u.kbg += p.xkb;
    return u;
}

/* The exact f32 path's sum (ring_fallback) of weight row wrow (its bytes w) times x over the
 * slice's blocks: per block the f32 sum of the products (BF16), times the weight block's scale
 * (FP8). */
template <bool F8> struct w16_row_sum {
    const lin_args &a;
    const ring_tile &u;
    __device__ float operator()(const uint8_t *w, const float *x, int64_t wrow) const
    {
        float tot = 0.0f;
        for (int kb = u.kb0; kb < u.kb1; kb++) {
            float s = 0.0f;
            for (int c = kb * 128; c < kb * 128 + 128; c++) {
                const float wv =
                    F8 ? lin_e4m3(w[c])
                       : __uint_as_float((uint32_t)((const uint16_t *)(const void *)w)[c] << 16);
                s = fmaf(x[c], wv, s);
            }
            tot = F8 ? fmaf(s, lin_scale(a, wrow / 128, kb), tot) : tot + s;
        }
        return tot;
    }
};

/* y [N, nrows per group] = x . W^T on bf16 wgmma, N <= TOK; F8: FP8 weights, else BF16. Grid
 * (CTAs, 1, KS), clusters (1, 1, KS): KS == 1: CTA i takes tiles i, i + grid, ..; KS > 1: one
 * tile per CTA (grid.x = tiles), slice z. 128 W + 32 threads: warps 0 .. 4 W - 1 the W consumer
 * warpgroups (each 64 rows x TOK tokens), warp 4 W the producer (one lane issues the copies). With
 * two groups, item k is group k % 2's (ring_own: an even ring, so each stage serves one group);
 * a group sums its blocks of the tile and group 1 hands its sum to group 0 (ring_pair_hand). tw:
 * the weights (BF16: bf16 [rows][cols], boxes 64 x 64; FP8: bytes, boxes 128 x 64); tx: the
 * workspace's x as bf16 [W16_NKB 2 TOK][64], boxes 64 x 2 TOK. Dynamic shared memory
 * w16_shape::BYTES: ring [NST][A | B | R] (A: BF16, R: FP8), partial (at 128 tokens over the ring's
 * start), barriers.
 *
 * The ring's item `it` (the CTA's it-th (tile, block) of exact tiles) uses stage it % NST:
 * full[s] completes when its weights and x have landed (one producer arrival + the bytes),
 * empty[s] when its group's 128 consumers have used it. The first tile's first `pre` weight
 * copies are issued before the PDL wait; if that tile turns out inexact, both sides still pass its
 * `pre` items (each group its own) so that every copy lands before the stage is reused (F8W's
 * scheme); the exact f32 path is then group 0's alone. */
/* The tiles of a CTA, t0(), t0() + step(), ..: one call's grid (w16_g1) or one tile of a multi
 * call (w16_gx: its entry's plan, x blocks from the plan's xkb). w16_g1 reads the grid's
 * registers where they are used, as the kernel did before W16X (the same SASS). */
struct w16_g1 {
    static constexpr bool MX = false;
    __device__ unsigned t0() const
    {
        return blockIdx.x;
    }
    __device__ unsigned step() const
    {
        return gridDim.x;
    }
};
struct w16_gx {
    static constexpr bool MX = true;
    unsigned t, n;
    __device__ unsigned t0() const
    {
        return t;
    }
    __device__ unsigned step() const
    {
        return n;
    }
};

template <int TOK, bool F8, int W, class G>
__device__ __forceinline__ void w16_body(const CUtensorMap *tw, const CUtensorMap *tx,
                                         const lin_args &a, const w16_plan &p, G gr,
                                         unsigned char *w16_raw)
{
    constexpr bool MX = G::MX;
    typedef w16_shape<TOK, F8> S;
    constexpr int WB = F8 ? S::R : S::A; /* weight bytes a stage */
    /* two groups: an even ring, so that each stage serves one group (item k: group k % 2) */
    constexpr int NT = TOK / 8, NST = W == 2 ? S::NST & ~1 : S::NST;
    constexpr int THREADS = 128 * W + 32;
    static_assert(W == 1 || (W == 2 && !S::OVER), "two groups hand over through the partial");
    unsigned char *sm = w16_raw + ((1024 - (ring_sa(w16_raw) & 1023)) & 1023);
    const uint32_t ring = ring_sa(sm);
    /* the K split's partial: after the ring, or over it (w16_shape) */
    float *part = (float *)(void *)(sm + (S::OVER ? 0 : NST * S::STAGE));
    const uint32_t bars = ring + NST * S::STAGE + S::OWN;
    /* full[s] at bars + 8 s (1 arrival + bytes), empty[s] at bars + 8 (NST + s) (128) */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool split = gridDim.z > 1;
    ring_bars_init(bars, NST);
    const int first = ring_first(p.rtiles, p.spc, p.nkb, p.tiles, NST, gr.t0());

    if (warp == 4 * W) { /* ---- producer ---- */
        const bool lead = lane == 0;
        if (lead) ring_prefetch_maps(tw, tx);
        /* stage st's weights of block kb, rows from `row`: FP8 one copy into R, BF16 two into A */
        auto load_w = [&](uint32_t st, int kb, int row, uint32_t full) {
            if (F8) {
                ring_tma(st + S::A + S::B, tw, kb * 128, row, full);
            } else {
                ring_tma(st, tw, kb * 128, row, full);
                ring_tma(st + W16_BM * 128, tw, kb * 128 + 64, row, full);
            }
        };
        if (lead && first > 0) { /* the first tile's weights before the wait */
            const ring_tile u = ring_at(p.rtiles, p.spc, p.nkb, gr.t0());
            const int row = (int)(a.row0 + u.g * a.nrows + u.r0);
            for (int i = 0; i < first; i++) {
                ring_expect_tx(bars + 8 * i, WB);
                load_w(ring + i * S::STAGE, u.kb0 + i, row, bars + 8 * i);
            }
        }
        DSV4_PDL_WAIT();
        int it = 0;
        for (int t = gr.t0(); t < p.tiles; t += gr.step()) {
            const ring_tile u = w16_at<MX>(p, t);
            const bool exact = ring_tile_exact(p.ws.exact, u);
            if (!exact && t != (int)gr.t0()) continue; /* the consumers compute it in f32 */
            const int row = (int)(a.row0 + u.g * a.nrows + u.r0);
            const int n_it = exact ? u.kb1 - u.kb0 : first;
            for (int i = 0; i < n_it; i++, it++) {
                const int s = it % NST, ph = (it / NST) & 1, kb = u.kb0 + i;
                const uint32_t full = bars + 8 * s, st = ring + s * S::STAGE;
                if (it >= NST && lead) ring_bar_wait(bars + 8 * (NST + s), ph ^ 1);
                if (lead) {
                    const bool have_w = it < first && t == (int)gr.t0();
                    ring_arrive_tx(full, (have_w ? 0 : WB) + S::B);
                    if (!have_w) load_w(st, kb, row, full);
                    ring_tma(st + S::A, tx, 0, (int)((u.kbg + kb) * 2 * TOK), full);
                }
            }
        }
    } else { /* ---- consumers: group wg, rows 16 cw + g, + 8; tokens 8 nt + 2 t, + 1 ---- */
        const int wg = warp >> 2, cw = warp & 3;
        DSV4_PDL_WAIT();
        const int g = lane >> 2, tq = lane & 3;
        int it = 0;
        for (int t = gr.t0(); t < p.tiles; t += gr.step()) {
            const ring_tile u = w16_at<MX>(p, t);
            if (!ring_tile_exact(p.ws.exact, u)) {
                ring_inexact(a, u, t == (int)gr.t0(), first, bars, NST, wg, W, split, part, it,
                             w16_row_sum<F8>{a, u});
                continue;
            }
            const ring_rows rw = ring_rows_at(a, u, cw, g);
            float acc[NT][4];
            ring_zero<NT>(acc);
            if constexpr (F8) {
                /* A from registers: the stage's codes widened into two fragment sets in turn,
                 * item j + 1's (w16_frag) while item j's wgmmas run */
                const unsigned char *R0 = sm + S::B;
                const int o0 = (cw * 16 + g) * 128 + 4 * tq, o1 = o0 + 8 * 128;
                const int n = u.kb1 - u.kb0, j0 = ring_own(it, wg, W); /* this group's: j0 + W i */
                /* item it + j's 8 wgmmas (fresh tmp) from fragments af, committed */
                auto issue = [&](const uint32_t(&af)[8][4], int j, float(&tmp)[NT][4]) {
                    const uint32_t st = ring + ((it + j) % NST) * S::STAGE;
                    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
                    for (int q = 0; q < 8; q++)
                        w16_wgmma_ra<NT>(tmp, af[q],
                                         ring_desc(st + (q >> 2) * (TOK * 128) + 32 * (q & 3)),
                                         q > 0);
                    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
                };
                /* item it + j's stage landed: its fragments */
                auto fetch = [&](uint32_t(&af)[8][4], int j) {
                    const int s = (it + j) % NST;
                    ring_bar_wait(bars + 8 * s, ((it + j) / NST) & 1);
                    w16_frag(af, R0 + s * S::STAGE, o0, o1, g);
                };
                /* the block scales: c of the item in hand, nx of the group's next, loaded one
                 * item ahead (their latency behind the wgmmas) */
                float c0 = 0.0f, c1 = 0.0f;
                if (j0 < n)
                    c0 = lin_scale(a, rw.sr0, u.kb0 + j0), c1 = lin_scale(a, rw.sr1, u.kb0 + j0);
                float nx0 = c0, nx1 = c1;
                auto ahead = [&](int j) {
                    if (j + W < n)
                        nx0 = lin_scale(a, rw.sr0, u.kb0 + j + W),
                        nx1 = lin_scale(a, rw.sr1, u.kb0 + j + W);
                };
                /* item it + j's wgmmas done: its stage free, the block sum promoted */
                auto done = [&](float(&tmp)[NT][4], int j) {
                    ring_wgmma_wait<NT>(tmp);
                    ring_bar_arrive(bars + 8 * (NST + (it + j) % NST)); /* the stage is free */
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        acc[nt][0] = fmaf(tmp[nt][0], c0, acc[nt][0]);
                        acc[nt][1] = fmaf(tmp[nt][1], c0, acc[nt][1]);
                        acc[nt][2] = fmaf(tmp[nt][2], c1, acc[nt][2]);
                        acc[nt][3] = fmaf(tmp[nt][3], c1, acc[nt][3]);
                    }
                    c0 = nx0, c1 = nx1;
                };
                uint32_t A0[8][4], A1[8][4];
                if (j0 < n) fetch(A0, j0);
                for (int j = j0; j < n; j += 2 * W) {
                    float tmp[NT][4];
                    issue(A0, j, tmp);
                    ahead(j);
                    if (j + W < n) fetch(A1, j + W);
                    done(tmp, j);
                    if (j + W >= n) break;
                    issue(A1, j + W, tmp);
                    ahead(j + W);
                    if (j + 2 * W < n) fetch(A0, j + 2 * W);
                    done(tmp, j + W);
                }
                it += n;
            } else {
                for (int kb = u.kb0 + ring_own(it, wg, W); kb < u.kb1; kb += W) {
                    const int i = it + kb - u.kb0, s = i % NST, ph = (i / NST) & 1;
                    const uint32_t st = ring + s * S::STAGE;
                    ring_bar_wait(bars + 8 * s, ph);
                    float tmp[NT][4];
                    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
                    for (int q = 0; q < 8; q++)
                        w16_wgmma<NT>(tmp, ring_desc(st + (q >> 2) * (W16_BM * 128) + 32 * (q & 3)),
                                      ring_desc(st + S::A + (q >> 2) * (TOK * 128) + 32 * (q & 3)),
                                      q > 0);
                    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
                    ring_wgmma_wait<NT>(tmp);
                    ring_bar_arrive(bars + 8 * (NST + s)); /* the stage is free */
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int j = 0; j < 4; j++) acc[nt][j] += tmp[nt][j];
                }
                it += u.kb1 - u.kb0;
            }
            const bool handed = W == 2 && ring_pair_hand<NT>(acc, part, wg, tq, cw, g);
            if (!handed) ring_store<NT, S::OVER>(a, u, acc, split, part, rw, tq, cw, g);
            if (W == 2) ring_pair_sync();
        }
    }
    if (split) ring_split_end<THREADS>(a, p.rtiles, p.spc, p.nkb, p.tiles, gr.t0(), part);
}

/* One call's kernel: CTA i takes tiles i, i + grid, .. (w16_body). */
template <int TOK, bool F8, int W>
__global__ void __launch_bounds__(128 * W + 32, 1)
    w16_kernel(const __grid_constant__ CUtensorMap tw, const __grid_constant__ CUtensorMap tx,
               lin_args a, w16_plan p)
{
    DSV4_PDL_LATE();
    extern __shared__ unsigned char w16_raw[];
    w16_body<TOK, F8, W>(&tw, &tx, a, p, w16_g1{}, w16_raw);
}

typedef void (*w16_fn)(const CUtensorMap, const CUtensorMap, lin_args, w16_plan);

int dsv4_lin_w16_ok(const lin_args *a)
{
    const int fmt =
        a->fmt == DSV4_FORMAT_BF16 || (a->fmt == DSV4_FORMAT_FP8 && a->skind != LIN_SCALE_NONE);
    return fmt && ring_ok(a, W16_TOKMAX, W16_KMAX);
}

/* The grid (wgmma_ring.cuh ring_make_plan). */
static void w16_make_plan(const lin_args *a, w16_plan *p, int *ks)
{
    ring_make_plan(a, W16_KS_MAX, &p->rtiles, &p->tiles, &p->nkb, &p->spc, ks);
}

template <int TOK, bool F8, int W>
static dsv4_status w16_launch(const lin_args *a, const w16_plan *p, int ks, cudaStream_t st)
{
    const w16_fn fn = w16_kernel<TOK, F8, W>;
    const int smem = w16_shape<TOK, F8>::BYTES;
    CUtensorMap tw, tx;
    DSV4_TRY(ring_map(&tw, a->data, !F8, (uint64_t)(a->row0 + a->groups * a->nrows),
                      (uint64_t)(F8 ? a->row_bytes : a->row_bytes / 2), (uint64_t)a->row_bytes,
                      W16_BM, "w16"));
    DSV4_TRY(ring_map(&tx, p->ws.x, 1, (uint64_t)W16_NKB * 2 * TOK, 64, 128, 2 * TOK, "w16"));
    return ring_launch(fn, tw, tx, a, p, ks, 1, 128 * W + 32, smem, st);
}

/* w16_launch for TOK = tok (8, 16, 32, 64, 128) with W consumer groups up to 32 tokens, one above
 * (dsv4_lin_launch_w16). */
template <bool F8, int W>
static dsv4_status w16_launch_tok(const lin_args *a, const w16_plan *p, int ks, int tok,
                                  cudaStream_t st)
{
    switch (tok) {
    case 8:
        return w16_launch<8, F8, W>(a, p, ks, st);
    case 16:
        return w16_launch<16, F8, W>(a, p, ks, st);
    case 32:
        return w16_launch<32, F8, W>(a, p, ks, st);
    case 64:
        return w16_launch<64, F8, 1>(a, p, ks, st);
    default:
        return w16_launch<128, F8, 1>(a, p, ks, st);
    }
}

/* The kernel of a call: two consumer groups up to 32 tokens, one above. The consumers' widening
 * (FP8) and wgmma waits bound the one-group kernel (ncu, Flash wo_a N = 16: one warp a scheduler,
 * 0.28 instructions issued a cycle, 4.2 cycles an instruction); a second group takes every other
 * stage. H100, dsv4 bench --gemms (prologue included), us, one -> two groups: Flash wo_a N = 8 /
 * 16 / 32 / 64 23.6 / 24.7 / 26.3 / 27.9 -> 19.6 / 20.7 / 22.1 / 26.2, Pro wo_a 40.2 / 42.2 /
 * 45.7 / 51.1 -> 33.4 / 35.9 / 38.1 / 47.0; in the step (docs/PERF.md, session 25) Flash batch 8
 * -0.6%, 16 -0.3%, Pro 8 -0.5%, 16 / 32 -0.3%, but Flash batch 64 +0.2% with two groups at 64
 * tokens: one there. */
dsv4_status dsv4_lin_launch_w16(const lin_args *a, void *ws, cudaStream_t st)
{
    w16_plan p;
    int ks;
    w16_make_plan(a, &p, &ks);
    p.xkb = 0;
    p.ws = w16_ws_at(ws);
    const int tok = ring_tok(a->N);
    const int nkb_all = (int)(a->groups * p.nkb);
    w16_stage<<<nkb_all, 256, 0, st>>>(a->x, a->ldx, (int)a->N, tok, a->fmt == DSV4_FORMAT_FP8,
                                       p.ws);
    CUDA_TRY(cudaGetLastError());
    const int two = tok <= 32; /* two consumer groups (above) */
    if (a->fmt == DSV4_FORMAT_FP8)
        return two ? w16_launch_tok<true, 2>(a, &p, ks, tok, st)
                   : w16_launch_tok<true, 1>(a, &p, ks, tok, st);
    return two ? w16_launch_tok<false, 2>(a, &p, ks, tok, st)
               : w16_launch_tok<false, 1>(a, &p, ks, tok, st);
}

/* ---- W16X: dsv4_bk_linear_multi's entries in one launch --------------------------------------
 * The projections of h at 9..64 rows (wq_a and wkv FP8 on act_quant(h), the compressors' and the
 * indexer's BF16 matrices on h; 0.5-8 MB each) ran on MMX (linear_fp8mma.cu: FMM's scheme, x read
 * and split by every CTA), 19% of copy bandwidth at 64 rows; W16X takes them from 33 rows
 * (bk_linear.cu W16X_NMIN, with the figures). Here every entry is a W16 call of
 * the same launch: the prologue stages each distinct x (one per x and weight format: FP8's column
 * order differs) once into the workspace, one after another (w16x_stage), and each CTA finds its
 * entry and runs w16_body on one tile and K slice of it with the entry's tensor map; the K split
 * (clusters (1, 1, KS)) is the launch's, so every entry has the same columns. The bits of an entry
 * are those of its own W16 call with the same KS (the same kernel body, slices and cluster sum). */
enum { W16X_MAX = DSV4_BK_LINEAR_MULTI_MAX };

/* A distinct x: its pointer and row stride, its first block in the workspace, FP8's order. */
typedef struct w16x_src {
    const float *x;
    int64_t ldx;
    int kb0, perm;
} w16x_src;

typedef struct w16x_srcs {
    w16x_src s[W16X_MAX];
    int n, nkb; /* sources; 128-column blocks of each */
} w16x_srcs;

/* Entry i owns CTAs [cta0[i], cta0[i + 1]) (one a tile); f8: FP8 weights, else BF16. */
typedef struct w16x_multi {
    CUtensorMap tw[W16X_MAX];
    lin_args a[W16X_MAX];
    w16_plan p[W16X_MAX];
    int cta0[W16X_MAX + 1];
    int f8[W16X_MAX];
    int n;
} w16x_multi;

/* Every source's blocks: grid n * nkb, source blockIdx.x / nkb (w16_stage_block). */
__global__ void __launch_bounds__(256)
    w16x_stage(const __grid_constant__ w16x_srcs S, int N, int TOK, w16_ws ws)
{
    DSV4_PDL_WAIT();
    const w16x_src &src = S.s[blockIdx.x / S.nkb];
    const int kb = (int)(blockIdx.x % S.nkb);
    w16_stage_block(src.x, src.ldx, N, TOK, src.perm, ws, kb, src.kb0 + kb);
}

/* Grid (tiles of all entries, 1, KS), clusters (1, 1, KS): the CTA's entry, then its one tile. */
template <int TOK, int W>
__global__ void __launch_bounds__(128 * W + 32, 1)
    w16x_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ w16x_multi m)
{
    DSV4_PDL_LATE();
    extern __shared__ unsigned char w16_raw[];
    int i = 0;
    while (i + 1 < m.n && (int)blockIdx.x >= m.cta0[i + 1]) i++;
    const int t = (int)blockIdx.x - m.cta0[i];
    const w16_gx gr = {(unsigned)t, (unsigned)m.p[i].tiles};
    if (m.f8[i])
        w16_body<TOK, true, W>(&m.tw[i], &tx, m.a[i], m.p[i], gr, w16_raw);
    else
        w16_body<TOK, false, W>(&m.tw[i], &tx, m.a[i], m.p[i], gr, w16_raw);
}

/* The K split of a multi call: the most K slices (<= W16_KS_MAX, >= 4 blocks each) that keep
 * every tile's slices within LIN_SMS CTAs, as ring_make_plan; tiles: all entries'. force_ks > 0:
 * that many (at most one a block). */
static void w16x_split(int64_t tiles, int nkb, int *spc, int *ks, int force_ks = 0)
{
    int k = 1;
    for (int j = 2; j <= W16_KS_MAX; j++)
        if (tiles * j <= LIN_SMS && nkb >= 4 * j) k = j;
    if (force_ks > 0) k = force_ks < nkb ? force_ks : nkb;
    *spc = (nkb + k - 1) / k;
    *ks = (nkb + *spc - 1) / *spc;
}

/* Whether W16X takes the n entries: each one W16 takes, ungrouped, all of the same columns and
 * at most 64 rows of x, at most W16X_MAX of them and their distinct x within the workspace; with
 * min_ks > 0 also all tiles in one wave of at least min_ks K slices (w16x_split). */
int dsv4_lin_w16x_ok(const lin_args *as, int n, int min_ks)
{
    if (n < 1 || n > W16X_MAX || as[0].N > 64) return 0;
    int64_t tiles = 0;
    for (int i = 0; i < n; i++) {
        if (!dsv4_lin_w16_ok(&as[i]) || as[i].groups != 1 || as[i].nrows < 1 ||
            as[i].cols != as[0].cols || as[i].N != as[0].N)
            return 0;
        tiles += (as[i].nrows + RING_BM - 1) / RING_BM;
    }
    const int nkb = (int)(as[0].cols / 128);
    if ((int64_t)n * nkb > W16_NKB) return 0;
    if (min_ks <= 0) return 1;
    int spc, ks;
    w16x_split(tiles, nkb, &spc, &ks);
    return tiles <= LIN_SMS && ks >= min_ks;
}

template <int TOK, int W>
static dsv4_status w16x_launch(const w16x_multi *m, const w16_ws &ws, int tiles, int ks,
                               cudaStream_t st)
{
    const auto fn = w16x_kernel<TOK, W>;
    const int smem = w16_shape<TOK, true>::BYTES > w16_shape<TOK, false>::BYTES
                         ? w16_shape<TOK, true>::BYTES
                         : w16_shape<TOK, false>::BYTES;
    CUtensorMap tx;
    DSV4_TRY(ring_map(&tx, ws.x, 1, (uint64_t)W16_NKB * 2 * TOK, 64, 128, 2 * TOK, "w16x"));
    CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg = lin_cluster_cfg(dim3((unsigned)tiles, 1, (unsigned)ks), 128 * W + 32,
                                             (size_t)smem, ks, st, &attr);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, fn, tx, *m));
    return DSV4_OK;
}

/* The n entries (dsv4_lin_w16x_ok) in two launches: w16x_stage, then w16x_kernel. force_ks > 0:
 * that K split (<= W16_KS_MAX), else w16x_split's; ks_out: the split taken. */
dsv4_status dsv4_lin_launch_w16x(const lin_args *as, int n, int force_ks, void *wsp,
                                 cudaStream_t st, int *ks_out)
{
    const w16_ws ws = w16_ws_at(wsp);
    const int nkb = (int)(as[0].cols / 128), tok = ring_tok(as[0].N);
    w16x_srcs S;
    w16x_multi m;
    memset(&S, 0, sizeof S);
    memset(&m, 0, sizeof m);
    S.nkb = nkb;
    int64_t tiles = 0;
    for (int i = 0; i < n; i++) tiles += (as[i].nrows + RING_BM - 1) / RING_BM;
    int spc, ks;
    w16x_split(tiles, nkb, &spc, &ks, force_ks > W16_KS_MAX ? W16_KS_MAX : force_ks);
    int ctas = 0;
    for (int i = 0; i < n; i++) {
        const lin_args *a = &as[i];
        const int f8 = a->fmt == DSV4_FORMAT_FP8;
        int k = 0; /* the entry's source: an earlier one of the same x and order, or a new one */
        while (k < S.n && !(S.s[k].x == a->x && S.s[k].ldx == a->ldx && S.s[k].perm == f8)) k++;
        if (k == S.n) S.s[S.n++] = (w16x_src){a->x, a->ldx, k * nkb, f8};
        w16_plan *p = &m.p[i];
        p->rtiles = p->tiles = (int)((a->nrows + RING_BM - 1) / RING_BM);
        p->nkb = nkb, p->spc = spc, p->xkb = S.s[k].kb0, p->ws = ws;
        m.a[i] = *a, m.f8[i] = f8, m.cta0[i] = ctas;
        ctas += p->tiles;
        DSV4_TRY(ring_map(&m.tw[i], a->data, !f8, (uint64_t)(a->row0 + a->nrows),
                          (uint64_t)(f8 ? a->row_bytes : a->row_bytes / 2), (uint64_t)a->row_bytes,
                          W16_BM, "w16x"));
    }
    m.cta0[n] = ctas, m.n = n;
    *ks_out = ks;
    w16x_stage<<<S.n * nkb, 256, 0, st>>>(S, (int)as[0].N, tok, ws);
    CUDA_TRY(cudaGetLastError());
    switch (tok) { /* two consumer groups up to 32 tokens, as dsv4_lin_launch_w16 */
    case 8:
        return w16x_launch<8, 2>(&m, ws, ctas, ks, st);
    case 16:
        return w16x_launch<16, 2>(&m, ws, ctas, ks, st);
    case 32:
        return w16x_launch<32, 2>(&m, ws, ctas, ks, st);
    default:
        return w16x_launch<64, 1>(&m, ws, ctas, ks, st);
    }
}
