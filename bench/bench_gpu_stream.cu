/*
 * bench_gpu_stream.cu - how fast the GPU's memory serves the FP8 projections' weight streams
 * (F8W, W16: linear_f8w.cu, linear_w16.cu; the one-row GEMV: bk_linear.cu) with no arithmetic,
 * row-major as the checkpoints store them against a tiled layout (64-row x 128-column tiles
 * stored contiguously, as the MoE experts are: moe.cuh). The measurement behind the question
 * whether the ring kernels' ~50% of copy bandwidth at 8-64 rows (docs/PERF.md, sessions 12-13)
 * is their access pattern's ceiling.
 *
 * A weight [R][K] bytes (e4m3) is streamed whole by each way:
 *   plain          each CTA a contiguous range, 16-byte loads, 4 in flight a lane (reference);
 *   gemv           the one-row GEMV's pattern: a warp 4 rows x 512 bytes a step (lane: 16 bytes
 *                  of each row), 16 warps a CTA, 4 CTAs an SM, every warp's loads in flight at
 * once; tma box        a CTA a 64-row tile over all of K (F8W / W16 at 1 CTA an SM): one producer
 * lane fills a ring of S stages with 2-D TMA boxes of 64 rows x 128 bytes (128-byte swizzle), one
 * consumer lane waits for each stage and frees it; tma box, 2/SM  the same with two CTAs an SM,
 * each half of K (a K split); bulk tiled     the same ring on the tiled layout: each stage one 8 KB
 * cp.async.bulk; gemv tiled     the GEMV's warps on the tiled layout: a warp one 8 KB tile a step.
 * Each at three shapes of 33.5 MB (Flash's wq_b 32768 x 1024, wo_a 8192 x 4096, wo_b 4096 x
 * 8192), rotating over 4 copies so every launch reads cold lines, 40 launches back to back.
 *
 * usage: bench_gpu_stream
 */
#include "backend/cuda/moe_frag.cuh"
#include "backend/cuda/wgmma_ring.cuh"

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { BM = 64, BK = 128, TILE = BM * BK, COPIES = 4, LAUNCHES = 40 };

/* 16-byte loads past L1: moe_ldw (moe_frag.cuh). The loads' values folded into one word a thread,
 * stored only if it is a magic value (never), so the compiler keeps the loads. */
static __device__ __forceinline__ void sink(uint32_t v, uint32_t *out)
{
    if (v == 0x9e3779b9u) *out = v;
}

/* plain: the bytes [n) in 16-byte loads, 4 a lane in flight, grid-stride. */
__global__ void __launch_bounds__(512) plain_kernel(const uint8_t *w, size_t n, uint32_t *out)
{
    const size_t step = (size_t)gridDim.x * blockDim.x * 64;
    uint32_t acc = 0;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 16; i < n; i += step) {
        uint4 v[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            v[j] = i + j * (step / 4) < n ? moe_ldw((const uint4 *)(w + i + j * (step / 4)))
                                          : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int j = 0; j < 4; j++) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
    }
    sink(acc, out);
}

/* gemv: warp task (4 rows, 512-byte K chunk); tasks grid-stride over the warps of the grid. */
__global__ void __launch_bounds__(512, 4) gemv_kernel(const uint8_t *w, int R, int K, uint32_t *out)
{
    const int lane = threadIdx.x & 31;
    const int64_t nkc = K / 512, tasks = (int64_t)(R / 4) * nkc;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    uint32_t acc = 0;
    for (int64_t t = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); t < tasks;
         t += warps) {
        const int64_t rg = t / nkc, kc = t - rg * nkc;
        const uint8_t *p = w + rg * 4 * (int64_t)K + kc * 512 + lane * 16;
        uint4 v[4];
#pragma unroll
        for (int j = 0; j < 4; j++) v[j] = moe_ldw((const uint4 *)(p + (int64_t)j * K));
#pragma unroll
        for (int j = 0; j < 4; j++) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
    }
    sink(acc, out);
}

/* gemv tiled: warp task one 8 KB tile (lane: 16 loads of 16 bytes, 512 bytes apart). */
__global__ void __launch_bounds__(512, 4)
    gemv_tiled_kernel(const uint8_t *w, int64_t tiles, uint32_t *out)
{
    const int lane = threadIdx.x & 31;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    uint32_t acc = 0;
    for (int64_t t = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); t < tiles;
         t += warps) {
        const uint8_t *p = w + t * TILE + lane * 16;
        uint4 v[8];
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = moe_ldw((const uint4 *)(p + (h * 8 + j) * 512));
#pragma unroll
            for (int j = 0; j < 8; j++) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
        }
    }
    sink(acc, out);
}

