/*
 * test_kv_layout.c - the caches' serving layout (src/backend/kv_layout.h, .c) on the CPU, both
 * formats. Attention entries: the sizes of dsv4-model.md (584 B an entry at hd 512, r 64), pages
 * whose rows never overlap, every e4m3 code through dsv4_e4m3_bits_exact, and the round trip: an
 * entry stores act_quant (quant_sim.c, itself checked against torch by test_quant_sim) of its
 * non-RoPE dims and bf16 of its RoPE dims, bit for bit, and stores an act_quant-ed row's values
 * unchanged (the bytes may differ: a block whose amax rounded down to 224 s is stored with the
 * scale s / 2). Indexer keys (fp4, dsv4_ik_layout_of): 68 B at 128 dims, the same page checks,
 * every e2m1 nibble at scales down to 2^-126 (signed zeros and f32 subnormals included), the
 * round trip against fp4_act_quant (quant_sim.c) and its idempotence, NaN blocks for non-finite
 * inputs, and dsv4_fill_kv_byte's keys.
 */
#include "backend/kv_layout.h"
#include "model/quant_sim.h"

#include "test_util.h"

#include <math.h>
#include <stdlib.h>

static int same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Rows of 200 entries of layout l: data rows 16-aligned, scale rows 8-aligned (4 for fp4),
 * disjoint and inside the buffer. */
static void check_pages(const dsv4_kv_layout *l)
{
    const int64_t n = 200, bytes = dsv4_kv_bytes(l, n), salign = l->fp4 ? 4 : 8;
    unsigned char *used = calloc((size_t)bytes, 1);
    int bad = 0;
    for (int64_t e = 0; e < n; e++) {
        const int64_t d = dsv4_kv_data_off(l, e), s = dsv4_kv_scale_off(l, e);
        bad += d % 16 != 0 || s % salign != 0 || d + l->data_bytes > bytes ||
               s + l->scale_bytes > bytes;
        for (int i = 0; i < l->data_bytes && d + i < bytes; i++) bad += used[d + i]++ != 0;
        for (int i = 0; i < l->scale_bytes && s + i < bytes; i++) bad += used[s + i]++ != 0;
    }
    CHECK_MSG(bad == 0, "layout hd %d r %d fp4 %d: %d misplaced or overlapping bytes", l->hd, l->r,
              l->fp4, bad);
    free(used);
}

static void test_sizes(void)
{
    const dsv4_kv_layout a = dsv4_kv_layout_of(512, 64), b = dsv4_kv_layout_of(64, 16);
    CHECK(a.nope == 448 && a.nblk == 7 && a.data_bytes == 576 && a.scale_bytes == 8);
    CHECK(dsv4_kv_entry_bytes(&a) == 584);
    CHECK(b.nope == 48 && b.nblk == 1 && b.data_bytes == 80 && b.scale_bytes == 8);
    CHECK(dsv4_kv_bytes(&a, 1) == 64 * 584 && dsv4_kv_bytes(&a, 65) == 128 * 584);
    const int hds[3][2] = {{512, 64}, {64, 16}, {192, 62}};
    for (int k = 0; k < 3; k++) {
        const dsv4_kv_layout l = dsv4_kv_layout_of(hds[k][0], hds[k][1]);
        CHECK(l.fp4 == 0);
        check_pages(&l);
    }
    /* indexer keys: ceil(d / 2) nibble bytes to 16, ceil(d / 32) exponents to 4 */
    const dsv4_kv_layout ik = dsv4_ik_layout_of(128);
    CHECK(ik.fp4 == 1 && ik.hd == 128 && ik.r == 0 && ik.nope == 128 && ik.nblk == 4);
    CHECK(ik.data_bytes == 64 && ik.scale_bytes == 4 && dsv4_kv_entry_bytes(&ik) == 68);
    CHECK(dsv4_kv_bytes(&ik, 1) == 64 * 68 && dsv4_kv_bytes(&ik, 65) == 128 * 68);
    /* d, nblk, data_bytes, scale_bytes */
    const int iks[6][4] = {{128, 4, 64, 4}, {64, 2, 32, 4}, {32, 1, 16, 4},
                           {16, 1, 16, 4},  {80, 3, 48, 4}, {33, 2, 32, 4}};
    for (int k = 0; k < 6; k++) {
        const dsv4_kv_layout l = dsv4_ik_layout_of(iks[k][0]);
        CHECK_MSG(
            l.fp4 == 1 && l.hd == iks[k][0] && l.r == 0 && l.nope == iks[k][0] &&
                l.nblk == iks[k][1] && l.data_bytes == iks[k][2] && l.scale_bytes == iks[k][3] &&
                dsv4_kv_entry_bytes(&l) == iks[k][2] + iks[k][3],
            "ik layout d %d: nblk %d data %d scale %d", l.hd, l.nblk, l.data_bytes, l.scale_bytes);
        check_pages(&l);
    }
}

