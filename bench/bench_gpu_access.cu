/*
 * bench_gpu_access.cu - how fast the GPU's memory serves the MoE stage kernels' weight access
 * pattern, with no arithmetic: the measurement behind the tiled expert layout (moe.cuh) and the
 * ceiling of each way of loading it, at batch 64's size and at batch 1's.
 *
 * A warp streams the 16 rows of one tile of an expert's w1 and w3 (MXFP4, [2048, 4096]: 2 KB a
 * row) as moe_mma.cu's stage 1 does: lane (g, t) loads the 16 bytes at column 128 c + 32 t of
 * rows g and g + 8, two chunks of both matrices an iteration (8 loads a lane in flight, then
 * used), optionally with each load's MXFP4 scale byte; 4 CTAs of 4 warps an SM (shared memory
 * caps residency as the real kernels' 128 registers do). Row-major, a chunk is 16 runs of 64
 * bytes 2 KB apart; tiled, one run of 1 KB. The other ways, all on the tiled data:
 *   packed scales  the scale bytes a lane needs for two chunks of a matrix (rows g, g + 8) in
 *                  one 32-bit word, so one load where there were four;
 *   two in flight  the next iteration's 8 loads issued before this one's are used;
 *   bulk ring      each warp's iterations copied into its own shared-memory ring of S stages
 *                  by cp.async.bulk (one lane, one copy a matrix and stage: a 16-row tile's
 *                  chunks are contiguous), the lanes reading their fragments from there;
 *   L2 prefetch    one cp.async.bulk.prefetch.L2 a matrix for the next iteration (as the
 *                  2-group kernels).
 * Each is timed on all E experts at once (batch 64 touches ~200) and on 7 (batch 1: six routed
 * and the shared expert, here seven MXFP4 ones; each tile in two K slices, as stage 1 there),
 * the small set rotated over the E so that every launch reads cold lines, launches back to back
 * in one CUDA graph, plain and with programmatic dependent launch (each kernel waits at its
 * start, so only the launch is hidden). A plain read of the same bytes is the reference.
 *
 * usage: bench_gpu_access [experts]   (default 200: batch 64's distinct experts, 1.7 GB)
 */
#include "backend/cuda/moe_frag.cuh"
#include "backend/cuda/pdl.cuh"

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { ROWS = 2048, COLS = 4096, RB = 64 }; /* RB: bytes of a row in a 128-column chunk */
enum { NCH = COLS / 128, TILES = ROWS / 16 };
enum { SMALL = 7 }; /* experts of the batch-1 runs */

/* The ways of loading (the kernel's MODE). */
enum {
    M_ROW,       /* row-major data and scales */
    M_ROW_S,     /* row-major + scale bytes */
    M_TILED,     /* tiled, no scales */
    M_TILED_S,   /* tiled + scale bytes (today's kernels) */
    M_PACKED,    /* tiled + packed scales */
    M_PACKED_2,  /* packed, two iterations in flight */
    M_PACKED_L2, /* packed, L2 bulk prefetch one iteration ahead */
    M_RING3,     /* packed, bulk ring of 3 stages a warp (4 CTAs an SM) */
    M_RING6,     /* packed, bulk ring of 6 stages a warp (2 CTAs an SM) */
    M_COUNT
};
static const char *const mode_name[M_COUNT] = {"row-major",
                                               "row-major + scale bytes",
                                               "tiled",
                                               "tiled + scale bytes (as the kernels)",
                                               "tiled + packed scales",
                                               "packed, two iterations in flight",
                                               "packed, L2 prefetch one ahead",
                                               "packed, bulk ring 3 stages a warp",
                                               "packed, bulk ring 6 stages a warp"};

/* The kernels' PDL wait where launched as programmatic dependents (pdl.cuh's). */
static __device__ __forceinline__ void pdl_start(int pdl)
{
    if (pdl) DSV4_PDL_WAIT();
}

