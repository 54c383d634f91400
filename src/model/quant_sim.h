/*
 * quant_sim.h - the low-precision roundings of the "faithful" numeric mode.
 *
 * DeepSeek-V4 was trained against an inference reference that rounds activations to FP8/FP4 at
 * fixed places (dsv4-model.md, "Two numeric modes"; docs/numeric-modes.md lists each place). The
 * faithful mode reproduces those roundings in f32 arithmetic: a value goes through the narrow
 * format and comes back as f32 ("fake quantisation"). Exact mode skips all of them.
 *
 * All functions work in place on f32 arrays and are deterministic and thread-safe.
 */
#ifndef DSV4_MODEL_QUANT_SIM_H
#define DSV4_MODEL_QUANT_SIM_H

#include <stdint.h>

/* Round-to-nearest-even f32 -> e4m3fn -> f32, saturating at +-448 (the value must already be
 * scaled). NaN stays NaN. */
float dsv4_round_e4m3(float x);
/* f32 -> e2m1 -> f32 (nearest, ties to even), saturating at +-6. */
float dsv4_round_e2m1(float x);
/* f32 -> bf16 -> f32, nearest-even. */
float dsv4_round_bf16(float x);
/* The same bf16 as its 16 stored bits (dsv4_bf16_to_f32 gives the value back). */
uint16_t dsv4_bf16_bits(float x);

/* Activation FP8 as the official linear layers do it: x[0..n) in blocks of `block` (128)
 * elements, each with the power-of-two scale s = 2^ceil(log2(max(amax, 1e-4) / 448)); every
 * element becomes round_e4m3(x / s) * s. n need not be a multiple of block (the last block is
 * shorter). */
void dsv4_sim_fp8_blocks(float *x, int64_t n, int block);

/* FP4 as the indexer does it: blocks of `block` (32) elements, scale
 * 2^ceil(log2(max(amax, 6 * 2^-126) / 6)), each element round_e2m1(x / s) * s. */
void dsv4_sim_fp4_blocks(float *x, int64_t n, int block);

/* In-place Walsh-Hadamard transform of x[0..n) (n a power of two) times n^-0.5, in f32 exactly as
 * fast_hadamard_transform (the official rotate_activation) computes it: radix-2 butterflies
 * (a + b, a - b) with strides 1, 2, 4, ..., n/2, then one multiply by the f32 scale. */
void dsv4_hadamard(float *x, int n);

/* bf16 rounding of x[0..n). */
void dsv4_sim_bf16(float *x, int64_t n);

/* The block scales alone, as the official kernels compute them: the amax is floored (1e-4 for
 * FP8, 6 * 2^-126 for FP4), multiplied by the f32 constant 1/448 (1/6), and the product's
 * ceil(log2) is read off its IEEE bits (exponent, +1 if any mantissa bit is set). Always a power of
 * two; equal to the header formulas above computed exactly (the test checks every amax near a
 * power-of-two boundary and a sweep of the whole range).
 * A NaN amax gives the floor's scale, as CUDA's fmaxf does. */
float dsv4_scale_fp8(float amax);
float dsv4_scale_fp4(float amax);

/* The official calls themselves, for a forward pass that keeps f32 activations where the reference
 * keeps bf16 tensors (docs/numeric-modes.md):
 * - act_quant: x rounded to bf16 (every official act_quant input is a bf16 tensor), then
 *   dsv4_sim_fp8_blocks. Used for every FP8/FP4-weight linear's input (block 128) and, in place,
 *   for the 448 non-RoPE KV dims (block 64).
 * - fp4_act_quant: bf16, then dsv4_sim_fp4_blocks (block 32).
 * - rotate_activation: bf16, Walsh-Hadamard in f32 (fast_hadamard_transform's order), bf16.
 * Results are exactly representable in bf16. */
void dsv4_sim_act_quant(float *x, int64_t n, int block);
void dsv4_sim_fp4_act_quant(float *x, int64_t n, int block);
void dsv4_sim_rotate_activation(float *x, int n);

#endif
