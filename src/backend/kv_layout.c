/*
 * kv_layout.c - the host's encoding and decoding of one cache entry in the serving layout
 * (kv_layout.h): an attention entry or an indexer key; the CPU backend's stores, attention and
 * indexer scores, and the tests' inputs.
 */
#include "backend/kv_layout.h"
#include "model/quant_sim.h"

/* An indexer key: fp4_act_quant's blocks of 32 as nibbles and exponents (kv_layout.h). */
static void ik_encode(const dsv4_kv_layout *l, uint8_t *d, uint8_t *s, const float *x)
{
    memset(d, 0, (size_t)l->data_bytes);
    memset(s, 0, (size_t)l->scale_bytes);
    for (int b = 0; b < l->nblk; b++) {
        const int b0 = b * DSV4_IK_QBLOCK;
        const int len = l->hd - b0 < DSV4_IK_QBLOCK ? l->hd - b0 : DSV4_IK_QBLOCK;
        float amax = 0.0f;
        int finite = 1;
        for (int i = 0; i < len; i++) {
            const float a = fabsf(dsv4_round_bf16(x[b0 + i]));
            if (a > amax) amax = a; /* NaN skipped, as fp4_act_quant's amax */
            finite = finite && isfinite(a);
        }
        if (!finite) { /* the block decodes as NaNs */
            s[b] = 0xff;
            continue;
        }
        const float sc = dsv4_scale_fp4(amax);
        uint32_t u;
        memcpy(&u, &sc, sizeof u);
        s[b] = (uint8_t)(u >> 23); /* a power of two, normal: its biased exponent */
        for (int i = 0; i < len; i++) {
            const int k = b0 + i;
            const float q = dsv4_round_e2m1(dsv4_round_bf16(x[k]) / sc);
            d[k / 2] |= (uint8_t)(dsv4_e2m1_code_exact(q) << (4 * (k & 1)));
        }
    }
}

void dsv4_kv_encode(const dsv4_kv_layout *l, uint8_t *base, int64_t e, const float *x)
{
    uint8_t *d = base + dsv4_kv_data_off(l, e), *s = base + dsv4_kv_scale_off(l, e);
    if (l->fp4) {
        ik_encode(l, d, s, x);
        return;
    }
    for (int b = 0; b < l->nblk; b++) {
        const int b0 = b * DSV4_KV_QBLOCK;
        const int len = l->nope - b0 < DSV4_KV_QBLOCK ? l->nope - b0 : DSV4_KV_QBLOCK;
        float amax = 0.0f;
        for (int i = 0; i < len; i++) {
            const float a = fabsf(dsv4_round_bf16(x[b0 + i]));
            if (a > amax) amax = a; /* NaN skipped, as act_quant's amax */
        }
        const float sc = dsv4_scale_fp8(amax);
        uint32_t u;
        memcpy(&u, &sc, sizeof u);
        s[b] = (uint8_t)(u >> 23); /* a power of two, normal: its biased exponent */
        for (int i = 0; i < len; i++)
            d[b0 + i] = dsv4_e4m3_bits_exact(dsv4_round_e4m3(dsv4_round_bf16(x[b0 + i]) / sc));
    }
    for (int i = l->nblk; i < l->scale_bytes; i++) s[i] = 0;
    for (int i = 0; i < l->r; i++) {
        const uint16_t h = dsv4_bf16_bits(x[l->nope + i]);
        d[l->nope + 2 * i] = (uint8_t)h;
        d[l->nope + 2 * i + 1] = (uint8_t)(h >> 8);
    }
    for (int i = l->nope + 2 * l->r; i < l->data_bytes; i++) d[i] = 0;
}

void dsv4_kv_decode(const dsv4_kv_layout *l, const uint8_t *base, int64_t e, float *x)
{
    const uint8_t *d = base + dsv4_kv_data_off(l, e), *s = base + dsv4_kv_scale_off(l, e);
    if (l->fp4) {
        for (int i = 0; i < l->hd; i++)
            x[i] = dsv4_e2m1_to_f32((uint8_t)(d[i / 2] >> (4 * (i & 1)) & 15)) *
                   dsv4_e8m0_to_f32(s[i / DSV4_IK_QBLOCK]);
        return;
    }
    for (int i = 0; i < l->nope; i++)
        x[i] = dsv4_e4m3_to_f32(d[i]) * dsv4_e8m0_to_f32(s[i / DSV4_KV_QBLOCK]);
    for (int i = 0; i < l->r; i++)
        x[l->nope + i] = dsv4_bf16_to_f32(
            (uint16_t)(d[l->nope + 2 * i] | (uint16_t)d[l->nope + 2 * i + 1] << 8));
}
