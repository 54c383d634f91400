/*
 * ops_faithful.c - the faithful numeric mode's versions of four ops (docs/numeric-modes.md): the
 * official reference's arithmetic, with its bf16 roundings and block order. The session forward
 * (model/forward_attn.c) and the CPU backend (bk_*.c) both call these.
 */
#include "backend/cpu/ops.h"
#include "model/quant_sim.h"

#include <math.h>

enum { FAITHFUL_BLOCK = 64 };

/* Compressor pooling as the official Compressor (f32 softmax over the slots, weighted sum), with
 * the sums taken in double and rounded once, as tools/make_faithful_goldens.py does. */
void dsv4_op_faithful_pool(float *out, const float *const *kv, const float *const *gate, int ns,
                           int d)
{
    float e[256];
    for (int i = 0; i < d; i++) {
        float mx = -INFINITY;
        for (int k = 0; k < ns; k++)
            if (gate[k][i] > mx) mx = gate[k][i];
        double sum = 0.0;
        for (int k = 0; k < ns; k++) sum += e[k] = expf(gate[k][i] - mx);
        const float fs = (float)sum;
        double acc = 0.0;
        for (int k = 0; k < ns; k++) acc += (double)kv[k][i] * (double)(e[k] / fs);
        out[i] = (float)acc;
    }
}

/* The per-head query norm of the official Attention, every op on bf16 tensors:
 * q *= rsqrt(mean(q^2) + eps) with q^2, the mean, the sum with eps, the rsqrt and the product
 * each rounded to bf16. q [n_vec, c] in place. */
void dsv4_op_faithful_q_norm(float *q, int64_t n_vec, int c, float eps)
{
    for (int64_t v = 0; v < n_vec; v++) {
        float *x = q + v * c;
        double sum = 0.0;
        for (int i = 0; i < c; i++) sum += dsv4_round_bf16(x[i] * x[i]);
        const float m = dsv4_round_bf16((float)(sum / c));
        const float r = dsv4_round_bf16(1.0f / sqrtf(dsv4_round_bf16(m + eps)));
        for (int i = 0; i < c; i++) x[i] = dsv4_round_bf16(x[i] * r);
    }
}

/* One head of the official sparse_attn_kernel: the slots (NULL = an empty slot, index -1) in
 * blocks of 64, in slot order; per block the scores q.k * scale, the running max of the scores
 * (the sink is not part of it), exps in f32 summed unrounded, the bf16-rounded exps times V
 * added to the rescaled accumulator; at the end the sink joins the denominator and the output is
 * rounded to bf16. Dot products and block sums in double, rounded once to f32. */
void dsv4_op_faithful_attend_head(float *out, const float *q, const float *const *slots, int64_t ns,
                                  int c, float scale, float sink, double *contrib)
{
    float mx = -INFINITY, sum = 0.0f;
    float s[FAITHFUL_BLOCK];
    for (int i = 0; i < c; i++) out[i] = 0.0f;
    for (int64_t b0 = 0; b0 < ns; b0 += FAITHFUL_BLOCK) {
        const int nb = ns - b0 < FAITHFUL_BLOCK ? (int)(ns - b0) : FAITHFUL_BLOCK;
        float bm = -INFINITY;
        for (int k = 0; k < nb; k++) {
            const float *kv = slots[b0 + k];
            if (!kv) {
                s[k] = -INFINITY;
                continue;
            }
            double acc = 0.0;
            for (int i = 0; i < c; i++) acc += (double)q[i] * kv[i];
            s[k] = (float)acc * scale;
            if (s[k] > bm) bm = s[k];
        }
        const float m_new = bm > mx ? bm : mx;
        if (m_new == -INFINITY) continue; /* nothing valid yet */
        const float alpha = mx == -INFINITY ? 0.0f : expf(mx - m_new);
        double bsum = 0.0;
        for (int i = 0; i < c; i++) contrib[i] = 0.0;
        for (int k = 0; k < nb; k++) {
            const float *kv = slots[b0 + k];
            if (!kv) continue;
            const float e = expf(s[k] - m_new);
            bsum += e;
            const double p = dsv4_round_bf16(e);
            for (int i = 0; i < c; i++) contrib[i] += p * kv[i];
        }
        sum = sum * alpha + (float)bsum;
        for (int i = 0; i < c; i++) out[i] = out[i] * alpha + (float)contrib[i];
        mx = m_new;
    }
    sum += expf(sink - mx);
    for (int i = 0; i < c; i++) out[i] = dsv4_round_bf16(out[i] / sum);
}

/* The official Indexer's scores of one query against n_e keys: per head the bf16 GEMM output
 * bf16(q.k), relu, times the head weight (bf16 product), the sum over heads rounded to bf16.
 * q [nh, d], w [nh] (bf16(bf16(weights_proj x) * d^-0.5 nh^-0.5)), keys [n_e, d] -> s [n_e]. */
void dsv4_op_faithful_index_scores(float *sc, const float *q, const float *w, const float *keys,
                                   int64_t n_e, int nh, int d)
{
    for (int64_t e = 0; e < n_e; e++) {
        const float *k = keys + e * d;
        double tot = 0.0;
        for (int h = 0; h < nh; h++) {
            const float *qh = q + (int64_t)h * d;
            double acc = 0.0;
            for (int i = 0; i < d; i++) acc += (double)qh[i] * k[i];
            float v = dsv4_round_bf16((float)acc);
            v = v > 0.0f ? v : 0.0f;
            tot += dsv4_round_bf16(v * w[h]);
        }
        sc[e] = dsv4_round_bf16((float)tot);
    }
}
