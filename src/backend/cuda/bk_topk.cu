/*
 * bk_topk.cu - CUDA implementation of the lightning indexer's scores and top-k (backend.h
 * dsv4_bk_indexer_topk): per row, the faithful scores of its n_vis visible compressed keys into
 * the workspace (rows of cap_e + 1 f32 words: row_base), then the k best of them in descending
 * score order, equal scores lower index first, -1 after them. Everything stays on the device; grids
 * come from N and cap_e, and CTAs past their row's n_vis exit at once.
 *
 * Scores (model/forward_attn.c faithful_index_scores): per head bf16(q_h . k), relu,
 * bf16(* w_h), summed over heads, bf16, where w_h = bf16(iw_h * w_scale) is dsv4_bk_scale folded
 * in (the same f32 product and rounding). The CPU sums q_h . k in double and rounds once; here
 * it is summed in f32, which is identical whenever the f32 sums are exact, as they are for the
 * FP4-grid values the indexer feeds in (products of two e2m1 * 2^s values summed over 32-blocks
 * need ~13 bits). The head sum is in double as on the CPU (terms are bf16 values: exact in any
 * order).
 *
 * Three paths (index_path.cuh forces one in tests), chosen per call from N and cap_e:
 * - Cluster (nh = 64, d = 128, and by choice N <= 16: decode steps at small batches): one
 *   kernel, a cluster of 8 CTAs a row (16 where N <= 8 and the GPU places them) that score an
 *   eighth (a sixteenth) of its entries each and then rank them against all the row's keys
 *   (index_cluster_kernel says how): no ticket, no one-CTA sort. It takes rows of up to CL_MAX_E
 *   (2048) entries, 8K context: with cap_e > 2048 (an engine built for longer contexts) the call
 *   is split per row, the cluster kernel for the rows of n_vis <= 2048, then the fused kernel
 *   for the others (each kernel's CTAs leave the other's rows at once), which at cap_e >
 *   LONG_KEYS only scores them: a third launch, index_select_kernel, selects them in clusters of
 *   the same size (cl_select_long: a radix select whose histograms and counts the CTAs share).
 * - Fused (nh = 64, d = 128: Flash and Pro): one kernel. Each CTA scores a range of a row's
 *   entries on the tensor cores, mma.sync m16n8k16 bf16 -> f32 with the keys as the 16-row A
 *   operand (the stored e2m1 nibbles loaded and expanded to bf16 in registers, ik_frag; the
 *   cluster kernel expands them in shared memory, ik_expand) and the queries as B (FP4-grid
 *   values: exact in bf16);
 *   the last CTA of the row to finish (by a ticket in the workspace) then selects the row's
 *   top-k. The entry ranges shrink until the grid covers every SM (at N = 1 and 1024 entries: 64
 *   CTAs of 16 entries, the 8 warps splitting the heads). Why bf16 and not FP8 mma (the issue's
 *   ask): Hopper's FP8 mma adds the products into a ~13-bit significand, truncating, so sums the
 *   CPU gets exactly would come out rounded, and the FP4 grid fits e4m3 only with a rescale per
 *   vector; the bf16 mma keeps the products exact and adds in f32 (>= 24 bits), exact under the
 *   same condition as the f32 FMA kernel it replaces. The keys are stored as FP4 (68 B a key,
 *   kv_layout.h) and expanded to bf16 on the way (~15 operations a 4 dims; docs/PERF.md
 *   session 42 measures what that costs).
 * - SIMT (any shape): one warp per entry, then a top-k kernel of one CTA per row.
 * dsv4_bk_indexer_q_topk runs the queries' chain (RoPE, Hadamard, FP4: dsv4_bk_indexer_q) in the
 * cluster kernel's prologue, one head a warp (q_head; the cluster's 8 (16) CTAs take 8 (4) heads
 * each and store them into every rank's shared memory), which saves the engine the indexer_q
 * launch; the fused and SIMT paths launch indexer_q first (in every fused CTA the chain of all 64
 * heads cost more than that launch: test_gpu_index, H100, N 1 33.6 us vs 27.2 us). In a split
 * call the cluster kernel converts the fused rows' queries too (into iq, as indexer_q leaves
 * them), so that the split is two launches like the fused path.
 *
 * Top-k (topk_select.cuh; row_topk, fused and SIMT paths): the order is that of the unique key
 * K(e) = (o(score) << b) | (2^b - 1 - e), o the monotonic 16-bit code of a bf16 score, b the
 * index bits: larger K is better, and equal scores rank the lower index higher. Rows of up to
 * LONG_KEYS (4,096) keys: a radix select over K's bytes, high to low, finds the k-th largest K's
 * leading bytes (stopping as soon as a whole bin is taken); the k keys at or above it are gathered
 * and bitonic-sorted. Longer rows (64K context: 16K keys; row_topk_long): the k-th largest score
 * code in two digits (12 bits whose histogram the float4 loads fill, then 4), then one ordered pass
 * per warp over a contiguous range takes the larger codes (sorted) and the lowest indices of the
 * equal ones (no index digits, no sort of the ties). Exact, ties included. When n_vis <= topk
 * nothing is selected: every entry is taken, only sorted. The codes stay in shared memory for rows
 * of up to KEY_CACHE keys (the workspace is re-read beyond).
 *
 * Measured at long context (H100, 2026-11-22, docs/PERF.md "The indexer at 64K+ context"): at 64K
 * the fused kernel is the whole growth of the batch-1 step over 4K (2 x 96 us a step against the
 * cluster kernel's 2 x 21.5; the attention core does not grow), and its one-CTA row_topk is most
 * of it (the SIMT path's top-k kernel: 17 us at 1,025 keys, 46 at 16,384, 81 at 32,768). Tried and
 * not kept: a 12-bit first digit for every row (64K b1 -28 us a step, 4K b1 +4 us), and with
 * __match_any_sync-aggregated histogram adds (slower at b1). row_topk_long (kept; PERF "Session 6
 * (issue 8)"): Flash 4 layers 64K b1 1.283 -> 1.155 ms a step, 4K unchanged within the spread.
 *
 * after (dsv4_bk_indexer_q_topk): iq comes from a launch that may run beside this op (the engine
 * pairs the indexer's queries with wq_b, engine_layer.c attention); the cluster kernel's thread 0
 * of each CTA polls the signal after the PDL wait and before iq's loads (through L2), the other
 * paths wait in a one-CTA launch ahead of theirs.
 *
 * Workspace: row r's scores at float r (cap_e + 1), its fused-path ticket (u32) in the word after
 * them (row_base), so a row's ticket has one place whatever N a call has. The engine's calls of
 * every N (1 .. its prefill chunk) share one workspace; with the tickets after all N rows (as
 * before), a call after one with more rows took score words as tickets, its last CTA never came
 * and its selection was left stale (the fused path: contexts over 8K, or batches over 16).
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/cluster.cuh"
#include "backend/cuda/index_path.cuh"
#include "backend/cuda/kv_dev.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/quant_dev.cuh"
#include "backend/cuda/topk_select.cuh"

#include <cmath>
#include <cooperative_groups.h>
#include <cstdint>

namespace cg = cooperative_groups;

enum {
    TNH = 64,                 /* the fused kernel's shape: heads ... */
    TD = 128,                 /* ... of this dim (Flash and Pro indexers) */
    KLD = TD + 8,             /* bf16 row stride of its query tile: 272 B, so the 8 rows one
                                 ldmatrix reads fall on distinct banks */
    FUSED_THREADS = 256,      /* 8 warps */
    IK_DB = TD / 2,           /* a key's data row (kv_layout.h dsv4_ik_layout_of(TD)): 64 bytes */
    IK_SB = 4,                /* its scale row: TD / 32 exponents */
    SIMT_WARPS = 8,           /* SIMT score kernel: one warp per entry */
    MAX_ROWS = 65535,         /* grid y / rows per call */
    SMS = 132,                /* H100 / H200: launch shapes from the shape alone */
    SELECT_SMEM = 200 * 1024, /* index_select_kernel's shared memory at most */
};

