/*
 * cmd_chat.c - `dsv4 chat`: an interactive conversation. Each line of stdin is a user message;
 * the conversation is rendered with the DeepSeek-V4 chat format (dsv4_chat_render), and the
 * reply is streamed through the chat parser so that reasoning (--think) is shown apart from
 * the answer: dim on a terminal, else after a "[reasoning]" marker with "[answer]" before the
 * answer.
 *
 * Why re-render every turn: the format drops a past turn's reasoning once a new user message
 * follows, so the next prompt is not the old one plus the new message. The session keeps the
 * longest common prefix of what it holds and the new prompt (dsv4_session_truncate) and only
 * evaluates the rest.
 */
#include "cli_generate.h"
#include "commands.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct chat_ctx {
    dsv4_chat_parser *parser;
    int tty;
    int in_reasoning, saw_reasoning, saw_content;
    char *reasoning, *content; /* the reply so far (owned) */
    size_t reasoning_len, content_len;
    int32_t *gen; /* generated ids (owned) */
    int64_t n_gen, cap_gen;
    dsv4_status error;
} chat_ctx;

static int append(char **s, size_t *len, const char *t, size_t n)
{
    char *p = realloc(*s, *len + n + 1);
    if (!p) return 0;
    memcpy(p + *len, t, n);
    *len += n;
    p[*len] = 0;
    *s = p;
    return 1;
}

static void show(chat_ctx *c, const dsv4_chat_delta *d)
{
    if (d->reasoning_len) {
        if (!c->in_reasoning) fputs(c->tty ? "\033[2m" : "[reasoning]\n", stdout);
        c->in_reasoning = c->saw_reasoning = 1;
        fwrite(d->reasoning, 1, d->reasoning_len, stdout);
        append(&c->reasoning, &c->reasoning_len, d->reasoning, d->reasoning_len);
    }
    if (d->content_len) {
        if (c->in_reasoning) fputs(c->tty ? "\033[0m\n" : "\n[answer]\n", stdout);
        c->in_reasoning = 0;
        c->saw_content = 1;
        fwrite(d->content, 1, d->content_len, stdout);
        append(&c->content, &c->content_len, d->content, d->content_len);
    }
    fflush(stdout);
}

static int on_token(void *user, const dsv4_gen_token *t)
{
    chat_ctx *c = user;
    if (c->n_gen == c->cap_gen) {
        int64_t cap = c->cap_gen ? 2 * c->cap_gen : 256;
        int32_t *g = realloc(c->gen, (size_t)cap * sizeof *g);
        if (!g) return 1;
        c->gen = g;
        c->cap_gen = cap;
    }
    c->gen[c->n_gen++] = t->id;
    if (!t->text_len) return 0;
    dsv4_chat_delta d;
    dsv4_status st = dsv4_chat_parser_push(c->parser, t->text, t->text_len, &d);
    if (st != DSV4_OK) {
        c->error = st;
        return 1;
    }
    show(c, &d);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 chat -m MODEL_DIR [--think] [--system TEXT] [options]\n"
               "  one user message per line of stdin (/exit or end of input to quit);\n"
               "  --think: thinking mode (reasoning shown dim, or after [reasoning])\n"
               "  default --max-tokens 8192 per reply\n");
    cli_gen_usage(f);
}

typedef struct turn {
    dsv4_role role;
    char *content, *reasoning;
} turn;