static void test_e4m3_codes(void)
{
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) continue; /* NaN */
        bad += dsv4_e4m3_bits_exact(dsv4_e4m3_to_f32((uint8_t)c)) != c;
    }
    CHECK_MSG(bad == 0, "%d e4m3 codes do not survive dsv4_e4m3_bits_exact", bad);
    CHECK(dsv4_e4m3_bits_exact(NAN) == 0x7f && dsv4_e4m3_bits_exact(-NAN) == 0x7f);
}

/* Rows of hd values at several magnitudes (tiny amax below the 1e-4 floor, zero blocks, large):
 * the stored values are act_quant's, and storing those again changes no value. */
static void test_round_trip(int hd, int r, unsigned long long seed)
{
    const dsv4_kv_layout l = dsv4_kv_layout_of(hd, r);
    const int n = 48;
    uint8_t *buf = calloc((size_t)dsv4_kv_bytes(&l, n), 1);
    uint8_t *again = calloc((size_t)dsv4_kv_bytes(&l, n), 1);
    float *x = malloc((size_t)hd * 4), *want = malloc((size_t)hd * 4),
          *got = malloc((size_t)hd * 4);
    float *got2 = malloc((size_t)hd * 4);
    static const float mags[6] = {1.0f, 1e-7f, 3e-5f, 40.0f, 1e4f, 0.0f};
    int bad = 0, again_bad = 0;
    for (int e = 0; e < n; e++) {
        const float mag = mags[e % 6];
        for (int i = 0; i < hd; i++) {
            const double u = test_unit(&seed) * 2.0 - 1.0;
            x[i] = (float)(u * u * u) * mag * (e % 7 == 3 && i < 64 ? 0.0f : 1.0f);
        }
        memcpy(want, x, (size_t)hd * 4);
        dsv4_sim_act_quant(want, l.nope, DSV4_KV_QBLOCK);
        dsv4_sim_bf16(want + l.nope, r);
        dsv4_kv_encode(&l, buf, e, x);
        dsv4_kv_decode(&l, buf, e, got);
        for (int i = 0; i < hd; i++) bad += !same_bits(got[i], want[i]);
        dsv4_kv_encode(&l, again, e, got);
        dsv4_kv_decode(&l, again, e, got2);
        for (int i = 0; i < hd; i++) again_bad += !same_bits(got2[i], got[i]);
    }
    printf("kv_layout hd %d r %d: %d values differ from act_quant / bf16, %d change when "
           "stored again (bounds 0)\n",
           hd, r, bad, again_bad);
    CHECK(bad == 0);
    CHECK(again_bad == 0);
    free(buf), free(again), free(x), free(want), free(got), free(got2);
}

