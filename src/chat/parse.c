/*
 * parse.c - a completion's text back into reasoning, content and tool calls, whole or streamed.
 *
 * The grammar is the one the official parse_message_from_completion_text / parse_tool_calls
 * (encoding_dsv4.py) accept: in thinking mode the reasoning runs to "</think>"; the content
 * then runs to EOS or to "\n\n<｜DSML｜tool_calls"; a tool-call block is
 *   <｜DSML｜tool_calls>\n
 *   <｜DSML｜invoke name="NAME">\n
 *   <｜DSML｜parameter name="K" string="true|false">VALUE</｜DSML｜parameter>\n ...
 *   </｜DSML｜invoke>\n ...
 *   </｜DSML｜tool_calls>
 * followed only by EOS. Arguments are rebuilt as JSON text the way decode_dsml_to_arguments
 * does: string="true" values are JSON-quoted, others copied as written.
 *
 * Streaming: text arrives in arbitrary pieces, so a marker may be split across pushes. Text
 * that could still be the start of a marker is held back; everything before it is released.
 * A tool-call block is parsed once its closing tag has arrived. Unlike the official parser
 * (which asserts), text that ends without EOS is not an error: finished stays 0.
 */
#include "chat.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

#define EOS       "<｜end▁of▁sentence｜>"
#define THINK_END "</think>"
#define DSML      "｜DSML｜"
#define TC_START  "\n\n<" DSML "tool_calls"
#define TC_END    "</" DSML "tool_calls>"

typedef enum { P_REASONING, P_CONTENT, P_TOOLS, P_AFTER_TOOLS, P_DONE } phase;

struct dsv4_chat_parser {
    phase ph;
    chat_buf pending; /* received, not yet released */
    chat_buf out_reasoning, out_content;
    dsv4_tool_call *calls; /* completed by the last push (owned) */
    size_t n_calls;
};

static void free_calls(dsv4_tool_call *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((char *)c[i].id);
        free((char *)c[i].name);
        free((char *)c[i].arguments);
    }
    free(c);
}

dsv4_status dsv4_chat_parser_open(int thinking, dsv4_chat_parser **out)
{
    dsv4_clear_error();
    if (!out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "chat_parser_open: NULL");
    dsv4_chat_parser *p = calloc(1, sizeof *p);
    if (!p) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat_parser_open");
    p->ph = thinking ? P_REASONING : P_CONTENT;
    *out = p;
    return DSV4_OK;
}

void dsv4_chat_parser_close(dsv4_chat_parser *p)
{
    if (!p) return;
    buf_free(&p->pending);
    buf_free(&p->out_reasoning);
    buf_free(&p->out_content);
    free_calls(p->calls, p->n_calls);
    free(p);
}

static const char *find(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (s[i] == needle[0] && !memcmp(s + i, needle, k)) return s + i;
    return NULL;
}