static int g_force_path = DSV4_INDEX_PATH_AUTO, g_last_path = DSV4_INDEX_PATH_AUTO;

extern "C" int dsv4_cuda_index_force_path(int path)
{
    const int prev = g_force_path;
    g_force_path = path;
    return prev;
}

/* Row r's scores in the workspace; its ticket is the word at row_base + cap_e. */
static __device__ __forceinline__ int64_t row_base(int64_t row, int64_t cap_e)
{
    return row * (cap_e + 1); /* index_path.cuh dsv4_cuda_index_ws_row */
}

extern "C" int dsv4_cuda_index_last_path(void)
{
    return g_last_path;
}

/* One head's term of a score: bf16(relu(bf16(dot)) * w), as the CPU (NaN dot -> 0). */
static __device__ __forceinline__ double head_term(float dot, float w)
{
    float v = dev_round_bf16(dot);
    v = v > 0.0f ? v : 0.0f;
    return (double)dev_round_bf16(__fmul_rn(v, w));
}

/* ---- the fused path: tensor-core scores, then the last CTA's top-k --------------------------- */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int bytes)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes)
                 : "memory");
}

static __device__ __forceinline__ void cp_async4(void *dst, const void *src)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
}

/* ---- the keys in the serving layout, staged (the cluster kernel, the fused one at NT < 8) ------
 * A key is 64 data bytes (128 e2m1 nibbles) and 4 scale bytes (kv_layout.h dsv4_ik_layout_of(TD)).
 * The cluster kernel stages its n keys compact (ik_stage: their data rows into st [n][IK_DB] and
 * scale rows into ss [n][IK_SB] by cp.async, every thread issuing; the caller commits) and then
 * every warp expands a share of them into the bf16 rows [n16][KLD] that ldmatrix reads
 * (ik_expand: the values the bf16 state held before, exactly), rows n .. n16 zeros. Its few
 * keys a CTA (64 at 4K context) take all 8 warps this way, where only the 4 warps with keys
 * would convert them in registers (ik_frag, the fused kernel's way at NT 8: H100, dsv4 bench
 * Flash batch 1, 4K context, the op timer's index.topk 21.0-21.6 us a call that way, 16.0-16.3
 * staged, 15.3-15.8 with the bf16 keys before). The caller syncs between the copies' wait and
 * ik_expand, and before the rows are read. */
static __device__ __forceinline__ void ik_stage(uint8_t *st, uint8_t *ss, const uint8_t *ent,
                                                int64_t e_first, int n)
{
    const dsv4_kv_layout l = dsv4_ik_layout_of(TD);
    for (int c = threadIdx.x; c < n * (IK_DB / 16); c += FUSED_THREADS) {
        const int j = c / (IK_DB / 16), part = c % (IK_DB / 16);
        cp_async16(st + j * IK_DB + 16 * part, ent + dsv4_kv_data_off(&l, e_first + j) + 16 * part,
                   16);
    }
    for (int j = threadIdx.x; j < n; j += FUSED_THREADS)
        cp_async4(ss + j * IK_SB, ent + dsv4_kv_scale_off(&l, e_first + j));
}

static __device__ __forceinline__ void ik_expand(uint16_t *ks, const uint8_t *st, const uint8_t *ss,
                                                 int n, int n16)
{
    for (int c = threadIdx.x; c < n16 * (TD / 8); c += FUSED_THREADS) {
        const int j = c / (TD / 8), part = c % (TD / 8); /* dims 8 part .. 8 part + 7 */
        uint2 lo = make_uint2(0u, 0u), hi = lo;
        if (j < n) {
            const uint32_t w = *(const uint32_t *)(st + j * IK_DB + 4 * part);
            const uint32_t sc = ss[j * IK_SB + part / 4];
            lo = dev_ik_bf16x4(w, sc);
            hi = dev_ik_bf16x4(w >> 16, sc);
        }
        *(uint4 *)(ks + j * KLD + 8 * part) = make_uint4(lo.x, lo.y, hi.x, hi.y);
    }
}

static __device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void ldsm_x2(uint32_t &r0, uint32_t &r1, const void *p)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r0), "=r"(r1)
                 : "r"(a));
}

/* c [16 x 8] += a [16 x 16] . b [16 x 8]: bf16 inputs, f32 accumulation. a0 (row g, k 2t..),
 * a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..); b0 (k 2t.., n g), b1 (2t + 8..);
 * c0, c1 (row g, n 2t..), c2, c3 (g + 8, 2t..), g = lane / 4, t = lane % 4. */
static __device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two f32 values (bf16-exact) -> bf16x2 bits, x in the low half (the lower address). */
static __device__ __forceinline__ uint32_t pack_bf16(float x, float y)
{
    return (__float_as_uint(dev_round_bf16(x)) >> 16) |
           (__float_as_uint(dev_round_bf16(y)) & 0xffff0000u);
}

/* ---- the keys: from the serving layout straight into mma A fragments (the fused kernel, NT 8) --
 * A warp scores 16 keys a step: lane (g, t) = (l / 4, l % 4) loads dims 32 t .. 32 t + 31 of keys g
 * and g + 8 (16 bytes each: the 4 lanes of a key read its 64 contiguous bytes) and their block t's
 * scale bytes (ik_frag_load), and in k-step kk feeds dims 32 t + 4 kk + {0, 1} of each key at the
 * fragment's k positions {2 t, 2 t + 1} and dims 32 t + 4 kk + {2, 3} at {2 t + 8, 2 t + 9}
 * (ik_frag_a, kv_dev.cuh dev_ik_bf16x4). The dot product does not care about the order of the
 * dims as long as the queries follow it: q_perm puts query dim 32 t + 4 kk + j at tile column
 * 16 kk + 2 t + (j & 1) + 8 (j >> 1). The sums are exact in any order (FP4-grid values), so the
 * scores are those of a plain order. No shared memory, no conversion pass, no barrier for keys. */
typedef struct ik_frag {
    uint4 d[2];    /* keys g, g + 8: this lane's 32 dims (nibbles) */
    uint32_t s[2]; /* their scale bytes of block t */
} ik_frag;

/* Keys e0 + g and e0 + g + 8 of the buffer (entry indices), zeros at or past e_lim. The loads
 * are volatile asm so that they stay where they are issued, ahead of the barriers and the work
 * they overlap (a read-only __ldg may be sunk to its first use), and .cg (L2, as the cp.async of
 * the staged path): the step's compressor writes keys while this kernel may already be resident
 * (programmatic launch), so no L1 line of theirs may outlive the PDL wait. */
static __device__ __forceinline__ void ik_frag_load(ik_frag &f, const uint8_t *ent, int64_t e0,
                                                    int64_t e_lim)
{
    const dsv4_kv_layout l = dsv4_ik_layout_of(TD);
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t e = e0 + g + 8 * h;
        uint4 d = make_uint4(0u, 0u, 0u, 0u);
        uint32_t sc = 127u;
        if (e < e_lim) {
            asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                         : "=r"(d.x), "=r"(d.y), "=r"(d.z), "=r"(d.w)
                         : "l"(ent + dsv4_kv_data_off(&l, e) + 16 * t));
            asm volatile("ld.global.cg.u8 %0, [%1];"
                         : "=r"(sc)
                         : "l"(ent + dsv4_kv_scale_off(&l, e) + t));
        }
        f.d[h] = d;
        f.s[h] = sc;
    }
}

/* The A fragment of k-step kk (mma_bf16's a0..a3) from f. */
static __device__ __forceinline__ void ik_frag_a(uint32_t (&a)[4], const ik_frag &f, int kk)
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const uint32_t w = kk < 4 ? (kk < 2 ? f.d[h].x : f.d[h].y) : (kk < 6 ? f.d[h].z : f.d[h].w);
        const uint2 p = dev_ik_bf16x4(w >> (16 * (kk & 1)), f.s[h]);
        a[h] = p.x;     /* key g + 8 h, dims 4 kk + {0, 1} of the lane's 32 */
        a[h + 2] = p.y; /* dims 4 kk + {2, 3} */
    }
}