/* The ring: CTA (tile blockIdx.x % rtiles, K slice blockIdx.x / rtiles of nks), S stages of 8 KB.
 * Warp 0 lane 0 produces (TILED: one bulk copy of tile (rt, kb); else the TMA box (kb, rt)),
 * warp 1 lane 0 consumes. Dynamic shared memory: S x 8 KB + 1 KB alignment + barriers. */
template <bool TILED, int XB = 0>
__global__ void __launch_bounds__(64)
    ring_kernel(const __grid_constant__ CUtensorMap tm, const uint8_t *w, int rtiles, int nkb,
                int nks, int S, const uint8_t *x = nullptr)
{
    constexpr int ST = TILE + XB;
    extern __shared__ unsigned char raw[];
    unsigned char *sm = raw + ((1024 - (ring_sa(raw) & 1023)) & 1023);
    const uint32_t ring = ring_sa(sm), bars = ring + S * ST;
    const int rt = blockIdx.x % rtiles, ks = blockIdx.x / rtiles;
    const int per = nkb / nks, kb0 = ks * per, n = per;
    if (threadIdx.x == 0)
        for (int s = 0; s < S; s++)
            ring_bar_init(bars + 8 * s, 1), ring_bar_init(bars + 8 * (S + s), 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 0; i < n; i++) {
            const int s = i % S, ph = (i / S) & 1;
            if (i >= S) ring_bar_wait(bars + 8 * (S + s), ph ^ 1);
            ring_arrive_tx(bars + 8 * s, ST);
            if (TILED)
                ring_bulk(ring + s * ST, w + ((int64_t)rt * nkb + kb0 + i) * TILE, TILE,
                          bars + 8 * s);
            else
                ring_tma(ring + s * ST, &tm, (kb0 + i) * BK, rt * BM, bars + 8 * s);
            if (XB) ring_bulk(ring + s * ST + TILE, x + (int64_t)(kb0 + i) * XB, XB, bars + 8 * s);
        }
    } else if (threadIdx.x == 32) {
        for (int i = 0; i < n; i++) {
            const int s = i % S, ph = (i / S) & 1;
            ring_bar_wait(bars + 8 * s, ph);
            ring_bar_arrive(bars + 8 * (S + s));
        }
    }
}

static void check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "bench_gpu_stream: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

/* The F8W kernel's map of the weight (wgmma_ring.cuh ring_map: boxes 128 bytes x 64 rows,
 * 128-byte swizzle). */
static CUtensorMap box_map(const uint8_t *w, int R, int K)
{
    CUtensorMap m;
    if (ring_map(&m, w, 0, (uint64_t)R, (uint64_t)K, (uint64_t)K, BM, "bench") != DSV4_OK) {
        fprintf(stderr, "bench_gpu_stream: %s\n", dsv4_last_error());
        exit(1);
    }
    return m;
}

enum { W_PLAIN, W_GEMV, W_BOX, W_BOX2, W_BULK, W_BULK2, W_GEMV_T, W_BOXX, W_BOXX2, W_COUNT };
static const char *const way_name[W_COUNT] = {"plain read",
                                              "gemv (row-major)",
                                              "tma box, 1/SM",
                                              "tma box, 2/SM (K split 2)",
                                              "bulk tiled, 1/SM",
                                              "bulk tiled, 2/SM (K split 2)",
                                              "gemv tiled",
                                              "tma box + 8 KB x, 1/SM",
                                              "tma box + 8 KB x, 2/SM"};

