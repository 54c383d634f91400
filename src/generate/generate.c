/*
 * generate.c - the generation loop: evaluate what the session lacks of the prompt, then sample,
 * stream and check the stop rules token by token (dsv4_generate in include/dsv4.h).
 *
 * Why the last token is never evaluated: it would only produce logits nobody samples from, and
 * leaving it out lets a chat continue by evaluating it as the first token of the next prompt.
 * The context rule counts it, so prompt + generated <= max_context always holds.
 */
#include "core/error.h"
#include "dsv4.h"
#include "generate/stop.h"
#include "model/session.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_TOP_LOGPROBS 20

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *dsv4_stop_reason_name(dsv4_stop_reason r)
{
    switch (r) {
    case DSV4_STOP_EOS:
        return "eos";
    case DSV4_STOP_USER_TURN:
        return "user_turn";
    case DSV4_STOP_STRING:
        return "stop_string";
    case DSV4_STOP_MAX_TOKENS:
        return "max_tokens";
    case DSV4_STOP_CONTEXT:
        return "context";
    case DSV4_STOP_CALLER:
        return "caller";
    default:
        return "none";
    }
}

void dsv4_gen_options_default(dsv4_gen_options *o)
{
    memset(o, 0, sizeof *o);
    dsv4_sampler_params_default(&o->sampling);
    o->eos_id = -1;
    o->user_id = -1;
}

/* Text released for one token: the pieces of the detokenizer and the stop matcher. */
typedef struct textbuf {
    char *p;
    size_t len, cap;
} textbuf;

static dsv4_status text_add(textbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + n + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "generate: out of memory");
        b->p = q;
        b->cap = c;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return DSV4_OK;
}

/* log-sum-exp of the raw logits and the n most likely ids (n <= MAX_TOP_LOGPROBS). */
static float logprobs(const float *l, int V, int n, dsv4_token_logprob *top)
{
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = fmaxf(mx, l[i]);
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)(l[i] - mx));
    float lse = mx + (float)log(sum);
    int k = 0;
    for (int i = 0; i < V && n > 0; i++) {
        if (k == n && l[i] <= top[k - 1].logprob) continue;
        int j = k < n ? k++ : n - 1;
        while (j > 0 && top[j - 1].logprob < l[i]) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = (dsv4_token_logprob){i, l[i]};
    }
    for (int i = 0; i < k; i++) top[i].logprob -= lse;
    return lse;
}

typedef struct gen_state {
    dsv4_sampler *sampler;
    dsv4_detokenizer *detok;
    dsv4_stop_matcher stop;
    float *logits;
    textbuf text;
} gen_state;

/* Pushes text through the stop matcher into the token's text; sets *hit. */
static dsv4_status emit(gen_state *g, const char *t, size_t n, int *hit)
{
    const char *out;
    size_t out_len;
    DSV4_TRY(dsv4_stop_push(&g->stop, t, n, &out, &out_len, hit));
    return text_add(&g->text, out, out_len);
}

/* End of the stream: releases what the detokenizer and the matcher still hold. */
static dsv4_status flush_text(gen_state *g, int *hit)
{
    const char *t;
    size_t n = 0;
    if (g->detok) {
        DSV4_TRY(dsv4_detokenizer_flush(g->detok, &t, &n));
        DSV4_TRY(emit(g, t, n, hit));
        if (*hit >= 0) return DSV4_OK;
    }
    DSV4_TRY(dsv4_stop_flush(&g->stop, &t, &n));
    return text_add(&g->text, t, n);
}

