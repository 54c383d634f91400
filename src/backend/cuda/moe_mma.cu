/*
 * moe_mma.cu - the tensor-core path of dsv4_bk_moe on CUDA (sm_90a), for MXFP4 and FP8 (ue8m0
 * block scales) experts: the decode MoE as a weight stream. The SIMT grouped GEMMs of
 * moe_gemm.cu spent ~3.5 ALU instructions per weight value (widening to f32, one FMA per token)
 * and fed few loads per SM; here the weights are widened by bit operations into f16 fragments
 * and multiplied on the tensor cores (mma.sync m16n8k16, f32 accumulation) with the tokens as
 * the narrow operand, and every warp streams its own 16 rows with 8 x 16-byte loads in flight.
 *
 * Work: a task is one warp: (active expert slot, 16 output rows, all tokens of the expert).
 * Stage 1 tasks run w1 and w3 side by side and end in the SwiGLU * weight epilogue (a as
 * bf16); the last task of each 128-row block of a (a ticket per block, zeroed by prep) then
 * quantises that block for every token of the expert, so no launch sits between the stages.
 * Stage 2 runs w2 (y as bf16). Grids cover the host-known bound on active experts; the tasks of
 * slots past the device count exit at once. The shared expert comes first (its tasks are the
 * longest at N = 1): one slot up to 8 rows, above that up to 4, each a range of the tokens, so
 * that its passes over the tokens run side by side (bk_moe.cu shared_slots).
 *
 * Fragments (g = lane / 4, t = lane % 4; A = weights, 16 rows x 16 k; B = tokens, 16 k x 8 n):
 *   MXFP4: lane (g, t) loads 16 bytes = the 32 columns of scale group t of each 128-column chunk
 *   for rows g and g + 8. A k16 step of the quad would mix four groups (four scales), so the
 *   groups go to different columns n of the mma instead: B column n = 2 grp + token holds the
 *   token's inputs on group grp's k only (zero elsewhere), so C[row][2 grp + tok] is the group's
 *   own partial sum, which the lane that loaded the group scales by its ue8m0 byte (2 tokens per
 *   pass). The quad's four groups are added at the end by a fixed shuffle tree.
 *   FP8: one 128 x 128 block scale per chunk, so lane (g, t) takes 32 columns of the chunk for
 *   rows g, g + 8 and B column n is token n (8 tokens per pass).
 *   The order of k inside a step is free as long as A and B agree: the widening below yields
 *   f16 pairs of columns (0, 4), (1, 5), ... (FP4) and (0, 1), (2, 3) (FP8), and the
 *   activations are stored in that order (moe.cuh L4 / L8).
 *
 * Numerics: an e2m1 nibble becomes e2m1 * 2^-14 in f16 (exact, bit placement only, as
 * moe_gemm.cu) and an e4m3 byte its value in f16 (exact: the hardware conversion), the
 * activations are their e4m3 codes x / s (exact in f16). Products are exact in f32; the tensor
 * cores add a group's (FP4: 32, FP8: 128) products in f32, and the partial is scaled by 2^14
 * (FP4), the weight scale and s (powers of two: exact)
 * and added to the f32 accumulator with one rounding (fmaf). So the result differs from the CPU
 * only in f32 summation order; then bf16 and the roundings of moe_numerics.cuh as there.
 *
 * What bounds them (H100; every measurement and every variant tried is in docs/PERF.md,
 * sessions 2-18 and 44, and the history of this header in git). At batch 1 the stages stream at
 * 65-73% of copy bandwidth in the engine step (ncu, each alone with cold caches: stage 1 52% of
 * DRAM peak, stage 2 45%), and not for their arithmetic: the same kernels with the arithmetic
 * taken out (loads only) reach 58% and 61% in ncu, and the FP4 widening, two thirds of the
 * instructions, costs ~1 us of a 60 us call (session 44). What bounds them is how the loads of
 * ~13.6 warps an SM, each on its own tile's 1 KB blocks, reach DRAM: per-warp marks show one
 * round in which the warps of a format stream at the same rate (~72% of copy counted at the
 * routed warps' rate, ~79% with the shared expert's faster FP8 warps: sessions 44, 45), then a
 * tail of 5-7 us as the last tasks end; more loads a warp did not move the loads-only ceiling
 * (58 -> 60%). At batch 64 they stream at about 70-75% of copy. What the kernels keep, each
 * measured against its alternative in the engine step:
 *   - the widening by bit operations (moe_frag.cuh, 11 operations a word of 8 nibbles; an e4m3
 *     placement on m16n8k32 mmas has fewer instructions but was slower: ptxas lowers those mmas
 *     on sm_90a to conversions and f16 mmas), FP8 by the hardware e4m3 -> f16x2 conversion;
 *   - a per-pass load cursor advanced by adds (wcur), and one multiply by 2^(s - 113) a partial
 *     where a warp vote finds every scale byte <= 240 (scales_small);
 *   - the load schedule per stage as compile-time choices (MINB CTAs an SM asked of ptxas, LOADS
 *     a lane, PIPE a two-half register ring), each instance picked per batch range by
 *     moe_mma_run;
 *   - passes of NB token groups, each widened weight meeting NB B fragments, where the experts
 *     average ~1.1 tokens or more;
 *   - the weights loaded past L1 (moe_ldw: through L1 they evicted the activation rows and scale
 *     bytes that every task of an SM re-reads);
 *   - stage 2's token rows staged once a CTA in shared memory from 2 rows (XS, stage_x: its
 *     warps read the same row chunk in lockstep and missed L1 together), in the 1-group kernels
 *     with the rows' scales (2-group: 80 bytes of stack against 24, batch 128 +1.3%);
 *   - stage 2 waiting per slot (RDY, below) in the 1-group kernels;
 *   - the tiled expert layout (moe.cuh, moe_layout.cu: 16-row x 128-column blocks stored
 *     contiguously; the row-major pattern's own ceiling, with the scale bytes, was 56% of copy
 *     in a pure-load kernel, bench/bench_gpu_access.cu);
 *   - an L2 bulk prefetch of the next iteration's blocks where it pays (prefetch_blocks);
 *   - stage 2's and stage 1's shared-expert first weight loads before the PDL wait (pend).
 * RDY: the stage-1 quantiser of each 128-row block of a counts its slot (ready, zeroed with the
 * tickets by the prep launch), and a routed stage-2 task polls its slot's count after its first
 * weight loads instead of the PDL wait, so that it runs while stage 1's last tasks still do
 * (with PDL, stage 2's CTAs are placed once every stage-1 CTA has passed its own wait, i.e. is
 * resident: the polls never hold a slot stage 1 needs). Its activations come from L2 (the XS
 * copy, __ldcg), never from a line L1 may hold stale. The shared expert's stage-2 tasks poll too
 * where stage 1's grid is more than one round (rdy_shared; Flash batch 3-40 -0.3 to -0.5%, Pro
 * 2-8 -0.3 to -0.5%); in one round they keep the PDL wait and their FP8 loads through L1 (Flash
 * batch 2, 448 CTAs: +1.0% otherwise). Stage 2 so never waits for the grid: it ends only after
 * every slot it reads is complete, i.e. after all of stage 1's stores (the tail's count is each
 * task's last store), so the launches after it may still rely on the grid two launches back
 * (pdl.cuh). Measured (H100, dsv4 bench, docs/PERF.md session 23, ms/step): Flash 4 layers batch
 * 2 -1.7%, 3 -4.5%, 4 -5.0%, 8 -2.8%, 16 -2.7%, 32 -1.5%, 40 -1.5%; Pro 2 layers 4 -1.2%, 8
 * -1.0%, 16 -0.6%. At 1 row only where stage 1 runs more than one round (Pro -1.3% with the
 * shared tasks; Flash, one round, +0.8%); not where stage 1's grid is more than RDY_WAVES
 * rounds (Pro 48 / 64 +0.2 / +0.3%: its drain is a smaller share), nor in the 2-group kernels
 * (Flash 64 / 128 +0.5 / +1.1%). Session 9's version (no PDL above 16 rows then, the activations
 * and scales a warp from L2) lost at 8-16 rows.
 * Tried and not kept: the weights through shared memory (per-warp cp.async rings, 1-D and 2-D
 * TMA rings: fewer warps and more instructions, L1 lost to the rings), resident grids, the FP4
 * weights as e4m3 (above), packed MXFP4 scales (902d969: the pure-load ceiling rose, the kernels
 * did not), the combine in stage 2's tail, more K slices for the shared expert, register rings
 * and L2 prefetch in the batch-1 kernels; at 1-4 rows, tasks of 64 rows on wgmma m64n8k32 with
 * the weights (as e4m3) in registers and the tokens in shared memory (session 44: a wgmma is a
 * warpgroup instruction, so each of a task's four warps waits for the slowest one's loads; +16% a
 * call at one row); at 1-2 rows, the stage tail balanced away (session 45): units of 2-4 chunks
 * claimed from a counter by a persistent grid (+60 to +100% a call), and stream-K (equal shares
 * of the chunks a warp, split tiles summed by a ticket: +27%). A warp's rate is one iteration a
 * load latency, and each place where it changes work exposes round trips (the partials' fence,
 * the ticket, the claim, the next pointers, the pipeline's restart) that cost more than the tail.
 */
