/*
 * pretokenize.c - the pre-tokenizer: the regex Split steps that tokenizer.json declares, run in
 * order, each on every piece the previous step produced, then the ByteLevel step, then BPE.
 *
 * Semantics follow HF tokenizers' Split (pre_tokenizers/split.rs) and
 * NormalizedString::split: each step finds the pattern's non-overlapping matches inside one
 * piece (the piece is the whole subject, so a look-ahead such as `\s+(?!\S)` cannot see past
 * the piece's end), labels matches and the gaps between them, flips the labels when `invert`
 * is set, and combines them by the declared behaviour (Isolated keeps both as pieces). Empty
 * pieces are dropped. Patterns are compiled with PCRE2 in UTF + UCP mode (so \s, \p{L}, \d
 * follow Unicode like Oniguruma does in HF) and JIT-compiled when the platform allows it.
 * Text reaching here is valid UTF-8 (encode.c splits off invalid bytes first), so matching
 * uses PCRE2_NO_UTF_CHECK.
 */
#include "tokenizer.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

dsv4_status tok_regex_compile(const char *pattern, size_t len, int literal, pcre2_code **out)
{
    int err;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "tokenizer.json: pre-tokenizer pattern /%.*s/ does not compile with "
                         "PCRE2 (offset %zu): %s",
                         (int)(len > 200 ? 200 : len), pattern, (size_t)off, (char *)msg);
    }
    /* Without JIT (e.g. a platform PCRE2 lacks it for) the interpreter gives the same matches. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return DSV4_OK;
}

typedef struct pre_ctx {
    const dsv4_tokenizer *tok;
    pcre2_match_data *md;
    tok_ids *out;
} pre_ctx;

static dsv4_status run_step(pre_ctx *c, size_t step, const char *s, size_t len);

/* Finds the next match of `re` in s[from..len). Returns 1 and the span, 0 when none. */
static int next_match(pre_ctx *c, const pcre2_code *re, const char *s, size_t len, size_t from,
                      size_t *ms, size_t *me, dsv4_status *st)
{
    while (from <= len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, len, from, PCRE2_NO_UTF_CHECK, c->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            *st = dsv4_fail(DSV4_ERR_UNSUPPORTED,
                            "tokenizer: pre-tokenizer regex failed on a %zu-byte piece: %s", len,
                            (char *)msg);
            return 0;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        /* An empty match makes no piece; step over one character, as Oniguruma's find_iter. */
        from = ov[0] + 1;
        while (from < len && ((unsigned char)s[from] & 0xC0) == 0x80) from++;
    }
    return 0;
}

/* Splits s by `re` with `behavior`, sending each resulting piece to `emit_step`. */
static dsv4_status split_by(pre_ctx *c, const pcre2_code *re, tok_split_behavior behavior,
                            int invert, size_t emit_step, const char *s, size_t len)
{
    size_t pos = 0, ms = 0, me = 0;
    /* The pending piece is held back one span so that the Merged* behaviours can extend it. */
    size_t pend_start = 0, pend_end = 0;
    int have_pend = 0, prev_match = 0;
    dsv4_status st = DSV4_OK;
    while (pos < len) {
        int found = next_match(c, re, s, len, pos, &ms, &me, &st);
        if (st != DSV4_OK) return st;
        /* Up to two spans this round: the gap before the match, then the match. */
        size_t span[2][2];
        int label[2], nspan = 0;
        size_t gap_end = found ? ms : len;
        if (gap_end > pos) span[nspan][0] = pos, span[nspan][1] = gap_end, label[nspan++] = 0;
        if (found) span[nspan][0] = ms, span[nspan][1] = me, label[nspan++] = 1;
        for (int k = 0; k < nspan; k++) {
            int is_match = label[k] ^ (invert != 0);
            size_t a = span[k][0], b = span[k][1];
            int extend = 0, drop = 0;
            switch (behavior) {
            case TOK_SPLIT_REMOVED:
                drop = is_match;
                break;
            case TOK_SPLIT_ISOLATED:
                break;
            case TOK_SPLIT_MERGED_WITH_PREVIOUS:
                extend = is_match && !prev_match;
                break;
            case TOK_SPLIT_MERGED_WITH_NEXT:
                extend = prev_match;
                break;
            case TOK_SPLIT_CONTIGUOUS:
                extend = is_match == prev_match;
                break;
            }
            prev_match = is_match;
            if (drop) {
                if (have_pend)
                    DSV4_TRY(run_step(c, emit_step, s + pend_start, pend_end - pend_start));
                have_pend = 0;
                continue;
            }
            if (extend && have_pend) {
                pend_end = b;
                continue;
            }
            if (have_pend) DSV4_TRY(run_step(c, emit_step, s + pend_start, pend_end - pend_start));
            pend_start = a, pend_end = b, have_pend = 1;
        }
        pos = found ? me : len;
    }
    if (have_pend) DSV4_TRY(run_step(c, emit_step, s + pend_start, pend_end - pend_start));
    return DSV4_OK;
}

static dsv4_status bpe_emit(pre_ctx *c, const char *s, size_t len)
{
    return tok_bpe_piece(c->tok, s, len, c->out);
}

/* Steps 0..n_steps-1 are the Split steps; n_steps is ByteLevel (+ its optional regex);
 * n_steps + 1 is BPE. */
static dsv4_status run_step(pre_ctx *c, size_t step, const char *s, size_t len)
{
    const dsv4_tokenizer *tok = c->tok;
    if (!len) return DSV4_OK;
    if (step < tok->n_steps) {
        const tok_split_step *sp = &tok->steps[step];
        return split_by(c, sp->re, sp->behavior, sp->invert, step + 1, s, len);
    }
    if (step == tok->n_steps) {
        if (tok->has_byte_level && tok->bl_add_prefix_space && s[0] != ' ') {
            /* ByteLevel's add_prefix_space: this piece is processed as " " + piece. */
            char *copy = malloc(len + 1);
            if (!copy) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer: %zu bytes", len + 1);
            copy[0] = ' ';
            memcpy(copy + 1, s, len);
            dsv4_status st = tok->bl_regex ? split_by(c, tok->bl_regex, TOK_SPLIT_ISOLATED, 0,
                                                      step + 1, copy, len + 1)
                                           : bpe_emit(c, copy, len + 1);
            free(copy);
            return st;
        }
        if (tok->bl_regex)
            return split_by(c, tok->bl_regex, TOK_SPLIT_ISOLATED, 0, step + 1, s, len);
        return bpe_emit(c, s, len);
    }
    return bpe_emit(c, s, len);
}

dsv4_status tok_pretokenize_and_bpe(const dsv4_tokenizer *tok, const char *text, size_t len,
                                    tok_ids *out)
{
    if (!len) return DSV4_OK;
    pre_ctx c = {tok, NULL, out};
    c.md = pcre2_match_data_create(4, NULL);
    if (!c.md) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer: PCRE2 match data");
    dsv4_status st = run_step(&c, 0, text, len);
    pcre2_match_data_free(c.md);
    return st;
}
