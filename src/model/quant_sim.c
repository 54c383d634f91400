/*
 * quant_sim.c - bit-exact f32 simulations of the official reference's low-precision roundings.
 *
 * Every function here reproduces one rounding of the official DeepSeek-V4 inference code
 * (inference/kernel.py + model.py; docs/numeric-modes.md lists where each one is called):
 * - narrow formats: e4m3fn (CUDA's cvt.rn.satfinite), e2m1 (cvt.rn.satfinite), bf16 (RNE);
 * - block scales: fast_round_scale = 2^(ceil(log2(amax * (1/max)))), with ceil(log2) read off the
 *   f32 bits exactly as the kernel's fast_log2_ceil does, so no libm log2 is involved;
 * - the act_quant / fp4_act_quant in-place bodies: clamp(x / s) -> narrow -> f32 * s;
 * - the Walsh-Hadamard transform in fast_hadamard_transform's f32 butterfly order.
 *
 * Rounding to a grid uses exact operations only: frexpf/ldexpf scale by powers of two and rintf
 * rounds an integer-range value half-to-even (the default rounding mode; this file never changes
 * it). Nothing allocates; all functions are reentrant.
 */
#include "model/quant_sim.h"

#include <assert.h>
#include <math.h>
#include <string.h>

/* ---- bit access -------------------------------------------------------------------------- */

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* ---- narrow formats ---------------------------------------------------------------------- */

/* Rounds a >= 0 (finite) to the grid of a binary format with `mbits` explicit mantissa bits and
 * smallest normal exponent `emin`, nearest with ties to even; no overflow handling. Below
 * 2^emin the grid is the subnormal one, 2^(emin - mbits). */
static float round_grid(float a, int mbits, int emin)
{
    if (a == 0.0f) return 0.0f;
    int e2;
    (void)frexpf(a, &e2); /* a = m * 2^e2, m in [0.5, 1): the binade is [2^(e2-1), 2^e2) */
    int e = e2 - 1;
    if (e < emin) e = emin;
    /* a / ulp is below 2^(mbits+1), an integer-range value: exact scaling, one rounding. */
    float q = rintf(ldexpf(a, mbits - e));
    return ldexpf(q, e - mbits);
}

float dsv4_round_e4m3(float x)
{
    if (isnan(x)) return x;
    float a = fabsf(x);
    /* e4m3fn: 3 mantissa bits, bias 7 (smallest normal 2^-6, subnormal step 2^-9), largest
     * finite 448; 480 would be the NaN code, so anything rounding past 448 saturates (satfinite),
     * infinities included. */
    float q = a >= 448.0f ? 448.0f : round_grid(a, 3, -6);
    if (q > 448.0f) q = 448.0f;
    return copysignf(q, x);
}

float dsv4_round_e2m1(float x)
{
    if (isnan(x)) return x;
    float a = fabsf(x);
    /* e2m1: 1 mantissa bit, bias 1 (smallest normal 1, subnormal 0.5), largest 6, no inf/NaN
     * codes: the grid {0, .5, 1, 1.5, 2, 3, 4, 6}; beyond 6 saturates. */
    float q = a >= 6.0f ? 6.0f : round_grid(a, 1, 0);
    if (q > 6.0f) q = 6.0f;
    return copysignf(q, x);
}

float dsv4_round_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return f32_from_bits(u | 0x00400000u); /* quiet NaN */
    /* Round the low 16 bits half to even; a carry into the exponent is the right answer, up to
     * and including overflow to infinity. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return f32_from_bits(u & 0xffff0000u);
}

uint16_t dsv4_bf16_bits(float x)
{
    return (uint16_t)(f32_bits(dsv4_round_bf16(x)) >> 16);
}

void dsv4_sim_bf16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = dsv4_round_bf16(x[i]);
}

/* ---- block scales ------------------------------------------------------------------------ */

/* 2^ceil(log2(y)) for y > 0, from the f32 bits as the official fast_log2_ceil + fast_pow2:
 * exponent field - 127, plus one if any mantissa bit is set. Exact for normal y; a subnormal y
 * (not reachable after the amax floors) is treated as the kernel treats it. */