#include "backend/cuda/check.cuh"
#include "backend/cuda/moe.cuh"
#include "backend/cuda/moe_frag.cuh"
#include "backend/cuda/moe_numerics.cuh"
#include "backend/cuda/moe_route.cuh"
#include "backend/cuda/pdl.cuh"

enum { WPC = 4 }; /* warps per CTA, each one task */
/* Rows of x from which stage 2's 1-group kernel prefetches its next blocks into L2 (moe_mma_run) */
enum { S2_L2P_ROWS = 8 };
/* Rounds of stage 1's grid (4 CTAs an SM) up to which stage 2 waits per slot (RDY; moe_mma_run) */
enum { RDY_WAVES = 20 };

/* bar.sync on barrier id (1 .. 4) among `count` threads (whole warps); literal ids, so that
 * ptxas reserves only the barriers used. */
static __device__ __forceinline__ void named_bar(int id, int count)
{
    switch (id) {
    case 1:
        asm volatile("bar.sync 1, %0;\n" ::"r"(count) : "memory");
        break;
    case 2:
        asm volatile("bar.sync 2, %0;\n" ::"r"(count) : "memory");
        break;
    case 3:
        asm volatile("bar.sync 3, %0;\n" ::"r"(count) : "memory");
        break;
    default:
        asm volatile("bar.sync 4, %0;\n" ::"r"(count) : "memory");
        break;
    }
}

/* The wait of a stage kernel that opened with DSV4_PDL_LATE, where it is still pending: pend 1
 * the PDL wait; pend 2 + s (stage 2's RDY instances) slot s's input ready instead: its count of
 * quantised 128-row blocks of a (stage1_tail) reaches ceil(I / 128), polled by lane 0. */
static __device__ __forceinline__ void pdl_wait_once(const moe_mma_args &a, int &pend)
{
    if (pend == 1) {
        DSV4_PDL_WAIT();
    } else if (pend > 1) {
        const int need = (int)((a.I + 127) >> 7);
        DSV4_TRACE_ENTER(tr);
        if ((threadIdx.x & 31) == 0) {
            dsv4_poll_at_least(a.ready + (int64_t)(pend - 2) * MOE_RDY_STRIDE, need);
        }
        __syncwarp();
        DSV4_TRACE_LEAVE(tr);
        DSV4_PDL_RELEASE();
    }
    pend = 0;
}

/* An activation or scale load of a stage: XS bit 1 (RDY) through L2 only, as its producer may
 * still run beside the kernel (another slot's lines could sit stale in L1); else the read-only
 * path. */
template <int XS, typename T> static __device__ __forceinline__ T ld_act(const T *p)
{
    if constexpr ((XS & 2) != 0)
        return __ldcg(p);
    else
        return __ldg(p);
}

/* A scale of the activations: XS bit 2 from the staged copy in shared memory (stage_x). */
template <int XS> static __device__ __forceinline__ float ld_scale(const float *p)
{
    if constexpr ((XS & 4) != 0)
        return *p;
    else
        return ld_act<XS>(p);
}

/* Pair id of token tok of active index ai (0: the shared expert, tokens from off), and the row
 * of the stage's input it reads. */
static __device__ __forceinline__ int64_t tok_pair(const moe_mma_args &a, int ai, int off, int tok)
{
    return ai == 0 ? a.N * a.K + off + tok : (int64_t)a.list.pairs[off + tok];
}

static __device__ __forceinline__ int64_t tok_input(const moe_mma_args &a, int stage1, int ai,
                                                    int off, int tok)
{
    const int64_t pair = tok_pair(a, ai, off, tok);
    return stage1 ? (ai == 0 ? (int64_t)(off + tok) : pair / a.K) : pair;
}

/* The weight words and scales of CN consecutive 128-column chunks of a task (registers). */
template <int NM, int F, int CN> struct wchunks {
    uint4 q[CN][NM][2][F == 0 ? 1 : 2];
    uint32_t sc[CN][NM][2];
};

template <int NM, int F, int CN>
static __device__ __forceinline__ void wchunks_zero(wchunks<NM, F, CN> &b)
{
#pragma unroll
    for (int ci = 0; ci < CN; ci++)
#pragma unroll
        for (int m = 0; m < NM; m++)
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
#pragma unroll
                for (int u = 0; u < (F == 0 ? 1 : 2); u++)
                    b.q[ci][m][rr][u] = make_uint4(0, 0, 0, 0);
                b.sc[ci][m][rr] = 0;
            }
}

/* This lane's load cursor: pointers to chunk c of its rows g, g + 8 of the task's 16-row tile in
 * the tiled layout (moe.cuh; MXFP4: the 16 bytes at column 128 c + 32 t and their scales of
 * group 4 c + t; FP8: the 2 x 16 bytes at column 128 c + 32 t and the 128-row block's scale of
 * chunk c, s[m][0]). Set once per pass and advanced by adds in the loop (loop-carried, so not
 * recomputed under register pressure); a load is then a pointer plus an immediate. A chunk of
 * the tile is one block of 16 x 64 (MXFP4) / 16 x 128 (FP8) bytes, so the warp's loads of a
 * chunk are one contiguous run and a task one stream. Rows past R are the layout's zero
 * padding: they only reach outputs that are not stored. */
template <int NM, int F> struct wcur {
    const uint8_t *q[NM][2];
    const uint8_t *s[NM][2];
};
template <int F> struct wstep {
    enum { RB = F == 0 ? 64 : 128 };           /* bytes of a row in a chunk */
    enum { Q = 16 * RB, S = F == 0 ? 64 : 1 }; /* bytes a chunk: data, scales */
};

template <int NM, int F>
static __device__ __forceinline__ wcur<NM, F> wcur_at(const moe_mat (&w)[NM], int c, int t,
                                                      int64_t r0, int g)
{
    wcur<NM, F> p;
    const int64_t nch = (w[0].cols + 127) >> 7;
    const int64_t blk = (r0 >> 4) * nch + c; /* the tile's block of chunk c */
#pragma unroll
    for (int m = 0; m < NM; m++)
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            const int row = g + 8 * rr; /* in the tile */
            p.q[m][rr] =
                w[m].data + blk * wstep<F>::Q + row * wstep<F>::RB + (F == 0 ? 16 : 32) * t;
            if (F == 0)
                p.s[m][rr] = w[m].scale + blk * 64 + row * 4 + t;
            else
                p.s[m][rr] = w[m].scale + (r0 >> 7) * w[m].scale_cols + c;
        }
    return p;
}

template <int NM, int F>
static __device__ __forceinline__ void wcur_advance(wcur<NM, F> &p, int chunks)
{
#pragma unroll
    for (int m = 0; m < NM; m++)
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            p.q[m][rr] += chunks * wstep<F>::Q;
            if (F == 0 || rr == 0) p.s[m][rr] += chunks * wstep<F>::S;
        }
}

/* Loads chunks [c0, c0 + CN) (those < hl: this lane's chunk bound, hi and column < C), the
 * cursor p at chunk c0 - DC. What it does not load keeps its previous value (wchunks_zero at
 * the start of a pass), never re-zeroed in the loop: chunks past hi are not multiplied, and a
 * column past C meets zero activations (x below), where a stale weight is zero or a weight the
 * lane loaded earlier in the row (FP4 bits widen to finite f16; an FP8 NaN there has already
 * made the row's sum NaN, as on the CPU) and its scale one of the row's own or 2^-127, so its
 * product is 0 as with zeros. FP8 scales: chunks below hi (the block's scale is the quad's). */
template <int NM, int F, int CN, int DC>
static __device__ __forceinline__ void load_chunks(wchunks<NM, F, CN> &b, const wcur<NM, F> &p,
                                                   int c0, int hi, int hl)
{
    constexpr int U = F == 0 ? 1 : 2;
#pragma unroll
    for (int ci = 0; ci < CN; ci++) {
        const int c = c0 + ci;
        const int d = DC + ci;
#pragma unroll
        for (int m = 0; m < NM; m++) {
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
                if (c < hl) {
                    const uint4 *q = (const uint4 *)(p.q[m][rr] + d * wstep<F>::Q);
#pragma unroll
                    for (int u = 0; u < U; u++) b.q[ci][m][rr][u] = moe_ldw(q + u);
                    if (F == 0) b.sc[ci][m][rr] = __ldg(p.s[m][rr] + d * wstep<F>::S);
                }
            }
            if (F == 1 && c < hi) b.sc[ci][m][0] = __ldg(p.s[m][0] + d);
        }
    }
}

