/*
 * bench_gpu_access.cu - how fast the GPU's memory serves the MoE stage kernels' weight access
 * pattern, with no arithmetic: the measurement behind the tiled expert layout (moe.cuh).
 *
 * A warp streams the 16 rows of one tile of an expert's w1 and w3 (MXFP4, [2048, 4096]: 2 KB a
 * row) as moe_mma.cu's stage 1 does: lane (g, t) loads the 16 bytes at column 128 c + 32 t of
 * rows g and g + 8, two chunks of both matrices an iteration (8 loads a lane in flight, then
 * used), optionally with each load's MXFP4 scale byte; 4 CTAs of 4 warps an SM (shared memory
 * caps residency as the real kernels' 128 registers do). Row-major, a chunk is 16 runs of 64
 * bytes 2 KB apart; tiled, one run of 1 KB. Prints GB/s of data (+ scales) against a plain
 * read of the same buffer.
 *
 * usage: bench_gpu_access [experts]   (default 200: batch 64's distinct experts, 1.7 GB)
 */
#include "backend/cuda/moe_frag.cuh"

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { ROWS = 2048, COLS = 4096, RB = 64 }; /* RB: bytes of a row in a 128-column chunk */

/* TILED 0: row-major data [ROWS][COLS / 2] and scales [ROWS][COLS / 32]; 1: the tiled layout
 * (16 x 64-byte data blocks, 16 x 4-byte scale blocks). SC: the scale bytes loaded too.
 * A task = (expert, 16-row tile), one warp. */
template <int TILED, int SC>
__global__ void __launch_bounds__(128)
    pattern_kernel(const uint8_t *w, const uint8_t *s, int tasks, uint32_t *sink)
{
    const int lane = threadIdx.x & 31, task = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (task >= tasks) return;
    const int tiles = ROWS / 16, nch = COLS / 128, e = task / tiles, tile = task % tiles;
    const int g = lane >> 2, t = lane & 3;
    const size_t mat = (size_t)ROWS * COLS / 2, smat = (size_t)ROWS * COLS / 32;
    uint32_t acc = 0;
    for (int c0 = 0; c0 < nch; c0 += 2) {
        uint4 q[8]; /* load k: chunk c0 + (k >> 2), matrix (k >> 1) & 1, row g + 8 (k & 1) */
        uint32_t sc[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int c = c0 + (k >> 2), m = (k >> 1) & 1, r = g + 8 * (k & 1), row = tile * 16 + r;
            const uint8_t *wm = w + (2 * (size_t)e + m) * mat;
            const uint8_t *sm = s + (2 * (size_t)e + m) * smat;
            const size_t blk = (size_t)tile * nch + c;
            const size_t qo = TILED ? blk * 16 * RB + r * RB + 16 * t
                                    : (size_t)row * (COLS / 2) + c * RB + 16 * t;
            const size_t so = TILED ? blk * 64 + r * 4 + t : (size_t)row * (COLS / 32) + 4 * c + t;
            q[k] = moe_ldw((const uint4 *)(wm + qo));
            sc[k] = SC ? __ldg(sm + so) : 0;
        }
#pragma unroll
        for (int k = 0; k < 8; k++)
            acc += q[k].x ^ q[k].y ^ q[k].z ^ q[k].w ^ sc[k]; /* then used */
    }
    if (acc == 0x9e3779b9u) sink[task] = acc; /* keeps the loads */
}

__global__ void read_kernel(const uint4 *p, size_t n, uint32_t *sink)
{
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

/* Best of 5 timed launches after one warm-up, in ms. */
typedef void (*launch_fn)(void *ctx);
static float best_ms(launch_fn f, void *ctx)
{
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    float best = 1e30f;
    for (int it = 0; it < 6; it++) {
        cudaEventRecord(a);
        f(ctx);
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, a, b);
        if (it > 0 && ms < best) best = ms;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return best;
}

typedef struct run_ctx {
    const uint8_t *w, *s;
    uint32_t *sink;
    int tasks, sms;
    size_t smem, n16;
} run_ctx;

template <int TILED, int SC> static void launch_pattern(void *p)
{
    const run_ctx *c = (const run_ctx *)p;
    pattern_kernel<TILED, SC><<<(c->tasks + 3) / 4, 128, c->smem>>>(c->w, c->s, c->tasks, c->sink);
}

static void launch_read(void *p)
{
    const run_ctx *c = (const run_ctx *)p;
    read_kernel<<<c->sms * 8, 512>>>((const uint4 *)c->w, c->n16, c->sink);
}

int main(int argc, char **argv)
{
    const int E = argc > 1 ? atoi(argv[1]) : 200;
    if (E < 1 || E > 1000) {
        fprintf(stderr, "usage: bench_gpu_access [experts 1..1000]\n");
        return 2;
    }
    int sms = 0;
    if (!check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "SM count"))
        return 1;
    const size_t wb = (size_t)E * 2 * ROWS * COLS / 2, sb = (size_t)E * 2 * ROWS * COLS / 32;
    run_ctx c = {};
    uint8_t *w = NULL, *s = NULL;
    if (!check(cudaMalloc(&w, wb), "weights") || !check(cudaMalloc(&s, sb), "scales") ||
        !check(cudaMalloc(&c.sink, (size_t)E * ROWS / 16 * 4), "sink"))
        return 1;
    cudaMemset(w, 1, wb);
    cudaMemset(s, 1, sb);
    c.w = w, c.s = s, c.sms = sms, c.n16 = wb / 16, c.tasks = E * ROWS / 16;
    c.smem = 227 * 1024 / 4 - 2048; /* 4 CTAs an SM */
    const launch_fn fns[4] = {launch_pattern<0, 0>, launch_pattern<0, 1>, launch_pattern<1, 0>,
                              launch_pattern<1, 1>};
    const void *kernels[4] = {
        (const void *)pattern_kernel<0, 0>, (const void *)pattern_kernel<0, 1>,
        (const void *)pattern_kernel<1, 0>, (const void *)pattern_kernel<1, 1>};
    const char *names[4] = {"row-major", "row-major + scales", "tiled", "tiled + scales"};
    const float rd = best_ms(launch_read, &c);
    printf("%d experts' w1 + w3 (MXFP4 [%d, %d]): %.0f MB data, %.0f MB scales, %d SMs\n", E, ROWS,
           COLS, wb / 1e6, sb / 1e6, sms);
    printf("| pattern | us | GB/s | of plain read |\n|---|---|---|---|\n");
    printf("| plain read (data) | %.1f | %.0f | 100%% |\n", rd * 1e3, wb / rd / 1e6);
    for (int i = 0; i < 4; i++) {
        if (!check(cudaFuncSetAttribute(kernels[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)c.smem),
                   "shared memory"))
            return 1;
        const float ms = best_ms(fns[i], &c);
        const double bytes = (double)wb + (i & 1 ? (double)sb : 0.0);
        printf("| %s | %.1f | %.0f | %.0f%% |\n", names[i], ms * 1e3, bytes / ms / 1e6,
               100.0 * (bytes / ms) / (wb / rd));
    }
    return check(cudaGetLastError(), "kernels") ? 0 : 1;
}