/* The 8 loads of iteration c0 (chunks c0, c0 + 1): load k is chunk c0 + (k >> 2), matrix
 * (k >> 1) & 1, row g + 8 (k & 1) of the tile. */
template <int MODE>
static __device__ __forceinline__ void load_iter(const uint8_t *w, const uint8_t *s, int e,
                                                 int tile, int c0, int g, int t, int lane,
                                                 uint4 (&q)[8], uint32_t (&sc)[8])
{
    const size_t mat = (size_t)ROWS * COLS / 2, smat = (size_t)ROWS * COLS / 32;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int c = c0 + (k >> 2), m = (k >> 1) & 1, r = g + 8 * (k & 1), row = tile * 16 + r;
        const uint8_t *wm = w + (2 * (size_t)e + m) * mat;
        const uint8_t *sm = s + (2 * (size_t)e + m) * smat;
        const size_t blk = (size_t)tile * NCH + c;
        const size_t qo = MODE <= M_ROW_S ? (size_t)row * (COLS / 2) + c * RB + 16 * t
                                          : blk * 16 * RB + r * RB + 16 * t;
        q[k] = moe_ldw((const uint4 *)(wm + qo));
        sc[k] = 0;
        if (MODE == M_ROW_S) sc[k] = __ldg(sm + (size_t)row * (COLS / 32) + 4 * c + t);
        if (MODE == M_TILED_S) sc[k] = __ldg(sm + blk * 64 + r * 4 + t);
        /* packed: the word of chunk pair c0 / 2 of matrix m, lane's 4 bytes */
        if (MODE >= M_PACKED && (k & 5) == 0)
            sc[k] =
                __ldg((const uint32_t *)(sm + ((size_t)tile * (NCH / 2) + c0 / 2) * 128) + lane);
    }
}

template <int MODE>
__global__ void __launch_bounds__(128) pattern_kernel(const uint8_t *w, const uint8_t *s, int e0,
                                                      int tasks, int ks, int pdl, uint32_t *sink)
{
    pdl_start(pdl);
    const int lane = threadIdx.x & 31, task = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (task >= tasks) return;
    const int e = e0 + task / (TILES * ks), tile = task / ks % TILES, slice = task % ks;
    const int lo = slice * (NCH / ks), hi = lo + NCH / ks; /* the warp's chunks */
    const int g = lane >> 2, t = lane & 3;
    uint32_t acc = 0;
    uint4 q[8], qn[8];
    uint32_t sc[8], scn[8];
    if (MODE == M_PACKED_2) load_iter<MODE>(w, s, e, tile, lo, g, t, lane, qn, scn);
    for (int c0 = lo; c0 < hi; c0 += 2) {
        if (MODE == M_PACKED_2) {
#pragma unroll
            for (int k = 0; k < 8; k++) q[k] = qn[k], sc[k] = scn[k];
            if (c0 + 2 < hi) load_iter<MODE>(w, s, e, tile, c0 + 2, g, t, lane, qn, scn);
        } else {
            load_iter<MODE>(w, s, e, tile, c0, g, t, lane, q, sc);
        }
        if (MODE == M_PACKED_L2 && lane == 0 && c0 + 2 < hi) {
            const size_t mat = (size_t)ROWS * COLS / 2, smat = (size_t)ROWS * COLS / 32;
#pragma unroll
            for (int m = 0; m < 2; m++) {
                const uint8_t *d =
                    w + (2 * (size_t)e + m) * mat + ((size_t)tile * NCH + c0 + 2) * 16 * RB;
                const uint8_t *sp =
                    s + (2 * (size_t)e + m) * smat + ((size_t)tile * (NCH / 2) + c0 / 2 + 1) * 128;
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(d),
                             "r"(2 * 16 * RB)
                             : "memory");
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(sp), "r"(128)
                             : "memory");
            }
        }