/* dsv4_fill_kv_byte: finite values of at most 7 (448 2^-6), zero padding. */
static void test_fill(int hd, int r)
{
    const dsv4_kv_layout l = dsv4_kv_layout_of(hd, r);
    const int64_t n = 130, bytes = dsv4_kv_bytes(&l, n);
    uint8_t *p = malloc((size_t)bytes);
    for (int64_t i = 0; i < bytes; i++) p[i] = dsv4_fill_kv_byte(&l, 5, i);
    float *x = malloc((size_t)hd * 4);
    int bad = 0;
    for (int64_t e = 0; e < n; e++) {
        dsv4_kv_decode(&l, p, e, x);
        for (int i = 0; i < hd; i++) bad += !isfinite(x[i]) || fabsf(x[i]) > 7.0f;
        const uint8_t *d = p + dsv4_kv_data_off(&l, e), *s = p + dsv4_kv_scale_off(&l, e);
        for (int i = l.nope + 2 * r; i < l.data_bytes; i++) bad += d[i] != 0;
        for (int i = l.nblk; i < l.scale_bytes; i++) bad += s[i] != 0;
    }
    CHECK_MSG(bad == 0, "fill hd %d r %d: %d bad values or padding bytes", hd, r, bad);
    free(p), free(x);
}

/* The biased exponent of the power of two sc (the ue8m0 byte that decodes to it). */
static uint8_t e8m0_of(float sc)
{
    uint32_t u;
    memcpy(&u, &sc, sizeof u);
    return (uint8_t)(u >> 23);
}

/* Nibble i of an fp4 data row (dim 2 i' in the low nibble of byte i'). */
static uint8_t nibble_at(const uint8_t *d, int i)
{
    return (uint8_t)(d[i / 2] >> (4 * (i & 1)) & 15);
}

/* Every e2m1 nibble at several scales 2^k, down to 2^-126 (scale byte 1: 0.5 2^-126 is an f32
 * subnormal) and up to 2^125: a key of those values, each block holding all 16 codes twice (so
 * its amax is 6 2^k), is stored as those nibbles with the scale dsv4_scale_fp4(6 2^k) and comes
 * back bit for bit, -0.0 included. */
static void test_e2m1_codes(void)
{
    const dsv4_kv_layout l = dsv4_ik_layout_of(128);
    static const int ks[8] = {-126, -125, -100, -10, 0, 3, 100, 125};
    uint8_t *buf = malloc((size_t)dsv4_kv_bytes(&l, 2));
    float x[128], got[128];
    int bad_val = 0, bad_nib = 0, bad_scale = 0, bad_dec = 0;
    for (int t = 0; t < 8; t += 4) {
        memset(buf, 0xa5, (size_t)dsv4_kv_bytes(&l, 2));
        for (int b = 0; b < 4; b++) /* block b at scale 2^ks[t + b] */
            for (int i = 0; i < 32; i++)
                x[32 * b + i] = ldexpf(dsv4_e2m1_to_f32((uint8_t)(i & 15)), ks[t + b]);
        const int64_t e = t / 4; /* entries 0 and 1 of the page */
        dsv4_kv_encode(&l, buf, e, x);
        dsv4_kv_decode(&l, buf, e, got);
        const uint8_t *d = buf + dsv4_kv_data_off(&l, e), *s = buf + dsv4_kv_scale_off(&l, e);
        for (int i = 0; i < 128; i++) {
            bad_val += !same_bits(got[i], x[i]);
            bad_nib += nibble_at(d, i) != (i & 15);
        }
        for (int b = 0; b < 4; b++) {
            const float sc = dsv4_scale_fp4(ldexpf(6.0f, ks[t + b]));
            bad_scale += sc != ldexpf(1.0f, ks[t + b]) || s[b] != e8m0_of(sc);
        }
        /* decoding alone: nibble c under scale byte sb is e2m1(c) * 2^(sb - 127) */
        for (int i = 0; i < 128; i++)
            bad_dec += !same_bits(got[i], dsv4_e2m1_to_f32(nibble_at(d, i)) *
                                              dsv4_e8m0_to_f32(s[i / DSV4_IK_QBLOCK]));
    }
    CHECK(same_bits(ldexpf(dsv4_e2m1_to_f32(1), -126), 0x1p-127f)); /* a subnormal is tested */
    CHECK_MSG(bad_val == 0, "%d e2m1 values do not survive the fp4 layout", bad_val);
    CHECK_MSG(bad_nib == 0, "%d nibbles are not the e2m1 codes of their values", bad_nib);
    CHECK_MSG(bad_scale == 0, "%d scale bytes are not dsv4_scale_fp4's exponents", bad_scale);
    CHECK_MSG(bad_dec == 0, "%d decoded values are not e2m1(nibble) * ue8m0(scale)", bad_dec);
    free(buf);
}

