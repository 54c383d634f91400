/*
 * cmd_run.c - `dsv4 run`: raw completion of a text prompt (-p) or of token ids (--ids),
 * streamed to stdout as text, or as one JSON object per token (--output json) for tests and
 * evaluation. The generation itself is the library's dsv4_generate.
 */
#include "cli_generate.h"
#include "commands.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct run_ctx {
    const dsv4_tokenizer *tok;
    int json;
    int ends_newline; /* text mode: the output so far ends with '\n' (or is empty) */
} run_ctx;

static int on_token(void *user, const dsv4_gen_token *t)
{
    run_ctx *c = user;
    if (!c->json) {
        if (t->text_len) {
            fwrite(t->text, 1, t->text_len, stdout);
            c->ends_newline = t->text[t->text_len - 1] == '\n';
        }
        fflush(stdout);
        return 0;
    }
    printf("{\"index\": %lld, \"id\": %d, \"text\": ", (long long)t->index, (int)t->id);
    cli_json_string(stdout, t->text, t->text_len);
    printf(", \"logprob\": %.6g", (double)t->logprob);
    if (t->is_stop) printf(", \"stop_token\": true");
    if (t->n_top) {
        printf(", \"top_logprobs\": [");
        for (int i = 0; i < t->n_top; i++) {
            printf("%s{\"id\": %d, \"text\": ", i ? ", " : "", (int)t->top[i].id);
            cli_json_token_text(stdout, c->tok, t->top[i].id);
            printf(", \"logprob\": %.6g}", (double)t->top[i].logprob);
        }
        putchar(']');
    }
    printf("}\n");
    fflush(stdout);
    return 0;
}

/* 1 when stdout and stderr go to the same file or pipe (as with 2>&1). */
static int stdout_is_stderr(void)
{
    struct stat a, b;
    return fstat(STDOUT_FILENO, &a) == 0 && fstat(STDERR_FILENO, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 run -m MODEL_DIR (-p TEXT | -p - | --ids 0,123,...) [options]\n"
               "  raw completion, streamed to stdout; -p text gets a leading BOS (--no-bos: not)\n"
               "output:\n"
               "  --output text|json       json: one object per token {index, id, text, "
               "logprob,\n"
               "                           top_logprobs}, then {\"done\": true, stop_reason, "
               "...}\n"
               "  --top-logprobs N         alternatives per token in json (0..20)\n");
    cli_gen_usage(f);
}

int cmd_run(int argc, char **argv)
{
    cli_gen_args a;
    cli_gen_defaults(&a, 256);
    int parsed = cli_gen_parse("run", argc, argv, &a, usage);
    if (parsed >= 0) return parsed;
    if (!a.prompt == !a.ids) {
        fprintf(stderr, "dsv4 run: give one of -p TEXT or --ids 0,123,...\n");
        return 2;
    }
    if (a.gen.top_logprobs && !a.json) {
        fprintf(stderr, "dsv4 run: --top-logprobs needs --output json\n");
        return 2;
    }
    int rc = cli_gen_check("run", &a);
    if (rc) return rc;
    int32_t *ids = NULL;
    int64_t n = 0;
    if (a.ids && (rc = cli_parse_ids("run", a.ids, &ids, &n))) return rc;

    dsv4_model *m = NULL;
    dsv4_tokenizer *tok = NULL;
    dsv4_session *s = NULL;
    dsv4_status st = DSV4_OK;
    rc = cli_open("run", &a, 1, &m, &tok);
    if (rc) goto out;
    if (a.prompt) {
        size_t len = strlen(a.prompt);
        char *text = NULL;
        if (!strcmp(a.prompt, "-") && !(text = cli_read_all(stdin, &len))) {
            fprintf(stderr, "dsv4 run: cannot read the prompt from stdin\n");
            rc = 1;
            goto out;
        }
        int32_t *enc = NULL;
        size_t ne = 0;
        st = dsv4_tokenizer_encode(tok, text ? text : a.prompt, len, DSV4_ENCODE_REJECT_INVALID,
                                   &enc, &ne);
        free(text);
        if (st != DSV4_OK) goto out;
        dsv4_model_info info;
        dsv4_model_get_info(m, &info);
        int bos = !a.no_bos && info.bos_token_id >= 0;
        ids = malloc((ne + 1) * sizeof *ids);
        if (!ids) {
            dsv4_free(enc);
            rc = 1;
            goto out;
        }
        if (bos) ids[0] = info.bos_token_id;
        if (ne) memcpy(ids + bos, enc, ne * sizeof *ids);
        n = (int64_t)ne + bos;
        dsv4_free(enc);
        if (!n) {
            fprintf(stderr, "dsv4 run: the prompt is empty\n");
            rc = 2;
            goto out;
        }
    }
    dsv4_model_info info;
    dsv4_model_get_info(m, &info);
    a.gen.eos_id = info.eos_token_id;
    st = dsv4_session_create(m, &a.session, &s);
    if (st != DSV4_OK) goto out;
    run_ctx c = {tok, a.json, 1};
    dsv4_gen_result res;
    st = dsv4_generate(s, tok, ids, n, &a.gen, on_token, &c, &res);
    if (st != DSV4_OK) goto out;
    if (a.json) {
        double pre = res.prefill_seconds > 0 ? (double)res.prompt_tokens / res.prefill_seconds : 0;
        double dec = res.decode_seconds > 0 && res.generated_tokens > 1
                         ? (double)(res.generated_tokens - 1) / res.decode_seconds
                         : 0;
        printf("{\"done\": true, \"stop_reason\": \"%s\", \"stop_string\": ",
               dsv4_stop_reason_name(res.reason));
        if (res.stop_index >= 0)
            cli_json_string(stdout, a.stop[res.stop_index], strlen(a.stop[res.stop_index]));
        else
            fputs("null", stdout);
        printf(", \"prompt_tokens\": %lld, \"generated_tokens\": %lld, \"prefill_tok_s\": %.1f, "
               "\"decode_tok_s\": %.1f}\n",
               (long long)res.prompt_tokens, (long long)res.generated_tokens, pre, dec);
    } else if (!c.ends_newline && (isatty(STDOUT_FILENO) || stdout_is_stderr())) {
        putchar('\n'); /* keep the closing line on stderr off the end of the text */
    }
    fflush(stdout);
    if (!a.quiet)
        cli_print_stats(stderr, "run", &res, res.stop_index >= 0 ? a.stop[res.stop_index] : NULL);
out:
    if (st != DSV4_OK) rc = cli_report("run", st);
    dsv4_session_close(s);
    dsv4_tokenizer_close(tok);
    dsv4_model_close(m);
    free(ids);
    return rc;
}
