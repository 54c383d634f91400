/*
 * bulk_copy.cuh - mbarriers and bulk copies (cp.async.bulk: global -> shared through the TMA
 * unit, completing on an mbarrier's transaction count), shared by the TMA rings of the linear
 * kernels (wgmma_ring.cuh) and the attention's key gather (bk_attn.cu). Addresses of shared
 * memory are 32-bit shared-window addresses (ring_sa).
 */
#ifndef DSV4_BACKEND_CUDA_BULK_COPY_CUH
#define DSV4_BACKEND_CUDA_BULK_COPY_CUH

#include <stdint.h>

__device__ __forceinline__ uint32_t ring_sa(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ring_bar_init(uint32_t bar, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void ring_bar_wait(uint32_t bar, int parity)
{
    asm volatile("{\n.reg .pred p;\nW:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra W;\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

__device__ __forceinline__ void ring_bar_arrive(uint32_t bar)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar)
                 : "memory");
}

/* One arrival that also expects `bytes` more of transactions (the stage's copies). */
__device__ __forceinline__ void ring_arrive_tx(uint32_t bar, int bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}

/* `bytes` more of transactions expected, no arrival (copies issued before the arrival). */
__device__ __forceinline__ void ring_expect_tx(uint32_t bar, int bytes)
{
    asm volatile("mbarrier.expect_tx.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}

/* bytes (a multiple of 16) global -> shared dst, completing on bar. */
__device__ __forceinline__ void ring_bulk(uint32_t dst, const void *src, int bytes, uint32_t bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                 "%2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

#endif
