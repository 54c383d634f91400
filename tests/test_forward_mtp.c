/*
 * test_forward_mtp.c - the MTP (multi-token prediction) block of the CPU forward pass
 * (dsv4_session_mtp_draft, src/model/forward_mtp.c).
 *
 * The oracle: transformers has no MTP module, so there is no HF golden. The reference is
 * tools/golden_check.py's mtp_forward, our float64 numpy transcription of the OFFICIAL
 * inference/model.py class MTPBlock (written from that code, not from our C), run on the
 * fixture tests/fixtures/mtp/: make_checkpoints' tiny-official checkpoint (hub layout, FP8 +
 * MXFP4, mtp.0.* included, 136-token sequence: longer than the sliding window of 8, closes
 * HCA windows) and mtp_golden.safetensors (regenerate with
 * `tools/golden_check.py --mtp-write tests/fixtures/mtp`, check with `--mtp`).
 *
 * Checks:
 *  - exact mode vs the golden: MTP logits at every position, after prefills of several lengths
 *    (one catch-up chunk) and then one-token decode steps; tolerance TOL of each row's logit
 *    range (float32 vs float64; the golden's smallest router margin, 1.5e-3, is far above
 *    float32 error, so no expert flips); the main logits too (the MTP must not disturb them);
 *  - the MTP state under truncate (speculative rejection) and fork, with the capture hook
 *    counting the positions each draft recomputes (only the ones it lacks);
 *  - faithful mode: finite, near the exact golden, and deterministic for the same state;
 *  - errors: a checkpoint without mtp.* (transformers-saved) is DSV4_ERR_UNSUPPORTED; empty
 *    session, bad token.
 *
 * usage: test_forward_mtp MTP_FIXTURE_DIR NO_MTP_MODEL_DIR
 */
#include "dsv4.h"
#include "io/safetensors.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>

static const double TOL = 1e-4; /* of the logit range of the row, exact mode */
/* Faithful mode (bf16 activations, FP8/FP4 activation quantisation) has no golden of its own;
 * on this tiny random model the main pass is itself ~0.3 of the range from exact, the MTP
 * ~0.19, so this is only a sanity bound (a broken faithful MTP gives O(1)). */
static const double TOL_FAITHFUL = 0.5;

static int V;
static int64_t N;              /* golden tokens */
static int32_t *tokens;        /* [N] */
static const float *gold_mtp;  /* [N-1, V]: row t = logits for token t+2 */
static const float *gold_main; /* [N, V] */
static int64_t mtp_rows;       /* rows the last draft computed (capture of "mtp.embed") */

static void count_rows(void *user, const char *name, const float *data, int64_t rows, int64_t width)
{
    (void)user, (void)data, (void)width;
    if (!strcmp(name, "mtp.embed")) mtp_rows += rows;
}

/* max|a-b| / (max(b)-min(b)) over one row (NaN: +inf). */
static double row_err(const float *a, const float *b)
{
    float lo = b[0], hi = b[0];
    double d = 0;
    for (int i = 0; i < V; i++) {
        if (b[i] < lo) lo = b[i];
        if (b[i] > hi) hi = b[i];
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
    }
    return d / ((double)hi - lo + 1e-30);
}

static dsv4_session *open_session(dsv4_model *m, dsv4_numeric_mode mode)
{
    dsv4_session_options o;
    dsv4_session_options_default(&o);
    o.mode = mode;
    o.n_threads = 2;
    dsv4_session *s = NULL;
    dsv4_status st = dsv4_session_create(m, &o, &s);
    CHECK_MSG(st == DSV4_OK, "session_create: %s", dsv4_last_error());
    if (s) dsv4_session_set_capture(s, count_rows, NULL);
    return s;
}

/* Drafts with the token at position P = session position and returns the error of the MTP
 * logits against golden row P-1; *rows: positions the draft computed. */
