/*
 * test_quant_sim.c - the faithful mode's roundings (src/model/quant_sim.c) against torch.
 *
 * usage: test_quant_sim FIXTURE_DIR   (tests/fixtures/rounding, made by
 * tools/make_rounding_golden.py on the GPU machine: torch's float8_e4m3fn and bf16 casts, e2m1 as
 * ml_dtypes casts it, and the official kernels' act_quant / fp4_act_quant / ue8m0 scales /
 * fast_hadamard_transform arithmetic written with torch ops). Every output is compared bit for
 * bit (memcmp of the f32s; a NaN matches any NaN, since NaN payloads differ between torch's CPU and
 * CUDA casts). Also checks, without the fixture, that the bit-level scale formula equals
 * 2^ceil(log2(max(amax, floor) / max)) computed exactly, around every power-of-two boundary.
 */
#include "model/quant_sim.h"

#include "test_util.h"

#include <math.h>
#include <stdint.h>

enum { NAME_LEN = 32 };

typedef struct record {
    char name[NAME_LEN + 1];
    int32_t param;
    int64_t n;
    const float *in, *out;
} record;

static int same_bits(float a, float b)
{
    if (isnan(a) && isnan(b)) return 1;
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Runs our implementation of record r into got[0..n). Returns 0 for an unknown name. */
static int compute(const record *r, float *got)
{
    int64_t n = r->n;
    int p = r->param;
    memcpy(got, r->in, (size_t)n * sizeof *got);
    const char *nm = r->name;
    if (!strcmp(nm, "e4m3") || !strcmp(nm, "e4m3_clamp") || !strcmp(nm, "e4m3_raw_over")) {
        for (int64_t i = 0; i < n; i++) got[i] = dsv4_round_e4m3(got[i]);
    } else if (!strcmp(nm, "e2m1") || !strcmp(nm, "e2m1_clamp")) {
        for (int64_t i = 0; i < n; i++) got[i] = dsv4_round_e2m1(got[i]);
    } else if (!strcmp(nm, "bf16")) {
        dsv4_sim_bf16(got, n);
    } else if (!strcmp(nm, "scale_fp8")) {
        for (int64_t i = 0; i < n; i++) got[i] = dsv4_scale_fp8(got[i]);
    } else if (!strcmp(nm, "scale_fp4")) {
        for (int64_t i = 0; i < n; i++) got[i] = dsv4_scale_fp4(got[i]);
    } else if (!strncmp(nm, "act_quant_call_", 15)) {
        dsv4_sim_act_quant(got, n, p);
    } else if (!strncmp(nm, "act_quant_b", 11) || !strncmp(nm, "fp8_blocks_", 11)) {
        dsv4_sim_fp8_blocks(got, n, p); /* rows are whole numbers of blocks: flat is the same */
    } else if (!strncmp(nm, "fp4_act_quant_call_", 19)) {
        dsv4_sim_fp4_act_quant(got, n, p);
    } else if (!strncmp(nm, "fp4_quant_b", 11) || !strncmp(nm, "fp4_blocks_", 11)) {
        dsv4_sim_fp4_blocks(got, n, p);
    } else if (!strncmp(nm, "hadamard_", 9)) {
        for (int64_t i = 0; i < n; i += p) dsv4_hadamard(got + i, p);
    } else if (!strcmp(nm, "rotate_activation_128")) {
        for (int64_t i = 0; i < n; i += p) dsv4_sim_rotate_activation(got + i, p);
    } else if (!strcmp(nm, "rotate_fp4_128")) {
        for (int64_t i = 0; i < n; i += p) {
            dsv4_sim_rotate_activation(got + i, p);
            dsv4_sim_fp4_act_quant(got + i, p, 32);
        }
    } else {
        return 0;
    }
    return 1;
}

static void check_record(const record *r, int *seen_e4m3_over)
{
    float *got = malloc((size_t)r->n * sizeof *got);
    if (!got) {
        CHECK_MSG(0, "out of memory for %s", r->name);
        return;
    }
    if (!compute(r, got)) {
        CHECK_MSG(0, "unknown fixture record %s (regenerated fixture, stale test?)", r->name);
        free(got);
        return;
    }
    if (!strcmp(r->name, "e4m3_raw_over")) {
        /* torch's raw cast turns |x| > 464 into NaN; the official code clamps to +-448 before it
         * casts (and CUDA's satfinite cast saturates), so ours must saturate. */
        int64_t nan_expected = 0, saturated = 0;
        for (int64_t i = 0; i < r->n; i++) {
            nan_expected += isnan(r->out[i]) ? 1 : 0;
            saturated += fabsf(got[i]) == 448.0f ? 1 : 0;
        }
        printf("%-26s %6lld values: torch raw cast NaN for %lld, ours saturates %lld\n", r->name,
               (long long)r->n, (long long)nan_expected, (long long)saturated);
        CHECK(nan_expected == r->n && saturated == r->n);
        *seen_e4m3_over = 1;
        free(got);
        return;
    }
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < r->n; i++) {
        if (!same_bits(got[i], r->out[i])) {
            if (first < 0) first = i;
            bad++;
        }
    }
    printf("%-26s %6lld values, %lld mismatches\n", r->name, (long long)r->n, (long long)bad);
    CHECK_MSG(bad == 0, "%s: %lld of %lld differ; first at %lld: in %.9g expected %.9g got %.9g",
              r->name, (long long)bad, (long long)r->n, (long long)first,
              first >= 0 ? (double)r->in[first] : 0.0, first >= 0 ? (double)r->out[first] : 0.0,
              first >= 0 ? (double)got[first] : 0.0);
    free(got);
}

