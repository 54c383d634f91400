/*
 * ops_moe.c - the MoE's per-token math: sqrt-softplus router scores, routing weights, and the
 * clamped SwiGLU of every expert (see ops.h). The projections run through cpu_linear.
 */
#include "backend/cpu/ops.h"

#include <math.h>

/* logits [E] -> scores [E]. torch softplus: x above 20 passes through. */
void dsv4_op_router_scores(float *scores, const float *logits, int E)
{
    for (int e = 0; e < E; e++) {
        const float x = logits[e];
        const float sp = x > 20.0f ? x : log1pf(expf(x));
        scores[e] = sqrtf(sp);
    }
}

/* scores [E], idx [k] -> w [k]. */
void dsv4_op_router_weights(float *w, const float *scores, const int32_t *idx, int k,
                            float route_scale)
{
    float sum = 0.0f;
    for (int j = 0; j < k; j++) sum += scores[idx[j]];
    sum += 1e-20f;
    for (int j = 0; j < k; j++) w[j] = scores[idx[j]] / sum * route_scale;
}

/* g [n], u [n] -> g [n]. */
void dsv4_op_swiglu_clamped(float *g, const float *u, int64_t n, float limit)
{
    for (int64_t i = 0; i < n; i++) {
        float a = g[i] > limit ? limit : g[i];
        float b = u[i] > limit ? limit : u[i] < -limit ? -limit : u[i];
        g[i] = a / (1.0f + expf(-a)) * b;
    }
}
