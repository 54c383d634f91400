/*
 * test_sampler.c - the sampler and the stop-string matcher on hand-computable inputs: each
 * filter and penalty against the distribution its definition (include/dsv4.h) gives, the
 * seeded stream's reproducibility and its frequencies, parameter checks, and stop strings
 * split across pieces.
 */
#include "dsv4.h"
#include "generate/stop.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
        }                                                                                          \
    } while (0)

#define V 4

static dsv4_sampler *make(dsv4_sampler_params p)
{
    dsv4_sampler *s = NULL;
    dsv4_status st = dsv4_sampler_create(&p, V, &s);
    if (st != DSV4_OK) fprintf(stderr, "sampler_create: %s\n", dsv4_last_error());
    return s;
}

static dsv4_sampler_params defaults(void)
{
    dsv4_sampler_params p;
    dsv4_sampler_params_default(&p);
    return p;
}

/* probs of the sampler equal want[] (unnormalised weights) within 1e-6. */
static int probs_are(dsv4_sampler *s, const float *logits, const double *want)
{
    float got[V];
    if (dsv4_sampler_probs(s, logits, got) != DSV4_OK) return 0;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += want[i];
    int ok = 1;
    for (int i = 0; i < V; i++)
        if (fabs(got[i] - want[i] / sum) > 1e-6) {
            fprintf(stderr, "  p[%d] = %.7f, want %.7f\n", i, got[i], want[i] / sum);
            ok = 0;
        }
    return ok;
}

static void test_greedy_and_temperature(void)
{
    dsv4_sampler_params p = defaults();
    p.temperature = 0;
    dsv4_sampler *s = make(p);
    float l[V] = {1, 3, 2, 3};
    int32_t id = -1;
    CHECK(dsv4_sampler_sample(s, l, &id) == DSV4_OK && id == 1); /* first of the tie */
    CHECK(probs_are(s, l, (double[]){0, 1, 0, 0}));
    dsv4_sampler_close(s);

    float lg[V] = {0, logf(2), logf(4), -INFINITY};
    s = make(defaults()); /* T = 1: p = softmax(l) */
    CHECK(probs_are(s, lg, (double[]){1, 2, 4, 0}));
    dsv4_sampler_close(s);
    p = defaults();
    p.temperature = 2; /* softmax(l / 2): weights sqrt */
    s = make(p);
    CHECK(probs_are(s, lg, (double[]){1, sqrt(2), 2, 0}));
    dsv4_sampler_close(s);
}

static void test_filters(void)
{
    float lk[V] = {0, logf(2), logf(4), logf(3)};
    dsv4_sampler_params p = defaults();
    p.top_k = 2; /* keeps ids 2 and 3 */
    dsv4_sampler *s = make(p);
    CHECK(probs_are(s, lk, (double[]){0, 0, 4, 3}));
    dsv4_sampler_close(s);

    /* p = {.5, .25, .125, .125} */
    float lp[V] = {logf(.5f), logf(.25f), logf(.125f), logf(.125f)};
    p = defaults();
    p.top_p = 0.7f; /* .5 < .7 <= .75: two tokens */
    s = make(p);
    CHECK(probs_are(s, lp, (double[]){2, 1, 0, 0}));
    dsv4_sampler_close(s);
    p.top_p = 0.8f; /* .75 < .8 <= .875: three (the tie at .125 goes to the lower id) */
    s = make(p);
    CHECK(probs_are(s, lp, (double[]){4, 2, 1, 0}));
    dsv4_sampler_close(s);
    p.top_p = 0.4f; /* at least one */
    s = make(p);
    CHECK(probs_are(s, lp, (double[]){1, 0, 0, 0}));
    dsv4_sampler_close(s);

    p = defaults();
    p.min_p = 0.3f; /* threshold .15: {.5, .25} */
    s = make(p);
    CHECK(probs_are(s, lp, (double[]){2, 1, 0, 0}));
    dsv4_sampler_close(s);
    p.min_p = 0.2f; /* threshold .1: all */
    s = make(p);
    CHECK(probs_are(s, lp, (double[]){4, 2, 1, 1}));
    dsv4_sampler_close(s);

    /* top-k then top-p on the renormalised top-k: k = 3 -> {.5,.25,.125}/.875; top_p .6:
     * .571 < .6 -> two tokens */
    p = defaults();
    p.top_k = 3;
    p.top_p = 0.6f;
    s = make(p);
    CHECK(probs_are(s, lp, (double[]){2, 1, 0, 0}));
    dsv4_sampler_close(s);
    /* temperature before the filters: T = 0.5 squares the weights {4,2,1,1} -> {16,4,1,1}/22;
     * min_p .2 keeps p >= 16/22*.2 = .145: {16, 4} */
    p = defaults();
    p.temperature = 0.5f;
    p.min_p = 0.2f;
    s = make(p);
    CHECK(probs_are(s, lp, (double[]){16, 4, 0, 0}));
    dsv4_sampler_close(s);
}