/* Indexer keys of d dims at several magnitudes (tiny values below the 6 2^-126 floor, a zero
 * block, large), as f32 or (bf16_in) as bf16 values like the rotated keys the callers store: the
 * stored values are fp4_act_quant's (blocks of 32), bit for bit, storing them again changes no
 * value, and the padding (nibbles past d, exponents past nblk) is zero. */
static void test_ik_round_trip(int d, int bf16_in, unsigned long long seed)
{
    const dsv4_kv_layout l = dsv4_ik_layout_of(d);
    const int n = 70; /* two pages */
    const int64_t bytes = dsv4_kv_bytes(&l, n);
    uint8_t *buf = malloc((size_t)bytes), *again = malloc((size_t)bytes);
    memset(buf, 0xa5, (size_t)bytes);
    memset(again, 0x5a, (size_t)bytes);
    float *x = malloc((size_t)d * 4), *want = malloc((size_t)d * 4), *got = malloc((size_t)d * 4);
    float *got2 = malloc((size_t)d * 4);
    static const float mags[7] = {1.0f, 1e-39f, 1e-36f, 3e-5f, 40.0f, 1e30f, 0.0f};
    int bad = 0, again_bad = 0, pad_bad = 0, first = -1;
    for (int e = 0; e < n; e++) {
        const float mag = mags[e % 7];
        for (int i = 0; i < d; i++) {
            const double u = test_unit(&seed) * 2.0 - 1.0;
            x[i] = (float)(u * u * u) * mag * (e % 5 == 2 && i >= 32 && i < 64 ? 0.0f : 1.0f);
        }
        if (bf16_in) dsv4_sim_bf16(x, d);
        memcpy(want, x, (size_t)d * 4);
        dsv4_sim_fp4_act_quant(want, d, DSV4_IK_QBLOCK);
        dsv4_kv_encode(&l, buf, e, x);
        dsv4_kv_decode(&l, buf, e, got);
        for (int i = 0; i < d; i++) {
            const int diff = !same_bits(got[i], want[i]);
            if (diff && first < 0) {
                first = e;
                fprintf(stderr,
                        "ik d %d bf16 %d entry %d dim %d: x %a, fp4_act_quant %a, stored %a\n", d,
                        bf16_in, e, i, (double)x[i], (double)want[i], (double)got[i]);
            }
            bad += diff;
        }
        dsv4_kv_encode(&l, again, e, got);
        dsv4_kv_decode(&l, again, e, got2);
        for (int i = 0; i < d; i++) again_bad += !same_bits(got2[i], got[i]);
        const uint8_t *dr = buf + dsv4_kv_data_off(&l, e), *sr = buf + dsv4_kv_scale_off(&l, e);
        for (int i = d; i < 2 * l.data_bytes; i++) pad_bad += nibble_at(dr, i) != 0;
        for (int i = l.nblk; i < l.scale_bytes; i++) pad_bad += sr[i] != 0;
    }
    printf("kv_layout ik d %d %s rows: %d values differ from fp4_act_quant, %d change when "
           "stored again, %d padding nibbles or bytes not zero (bounds 0)\n",
           d, bf16_in ? "bf16" : "f32", bad, again_bad, pad_bad);
    CHECK(bad == 0);
    CHECK(again_bad == 0);
    CHECK(pad_bad == 0);
    free(buf), free(again), free(x), free(want), free(got), free(got2);
}

/* A key with a NaN in block 1 and an infinity in block 2 (and one with -inf in block 0 and -NaN
 * in block 3): those blocks are stored with the scale byte 0xff and decode as NaNs; the other
 * blocks are fp4_act_quant's. */