static float pow2_ceil_bits(float y)
{
    uint32_t u = f32_bits(y);
    int e = (int)((u >> 23) & 0xffu) - 127 + ((u & 0x7fffffu) != 0 ? 1 : 0);
    assert(e >= -126 && e <= 127);
    return f32_from_bits((uint32_t)(e + 127) << 23);
}

float dsv4_scale_fp8(float amax)
{
    /* kernel.py act_quant_kernel: amax = max(amax, 1e-4); s = fast_round_scale(amax, 1/448). */
    const float floor_ = 1e-4f, inv_max = (float)(1.0 / 448.0);
    return pow2_ceil_bits(fmaxf(amax, floor_) * inv_max);
}

float dsv4_scale_fp4(float amax)
{
    /* kernel.py fp4_quant_kernel: amax = max(amax, 6 * 2^-126); s = fast_round_scale(amax, 1/6). */
    const float floor_ = 6.0f * 0x1p-126f, inv_max = (float)(1.0 / 6.0);
    return pow2_ceil_bits(fmaxf(amax, floor_) * inv_max);
}

/* ---- block simulations ------------------------------------------------------------------- */

static float block_amax(const float *x, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a; /* a NaN element is skipped, as a max-reduction with fmaxf skips it */
    }
    return m;
}

/* The in-place body of the official kernels: clamp(x / s, -max, max) -> narrow -> f32 -> * s.
 * s is a power of two, so x / s and q * s are exact in f32 (bar underflow far below any
 * activation); the clamp is implied by the saturating narrow roundings. */
void dsv4_sim_fp8_blocks(float *x, int64_t n, int block)
{
    assert(block > 0);
    for (int64_t b = 0; b < n; b += block) {
        int64_t len = n - b < block ? n - b : block;
        float *p = x + b;
        float s = dsv4_scale_fp8(block_amax(p, len));
        for (int64_t i = 0; i < len; i++) p[i] = dsv4_round_e4m3(p[i] / s) * s;
    }
}

void dsv4_sim_fp4_blocks(float *x, int64_t n, int block)
{
    assert(block > 0);
    for (int64_t b = 0; b < n; b += block) {
        int64_t len = n - b < block ? n - b : block;
        float *p = x + b;
        float s = dsv4_scale_fp4(block_amax(p, len));
        for (int64_t i = 0; i < len; i++) p[i] = dsv4_round_e2m1(p[i] / s) * s;
    }
}

/* ---- Walsh-Hadamard ---------------------------------------------------------------------- */

void dsv4_hadamard(float *x, int n)
{
    assert(n > 0 && (n & (n - 1)) == 0);
    /* fast_hadamard_transform: thread-level stages (strides 1, 2, 4 within a thread's 8
     * contiguous elements) then warp/shared-memory stages (strides 8, 16, ...), each stage
     * (lo, hi) -> (lo + hi, lo - hi) in f32; one multiply by the f32 scale at the store. */
    for (int h = 1; h < n; h <<= 1) {
        for (int i = 0; i < n; i += 2 * h) {
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    /* The scale is the Python float n ** -0.5 handed to the kernel as an f32. */
    const float scale = (float)pow((double)n, -0.5);
    for (int i = 0; i < n; i++) x[i] *= scale;
}

/* ---- the official calls ------------------------------------------------------------------ */

void dsv4_sim_act_quant(float *x, int64_t n, int block)
{
    dsv4_sim_bf16(x, n);
    dsv4_sim_fp8_blocks(x, n, block);
}

void dsv4_sim_fp4_act_quant(float *x, int64_t n, int block)
{
    dsv4_sim_bf16(x, n);
    dsv4_sim_fp4_blocks(x, n, block);
}

void dsv4_sim_rotate_activation(float *x, int n)
{
    dsv4_sim_bf16(x, n);
    dsv4_hadamard(x, n);
    dsv4_sim_bf16(x, n);
}
