/*
 * wgmma_ring.cuh - the pieces F8W (linear_f8w.cu) and W16 (linear_w16.cu) share: a producer warp
 * fills a shared-memory ring with TMA copies that complete on mbarriers, and a consumer
 * warpgroup multiplies the stages with wgmma from shared-memory descriptors. Here: the tensor
 * copy (the mbarrier and bulk-copy primitives are bulk_copy.cuh's), the K-major SWIZZLE_128B matrix
 * descriptor, the accumulator operand lists of the wgmma wrappers (each file writes its own
 * instruction: e4m3 k32 or bf16 k16), the grid of tiles and K slices with the steps both kernels
 * take alike (barrier setup, the consumers' rows, the epilogue into y or the split's partial, the
 * exact f32 fallback's loop, the cluster sum), the host's fit test and launch, and the 2-D tensor
 * maps (cuTensorMapEncodeTiled through the runtime, no link to libcuda).
 */
#ifndef DSV4_BACKEND_CUDA_WGMMA_RING_CUH
#define DSV4_BACKEND_CUDA_WGMMA_RING_CUH

#include "backend/cuda/bulk_copy.cuh"
#include "backend/cuda/check.cuh"
#include "backend/cuda/linear_common.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdint.h>

/* ---- device: tensor copies, descriptors (barriers and bulk copies: bulk_copy.cuh) ------------
 */
/* The box at (c0, c1) of tensor map m -> shared dst, completing on bar. */
__device__ __forceinline__ void ring_tma(uint32_t dst, const CUtensorMap *m, int c0, int c1,
                                         uint32_t bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
                 "l"((uint64_t)(uintptr_t)m), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}

/* Matrix descriptor of a K-major SWIZZLE_128B operand at shared address s (8-row groups 1024
 * bytes apart; s 1024-aligned plus the k step's offset, 32 bytes a step). */
__device__ __forceinline__ uint64_t ring_desc(uint32_t s)
{
    return (uint64_t)((s & 0x3ffffu) >> 4) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

/* The producer's first act: both tensor maps prefetched (one lane). */
__device__ __forceinline__ void ring_prefetch_maps(const CUtensorMap *tw, const CUtensorMap *tx)
{
    asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)(uintptr_t)tw) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)(uintptr_t)tx) : "memory");
}

/* Waits for the committed wgmmas, then pins d [NT][4] behind the wait (no read of an
 * accumulator is moved above it). */
template <int NT> __device__ __forceinline__ void ring_wgmma_wait(float (&d)[NT][4])
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 4; j++) asm volatile("" : "+f"(d[nt][j])::"memory");
}

/* The accumulator operands d [NT][4] of a wgmma m64n(8 NT) wrapper's asm, and its inputs (the
 * two descriptors and the accumulate flag). */
#define RING_D1(d) "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3])
#define RING_D2(d) RING_D1(d), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3])
#define RING_D4(d)                                                                                 \
    RING_D2(d), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]),         \
        "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
#define RING_D8(d)                                                                                 \
    RING_D4(d), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),         \
        "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]),  \
        "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define RING_D16(d)                                                                                \
    RING_D8(d), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]),         \
        "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]),               \
        "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]),            \
        "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]),            \
        "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]),            \
        "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]),            \
        "+f"(d[15][2]), "+f"(d[15][3])
#define RING_IN "l"(da), "l"(db), "r"(acc)
/* The asm operand text of a wrapper: the NT x 4 accumulators, then the two descriptors. */
#define RING_R1 "{%0, %1, %2, %3}, %4, %5, "
#define RING_R2 "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, "
#define RING_R4 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, "
#define RING_R8                                                                                    \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "  \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, "
#define RING_R16                                                                                   \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "  \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "   \
    "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "   \
    "%56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, "
/* A wrapper's HEAD (below) for operand types AB ("e4m3.e4m3", "bf16.bf16"): the scale-d
 * predicate p set from the accumulate flag (operand ACC), then the instruction up to its operands.
 */
#define RING_HEAD(ACC, SHAPE, AB)                                                                  \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %" ACC ", 0;\nwgmma.mma_async.sync.aligned." SHAPE           \
    ".f32." AB " "
