/*
 * hc_dev.cuh - dsv4_op_hc_weights (backend/cpu/ops_hc.c) on the device, one thread, in the CPU's
 * operation order so that pre, post and comb are bit-identical: used by the mHC sites of
 * bk_rows.cu and the fused site of bk_hc.cu.
 */
#ifndef DSV4_CUDA_HC_DEV_CUH
#define DSV4_CUDA_HC_DEV_CUH

/* ops_hc.c sigmoidf, with exp in double rounded once to f32. */
static __device__ __forceinline__ float dev_sigmoid(float x)
{
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, (float)exp((double)-x)));
}

/* dsv4_op_hc_weights, one thread: mix [(2+n)n] -> pre [n], post [n], comb [n, n] (shared). */
static __device__ void dev_hc_weights(const float *mix, const float *base, const float *scale,
                                      int n, int iters, float eps, float *pre, float *post,
                                      float *comb)
{
    for (int j = 0; j < n; j++) {
        pre[j] = __fadd_rn(dev_sigmoid(__fadd_rn(__fmul_rn(mix[j], scale[0]), base[j])), eps);
        post[j] =
            __fmul_rn(2.0f, dev_sigmoid(__fadd_rn(__fmul_rn(mix[n + j], scale[1]), base[n + j])));
    }
    const float *cm = mix + 2 * n, *cb = base + 2 * n;
    for (int j = 0; j < n; j++) { /* softmax over each row, then + eps */
        float *row = comb + j * n;
        float mx = -INFINITY;
        for (int k = 0; k < n; k++) {
            row[k] = __fadd_rn(__fmul_rn(cm[j * n + k], scale[2]), cb[j * n + k]);
            if (row[k] > mx) mx = row[k];
        }
        float sum = 0.0f;
        for (int k = 0; k < n; k++) {
            row[k] = (float)exp((double)__fsub_rn(row[k], mx));
            sum = __fadd_rn(sum, row[k]);
        }
        for (int k = 0; k < n; k++) row[k] = __fadd_rn(__fdiv_rn(row[k], sum), eps);
    }
    for (int it = 0; it < iters; it++) { /* Sinkhorn: columns, then (rows, columns) */
        if (it > 0) {
            for (int j = 0; j < n; j++) {
                float s = 0.0f;
                for (int k = 0; k < n; k++) s = __fadd_rn(s, comb[j * n + k]);
                s = __fadd_rn(s, eps);
                for (int k = 0; k < n; k++) comb[j * n + k] = __fdiv_rn(comb[j * n + k], s);
            }
        }
        for (int k = 0; k < n; k++) {
            float s = 0.0f;
            for (int j = 0; j < n; j++) s = __fadd_rn(s, comb[j * n + k]);
            s = __fadd_rn(s, eps);
            for (int j = 0; j < n; j++) comb[j * n + k] = __fdiv_rn(comb[j * n + k], s);
        }
    }
}

#endif