static void test_penalties(void)
{
    float l[V] = {2, -1, 1, 0};
    dsv4_sampler_params p = defaults();
    p.repetition_penalty = 2;
    dsv4_sampler *s = make(p);
    CHECK(dsv4_sampler_accept(s, 0, 1) == DSV4_OK); /* prompt */
    CHECK(dsv4_sampler_accept(s, 1, 0) == DSV4_OK); /* generated */
    /* {2/2, -1*2, 1, 0} */
    CHECK(probs_are(s, l, (double[]){exp(1), exp(-2), exp(1), 1}));
    dsv4_sampler_close(s);

    p = defaults();
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    s = make(p);
    float l2[V] = {0, 0, 1, 1};
    dsv4_sampler_accept(s, 2, 0);
    dsv4_sampler_accept(s, 2, 0); /* generated twice: 1 - .5 - 2 * .25 = 0 */
    dsv4_sampler_accept(s, 3, 1); /* prompt only: presence/frequency ignore it */
    CHECK(probs_are(s, l2, (double[]){1, 1, 1, exp(1)}));
    dsv4_sampler_reset(s); /* forgets the history */
    CHECK(probs_are(s, l2, (double[]){1, 1, exp(1), exp(1)}));
    dsv4_sampler_close(s);

    /* greedy sees the penalties: the repeated maximum loses to the next one */
    p = defaults();
    p.temperature = 0;
    p.frequency_penalty = 1.5f;
    s = make(p);
    float l3[V] = {0, 2, 1, 0};
    int32_t id;
    dsv4_sampler_accept(s, 1, 0);
    CHECK(dsv4_sampler_sample(s, l3, &id) == DSV4_OK && id == 2);
    dsv4_sampler_close(s);
    CHECK(dsv4_sampler_accept(NULL, 0, 0) != DSV4_OK);
}

static void test_seeded(void)
{
    float l[V] = {0, logf(2), logf(4), logf(1)};
    dsv4_sampler_params p = defaults();
    p.seed = 42;
    dsv4_sampler *a = make(p), *b = make(p);
    p.seed = 43;
    dsv4_sampler *c = make(p);
    int same = 1, differ = 0, count[V] = {0};
    const int n = 40000;
    for (int i = 0; i < n; i++) {
        int32_t x, y, z;
        dsv4_sampler_sample(a, l, &x);
        dsv4_sampler_sample(b, l, &y);
        dsv4_sampler_sample(c, l, &z);
        same &= x == y;
        differ |= x != z;
        count[x]++;
    }
    CHECK(same);
    CHECK(differ);
    const double want[V] = {1 / 8.0, 2 / 8.0, 4 / 8.0, 1 / 8.0};
    for (int i = 0; i < V; i++) CHECK(fabs(count[i] / (double)n - want[i]) < 0.01);
    dsv4_sampler_close(a);
    dsv4_sampler_close(b);
    dsv4_sampler_close(c);
}

