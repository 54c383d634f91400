/*
 * ops_attn.c - attention over [sliding window ++ compressed entries] with per-head sinks, the
 * compressor's per-channel softmax pooling, the lightning indexer's scores and its top-k
 * (see ops.h).
 */
#include "backend/cpu/ops.h"
#include "model/quant_sim.h"

#include <math.h>
#include <stdlib.h>

static float dot(const float *a, const float *b, int n)
{
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

/* q [c], nk keys [c] -> out [c]; scratch [nk]. */
void dsv4_op_attend_head(float *out, const float *q, const float *const *keys, int64_t nk, int c,
                         float scale, float sink, float *scratch, int bf16_p)
{
    float mx = sink;
    for (int64_t k = 0; k < nk; k++) {
        scratch[k] = dot(q, keys[k], c) * scale;
        if (scratch[k] > mx) mx = scratch[k];
    }
    float sum = expf(sink - mx);
    for (int64_t k = 0; k < nk; k++) {
        scratch[k] = expf(scratch[k] - mx);
        sum += scratch[k];
    }
    for (int i = 0; i < c; i++) out[i] = 0.0f;
    if (bf16_p) {
        for (int64_t k = 0; k < nk; k++) {
            const float p = dsv4_round_bf16(scratch[k]);
            const float *v = keys[k];
            for (int i = 0; i < c; i++) out[i] += p * v[i];
        }
        for (int i = 0; i < c; i++) out[i] /= sum;
        return;
    }
    for (int64_t k = 0; k < nk; k++) {
        const float p = scratch[k] / sum;
        const float *v = keys[k];
        for (int i = 0; i < c; i++) out[i] += p * v[i];
    }
}

/* nslots rows of kv/gate [d] -> out [d]. */
void dsv4_op_compress_pool(float *out, const float *const *kv, const float *const *gate, int nslots,
                           int d)
{
    for (int i = 0; i < d; i++) {
        float mx = -INFINITY;
        for (int s = 0; s < nslots; s++)
            if (gate[s][i] > mx) mx = gate[s][i];
        float sum = 0.0f;
        for (int s = 0; s < nslots; s++) sum += expf(gate[s][i] - mx);
        float acc = 0.0f;
        for (int s = 0; s < nslots; s++) acc += kv[s][i] * (expf(gate[s][i] - mx) / sum);
        out[i] = acc;
    }
}

/* q [nh, d], w [nh], keys [n_e, d] -> s [n_e]. */
void dsv4_op_indexer_scores(float *s, const float *q, const float *w, const float *keys,
                            int64_t n_e, int nh, int d, float softmax_scale)
{
    for (int64_t e = 0; e < n_e; e++) {
        const float *k = keys + e * d;
        float acc = 0.0f;
        for (int h = 0; h < nh; h++) {
            float v = dot(q + (int64_t)h * d, k, d);
            v = (v > 0.0f ? v : 0.0f) * softmax_scale;
            acc += v * w[h];
        }
        s[e] = acc;
    }
}

/* a ranks below b: lower score, or equal score and higher index; a NaN score ranks above every
 * number (torch.topk's order), NaNs among themselves by index. A total order, so the k chosen
 * do not depend on the heap's history. */
static int worse(const float *s, int32_t a, int32_t b)
{
    const int na = isnan(s[a]), nb = isnan(s[b]);
    if (na || nb) return na != nb ? nb : a > b;
    return s[a] < s[b] || (s[a] == s[b] && a > b);
}

static void sift_down(int32_t *h, int n, int i, const float *s)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(s, h[l], h[m])) m = l;
        if (r < n && worse(s, h[r], h[m])) m = r;
        if (m == i) return;
        int32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* s [n] -> idx [k] ascending. A min-heap of the k best (root = worst kept). */
void dsv4_op_topk(int32_t *idx, const float *s, int64_t n, int k)
{
    if (k <= 0) return;
    int size = 0;
    for (int64_t i = 0; i < n; i++) {
        if (size < k) {
            int j = size++;
            idx[j] = (int32_t)i;
            while (j > 0) { /* sift up */
                int p = (j - 1) / 2;
                if (!worse(s, idx[j], idx[p])) break;
                int32_t t = idx[j];
                idx[j] = idx[p];
                idx[p] = t;
                j = p;
            }
        } else if (worse(s, idx[0], (int32_t)i)) {
            idx[0] = (int32_t)i;
            sift_down(idx, size, 0, s);
        }
    }
    qsort(idx, (size_t)size, sizeof *idx, cmp_i32);
}