/* A query head in the key fragments' order (above): lane l holds dims 4 l .. 4 l + 3 as bf16
 * pairs p0 (dims 4 l, + 1) and p1 (4 l + 2, + 3) and gets back tile columns 4 l .. 4 l + 3 (one
 * 8-byte store a lane, as in a plain order). Column 16 kk + j holds dim 32 t + 4 kk + 2 (j >> 3) +
 * (j & 1), t = (j & 7) >> 1: lane l's two pairs come from lanes 16 (l & 1) + l / 4 (+ 8), their
 * p0 or p1 by bit 1 of l. */
static __device__ __forceinline__ uint2 q_perm(uint32_t p0, uint32_t p1)
{
    const int lane = threadIdx.x & 31, src = 16 * (lane & 1) + (lane >> 2);
    const bool hi = lane & 2;
    const uint32_t a0 = __shfl_sync(0xffffffffu, p0, src), a1 = __shfl_sync(0xffffffffu, p1, src);
    const uint32_t b0 = __shfl_sync(0xffffffffu, p0, src + 8);
    const uint32_t b1 = __shfl_sync(0xffffffffu, p1, src + 8);
    return make_uint2(hi ? a1 : a0, hi ? b1 : b0);
}

/* ---- the queries: optionally the indexer_q chain, one head a warp ----------------------------
 * Lane l of a warp holds dims [4 l, 4 l + 4) of one head (128 dims). q_head runs
 * dsv4_bk_indexer_q's chain (bk_index.cu indexer_q_kernel) on them with the same f32 operations
 * in the same order, so the result is bit for bit that kernel's: RoPE of the last r dims (rc:
 * cos [r / 2] then sin [r / 2] of the row, rope_table), bf16, the Hadamard butterflies (strides
 * 1, 2 in the lane, 4 .. 64 across lanes l ^ 1 .. l ^ 16), bf16(* had_scale), FP4 in blocks of
 * 32 (8 lanes: amax without NaN, scale, e2m1). Small code on purpose: a decode step's kernels
 * run with cold instruction caches (an unrolled 32-dims-a-thread form was 80 KB of SASS). */
static __device__ __forceinline__ void q_head(float (&x)[4], const float *rc, int r,
                                              float had_scale)
{
    const int lane = threadIdx.x & 31, rd0 = TD - r; /* the first rotated dim */
#pragma unroll
    for (int j = 0; j < 4; j += 2) {
        const int d = 4 * lane + j;
        if (d >= rd0) {
            const int ip = (d - rd0) >> 1;
            const float c = rc[ip], s = rc[(r >> 1) + ip], a = x[j], b = x[j + 1];
            x[j] = dev_round_bf16(__fadd_rn(__fmul_rn(a, c), __fmul_rn(-b, s)));
            x[j + 1] = dev_round_bf16(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
        }
    }
#pragma unroll
    for (int j = 0; j < 4; j++) x[j] = dev_round_bf16(x[j]);
#pragma unroll
    for (int st = 1; st < 4; st <<= 1)
#pragma unroll
        for (int j = 0; j < 4; j++)
            if ((j & st) == 0) {
                const float a = x[j], b = x[j + st];
                x[j] = __fadd_rn(a, b);
                x[j + st] = __fsub_rn(a, b);
            }
#pragma unroll 1
    for (int m = 1; m < 32; m <<= 1) /* stride 4 m: lane l ^ m; the lower lane keeps a + b */
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float o = __shfl_xor_sync(0xffffffffu, x[j], m);
            x[j] = lane & m ? __fsub_rn(o, x[j]) : __fadd_rn(x[j], o);
        }
    float mx = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        x[j] = dev_round_bf16(__fmul_rn(x[j], had_scale));
        const float a = fabsf(x[j]);
        if (a > mx) mx = a;
    }
#pragma unroll
    for (int m = 1; m < 8; m <<= 1) {
        const float t = __shfl_xor_sync(0xffffffffu, mx, m);
        if (t > mx) mx = t;
    }
    const float s = dev_scale_fp4(mx);
#pragma unroll
    for (int j = 0; j < 4; j++) x[j] = __fmul_rn(dev_round_e2m1(__fdiv_rn(x[j], s)), s);
}

/* rc [r] = cos, then sin, of freqs[i] * pos as bk_index.cu rope_bf16 computes them (the angle
 * in f32, cos / sin in double rounded once). Threads i < r / 2 hold freq = freqs[i]. */
static __device__ __forceinline__ void rope_table(float *rc, int r, float freq, int pos)
{
    const int i = threadIdx.x;
    if (i < (r >> 1)) {
        const float ang = __fmul_rn(freq, (float)pos);
        rc[i] = (float)cos((double)ang);
        rc[(r >> 1) + i] = (float)sin((double)ang);
    }
}

/* The scoring tiles of a fused CTA (the top-k reuses the same shared memory after them). */
template <int NT> struct fused_tiles {
    static constexpr int SK = NT == 8 ? 1 : 16 * NT; /* keys staged a step (NT < 8) */

    uint16_t q[TNH * KLD];        /* the row's queries [64][KLD], bf16 */
    float w[TNH];                 /* head weights bf16(iw * w_scale) */
    double part[8 / NT][16 * NT]; /* per head group sums of a step's entries (NT < 8) */
    uint16_t k[SK * KLD];         /* NT < 8: a step's keys [16 NT][KLD], bf16 (ik_expand) */
    uint8_t kst[SK * IK_DB];      /* ... as stored (ik_stage) */
    uint8_t kss[SK * IK_SB];
};

/* Grid (ceil(cap_e / te), N), 256 threads; CTA (x, row) scores the entries [x te, (x+1) te) of
 * the row's n_vis, in steps of 16 NT: warp w takes entries 16 (w / (8 / NT)) .. + 16 and the NT
 * 8-head tiles (w % (8 / NT)) NT .. + NT, K = 128 in 8 mma steps; per entry the warp adds its
 * heads' terms (shuffles over the 4 lanes of a row), and with NT < 8 the head groups' sums meet
 * in shared memory, in group order. Then the row's CTAs take tickets; the last one (it resets
 * the ticket) selects the row's top-k from the scores in global memory. Rows of n_vis <= skip
 * are the cluster kernel's (a split call, skip = CL_MAX_E; else skip = -1): all their CTAs leave
 * at once, so none takes a ticket and the row's stays zero. Rows of n_vis > hand (a split call
 * at long context: hand = CL_MAX_E; else INT_MAX) are scored only: index_select_kernel selects
 * them in the next launch, and they take no ticket either.
 * iq [N, 64, 128] (bf16-exact), iw [N, 64], ent: S cap_e keys (ik_frag) -> scores (row_base),
 * sel [N, topk]; the rows' tickets (row_base + cap_e) zero between calls. */
