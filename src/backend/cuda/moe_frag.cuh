/*
 * moe_frag.cuh - the tensor-core pieces of the CUDA MoE's stage kernels (moe_mma.cu), apart so
 * that a kernel of another shape can share them: the widening of MXFP4 / FP8 weight words into
 * f16 mma fragments (bit placement / the hardware conversion), the mma itself, and the
 * act_quant store of one 128-column block as e4m3 codes in the fragment orders (moe.cuh L4 /
 * L8).
 * Numerics in moe_mma.cu's header comment.
 */
#ifndef DSV4_CUDA_MOE_FRAG_CUH
#define DSV4_CUDA_MOE_FRAG_CUH

#include "backend/cuda/moe_numerics.cuh"

#include <cuda_fp16.h>
#include <stdint.h>

/* A 16-byte weight load through the read-only path, not kept in L1 (.L1::no_allocate), which
 * then holds the activations and scales that every task of the SM reads (moe_mma.cu's header;
 * bench/bench_gpu_access.cu times the same load). volatile: moe_mma.cu's loads are conditional
 * (c < hl) and keep the old value otherwise; as a plain asm the compiler took the load for
 * side-effect free and issued it unconditionally, reading past the matrix where a row ends
 * inside a chunk (compute-sanitizer, session 15). */
static __device__ __forceinline__ uint4 moe_ldw(const uint4 *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

static __device__ __forceinline__ uint32_t word4(const uint4 &q, int k)
{
    return k == 0 ? q.x : k == 1 ? q.y : k == 2 ? q.z : q.w;
}

/* ue8m0 -> f32 (2^(s - 127); 0 is the subnormal 2^-127, 0xff NaN), as dsv4_e8m0_to_f32. */
static __device__ __forceinline__ float e8m0f(uint32_t s)
{
    return s == 0     ? __uint_as_float(0x00400000u)
           : s == 255 ? __uint_as_float(0x7fc00000u)
                      : __uint_as_float(s << 23);
}

/* w: 8 e2m1 nibbles (nibble n = column n) -> p[i] = f16 pair (column i, column i + 4), each
 * e2m1 * 2^-14 exactly (magnitude bits to f16 bits 9..11, sign to 15). The even nibbles (low
 * nibble of each byte) and the odd ones are first made f16 high bytes (sign at bit 7, magnitude
 * at 1..3) in place, be and bo; a pair is then two of those bytes moved to bits 8..15 and
 * 24..31 (one byte permute or mask): 11 operations a word instead of 4 a pair. */
static __device__ __forceinline__ void fp4_pairs(uint32_t w, uint32_t (&p)[4])
{
    const uint32_t be = ((w << 1) & 0x0E0E0E0Eu) | ((w << 4) & 0x80808080u);
    const uint32_t bo = ((w >> 3) & 0x0E0E0E0Eu) | (w & 0x80808080u);
    p[0] = __byte_perm(be, 0u, 0x2404); /* bytes 0, 2: nibbles 0, 4 */
    p[1] = __byte_perm(bo, 0u, 0x2404); /* nibbles 1, 5 */
    p[2] = be & 0xFF00FF00u;            /* bytes 1, 3: nibbles 2, 6 */
    p[3] = bo & 0xFF00FF00u;            /* nibbles 3, 7 */
}

/* w: 4 e4m3 bytes (byte n = column n) -> p[0] = f16 pair (column 0, 1), p[1] = (2, 3), each
 * the e4m3 value exactly (every e4m3 value is an f16 one; NaN stays NaN): the hardware
 * conversion, one instruction a pair (F2FP.F16.E4M3.UNPACK_B) where the bit placement took 3. */
static __device__ __forceinline__ void fp8_pairs(uint32_t w, uint32_t (&p)[2])
{
    asm("{\n.reg .b16 lo, hi;\nmov.b32 {lo, hi}, %2;\ncvt.rn.f16x2.e4m3x2 %0, lo;\n"
        "cvt.rn.f16x2.e4m3x2 %1, hi;\n}\n"
        : "=r"(p[0]), "=r"(p[1])
        : "r"(w));
}

/* c [16 x 8] += a [16 x 16] . b [16 x 8]: f16 inputs, f32 accumulation. a0 (row g, k 2t..),
 * a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..); b0 (k 2t.., n g), b1 (2t + 8..). */
static __device__ __forceinline__ void mma_f16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                               uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ uint32_t f16_code(float q)
{
    return (uint32_t)__half_as_ushort(__float2half_rn(q));
}

/* act_quant of one 128-column block by one warp: lane holds columns 4 lane .. 4 lane + 3 as
 * bf16 values v (zeros where !on). Stores the e4m3 codes v / s as f16 at d4 (L4 order) and / or
 * d8 (L8: column order), each the block's first column (NULL: not wanted; uniform over the warp);
 * returns s. */
static __device__ __forceinline__ float quant_store(const float (&v)[4], bool on, uint16_t *d4,
                                                    uint16_t *d8, int lane)
{
    float m = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
    for (int d = 16; d > 0; d >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, d));
    const float s = q_scale_fp8(m);
    uint32_t h[4];
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = f16_code(q_e4m3(__fdiv_rn(v[i], s)));
    if (d8 && on) *(uint2 *)(d8 + 4 * lane) = make_uint2(h[0] | h[1] << 16, h[2] | h[3] << 16);
    if (d4) {
        /* an 8-column run is split over lanes 2j (columns 0..3) and 2j + 1 (4..7): L4 wants
         * 0 4 1 5 from the even lane and 2 6 3 7 from the odd one */
        const int odd = lane & 1;
        const uint32_t r0 = __shfl_xor_sync(0xffffffffu, odd ? h[0] : h[2], 1);
        const uint32_t r1 = __shfl_xor_sync(0xffffffffu, odd ? h[1] : h[3], 1);
        const uint2 o = odd ? make_uint2(r0 | h[2] << 16, r1 | h[3] << 16)
                            : make_uint2(h[0] | r0 << 16, h[1] | r1 << 16);
        if (on) *(uint2 *)(d4 + 8 * (lane >> 1) + 4 * odd) = o;
    }
    return s;
}

#endif