/* Whether every scale byte s of b is in 0..240 (MXFP4) / 1..254 (FP8), over the warp
 * (uniform): then a partial f is scaled as f * 2^(s - 113) (2^(s - 127)) in one multiply, which
 * equals (f * 2^14) * e8m0(s) (f * e8m0(s)) bit for bit: f * 2^14 is exact (f is a sum of
 * bounded products, a multiple of 2^-24), so both are the exact f * 2^(s - 113) rounded once,
 * and 2^(s - 113) is a normal f32 for 0 <= s <= 240 (the e8m0 code 0, 2^-127, included).
 * Other scales (FP8: the subnormal code 0; NaN at 255) take the two multiplies. */
template <int NM, int F, int CN>
static __device__ __forceinline__ bool scales_small(const wchunks<NM, F, CN> &b)
{
    uint32_t mx = 0;
#pragma unroll
    for (int ci = 0; ci < CN; ci++)
#pragma unroll
        for (int m = 0; m < NM; m++)
#pragma unroll
            for (int rr = 0; rr < (F == 0 ? 2 : 1); rr++)
                mx = max(mx, F == 0 ? b.sc[ci][m][rr] : b.sc[ci][m][rr] - 1u); /* FP8: 0 wraps */
    return __all_sync(0xffffffffu, mx <= (F == 0 ? 240u : 253u));
}

/* f * 2^E * e8m0(s) (E = 14 MXFP4, 0 FP8): one multiply where SMALL (scales_small). */
template <int E, bool SMALL> static __device__ __forceinline__ float wscale(float f, uint32_t s)
{
    if (SMALL) return __fmul_rn(f, __uint_as_float((s + E) << 23));
    return __fmul_rn(__fmul_rn(f, (float)(1 << E)), e8m0f(s));
}

/* The mma of chunks [c0, c0 + CN) (those < hi) into acc, chunk by chunk in ascending order.
 * brow: this lane's activations at column 32 t (NULL: none this pass); hl: its chunk bound. */
template <int NM, int F, int CN, bool SMALL, int XS = 0>
static __device__ __forceinline__ void
mma_chunks(const wchunks<NM, F, CN> &b, float (&acc)[NM][4], uint32_t (&x)[16], int c0, int hi,
           int hl, const uint16_t *brow, const float *s0, const float *s1)
{
#pragma unroll
    for (int ci = 0; ci < CN; ci++) {
        const int c = c0 + ci;
        if (c >= hi) break;
        /* x: this lane's activations (zero for the whole pass where brow is NULL) */
        if (brow) {
            if (c < hl) {
                const uint4 *p = (const uint4 *)(brow + c * 128);
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const uint4 v = (XS & 1) ? p[i] : ld_act<XS>(p + i); /* XS: shared memory */
                    x[4 * i] = v.x, x[4 * i + 1] = v.y, x[4 * i + 2] = v.z, x[4 * i + 3] = v.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 16; i++) x[i] = 0;
            }
        }
        const float xs0 = s0 ? ld_scale<XS>(s0 + c) : 0.0f, xs1 = s1 ? ld_scale<XS>(s1 + c) : 0.0f;
#pragma unroll
        for (int m = 0; m < NM; m++) {
            float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (F == 0) {
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    uint32_t pa[4], pb[4];
                    fp4_pairs(word4(b.q[ci][m][0][0], k), pa);
                    fp4_pairs(word4(b.q[ci][m][1][0], k), pb);
                    mma_f16(f, pa[0], pb[0], pa[1], pb[1], x[4 * k], x[4 * k + 1]);
                    mma_f16(f, pa[2], pb[2], pa[3], pb[3], x[4 * k + 2], x[4 * k + 3]);
                }
                /* C: (row g, group t, tokens t0, t0 + 1), (row g + 8, ...) */
                const uint32_t w0 = b.sc[ci][m][0], w1 = b.sc[ci][m][1];
                acc[m][0] = fmaf(wscale<14, SMALL>(f[0], w0), xs0, acc[m][0]);
                acc[m][1] = fmaf(wscale<14, SMALL>(f[1], w0), xs1, acc[m][1]);
                acc[m][2] = fmaf(wscale<14, SMALL>(f[2], w1), xs0, acc[m][2]);
                acc[m][3] = fmaf(wscale<14, SMALL>(f[3], w1), xs1, acc[m][3]);
            } else {
#pragma unroll
                for (int s = 0; s < 8; s++) {
                    uint32_t pa[2], pb[2];
                    fp8_pairs(word4(b.q[ci][m][0][s >> 2], s & 3), pa);
                    fp8_pairs(word4(b.q[ci][m][1][s >> 2], s & 3), pb);
                    mma_f16(f, pa[0], pb[0], pa[1], pb[1], x[2 * s], x[2 * s + 1]);
                }
                /* C: (row g, tokens ct, ct + 1), (row g + 8, ...) */
                const uint32_t ws = b.sc[ci][m][0];
                acc[m][0] = fmaf(wscale<0, SMALL>(f[0], ws), xs0, acc[m][0]);
                acc[m][1] = fmaf(wscale<0, SMALL>(f[1], ws), xs1, acc[m][1]);
                acc[m][2] = fmaf(wscale<0, SMALL>(f[2], ws), xs0, acc[m][2]);
                acc[m][3] = fmaf(wscale<0, SMALL>(f[3], ws), xs1, acc[m][3]);
            }
        }
    }
}

/* mma_chunks with the scaling that b's scales allow (a uniform branch). */
template <int NM, int F, int CN, int XS = 0>
static __device__ __forceinline__ void
mma_chunks_any(const wchunks<NM, F, CN> &b, float (&acc)[NM][4], uint32_t (&x)[16], int c0, int hi,
               int hl, const uint16_t *brow, const float *s0, const float *s1)
{
    if (scales_small(b))
        mma_chunks<NM, F, CN, true, XS>(b, acc, x, c0, hi, hl, brow, s0, s1);
    else
        mma_chunks<NM, F, CN, false, XS>(b, acc, x, c0, hi, hl, brow, s0, s1);
}

/* mma_chunks for NB > 1 token groups a pass (group j: FP4 tokens 2 j, 2 j + 1 of the pass, FP8
 * tokens 8 j .. 8 j + 7): each weight word is widened once and multiplied with the NB groups'
 * B fragments, so the widening (most of the loop) is paid once per weight for NB times the
 * tokens. The activations are loaded per k step (4 registers a group, not 16), the NB x NM
 * partials f live across the chunk. Every C element is the same mma k-sum (same A, its own B
 * column, k in the same order) scaled and added as in mma_chunks: bit-identical. */
