/*
 * kv_layout.h - the serving layout of the caches: every window key and every compressed entry of
 * the main attention (one vector of hd dims, keys and values alike, its last r dims rotated by
 * RoPE), and every key of the lightning indexer. dsv4-model.md, "Sizes": 584 B an attention entry
 * at Flash/Pro shapes, against 1,024 B as bf16; 68 B an indexer key of 128 dims, against 256.
 *
 * In the faithful mode the hd - r non-RoPE dims are act_quant-ed in blocks of 64 before they are
 * cached (FP8 e4m3 with a power-of-two scale) and the RoPE dims are bf16, so storing the e4m3
 * bytes, one ue8m0 exponent a block and the RoPE dims as bf16 keeps every value exactly:
 *
 *   data row   [nope e4m3 bytes][r bf16 (2 r bytes)][zeros to a multiple of 16]   data_bytes
 *   scale row  [nblk ue8m0 bytes][zeros to a multiple of 8]                        scale_bytes
 *
 * The indexer's keys (fp4 = 1, dsv4_ik_layout_of) are Hadamard-rotated and FP4-rounded in blocks
 * of 32 (e2m1 with a power-of-two scale) before they are cached, so they keep every value as
 * e2m1 nibbles and one ue8m0 exponent a block (the model doc's 132 B FP8 key would hold them too,
 * at twice the bytes):
 *
 *   data row   [ceil(d / 2) bytes: dim 2 i in the low nibble of byte i][zeros to 16]  data_bytes
 *   scale row  [nblk ue8m0 bytes][zeros to a multiple of 4]                           scale_bytes
 *
 * Entries are numbered e = 0, 1, ... across a whole buffer (slot-major, as the callers index
 * them) and grouped in pages of DSV4_KV_PAGE: page e / 64 holds its 64 data rows, then their 64
 * scale rows. A data row is therefore 16-byte aligned (one bulk copy gathers it) and a buffer
 * of n entries takes dsv4_kv_bytes(l, n) = ceil(n / 64) pages. hd 512, r 64: 576 + 8 bytes; an
 * indexer key of 128 dims: 64 + 4.
 *
 * Storing quantises: dsv4_kv_encode rounds each block as act_quant does (scale
 * 2^ceil(log2(max(amax, 1e-4) / 448)), round_e4m3(x / s)), which keeps the values of an
 * act_quant-ed block (its amax gives a scale at most the original one, and x / s is then an e4m3
 * value times a power of two, itself e4m3; the bytes may differ). The decoded value is
 * e4m3(byte) * 2^(exp - 127), exact in f32 and in bf16. Indexer keys alike with fp4_act_quant's
 * rounding (bf16, then scale 2^ceil(log2(max(amax, 6 2^-126) / 6)), round_e2m1(x / s)), which
 * keeps an FP4-rounded block (a smaller amax lowers the scale by some 2^j with max |x / s| <=
 * 6 / 2^j, and such grid values times 2^j are on the grid); a block holding a NaN or an infinity
 * is stored with the scale byte 0xff (NaN in ue8m0) and decodes as NaNs: a key with one such
 * value scores NaN either way.
 */
#ifndef DSV4_BACKEND_KV_LAYOUT_H
#define DSV4_BACKEND_KV_LAYOUT_H

#include "core/float_formats.h"

#include <stdint.h>

enum {
    DSV4_KV_PAGE = 64,   /* entries a page */
    DSV4_KV_QBLOCK = 64, /* non-RoPE dims a scale */
    DSV4_IK_QBLOCK = 32  /* indexer key dims a scale */
};

typedef struct dsv4_kv_layout {
    int hd, r;       /* dims of an entry; the last r stay bf16 (0 for indexer keys) */
    int nope, nblk;  /* hd - r quantised dims in nblk blocks (the last may be shorter) */
    int fp4;         /* 0: FP8 blocks of 64 (the attention's); 1: e2m1 blocks of 32 (indexer) */
    int data_bytes;  /* a data row: nope + 2 r (FP4: ceil(hd / 2)), rounded up to 16 */
    int scale_bytes; /* a scale row: nblk, rounded up to 8 (FP4: 4) */
} dsv4_kv_layout;