static void test_bad_params(void)
{
    dsv4_sampler *s = NULL;
    dsv4_sampler_params p;
    float bad[][2] = {{0, -1}, {1, 0}, {1, 1.5f}, {2, -0.1f}, {2, 1.1f}, {3, 0}, {0, NAN}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = defaults();
        float v = bad[i][1];
        switch ((int)bad[i][0]) {
        case 0:
            p.temperature = v;
            break;
        case 1:
            p.top_p = v;
            break;
        case 2:
            p.min_p = v;
            break;
        default:
            p.repetition_penalty = v;
            break;
        }
        CHECK(dsv4_sampler_create(&p, V, &s) == DSV4_ERR_INVALID_ARGUMENT && !s);
    }
    p = defaults();
    p.presence_penalty = INFINITY;
    CHECK(dsv4_sampler_create(&p, V, &s) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(strstr(dsv4_last_error(), "presence_penalty") != NULL);
    s = make(defaults());
    float nan_l[V] = {0, NAN, 0, 0};
    int32_t id;
    CHECK(dsv4_sampler_sample(s, nan_l, &id) == DSV4_ERR_INPUT);
    CHECK(dsv4_sampler_accept(s, V, 0) == DSV4_ERR_INVALID_ARGUMENT);
    dsv4_sampler_close(s);
}

/* Pushes pieces; returns the released text (concatenated) and the hit index. */
static int run_stop(const char *const *stops, size_t n_stop, const char *const *pieces, char *out,
                    size_t out_size)
{
    dsv4_stop_matcher m;
    int hit = -1;
    out[0] = 0;
    if (dsv4_stop_init(&m, stops, n_stop) != DSV4_OK) return -2;
    for (size_t i = 0; pieces[i] && hit < 0; i++) {
        const char *o;
        size_t ol;
        dsv4_stop_push(&m, pieces[i], strlen(pieces[i]), &o, &ol, &hit);
        strncat(out, o, out_size - strlen(out) - 1);
    }
    if (hit < 0) {
        const char *o;
        size_t ol;
        dsv4_stop_flush(&m, &o, &ol);
        strncat(out, o, out_size - strlen(out) - 1);
    }
    dsv4_stop_free(&m);
    return hit;
}

static void test_stop_strings(void)
{
    char out[256];
    const char *s1[] = {"abc"};
    CHECK(run_stop(s1, 1, (const char *[]){"xa", "b", "cdef", NULL}, out, sizeof out) == 0 &&
          !strcmp(out, "x"));
    CHECK(run_stop(s1, 1, (const char *[]){"xab", "d", NULL}, out, sizeof out) == -1 &&
          !strcmp(out, "xabd"));
    CHECK(run_stop(s1, 1, (const char *[]){"ab", NULL}, out, sizeof out) == -1 &&
          !strcmp(out, "ab")); /* released at the end */
    CHECK(run_stop(s1, 1, (const char *[]){"aabc", NULL}, out, sizeof out) == 0 &&
          !strcmp(out, "a"));
    const char *s2[] = {"world", "lo w"};
    CHECK(run_stop(s2, 2, (const char *[]){"hel", "lo", " wor", "ld", NULL}, out, sizeof out) ==
              1 &&
          !strcmp(out, "hel"));
    /* the held tail is released as soon as it cannot start a match */
    dsv4_stop_matcher m;
    const char *o;
    size_t ol;
    int hit;
    dsv4_stop_init(&m, s1, 1);
    dsv4_stop_push(&m, "zab", 3, &o, &ol, &hit);
    CHECK(ol == 1 && hit < 0);
    dsv4_stop_push(&m, "x", 1, &o, &ol, &hit);
    CHECK(ol == 3 && !memcmp(o, "abx", 3));
    dsv4_stop_free(&m);
    const char *empty[] = {""};
    CHECK(dsv4_stop_init(&m, empty, 1) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(!strcmp(dsv4_stop_reason_name(DSV4_STOP_USER_TURN), "user_turn"));
}

int main(void)
{
    test_greedy_and_temperature();
    test_filters();
    test_penalties();
    test_seeded();
    test_bad_params();
    test_stop_strings();
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