template <int NM, int F, int CN, int NB, bool SMALL, int XS = 0>
static __device__ __forceinline__ void
mma_chunks_nb(const wchunks<NM, F, CN> &b, float (&acc)[NB][NM][4], int c0, int hi, int hl,
              const uint16_t *const (&brow)[NB], const float *const (&s0)[NB],
              const float *const (&s1)[NB])
{
#pragma unroll
    for (int ci = 0; ci < CN; ci++) {
        const int c = c0 + ci;
        if (c >= hi) break;
        float xs0[NB], xs1[NB];
#pragma unroll
        for (int j = 0; j < NB; j++) {
            xs0[j] = s0[j] ? ld_scale<XS>(s0[j] + c) : 0.0f;
            xs1[j] = s1[j] ? ld_scale<XS>(s1[j] + c) : 0.0f;
        }
        float f[NB][NM][4];
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int m = 0; m < NM; m++)
#pragma unroll
                for (int i = 0; i < 4; i++) f[j][m][i] = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            /* x[j]: group j's activations of k step k (FP4) / steps 2 k, 2 k + 1 (FP8); zero
             * where the lane carries no token or the chunk is past its columns */
            uint4 x[NB];
#pragma unroll
            for (int j = 0; j < NB; j++) {
                x[j] = make_uint4(0, 0, 0, 0);
                if (brow[j] && c < hl) {
                    const uint4 *p = (const uint4 *)(brow[j] + c * 128) + k;
                    x[j] = (XS & 1) ? *p : ld_act<XS>(p); /* XS: shared memory */
                }
            }
#pragma unroll
            for (int m = 0; m < NM; m++) {
                if (F == 0) {
                    uint32_t pa[4], pb[4];
                    fp4_pairs(word4(b.q[ci][m][0][0], k), pa);
                    fp4_pairs(word4(b.q[ci][m][1][0], k), pb);
#pragma unroll
                    for (int j = 0; j < NB; j++) {
                        mma_f16(f[j][m], pa[0], pb[0], pa[1], pb[1], x[j].x, x[j].y);
                        mma_f16(f[j][m], pa[2], pb[2], pa[3], pb[3], x[j].z, x[j].w);
                    }
                } else {
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int s = 2 * k + h;
                        uint32_t pa[2], pb[2];
                        fp8_pairs(word4(b.q[ci][m][0][s >> 2], s & 3), pa);
                        fp8_pairs(word4(b.q[ci][m][1][s >> 2], s & 3), pb);
#pragma unroll
                        for (int j = 0; j < NB; j++)
                            mma_f16(f[j][m], pa[0], pb[0], pa[1], pb[1], h ? x[j].z : x[j].x,
                                    h ? x[j].w : x[j].y);
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < NM; m++) {
            constexpr int E = F == 0 ? 14 : 0;
            const uint32_t w0 = b.sc[ci][m][0], w1 = F == 0 ? b.sc[ci][m][1] : w0;
#pragma unroll
            for (int j = 0; j < NB; j++) {
                acc[j][m][0] = fmaf(wscale<E, SMALL>(f[j][m][0], w0), xs0[j], acc[j][m][0]);
                acc[j][m][1] = fmaf(wscale<E, SMALL>(f[j][m][1], w0), xs1[j], acc[j][m][1]);
                acc[j][m][2] = fmaf(wscale<E, SMALL>(f[j][m][2], w1), xs0[j], acc[j][m][2]);
                acc[j][m][3] = fmaf(wscale<E, SMALL>(f[j][m][3], w1), xs1[j], acc[j][m][3]);
            }
        }
    }
}

/* The pass's mma of chunks [c0, c0 + CN): NB = 1 today's mma_chunks (x carried across chunks),
 * NB > 1 mma_chunks_nb; with the scaling that b's scales allow (a uniform branch). */
template <int NM, int F, int CN, int NB, int XS = 0>
static __device__ __forceinline__ void
mma_pass(const wchunks<NM, F, CN> &b, float (&acc)[NB][NM][4], uint32_t (&x)[16], int c0, int hi,
         int hl, const uint16_t *const (&brow)[NB], const float *const (&s0)[NB],
         const float *const (&s1)[NB])
{
    if constexpr (NB == 1) {
        mma_chunks_any<NM, F, CN, XS>(b, acc[0], x, c0, hi, hl, brow[0], s0[0], s1[0]);
    } else {
        if (scales_small(b))
            mma_chunks_nb<NM, F, CN, NB, true, XS>(b, acc, c0, hi, hl, brow, s0, s1);
        else
            mma_chunks_nb<NM, F, CN, NB, false, XS>(b, acc, c0, hi, hl, brow, s0, s1);
    }
}

/* The activation lines of chunks [c0, c0 + n) (those < hl) into L1 (prefetch.global.L1), issued
 * with a pass's weight loads and after the PDL wait (earlier, a stale line could be cached), so
 * that mma_chunks' activation loads, which wait behind the weights, then hit L1 where the
 * expert's tokens are not the SM's other tasks'. Compiled into the kernels launched from 5
 * rows only (PFX; moe_mma_run), and there issued where a.N > 16. */
template <int NB>
static __device__ __forceinline__ void prefetch_x(const uint16_t *const (&brow)[NB], int c0, int n,
                                                  int hl)
{
    for (int ci = 0; ci < n; ci++) {
        const int c = c0 + ci;
        if (c >= hl) break;
#pragma unroll
        for (int j = 0; j < NB; j++)
            if (brow[j]) asm volatile("prefetch.global.L1 [%0];\n" ::"l"(brow[j] + c * 128));
    }
}

/* XS (stage 2, MXFP4): the pass's 2 NB token rows of aq [2 NB][C] copied into the CTA's dynamic
 * shared memory once, after the wait (aq is the launch before's output), by all its warps
 * together, and brow moved there, so that the pass's activation loads (mma_chunks,
 * mma_chunks_nb) are served from shared memory instead of each chunk's L1 miss; with XS bit 2
 * the rows' scales of sa too ([2 NB][nch] f32 after the rows; s0, s1 moved there). The CTA's
 * warps are on one slot (the launcher checks that a slot's tiles fill whole CTAs), so they run
 * the same passes and the barriers line up. C % 8 == 0 (moe_mma_mat_ok: C % 32). */
template <int NB, int XS>
static __device__ __forceinline__ void
stage_x(const moe_mma_args &a, const uint16_t *xin, int ai, int off, int t0, int te, int64_t C,
        int lane, const uint16_t *(&brow)[NB], const float *(&s0)[NB], const float *(&s1)[NB])
{
    extern __shared__ uint4 moe_xs[];
    uint16_t *xw = (uint16_t *)moe_xs;
    const int nch = (int)((C + 127) >> 7);
    float *sw = (float *)(xw + 2 * NB * C); /* the rows' scales [2 NB][nch] */
    __syncthreads();                        /* the previous pass's reads are done */
    for (int k = 0; k < 2 * NB && t0 + k < te; k++) {
        const int64_t in = tok_input(a, 0, ai, off, t0 + k);
        const uint16_t *src = xin + in * C;
        for (int64_t q = threadIdx.x; q < C / 8; q += blockDim.x) {
            const unsigned d = (unsigned)__cvta_generic_to_shared(xw + k * C + 8 * q);
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src + 8 * q)
                         : "memory");
        }
        if constexpr ((XS & 4) != 0)
            for (int q = threadIdx.x; q < nch; q += blockDim.x)
                sw[k * nch + q] = __ldcg(a.sa + in * nch + q);
    }
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
    /* run_task's B fragment (FP4): lane (g, t) carries token t0 + 2 j + (g & 1) of group j at
     * column 32 t; its C pair is tokens t0 + 2 j, t0 + 2 j + 1 */
#pragma unroll
    for (int j = 0; j < NB; j++) {
        if (brow[j]) brow[j] = xw + (2 * j + ((lane >> 2) & 1)) * C + 32 * (lane & 3);
        if ((XS & 4) != 0 && s0[j]) s0[j] = sw + 2 * j * nch;
        if ((XS & 4) != 0 && s1[j]) s1[j] = sw + (2 * j + 1) * nch;
    }
}

/* Chunks [c, min(c + n, hi)) of the task's tile of every matrix (and the MXFP4 scales) into L2
 * by bulk prefetch, from one lane: in the tiled layout each is one contiguous run, so this is
 * one instruction a matrix (the per-line prefetches of sessions 4 and 11 took one a lane and
 * line, and cost more issue than they saved). */
template <int NM, int F>
static __device__ __forceinline__ void prefetch_blocks(const moe_mat (&w)[NM], int64_t r0, int c,
                                                       int n, int hi)
{
    if (c >= hi) return;
    const int k = min(n, hi - c);
    const int64_t blk = (r0 >> 4) * ((w[0].cols + 127) >> 7) + c;
#pragma unroll
    for (int m = 0; m < NM; m++) {
        asm volatile(
            "cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(w[m].data + blk * wstep<F>::Q),
            "r"((unsigned)(k * wstep<F>::Q))
            : "memory");
        if (F == 0)
            asm volatile(
                "cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(w[m].scale + blk * 64),
                "r"((unsigned)(k * 64))
                : "memory");
    }
}

/* ---- one task: 16 rows of the NM matrices w (format F: 0 MXFP4, 1 FP8) for its tokens
 * [tb, te), run by a group of ks warps, warp `slice` on the 128-column chunks [lo, hi) --------
 * stage 1 (NM = 2): x [N, D] codes -> araw [pair, I] = bf16(swiglu(g, u) * wt);
 * stage 2 (NM = 1): aq [P, I] codes -> y [pair, D] = bf16(w2 . a).
 * A pass takes NB token groups (FP4 2 tokens a group, FP8 8) on the same widened weights.
 * red: the group's [ks][NB * NM * 4][32] partials; bar: its named barrier (ks > 1). Slice 0 sums
 * the slices in ascending order and writes the outputs. PIPE 0: LOADS loads a lane, then their
 * mma; PIPE 1: two halves of LOADS / 2 in a ring, the next half's loads issued before this
 * half's mma (same registers, loads always in flight; the same sums in the same order). */
