/*
 * kv_dev.cuh - the device side of the caches' serving layout (backend/kv_layout.h): storing an
 * attention entry or an indexer key from an f32 row (the CPU's dsv4_kv_encode bit for bit) and
 * expanding the stored bytes to the bf16 the attention's and the indexer's mma read
 * (dsv4_kv_decode's values, exactly).
 */
#ifndef DSV4_CUDA_KV_DEV_CUH
#define DSV4_CUDA_KV_DEV_CUH

#include "backend/cuda/quant_dev.cuh"
#include "backend/kv_layout.h"

#include <cstdint>

/* One warp: a block of len <= 64 non-RoPE dims of an entry, in (shared or global memory) ->
 * act_quant's values (bf16, then e4m3 with the block's power-of-two scale: dev_warp_quant's) into
 * out (may be in; NULL: not kept), their e4m3 bytes into d [len] and the scale's exponent into
 * *sc: what dsv4_kv_encode stores for in (kv_layout.c). */
static __device__ void dev_kv_quant_block(const float *in, float *out, int len, uint8_t *d,
                                          uint8_t *sc)
{
    const int lane = threadIdx.x & 31;
    const float s = dev_warp_scale_fp8(in, len);
    for (int i = lane; i < len; i += 32) {
        const float q = dev_round_e4m3(__fdiv_rn(dev_round_bf16(in[i]), s));
        if (out) out[i] = __fmul_rn(q, s);
        d[i] = dsv4_e4m3_bits_exact(q);
    }
    if (lane == 0) *sc = (uint8_t)(__float_as_uint(s) >> 23);
}

/* The rest of an entry once its blocks are stored (dev_kv_quant_block): the RoPE dims x [nope,
 * hd) as bf16 and the zero padding of the data row d and the scale row sc. By the whole CTA. */
static __device__ void dev_kv_store_tail(const dsv4_kv_layout &l, uint8_t *d, uint8_t *sc,
                                         const float *x)
{
    for (int i = threadIdx.x; i < l.scale_bytes - l.nblk; i += blockDim.x) sc[l.nblk + i] = 0;
    for (int i = threadIdx.x; i < l.r; i += blockDim.x) { /* bytewise: nope may be odd */
        const uint32_t h = __float_as_uint(dev_round_bf16(x[l.nope + i])) >> 16;
        d[l.nope + 2 * i] = (uint8_t)h;
        d[l.nope + 2 * i + 1] = (uint8_t)(h >> 8);
    }
    for (int i = l.nope + 2 * l.r + threadIdx.x; i < l.data_bytes; i += blockDim.x) d[i] = 0;
}

/* Entry e of the buffer at base <- x [l.hd] (f32, shared or global memory, complete before the
 * call): dsv4_kv_encode's bytes. By the whole CTA (blockDim.x a multiple of 32): a warp a block
 * of 64 non-RoPE dims, then the tail. Writes global memory only. */
static __device__ void dev_kv_store(const dsv4_kv_layout &l, uint8_t *base, int64_t e,
                                    const float *x)
{
    const int warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    uint8_t *d = base + dsv4_kv_data_off(&l, e), *sc = base + dsv4_kv_scale_off(&l, e);
    for (int b = warp; b < l.nblk; b += nw) {
        const int b0 = b * DSV4_KV_QBLOCK;
        const int len = l.nope - b0 < DSV4_KV_QBLOCK ? l.nope - b0 : DSV4_KV_QBLOCK;
        dev_kv_quant_block(x + b0, NULL, len, d + b0, sc + b);
    }
    dev_kv_store_tail(l, d, sc, x);
}

/* act_quant of an entry's non-RoPE dims x [nope] in place (shared memory) with the entry's
 * bytes stored as it goes (dev_kv_quant_block, a warp a block), then, after a CTA barrier, its
 * tail: one pass where quantising and then dev_kv_store would take two. The stored bytes may
 * differ from dev_kv_store's of the quantised x (a block whose amax rounds down to 224 s is
 * stored there with s / 2), the stored values never do. By the whole CTA. */
static __device__ void dev_kv_quant_store(const dsv4_kv_layout &l, uint8_t *base, int64_t e,
                                          float *x)
{
    const int warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    uint8_t *d = base + dsv4_kv_data_off(&l, e), *sc = base + dsv4_kv_scale_off(&l, e);
    for (int b = warp; b < l.nblk; b += nw) {
        const int b0 = b * DSV4_KV_QBLOCK;
        const int len = l.nope - b0 < DSV4_KV_QBLOCK ? l.nope - b0 : DSV4_KV_QBLOCK;
        dev_kv_quant_block(x + b0, x + b0, len, d + b0, sc + b);
    }
    __syncthreads();
    dev_kv_store_tail(l, d, sc, x);
}

/* The per-halfword addend that turns an e4m3 value's f16 bits (exponent and top mantissa bits
 * shifted down by 3) into the bf16 bits of that value times 2^(scale_byte - 127): the bf16
 * exponent is the f16 one + scale_byte - 127 - 15 + 127. In both halves. */
static __device__ __forceinline__ uint32_t dev_kv_adj2(uint32_t scale_byte)
{
    const uint32_t a = ((scale_byte - 15u) << 7) & 0xffffu;
    return a | a << 16;
}