template <int NT>
__global__ __launch_bounds__(FUSED_THREADS) void index_fused_kernel(
    int32_t *sel, float *scores, const float *iq, const float *iw, float w_scale,
    const uint8_t *ent, int64_t cap_e, int m, int topk, int te, int ncache, const int32_t *slot,
    const int32_t *pos, int skip, int hand)
{
    DSV4_PDL_WAIT();
    constexpr int EI = 16 * NT, HG = 8 / NT;
    extern __shared__ __align__(16) unsigned char fused_smem[];
    __shared__ int s_last;
    fused_tiles<NT> &T = *(fused_tiles<NT> *)fused_smem;
    const int row = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int prow = pos[row];
    int64_t nvis = ((int64_t)prow + 1) / m;
    if (nvis > cap_e) nvis = cap_e;
    if (nvis <= skip) return; /* the cluster kernel's row: every CTA of it leaves, no ticket */
    if (nvis == 0) {          /* no entries: only -1 */
        if (blockIdx.x == 0)
            for (int j = tid; j < topk; j += FUSED_THREADS) sel[(int64_t)row * topk + j] = -1;
        return;
    }
    const int64_t e0 = (int64_t)blockIdx.x * te;
    if (e0 >= nvis) return;
    const int64_t e_end = e0 + te < nvis ? e0 + te : nvis;
    const int64_t e_slot = (int64_t)slot[row] * cap_e;
    float *sc = scores + row_base(row, cap_e);

    /* the keys (NT 8: each warp its own 16, in registers, ik_frag; NT < 8: the warps of a key
     * group would convert the same keys 8 / NT times, so the CTA stages and expands them once,
     * ik_stage / ik_expand), in flight while the queries are converted */
    const int eg = warp / HG, hg = warp % HG, g = lane >> 2, t4 = lane & 3;
    ik_frag nx = {};
    if constexpr (NT == 8) {
        ik_frag_load(nx, ent, e_slot + e0 + eg * 16, e_slot + e_end);
    } else {
        ik_stage(T.kst, T.kss, ent, e_slot + e0, (int)(e_end - e0 < EI ? e_end - e0 : EI));
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
#pragma unroll 1
    for (int h = warp; h < TNH; h += FUSED_THREADS / 32) {
        const float4 v = *(const float4 *)(iq + ((int64_t)row * TNH + h) * TD + 4 * lane);
        const uint32_t p0 = pack_bf16(v.x, v.y), p1 = pack_bf16(v.z, v.w);
        *(uint2 *)(T.q + h * KLD + 4 * lane) = NT == 8 ? q_perm(p0, p1) : make_uint2(p0, p1);
    }
    if (tid < TNH) T.w[tid] = dev_round_bf16(__fmul_rn(iw[(int64_t)row * TNH + tid], w_scale));
    __syncthreads();

    for (int64_t eb = e0; eb < e_end; eb += EI) {
        const int n = (int)(e_end - eb < EI ? e_end - eb : EI);
        const ik_frag kf = nx;
        if constexpr (NT == 8) {
            if (eb + EI < e_end) ik_frag_load(nx, ent, e_slot + eb + EI + eg * 16, e_slot + e_end);
        } else {
            if (eb != e0) {
                ik_stage(T.kst, T.kss, ent, e_slot + eb, n);
                asm volatile("cp.async.commit_group;\n" ::: "memory");
            }
            asm volatile("cp.async.wait_all;\n" ::: "memory");
            __syncthreads();
            ik_expand(T.k, T.kst, T.kss, n, EI);
            __syncthreads();
        }
        float acc[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < TD / 16; kk++) {
            uint32_t a[4];
            if constexpr (NT == 8)
                ik_frag_a(a, kf, kk);
            else
                ldsm_x4(a, T.k + (eg * 16 + (lane & 15)) * KLD + kk * 16 + (lane >> 4) * 8);
            if constexpr (NT == 1) {
                uint32_t b0, b1;
                ldsm_x2(b0, b1,
                        T.q + (hg * 8 + (lane & 7)) * KLD + kk * 16 + ((lane >> 3) & 1) * 8);
                mma_bf16(acc[0], a, b0, b1);
            } else {
#pragma unroll
                for (int j = 0; j < NT; j += 2) { /* 8-head tiles j and j + 1 */
                    uint32_t b[4];
                    ldsm_x4(b, T.q + ((hg * NT + j + (lane >> 4)) * 8 + (lane & 7)) * KLD +
                                   kk * 16 + ((lane >> 3) & 1) * 8);
                    mma_bf16(acc[j], a, b[0], b[1]);
                    mma_bf16(acc[j + 1], a, b[2], b[3]);
                }
            }
        }
        /* this thread: entries g and g + 8 of the warp's 16, heads 2 t4, 2 t4 + 1 of each tile */
        double tot0 = 0.0, tot1 = 0.0;
#pragma unroll
        for (int j = 0; j < NT; j++) {
            const int h = (hg * NT + j) * 8 + 2 * t4;
            tot0 += head_term(acc[j][0], T.w[h]);
            tot0 += head_term(acc[j][1], T.w[h + 1]);
            tot1 += head_term(acc[j][2], T.w[h]);
            tot1 += head_term(acc[j][3], T.w[h + 1]);
        }
        tot0 += __shfl_xor_sync(0xffffffffu, tot0, 1);
        tot0 += __shfl_xor_sync(0xffffffffu, tot0, 2);
        tot1 += __shfl_xor_sync(0xffffffffu, tot1, 1);
        tot1 += __shfl_xor_sync(0xffffffffu, tot1, 2);
        const int el = eg * 16 + g;
        if constexpr (HG == 1) {
            if (t4 == 0) {
                if (eb + el < e_end) sc[eb + el] = dev_round_bf16((float)tot0);
                if (eb + el + 8 < e_end) sc[eb + el + 8] = dev_round_bf16((float)tot1);
            }
        } else {
            if (t4 == 0) {
                T.part[hg][el] = tot0;
                T.part[hg][el + 8] = tot1;
            }
            __syncthreads();
            if (tid < EI && eb + tid < e_end) {
                double t = 0.0;
#pragma unroll
                for (int x = 0; x < HG; x++) t += T.part[x][tid];
                sc[eb + tid] = dev_round_bf16((float)t);
            }
            __syncthreads(); /* before the next step's keys and sums land */
        }
    }

    if (nvis > hand) return; /* index_select_kernel selects it, after this grid */
    /* the row's last CTA selects */
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        const unsigned ntiles = (unsigned)((nvis + te - 1) / te);
        unsigned *ticket = (unsigned *)(scores + row_base(row, cap_e) + cap_e);
        s_last = atomicAdd(ticket, 1u) == ntiles - 1u;
        if (s_last) *ticket = 0u; /* every other CTA of the row has taken its ticket */
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    row_topk(sel + (int64_t)row * topk, sc, (int)nvis, topk, *(topk_smem *)fused_smem, ncache);
}

template <int NT>
static dsv4_status launch_fused(cudaStream_t st, int32_t *sel, float *scores, const float *iq,
                                const float *iw, float w_scale, const uint8_t *ent, int64_t cap_e,
                                int m, int topk, int N, const int32_t *slot, const int32_t *pos,
                                int skip, int hand)
{
    /* steps of 16 NT entries; a CTA takes enough of them to keep the grid near 4 CTAs per SM */
    const int64_t steps = (cap_e + 16 * NT - 1) / (16 * NT), total = (int64_t)N * steps;
    int64_t per = total / (4 * SMS) > 1 ? total / (4 * SMS) : 1;
    if (per > steps) per = steps;
    const int te = (int)(16 * NT * per);
    const int ncache = topk_ncache(cap_e);
    const size_t tk = topk_bytes(ncache);
    const size_t smem = sizeof(fused_tiles<NT>) > tk ? sizeof(fused_tiles<NT>) : tk;
    CUDA_TRY(cudaFuncSetAttribute(index_fused_kernel<NT>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)((cap_e + te - 1) / te), (unsigned)N);
    index_fused_kernel<NT><<<grid, FUSED_THREADS, smem, st>>>(
        sel, scores, iq, iw, w_scale, ent, cap_e, m, topk, te, ncache, slot, pos, skip, hand);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

/* ---- the cluster path: scores and ranks in one cluster a row -------------------------------
 * For rows of up to CL_MAX_E entries (the bench's 4K context: 1024): a cluster of C = 8 or 16
 * CTAs a row; rank c scores the row's entries [c per, (c + 1) per) (per = ceil(n_vis / C) rounded
 * up to 16) on the tensor cores as the fused kernel does (its NT = 8 step: warp w takes 16
 * entries and all 64 heads), keeps each entry's unique order key (score code << 16 | 0xffff - e,
 * row_topk's K) in shared memory and writes the score to the workspace. After one cluster
 * barrier every CTA copies the row's n_vis keys out of the cluster's shared memory and ranks its
 * own: rank(e) = #{j : K_j > K_e}, its place in the descending order (keys are unique, so the
 * ranks are a permutation), counted by its 8 warps, CL_RB entries a warp at a time against all
 * the keys; rank < k goes to sel[rank]. Exact, ties included, the same order as row_topk; no
 * ticket, no one-CTA tail (the fused path's last CTA sorts 512 keys in 45 barrier stages), no
 * atomics, deterministic. */
enum {
    CL_MAX_E = 2048, /* entries a row at most */
    CL_RB = 4,       /* entries a warp ranks at once (registers) */
};

/* Dynamic shared memory of the cluster kernel for per_max entries a CTA: q [64][KLD] bf16, keys
 * [per_max][KLD] bf16, w [64], rc [TD], own keys [per_max], the row's keys [C per_max], the keys
 * as stored [per_max][IK_DB] and [per_max][IK_SB] (ik_stage). */
static size_t cl_smem(int per_max, int C)
{
    return (size_t)TNH * KLD * 2 + (size_t)per_max * KLD * 2 + TNH * 4 + TD * 4 +
           (size_t)per_max * 4 + (size_t)C * per_max * 4 + (size_t)per_max * (IK_DB + IK_SB);
}

/* The signal waited for in a launch of its own, ahead of the paths other than the cluster's. */
__global__ void sig_wait_kernel(const int *p)
{
    DSV4_PDL_WAIT();
    if (threadIdx.x == 0) dsv4_poll_at_least(p, 1);
}

/* Grid (C, N), cluster (C, 1, 1), 256 threads. iq [N, 64, 128] raw (qr >= 0: the
 * indexer_q chain runs in the prologue, RoPE of the last qr dims) or as indexer_q leaves it
 * (qr < 0); iw [N, 64]; ent: S cap_e keys (ik_stage) -> scores (row_base, workspace), sel
 * [N, topk].
 * Rows of n_vis > e_max (a split call: cap_e > e_max = CL_MAX_E) are the fused kernel's, which
 * runs next: with qr >= 0 the cluster writes their queries' chain to iq in place (each warp its
 * head, as indexer_q leaves it), and leaves. */
template <int C>
__global__ __launch_bounds__(FUSED_THREADS) void index_cluster_kernel(
    int32_t *sel, float *scores, float *iq, const float *iw, float w_scale, const uint8_t *ent,
    int64_t cap_e, int e_max, int m, int topk, int per_max, const int32_t *slot, const int32_t *pos,
    int qr, const float *freqs, float had_scale, const int *after)
{
    DSV4_PDL_LATE(); /* the rows and the RoPE table before the wait (pdl.cuh: no launch writes
                        them), with the row's cos / sin into shared memory */
    extern __shared__ __align__(16) unsigned char cl_raw[];
    uint16_t *qs = (uint16_t *)cl_raw, *ks = qs + TNH * KLD;
    float *w = (float *)(ks + (size_t)per_max * KLD), *rc = w + TNH;
    uint32_t *own = (uint32_t *)(rc + TD), *all = own + per_max;
    uint8_t *kst = (uint8_t *)(all + C * per_max), *kss = kst + per_max * IK_DB;
    cg::cluster_group cl = cg::this_cluster();
    const int row = blockIdx.y, rank = (int)cl.block_rank(), tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int prow = pos[row], sl = slot[row];
    if (qr >= 0) rope_table(rc, qr, tid < (qr >> 1) ? freqs[tid] : 0.0f, prow);
    /* a split call waits without letting the fused kernel launch: its grid (hundreds of CTAs of
     * ~50 KB shared memory, sized for cap_e) would be placed on every SM at once and sit there
     * until the clusters end, while the step's other branch needs the SMs. The short rows' CTAs
     * let it launch as they leave, the long rows' at once (they only convert queries). Flash 4
     * layers, 4K rows in a 64K engine, batch 2 (H100, PERF.md session 10): HEAD 1.349 ms a step,
     * split with the fused kernel let go at the wait 1.349, as here 1.333. */
    if (e_max == cap_e)
        DSV4_PDL_WAIT();
    else
        DSV4_PDL_WAIT_HELD();
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    if (after) { /* iq is written by a launch of the other chain, which signals it */
        if (tid == 0) dsv4_poll_at_least(after, 1); /* bk_linear.cu gv_signal */
        __syncthreads();
    }

    /* every global load of the prologue before any use; warp w < HC converts head HC rank + w */
    constexpr int HC = TNH / C; /* heads a CTA converts: 8 or 4 */
    const bool hw = warp < HC;
    const int hq = rank * HC + (hw ? warp : 0);
    const float wv = tid < TNH ? iw[(int64_t)row * TNH + tid] : 0.0f;
    float *qh = iq + ((int64_t)row * TNH + hq) * TD + 4 * lane; /* warp hw's head */
    const float4 qv = hw ? __ldcg((const float4 *)qh) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    int64_t nv = ((int64_t)prow + 1) / m;
    if (nv > cap_e) nv = cap_e;
    /* the fused kernel's row: its queries only; the whole cluster leaves */
    if (nv > e_max) {
        DSV4_PDL_RELEASE(); /* the fused kernel */
        if (qr >= 0) {
            __syncthreads(); /* rc */
            if (hw) {
                float x[4] = {qv.x, qv.y, qv.z, qv.w};
                q_head(x, rc, qr, had_scale);
                *(float4 *)qh = make_float4(x[0], x[1], x[2], x[3]);
            }
        }
        asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
        return;
    }
    const int nvis = (int)nv, k = nvis < topk ? nvis : topk;
    int32_t *out = sel + (int64_t)row * topk;
    if (rank == C - 1)
        for (int j = k + tid; j < topk; j += FUSED_THREADS) out[j] = -1;
    if (nvis == 0) { /* the whole cluster; none leaves before all have started */
        asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
        return;
    }
    const int per = ((nvis + C - 1) / C + 15) & ~15, e0 = rank * per;
    const int ne = nvis - e0 < 0 ? 0 : (nvis - e0 < per ? nvis - e0 : per);
    const int ne16 = (ne + 15) & ~15;
    ik_stage(kst, kss, ent, (int64_t)sl * cap_e + e0, ne);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    if (tid < TNH) w[tid] = dev_round_bf16(__fmul_rn(wv, w_scale));
    if (qr >= 0) __syncthreads(); /* rc */
    {
        float x[4] = {qv.x, qv.y, qv.z, qv.w};
        if (hw && qr >= 0) q_head(x, rc, qr, had_scale);
        const uint2 pk = make_uint2(pack_bf16(x[0], x[1]), pack_bf16(x[2], x[3]));
        asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); /* all have started */
#pragma unroll 1
        for (int dst = 0; hw && dst < C; dst++) /* the head to every rank's queries */
            *(uint2 *)cl.map_shared_rank(qs + hq * KLD + 4 * lane, dst) = pk;
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    cl_sync(); /* every rank's heads (and this CTA's staged keys, w) are in place */
    ik_expand(ks, kst, kss, ne, ne16);
    __syncthreads();

    /* scores: warp w takes entries eb + 16 w .. + 16, all 64 heads (the fused NT = 8 step) */
    float *sc = scores + row_base(row, cap_e) + e0;
    for (int eb = warp * 16; eb < ne; eb += 8 * 16) {
        float acc[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < TD / 16; kk++) {
            uint32_t a[4];
            ldsm_x4(a, ks + (eb + (lane & 15)) * KLD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                uint32_t b[4];
                ldsm_x4(b, qs + ((j + (lane >> 4)) * 8 + (lane & 7)) * KLD + kk * 16 +
                               ((lane >> 3) & 1) * 8);
                mma_bf16(acc[j], a, b[0], b[1]);
                mma_bf16(acc[j + 1], a, b[2], b[3]);
            }
        }
        double tot0 = 0.0, tot1 = 0.0;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int h = j * 8 + 2 * t4;
            tot0 += head_term(acc[j][0], w[h]);
            tot0 += head_term(acc[j][1], w[h + 1]);
            tot1 += head_term(acc[j][2], w[h]);
            tot1 += head_term(acc[j][3], w[h + 1]);
        }
        tot0 += __shfl_xor_sync(0xffffffffu, tot0, 1);
        tot0 += __shfl_xor_sync(0xffffffffu, tot0, 2);
        tot1 += __shfl_xor_sync(0xffffffffu, tot1, 1);
        tot1 += __shfl_xor_sync(0xffffffffu, tot1, 2);
        if (t4 == 0) {
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int el = eb + g + 8 * hf;
                if (el < ne) {
                    const float v = dev_round_bf16((float)(hf ? tot1 : tot0));
                    sc[el] = v;
                    own[el] = score_code(v) << 16 | (0xffffu - (uint32_t)(e0 + el));
                }
            }
        }
    }
    cl_sync(); /* every rank's keys are in its shared memory */

    /* the row's keys, zero-padded to a multiple of 4 (0 beats no key); the remote loads all go
     * out before the stores */
    const int nv4 = (nvis + 3) & ~3;
    uint32_t kr[CL_MAX_E / FUSED_THREADS];
#pragma unroll
    for (int u = 0; u < CL_MAX_E / FUSED_THREADS; u++) {
        const int i = tid + u * FUSED_THREADS, src = i / per;
        kr[u] = i < nvis ? *cl.map_shared_rank(own + (i - src * per), src) : 0u;
    }
#pragma unroll
    for (int u = 0; u < CL_MAX_E / FUSED_THREADS; u++)
        if (tid + u * FUSED_THREADS < nv4) all[tid + u * FUSED_THREADS] = kr[u];
    /* no CTA leaves while another may still read its keys: arrive now, wait at the end */
    asm volatile("barrier.cluster.arrive.aligned;\n" ::: "memory");
    __syncthreads();

    /* ranks: warp w takes the entries w, w + 8, ... in batches of CL_RB held in registers; lane
     * l reads the row's keys 4 at a time, the uint4s l, l + 32, ... (a warp's 32 loads are 512
     * consecutive bytes: no bank conflicts; a lane's loads independent), and counts per entry the
     * keys above it; a warp sum of the counts is the rank (integer adds: any order). Before, each
     * thread walked its own run of ~81 uint4s one load after another and met the others in
     * shared atomics (at n_vis = 1,024 the runs sat 1 KB apart: 8-way bank conflicts): the gather
     * and ranks took 6.8 of the kernel's 14 us in the batch-1 step (H100, globaltimer probes), 15.2
     * of 26 at batch 4; now 4.0 and 6.0 (docs/PERF.md session 10). */
    const int steps = nv4 >> 2;
    const uint4 *a4 = (const uint4 *)all;
    for (int b0 = warp; b0 < ne; b0 += 8 * CL_RB) {
        uint32_t K[CL_RB];
        int c[CL_RB];
#pragma unroll
        for (int i = 0; i < CL_RB; i++) {
            const int e = b0 + 8 * i;
            K[i] = e < ne ? own[e] : 0xffffffffu; /* no key is above it */
            c[i] = 0;
        }
        for (int j = lane; j < steps; j += 32) {
            const uint4 v = a4[j];
#pragma unroll
            for (int i = 0; i < CL_RB; i++)
                c[i] += (v.x > K[i]) + (v.y > K[i]) + (v.z > K[i]) + (v.w > K[i]);
        }
#pragma unroll
        for (int i = 0; i < CL_RB; i++) {
            const int rk = __reduce_add_sync(0xffffffffu, c[i]), e = b0 + 8 * i;
            if (lane == i && e < ne && rk < k) out[rk] = e0 + e;
        }
    }
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
}