template <int NM, int F, int PIPE, int LOADS, int NB, int PFX, int XS = 0, int L2P = 0>
static __device__ __forceinline__ void
run_task(const moe_mma_args &a, const moe_mat (&w)[NM], int ai, int tb, int te, int off, int64_t r0,
         int lane, int slice, int ks, int lo, int hi, float *red, int bar, int &pend)
{
    constexpr int TG = F == 0 ? 2 : 8; /* tokens per group */
    constexpr int TPP = TG * NB;       /* tokens per pass */
    constexpr int U = F == 0 ? 1 : 2;  /* 16-byte loads per row and chunk */
    constexpr int CPI = LOADS >= NM * 2 * U ? LOADS / (NM * 2 * U) : 1; /* chunks an iteration */
    constexpr int CPH = CPI / 2 > 0 ? CPI / 2 : 1;
    const int g = lane >> 2, t = lane & 3;
    const int64_t R = w[0].rows, C = w[0].cols;
    const int nch = (int)((C + 127) >> 7);
    const uint16_t *xin = NM == 2 ? (F == 0 ? a.x4 : a.x8) : a.aq;
    const float *sxp = NM == 2 ? a.sx : a.sa;
    const int64_t rA = r0 + g, rB = r0 + g + 8;
    /* this lane's chunks: c < hi with column 128 c + 32 t < C */
    const int hl = min(hi, (int)((C - 32 * t + 127) >> 7));

    for (int t0 = tb; t0 < te; t0 += TPP) {
        /* per group j, B: this lane's token (FP4: only lanes with g / 2 == t carry one, on
         * group t's k); C: the two tokens of this lane's outputs */
        const uint16_t *brow[NB];
        const float *s0[NB], *s1[NB];
#pragma unroll
        for (int j = 0; j < NB; j++) {
            const int bt = t0 + TG * j + (F == 0 ? (g & 1) : g);
            const bool bon = (F == 0 ? (g >> 1) == t : true) && bt < te;
            brow[j] = NULL;
            if (bon) brow[j] = xin + tok_input(a, NM == 2, ai, off, bt) * C + 32 * t;
            const int ct = t0 + TG * j + (F == 0 ? 0 : 2 * t);
            s0[j] = s1[j] = NULL;
            if (ct < te) s0[j] = sxp + tok_input(a, NM == 2, ai, off, ct) * nch;
            if (ct + 1 < te) s1[j] = sxp + tok_input(a, NM == 2, ai, off, ct + 1) * nch;
        }

        float acc[NB][NM][4];
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int m = 0; m < NM; m++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[j][m][i] = 0.0f;

        uint32_t x[16]; /* NB = 1: the activations of the chunk, carried */
#pragma unroll
        for (int i = 0; i < 16; i++) x[i] = 0;
        wcur<NM, F> cur = wcur_at<NM, F>(w, lo, t, r0, g); /* at chunk c0 */
        if constexpr (PIPE == 0) {
            wchunks<NM, F, CPI> b; /* all weight loads of the iteration first */
            wchunks_zero(b);
            for (int c0 = lo; c0 < hi; c0 += CPI) {
                load_chunks<NM, F, CPI, 0>(b, cur, c0, hi, hl);
                if (L2P && lane == 0) prefetch_blocks<NM, F>(w, r0, c0 + L2P * CPI, CPI, hi);
                pdl_wait_once(a, pend); /* the first weights in flight */
                if (PFX && a.N > 16) prefetch_x<NB>(brow, c0, CPI, hl);
                wcur_advance(cur, CPI);
                mma_pass<NM, F, CPI, NB>(b, acc, x, c0, hi, hl, brow, s0, s1);
            }
        } else {
            wchunks<NM, F, CPH> b0, b1; /* ping-pong, no copies */
            wchunks_zero(b0), wchunks_zero(b1);
            load_chunks<NM, F, CPH, 0>(b0, cur, lo, hi, hl);
            pdl_wait_once(a, pend); /* the first weights in flight */
            if constexpr ((XS & 1) != 0)
                stage_x<NB, XS>(a, xin, ai, off, t0, te, C, lane, brow, s0, s1);
            const bool pfx = PFX && !XS && a.N > 16; /* XS: the rows are staged */
            if (pfx) prefetch_x<NB>(brow, lo, CPH, hl);
            for (int c0 = lo; c0 < hi; c0 += 2 * CPH) {
                load_chunks<NM, F, CPH, CPH>(b1, cur, c0 + CPH, hi, hl);
                if (L2P && lane == 0)
                    prefetch_blocks<NM, F>(w, r0, c0 + L2P * 2 * CPH, 2 * CPH, hi);
                if (pfx) prefetch_x<NB>(brow, c0 + CPH, CPH, hl);
                mma_pass<NM, F, CPH, NB, XS>(b0, acc, x, c0, hi, hl, brow, s0, s1);
                load_chunks<NM, F, CPH, 2 * CPH>(b0, cur, c0 + 2 * CPH, hi, hl);
                if (pfx) prefetch_x<NB>(brow, c0 + 2 * CPH, CPH, hl);
                wcur_advance(cur, 2 * CPH);
                mma_pass<NM, F, CPH, NB, XS>(b1, acc, x, c0 + CPH, hi, hl, brow, s0, s1);
            }
        }

        pdl_wait_once(a, pend); /* an empty slice */

        /* the group's slices, in ascending order, on slice 0 */
        constexpr int NA = NB * NM * 4; /* partials a lane */
        if (ks > 1) {
#pragma unroll
            for (int j = 0; j < NB; j++)
#pragma unroll
                for (int m = 0; m < NM; m++)
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        red[(slice * NA + (j * NM + m) * 4 + i) * 32 + lane] = acc[j][m][i];
            named_bar(bar, 32 * ks);
            if (slice == 0)
#pragma unroll
                for (int j = 0; j < NB; j++)
#pragma unroll
                    for (int m = 0; m < NM; m++)
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            const int q = (j * NM + m) * 4 + i;
                            float v = red[q * 32 + lane];
                            for (int sl = 1; sl < ks; sl++)
                                v = __fadd_rn(v, red[(sl * NA + q) * 32 + lane]);
                            acc[j][m][i] = v;
                        }
            named_bar(bar, 32 * ks); /* red is free for the next pass */
        }
        if (slice != 0) continue;

        if (F == 0) { /* the quad's four groups: ((0 + 1) + (2 + 3)) on every lane */
#pragma unroll
            for (int j = 0; j < NB; j++)
#pragma unroll
                for (int m = 0; m < NM; m++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float &v = acc[j][m][i];
                        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 1));
                        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 2));
                    }
        }

        /* epilogue: output i of this lane in group j is (row i < 2 ? g : g + 8, token (i & 1)
         * of the C pair); with FP4 the quad holds the same four sums and lane t writes the t-th */
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (F == 0 && i != t) continue;
                const int64_t row = i < 2 ? rA : rB;
                const int tok = t0 + TG * j + (F == 0 ? 0 : 2 * t) + (i & 1);
                if (row >= R || tok >= te) continue;
                const int64_t pair = tok_pair(a, ai, off, tok);
                if (NM == 2) {
                    const float gv = q_bf16(__fmul_rn(acc[j][0][i], w[0].out_scale));
                    const float uv = q_bf16(__fmul_rn(acc[j][NM - 1][i], w[NM - 1].out_scale));
                    float v = q_swiglu(gv, uv, a.limit);
                    if (ai > 0) v = __fmul_rn(v, __ldg(a.wts + pair));
                    a.araw[pair * a.I + row] = (uint16_t)(__float_as_uint(q_bf16(v)) >> 16);
                } else {
                    const float y = q_bf16(__fmul_rn(acc[j][0][i], w[0].out_scale));
                    a.y[pair * a.D + row] = (uint16_t)(__float_as_uint(y) >> 16);
                }
            }
    }
}

/* A task's tokens [0, ntok): with NB > 1, passes of NB groups while more than one group's
 * tokens remain (a last pass of 2..NB groups partly empty still widens each weight once), then
 * a one-group pass for what is left (none of its mma wasted). */
template <int NM, int F, int PIPE, int LOADS, int NB, int PFX, int XS = 0, int L2P = 0>
static __device__ __forceinline__ void
run_tokens(const moe_mma_args &a, const moe_mat (&w)[NM], int ai, int ntok, int off, int64_t r0,
           int lane, int slice, int ks, int lo, int hi, float *red, int bar, int &pend)
{
    constexpr int TG = F == 0 ? 2 : 8, TPP = TG * NB;
    int n2 = 0; /* tokens of the NB-group passes */
    if (NB > 1 && ntok > TG) n2 = ntok % TPP == 0 || ntok % TPP > TG ? ntok : ntok - ntok % TPP;
    if (NB > 1 && n2 > 0)
        run_task<NM, F, PIPE, LOADS, NB, PFX, XS, L2P>(a, w, ai, 0, n2, off, r0, lane, slice, ks,
                                                       lo, hi, red, bar, pend);
    if (n2 < ntok)
        run_task<NM, F, PIPE, LOADS, 1, PFX, XS, L2P>(a, w, ai, n2, ntok, off, r0, lane, slice, ks,
                                                      lo, hi, red, bar, pend);
}