#pragma unroll
        for (int k = 0; k < 8; k++)
            acc += q[k].x ^ q[k].y ^ q[k].z ^ q[k].w ^ sc[k]; /* then used */
    }
    if (acc == 0x9e3779b9u) sink[task] = acc; /* keeps the loads */
}

/* ---- the bulk ring: a warp's stage = chunks c0, c0 + 1 of both matrices (2 x 2 KB) and their
 * packed scales (2 x 128 B) ---- */
enum { STAGE_BYTES = 2 * 2 * 16 * RB + 2 * 128 };

static __device__ __forceinline__ void ring_issue(uint8_t *stage, uint64_t *bar, const uint8_t *w,
                                                  const uint8_t *s, int e, int tile, int c0)
{
    const size_t mat = (size_t)ROWS * COLS / 2, smat = (size_t)ROWS * COLS / 32;
    const unsigned b = (unsigned)__cvta_generic_to_shared(bar);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(b),
                 "r"((unsigned)STAGE_BYTES)
                 : "memory");
#pragma unroll
    for (int m = 0; m < 2; m++) {
        const uint8_t *d = w + (2 * (size_t)e + m) * mat + ((size_t)tile * NCH + c0) * 16 * RB;
        const uint8_t *sp =
            s + (2 * (size_t)e + m) * smat + ((size_t)tile * (NCH / 2) + c0 / 2) * 128;
        const unsigned dd = (unsigned)__cvta_generic_to_shared(stage + m * 2 * 16 * RB);
        const unsigned ds = (unsigned)__cvta_generic_to_shared(stage + 4 * 16 * RB + m * 128);
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
            "%2, [%3];\n" ::"r"(dd),
            "l"(d), "r"(2 * 16 * RB), "r"(b)
            : "memory");
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
            "%2, [%3];\n" ::"r"(ds),
            "l"(sp), "r"(128), "r"(b)
            : "memory");
    }
}

static __device__ __forceinline__ void ring_wait(uint64_t *bar, unsigned parity)
{
    const unsigned b = (unsigned)__cvta_generic_to_shared(bar);
    asm volatile("{\n\t.reg .pred p;\n"
                 "W:\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "\t@!p bra W;\n}\n" ::"r"(b),
                 "r"(parity)
                 : "memory");
}

template <int S>
__global__ void __launch_bounds__(128) ring_kernel(const uint8_t *w, const uint8_t *s, int e0,
                                                   int tasks, int ks, int pdl, uint32_t *sink)
{
    extern __shared__ __align__(128) uint8_t ring_smem[];
    __shared__ uint64_t bars[4][S];
    pdl_start(pdl);
    const int lane = threadIdx.x & 31, wi = threadIdx.x >> 5, task = blockIdx.x * 4 + wi;
    if (task >= tasks) return;
    const int e = e0 + task / (TILES * ks), tile = task / ks % TILES, slice = task % ks;
    const int lo = slice * (NCH / ks), nit = NCH / ks / 2; /* the warp's chunks, iterations */
    const int g = lane >> 2, t = lane & 3;
    uint8_t *ring = ring_smem + (size_t)wi * S * STAGE_BYTES;
    if (lane == 0) {
        for (int i = 0; i < S; i++)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(
                (unsigned)__cvta_generic_to_shared(&bars[wi][i])));
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        for (int i = 0; i < S && i < nit; i++)
            ring_issue(ring + i * STAGE_BYTES, &bars[wi][i], w, s, e, tile, lo + 2 * i);
    }
    __syncwarp();
    uint32_t acc = 0;
    for (int it = 0; it < nit; it++) {
        const int st = it % S;
        ring_wait(&bars[wi][st], (unsigned)(it / S) & 1u);
        const uint8_t *p = ring + st * STAGE_BYTES;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int ci = k >> 2, m = (k >> 1) & 1, r = g + 8 * (k & 1);
            const uint4 v = *(const uint4 *)(p + m * 2 * 16 * RB + ci * 16 * RB + r * RB + 16 * t);
            acc += v.x ^ v.y ^ v.z ^ v.w;
        }
        acc ^= *(const uint32_t *)(p + 4 * 16 * RB + lane * 4);
        acc ^= *(const uint32_t *)(p + 4 * 16 * RB + 128 + lane * 4);
        __syncwarp();
        if (lane == 0 && it + S < nit)
            ring_issue(ring + st * STAGE_BYTES, &bars[wi][st], w, s, e, tile, lo + 2 * (it + S));
    }
    if (acc == 0x9e3779b9u) sink[task] = acc;
}

