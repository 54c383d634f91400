/*
 * moe_route.cu - the router and the tensor-core path's prep of the MoE in one launch
 * (dsv4_bk_moe_routed): at decode both were tiny latency-bound kernels (~4-6 us each in ncu at
 * batch 1), one after the other on the critical path. Here the first N CTAs route one row each
 * (moe_route.cuh moe_route_row: the router kernel's code) and zero their share of the stage
 * tickets; the last of them to finish (a ticket on a per-table counter, as stage1_tail in
 * moe_mma.cu) builds the work list from all of sel and resets the counter for the next call or
 * graph replay; the other CTAs quantise h meanwhile (it does not depend on the routing). The
 * results are the router's and moe_mma_prep_kernel's, bit for bit.
 */
#include "backend/cuda/check.cuh"
#include "backend/cuda/moe.cuh"
#include "backend/cuda/moe_route.cuh"
#include "backend/cuda/pdl.cuh"

/* Grid: N routing CTAs, then ceil(N D / 128 / warps) act_quant CTAs. blockDim: 256, or E
 * rounded up to warps where larger (one expert a thread); dynamic shared memory 3 E ints.
 * logits [N, E] -> sel, wts [N, K]; h [N, D] -> x4, x8 [N, D], sx [N, D / 128]; the list. */
__global__ void __launch_bounds__(1024)
    moe_route_prep_kernel(const moe_mma_args a, const moe_route rt, const float *h)
{
    DSV4_PDL_WAIT();
    __shared__ moe_route_smem sm;
    __shared__ int last;
    extern __shared__ int32_t wl[];
    const int64_t N = a.N;
    if (blockIdx.x >= N) {
        const int64_t gw = (int64_t)(blockIdx.x - N) * (blockDim.x >> 5) + (threadIdx.x >> 5);
        moe_quant_x(a, h, gw, threadIdx.x & 31);
        return;
    }
    const int64_t r = blockIdx.x;
    moe_route_row(sm, rt.sel, rt.wts, rt.logits, rt.bias, rt.tid2eid, rt.ids, r, a.E, a.K,
                  rt.scale);
    const int64_t nt = moe_counter_ints(a.slots, a.I), T = blockDim.x;
    for (int64_t i = r * T + threadIdx.x; i < nt; i += N * T) a.tickets[i] = 0;
    /* thread 0 stored this row's sel / wts: a fence, then its ticket; the last CTA reads every
     * row's sel after its own fence. A single row needs neither (its sel is this CTA's). */
    if (N > 1) {
        if (threadIdx.x == 0) {
            __threadfence();
            const int tk = atomicAdd(rt.counter, 1);
            last = tk == (int)(N - 1);
            if (last) {
                __threadfence();
                *rt.counter = 0; /* every routing CTA has taken its ticket */
            }
        }
        __syncthreads();
        if (!last) return;
        __threadfence();
    }
    moe_list_build(a.list, rt.sel, N * a.K, a.E, wl);
}

dsv4_status moe_route_prep_launch(cudaStream_t st, const moe_mma_args *a, const moe_route *rt,
                                  const float *h)
{
    const int64_t N = a->N, qwarps = N * ((a->D + 127) / 128);
    const unsigned threads = a->E > 256 ? (unsigned)((a->E + 31) / 32 * 32) : 256u;
    const int64_t wpb = threads / 32;
    const unsigned grid = (unsigned)(N + (qwarps + wpb - 1) / wpb);
    moe_route_prep_kernel<<<grid, threads, (size_t)3 * a->E * sizeof(int32_t), st>>>(*a, *rt, h);
    CUDA_LAUNCHED();
    return DSV4_OK;
}