/* After a stage 1 task: its ticket on (slot, 128-row block of a); the block's last task
 * quantises the block for every token of the expert into aq (the layout of the expert's w2)
 * and sa. The other tasks' araw stores are ordered before their tickets by the fence. */
static __device__ void stage1_tail(const moe_mma_args &a, int slot, int ai, int e, int ntok,
                                   int off, int tile, int lane)
{
    const int64_t I = a.I;
    const int tiles = (int)((I + 15) >> 4), nb = (int)((I + 127) >> 7), blk = tile >> 3;
    const int need = min(8, tiles - 8 * blk);
    __threadfence();
    __syncwarp();
    int tk = 0;
    if (lane == 0) tk = atomicAdd(a.tickets + (int64_t)slot * nb + blk, 1);
    tk = __shfl_sync(0xffffffffu, tk, 0);
    if (tk != need - 1) return;
    __threadfence();
    const bool l4 = a.table[e].w2.fmt == MOE_MXFP4;
    const int64_t c0 = (int64_t)blk * 128, width = min((int64_t)128, I - c0);
    const bool on = 4 * lane < width;
    enum { TB = 8 }; /* tokens whose loads are in flight together */
    for (int t0 = 0; t0 < ntok; t0 += TB) {
        int64_t pair[TB];
        uint2 u[TB];
#pragma unroll
        for (int j = 0; j < TB; j++) {
            pair[j] = t0 + j < ntok ? tok_pair(a, ai, off, t0 + j) : 0;
            u[j] = make_uint2(0, 0);
            if (on && t0 + j < ntok)
                u[j] = __ldcg((const uint2 *)(a.araw + pair[j] * I + c0 + 4 * lane));
        }
#pragma unroll
        for (int j = 0; j < TB; j++) {
            if (t0 + j >= ntok) break; /* uniform */
            const float v[4] = {
                __uint_as_float(u[j].x << 16), __uint_as_float(u[j].x & 0xffff0000u),
                __uint_as_float(u[j].y << 16), __uint_as_float(u[j].y & 0xffff0000u)};
            uint16_t *d = a.aq + pair[j] * I + c0;
            const float s = quant_store(v, on, l4 ? d : NULL, l4 ? NULL : d, lane);
            if (lane == 0) a.sa[pair[j] * nb + blk] = s;
        }
    }
    if (a.ready) { /* the block counts for its slot (stage 2's RDY instances poll it) */
        __threadfence();
        __syncwarp();
        if (lane == 0) atomicAdd(a.ready + (int64_t)slot * MOE_RDY_STRIDE, 1);
    }
}

/* Stage kernel (NM = 2: stage 1, NM = 1: stage 2): the CTA's WPC warps are WPC / ks groups of
 * ks warps, each group one task (slot, 16-row tile) with K split in ks slices (ks = 1, 2, 4).
 * Groups synchronise only among themselves (named barrier 1 + group), so a group whose slot is
 * past the device count exits as a whole. MINB: resident CTAs per SM asked of ptxas (a register
 * budget); PIPE and LOADS: run_task's load schedule;
 * PFX: the instances launched from 5 rows (prefetch_x where a.N > 16; moe_mma_run says why).
 * XS: stage 2's MXFP4 token rows staged in shared memory (stage_x; dynamic shared memory of
 * 2 NB4 x I codes a CTA, and in the 1-group kernels their 2 x ceil(I / 128) scales). L2P:
 * prefetch_blocks that many loop iterations ahead (0: none). RDY: stage 2's routed tasks wait
 * for their slot's a instead of the grid (the file header; a.ready). */
template <int NM, int MINB, int PIPE, int LOADS, int NB4, int NB8, int PFX, int XS = 0, int L2P = 0,
          int RDY = 0>
__global__ void __launch_bounds__(WPC * 32, MINB) moe_mma_stage_kernel(const moe_mma_args a, int ks)
{
    DSV4_PDL_LATE();
    constexpr int NB = NB4 > NB8 ? NB4 : NB8;
    /* run_task's XS bits for stage 2's MXFP4 tasks: 1 the rows staged, 4 their scales too (the
     * 1-group kernels), 2 (RDY) the other activation loads through L2 (ld_act) */
    constexpr int XS_FP4 = (XS ? (NB4 == 1 ? 5 : 1) : 0) | 2 * RDY;
    __shared__ float red[WPC * NB * 2 * 4 * 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, slice = warp - grp * ks;
    const int64_t task = (int64_t)blockIdx.x * (WPC / ks) + grp;
    const int64_t R = NM == 2 ? a.I : a.D, C = NM == 2 ? a.D : a.I;
    const int64_t tiles = (R + 15) >> 4;
    /* slot: the shared expert's [0, ss), then the active experts; ai: 0 for the shared expert
     * (its tokens from off), a > 0 for list.active[a - 1] */
    const int slot = (int)(task / tiles), tile = (int)(task - (int64_t)slot * tiles);
    const int ai = slot < a.ss ? 0 : slot - a.ss + 1;
    /* Stage 2's tasks and stage 1's shared expert (slots < ss) read before the wait only the work
     * list, which the prep launch wrote two or more launches back, the table and the weights:
     * their first weight loads go out before it (run_task: pend), so that they overlap the
     * previous launch's tail. The other tasks of stage 1 need the list of the launch before. */
    const int rdy = RDY && (ai > 0 || a.rdy_shared); /* this task polls its slot */
    int pend = NM == 1 ? (rdy ? 2 + slot : 1) : ai == 0;
    if (!pend) DSV4_PDL_WAIT();
    if (ai > 0 && ai > *a.list.n_active) { /* the whole group */
        if (RDY) return;                   /* reads nothing of stage 1's */
        pdl_wait_once(a, pend);
        return;
    }
    int e = a.E, off = slot * a.sst, ntok = (int)min((int64_t)a.sst, a.N - off);
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
    const int nch = (int)((C + 127) >> 7), per = (nch + ks - 1) / ks;
    const int lo = min(nch, slice * per), hi = min(nch, lo + per);
    const int64_t r0 = (int64_t)tile * 16;
    float *gred = red + grp * ks * NB * NM * 4 * 32;
    if (w[0].fmt == MOE_MXFP4)
        run_tokens<NM, 0, PIPE, LOADS, NB4, PFX, NM == 1 ? XS_FP4 : 0, L2P>(
            a, w, ai, ntok, off, r0, lane, slice, ks, lo, hi, gred, 1 + grp, pend);
    else if (!rdy)
        run_tokens<NM, 1, PIPE, LOADS, NB8, PFX, 0, L2P>(a, w, ai, ntok, off, r0, lane, slice, ks,
                                                         lo, hi, gred, 1 + grp, pend);
    else
        run_tokens<NM, 1, PIPE, LOADS, NB8, PFX, 2, L2P>(a, w, ai, ntok, off, r0, lane, slice, ks,
                                                         lo, hi, gred, 1 + grp, pend);
    pdl_wait_once(a, pend); /* no pass ran */
    if constexpr (NM == 2)
        if (slice == 0) stage1_tail(a, slot, ai, e, ntok, off, tile, lane);
}

/* Block 0: sel [N, K] -> the work list and the tickets zeroed. Blocks 1..: x = act_quant(h)
 * as codes in L4 and L8 + scales, one warp per 128-column block (moe_route.cuh). */
__global__ void moe_mma_prep_kernel(const moe_mma_args a, const int32_t *sel, const float *h)
{
    DSV4_PDL_WAIT();
    if (blockIdx.x > 0) {
        const int64_t gw = (int64_t)(blockIdx.x - 1) * (blockDim.x >> 5) + (threadIdx.x >> 5);
        moe_quant_x(a, h, gw, threadIdx.x & 31);
        return;
    }
    extern __shared__ int32_t wl[];
    const int64_t nt = moe_counter_ints(a.slots, a.I);
    for (int64_t i = threadIdx.x; i < nt; i += blockDim.x) a.tickets[i] = 0;
    moe_list_build(a.list, sel, a.N * a.K, a.E, wl);
}

/* y [P, D] (bf16 bits) -> out [N, D]: per row, the routed pairs in ascending (expert, slot)
 * order added in f32 from 0 (moe_body's acc), then + the shared expert's row, then bf16. The
 * row's order comes from sel before the PDL wait: sel is the prep launch's (or older), three
 * launches back (pdl.cuh), so only the y loads wait for stage 2. */
__global__ void moe_mma_combine_kernel(float *out, const uint16_t *y, const int32_t *sel, int64_t N,
                                       int K, int64_t D, int E)
{
    DSV4_PDL_LATE();
    const int64_t r = blockIdx.y, c = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    int ord[MOE_MAX_K], n = 0;
    for (int j = 0; j < K; j++) { /* insertion by expert id; equal ids keep slot order */
        const int e = sel[r * K + j];
        if (e < 0 || e >= E) continue;
        int i = n++;
        for (; i > 0 && sel[r * K + ord[i - 1]] > e; i--) ord[i] = ord[i - 1];
        ord[i] = j;
    }
    DSV4_PDL_WAIT();
    if (c >= D) return;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < n; i++) {
        const uint2 v = *(const uint2 *)(y + (r * K + ord[i]) * D + c);
        acc[0] = __fadd_rn(acc[0], __uint_as_float(v.x << 16));
        acc[1] = __fadd_rn(acc[1], __uint_as_float(v.x & 0xffff0000u));
        acc[2] = __fadd_rn(acc[2], __uint_as_float(v.y << 16));
        acc[3] = __fadd_rn(acc[3], __uint_as_float(v.y & 0xffff0000u));
    }
    const uint2 s = *(const uint2 *)(y + (N * K + r) * D + c);
    float4 o;
    o.x = q_bf16(__fadd_rn(acc[0], __uint_as_float(s.x << 16)));
    o.y = q_bf16(__fadd_rn(acc[1], __uint_as_float(s.x & 0xffff0000u)));
    o.z = q_bf16(__fadd_rn(acc[2], __uint_as_float(s.y << 16)));
    o.w = q_bf16(__fadd_rn(acc[3], __uint_as_float(s.y & 0xffff0000u)));
    *(float4 *)(out + r * D + c) = o;
}

