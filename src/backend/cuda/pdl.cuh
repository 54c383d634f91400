/*
 * pdl.cuh - programmatic dependent launch (PDL) for the kernels of a step.
 *
 * A decode step is ~150 dependent kernels; between two of them the GPU would drain the first
 * grid, then launch the second. With b->pdl set, dsv4_bk_graph_end makes each kernel -> kernel
 * edge of a step's graph programmatic: the next kernel's CTAs are placed as soon as all CTAs of
 * the previous one have started, so its launch overlaps the previous kernel's tail. That is safe
 * only if the next kernel touches no memory before the previous one has finished, so EVERY
 * kernel begins with DSV4_PDL_WAIT(), before any load, store or early return (a CTA that exits
 * before waiting would let a grid finish while its predecessor still runs). Outside a
 * programmatic launch the wait returns at once. tools/check_pdl.sh checks the rule.
 */
#ifndef DSV4_BACKEND_CUDA_PDL_CUH
#define DSV4_BACKEND_CUDA_PDL_CUH

/* Waits until the grids this one depends on have completed and their writes are visible. */
#define DSV4_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")

#endif