/* Two e4m3 bytes (the low 16 bits of b2, first byte low) times the block scale as two bf16
 * (first low), exact: cvt to f16 (every e4m3 value is an f16 normal or zero), the f16's
 * exponent and 7 top mantissa bits moved to the bf16 places, the exponent rebased by adj2
 * (dev_kv_adj2) except on zeros, the signs kept. Not for NaN bytes (a valid cache has none). */
static __device__ __forceinline__ uint32_t dev_kv_bf16x2(uint32_t b2, uint32_t adj2)
{
    uint32_t h;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"((unsigned short)(b2 & 0xffffu)));
    const uint32_t mag = (h >> 3) & 0x0fff0fffu;
    return __vadd2(mag, adj2 & __vcmpne2(mag, 0u)) | (h & 0x80008000u);
}

/* ---- indexer keys (l.fp4) ------------------------------------------------------------------ */

/* Entry e of an indexer-key buffer (layout l, l.fp4) <- x [l.hd] (f32, shared or global memory,
 * complete before the call): dsv4_kv_encode's bytes (kv_layout.c ik_encode). By the whole CTA
 * (blockDim.x a multiple of 32): a warp a block of 32 dims, a lane a dim, even lanes storing
 * their byte; then the padding. Writes global memory only. */
static __device__ void dev_ik_store(const dsv4_kv_layout &l, uint8_t *base, int64_t e,
                                    const float *x)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    uint8_t *d = base + dsv4_kv_data_off(&l, e), *sc = base + dsv4_kv_scale_off(&l, e);
    for (int b = warp; b < l.nblk; b += nw) { /* warp-uniform */
        const int k = b * DSV4_IK_QBLOCK + lane;
        const float v = k < l.hd ? dev_round_bf16(x[k]) : 0.0f;
        float mx = fabsf(v);
        if (!(mx > 0.0f)) mx = 0.0f; /* NaN skipped, as fp4_act_quant's amax */
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const bool nan_blk = !__all_sync(0xffffffffu, isfinite(v));
        const float s = nan_blk ? 1.0f : dev_scale_fp4(mx);
        const uint32_t c = nan_blk ? 0u : dsv4_e2m1_code_exact(dev_round_e2m1(__fdiv_rn(v, s)));
        const uint32_t hi = __shfl_down_sync(0xffffffffu, c, 1);
        if (k < l.hd && !(lane & 1)) d[k >> 1] = (uint8_t)(c | hi << 4);
        if (lane == 0) sc[b] = nan_blk ? (uint8_t)0xff : (uint8_t)(__float_as_uint(s) >> 23);
    }
    for (int i = (l.hd + 1) / 2 + threadIdx.x; i < l.data_bytes; i += blockDim.x) d[i] = 0;
    for (int i = l.nblk + threadIdx.x; i < l.scale_bytes; i += blockDim.x) sc[i] = 0;
}

/* Four dims of an indexer key, the low 16 bits of n (dim j in bits 4 j ..), as bf16 pairs (x:
 * dims 0, 1; y: dims 2, 3; the lower dim in the low half) times 2^(s - 127), s the block's scale
 * byte: exactly dsv4_kv_decode's values. The magnitudes' bf16 bits come from two byte tables by
 * prmt (high bytes 00 3f 3f 3f 40 40 40 40, low bytes 00 00 80 c0 00 40 80 c0: 0, .5, 1, 1.5, 2,
 * 3, 4, 6), the signs are ORed in and one bf16x2 multiply a pair applies the scale (exact: a
 * normal result for 2 <= s <= 254; at s 254 a 6 overflows to infinity as the f32 product does);
 * other s through f32 (s 255: NaN). */
static __device__ __forceinline__ uint2 dev_ik_bf16x4(uint32_t n, uint32_t s)
{
    uint32_t p0, p1;
    if (s - 2u <= 252u) {
        const uint32_t s2 = s << 7 | s << 23, sel = n & 0x7777u;
        uint32_t hb, lb;
        asm("prmt.b32 %0, %1, %2, %3;" : "=r"(hb) : "r"(0x3f3f3f00u), "r"(0x40404040u), "r"(sel));
        asm("prmt.b32 %0, %1, %2, %3;" : "=r"(lb) : "r"(0xc0800000u), "r"(0xc0804000u), "r"(sel));
        asm("prmt.b32 %0, %1, %2, 0x5140;" : "=r"(p0) : "r"(lb), "r"(hb));
        asm("prmt.b32 %0, %1, %2, 0x7362;" : "=r"(p1) : "r"(lb), "r"(hb));
        p0 |= (n << 12 & 0x8000u) | (n << 24 & 0x80000000u);
        p1 |= (n << 4 & 0x8000u) | (n << 16 & 0x80000000u);
        asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(p0) : "r"(p0), "r"(s2));
        asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(p1) : "r"(p1), "r"(s2));
    } else {
        const float sc = dsv4_e8m0_to_f32((uint8_t)s);
        uint32_t w[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            w[j] = __float_as_uint(dsv4_e2m1_to_f32((uint8_t)(n >> (4 * j) & 15u)) * sc) >> 16;
        p0 = w[0] | w[1] << 16;
        p1 = w[2] | w[3] << 16;
    }
    return make_uint2(p0, p1);
}

#endif