int moe_mma_mat_ok(const moe_mat *m)
{
    if (((uintptr_t)m->data & 15) != 0 || m->cols % 32 != 0) return 0;
    if (m->fmt == MOE_MXFP4) return m->scale != NULL && m->scale_cols >= m->cols / 32;
    if (m->fmt == MOE_FP8)
        return m->scale != NULL && !m->scale_f32 && m->scale_cols >= (m->cols + 127) / 128;
    return 0;
}

/* K slices per task (1, 2 or 4) for an input of nch 128-column chunks and a grid of `tasks`
 * tasks. A slice more costs its partial sums through shared memory, a barrier and warps idle
 * at the end of the task; it pays only where it saves a round of the grid (4 CTAs an SM). So:
 * the split with the least rounds x (chunks a warp + 4), a task's fixed cost counted as four
 * chunks, from at least about 8 chunks a warp (nch >= 32: up to 4 slices, >= 16: 2) and at most
 * 32 (Pro's stage 1, 56 chunks, takes 2 or 4), the fewer slices on a tie. Flash N = 1: stage 1
 * 896 tasks -> 2 slices, 448 CTAs, one round (a round of longer warps beat 1.7 of shorter ones:
 * test_gpu_moe --profile 1 79.3 / 80.4 / 80.3 -> 77.2 / 76.9 / 76.5 us), stage 2 -> 1 slice;
 * from batch 2 on one slice each; Pro N = 1 4 and 2 (2 and 1 were 1.8% slower in the step),
 * N = 2 4 and 1, from N = 4 on 2 and 1. Until session 10 the split was the most slices wherever
 * half of them did not fit a round; engine step (H100, dsv4 bench, docs/PERF.md session 10):
 * Flash batch 2 -3%, 8 -4%, 16 -5%, 64 -5.5%, 128 -7%; Pro batch 64 -2.4%. A fixed cost of two
 * chunks had Flash batch 4's stage 2 at 2 slices: 1.782 / 1.779 ms against 1.771 / 1.769 with
 * 1 (two calls, each against the old split: 1.777 / 1.779, 1.779 / 1.781). */
static int split_pick(int64_t nch, int64_t tasks, int sms)
{
    const int64_t wave = 4 * (int64_t)sms;
    const int most = nch >= 32 ? 4 : nch >= 16 ? 2 : 1;
    int best = 0;
    int64_t best_cost = 0;
    for (int ks = 1; ks <= most; ks *= 2) {
        const int64_t per = (nch + ks - 1) / ks; /* chunks a warp */
        if (ks < most && per > 32) continue;
        const int64_t ctas = (tasks * ks + WPC - 1) / WPC, rounds = (ctas + wave - 1) / wave;
        const int64_t cost = rounds * (per + 4);
        if (!best || cost < best_cost) best = ks, best_cost = cost;
    }
    return best;
}

/* Stage 2's launch (PIPE 1): with xs > 0 the XS instance and xs bytes of dynamic shared memory
 * for its token rows, else the instance without. */
template <int MINB, int LOADS, int NB4, int NB8, int PFX, int L2P = 0>
static void stage2_launch(cudaStream_t st, const moe_mma_args *a, unsigned grid, int ks, size_t xs)
{
    constexpr int RD = NB4 == 1; /* RDY instances: the 1-group kernels only */
    if (RD && xs && a->ready)
        moe_mma_stage_kernel<1, MINB, 1, LOADS, NB4, NB8, PFX, 1, L2P, RD>
            <<<grid, WPC * 32, xs, st>>>(*a, ks);
    else if (RD && a->ready)
        moe_mma_stage_kernel<1, MINB, 1, LOADS, NB4, NB8, PFX, 0, L2P, RD>
            <<<grid, WPC * 32, 0, st>>>(*a, ks);
    else if (xs)
        moe_mma_stage_kernel<1, MINB, 1, LOADS, NB4, NB8, PFX, 1, L2P>
            <<<grid, WPC * 32, xs, st>>>(*a, ks);
    else
        moe_mma_stage_kernel<1, MINB, 1, LOADS, NB4, NB8, PFX, 0, L2P>
            <<<grid, WPC * 32, 0, st>>>(*a, ks);
}