static double draft_err(dsv4_session *s, float *q, int64_t *rows)
{
    const int64_t P = dsv4_session_position(s);
    mtp_rows = 0;
    dsv4_status st = dsv4_session_mtp_draft(s, tokens[P], q);
    CHECK_MSG(st == DSV4_OK, "draft at %lld: %s", (long long)P, dsv4_last_error());
    if (rows) *rows = mtp_rows;
    return st == DSV4_OK ? row_err(q, gold_mtp + (P - 1) * V) : INFINITY;
}

static void eval(dsv4_session *s, int64_t from, int64_t n, float *logits)
{
    dsv4_status st = dsv4_session_eval(s, tokens + from, n, logits, 1);
    CHECK_MSG(st == DSV4_OK, "eval %lld+%lld: %s", (long long)from, (long long)n,
              dsv4_last_error());
}

/* Prefill k tokens, draft (one catch-up chunk of k positions), then one-token steps to `end`:
 * every draft and every main row against the golden. */
static void check_path(dsv4_model *m, int64_t k, int64_t end, float *logits, float *q)
{
    dsv4_session *s = open_session(m, DSV4_MODE_EXACT);
    if (!s) return;
    double worst = 0, worst_main = 0;
    int64_t rows = 0;
    eval(s, 0, k, logits);
    for (int64_t t = 0; t < k; t++) {
        double e = row_err(logits + t * V, gold_main + t * V);
        if (!(e <= worst_main)) worst_main = e;
    }
    double e = draft_err(s, q, &rows);
    CHECK_MSG(rows == k, "first draft after %lld tokens computed %lld positions", (long long)k,
              (long long)rows);
    worst = e;
    for (int64_t P = k + 1; P <= end; P++) {
        eval(s, P - 1, 1, logits);
        double em = row_err(logits, gold_main + (P - 1) * V);
        if (!(em <= worst_main)) worst_main = em;
        e = draft_err(s, q, &rows);
        CHECK_MSG(rows == 1, "draft at %lld recomputed %lld positions", (long long)P,
                  (long long)rows);
        if (!(e <= worst)) worst = e;
    }
    printf("exact, prefill %3lld then decode to %3lld: MTP max |d|/range %.3g, main %.3g\n",
           (long long)k, (long long)end, worst, worst_main);
    CHECK_MSG(worst <= TOL, "MTP logits off by %.3g of the range (prefill %lld)", worst,
              (long long)k);
    CHECK_MSG(worst_main <= TOL, "main logits off by %.3g of the range (prefill %lld)", worst_main,
              (long long)k);
    dsv4_session_close(s);
}

