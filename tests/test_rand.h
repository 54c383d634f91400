/*
 * test_rand.h - the seeded random inputs and the bf16 helpers the GPU op tests share
 * (test_gpu_hc.c, test_gpu_rows.c): a splitmix64 stream, uniform and normal floats, rows in
 * different binades, bf16 rounding and its unit in the last place; and the element-wise bound
 * both hold the GPU to against the CPU. Each test binary seeds rng_state itself, so its inputs
 * are reproducible.
 */
#ifndef DSV4_TEST_RAND_H
#define DSV4_TEST_RAND_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;

static inline uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline float rng_uniform(void) /* [0, 1) */
{
    return (float)(rng_next() >> 40) * 0x1p-24f;
}

static inline float rng_normal(void)
{
    const float u = rng_uniform() + 0x1p-25f, v = rng_uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* n values ~ N(0, sigma^2), each run of w values (a row, or one residual stream of a row)
 * scaled by 2^k, k in -6..5, so that norms and block scales see different binades. */
static inline float *rand_rows(int64_t n, int64_t w, float sigma)
{
    float *x = malloc((size_t)n * sizeof *x);
    float row_scale = 1.0f;
    for (int64_t i = 0; i < n; i++) {
        if (i % w == 0) row_scale = ldexpf(1.0f, (int)(rng_next() % 12) - 6);
        x[i] = rng_normal() * sigma * row_scale;
    }
    return x;
}

/* f's bf16 bits, rounded to nearest even. */
static inline uint16_t bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* The bf16 step at magnitude a. */
static inline double ulp_bf16(double a)
{
    if (a < FLT_MIN) return ldexp(1.0, -133); /* bf16 subnormal step */
    int e;
    (void)frexp(a, &e); /* a in [2^(e-1), 2^e) */
    return ldexp(1.0, e - 1 - 7);
}

/* ---- comparison against the CPU ------------------------------------------------------------
 * An element passes when the bits are equal (or both NaN), else when
 *   |got - want| <= rel * max(|want|, floor) + bf16_ulps * ulp_bf16(max(|got|, |want|)) + slack[i]
 * (slack: a per-element absolute allowance the case derives from its inputs, or NULL). */
typedef struct bound {
    double rel, floor;
    int bf16_ulps;
    const float *slack;
    const char *why;
} bound;

typedef struct bound_result {
    double max_abs, max_rel; /* over the elements that differ; relative to max(|want|, floor) */
    int64_t differ, bad, first_bad; /* first_bad: -1 when none */
} bound_result;

static inline bound_result bound_scan(const float *got, const float *want, int64_t n, bound b)
{
    bound_result r = {0, 0, 0, 0, -1};
    for (int64_t i = 0; i < n; i++) {
        const float g = got[i], w = want[i];
        if (memcmp(&g, &w, sizeof g) == 0 || (isnan(g) && isnan(w))) continue;
        r.differ++;
        const double d = fabs((double)g - (double)w), aw = fabs((double)w);
        const double den = aw > b.floor ? aw : b.floor;
        double lim = b.rel * den;
        if (b.bf16_ulps) {
            const double ag = fabs((double)g);
            lim += b.bf16_ulps * ulp_bf16(ag > aw ? ag : aw);
        }
        if (b.slack) lim += b.slack[i];
        if (!(d <= lim)) {
            if (r.first_bad < 0) r.first_bad = i;
            r.bad++;
        }
        if (!(d <= r.max_abs)) r.max_abs = d;
        if (!(d / den <= r.max_rel)) r.max_rel = d / den;
    }
    return r;
}

#endif