/* Length of the longest suffix of s[0..n) that is a proper prefix of `marker`. */
static size_t partial_suffix(const char *s, size_t n, const char *marker)
{
    size_t k = strlen(marker);
    for (size_t l = k - 1 < n ? k - 1 : n; l > 0; l--)
        if (!memcmp(s + n - l, marker, l)) return l;
    return 0;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

/* Reads s[*i..) up to the first of the stop strings; returns which (or -1) and the text. */
static int read_until(const char *s, size_t n, size_t *i, const char *const *stops, int nstops,
                      const char **text, size_t *text_len)
{
    const char *best = NULL;
    int which = -1;
    for (int k = 0; k < nstops; k++) {
        const char *f = find(s + *i, n - *i, stops[k]);
        if (f && (!best || f < best)) best = f, which = k;
    }
    *text = s + *i;
    *text_len = (best ? (size_t)(best - s) : n) - *i;
    *i = best ? (size_t)(best - s) + strlen(stops[which]) : n;
    return which;
}

static int text_is(const char *t, size_t n, const char *want)
{
    return n == strlen(want) && !memcmp(t, want, n);
}

/* Parses the block after "\n\n<｜DSML｜tool_calls" (s[0..n) ends with its closing tag). */
static dsv4_status parse_tool_block(const char *s, size_t n, dsv4_tool_call **out, size_t *count)
{
    static const char *const s_invoke[] = {"<" DSML "invoke", TC_END};
    static const char *const s_param_or_end[] = {"<" DSML "parameter", "</" DSML "invoke"};
    static const char *const s_param_close[] = {"/" DSML "parameter"};
    dsv4_tool_call *calls = NULL;
    size_t nc = 0, i = 0;
    dsv4_status st = DSV4_OK;
    chat_buf args = {0};
    while (i < n && st == DSV4_OK) {
        const char *t;
        size_t tl;
        int w = read_until(s, n, &i, s_invoke, 2, &t, &tl);
        if (!text_is(t, tl, ">\n")) {
            st = dsv4_fail(DSV4_ERR_INPUT, "tool call block: expected '>\\n', got \"%.*s\"",
                           (int)(tl > 60 ? 60 : tl), t);
            break;
        }
        if (w == 1) break;
        if (w < 0) {
            st = dsv4_fail(DSV4_ERR_INPUT, "tool call block: not closed");
            break;
        }
        w = read_until(s, n, &i, s_param_or_end, 2, &t, &tl);
        /* ^\s*name="(.*?)">\n$ */
        size_t a = 0;
        while (a < tl && (t[a] == ' ' || t[a] == '\t' || t[a] == '\n' || t[a] == '\r')) a++;
        if (tl - a < 9 || memcmp(t + a, "name=\"", 6) || !text_is(t + tl - 3, 3, "\">\n")) {
            st = dsv4_fail(DSV4_ERR_INPUT, "tool call: bad invoke header \"%.*s\"",
                           (int)(tl > 60 ? 60 : tl), t);
            break;
        }
        char *name = dup_n(t + a + 6, tl - a - 9);
        buf_free(&args);
        buf_puts(&args, "{");
        int nparams = 0;
        while (w == 0 && st == DSV4_OK) {
            read_until(s, n, &i, s_param_close, 1, &t, &tl);
            /* ^ name="(.*?)" string="(true|false)">(.*?)<$ */
            const char *q = NULL;
            int is_str = 0;
            if (tl >= 8 && !memcmp(t, " name=\"", 7) && t[tl - 1] == '<') {
                for (size_t k = 7; k < tl && !q; k++) {
                    if (t[k] != '"') continue;
                    if (tl - k >= 18 && !memcmp(t + k, "\" string=\"true\">", 16))
                        q = t + k, is_str = 1;
                    else if (tl - k >= 19 && !memcmp(t + k, "\" string=\"false\">", 17))
                        q = t + k;
                }
            }
            if (!q) {
                st = dsv4_fail(DSV4_ERR_INPUT, "tool call %s: bad parameter \"%.*s\"",
                               name ? name : "", (int)(tl > 60 ? 60 : tl), t);
                break;
            }
            const char *key = t + 7, *val = q + (is_str ? 16 : 17);
            size_t key_len = (size_t)(q - key), val_len = (size_t)(t + tl - 1 - val);
            /* A repeated parameter name is an error in the official parser. */
            chat_buf probe = {0};
            pj_dump_string(&probe, key, key_len);
            buf_puts(&probe, ": ");
            int dup = probe.s && find(args.s, args.len, probe.s) != NULL;
            if (nparams) buf_puts(&args, ", ");
            buf_add(&args, probe.s ? probe.s : "", probe.len);
            buf_free(&probe);
            if (dup) {
                st = dsv4_fail(DSV4_ERR_INPUT, "tool call %s: parameter \"%.*s\" given twice",
                               name ? name : "", (int)key_len, key);
                break;
            }
            if (is_str)
                pj_dump_string(&args, val, val_len);
            else
                buf_add(&args, val, val_len);
            nparams++;
            w = read_until(s, n, &i, s_param_or_end, 2, &t, &tl);
            if (!text_is(t, tl, ">\n")) {
                st = dsv4_fail(DSV4_ERR_INPUT, "tool call %s: expected '>\\n' after a parameter",
                               name ? name : "");
            }
        }
        buf_puts(&args, "}");
        dsv4_tool_call *grown = realloc(calls, (nc + 1) * sizeof *calls);
        if (!grown || !name || args.oom) {
            free(name);
            if (grown) calls = grown;
            if (st == DSV4_OK) st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat parse");
            break;
        }
        calls = grown;
        calls[nc++] = (dsv4_tool_call){NULL, name, dup_n(args.s, args.len)};
        if (st == DSV4_OK && w != 1)
            st = dsv4_fail(DSV4_ERR_INPUT, "tool call %s: no </invoke>", name);
    }
    buf_free(&args);
    if (st != DSV4_OK) {
        free_calls(calls, nc);
        return st;
    }
    *out = calls;
    *count = nc;
    return DSV4_OK;
}

/* Drops the first `k` pending bytes. */
static void consume(chat_buf *b, size_t k)
{
    if (!k) return;
    memmove(b->s, b->s + k, b->len - k);
    b->len -= k;
    if (b->s) b->s[b->len] = 0;
}

static dsv4_status step(dsv4_chat_parser *p, int at_end)
{
    for (;;) {
        chat_buf *in = &p->pending;
        const char *s = in->s ? in->s : "";
        size_t n = in->len;
        if (p->ph == P_REASONING) {
            const char *f = find(s, n, THINK_END);
            size_t upto = f ? (size_t)(f - s) : n - (at_end ? 0 : partial_suffix(s, n, THINK_END));
            buf_add(&p->out_reasoning, s, upto);
            consume(in, f ? upto + strlen(THINK_END) : upto);
            if (!f) return DSV4_OK;
            p->ph = P_CONTENT;
        } else if (p->ph == P_CONTENT) {
            const char *e = find(s, n, EOS), *t = find(s, n, TC_START);
            const char *f = e && (!t || e < t) ? e : t;
            size_t hold = at_end ? 0 : partial_suffix(s, n, EOS);
            size_t h2 = at_end ? 0 : partial_suffix(s, n, TC_START);
            if (h2 > hold) hold = h2;
            size_t upto = f ? (size_t)(f - s) : n - hold;
            buf_add(&p->out_content, s, upto);
            if (!f) {
                consume(in, upto);
                return DSV4_OK;
            }
            if (f == e) {
                consume(in, upto + strlen(EOS));
                p->ph = P_DONE;
            } else {
                consume(in, upto + strlen(TC_START));
                p->ph = P_TOOLS;
            }
        } else if (p->ph == P_TOOLS) {
            const char *f = find(s, n, TC_END);
            if (!f) {
                if (at_end) return dsv4_fail(DSV4_ERR_INPUT, "tool call block not closed");
                return DSV4_OK;
            }
            size_t len = (size_t)(f - s) + strlen(TC_END);
            dsv4_tool_call *calls;
            size_t nc;
            DSV4_TRY(parse_tool_block(s, len, &calls, &nc));
            dsv4_tool_call *all = realloc(p->calls, (p->n_calls + nc + 1) * sizeof *all);
            if (!all) {
                free_calls(calls, nc);
                return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat parse");
            }
            if (nc) memcpy(all + p->n_calls, calls, nc * sizeof *calls);
            free(calls);
            p->calls = all;
            p->n_calls += nc;
            consume(in, len);
            p->ph = P_AFTER_TOOLS;
        } else if (p->ph == P_AFTER_TOOLS) {
            size_t k = strlen(EOS);
            if (n >= k && !memcmp(s, EOS, k)) {
                consume(in, k);
                p->ph = P_DONE;
            } else if (n && (n >= k || memcmp(s, EOS, n))) {
                return dsv4_fail(DSV4_ERR_INPUT, "unexpected text after the tool calls: \"%.*s\"",
                                 (int)(n > 40 ? 40 : n), s);
            } else {
                return DSV4_OK;
            }
        } else {
            if (n) return dsv4_fail(DSV4_ERR_INPUT, "text after the end-of-sentence token");
            return DSV4_OK;
        }
    }
}

static void fill_delta(dsv4_chat_parser *p, dsv4_chat_delta *d)
{
    d->reasoning = p->out_reasoning.s ? p->out_reasoning.s : "";
    d->reasoning_len = p->out_reasoning.len;
    d->content = p->out_content.s ? p->out_content.s : "";
    d->content_len = p->out_content.len;
    d->tool_calls = p->calls;
    d->n_tool_calls = p->n_calls;
    d->finished = p->ph == P_DONE;
}

static void reset_outputs(dsv4_chat_parser *p)
{
    p->out_reasoning.len = p->out_content.len = 0;
    free_calls(p->calls, p->n_calls);
    p->calls = NULL;
    p->n_calls = 0;
}

dsv4_status dsv4_chat_parser_push(dsv4_chat_parser *p, const char *text, size_t len,
                                  dsv4_chat_delta *delta)
{
    dsv4_clear_error();
    if (!p || !delta || (!text && len))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "chat_parser_push: NULL");
    reset_outputs(p);
    buf_add(&p->pending, text, len);
    if (p->pending.oom) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat parse");
    dsv4_status st = step(p, 0);
    fill_delta(p, delta);
    return st;
}

