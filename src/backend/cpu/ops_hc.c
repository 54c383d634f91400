/*
 * ops_hc.c - the manifold-constrained hyper-connection (mHC) sites and the head collapse: the
 * small per-token mixing math around each sublayer (see ops.h). The fn . x products themselves
 * run through cpu_linear.
 */
#include "backend/cpu/ops.h"

#include <math.h>

static float sigmoidf(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

/* mix [(2+n)n], base [(2+n)n], scale [3] -> pre [n], post [n], comb [n, n]. */
void dsv4_op_hc_weights(const float *mix, const float *base, const float *scale, int n, int iters,
                        float eps, float *pre, float *post, float *comb)
{
    for (int j = 0; j < n; j++) {
        pre[j] = sigmoidf(mix[j] * scale[0] + base[j]) + eps;
        post[j] = 2.0f * sigmoidf(mix[n + j] * scale[1] + base[n + j]);
    }
    const float *cm = mix + 2 * n, *cb = base + 2 * n;
    for (int j = 0; j < n; j++) { /* softmax over each row (last axis), then + eps */
        float *row = comb + j * n;
        float mx = -INFINITY;
        for (int k = 0; k < n; k++) {
            row[k] = cm[j * n + k] * scale[2] + cb[j * n + k];
            if (row[k] > mx) mx = row[k];
        }
        float sum = 0.0f;
        for (int k = 0; k < n; k++) {
            row[k] = expf(row[k] - mx);
            sum += row[k];
        }
        for (int k = 0; k < n; k++) row[k] = row[k] / sum + eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0) { /* rows */
            for (int j = 0; j < n; j++) {
                float s = 0.0f;
                for (int k = 0; k < n; k++) s += comb[j * n + k];
                s += eps;
                for (int k = 0; k < n; k++) comb[j * n + k] /= s;
            }
        }
        for (int k = 0; k < n; k++) { /* columns */
            float s = 0.0f;
            for (int j = 0; j < n; j++) s += comb[j * n + k];
            s += eps;
            for (int j = 0; j < n; j++) comb[j * n + k] /= s;
        }
    }
}

/* X [n, D], pre [n] -> y [D]. */
void dsv4_op_hc_collapse(float *y, const float *X, const float *pre, int n, int64_t D)
{
    for (int64_t d = 0; d < D; d++) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++) acc += pre[j] * X[j * D + d];
        y[d] = acc;
    }
}

/* X [n, D], f [D] -> Xo [n, D] = post (x) f + comb^T X. */
void dsv4_op_hc_expand(float *Xo, const float *X, const float *f, const float *post,
                       const float *comb, int n, int64_t D)
{
    for (int k = 0; k < n; k++) {
        float *o = Xo + k * D;
        for (int64_t d = 0; d < D; d++) {
            float acc = 0.0f;
            for (int j = 0; j < n; j++) acc += comb[j * n + k] * X[j * D + d];
            o[d] = post[k] * f[d] + acc;
        }
    }
}

/* mix [n] -> pre [n]. */
void dsv4_op_hc_head_weights(const float *mix, const float *base, float scale, int n, float eps,
                             float *pre)
{
    for (int j = 0; j < n; j++) pre[j] = sigmoidf(mix[j] * scale + base[j]) + eps;
}
