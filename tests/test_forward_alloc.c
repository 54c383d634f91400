/*
 * test_forward_alloc.c - "no allocation inside the decode step" (docs/style.md), measured: this
 * binary is linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,
 * --wrap=aligned_alloc (tests/CMakeLists.txt), so every call to those from libdsv4 and from
 * this file goes through the counters below (libc's own internal allocations do not, which is
 * what we want: the count is dsv4's). After a warm-up (prefill, one decode step, one MTP draft)
 * it checks that one-token decode steps, in both numeric modes, and eval + MTP draft cycles,
 * perform zero allocations while the session's history has room (session.c, reserve: the
 * history grows by doubling, so only the steps that cross a capacity allocate; the test prints
 * that count too).
 *
 * usage: test_forward_alloc MODEL_DIR [MTP_MODEL_DIR]
 */
#include "dsv4.h"
#include "model/session.h"
#include "test_util.h"

#include <stdatomic.h>
#include <stdint.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
int __wrap_posix_memalign(void **p, size_t align, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);

static atomic_llong n_allocs; /* calls of any of the five, from any thread */

void *__wrap_malloc(size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    atomic_fetch_add(&n_allocs, 1);
    return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return __real_realloc(p, n);
}

int __wrap_posix_memalign(void **p, size_t align, size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return __real_posix_memalign(p, align, n);
}

void *__wrap_aligned_alloc(size_t align, size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return __real_aligned_alloc(align, n);
}

static long long allocs(void)
{
    return (long long)atomic_load(&n_allocs);
}

static int V;

static dsv4_session *open_session(dsv4_model *m, dsv4_numeric_mode mode)
{
    dsv4_session_options o;
    dsv4_session_options_default(&o);
    o.mode = mode;
    o.n_threads = 2; /* a pool with helpers: their allocations count too */
    dsv4_session *s = NULL;
    dsv4_status st = dsv4_session_create(m, &o, &s);
    CHECK_MSG(st == DSV4_OK, "session_create: %s", dsv4_last_error());
    return s;
}

static int32_t tok(int64_t i)
{
    return (int32_t)((i * 7919 + 13) % V);
}

/* Prefill P tokens, one decode step to warm up, then decode steps while the history has room:
 * zero allocations expected. Then decode across the next capacity and report the count. */
static void decode_steps(dsv4_model *m, dsv4_numeric_mode mode, const char *name)
{
    dsv4_session *s = open_session(m, mode);
    if (!s) return;
    float *logits = malloc((size_t)V * sizeof *logits);
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = tok(i);
    CHECK(dsv4_session_eval(s, ids, 40, logits, 0) == DSV4_OK);
    int32_t t = tok(40);
    CHECK(dsv4_session_eval(s, &t, 1, logits, 0) == DSV4_OK); /* warm-up step */

    const int64_t room = s->cap - s->pos;
    CHECK_MSG(room >= 8, "%s: the history has room for %lld more tokens only", name,
              (long long)room);
    const long long a0 = allocs();
    int ok = 1;
    for (int64_t i = 0; i < room; i++) {
        t = tok(s->pos);
        ok &= dsv4_session_eval(s, &t, 1, logits, 0) == DSV4_OK;
    }
    const long long steady = allocs() - a0;
    CHECK(ok);
    CHECK_MSG(steady == 0, "%s: %lld allocations in %lld one-token decode steps", name, steady,
              (long long)room);
    printf("%s: %lld allocations in %lld one-token decode steps (positions %lld..%lld)\n", name,
           steady, (long long)room, (long long)(s->pos - room), (long long)s->pos);

    /* the step that crosses the capacity grows the history and the workspace, once */
    const long long a1 = allocs();
    const int64_t cap0 = s->cap;
    t = tok(s->pos);
    CHECK(dsv4_session_eval(s, &t, 1, logits, 0) == DSV4_OK);
    const long long crossing = allocs() - a1;
    printf("%s: the step past capacity %lld (to %lld) made %lld allocations\n", name,
           (long long)cap0, (long long)s->cap, crossing);
    CHECK(s->cap > cap0);
    /* and so the counter does see libdsv4's calls (a zero above is not an unwrapped build's) */
    CHECK_MSG(crossing > 0,
              "%s: no allocation counted when the history grew: is the allocator "
              "wrapped (-Wl,--wrap=malloc)?",
              name);
    free(logits);
    dsv4_session_close(s);
}

/* Eval + MTP draft cycles, as speculative decoding runs them. */
static void mtp_cycles(dsv4_model *m)
{
    dsv4_session *s = open_session(m, DSV4_MODE_EXACT);
    if (!s) return;
    float *logits = malloc((size_t)V * sizeof *logits), *q = malloc((size_t)V * sizeof *q);
    int32_t ids[20];
    for (int i = 0; i < 20; i++) ids[i] = tok(i);
    CHECK(dsv4_session_eval(s, ids, 20, logits, 0) == DSV4_OK);
    CHECK(dsv4_session_mtp_draft(s, tok(20), q) == DSV4_OK); /* catches up 20 positions */
    int32_t t = tok(20);
    CHECK(dsv4_session_eval(s, &t, 1, logits, 0) == DSV4_OK);
    CHECK(dsv4_session_mtp_draft(s, tok(21), q) == DSV4_OK); /* warm-up cycle */

    const int64_t cycles = s->cap - s->pos;
    CHECK(cycles >= 8);
    const long long a0 = allocs();
    int ok = 1;
    for (int64_t i = 0; i < cycles; i++) {
        t = tok(s->pos);
        ok &= dsv4_session_eval(s, &t, 1, logits, 0) == DSV4_OK;
        ok &= dsv4_session_mtp_draft(s, tok(s->pos), q) == DSV4_OK;
    }
    const long long steady = allocs() - a0;
    CHECK(ok);
    CHECK_MSG(steady == 0, "MTP: %lld allocations in %lld eval + draft cycles", steady,
              (long long)cycles);
    printf("MTP: %lld allocations in %lld eval + draft cycles\n", steady, (long long)cycles);
    free(logits);
    free(q);
    dsv4_session_close(s);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_forward_alloc MODEL_DIR [MTP_MODEL_DIR]\n");
        return 2;
    }
    for (int k = 1; k < argc; k++) {
        dsv4_model *m = NULL;
        dsv4_status st = dsv4_model_open(argv[k], &m);
        CHECK_MSG(st == DSV4_OK, "open %s: %s", argv[k], dsv4_last_error());
        if (st != DSV4_OK) continue;
        V = dsv4_model_vocab_size(m);
        printf("%s\n", argv[k]);
        decode_steps(m, DSV4_MODE_EXACT, "exact");
        decode_steps(m, DSV4_MODE_FAITHFUL, "faithful");
        if (dsv4_model_num_mtp(m) > 0) mtp_cycles(m);
        dsv4_model_close(m);
    }
    return test_finish();
}