/* Speculative decoding's moves: draft with a wrong token, reject, truncate, fork. */
static void check_rollback(dsv4_model *m, float *logits, float *q, float *q2)
{
    dsv4_session *s = open_session(m, DSV4_MODE_EXACT);
    if (!s) return;
    int64_t rows = 0;
    const int64_t P = 20;
    eval(s, 0, P, logits);
    CHECK(draft_err(s, q, &rows) <= TOL && rows == P);

    /* a second draft at the same position with another token recomputes only entry P-1; the
     * right token again gives the golden again */
    int32_t wrong = 0; /* a token none of the positions used below holds */
    for (int64_t t = P - 7; t <= P + 3; t++)
        if (tokens[t] == wrong) wrong++, t = P - 8; /* try the next id from the start */
    mtp_rows = 0;
    CHECK(dsv4_session_mtp_draft(s, wrong, q2) == DSV4_OK && mtp_rows == 1);
    CHECK(row_err(q2, gold_mtp + (P - 1) * V) > TOL); /* a different draft */
    CHECK(draft_err(s, q, &rows) <= TOL && rows == 1);

    /* verify [t_P, wrong draft]; rejected: truncate to P+1 (t_P kept), next draft needs only
     * entry P (entry P-1 was drafted with t_P, which stayed) */
    int32_t pair[2] = {tokens[P], wrong};
    CHECK(dsv4_session_eval(s, pair, 2, logits, 1) == DSV4_OK);
    CHECK(row_err(logits, gold_main + P * V) <= TOL);
    mtp_rows = 0;
    CHECK(dsv4_session_mtp_draft(s, tokens[P + 2], q2) == DSV4_OK && mtp_rows == 2);
    CHECK(dsv4_session_truncate(s, P + 1) == DSV4_OK);
    CHECK(draft_err(s, q, &rows) <= TOL && rows == 1);

    /* deeper truncation, then a different continuation first: entries past the cut recomputed */
    CHECK(dsv4_session_truncate(s, P - 6) == DSV4_OK);
    int32_t other[3] = {wrong, tokens[1], tokens[2]};
    CHECK(dsv4_session_eval(s, other, 3, logits, 0) == DSV4_OK);
    mtp_rows = 0;
    CHECK(dsv4_session_mtp_draft(s, wrong, q2) == DSV4_OK && mtp_rows == 4);
    CHECK(dsv4_session_truncate(s, P - 6) == DSV4_OK);
    eval(s, P - 6, 6, logits);
    CHECK(draft_err(s, q, &rows) <= TOL && rows == 7); /* entry P-7 too: its token changed */

    /* fork: the copy holds the MTP state (a draft needs only the new position) and both
     * continue independently */
    dsv4_session *f = NULL;
    CHECK(dsv4_session_fork(s, &f) == DSV4_OK);
    if (f) {
        dsv4_session_set_capture(f, count_rows, NULL);
        eval(f, P, 1, logits);
        CHECK(draft_err(f, q, &rows) <= TOL && rows == 1);
        mtp_rows = 0;
        CHECK(dsv4_session_mtp_draft(s, wrong, q2) == DSV4_OK && mtp_rows == 1);
        CHECK(dsv4_session_truncate(f, 3) == DSV4_OK);
        CHECK(draft_err(f, q, &rows) <= TOL && rows == 1);
        dsv4_session_close(f);
    }
    eval(s, P, 2, logits);
    CHECK(draft_err(s, q, &rows) <= TOL && rows == 3); /* entry P-1 was drafted with `wrong` */
    dsv4_session_close(s);
}

static void check_faithful(dsv4_model *m, float *logits, float *q, float *q2)
{
    dsv4_session *s = open_session(m, DSV4_MODE_FAITHFUL);
    if (!s) return;
    const int64_t P = 40;
    eval(s, 0, P, logits);
    double worst = draft_err(s, q, NULL), worst_main = 0;
    for (int64_t t = 0; t < P; t++) {
        double e = row_err(logits + t * V, gold_main + t * V);
        if (!(e <= worst_main)) worst_main = e;
    }
    for (int64_t t = P; t < P + 8; t++) {
        eval(s, t, 1, logits);
        double e = draft_err(s, q, NULL);
        if (!(e <= worst)) worst = e;
    }
    printf("faithful vs the exact golden: MTP max |d|/range %.3g (bound %.2g), main %.3g\n", worst,
           TOL_FAITHFUL, worst_main);
    CHECK_MSG(worst <= TOL_FAITHFUL, "faithful MTP logits %.3g of the range from exact", worst);
    /* same state, same computation: bit-identical */
    const int64_t Q = dsv4_session_position(s);
    CHECK(dsv4_session_mtp_draft(s, 5, q) == DSV4_OK);
    CHECK(dsv4_session_mtp_draft(s, tokens[Q], q2) == DSV4_OK);
    CHECK(dsv4_session_mtp_draft(s, 5, q2) == DSV4_OK);
    CHECK(memcmp(q, q2, (size_t)V * sizeof *q) == 0);
    dsv4_session_close(s);
}