dsv4_status dsv4_chat_parser_finish(dsv4_chat_parser *p, dsv4_chat_delta *delta)
{
    dsv4_clear_error();
    if (!p || !delta) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "chat_parser_finish: NULL");
    reset_outputs(p);
    dsv4_status st = step(p, 1);
    fill_delta(p, delta);
    return st;
}

void dsv4_chat_parsed_free(dsv4_chat_parsed *r)
{
    if (!r) return;
    free(r->reasoning);
    free(r->content);
    free_calls(r->tool_calls, r->n_tool_calls);
    memset(r, 0, sizeof *r);
}

dsv4_status dsv4_chat_parse(const char *text, size_t len, int thinking, dsv4_chat_parsed *out)
{
    if (!out || (!text && len)) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "chat_parse: NULL");
    memset(out, 0, sizeof *out);
    dsv4_chat_parser *p = NULL;
    DSV4_TRY(dsv4_chat_parser_open(thinking, &p));
    dsv4_chat_delta d;
    /* One push for all of the text, then finish (which releases nothing more but checks). */
    reset_outputs(p);
    buf_add(&p->pending, text, len);
    dsv4_status st = p->pending.oom ? dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat parse") : step(p, 1);
    fill_delta(p, &d);
    if (st == DSV4_OK) {
        out->reasoning = dup_n(d.reasoning, d.reasoning_len);
        out->content = dup_n(d.content, d.content_len);
        out->tool_calls = p->calls;
        out->n_tool_calls = p->n_calls;
        out->finished = d.finished;
        p->calls = NULL;
        p->n_calls = 0;
        if (!out->reasoning || !out->content) {
            dsv4_chat_parsed_free(out);
            st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat parse");
        }
    }
    dsv4_chat_parser_close(p);
    return st;
}