int cmd_chat(int argc, char **argv)
{
    cli_gen_args a;
    cli_gen_defaults(&a, 8192);
    int parsed = cli_gen_parse("chat", argc, argv, &a, usage);
    if (parsed >= 0) return parsed;
    if (a.prompt || a.ids || a.json || a.gen.top_logprobs) {
        fprintf(stderr, "dsv4 chat: -p, --ids, --output and --top-logprobs are for dsv4 run\n");
        return 2;
    }
    int rc = cli_gen_check("chat", &a);
    if (rc) return rc;
    dsv4_model *m = NULL;
    dsv4_tokenizer *tok = NULL;
    dsv4_session *s = NULL;
    rc = cli_open("chat", &a, 1, &m, &tok);
    if (rc) return rc;
    dsv4_model_info info;
    dsv4_model_get_info(m, &info);
    a.gen.eos_id = info.eos_token_id;
    dsv4_status st = dsv4_session_create(m, &a.session, &s);

    turn *turns = NULL;
    size_t n_turns = 0;
    dsv4_chat_message *msgs = NULL;
    int32_t *hist = NULL; /* the ids of the last prompt + reply; the session holds a prefix */
    int64_t n_hist = 0;
    char *line = NULL;
    size_t line_cap = 0;
    int tty_in = isatty(STDIN_FILENO);
    chat_ctx c;
    memset(&c, 0, sizeof c);
    c.tty = isatty(STDOUT_FILENO);
    if (st == DSV4_OK && a.system) {
        turns = calloc(1, sizeof *turns);
        if (turns) turns[n_turns++] = (turn){DSV4_ROLE_SYSTEM, strdup(a.system), NULL};
    }
    while (st == DSV4_OK) {
        if (tty_in) fputs("> ", stderr);
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!got) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        turn *tt = realloc(turns, (n_turns + 2) * sizeof *turns);
        dsv4_chat_message *mm = realloc(msgs, (n_turns + 2) * sizeof *msgs);
        if (tt) turns = tt;
        if (mm) msgs = mm;
        if (!tt || !mm) {
            fprintf(stderr, "dsv4 chat: out of memory\n");
            rc = 1;
            break;
        }
        turns[n_turns++] = (turn){DSV4_ROLE_USER, strdup(line), NULL};
        for (size_t i = 0; i < n_turns; i++)
            msgs[i] = (dsv4_chat_message){.role = turns[i].role,
                                          .content = turns[i].content,
                                          .reasoning_content = turns[i].reasoning};
        dsv4_chat_options opts = {.thinking = a.think};
        char *prompt = NULL;
        int32_t *ids = NULL;
        size_t n_ids = 0;
        st = dsv4_chat_render(msgs, n_turns, &opts, &prompt);
        if (st == DSV4_OK) st = dsv4_tokenizer_encode(tok, prompt, strlen(prompt), 0, &ids, &n_ids);
        dsv4_free(prompt);
        if (st != DSV4_OK) break;
        /* Keep what the session holds in common with the new prompt. */
        int64_t pos = dsv4_session_position(s), k = 0;
        while (k < pos && k < n_hist && k < (int64_t)n_ids && hist[k] == ids[k]) k++;
        if (k < pos) st = dsv4_session_truncate(s, k);
        st = st == DSV4_OK ? dsv4_chat_parser_open(a.think, &c.parser) : st;
        dsv4_gen_result res;
        if (st == DSV4_OK) {
            c.n_gen = 0;
            c.in_reasoning = c.saw_reasoning = c.saw_content = 0;
            c.reasoning_len = c.content_len = 0;
            append(&c.reasoning, &c.reasoning_len, "", 0);
            append(&c.content, &c.content_len, "", 0);
            st = dsv4_generate(s, tok, ids, (int64_t)n_ids, &a.gen, on_token, &c, &res);
            if (st == DSV4_OK && c.error != DSV4_OK) st = c.error;
        }
        if (st == DSV4_OK) {
            dsv4_chat_delta d;
            if (dsv4_chat_parser_finish(c.parser, &d) == DSV4_OK) show(&c, &d);
            if (c.in_reasoning && c.tty) fputs("\033[0m", stdout);
            fputs("\n", stdout);
            fflush(stdout);
            if (!a.quiet) {
                cli_print_stats(stderr, "chat", &res,
                                res.stop_index >= 0 ? a.stop[res.stop_index] : NULL);
            }
            turns[n_turns++] = (turn){DSV4_ROLE_ASSISTANT, strdup(c.content),
                                      c.reasoning_len ? strdup(c.reasoning) : NULL};
            int32_t *h = realloc(hist, (n_ids + (size_t)c.n_gen + 1) * sizeof *h);
            if (h) {
                hist = h;
                memcpy(hist, ids, n_ids * sizeof *ids);
                memcpy(hist + n_ids, c.gen, (size_t)c.n_gen * sizeof *hist);
                n_hist = (int64_t)n_ids + c.n_gen;
            } else {
                n_hist = 0; /* forces a full re-evaluation */
            }
        }
        dsv4_chat_parser_close(c.parser);
        c.parser = NULL;
        dsv4_free(ids);
    }
    if (st != DSV4_OK) rc = cli_report("chat", st);
    for (size_t i = 0; i < n_turns; i++) {
        free(turns[i].content);
        free(turns[i].reasoning);
    }
    free(turns);
    free(msgs);
    free(hist);
    free(line);
    free(c.reasoning);
    free(c.content);
    free(c.gen);
    dsv4_session_close(s);
    dsv4_tokenizer_close(tok);
    dsv4_model_close(m);
    return rc;
}