/* The launch of C CTAs a row (grid (C, N)); attr: the caller's storage for the cluster shape. */
static cudaLaunchConfig_t cl_cfg(int C, int N, size_t smem, cudaStream_t st,
                                 cudaLaunchAttribute *attr)
{
    return cluster_cfg(dim3((unsigned)C, (unsigned)N, 1), FUSED_THREADS, smem, st, attr, C);
}

/* Whether the GPU holds `need` clusters of 16 CTAs (a non-portable size) at once; a failed query
 * is a no (cleared, not an error of the op). */
static int cl16_fits(int need, size_t smem, cudaStream_t st)
{
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = cl_cfg(16, need, smem, st, attr);
    if (cudaFuncSetAttribute(index_cluster_kernel<16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)smem) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return cluster_capacity((const void *)index_cluster_kernel<16>, &cfg) >= need;
}

static int cl_per_max(int64_t cap_e, int C)
{
    return (int)(((cap_e + C - 1) / C + 15) & ~15);
}

/* The cluster kernel on the rows of up to e_max = min(cap_e, CL_MAX_E) entries. */
template <int C>
static dsv4_status launch_cluster(cudaStream_t st, int32_t *sel, float *scores, float *iq,
                                  const float *iw, float w_scale, const uint8_t *ent, int64_t cap_e,
                                  int e_max, int m, int topk, int N, const int32_t *slot,
                                  const int32_t *pos, int qr, const float *freqs, float had_scale,
                                  const int *after)
{
    const int per_max = cl_per_max(e_max, C);
    const size_t smem = cl_smem(per_max, C);
    CUDA_TRY(cudaFuncSetAttribute(index_cluster_kernel<C>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = cl_cfg(C, N, smem, st, attr);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, index_cluster_kernel<C>, sel, scores, iq, iw, w_scale, ent,
                                cap_e, e_max, m, topk, per_max, slot, pos, qr, freqs, had_scale,
                                after));
    return DSV4_OK;
}