static void check_fixture(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/rounding.bin", dir);
    size_t len = 0;
    char *buf = test_read_file(path, &len);
    CHECK_MSG(buf != NULL, "cannot read %s", path);
    if (!buf) return;
    CHECK(len >= 12 && memcmp(buf, "DSV4RND1", 8) == 0);
    uint32_t count = 0;
    if (len >= 12) memcpy(&count, buf + 8, sizeof count);
    size_t off = 12;
    int seen_over = 0, records = 0;
    for (uint32_t k = 0; k < count; k++) {
        record r;
        int32_t reserved;
        if (off + NAME_LEN + 16 > len) break;
        memcpy(r.name, buf + off, NAME_LEN);
        r.name[NAME_LEN] = '\0';
        memcpy(&r.param, buf + off + NAME_LEN, 4);
        memcpy(&reserved, buf + off + NAME_LEN + 4, 4);
        memcpy(&r.n, buf + off + NAME_LEN + 8, 8);
        off += NAME_LEN + 16;
        if (r.n < 0 || (uint64_t)r.n > (len - off) / 8) break;
        /* The floats start at a 4-byte multiple (12 + 48 per header + 8 per value): aligned. */
        r.in = (const float *)(const void *)(buf + off);
        r.out = r.in + r.n;
        off += (size_t)r.n * 8;
        (void)reserved;
        check_record(&r, &seen_over);
        records++;
    }
    CHECK_MSG(records == (int)count && off == len, "fixture truncated: %d of %u records", records,
              count);
    CHECK(records >= 20 && seen_over);
    free(buf);
}

/* ---- the scale formula around every boundary --------------------------------------------- */

/* 2^ceil(log2(max(amax, floor) / fmax)) in exact arithmetic: the smallest 2^j with
 * a <= fmax * 2^j, compared in double where fmax * 2^j is exact. */
static float exact_scale(float amax, float floor_, double fmax)
{
    double a = amax > floor_ ? amax : floor_;
    int j;
    (void)frexp(a / fmax, &j); /* a / fmax in [2^(j-1), 2^j), up to the division's rounding */
    j += 1;
    while (a <= ldexp(fmax, j - 1)) j--;
    while (a > ldexp(fmax, j)) j++;
    return (float)ldexp(1.0, j);
}

