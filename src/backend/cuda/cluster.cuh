/*
 * cluster.cuh - what the cluster launches share: their launch configuration (clusters of C CTAs
 * along x) and the query of how many clusters of a configuration the GPU holds at once. Clusters
 * above the portable 8 CTAs (16: the mHC site, the sparse attention, the indexer) need the kernel's
 * non-portable attribute and do not fit every GPU (a property of its GPCs and of the CTA's
 * resources), so a launch that would use one asks first and otherwise plans a portable shape.
 */
#ifndef DSV4_CUDA_CLUSTER_CUH
#define DSV4_CUDA_CLUSTER_CUH

#include <cuda_runtime.h>

/* The launch of grid (CTAs of `threads`, `smem` dynamic shared bytes) on st in clusters of C CTAs
 * along x; attr: the caller's storage for the cluster attribute. */
static inline cudaLaunchConfig_t cluster_cfg(dim3 grid, int threads, size_t smem, cudaStream_t st,
                                             cudaLaunchAttribute *attr, int C)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3((unsigned)threads, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)C;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

/* Clusters of cfg's cluster size of `kernel` (cfg: grid, block, dynamic shared memory, the
 * cluster attribute; the shared memory already allowed by the caller) that the device holds at
 * once, with the non-portable size allowed here; 0 where none fits or the query fails (the
 * error is cleared: a capability of the GPU, not a failure of the op). Host work only. */
static inline int cluster_capacity(const void *kernel, const cudaLaunchConfig_t *cfg)
{
    int n = 0;
    cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveClusters(&n, kernel, cfg);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

#endif