/* ---- the long rows' selection: a cluster a row, after the fused kernel's scores -------------
 * In a split call at long context (rows of more than CL_MAX_E entries) the fused kernel scores
 * those rows over every SM but leaves their selection to this kernel: C CTAs a row (the
 * cluster kernel's C), rank c reads the scores of entries [c per, (c + 1) per) from the
 * workspace into 16-bit codes in shared memory and the cluster selects them (cl_select_long).
 * The fused kernel's way, its last CTA selecting the whole row (row_topk_long), grows with the
 * row on one SM. Scoring in the cluster as well (each CTA its share of the keys, as for short
 * rows) was slower: 16 SMs score 16K keys at ~30 ns a key a CTA (the marks in PERF.md session
 * 43), where the fused kernel spreads them over all.
 * Grid (C, N), cluster (C, 1, 1), 256 threads. Rows of n_vis <= lo (the cluster kernel's) leave.
 * Shared memory: the picks [2 TOPK_MAX], cl_pick, the codes [per_max]. */
template <int C>
__global__ __launch_bounds__(FUSED_THREADS) void index_select_kernel(int32_t *sel,
                                                                     const float *scores,
                                                                     int64_t cap_e, int m, int topk,
                                                                     int lo, const int32_t *pos)
{
    DSV4_PDL_WAIT();
    static_assert(FUSED_THREADS == SEL_THREADS, "cl_select_long's CTA");
    extern __shared__ __align__(16) unsigned char cs_raw[];
    unsigned long long *cand = (unsigned long long *)cs_raw;
    cl_pick *pick = (cl_pick *)(cand + 2 * TOPK_MAX);
    uint16_t *code = (uint16_t *)(pick + 1);
    cg::cluster_group cl = cg::this_cluster();
    const int row = blockIdx.y, rank = (int)cl.block_rank(), tid = threadIdx.x;
    int64_t nv = ((int64_t)pos[row] + 1) / m;
    if (nv > cap_e) nv = cap_e;
    if (nv <= lo) return; /* the whole cluster, before any remote access */
    const int nvis = (int)nv, k = nvis < topk ? nvis : topk;
    int32_t *out = sel + (int64_t)row * topk;
    if (rank == C - 1)
        for (int j = k + tid; j < topk; j += FUSED_THREADS) out[j] = -1;
    const int per = ((nvis + C - 1) / C + 15) & ~15, e0 = rank * per;
    const int ne = nvis - e0 < 0 ? 0 : (nvis - e0 < per ? nvis - e0 : per);
    const float *sc = scores + row_base(row, cap_e) + e0;
#pragma unroll 4
    for (int i = tid; i < ne; i += FUSED_THREADS) code[i] = (uint16_t)score_code(__ldcg(sc + i));
    cl_select_long<C>(out, code, ne, e0, nvis, k, *pick, cand); /* syncs before the codes' use */
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
}

