/*
 * cmd_score.c - `dsv4 score`: the log-probabilities the model gives a token sequence, position
 * by position, as vLLM's prompt_logprobs: for every position p, the log-probability of the
 * token there given the ones before it, its rank, and the top N alternatives of that
 * distribution (none for p = 0). For evaluation harnesses and the golden tests.
 */
#include "cli_generate.h"
#include "commands.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SCORE_CHUNK 64 /* positions per forward call: bounds the [chunk, vocab] logits buffer */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsv4 score -m MODEL_DIR (--ids 0,123,... | -p TEXT) [--top-logprobs N]\n"
            "  one JSON object per position p: {\"pos\", \"id\", \"text\", \"logprob\" (of id "
            "given\n"
            "  the tokens before p; null at p = 0), \"rank\" (1 = most likely), \"top_logprobs\"\n"
            "  (the N most likely ids at p)}, then {\"done\": true, \"tokens\", \"sum_logprob\",\n"
            "  \"next_top_logprobs\" (the distribution after the last token)}. -p text is\n"
            "  encoded with a leading BOS (--no-bos: without). Default N = 5.\n"
            "  -m DIR, --tokenizer FILE, --mode exact|faithful, --context N, --threads N as for "
            "run\n");
}

/* The top-n list of row `l` as JSON; returns the log-sum-exp. */
static double print_top(const float *l, int V, int n, const dsv4_tokenizer *tok, int32_t *top)
{
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = fmaxf(mx, l[i]);
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)l[i] - mx);
    double lse = mx + log(sum);
    int k = 0;
    for (int i = 0; i < V && n > 0; i++) { /* insertion into the sorted top-n */
        if (k == n && l[i] <= l[top[k - 1]]) continue;
        int j = k < n ? k++ : n - 1;
        while (j > 0 && l[top[j - 1]] < l[i]) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = i;
    }
    putchar('[');
    for (int i = 0; i < k; i++) {
        printf("%s{\"id\": %d, \"text\": ", i ? ", " : "", (int)top[i]);
        cli_json_token_text(stdout, tok, top[i]);
        printf(", \"logprob\": %.7g}", (double)l[top[i]] - lse);
    }
    putchar(']');
    return lse;
}

int cmd_score(int argc, char **argv)
{
    cli_gen_args a;
    cli_gen_defaults(&a, 0);
    a.gen.top_logprobs = 5;
    int parsed = cli_gen_parse("score", argc, argv, &a, usage);
    if (parsed >= 0) return parsed;
    if (!a.prompt == !a.ids) {
        fprintf(stderr, "dsv4 score: give one of --ids 0,123,... or -p TEXT\n");
        return 2;
    }
    int rc = 0;
    int32_t *ids = NULL;
    int64_t n = 0;
    if (a.ids && (rc = cli_parse_ids("score", a.ids, &ids, &n))) return rc;
    dsv4_model *m = NULL;
    dsv4_tokenizer *tok = NULL;
    dsv4_session *s = NULL;
    float *logits = NULL;
    int32_t *top = NULL;
    dsv4_status st = DSV4_OK;
    rc = cli_open("score", &a, a.prompt != NULL, &m, &tok);
    if (rc) goto out;
    dsv4_model_info info;
    dsv4_model_get_info(m, &info);
    if (a.prompt) {
        int32_t *enc = NULL;
        size_t ne = 0;
        st = dsv4_tokenizer_encode(tok, a.prompt, strlen(a.prompt), DSV4_ENCODE_REJECT_INVALID,
                                   &enc, &ne);
        if (st != DSV4_OK) goto out;
        int bos = !a.no_bos;
        ids = malloc((ne + 1) * sizeof *ids);
        if (ids) {
            if (bos) ids[0] = info.bos_token_id;
            if (ne) memcpy(ids + bos, enc, ne * sizeof *ids);
            n = (int64_t)ne + bos;
        }
        dsv4_free(enc);
        if (!ids) {
            rc = 1;
            goto out;
        }
    }
    if (!n) {
        fprintf(stderr, "dsv4 score: no tokens to score\n");
        rc = 2;
        goto out;
    }
    int V = info.vocab_size;
    st = dsv4_session_create(m, &a.session, &s);
    if (st != DSV4_OK) goto out;
    logits = malloc((size_t)SCORE_CHUNK * (size_t)V * sizeof *logits);
    top = malloc(21 * sizeof *top);
    if (!logits || !top) {
        fprintf(stderr, "dsv4 score: out of memory\n");
        rc = 1;
        goto out;
    }
    /* Row r of a chunk starting at p0 is the distribution of position p0 + r + 1. */
    printf("{\"pos\": 0, \"id\": %d, \"text\": ", (int)ids[0]);
    cli_json_token_text(stdout, tok, ids[0]);
    printf(", \"logprob\": null, \"rank\": null, \"top_logprobs\": null}\n");
    double total = 0;
    for (int64_t p0 = 0; p0 < n; p0 += SCORE_CHUNK) {
        int64_t c = n - p0 < SCORE_CHUNK ? n - p0 : SCORE_CHUNK;
        st = dsv4_session_eval(s, ids + p0, c, logits, 1);
        if (st != DSV4_OK) goto out;
        for (int64_t r = 0; r < c; r++) {
            const float *l = logits + (size_t)r * (size_t)V;
            int64_t p = p0 + r + 1;
            if (p == n) {
                printf("{\"done\": true, \"tokens\": %lld, \"sum_logprob\": %.7g, "
                       "\"next_top_logprobs\": ",
                       (long long)n, total);
                print_top(l, V, a.gen.top_logprobs, tok, top);
                printf("}\n");
                break;
            }
            int32_t id = ids[p];
            printf("{\"pos\": %lld, \"id\": %d, \"text\": ", (long long)p, (int)id);
            cli_json_token_text(stdout, tok, id);
            printf(", \"top_logprobs\": ");
            double lse = print_top(l, V, a.gen.top_logprobs, tok, top);
            int rank = 1;
            for (int i = 0; i < V; i++) rank += l[i] > l[id];
            double lp = (double)l[id] - lse;
            total += lp;
            printf(", \"logprob\": %.7g, \"rank\": %d}\n", lp, rank);
        }
    }
out:
    if (st != DSV4_OK) rc = cli_report("score", st);
    free(logits);
    free(top);
    dsv4_session_close(s);
    dsv4_tokenizer_close(tok);
    dsv4_model_close(m);
    free(ids);
    return rc;
}