/* The layout of attention entries of hd dims with r RoPE dims (0 <= r <= hd; callers check). */
static inline DSV4_HD dsv4_kv_layout dsv4_kv_layout_of(int hd, int r)
{
    dsv4_kv_layout l;
    l.hd = hd;
    l.r = r;
    l.nope = hd - r;
    l.nblk = (l.nope + DSV4_KV_QBLOCK - 1) / DSV4_KV_QBLOCK;
    l.fp4 = 0;
    l.data_bytes = (l.nope + 2 * r + 15) & ~15;
    l.scale_bytes = (l.nblk + 7) & ~7;
    return l;
}

/* The layout of indexer keys of d dims (d >= 1; callers check): 68 bytes at d 128. */
static inline DSV4_HD dsv4_kv_layout dsv4_ik_layout_of(int d)
{
    dsv4_kv_layout l;
    l.hd = d;
    l.r = 0;
    l.nope = d;
    l.nblk = (d + DSV4_IK_QBLOCK - 1) / DSV4_IK_QBLOCK;
    l.fp4 = 1;
    l.data_bytes = ((d + 1) / 2 + 15) & ~15;
    l.scale_bytes = (l.nblk + 3) & ~3;
    return l;
}

/* Bytes an entry takes (584 at hd 512, r 64; 68 for an indexer key of 128 dims). */
static inline DSV4_HD int dsv4_kv_entry_bytes(const dsv4_kv_layout *l)
{
    return l->data_bytes + l->scale_bytes;
}

/* Bytes of a buffer of n entries (whole pages). */
static inline DSV4_HD int64_t dsv4_kv_bytes(const dsv4_kv_layout *l, int64_t n)
{
    return (n + DSV4_KV_PAGE - 1) / DSV4_KV_PAGE * DSV4_KV_PAGE * dsv4_kv_entry_bytes(l);
}

/* Byte offsets of entry e's data row and scale row. */
static inline DSV4_HD int64_t dsv4_kv_data_off(const dsv4_kv_layout *l, int64_t e)
{
    return (e / DSV4_KV_PAGE) * DSV4_KV_PAGE * dsv4_kv_entry_bytes(l) +
           (e % DSV4_KV_PAGE) * l->data_bytes;
}

static inline DSV4_HD int64_t dsv4_kv_scale_off(const dsv4_kv_layout *l, int64_t e)
{
    return (e / DSV4_KV_PAGE) * DSV4_KV_PAGE * dsv4_kv_entry_bytes(l) +
           DSV4_KV_PAGE * l->data_bytes + (e % DSV4_KV_PAGE) * l->scale_bytes;
}

/* The e4m3fn bits of x, which must be an e4m3 value (|x| <= 448, at most 3 significant bits
 * below its leading one, not below 2^-9) or a NaN (0x7f, whatever its sign and payload, so that
 * every device stores the same byte): exact, no rounding. */
static inline DSV4_HD uint8_t dsv4_e4m3_bits_exact(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7f;
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    const int e = (int)((u >> 23) & 0xff) - 127; /* x = 1.m * 2^e when normal in e4m3 */
    if (e >= -6) return (uint8_t)(sign | (uint32_t)(e + 7) << 3 | ((u >> 20) & 7));
    if (e < -9) return sign; /* zero (and, outside the contract, anything below 2^-9) */
    /* subnormal e4m3: x = man * 2^-9, man in 1..7 */
    const uint32_t man = ((u & 0x7fffffu) | 0x800000u) >> (20 - 6 - e);
    return (uint8_t)(sign | man);
}

/* The e2m1 nibble (sign in bit 3) of q, which must be a value of the e2m1 grid {0, .5, 1, 1.5, 2,
 * 3, 4, 6} or its negative: exact, no rounding. */
