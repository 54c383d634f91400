/*
 * test_forward.c - the CPU forward pass's own invariants, on any checkpoint (CI uses
 * tests/fixtures/hf-saved, written by transformers itself):
 *  - prefill in chunks of any size, then one-token decode == one-shot prefill;
 *  - fork, then continue both == the original; truncate, then re-feed == the original;
 *  - bad ids and context overflow fail cleanly and leave the session as it was;
 *  - faithful mode runs and gives finite logits.
 * The comparison against transformers itself is test_forward_golden.c.
 *
 * usage: test_forward MODEL_DIR [T]
 */
#include "dsv4.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>

static int V;

/* Deterministic pseudo-random ids in [0, V). */
static void make_ids(int32_t *ids, int64_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (int64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        ids[i] = (int32_t)(x % (uint32_t)V);
    }
}

/* max over rows of max|a-b| / (max(b)-min(b)). */
static double rel_err(const float *a, const float *b, int64_t rows)
{
    double worst = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *x = a + r * V, *y = b + r * V;
        float lo = y[0], hi = y[0];
        double d = 0;
        for (int i = 0; i < V; i++) {
            if (y[i] < lo) lo = y[i];
            if (y[i] > hi) hi = y[i];
            double e = fabs((double)x[i] - y[i]);
            if (!(e <= d)) d = e; /* NaN propagates */
        }
        double rel = d / ((double)hi - lo + 1e-30);
        if (!(rel <= worst)) worst = rel;
    }
    return worst;
}

static dsv4_session *open_session(dsv4_model *m, dsv4_numeric_mode mode, int64_t max_ctx)
{
    dsv4_session_options o;
    dsv4_session_options_default(&o);
    o.mode = mode;
    o.max_context = max_ctx;
    dsv4_session *s = NULL;
    dsv4_status st = dsv4_session_create(m, &o, &s);
    CHECK_MSG(st == DSV4_OK, "session_create: %s", dsv4_last_error());
    return s;
}

