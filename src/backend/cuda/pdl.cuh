/*
 * pdl.cuh - programmatic dependent launch (PDL) for the kernels of a step.
 *
 * A decode step is ~80 dependent kernels; between two of them the GPU would drain the first
 * grid, then launch the second. With b->pdl set, dsv4_bk_graph_end makes each kernel -> kernel
 * edge of a step's graph programmatic: the next kernel's CTAs are placed as soon as every CTA of
 * the previous one has passed its wait, so its launch overlaps the previous kernel's run, and
 * only one grid waits behind a running one. That is safe only if the next kernel touches no
 * memory before the previous one has finished, so EVERY kernel begins with DSV4_PDL_WAIT(),
 * before any load, store or early return (a CTA that exits before waiting would let a grid
 * finish while its predecessor still runs). Outside a programmatic launch the wait returns at
 * once. tools/check_pdl.sh checks the rule. (An L2 prefetch of the weights before the wait was
 * measured: no gain for the mHC seam's fn, 8% slower steps with the GEMVs' slices; PERF.md.)
 * What did pay (session 8): a kernel's FIRST weight loads into registers before the wait, where
 * the loop would issue them anyway (DSV4_PDL_LATE below: the GEMVs, the mHC site, the MoE
 * stages; Flash batch 1 step -2.4% in all).
 */
#ifndef DSV4_BACKEND_CUDA_PDL_CUH
#define DSV4_BACKEND_CUDA_PDL_CUH

/* A trace build (cmake -DDSV4_TRACE=ON) times every macro below: trace.cuh. */
#ifdef DSV4_TRACE
#include "backend/cuda/trace.cuh"
#else
#define DSV4_TRACE_ENTER(o) ((void)0)
#define DSV4_TRACE_LEAVE(o) ((void)0)
#endif

/* Waits until the grids this one depends on have completed and their writes are visible, then
 * lets the next grid launch once every CTA of this one got here (its CTAs then wait in turn). */
#ifndef DSV4_TRACE
#define DSV4_PDL_WAIT()                                                                            \
    asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else /* trace.cuh: the same in a scope that records its times (a declaration) */
#define DSV4_PDL_WAIT() DSV4_TRACE_SCOPE(1)
#endif

/* The two halves of DSV4_PDL_WAIT, for a kernel that keeps the next grid from launching past its
 * wait (the indexer's split top-k, bk_topk.cu: the next grid would take SMs it still needs): it
 * waits with DSV4_PDL_WAIT_HELD() and lets the next grid launch later with DSV4_PDL_RELEASE() or
 * by exiting. */
#ifndef DSV4_TRACE
#define DSV4_PDL_WAIT_HELD() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define DSV4_PDL_WAIT_HELD() DSV4_TRACE_SCOPE(2)
#endif
#define DSV4_PDL_RELEASE() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")

/* Opens a kernel that waits later instead (tools/check_pdl.sh accepts either): before its wait it
 * may read only what no launch of the last two writes (weights, tables, and data of a launch two
 * or more back, which had completed before the previous launch passed its own wait), and it
 * must reach DSV4_PDL_WAIT() (or DSV4_PDL_WAIT_HELD()) on every path before any other load, any
 * store and any return. Loads meant to go out before the wait must be plain or inline-asm loads:
 * ptxas moves ld.global.nc (__ldg) below griddepcontrol.wait (session 10, bk_hc.cu's ld_w4).
 * One exception: the MoE's stage 2 with RDY (moe_mma.cu) waits on its inputs by a counter of the
 * launch before instead, and ends only after that launch's last store. */
#ifndef DSV4_TRACE
#define DSV4_PDL_LATE() ((void)0)
#else /* trace.cuh: a scope that records the CTA's start and end */
#define DSV4_PDL_LATE() DSV4_TRACE_SCOPE(0)
#endif

/* A flag (or counter) in global memory between launches that may run side by side (stage 1 and
 * stage 2 of the MoE, moe_mma.cu RDY; a linear entry's signal, bk_linear.cu gv_signal, and the
 * indexer that waits for it, bk_topk.cu): the producer's stores before its release are visible
 * to a consumer after its acquire. */
static __device__ __forceinline__ void dsv4_signal_raise(int *p)
{
    asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(1) : "memory");
}

/* Spins (one thread) until *p >= need, with acquire semantics. */
static __device__ __forceinline__ void dsv4_poll_at_least(const int *p, int need)
{
    for (;;) {
        int v;
        asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
        if (v >= need) break;
        __nanosleep(64);
    }
}

#endif