dsv4_status moe_mma_run(cudaStream_t st, const moe_mma_args *a, const moe_route *rt, float *out,
                        const float *h, const int32_t *sel)
{
    const int64_t N = a->N, D = a->D, I = a->I;
    const int64_t qwarps = N * ((D + 127) / 128);
    const unsigned prep_grid = 1u + (unsigned)((qwarps + 7) / 8);
    if (rt) {
        DSV4_TRY(moe_route_prep_launch(st, a, rt, h));
    } else {
        moe_mma_prep_kernel<<<prep_grid, 256, (size_t)3 * a->E * sizeof(int32_t), st>>>(*a, sel, h);
        CUDA_LAUNCHED();
    }
    const int64_t t1 = (int64_t)a->slots * ((I + 15) / 16),
                  t2 = (int64_t)a->slots * ((D + 15) / 16);
    const int ks1 = split_pick((D + 127) / 128, t1, a->sms),
              ks2 = split_pick((I + 127) / 128, t2, a->sms);
    const int64_t g1 = (t1 + WPC / ks1 - 1) / (WPC / ks1), g2 = (t2 + WPC / ks2 - 1) / (WPC / ks2);
    /* stage 1: 8 loads a lane, no ring, 4 CTAs per SM asked of ptxas (a few spills outside the
     * loop); stage 2: 8 loads a lane in the two-half ring, 4 CTAs per SM (no spills). The best
     * of the 8 (MINB, PIPE, LOADS) choices per stage on H100 (test_gpu_moe; the figures are in the
     * git history of this file's header). Where the routed experts average 1.125 tokens or more (8
     * N K >= 9 E), passes of 2 token groups (MXFP4 4 tokens, FP8 16): stage 1 at 3 CTAs per SM
     * (168 registers, 72 bytes of stack) in the two-half ring of one chunk a half (4 loads a
     * lane), its FP8 (shared expert) passes of one group. Until session 31 it loaded without the
     * ring (no stack) and took over only from 5 N K >= 6 E (the 1-group kernel below that);
     * the ring, in one binary against that (dsv4 bench, H100, ms/step, docs/PERF.md session 31):
     * Flash batch 52 / 64 / 96 / 128 -3.1 / -2.9 / -2.2 / -1.9%, Pro 80 / 96 / 128 -0.9 / -0.9 /
     * -0.5%; from 8 N K >= 9 E as the other stage (Flash 48 -2.0%, Pro 72 -0.5%), where from
     * 8 N K >= 7 E lost (Flash 40 +0.5%, Pro 56 +0.9%). Slower: 2 CTAs an SM with 8 loads (with
     * or without the ring) or 16 in the ring, 16 in the ring at 3, L2P 2, no L2P, FP8 in 2
     * groups; at 8-44 rows the 1-group kernel in that ring at 3 CTAs (+3-7%). Stage 2 at 4 CTAs
     * per SM (128 registers, 16-32 bytes of stack), 8 loads a lane (3 CTAs until session 18; 4 is
     * faster on the tiled layout: Flash batch 64 / 128 / 256 -2.2 / -1.8 / -1.7%, Pro 96 / 128 /
     * 256 -1.5 / -1.5 / -1.3%, Flash prefill +1.9%; docs/PERF.md). Below that most experts have one
     * token, the second group would be empty and the lower occupancy costs. The rule was N K >= 2 E
     * until session 18: with the L2 prefetch below (session 15) and stage 2 at 4 CTAs the 2-group
     * kernels win from ~1.1 E (dsv4 bench, H100, ms/step, 1-group / 2-group: Flash batch 40 (0.94
     * E) 4.97-4.98 / 5.03-5.04, 44 (1.03 E) 5.29-5.30 / 5.28-5.30, 48 (1.125 E) 5.58 / 5.53-5.54,
     * 52 (1.22 E) 5.87 / 5.77-5.79; Pro 56 (0.875 E) 7.92-7.93 / 7.98-8.00, 64 (1.0 E) 8.66 / 8.66,
     * 72 (1.125 E) 9.71 / 9.60; docs/PERF.md, session 18). Engine step (dsv4 bench, H100, 2-group
     * kernels from N K >= E / 2 E / never, ms): Flash batch 64 10.09 / 9.64 / 9.65, 128 16.02
     * / 16.10 / 16.58, 256 25.44 / 25.39 / 27.85; Pro batch 64 13.23 / 12.46 / 12.45, 128 21.29
     * / 21.31 / 21.81 (docs/PERF.md, session 6). test_gpu_moe's routing concentrates the tokens on
     * fewer experts, where the rule N K >= E looked right. The kernels load the weights past L1
     * (moe_ldw; the 1-group ones since session 6: engine step batch 1 / 8 / 64 -4.3 / -2.9 / -1.8%,
     * docs/PERF.md session 6; the 2-group ones since session 15, on the tiled layout: Flash batch
     * 96 / 128 / 256 -0.6 / -0.4 / -0.2%, Pro 128 / 256 -0.4%, Pro prefill +1.2%). The 2-group
     * kernels also prefetch the task's blocks of the next iteration into L2 (L2P, prefetch_blocks:
     * one bulk prefetch a matrix, possible since the tiled layout): Flash batch 96 / 128 / 256 -3.3
     * / -2.8 / -1.6%, Pro 128 / 256 -5.2 / -4.1%, prefill +1.4% / +5.1%. In the 1-group kernels it
     * cost batch 1-8 1-5% (a runtime switch: two iterations ahead and more were slower everywhere),
     * so not there (docs/PERF.md, session 15); but stage 2's 1-group kernel with it from
     * S2_L2P_ROWS rows gains (session 18, compile-time instances: Flash batch 8 / 16 / 32 / 48 -0.6
     * / -1.2 / -1.3 / -1.6%, Pro 8 / 16 / 64 -0.8 / -1.2 / -1.9%; at 5-6 rows +-0.3%), where stage
     * 1's loses (Flash 32 / 64 +0.9 / +1.3%). From 5 rows the kernels are the PFX instances:
     * prefetch_x issued where a.N > 16. What pays is how ptxas allocates them with that flag live
     * (4-CTA stage 2: 64 bytes of stack against 48), not the prefetch: compiled in unconditionally
     * it gained nothing, at 5-16 rows it is off and they gain all the same, and at 2 rows they cost
     * 1% (docs/PERF.md, sessions 12 and 13). H100, dsv4 bench, ms/step, above 16 rows, one call
     * against 8897961: Flash 4 layers batch 17 3.345 -> 3.307, 32 4.761 -> 4.692, 64 7.552
     * -> 7.410, 128 11.854 -> 11.683; Pro 2 layers 24 5.058 -> 4.971, 64 9.868 -> 9.695, 128 16.713
     * -> 16.399 (-1.1 to -1.9%). From 5 rows instead of 17 (one binary, a switch): Flash batch
     * 5 1.841 -> 1.833, 8 2.259 -> 2.247, 9 2.367 -> 2.351, 16 3.194 -> 3.172; Pro 8 2.775
     * -> 2.748, 12 3.351 -> 3.315, 16 3.961 -> 3.911; from 2: batch 2 1.285 -> 1.299. Below 5 rows
     * the kernels are as before. */
    const unsigned b = WPC * 32;
    /* Stage 2's token rows a CTA in shared memory (XS, stage_x) from 2 rows, where a slot's
     * tiles fill whole CTAs (its warps then share the rows): two rows a pass in the 1-group
     * kernels, four in the 2-group ones. H100, dsv4 bench, one binary with and without
     * (docs/PERF.md, session 14), ms/step: Flash batch 2 -0.5%, 8 -0.6%, 16 -1.7%, 32 -2.1%, 64
     * -2.5%, 96 -2.7%, 128 -3.4%, 256 -3.9%; Pro batch 2 -0.4%, 8 -0.8%, 16 -1.4%, 64 -1.9%,
     * 128 -2.2%, 256 -3.9%; batch 1 +0.1% (a build with the rows a warp), so not there (but
     * with RDY). The rows a warp (4x the shared memory, Pro 48 KB a CTA) cost Pro 2-8% in L1.
     * Sized for the rows' scales too (the 1-group kernels stage them; session 23, with the
     * rows alone: Flash batch 16-40 -0.6 to -0.8%, Pro 64 -0.5%). */
    const size_t xs = (size_t)2 * I * 2 + (size_t)2 * ((I + 127) / 128) * 4, xs4 = 2 * xs;
    const int two_groups = 8 * N * a->K >= 9 * a->E;
    /* stage 2 waits per slot (RDY; the file header) in the 1-group kernels where stage 1's grid
     * (the host's bound on the active experts) is at most RDY_WAVES rounds, and at 1 row only
     * where it is more than one (Flash's is one, its warps end together: RDY +0.8%; Pro's 2.5:
     * -0.3%; docs/PERF.md, session 23). So Flash from 2 rows to 47 (where the 2-group kernels
     * take over), Pro from 1 to 17; the shared expert's tasks too where stage 1 is more than one
     * round (Flash from 3 rows, Pro from 1). */
    moe_mma_args ar = *a;
    const int64_t wave = 4 * (int64_t)a->sms;
    const int rdy =
        !two_groups &&
        (a->rdy > 0 || (a->rdy == 0 && (N >= 2 || g1 > wave) && g1 <= RDY_WAVES * wave));
    if (!rdy) ar.ready = NULL;
    ar.rdy_shared = rdy && (a->rdy > 0 || g1 > wave);
    a = &ar;
    const int use_xs =
        (N >= 2 || a->ready) && ((D + 15) / 16) % (WPC / ks2) == 0 && xs <= 32 * 1024;
    const int use_xs4 = use_xs && xs4 <= 32 * 1024;
    if (!two_groups && N < 5)
        moe_mma_stage_kernel<2, 4, 0, 8, 1, 1, 0><<<(unsigned)g1, b, 0, st>>>(*a, ks1);
    else if (!two_groups)
        moe_mma_stage_kernel<2, 4, 0, 8, 1, 1, 1><<<(unsigned)g1, b, 0, st>>>(*a, ks1);
    else
        moe_mma_stage_kernel<2, 3, 1, 4, 2, 1, 1, 0, 1><<<(unsigned)g1, b, 0, st>>>(*a, ks1);
    CUDA_LAUNCHED();
    if (!two_groups && N < 5)
        stage2_launch<4, 8, 1, 1, 0>(st, a, (unsigned)g2, ks2, use_xs ? xs : 0);
    else if (!two_groups && N >= S2_L2P_ROWS)
        stage2_launch<4, 8, 1, 1, 1, 1>(st, a, (unsigned)g2, ks2, use_xs ? xs : 0);
    else if (!two_groups)
        stage2_launch<4, 8, 1, 1, 1>(st, a, (unsigned)g2, ks2, use_xs ? xs : 0);
    else
        stage2_launch<4, 8, 2, 2, 1, 1>(st, a, (unsigned)g2, ks2, use_xs4 ? xs4 : 0);
    CUDA_LAUNCHED();
    const dim3 cgrid((unsigned)((D / 4 + 255) / 256), (unsigned)N);
    moe_mma_combine_kernel<<<cgrid, 256, 0, st>>>(out, a->y, sel, N, a->K, D, a->E);
    CUDA_LAUNCHED();
    return DSV4_OK;
}