static void check_errors(dsv4_model *m, const char *no_mtp_dir, float *q)
{
    dsv4_session *s = open_session(m, DSV4_MODE_EXACT);
    if (!s) return;
    CHECK(dsv4_session_mtp_draft(s, 3, q) == DSV4_ERR_INVALID_ARGUMENT);
    eval(s, 0, 2, NULL);
    CHECK(dsv4_session_mtp_draft(s, V, q) == DSV4_ERR_INPUT);
    CHECK(dsv4_session_mtp_draft(s, -1, q) == DSV4_ERR_INPUT);
    CHECK(dsv4_session_mtp_draft(NULL, 0, q) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_session_mtp_draft(s, tokens[2], NULL) == DSV4_OK); /* logits optional */
    dsv4_session_close(s);

    dsv4_model *h = NULL;
    dsv4_status st = dsv4_model_open(no_mtp_dir, &h);
    CHECK_MSG(st == DSV4_OK, "%s: %s", no_mtp_dir, dsv4_last_error());
    if (!h) return;
    CHECK(dsv4_model_num_mtp(h) == 0);
    dsv4_session *hs = NULL;
    CHECK(dsv4_session_create(h, NULL, &hs) == DSV4_OK);
    if (hs) {
        int32_t one = 1;
        CHECK(dsv4_session_eval(hs, &one, 1, NULL, 0) == DSV4_OK);
        CHECK(dsv4_session_mtp_draft(hs, 1, NULL) == DSV4_ERR_UNSUPPORTED);
        CHECK_CONTAINS(dsv4_last_error(), "mtp.0");
        printf("no-MTP checkpoint: %s\n", dsv4_last_error());
        dsv4_session_close(hs);
    }
    dsv4_model_close(h);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: test_forward_mtp MTP_FIXTURE_DIR NO_MTP_MODEL_DIR\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model", argv[1]);
    dsv4_model *m = NULL;
    dsv4_status st = dsv4_model_open(path, &m);
    CHECK_MSG(st == DSV4_OK, "%s: %s", path, dsv4_last_error());
    if (!m) return test_finish();
    V = dsv4_model_vocab_size(m);
    CHECK(dsv4_model_num_mtp(m) == 1);
    CHECK(dsv4_model_num_mtp(NULL) == 0);

    snprintf(path, sizeof path, "%s/mtp_golden.safetensors", argv[1]);
    st_file *g = NULL;
    st = st_file_open(path, &g);
    CHECK_MSG(st == DSV4_OK, "%s: %s", path, dsv4_last_error());
    if (!g) {
        dsv4_model_close(m);
        return test_finish();
    }
    for (size_t i = 0; i < g->n_tensors; i++) {
        const st_tensor *t = &g->tensors[i];
        if (!strcmp(t->name, "tokens") && t->dtype == DSV4_DT_I64) {
            N = t->shape[0];
            tokens = malloc((size_t)N * sizeof *tokens);
            for (int64_t j = 0; j < N; j++) {
                int64_t v;
                memcpy(&v, t->data + j * 8, 8);
                tokens[j] = (int32_t)v;
            }
        }
    }
    for (size_t i = 0; i < g->n_tensors; i++) {
        const st_tensor *t = &g->tensors[i];
        if (t->dtype != DSV4_DT_F32 || t->ndim != 2 || t->shape[1] != V) continue;
        if (!strcmp(t->name, "mtp_logits") && t->shape[0] == N - 1)
            gold_mtp = (const float *)t->data;
        if (!strcmp(t->name, "main_logits") && t->shape[0] == N) gold_main = (const float *)t->data;
    }
    CHECK_MSG(tokens && gold_mtp && gold_main && N > 30, "%s: tokens/mtp_logits/main_logits", path);
    if (tokens && gold_mtp && gold_main && N > 30) {
        float *logits = malloc((size_t)(N * V) * sizeof *logits);
        float *q = malloc((size_t)V * sizeof *q), *q2 = malloc((size_t)V * sizeof *q2);
        check_path(m, 1, N - 1, logits, q); /* every position, one token at a time */
        check_path(m, 5, 12, logits, q);
        check_path(m, 11, 16, logits, q); /* chunk longer than the window (8) */
        check_path(m, N - 1, N - 1, logits, q);
        check_rollback(m, logits, q, q2);
        check_faithful(m, logits, q, q2);
        check_errors(m, argv[2], q);
        free(logits), free(q), free(q2);
    }
    free(tokens);
    st_file_close(g);
    dsv4_model_close(m);
    return test_finish();
}