static void check_scale_boundaries(void)
{
    int64_t tried = 0, bad8 = 0, bad4 = 0;
    for (int k = -140; k <= 128; k++) {
        const float edges[3] = {(float)ldexp(448.0, k), (float)ldexp(6.0, k), (float)ldexp(1.0, k)};
        for (int e = 0; e < 3; e++) {
            float c = edges[e];
            if (!(c > 0.0f) || isinf(c)) continue;
            for (int d = 0; d < 256; d++) c = nextafterf(c, 0.0f);
            for (int d = 0; d < 512 && !isinf(c); d++, c = nextafterf(c, INFINITY)) {
                if (c > 1e36f) continue; /* amax / 6 * 2 stays finite in every format used */
                bad8 += dsv4_scale_fp8(c) != exact_scale(c, 1e-4f, 448.0) ? 1 : 0;
                bad4 += dsv4_scale_fp4(c) != exact_scale(c, 6.0f * 0x1p-126f, 6.0) ? 1 : 0;
                tried++;
            }
        }
    }
    /* and a sweep over the whole positive range */
    for (uint32_t u = 1; u < 0x7b000000u; u += 4099) {
        float c;
        memcpy(&c, &u, sizeof c);
        bad8 += dsv4_scale_fp8(c) != exact_scale(c, 1e-4f, 448.0) ? 1 : 0;
        bad4 += dsv4_scale_fp4(c) != exact_scale(c, 6.0f * 0x1p-126f, 6.0) ? 1 : 0;
        tried++;
    }
    printf("scale formula: %lld amax values, fp8 differs %lld, fp4 differs %lld\n",
           (long long)tried, (long long)bad8, (long long)bad4);
    CHECK(bad8 == 0 && bad4 == 0);
}

/* ---- small properties that need no fixture ----------------------------------------------- */

static void check_properties(void)
{
    /* every e4m3 value is a fixed point; NaN stays NaN; saturation; signed zero */
    int64_t bad = 0;
    for (int m = 0; m < 8; m++) {
        for (int e = 0; e < 16; e++) {
            if (e == 15 && m == 7) continue; /* the NaN code */
            float v = e == 0 ? (float)ldexp(m, -9) : (float)ldexp(8 + m, e - 7 - 3);
            bad += dsv4_round_e4m3(v) != v || dsv4_round_e4m3(-v) != -v;
        }
    }
    CHECK(bad == 0);
    CHECK(isnan(dsv4_round_e4m3(NAN)) && isnan(dsv4_round_e2m1(NAN)) &&
          isnan(dsv4_round_bf16(NAN)));
    CHECK(dsv4_round_e4m3(INFINITY) == 448.0f && dsv4_round_e4m3(-1e30f) == -448.0f);
    CHECK(dsv4_round_e2m1(INFINITY) == 6.0f && dsv4_round_e2m1(-7.0f) == -6.0f);
    CHECK(signbit(dsv4_round_e4m3(-1e-30f)) && signbit(dsv4_round_e2m1(-0.1f)));
    CHECK(dsv4_round_bf16(3.4e38f) == INFINITY);
    /* sim of a block twice is the identity on its own output */
    float x[100], y[100];
    for (int i = 0; i < 100; i++) x[i] = sinf((float)i * 0.37f) * (float)(1 + i % 7);
    memcpy(y, x, sizeof x);
    dsv4_sim_act_quant(x, 100, 64);
    memcpy(y, x, sizeof x);
    dsv4_sim_act_quant(y, 100, 64);
    CHECK(memcmp(x, y, sizeof x) == 0);
    /* H (H x) = x for the scaled transform, up to rounding */
    float h[128], h0[128];
    for (int i = 0; i < 128; i++) h[i] = h0[i] = cosf((float)i);
    dsv4_hadamard(h, 128);
    dsv4_hadamard(h, 128);
    float err = 0.0f;
    for (int i = 0; i < 128; i++) err = fmaxf(err, fabsf(h[i] - h0[i]));
    CHECK(err < 1e-5f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURE_DIR\n", argv[0]);
        return 2;
    }
    check_properties();
    check_scale_boundaries();
    check_fixture(argv[1]);
    return test_finish();
}
