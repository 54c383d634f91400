/*
 * index_path.cuh - test hook of the CUDA indexer scores and top-k (bk_topk.cu), plain C so that
 * the GPU op test (tests/test_gpu_index.c) can include it: it forces the SIMT path (a score
 * kernel with one warp per entry, then a top-k kernel: any head count and dim), the fused
 * tensor-core path (scores and top-k in one kernel: 64 heads of 128) or the cluster path (one
 * cluster of 8 or 16 CTAs a row scores and ranks: 64 heads of 128, rows of up to 2048 entries;
 * with cap_e > 2048 the call is split, the fused kernel taking the longer rows) so that all are
 * checked against the CPU and timed side by side. The engine never calls it. Process-wide, by
 * design of a test switch: set it, run, reset to DSV4_INDEX_PATH_AUTO.
 */
#ifndef DSV4_CUDA_INDEX_PATH_CUH
#define DSV4_CUDA_INDEX_PATH_CUH

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DSV4_INDEX_PATH_AUTO = 0,  /* the dispatcher's choice */
    DSV4_INDEX_PATH_SIMT = 1,  /* index_scores_simt + index_topk_kernel: any shape */
    DSV4_INDEX_PATH_FUSED = 2, /* index_fused_kernel: nh 64, d 128 */
    DSV4_INDEX_PATH_CLUSTER =
        3, /* index_cluster_kernel, 8 CTAs a row: nh 64, d 128, cap_e <= 2048 */
    DSV4_INDEX_PATH_CLUSTER16 = 4, /* the same, 16 CTAs a row (where the GPU places them) */
    /* reported only (cap_e > 2048: forcing CLUSTER / CLUSTER16 gives these): the cluster kernel
     * (8 / 16 CTAs) for the rows of n_vis <= 2048, then the fused kernel for the others (and
     * where cap_e > 4096 their selection by clusters of 8 / 16 CTAs, a third kernel) */
    DSV4_INDEX_PATH_SPLIT = 5,
    DSV4_INDEX_PATH_SPLIT16 = 6,
};

/* The CUDA op's workspace (bk_topk.cu): row r's scores start at float r (cap_e + 1), its ticket
 * (the fused path's) is the word after them. */
static inline long long dsv4_cuda_index_ws_row(long long r, long long cap_e)
{
    return r * (cap_e + 1);
}

/* Forces `path` for the following dsv4_cuda_bk_indexer_topk calls; a path that does not take a
 * call falls back to the dispatcher's choice. Returns the previous setting. */
int dsv4_cuda_index_force_path(int path);
/* The path the last dsv4_cuda_bk_indexer_topk call took (DSV4_INDEX_PATH_*). */
int dsv4_cuda_index_last_path(void);

#ifdef __cplusplus
}
#endif
#endif