static dsv4_status run(dsv4_session *s, const dsv4_tokenizer *tok, const int32_t *prompt,
                       int64_t n_prompt, const dsv4_gen_options *o, dsv4_gen_fn fn, void *user,
                       dsv4_gen_result *res, gen_state *g)
{
    int V = dsv4_model_vocab_size(s->m);
    int64_t ctx = s->opt.max_context;
    if (n_prompt >= ctx)
        return dsv4_fail(DSV4_ERR_CONTEXT_OVERFLOW,
                         "the prompt has %lld tokens: it must be shorter than the context "
                         "(%lld tokens) to leave room for one generated token",
                         (long long)n_prompt, (long long)ctx);
    for (int64_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V)
            return dsv4_fail(DSV4_ERR_INPUT, "prompt token %lld: id %d outside [0, %d)",
                             (long long)i, (int)prompt[i], V);
    int ntop = o->top_logprobs;
    if (ntop < 0 || ntop > MAX_TOP_LOGPROBS)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "top_logprobs %d: must be in [0, %d]", ntop,
                         MAX_TOP_LOGPROBS);
    if (o->n_stop && !tok)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "stop strings need a tokenizer");
    int32_t eos = o->eos_id, usr = o->user_id;
    if (eos < 0 && tok) eos = dsv4_tokenizer_token_to_id(tok, "<｜end▁of▁sentence｜>");
    if (usr < 0 && tok) usr = dsv4_tokenizer_token_to_id(tok, "<｜User｜>");
    if (o->ignore_eos) eos = usr = -1;

    DSV4_TRY(dsv4_stop_init(&g->stop, o->stop, o->n_stop));
    DSV4_TRY(dsv4_sampler_create(&o->sampling, V, &g->sampler));
    if (tok) DSV4_TRY(dsv4_detokenizer_open(tok, o->decode_flags, &g->detok));
    g->logits = malloc((size_t)V * sizeof *g->logits);
    if (!g->logits) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "generate: out of memory");
    for (int64_t i = 0; i < n_prompt; i++) DSV4_TRY(dsv4_sampler_accept(g->sampler, prompt[i], 1));

    int64_t have = dsv4_session_position(s);
    if (have >= n_prompt) {
        DSV4_TRY(dsv4_session_truncate(s, n_prompt - 1));
        have = n_prompt - 1;
    }
    double t0 = now_seconds();
    DSV4_TRY(dsv4_session_eval(s, prompt + have, n_prompt - have, g->logits, 0));
    double t_first = now_seconds(), t_last = t_first;
    res->prompt_tokens = n_prompt - have;
    res->prefill_seconds = t_first - t0;

    dsv4_token_logprob top[MAX_TOP_LOGPROBS];
    for (int64_t n = 0;; n++) {
        int32_t id;
        DSV4_TRY(dsv4_sampler_sample(g->sampler, g->logits, &id));
        DSV4_TRY(dsv4_sampler_accept(g->sampler, id, 0));
        dsv4_token_logprob self;
        float lse = logprobs(g->logits, V, ntop, top);
        self.logprob = g->logits[id] - lse;
        g->text.len = 0;
        DSV4_TRY(text_add(&g->text, "", 0));
        dsv4_stop_reason reason = DSV4_STOP_NONE;
        int hit = -1, is_stop = 0;
        if (id == eos || id == usr) {
            reason = id == eos ? DSV4_STOP_EOS : DSV4_STOP_USER_TURN;
            is_stop = 1;
        } else if (g->detok) {
            const char *t;
            size_t tl;
            DSV4_TRY(dsv4_detokenizer_push(g->detok, id, &t, &tl));
            DSV4_TRY(emit(g, t, tl, &hit));
            if (hit >= 0) reason = DSV4_STOP_STRING;
        }
        if (reason == DSV4_STOP_NONE && o->max_tokens > 0 && n + 1 >= o->max_tokens)
            reason = DSV4_STOP_MAX_TOKENS;
        if (reason == DSV4_STOP_NONE && n_prompt + n + 1 >= ctx) reason = DSV4_STOP_CONTEXT;
        if (reason != DSV4_STOP_NONE && reason != DSV4_STOP_STRING) {
            DSV4_TRY(flush_text(g, &hit));
            if (hit >= 0) reason = DSV4_STOP_STRING;
        }
        if (hit >= 0) res->stop_index = hit;
        t_last = now_seconds();
        res->generated_tokens = n + 1;
        if (fn) {
            dsv4_gen_token ev = {n, id, self.logprob, g->text.p, g->text.len, top, ntop, is_stop};
            if (fn(user, &ev) && reason == DSV4_STOP_NONE) reason = DSV4_STOP_CALLER;
        }
        if (reason != DSV4_STOP_NONE) {
            res->reason = reason;
            break;
        }
        DSV4_TRY(dsv4_session_eval(s, &id, 1, g->logits, 0));
    }
    res->decode_seconds = t_last - t_first;
    return DSV4_OK;
}

dsv4_status dsv4_generate(dsv4_session *s, const dsv4_tokenizer *tok, const int32_t *prompt,
                          int64_t n_prompt, const dsv4_gen_options *o, dsv4_gen_fn fn, void *user,
                          dsv4_gen_result *res)
{
    dsv4_clear_error();
    if (!s || !prompt || n_prompt <= 0 || !o || !res)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "generate: NULL argument or empty prompt (%lld tokens)",
                         (long long)n_prompt);
    memset(res, 0, sizeof *res);
    res->stop_index = -1;
    gen_state g;
    memset(&g, 0, sizeof g);
    dsv4_status st = run(s, tok, prompt, n_prompt, o, fn, user, res, &g);
    dsv4_sampler_close(g.sampler);
    dsv4_detokenizer_close(g.detok);
    dsv4_stop_free(&g.stop);
    free(g.logits);
    free(g.text.p);
    return st;
}
