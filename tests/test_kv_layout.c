/*
 * test_kv_layout.c - the attention cache's serving layout (src/backend/kv_layout.h, .c) on the
 * CPU: the sizes of dsv4-model.md (584 B an entry at hd 512, r 64), pages whose rows never
 * overlap, every e4m3 code through dsv4_e4m3_bits_exact, and the round trip: an entry stores
 * act_quant (quant_sim.c, itself checked against torch by test_quant_sim) of its non-RoPE dims
 * and bf16 of its RoPE dims, bit for bit, and stores an act_quant-ed row's values unchanged (the
 * bytes may differ: a block whose amax rounded down to 224 s is stored with the scale s / 2).
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

static void test_sizes(void)
{
    const dsv4_kv_layout a = dsv4_kv_layout_of(512, 64), b = dsv4_kv_layout_of(64, 16);
    CHECK(a.nope == 448 && a.nblk == 7 && a.data_bytes == 576 && a.scale_bytes == 8);
    CHECK(dsv4_kv_entry_bytes(&a) == 584);
    CHECK(b.nope == 48 && b.nblk == 1 && b.data_bytes == 80 && b.scale_bytes == 8);
    CHECK(dsv4_kv_bytes(&a, 1) == 64 * 584 && dsv4_kv_bytes(&a, 65) == 128 * 584);
    const int hds[3][2] = {{512, 64}, {64, 16}, {192, 62}};
    for (int k = 0; k < 3; k++) { /* rows of 200 entries: aligned, disjoint, inside the buffer */
        const dsv4_kv_layout l = dsv4_kv_layout_of(hds[k][0], hds[k][1]);
        const int64_t n = 200, bytes = dsv4_kv_bytes(&l, n);
        unsigned char *used = calloc((size_t)bytes, 1);
        int bad = 0;
        for (int64_t e = 0; e < n; e++) {
            const int64_t d = dsv4_kv_data_off(&l, e), s = dsv4_kv_scale_off(&l, e);
            bad +=
                d % 16 != 0 || s % 8 != 0 || d + l.data_bytes > bytes || s + l.scale_bytes > bytes;
            for (int i = 0; i < l.data_bytes && d + i < bytes; i++) bad += used[d + i]++ != 0;
            for (int i = 0; i < l.scale_bytes && s + i < bytes; i++) bad += used[s + i]++ != 0;
        }
        CHECK_MSG(bad == 0, "layout hd %d r %d: %d misplaced or overlapping bytes", l.hd, l.r, bad);
        free(used);
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

int main(void)
{
    test_sizes();
    test_e4m3_codes();
    test_round_trip(512, 64, 1);
    test_round_trip(64, 16, 2);
    test_round_trip(192, 62, 3);
    test_fill(512, 64);
    test_fill(64, 16);
    return test_finish();
}