/* index_select_kernel's shared memory for rows of up to cap_e entries a cluster of C. */
static size_t cs_smem(int64_t cap_e, int C)
{
    const int64_t per_max = ((cap_e + C - 1) / C + 15) & ~15;
    return (size_t)2 * TOPK_MAX * 8 + sizeof(cl_pick) + (size_t)per_max * 2;
}

/* Whether the GPU places a cluster of 16 select CTAs (a non-portable size; a failed query is a
 * no). */
static int cs16_fits(int64_t cap_e, cudaStream_t st)
{
    const size_t smem = cs_smem(cap_e, 16);
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = cluster_cfg(dim3(16, 1, 1), FUSED_THREADS, smem, st, attr, 16);
    if (cudaFuncSetAttribute(index_select_kernel<16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)smem) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return cluster_capacity((const void *)index_select_kernel<16>, &cfg) >= 1;
}

template <int C>
static dsv4_status launch_select(cudaStream_t st, int32_t *sel, const float *scores, int64_t cap_e,
                                 int m, int topk, int N, const int32_t *pos, int lo)
{
    const size_t smem = cs_smem(cap_e, C);
    CUDA_TRY(cudaFuncSetAttribute(index_select_kernel<C>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (C > 8)
        CUDA_TRY(cudaFuncSetAttribute(index_select_kernel<C>,
                                      cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg =
        cluster_cfg(dim3((unsigned)C, (unsigned)N, 1), FUSED_THREADS, smem, st, attr, C);
    CUDA_TRY(
        cudaLaunchKernelEx(&cfg, index_select_kernel<C>, sel, scores, cap_e, m, topk, lo, pos));
    return DSV4_OK;
}

/* ---- the SIMT path -------------------------------------------------------------------------- */
/* Any nh, d: one warp per entry, q and w read through the cache, the key decoded per dim (exact
 * in f32). Grid (cap_e / 8, N). iq [N, nh, d], iw [N, nh], ent: S cap_e keys of
 * dsv4_ik_layout_of(d) -> scores (row_base). */
__global__ void index_scores_simt(float *scores, const float *iq, const float *iw, float w_scale,
                                  const uint8_t *ent, int64_t cap_e, int nh, int d, int m,
                                  const int32_t *slot, const int32_t *pos)
{
    DSV4_PDL_WAIT();
    const int row = blockIdx.y, lane = threadIdx.x & 31;
    const int64_t e = (int64_t)blockIdx.x * SIMT_WARPS + (threadIdx.x >> 5);
    int64_t nvis = ((int64_t)pos[row] + 1) / m;
    if (nvis > cap_e) nvis = cap_e;
    if (e >= nvis) return; /* the whole warp */
    const dsv4_kv_layout l = dsv4_ik_layout_of(d);
    const int64_t ek = (int64_t)slot[row] * cap_e + e;
    const uint8_t *kd = ent + dsv4_kv_data_off(&l, ek), *ksc = ent + dsv4_kv_scale_off(&l, ek);
    const float *q = iq + (int64_t)row * nh * d, *w = iw + (int64_t)row * nh;
    double tot = 0.0;
    for (int h = 0; h < nh; h++) {
        float acc = 0.0f;
        for (int c = lane; c < d; c += 32) {
            const float k = dsv4_e2m1_to_f32((uint8_t)(kd[c >> 1] >> (4 * (c & 1)) & 15)) *
                            dsv4_e8m0_to_f32(ksc[c / DSV4_IK_QBLOCK]);
            acc = fmaf(q[(int64_t)h * d + c], k, acc);
        }
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        tot += head_term(acc, dev_round_bf16(__fmul_rn(w[h], w_scale)));
    }
    if (lane == 0) scores[row_base(row, cap_e) + e] = dev_round_bf16((float)tot);
}

/* One CTA per row: scores (row_base) -> sel [N, topk]. */
__global__ __launch_bounds__(TOPK_THREADS) void index_topk_kernel(int32_t *sel, const float *scores,
                                                                  int64_t cap_e, int m, int topk,
                                                                  int ncache, const int32_t *pos)
{
    DSV4_PDL_WAIT();
    extern __shared__ __align__(16) unsigned char topk_raw[];
    const int row = blockIdx.x;
    int64_t nvis = ((int64_t)pos[row] + 1) / m;
    if (nvis > cap_e) nvis = cap_e;
    row_topk(sel + (int64_t)row * topk, scores + row_base(row, cap_e), (int)nvis, topk,
             *(topk_smem *)topk_raw, ncache);
}

/* The fused kernel with the largest step (16 NT entries) that still gives 2 CTAs per SM (16 at
 * the least); rows of n_vis <= skip left to the cluster kernel (skip = -1: none), those of n_vis
 * > hand only scored (index_select_kernel selects them). */
static dsv4_status fused_select(cudaStream_t st, int32_t *sel, float *scores, const float *iq,
                                const float *iw, float w_scale, const uint8_t *ent, int64_t cap_e,
                                int m, int topk, int N, const int32_t *slot, const int32_t *pos,
                                int skip, int hand)
{
    int nt = 8;
    while (nt > 1 && (int64_t)N * ((cap_e + 16 * nt - 1) / (16 * nt)) < 2 * SMS) nt >>= 1;
    switch (nt) {
    case 8:
        return launch_fused<8>(st, sel, scores, iq, iw, w_scale, ent, cap_e, m, topk, N, slot, pos,
                               skip, hand);
    case 4:
        return launch_fused<4>(st, sel, scores, iq, iw, w_scale, ent, cap_e, m, topk, N, slot, pos,
                               skip, hand);
    case 2:
        return launch_fused<2>(st, sel, scores, iq, iw, w_scale, ent, cap_e, m, topk, N, slot, pos,
                               skip, hand);
    default:
        return launch_fused<1>(st, sel, scores, iq, iw, w_scale, ent, cap_e, m, topk, N, slot, pos,
                               skip, hand);
    }
}

/* indexer_topk, and with qr >= 0 indexer_q (RoPE of the last qr dims, freqs) before it: in the
 * cluster kernel's prologue, else as its own kernel on iq in place. The path is chosen per call
 * from N and cap_e (the host never sees the rows' positions: a step is graph-replayed); where
 * cap_e > CL_MAX_E and the call would take the cluster path, it is split per row by n_vis, the
 * cluster kernel first (rows of up to CL_MAX_E entries; the others' queries converted in place),
 * then the fused kernel (the longer rows). */
static dsv4_status index_select(dsv4_backend *b, int32_t *sel, float *iq, const float *iw,
                                float w_scale, const uint8_t *ent, int64_t cap_e, int nh, int d,
                                int m, int topk, const dsv4_bk_rows *rows, void *ws, int qr,
                                const float *freqs, const int32_t *after)
{
    if (nh <= 0 || d <= 0 || m <= 0 || topk <= 0 || topk > TOPK_MAX || cap_e <= 0 ||
        cap_e > INT32_MAX - 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "indexer_topk: %d heads of %d, m %d, topk %d (at most %d), %lld entries",
                         nh, d, m, topk, (int)TOPK_MAX, (long long)cap_e);
    const int N = rows->n;
    if (N <= 0) return DSV4_OK;
    if (N > MAX_ROWS)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "indexer_topk: %d rows (at most %d)", N,
                         (int)MAX_ROWS);
    cudaStream_t st = dsv4_cuda_stream(b->cuda);
    float *scores = (float *)ws; /* N rows of cap_e + 1 words: dsv4_bk_indexer_ws_bytes */
    /* the Hadamard scale exactly as dsv4_hadamard: the double d^-0.5 as an f32 */
    const float had_scale = (float)pow((double)d, -0.5);
    const int fused_ok = nh == TNH && d == TD && qr <= TD;
    /* the cluster kernel's rows: n_vis <= e_max; split: the fused kernel takes the longer ones
     * (an engine built for 64K context runs its rows at 4K context as clusters: test_gpu_index,
     * H100, indexer_q_topk at cap_e 16384, n_vis 1025, N = 1 / 2 / 4 / 8: 27.1 / 30.4 / 35.8 /
     * 36.8 us fused, 17.0 / 17.2 / 17.3 / 21.3 split; at n_vis 16384 the same within 1 us) */
    const int e_max = (int)(cap_e < (int64_t)CL_MAX_E ? cap_e : (int64_t)CL_MAX_E);
    const int split = cap_e > (int64_t)CL_MAX_E;
    /* the cluster path while its clusters fit in one wave (N <= 16); beyond that the fused
     * kernel's entry ranges keep more SMs busy (test_gpu_index, H100: N = 64 at cap_e 1025 took
     * 66 us as clusters, 41 us fused) */
    int path = DSV4_INDEX_PATH_FUSED;
    if (!fused_ok || g_force_path == DSV4_INDEX_PATH_SIMT)
        path = DSV4_INDEX_PATH_SIMT;
    else if (g_force_path == DSV4_INDEX_PATH_CLUSTER || g_force_path == DSV4_INDEX_PATH_CLUSTER16 ||
             (g_force_path != DSV4_INDEX_PATH_FUSED && (int64_t)N * 8 <= SMS))
        path = DSV4_INDEX_PATH_CLUSTER;
    /* 16 CTAs a row where the rows' clusters still fit the SMs and the GPU places them: half the
     * entries, keys and ranks a CTA, the same bits (H100, dsv4 bench --shape flash --layers 4,
     * context 4096: batch 1 1.105 / 1.106 -> 1.096 / 1.096 ms a step, batch 8 2.553 / 2.547 ->
     * 2.551 / 2.533); a test's forced 16 needs one such cluster on the GPU */
    const int f16 = g_force_path == DSV4_INDEX_PATH_CLUSTER16;
    if (path == DSV4_INDEX_PATH_CLUSTER && g_force_path != DSV4_INDEX_PATH_CLUSTER &&
        (f16 || (int64_t)N * 16 <= SMS) &&
        cl16_fits(f16 ? 1 : N, cl_smem(cl_per_max(e_max, 16), 16), st))
        path = DSV4_INDEX_PATH_CLUSTER16;
    g_last_path = path;
    const int cl = path == DSV4_INDEX_PATH_CLUSTER16 || path == DSV4_INDEX_PATH_CLUSTER;
    if (after && (!cl || split)) { /* the other paths wait in a launch of their own */
        sig_wait_kernel<<<1, 32, 0, st>>>(after);
        CUDA_LAUNCHED();
        after = NULL;
    }
    if (cl) {
        if (path == DSV4_INDEX_PATH_CLUSTER16)
            DSV4_TRY(launch_cluster<16>(st, sel, scores, iq, iw, w_scale, ent, cap_e, e_max, m,
                                        topk, N, rows->slot, rows->pos, qr, freqs, had_scale,
                                        after));
        else
            DSV4_TRY(launch_cluster<8>(st, sel, scores, iq, iw, w_scale, ent, cap_e, e_max, m, topk,
                                       N, rows->slot, rows->pos, qr, freqs, had_scale, after));
        if (!split) return DSV4_OK;
        g_last_path =
            path == DSV4_INDEX_PATH_CLUSTER16 ? DSV4_INDEX_PATH_SPLIT16 : DSV4_INDEX_PATH_SPLIT;
        /* the fused kernel's rows selected by clusters (index_select_kernel, 16 CTAs where the
         * call's clusters are), where rows may be long enough to pay for its launch (cap_e >
         * LONG_KEYS: the fused kernel's last CTA selects shorter rows in ~10 us) and their codes
         * fit a CTA's shared memory (cap_e up to ~1.4M entries at C = 16). H100, dsv4 bench
         * --shape flash --layers 4 (PERF.md session 43), ms a step: 64K context batch 1 / 2 / 8
         * 1.011-1.014 / 1.190-1.200 / 2.052-2.059 -> 0.978-0.983 / 1.163-1.172 / 2.017-2.022,
         * 128K batch 1 1.113 -> 1.004; the launch's cost where every row is short, 4K rows in that
         * 64K engine, batch 1 0.954-0.957 -> 0.960-0.961 (2 and 8 within the spread). */
        const int C = path == DSV4_INDEX_PATH_CLUSTER16 && cs16_fits(cap_e, st) ? 16 : 8;
        const int hand =
            cap_e > LONG_KEYS && cs_smem(cap_e, C) <= SELECT_SMEM ? CL_MAX_E : INT32_MAX;
        DSV4_TRY(fused_select(st, sel, scores, iq, iw, w_scale, ent, cap_e, m, topk, N, rows->slot,
                              rows->pos, CL_MAX_E, hand));
        if (hand == INT32_MAX) return DSV4_OK;
        return C == 16 ? launch_select<16>(st, sel, scores, cap_e, m, topk, N, rows->pos, hand)
                       : launch_select<8>(st, sel, scores, cap_e, m, topk, N, rows->pos, hand);
    }
    /* the fused and SIMT paths take the queries as indexer_q leaves them: every fused CTA would
     * repeat the 64 heads' chain (measured slower than the indexer_q launch) */
    if (qr >= 0) DSV4_TRY(dsv4_cuda_bk_indexer_q(b, iq, rows, nh, d, qr, freqs));
    if (path == DSV4_INDEX_PATH_FUSED)
        return fused_select(st, sel, scores, iq, iw, w_scale, ent, cap_e, m, topk, N, rows->slot,
                            rows->pos, -1, INT32_MAX);
    const dim3 grid((unsigned)((cap_e + SIMT_WARPS - 1) / SIMT_WARPS), (unsigned)N);
    index_scores_simt<<<grid, 32 * SIMT_WARPS, 0, st>>>(scores, iq, iw, w_scale, ent, cap_e, nh, d,
                                                        m, rows->slot, rows->pos);
    CUDA_LAUNCHED();
    const int ncache = topk_ncache(cap_e);
    const size_t tk = topk_bytes(ncache);
    CUDA_TRY(cudaFuncSetAttribute(index_topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)tk));
    index_topk_kernel<<<N, TOPK_THREADS, tk, st>>>(sel, scores, cap_e, m, topk, ncache, rows->pos);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_indexer_topk(dsv4_backend *b, int32_t *sel, const float *iq,
                                                 const float *iw, float w_scale, const uint8_t *ent,
                                                 int64_t cap_e, int nh, int d, int m, int topk,
                                                 const dsv4_bk_rows *rows, void *ws)
{
    /* qr < 0: iq is only read */
    return index_select(b, sel, (float *)iq, iw, w_scale, ent, cap_e, nh, d, m, topk, rows, ws, -1,
                        NULL, NULL);
}

extern "C" dsv4_status dsv4_cuda_bk_indexer_q_topk(dsv4_backend *b, int32_t *sel, float *iq,
                                                   const float *iw, float w_scale,
                                                   const uint8_t *ent, int64_t cap_e, int nh, int d,
                                                   int r, const float *freqs, int m, int topk,
                                                   const dsv4_bk_rows *rows, void *ws,
                                                   const int32_t *after)
{
    if (r < 0 || r > d || r % 2 || !freqs)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "indexer_q_topk: rope %d of %d", r, d);
    return index_select(b, sel, iq, iw, w_scale, ent, cap_e, nh, d, m, topk, rows, ws, r, freqs,
                        after);
}