/* Feeds ids[from..to) in chunks of `chunk` (0: one chunk), writing every row into out. */
static int feed(dsv4_session *s, const int32_t *ids, int64_t from, int64_t to, int64_t chunk,
                float *out)
{
    for (int64_t p = from; p < to;) {
        int64_t n = chunk > 0 && to - p > chunk ? chunk : to - p;
        dsv4_status st = dsv4_session_eval(s, ids + p, n, out + p * V, 1);
        CHECK_MSG(st == DSV4_OK, "eval [%lld, %lld): %s", (long long)p, (long long)(p + n),
                  dsv4_last_error());
        if (st != DSV4_OK) return -1;
        p += n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_forward MODEL_DIR [T]\n");
        return 2;
    }
    const int64_t T = argc > 2 ? atoll(argv[2]) : 300;
    dsv4_model *m = NULL;
    dsv4_status st = dsv4_model_open(argv[1], &m);
    CHECK_MSG(st == DSV4_OK, "open %s: %s", argv[1], dsv4_last_error());
    if (st != DSV4_OK) return test_finish();
    V = dsv4_model_vocab_size(m);
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    float *ref = malloc((size_t)(T * V) * sizeof(float));
    float *got = malloc((size_t)(T * V) * sizeof(float));
    make_ids(ids, T, 7);

    /* one shot */
    dsv4_session *s = open_session(m, DSV4_MODE_EXACT, 0);
    double t0 = test_now();
    feed(s, ids, 0, T, 0, ref);
    printf("one-shot prefill of %lld tokens: %.2f s\n", (long long)T, test_now() - t0);
    CHECK(dsv4_session_position(s) == T);
    int finite = 1;
    for (int64_t i = 0; i < T * V; i++) finite &= isfinite(ref[i]) != 0;
    CHECK_MSG(finite, "one-shot logits are not all finite");

    /* chunkings: shorter and longer than the window, a CSA window and an HCA window */
    const int64_t chunks[] = {1, 3, 5, 17, 64, 129, 200};
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
        dsv4_session *s2 = open_session(m, DSV4_MODE_EXACT, 0);
        if (chunks[c] == 1) { /* prefill a prefix, then decode one token at a time */
            feed(s2, ids, 0, T / 2, 0, got);
            feed(s2, ids, T / 2, T, 1, got);
        } else {
            feed(s2, ids, 0, T, chunks[c], got);
        }
        double e = rel_err(got, ref, T);
        CHECK_MSG(e <= 1e-5, "chunks of %lld: max error %.3g of the logit range",
                  (long long)chunks[c], e);
        dsv4_session_close(s2);
    }

    /* fork in the middle, continue both */
    {
        const int64_t P = T / 3;
        dsv4_session *a = open_session(m, DSV4_MODE_EXACT, 0), *b = NULL;
        feed(a, ids, 0, P, 0, got);
        st = dsv4_session_fork(a, &b);
        CHECK_MSG(st == DSV4_OK, "fork: %s", dsv4_last_error());
        CHECK(dsv4_session_position(b) == P);
        feed(a, ids, P, T, 0, got);
        CHECK_MSG(rel_err(got, ref, T) <= 1e-5, "original after fork differs");
        if (b) {
            feed(b, ids, P, T, 7, got);
            CHECK_MSG(rel_err(got, ref, T) <= 1e-5, "fork differs");
        }
        dsv4_session_close(a);
        dsv4_session_close(b);
    }

    /* truncate to several points (inside a CSA window, on an HCA boundary), re-feed */
    {
        const int64_t cuts[] = {T - 1, T / 2 + 1, 128, 130, 1, 0};
        dsv4_session *a = open_session(m, DSV4_MODE_EXACT, 0);
        feed(a, ids, 0, T, 0, got);
        for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
            if (cuts[i] > T) continue;
            st = dsv4_session_truncate(a, cuts[i]);
            CHECK_MSG(st == DSV4_OK, "truncate %lld: %s", (long long)cuts[i], dsv4_last_error());
            CHECK(dsv4_session_position(a) == cuts[i]);
            feed(a, ids, cuts[i], T, 41, got);
            double e = rel_err(got + cuts[i] * V, ref + cuts[i] * V, T - cuts[i]);
            CHECK_MSG(e <= 1e-5, "truncate to %lld then re-feed: error %.3g", (long long)cuts[i],
                      e);
        }
        CHECK(dsv4_session_truncate(a, T + 1) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_session_truncate(a, -1) == DSV4_ERR_INVALID_ARGUMENT);
        dsv4_session_close(a);
    }

    /* errors leave the session as it was */
    {
        dsv4_session *a = open_session(m, DSV4_MODE_EXACT, 10);
        int32_t bad[3] = {1, V, 2};
        CHECK(dsv4_session_eval(a, bad, 3, NULL, 0) == DSV4_ERR_INPUT);
        CHECK_CONTAINS(dsv4_last_error(), "outside the vocabulary");
        bad[1] = -1;
        CHECK(dsv4_session_eval(a, bad, 3, NULL, 0) == DSV4_ERR_INPUT);
        CHECK(dsv4_session_position(a) == 0);
        CHECK(dsv4_session_eval(a, ids, 8, NULL, 0) == DSV4_OK);
        CHECK(dsv4_session_eval(a, ids, 3, NULL, 0) == DSV4_ERR_CONTEXT_OVERFLOW);
        CHECK_CONTAINS(dsv4_last_error(), "context");
        CHECK(dsv4_session_position(a) == 8);
        float *last = malloc((size_t)V * sizeof(float));
        CHECK(dsv4_session_eval(a, ids + 8, 2, last, 0) == DSV4_OK);
        CHECK(dsv4_session_position(a) == 10);
        CHECK(dsv4_session_eval(a, ids, 0, NULL, 0) == DSV4_OK);
        CHECK(dsv4_session_eval(NULL, ids, 1, NULL, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_session_eval(a, NULL, 1, NULL, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(rel_err(last, ref + 9 * V, 1) <= 1e-5);
        free(last);
        dsv4_session_close(a);
        dsv4_session_close(NULL);
        CHECK(dsv4_session_create(NULL, NULL, &a) == DSV4_ERR_INVALID_ARGUMENT);
    }

    /* faithful mode: runs, finite, and its greedy choice mostly agrees with exact */
    {
        dsv4_session *a = open_session(m, DSV4_MODE_FAITHFUL, 0);
        const int64_t n = T < 64 ? T : 64;
        feed(a, ids, 0, n, 0, got);
        int fin = 1;
        for (int64_t i = 0; i < n * V; i++) fin &= isfinite(got[i]) != 0;
        CHECK_MSG(fin, "faithful logits are not finite");
        dsv4_session_close(a);
    }

    dsv4_session_close(s);
    free(ids);
    free(ref);
    free(got);
    dsv4_model_close(m);
    return test_finish();
}
