/*
 * float_formats.h - decoding of the narrow number formats DeepSeek-V4 checkpoints store:
 * bf16, f16, FP8 e4m3 (the "fn" variant: no infinities, 0x7f/0xff are NaN), ue8m0 scales
 * (pure power of two, 2^(s-127), 0xff is NaN) and FP4 e2m1 nibbles. All decodings are exact in
 * f32. These are the reference decodings; kernels must agree with them bit for bit.
 */
#ifndef DSV4_CORE_FLOAT_FORMATS_H
#define DSV4_CORE_FLOAT_FORMATS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The same decoders serve the CPU code and the CUDA kernels. */
#ifdef __CUDACC__
#define DSV4_HD __host__ __device__
#else
#define DSV4_HD
#endif

static inline DSV4_HD float dsv4_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline DSV4_HD float dsv4_bf16_to_f32(uint16_t h)
{
    return dsv4_f32_from_bits((uint32_t)h << 16);
}

static inline DSV4_HD float dsv4_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return dsv4_f32_from_bits(sign | 0x7f800000u | (man << 13)); /* inf/nan */
    if (exp == 0) {                                                               /* subnormal */
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    return dsv4_f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

/* e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; max 448; S.1111.111 is NaN. */
static inline DSV4_HD float dsv4_e4m3_to_f32(uint8_t b)
{
    uint32_t exp = (b >> 3) & 0xf, man = b & 7;
    float v;
    if (exp == 0xf && man == 7) return NAN;
    if (exp == 0)
        v = ldexpf((float)man, -9); /* subnormal: man/8 * 2^-6 */
    else
        v = ldexpf((float)(8 + man), (int)exp - 10);
    return (b & 0x80) ? -v : v;
}

/* ue8m0: 2^(s-127); 0xff is NaN. 2^-127 is a subnormal f32, still exact. */
static inline DSV4_HD float dsv4_e8m0_to_f32(uint8_t s)
{
    return s == 0xff ? NAN : ldexpf(1.0f, (int)s - 127);
}

/* e2m1: 1 sign, 2 exponent (bias 1), 1 mantissa: 0, .5, 1, 1.5, 2, 3, 4, 6 and negatives. */
static inline DSV4_HD float dsv4_e2m1_to_f32(uint8_t nibble)
{
    const int exp = (nibble >> 1) & 3, man = nibble & 1;
    const float v = exp == 0 ? 0.5f * (float)man : ldexpf(1.0f + 0.5f * (float)man, exp - 1);
    return (nibble & 8) ? -v : v;
}

#endif