__global__ void read_kernel(const uint4 *p, size_t n, int pdl, uint32_t *sink)
{
    pdl_start(pdl);
    uint32_t acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = moe_ldw(p + i);
        acc += v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;
}

static int check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess)
        fprintf(stderr, "bench_gpu_access: %s: %s\n", what, cudaGetErrorString(e));
    return e == cudaSuccess;
}

typedef struct run_ctx {
    const uint8_t *w, *s;
    uint32_t *sink;
    int E, sms;
} run_ctx;

/* The kernel of each mode. */
static const void *const mode_kernel[M_COUNT] = {(const void *)pattern_kernel<M_ROW>,
                                                 (const void *)pattern_kernel<M_ROW_S>,
                                                 (const void *)pattern_kernel<M_TILED>,
                                                 (const void *)pattern_kernel<M_TILED_S>,
                                                 (const void *)pattern_kernel<M_PACKED>,
                                                 (const void *)pattern_kernel<M_PACKED_2>,
                                                 (const void *)pattern_kernel<M_PACKED_L2>,
                                                 (const void *)ring_kernel<3>,
                                                 (const void *)ring_kernel<6>};

/* One launch of mode m (M_COUNT: the plain read) over experts [e0, e0 + n), each tile's chunks
 * in ks slices (a warp each), as the stage kernels split K where the tiles are too few to fill
 * the GPU (moe_mma.cu split_pick: Flash stage 1 at batch 1 takes 2). */
static cudaError_t launch(const run_ctx *c, int m, int e0, int n, int pdl, cudaStream_t st)
{
    const size_t mat = (size_t)ROWS * COLS / 2;
    const int ks = n == SMALL ? 2 : 1, tasks = n * TILES * ks;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.stream = st;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    cfg.blockDim = dim3(128);
    cfg.gridDim = dim3((tasks + 3) / 4);
    cfg.dynamicSmemBytes = 227 * 1024 / 4 - 2048; /* 4 CTAs an SM */
    if (m < M_COUNT) {
        void *args[7] = {(void *)&c->w, (void *)&c->s, (void *)&e0,     (void *)&tasks,
                         (void *)&ks,   (void *)&pdl,  (void *)&c->sink};
        if (m == M_RING3 || m == M_RING6)
            cfg.dynamicSmemBytes = 4 * (m == M_RING3 ? 3 : 6) * STAGE_BYTES;
        return cudaLaunchKernelExC(&cfg, mode_kernel[m], args);
    }
    cfg.gridDim = dim3(c->sms * 8); /* the plain read */
    cfg.blockDim = dim3(512);
    cfg.dynamicSmemBytes = 0;
    return cudaLaunchKernelEx(&cfg, read_kernel, (const uint4 *)(c->w + 2 * (size_t)e0 * mat),
                              2 * n * mat / 16, pdl, c->sink);
}