static inline DSV4_HD uint8_t dsv4_e2m1_code_exact(float q)
{
    uint32_t u;
    memcpy(&u, &q, sizeof u);
    const uint32_t a = u & 0x7fffffffu, sign = (u >> 28) & 8u;
    /* from 1 on, the exponent and the top mantissa bit: 1 -> 2, 1.5 -> 3, ..., 6 -> 7 */
    const uint32_t mag = a >= 0x3f800000u ? (a >> 22) - 252u : (a == 0x3f000000u ? 1u : 0u);
    return (uint8_t)(sign | mag);
}

#ifdef __cplusplus
extern "C" {
#endif
/* Host: entry e of the buffer at base <- x [hd] (f32): the non-RoPE dims act_quant-ed in blocks
 * of 64 (an act_quant-ed x is kept exactly), the RoPE dims rounded to bf16; an indexer key
 * (l->fp4) fp4_act_quant-ed in blocks of 32 (an FP4-rounded x is kept exactly). kv_layout.c */
void dsv4_kv_encode(const dsv4_kv_layout *l, uint8_t *base, int64_t e, const float *x);
/* Host: x [hd] <- entry e (f32, exact). */
void dsv4_kv_decode(const dsv4_kv_layout *l, const uint8_t *base, int64_t e, float *x);
#ifdef __cplusplus
}
#endif
/* splitmix64's finaliser (the backends' fills hash (seed, index) with it). */
static inline DSV4_HD uint64_t dsv4_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The value dsv4_bk_fill_bf16 writes at index i (every backend computes it with these integer
 * operations; CUDA kernels too): a bf16 in (-1, 1) with 2^-8 <= |v|. */
static inline DSV4_HD uint16_t dsv4_fill_bf16_bits(uint64_t seed, uint64_t i)
{
    const uint64_t z = dsv4_mix64(seed + (i + 1) * 0x9e3779b97f4a7c15ull);
    const uint16_t sign = (uint16_t)(z >> 63) << 15, exp = (uint16_t)(126 - ((z >> 56) & 7));
    return (uint16_t)(sign | exp << 7 | (uint16_t)(z & 0x7f));
}

/* Byte i of a buffer of valid random entries (dsv4_bk_fill_kv): e4m3 bytes other than NaN,
 * exponents 2^-9 .. 2^-6 (so |values| < 7, as normalised
 * keys), RoPE dims as dsv4_fill_bf16_bits, zero padding; indexer keys: any e2m1 nibbles (zero
 * past d), exponents 2^-5 .. 2^-2. The same function of (seed, i) on every backend. */
static inline DSV4_HD uint8_t dsv4_fill_kv_byte(const dsv4_kv_layout *l, uint64_t seed, int64_t i)
{
    const int64_t page_bytes = (int64_t)DSV4_KV_PAGE * dsv4_kv_entry_bytes(l);
    const int64_t in = i % page_bytes, rows = (int64_t)DSV4_KV_PAGE * l->data_bytes;
    const uint64_t z = dsv4_mix64(seed + ((uint64_t)i + 1) * 0x9e3779b97f4a7c15ull);
    if (in >= rows) { /* a scale row */
        const int c = (int)((in - rows) % l->scale_bytes);
        return c < l->nblk ? (uint8_t)((l->fp4 ? 125 : 121) - (z & 3)) : 0;
    }
    const int c = (int)(in % l->data_bytes);
    if (l->fp4) return 2 * c + 1 < l->hd ? (uint8_t)z : 2 * c < l->hd ? (uint8_t)(z & 15) : 0;
    if (c < l->nope) {
        const uint8_t v = (uint8_t)z;
        return (v & 0x7f) == 0x7f ? (uint8_t)(v - 1) : v;
    }
    if (c >= l->nope + 2 * l->r) return 0;
    /* a bf16 of the RoPE dims: both its bytes take the value of its first byte's index */
    const uint16_t bits = dsv4_fill_bf16_bits(seed, (uint64_t)(i - ((c - l->nope) & 1)));
    return (c - l->nope) & 1 ? (uint8_t)(bits >> 8) : (uint8_t)bits;
}

#endif