/* The specialisation NAME<NT> of a wrapper template <int NT> void NAME(float (&d)[NT][4],
 * uint64_t da, uint64_t db, int acc): HEAD(predicate operand, shape) opens the instruction
 * (setting its scale-d predicate from acc), TAIL closes it. */
#define RING_WGMMA(NAME, NT, ACC, SHAPE, HEAD, TAIL)                                               \
    template <>                                                                                    \
    __device__ __forceinline__ void NAME<NT>(float(&d)[NT][4], uint64_t da, uint64_t db, int acc)  \
    {                                                                                              \
        asm volatile(HEAD(ACC, SHAPE) RING_R##NT TAIL : RING_D##NT(d) : RING_IN);                  \
    }
/* All five: NT = 1, 2, 4, 8, 16 (m64n8 .. m64n128), K the instruction's k ("k32", "k16"). */
#define RING_WGMMAS(NAME, K, HEAD, TAIL)                                                           \
    RING_WGMMA(NAME, 1, "6", "m64n8" K, HEAD, TAIL)                                                \
    RING_WGMMA(NAME, 2, "10", "m64n16" K, HEAD, TAIL)                                              \
    RING_WGMMA(NAME, 4, "18", "m64n32" K, HEAD, TAIL)                                              \
    RING_WGMMA(NAME, 8, "34", "m64n64" K, HEAD, TAIL)                                              \
    RING_WGMMA(NAME, 16, "66", "m64n128" K, HEAD, TAIL)

/* ---- the grid: 64-row tiles x K slices ------------------------------------------------------- */
enum { RING_BM = 64, RING_CONSUMERS = 128 }; /* weight rows a tile; the consumer warpgroup */

/* A tile's K slice: its group, first row in the group, blocks [kb0, kb1), and the group's first
 * block in the workspace. */
struct ring_tile {
    int64_t g, r0;
    int kb0, kb1;
    int64_t kbg;
};

/* Tile t of rtiles a group, slice blockIdx.z of spc blocks (of nkb a group's row). */
__device__ __forceinline__ ring_tile ring_at(int rtiles, int spc, int nkb, int t)
{
    ring_tile u;
    u.g = t / rtiles;
    u.r0 = (int64_t)(t % rtiles) * RING_BM;
    u.kb0 = (int)blockIdx.z * spc;
    u.kb1 = min(u.kb0 + spc, nkb);
    u.kbg = u.g * nkb;
    return u;
}

/* Whether every x block of the tile's slice is exact by the prologue's flags (warp-uniform; any
 * warp gets the same). */
__device__ __forceinline__ bool ring_tile_exact(const int *exact, const ring_tile &u)
{
    const int lane = threadIdx.x & 31;
    int bad = 0;
    for (int kb = u.kb0 + lane; kb < u.kb1; kb += 32) bad |= !exact[u.kbg + kb];
    return !__any_sync(0xffffffffu, bad);
}

/* The ring's barriers, by thread 0, then the CTA's barrier: full[s] at bars + 8 s (1 arrival +
 * the bytes), empty[s] at bars + 8 (NST + s) (the consumer warpgroup's 128 arrivals). */
__device__ __forceinline__ void ring_bars_init(uint32_t bars, int nst)
{
    if (threadIdx.x == 0) {
        for (int s = 0; s < nst; s++) {
            ring_bar_init(bars + 8 * s, 1);
            ring_bar_init(bars + 8 * (nst + s), RING_CONSUMERS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
}

/* The items of the CTA's first tile t0 issued before the PDL wait: min(nst, its blocks); 0 for a
 * CTA with no tile. */
__device__ __forceinline__ int ring_first(int rtiles, int spc, int nkb, int tiles, int nst,
                                          unsigned t0)
{
    return t0 < tiles
               ? min(nst, ring_at(rtiles, spc, nkb, t0).kb1 - ring_at(rtiles, spc, nkb, t0).kb0)
               : 0;
}

/* The consumer warpgroup's own barrier (id 1). */
__device__ __forceinline__ void ring_consumer_sync()
{
    asm volatile("bar.sync 1, %0;\n" ::"r"(RING_CONSUMERS) : "memory");
}

/* A consumer lane's rows of the tile, rr0 = r0 + 16 cw + g (consumer warp cw, g = lane / 4) and
 * rr1 = rr0 + 8 (rows of the group), and the weight scale-block rows sr0, sr1 of each (a row
 * past nrows: the group's last). */
struct ring_rows {
    int64_t rr0, rr1, sr0, sr1;
};

__device__ __forceinline__ ring_rows ring_rows_at(const lin_args &a, const ring_tile &u, int cw,
                                                  int g)
{
    ring_rows w;
    const int64_t rbase = a.row0 + u.g * a.nrows;
    w.rr0 = u.r0 + cw * 16 + g, w.rr1 = w.rr0 + 8;
    w.sr0 = (rbase + min(w.rr0, a.nrows - 1)) / 128,
    w.sr1 = (rbase + min(w.rr1, a.nrows - 1)) / 128;
    return w;
}

/* acc [NT][4] = 0 */
template <int NT> __device__ __forceinline__ void ring_zero(float (&acc)[NT][4])
{
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[nt][j] = 0.0f;
}

/* The partial's [TOK][64] index of accumulator acc[nt][j] of lane (g, tq) in consumer warp cw:
 * token nt * 8 + 2 tq + (j & 1), row 16 cw + g (+ 8 for j >= 2). */
__device__ __forceinline__ int ring_part_at(int nt, int j, int tq, int cw, int g)
{
    return (nt * 8 + 2 * tq + (j & 1)) * RING_BM + cw * 16 + g + 8 * (j >> 1);
}

/* W consumer warpgroups: the ring's item k (the CTA's k-th, over its tiles) is group k % W's, so
 * that with an even ring each stage serves one group, which has itself waited for the stage's
 * previous use before it waits (by parity) for the next one. The first of a tile's blocks that is
 * group wg's, the tile starting at item it. */
__device__ __forceinline__ int ring_own(int it, int wg, int W)
{
    return (wg - it % W + W) % W;
}

/* The two consumer warpgroups' barrier (id 2) where a CTA has two (W == 2; id 1: group 0's own,
 * ring_consumer_sync). */
__device__ __forceinline__ void ring_pair_sync()
{
    asm volatile("bar.sync 2, %0;\n" ::"r"(2 * RING_CONSUMERS) : "memory");
}

/* Two groups' sums of a tile into group 0's acc: group 1 writes its acc [NT][4] to the partial's
 * region [TOK][64], group 0 adds it to its own (the sum of group 0's blocks plus the sum of group
 * 1's: a fixed order for a given grid). True in group 1, which then skips the store; both groups
 * then meet at one ring_pair_sync (group 0's store done: the region is free again). One barrier
 * instruction for both: compute-sanitizer's synccheck flags a named barrier that two warps of a
 * block meet at different instructions ("Divergent thread(s) in block", f8w_kernel<16, 1, 2>). */
template <int NT>
__device__ __forceinline__ bool ring_pair_hand(float (&acc)[NT][4], float *part, int wg, int tq,
                                               int cw, int g)
{
    if (wg == 1)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) part[ring_part_at(nt, j, tq, cw, g)] = acc[nt][j];
    ring_pair_sync();
    if (wg == 1) return true;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[nt][j] += part[ring_part_at(nt, j, tq, cw, g)];
    return false;
}

/* A consumer warp's sums of the tile, acc [NT][4] of lane (g, tq) in consumer warp cw (its rows
 * rw): unsplit, into y (C fragment: c0, c1 at row g, tokens 2 tq, 2 tq + 1; c2, c3 at g + 8);
 * split, into the partial [TOK][64] for ring_cluster_store, after the consumer warpgroup's
 * barrier where it lies over the ring (OVER: every consumer's wgmmas done). */
template <int NT, bool OVER>
__device__ __forceinline__ void ring_store(const lin_args &a, const ring_tile &u,
                                           const float (&acc)[NT][4], bool split, float *part,
                                           const ring_rows &rw, int tq, int cw, int g)
{
    if (!split) {
        float *y = a.y + u.g * a.nrows;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int n = nt * 8 + 2 * tq + (j & 1);
                const int64_t r = (j >> 1) ? rw.rr1 : rw.rr0;
                if (n < a.N && r < a.nrows) y[n * a.ldy + r] = lin_finish(a, acc[nt][j]);
            }
    } else {
        if (OVER) ring_consumer_sync();
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) part[ring_part_at(nt, j, tq, cw, g)] = acc[nt][j];
    }
}

/* Exact f32 fallback of a tile (x blocks the prologue did not flag exact): the consumer
 * warpgroup, row_sum(w, x, wrow) the f32 sum over the slice's blocks of weight row wrow (its
 * bytes w) times x (the token's x of the group) for each token n < N and row of the tile, into
 * part [TOK][64] (split: the CTA's one tile, the ring done) or, unsplit, straight into y (the ring
 * may hold the next tiles' stages). */
template <class RowSum>
__device__ void ring_fallback(const lin_args &a, const ring_tile &u, bool split, float *part,
                              RowSum row_sum)
{
    const int64_t rbase = a.row0 + u.g * a.nrows;
    const int N = (int)a.N;
    for (int e = threadIdx.x; e < N * RING_BM; e += RING_CONSUMERS) {
        const int n = e / RING_BM, row = e % RING_BM;
        const int64_t r = u.r0 + row;
        float tot = 0.0f;
        if (r < a.nrows)
            tot = row_sum(a.data + (rbase + r) * a.row_bytes, a.x + u.g * a.xg + n * a.ldx,
                          rbase + r);
        if (split)
            part[n * RING_BM + row] = tot;
        else if (r < a.nrows)
            a.y[n * a.ldy + u.g * a.nrows + r] = lin_finish(a, tot);
    }
}

/* A tile the prologue did not flag exact (every consumer group calls it; W groups, this one wg):
 * on the CTA's first tile (first_tile) each group first passes its own of the `first` items issued
 * before the PDL wait (their copies must land before the stages are reused; item i is group i %
 * W's, ring_own) and it moves past them; then group 0 alone computes the tile in f32
 * (ring_fallback). */
template <class RowSum>
__device__ void ring_inexact(const lin_args &a, const ring_tile &u, bool first_tile, int first,
                             uint32_t bars, int nst, int wg, int W, bool split, float *part,
                             int &it, RowSum row_sum)
{
    if (first_tile) {
        for (int i = wg; i < first; i += W) {
            ring_bar_wait(bars + 8 * i, 0);
            ring_bar_arrive(bars + 8 * (nst + i));
        }
        it = first;
    }
    if (wg == 0) {
        if (split) ring_consumer_sync(); /* every consumer past the ring: part free */
        ring_fallback(a, u, split, part, row_sum);
    }
}

/* The K split's sum: each rank of the cluster adds its share of the tile's partials part [N][64]
 * over the ranks in rank order (THREADS: the CTA's). */
template <int THREADS>
__device__ __forceinline__ void ring_cluster_store(const lin_args &a, const ring_tile &u,
                                                   float *part)
{
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync(); /* every rank's partial is in place */
    const int ks = (int)cl.num_blocks(), rank = (int)cl.block_rank();
    const int total = (int)a.N * RING_BM, per = (total + ks - 1) / ks;
    const int e1 = min(rank * per + per, total);
    for (int e = rank * per + (int)threadIdx.x; e < e1; e += THREADS) {
        const int n = e / RING_BM, row = e % RING_BM;
        float s = *cl.map_shared_rank(part + e, 0);
        for (int r = 1; r < ks; r++) s += *cl.map_shared_rank(part + e, r);
        if (u.r0 + row < a.nrows) a.y[n * a.ldy + u.g * a.nrows + u.r0 + row] = lin_finish(a, s);
    }
    cl.sync(); /* no rank leaves while another still reads its shared memory */
}

/* A split kernel's end (one tile per CTA, t0): once the CTA's THREADS threads are done, its
 * tile's sum over the cluster (ring_cluster_store); a CTA past the tiles has none. */
template <int THREADS>
__device__ __forceinline__ void ring_split_end(const lin_args &a, int rtiles, int spc, int nkb,
                                               int tiles, unsigned t0, float *part)
{
    __syncthreads();
    if (t0 < tiles) ring_cluster_store<THREADS>(a, ring_at(rtiles, spc, nkb, t0), part);
}

/* The grid of a call: at least LIN_SMS tiles run persistent without a split; fewer are split into
 * the most K slices (<= ks_max, >= 4 blocks each) that keep the grid within LIN_SMS CTAs. */
static void ring_make_plan(const lin_args *a, int ks_max, int *rtiles, int *tiles, int *nkb,
                           int *spc, int *ks)
{
    *rtiles = (int)((a->nrows + RING_BM - 1) / RING_BM);
    *tiles = (int)(*rtiles * a->groups);
    *nkb = (int)(a->cols / 128);
    int k = 1;
    for (int j = 2; j <= ks_max; j++)
        if ((int64_t)*tiles * j <= LIN_SMS && *nkb >= 4 * j) k = j;
    *spc = (*nkb + k - 1) / k;
    *ks = (*nkb + *spc - 1) / *spc;
}

/* Whether a call fits a ring kernel whatever its weight format: N <= tokmax rows of x, whole
 * 128-column blocks, 16-byte aligned rows and x, ungrouped x or groups of cols columns, at most
 * kmax columns in all (the workspace), coordinates within the tensor maps' int range. */
static inline int ring_ok(const lin_args *a, int tokmax, int kmax)
{
    const int64_t rows = a->row0 + a->groups * a->nrows; /* the weight rows the call spans */
    return a->N >= 1 && a->N <= tokmax && a->cols % 128 == 0 && a->row_bytes % 16 == 0 &&
           (uintptr_t)a->data % 16 == 0 && a->xg == a->cols && a->groups * a->cols <= kmax &&
           (uintptr_t)a->x % 16 == 0 && a->ldx % 4 == 0 && rows < (1 << 30) &&
           a->row_bytes < (1 << 30);
}

/* The token tile of N rows of x: 8, 16, 32, 64 or 128. */
static inline int ring_tok(int64_t N)
{
    return N <= 8 ? 8 : N <= 16 ? 16 : N <= 32 ? 32 : N <= 64 ? 64 : 128;
}

/* Launches ring kernel fn (tensor maps tw, tx; plan p with its tiles; threads a CTA, smem bytes
 * of dynamic shared memory): ks > 1, one CTA a tile in clusters (1, 1, ks); else persistent,
 * at most cps CTAs an SM. */
template <class P>
static dsv4_status ring_launch(void (*fn)(const CUtensorMap, const CUtensorMap, lin_args, P),
                               const CUtensorMap &tw, const CUtensorMap &tx, const lin_args *a,
                               const P *p, int ks, int cps, int threads, int smem, cudaStream_t st)
{
    CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const unsigned cx = ks > 1 ? (unsigned)p->tiles : (unsigned)min(p->tiles, cps * (int)LIN_SMS);
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg =
        lin_cluster_cfg(dim3(cx, 1, (unsigned)ks), threads, (size_t)smem, ks, st, &attr);
    CUDA_TRY(cudaLaunchKernelEx(&cfg, fn, tw, tx, *a, *p));
    return DSV4_OK;
}

/* ---- host: tensor maps ------------------------------------------------------------------------
 */
/* cuTensorMapEncodeTiled, from the driver through the runtime (no link to libcuda). */
static PFN_cuTensorMapEncodeTiled_v12000 ring_encode_fn(void)
{
    static PFN_cuTensorMapEncodeTiled_v12000 fn = NULL;
    if (!fn) {
        void *f = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                             &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (PFN_cuTensorMapEncodeTiled_v12000)f;
    }
    return fn;
}

/* A 2-D map of elements [rows][cols] (bf16 or bytes; row stride ld bytes), boxes of 128 bytes x
 * box_rows, 128-byte swizzle, zeros past the rows; who names the caller in errors. */
static dsv4_status ring_map(CUtensorMap *m, const void *base, int bf16, uint64_t rows,
                            uint64_t cols, uint64_t ld, uint32_t box_rows, const char *who)
{
    PFN_cuTensorMapEncodeTiled_v12000 fn = ring_encode_fn();
    if (!fn) return dsv4_fail(DSV4_ERR_DEVICE, "cuda linear %s: no cuTensorMapEncodeTiled", who);
    const cuuint64_t dim[2] = {cols, rows}, stride[1] = {ld};
    const cuuint32_t box[2] = {bf16 ? 64u : 128u, box_rows}, es[2] = {1, 1};
    const CUresult r = fn(
        m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void *)base,
        dim, stride, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return dsv4_fail(DSV4_ERR_DEVICE, "cuda linear %s: cuTensorMapEncodeTiled: %d", who,
                         (int)r);
    return DSV4_OK;
}

#endif
