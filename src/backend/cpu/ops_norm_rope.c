/*
 * ops_norm_rope.c - RMSNorm and interleaved partial RoPE (with the YaRN frequency table) for the
 * CPU forward pass; see ops.h for the semantics each op reproduces.
 */
#include "backend/cpu/ops.h"

#include <math.h>

/* x [T, n] -> y [T, n]. The mean of squares is accumulated in double: closer to the exactly
 * rounded value torch's vectorised reduction approximates. */
void dsv4_op_rmsnorm(float *y, const float *x, const float *w, int64_t T, int64_t n, float eps)
{
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * n;
        float *yt = y + t * n;
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++) ss += (double)xt[i] * xt[i];
        const float var = (float)(ss / (double)n);
        const float r = 1.0f / sqrtf(var + eps);
        if (w) {
            for (int64_t i = 0; i < n; i++) yt[i] = w[i] * (xt[i] * r);
        } else {
            for (int64_t i = 0; i < n; i++) yt[i] = xt[i] * r;
        }
    }
}

static double yarn_correction_dim(double n_rot, int dim, double base, double max_pos)
{
    return (dim * log(max_pos / (n_rot * 2.0 * M_PI))) / (2.0 * log(base));
}

/* inv_freq [r/2], as transformers' compute_default_rope_parameters / _compute_yarn_parameters
 * (fp32 tensors, python-float correction range). */
void dsv4_rope_freqs(float *inv_freq, int r, float theta, float yarn_factor,
                     int64_t yarn_original_max_position, float beta_fast, float beta_slow)
{
    const int half = r / 2;
    for (int i = 0; i < half; i++) {
        const float e = (float)(2 * i) / (float)r;
        const float pos_freq = powf(theta, e);
        inv_freq[i] = 1.0f / pos_freq;
    }
    if (!(yarn_factor > 1.0f)) return;
    double low =
        floor(yarn_correction_dim(beta_fast, r, theta, (double)yarn_original_max_position));
    double high =
        ceil(yarn_correction_dim(beta_slow, r, theta, (double)yarn_original_max_position));
    if (low < 0) low = 0;
    if (high > r - 1) high = r - 1;
    if (low == high) high += 0.001;
    for (int i = 0; i < half; i++) {
        const float e = (float)(2 * i) / (float)r;
        const float pos_freq = powf(theta, e);
        const float extrap = 1.0f / pos_freq;
        const float interp = 1.0f / (yarn_factor * pos_freq);
        float ramp = ((float)i - (float)low) / (float)(high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        const float ef = 1.0f - ramp;
        inv_freq[i] = interp * (1.0f - ef) + extrap * ef;
    }
}

/* x [n_vec, dim]: rotate the last r dims of each vector at position pos. */
void dsv4_op_rope(float *x, int64_t n_vec, int64_t dim, int r, const float *inv_freq, int64_t pos,
                  int inverse)
{
    const int half = r / 2;
    float c[DSV4_ROPE_MAX / 2], s[DSV4_ROPE_MAX / 2]; /* the session rejects r > DSV4_ROPE_MAX */
    if (half > DSV4_ROPE_MAX / 2) return;
    for (int i = 0; i < half; i++) {
        const float ang = inv_freq[i] * (float)pos;
        c[i] = cosf(ang);
        s[i] = inverse ? -sinf(ang) : sinf(ang);
    }
    for (int64_t v = 0; v < n_vec; v++) {
        float *p = x + v * dim + (dim - r);
        for (int i = 0; i < half; i++) {
            const float a = p[2 * i], b = p[2 * i + 1];
            p[2 * i] = a * c[i] + (-b) * s[i];
            p[2 * i + 1] = b * c[i] + a * s[i];
        }
    }
}