static void test_ik_nonfinite(void)
{
    const dsv4_kv_layout l = dsv4_ik_layout_of(128);
    uint8_t *buf = malloc((size_t)dsv4_kv_bytes(&l, 2));
    float x[128], want[128], got[128];
    unsigned long long seed = 9;
    for (int t = 0; t < 2; t++) {
        for (int i = 0; i < 128; i++) x[i] = (float)(test_unit(&seed) * 4.0 - 2.0);
        dsv4_sim_bf16(x, 128); /* bf16 values (as stored keys are): only the non-finite differ */
        if (t == 0) {
            x[32 + 5] = NAN, x[64 + 31] = INFINITY;
        } else {
            x[0] = -INFINITY, x[96] = -NAN;
        }
        memcpy(want, x, sizeof x);
        for (int b = 0; b < 4; b++) /* the finite blocks alone (quant_sim asserts on infinities) */
            if (t == 0 ? b == 0 || b == 3 : b == 1 || b == 2)
                dsv4_sim_fp4_act_quant(want + 32 * b, 32, DSV4_IK_QBLOCK);
        dsv4_kv_encode(&l, buf, t, x);
        dsv4_kv_decode(&l, buf, t, got);
        const uint8_t *s = buf + dsv4_kv_scale_off(&l, t);
        int bad_nan = 0, bad_val = 0, bad_scale = 0;
        for (int b = 0; b < 4; b++) {
            const int nonfin = t == 0 ? b == 1 || b == 2 : b == 0 || b == 3;
            bad_scale += nonfin ? s[b] != 0xff : s[b] == 0xff;
            for (int i = 32 * b; i < 32 * b + 32; i++) {
                if (nonfin)
                    bad_nan += !isnan(got[i]);
                else
                    bad_val += !same_bits(got[i], want[i]);
            }
        }
        CHECK_MSG(bad_nan == 0, "key %d: %d values of non-finite blocks are not NaN", t, bad_nan);
        CHECK_MSG(bad_val == 0, "key %d: %d values of finite blocks differ from fp4_act_quant", t,
                  bad_val);
        CHECK_MSG(bad_scale == 0, "key %d: scale bytes %02x %02x %02x %02x", t, s[0], s[1], s[2],
                  s[3]);
    }
    free(buf);
}

/* dsv4_fill_kv_byte for indexer keys: finite values of at most 6 * 2^(125 - 127), exponents
 * 122 .. 125, zero padding (nibbles past d, exponents past nblk). */
static void test_ik_fill(int dim)
{
    const dsv4_kv_layout l = dsv4_ik_layout_of(dim);
    const int64_t n = 130, bytes = dsv4_kv_bytes(&l, n);
    const float bound = dsv4_e2m1_to_f32(7) * dsv4_e8m0_to_f32(125);
    uint8_t *p = malloc((size_t)bytes);
    for (int64_t i = 0; i < bytes; i++) p[i] = dsv4_fill_kv_byte(&l, 5, i);
    float *x = malloc((size_t)dim * 4);
    int bad = 0;
    for (int64_t e = 0; e < n; e++) {
        dsv4_kv_decode(&l, p, e, x);
        for (int i = 0; i < dim; i++) bad += !isfinite(x[i]) || fabsf(x[i]) > bound;
        const uint8_t *d = p + dsv4_kv_data_off(&l, e), *s = p + dsv4_kv_scale_off(&l, e);
        for (int i = dim; i < 2 * l.data_bytes; i++) bad += nibble_at(d, i) != 0;
        for (int b = 0; b < l.nblk; b++) bad += s[b] < 122 || s[b] > 125;
        for (int i = l.nblk; i < l.scale_bytes; i++) bad += s[i] != 0;
    }
    CHECK_MSG(bad == 0, "ik fill d %d: %d bad values, scales or padding", dim, bad);
    free(p), free(x);
}

int main(void)
{
    test_sizes();
    test_e4m3_codes();
    test_round_trip(512, 64, 1);
    test_round_trip(64, 16, 2);
    test_round_trip(192, 62, 3);
    test_fill(512, 64);
    test_fill(64, 16);
    test_e2m1_codes();
    for (int bf16_in = 0; bf16_in < 2; bf16_in++) {
        test_ik_round_trip(128, bf16_in, 4);
        test_ik_round_trip(80, bf16_in, 5);
        test_ik_round_trip(33, bf16_in, 6);
    }
    test_ik_fill(128);
    test_ik_fill(33);
    test_ik_nonfinite();
    return test_finish();
}