/* us a launch: L launches over rotating expert sets in one graph, best of 5 replays. */
static float time_us(const run_ctx *c, int m, int n, int pdl)
{
    const int L = n * 8 <= c->E ? c->E / n : 2;
    cudaStream_t st;
    cudaGraph_t gr;
    cudaGraphExec_t ex;
    cudaEvent_t a, b;
    if (!check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream")) return -1.0f;
    cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal);
    for (int i = 0; i < L; i++) launch(c, m, n < c->E ? (i * n) % (c->E - n + 1) : 0, n, pdl, st);
    if (!check(cudaStreamEndCapture(st, &gr), "capture") ||
        !check(cudaGraphInstantiate(&ex, gr, 0), "instantiate"))
        return -1.0f;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    float best = 1e30f;
    for (int it = 0; it < 6; it++) {
        cudaEventRecord(a, st);
        cudaGraphLaunch(ex, st);
        cudaEventRecord(b, st);
        cudaEventSynchronize(b);
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, a, b);
        if (it > 0 && ms < best) best = ms;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaGraphExecDestroy(ex);
    cudaGraphDestroy(gr);
    cudaStreamDestroy(st);
    return check(cudaGetLastError(), mode_name[m < M_COUNT ? m : 0]) ? best * 1e3f / L : -1.0f;
}

int main(int argc, char **argv)
{
    const int E = argc > 1 ? atoi(argv[1]) : 200;
    if (E < SMALL * 8 || E > 1000) {
        fprintf(stderr, "usage: bench_gpu_access [experts %d..1000]\n", SMALL * 8);
        return 2;
    }
    int sms = 0;
    if (!check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "SM count"))
        return 1;
    const size_t wb = (size_t)E * 2 * ROWS * COLS / 2, sb = (size_t)E * 2 * ROWS * COLS / 32;
    run_ctx c = {};
    uint8_t *w = NULL, *s = NULL;
    if (!check(cudaMalloc(&w, wb), "weights") || !check(cudaMalloc(&s, sb), "scales") ||
        !check(cudaMalloc(&c.sink, (size_t)E * TILES * 4), "sink"))
        return 1;
    cudaMemset(w, 1, wb);
    cudaMemset(s, 1, sb);
    c.w = w, c.s = s, c.sms = sms, c.E = E;
    for (int i = 0; i < M_COUNT; i++)
        if (!check(cudaFuncSetAttribute(mode_kernel[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        227 * 1024 / 2),
                   "shared memory"))
            return 1;
    const int sizes[2] = {E, SMALL};
    printf("w1 + w3 of MXFP4 experts [%d, %d]: %.1f MB data + %.2f MB scales an expert, %d SMs\n",
           ROWS, COLS, wb / E / 1e6, sb / E / 1e6, sms);
    for (int z = 0; z < 2; z++) {
        const int n = sizes[z];
        const double dbytes = (double)wb / E * n, sbytes = (double)sb / E * n;
        const float rd = time_us(&c, M_COUNT, n, 0), rdp = time_us(&c, M_COUNT, n, 1);
        printf(
            "\n%d experts (%.1f MB data; a tile's chunks in %d warps), us a launch in a graph of "
            "launches over rotating experts; GB/s of data + the scales loaded; share of the "
            "plain read's GB/s\n\n",
            n, dbytes / 1e6, n == SMALL ? 2 : 1);
        printf("| pattern | us | GB/s | of plain read | us, PDL | GB/s, PDL | of plain read, PDL "
               "|\n|---|---|---|---|---|---|---|\n");
        printf("| plain read (data) | %.1f | %.0f | 100%% | %.1f | %.0f | 100%% |\n", rd,
               dbytes / rd / 1e3, rdp, dbytes / rdp / 1e3);
        for (int m = 0; m < M_COUNT; m++) {
            const float us = time_us(&c, m, n, 0), up = time_us(&c, m, n, 1);
            if (us < 0 || up < 0) return 1;
            const double bytes = dbytes + (m == M_ROW || m == M_TILED ? 0.0 : sbytes);
            printf("| %s | %.1f | %.0f | %.0f%% | %.1f | %.0f | %.0f%% |\n", mode_name[m], us,
                   bytes / us / 1e3, 100.0 * (bytes / us) / (dbytes / rd), up, bytes / up / 1e3,
                   100.0 * (bytes / up) / (dbytes / rdp));
        }
    }
    return check(cudaGetLastError(), "kernels") ? 0 : 1;
}