/* One launch of way `way` over copy c. */
static void launch(int way, int S, const uint8_t *w, const CUtensorMap *tm, int R, int K, int sms,
                   uint32_t *out, const uint8_t *x)
{
    const size_t n = (size_t)R * K;
    const int rtiles = R / BM, nkb = K / BK;
    const int smem1 = S * TILE + 1024 + 16 * S, smem2 = (S / 2) * TILE + 1024 + 8 * S;
    switch (way) {
    case W_PLAIN:
        plain_kernel<<<sms * 4, 512>>>(w, n, out);
        break;
    case W_GEMV:
        gemv_kernel<<<sms * 4, 512>>>(w, R, K, out);
        break;
    case W_GEMV_T:
        gemv_tiled_kernel<<<sms * 4, 512>>>(w, (int64_t)rtiles * nkb, out);
        break;
    case W_BOX:
        ring_kernel<false><<<rtiles, 64, smem1>>>(*tm, w, rtiles, nkb, 1, S);
        break;
    case W_BOX2:
        ring_kernel<false><<<rtiles * 2, 64, smem2>>>(*tm, w, rtiles, nkb, 2, S / 2);
        break;
    case W_BULK:
        ring_kernel<true><<<rtiles, 64, smem1>>>(*tm, w, rtiles, nkb, 1, S);
        break;
    case W_BULK2:
        ring_kernel<true><<<rtiles * 2, 64, smem2>>>(*tm, w, rtiles, nkb, 2, S / 2);
        break;
    case W_BOXX: /* the stages hold 16 KB: half as many */
        ring_kernel<false, TILE><<<rtiles, 64, smem1>>>(*tm, w, rtiles, nkb, 1, S / 2, x);
        break;
    default:
        ring_kernel<false, TILE><<<rtiles * 2, 64, smem2>>>(*tm, w, rtiles, nkb, 2, S / 4, x);
        break;
    }
}

int main(void)
{
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "attribute");
    check(cudaFuncSetAttribute(ring_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               227 * 1024),
          "smem");
    check(cudaFuncSetAttribute(ring_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               227 * 1024),
          "smem");
    check(cudaFuncSetAttribute(ring_kernel<false, TILE>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024),
          "smem");
    uint8_t *x; /* the tokens' codes a stage: [kb][64][128], L2-resident (1 MB at most) */
    check(cudaMalloc(&x, (size_t)64 * TILE), "malloc");
    check(cudaMemset(x, 0x22, (size_t)64 * TILE), "memset");
    const size_t bytes = (size_t)32768 * 1024;
    uint8_t *w[COPIES];
    for (int c = 0; c < COPIES; c++) {
        check(cudaMalloc(&w[c], bytes), "malloc");
        check(cudaMemset(w[c], 0x11 * (c + 1), bytes), "memset");
    }
    uint32_t *out;
    check(cudaMalloc(&out, 4), "malloc");
    cudaEvent_t e0, e1;
    check(cudaEventCreate(&e0), "event");
    check(cudaEventCreate(&e1), "event");
    const int shapes[3][2] = {{32768, 1024}, {8192, 4096}, {4096, 8192}};
    const int stages[3] = {8, 16, 24};
    printf("H100 stream ceilings, 33.5 MB a launch, %d launches over %d copies, us a launch "
           "(GB/s)\n",
           LAUNCHES, COPIES);
    for (int sh = 0; sh < 3; sh++) {
        const int R = shapes[sh][0], K = shapes[sh][1];
        CUtensorMap tm[COPIES];
        for (int c = 0; c < COPIES; c++) tm[c] = box_map(w[c], R, K);
        printf("\n%d x %d\n", R, K);
        for (int way = 0; way < W_COUNT; way++) {
            const int ring = way >= W_BOX && way != W_GEMV_T;
            for (int si = 0; si < (ring ? 3 : 1); si++) {
                const int S = stages[si];
                for (int c = 0; c < COPIES; c++) launch(way, S, w[c], &tm[c], R, K, sms, out, x);
                check(cudaDeviceSynchronize(), way_name[way]);
                float best = 1e30f;
                for (int rep = 0; rep < 3; rep++) {
                    check(cudaEventRecord(e0), "record");
                    for (int l = 0; l < LAUNCHES; l++)
                        launch(way, S, w[l % COPIES], &tm[l % COPIES], R, K, sms, out, x);
                    check(cudaEventRecord(e1), "record");
                    check(cudaEventSynchronize(e1), way_name[way]);
                    float ms = 0;
                    check(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
                    if (ms < best) best = ms;
                }
                const double us = best * 1000.0 / LAUNCHES;
                if (ring)
                    printf("  %-30s S %2d  %7.2f us  %6.0f GB/s\n", way_name[way], S, us,
                           bytes / us / 1e3);
                else
                    printf("  %-36s  %7.2f us  %6.0f GB/s\n", way_name[way], us, bytes / us / 1e3);
            }
        }
    }
    return 0;
}
