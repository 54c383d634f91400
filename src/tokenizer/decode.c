/*
 * decode.c - ids to text, whole or streamed.
 *
 * Each id decodes to fixed bytes (load.c's table: the byte-level reverse map, or an added
 * token's own text), so decoding is concatenation; DSV4_DECODE_SKIP_SPECIAL drops ids whose
 * added token is "special": true, as HF's skip_special_tokens does. The bytes are returned as
 * they are: HF replaces invalid UTF-8 with U+FFFD after joining, which only differs when the
 * ids spell invalid bytes, and keeping them makes decode(encode(x)) == x for any x.
 *
 * The streaming detokenizer returns, after each id, the text that is now final: a token that
 * ends inside a multi-byte character (byte-level BPE splits rare characters and emoji across
 * tokens) is held back until the character completes, so a client never prints half of one.
 */
#include "tokenizer.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

static dsv4_status check_id(const dsv4_tokenizer *tok, int32_t id)
{
    if (id < 0 || id >= tok->n_ids || !tok->id_bytes[id])
        return dsv4_fail(DSV4_ERR_INPUT, "token id %d is not in the vocabulary (0..%d)", id,
                         tok->n_ids - 1);
    return DSV4_OK;
}

static int skipped(const dsv4_tokenizer *tok, int32_t id, unsigned flags)
{
    return (flags & DSV4_DECODE_SKIP_SPECIAL) && (tok->id_flags[id] & TOK_ID_SPECIAL);
}

dsv4_status dsv4_tokenizer_decode(const dsv4_tokenizer *tok, const int32_t *ids, size_t n,
                                  unsigned flags, char **text, size_t *len)
{
    dsv4_clear_error();
    if (!tok || !text || (!ids && n))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "tokenizer_decode: NULL argument");
    if (flags & ~(unsigned)DSV4_DECODE_SKIP_SPECIAL)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "tokenizer_decode: unknown flags 0x%x", flags);
    *text = NULL;
    if (len) *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        DSV4_TRY(check_id(tok, ids[i]));
        if (!skipped(tok, ids[i], flags)) total += tok->id_nbytes[ids[i]];
    }
    char *out = malloc(total + 1);
    if (!out) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer_decode: %zu bytes", total);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (skipped(tok, ids[i], flags)) continue;
        memcpy(out + k, tok->id_bytes[ids[i]], tok->id_nbytes[ids[i]]);
        k += tok->id_nbytes[ids[i]];
    }
    out[k] = 0;
    *text = out;
    if (len) *len = k;
    return DSV4_OK;
}

struct dsv4_detokenizer {
    const dsv4_tokenizer *tok;
    unsigned flags;
    char *buf; /* held-back bytes first, then the text handed out by the last call */
    size_t held, cap;
};

dsv4_status dsv4_detokenizer_open(const dsv4_tokenizer *tok, unsigned flags, dsv4_detokenizer **out)
{
    dsv4_clear_error();
    if (!tok || !out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "detokenizer_open: NULL");
    if (flags & ~(unsigned)DSV4_DECODE_SKIP_SPECIAL)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "detokenizer_open: unknown flags 0x%x", flags);
    dsv4_detokenizer *d = calloc(1, sizeof *d);
    if (!d) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "detokenizer_open");
    d->tok = tok;
    d->flags = flags;
    *out = d;
    return DSV4_OK;
}

void dsv4_detokenizer_close(dsv4_detokenizer *d)
{
    if (!d) return;
    free(d->buf);
    free(d);
}

/* How many bytes at the end of s[0..n) are an incomplete but so far valid UTF-8 character. */
static size_t incomplete_tail(const unsigned char *s, size_t n)
{
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = s[n - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back */
        size_t need = c >= 0xF0 && c < 0xF5   ? 4
                      : c >= 0xE0 && c < 0xF0 ? 3
                      : c >= 0xC2 && c < 0xE0 ? 2
                                              : 1;
        if (need <= back) return 0;
        /* The bytes so far must be a prefix some valid sequence could complete. */
        unsigned char tmp[4] = {0x80, 0x80, 0x80, 0x80};
        memcpy(tmp, s + n - back, back);
        if (back >= 2) {
            if (c == 0xE0 && tmp[1] < 0xA0) return 0;
            if (c == 0xED && tmp[1] >= 0xA0) return 0;
            if (c == 0xF0 && tmp[1] < 0x90) return 0;
            if (c == 0xF4 && tmp[1] >= 0x90) return 0;
        }
        return back;
    }
    return 0;
}

dsv4_status dsv4_detokenizer_push(dsv4_detokenizer *d, int32_t id, const char **text, size_t *len)
{
    dsv4_clear_error();
    if (!d || !text || !len) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "detokenizer_push: NULL");
    *text = "";
    *len = 0;
    DSV4_TRY(check_id(d->tok, id));
    if (skipped(d->tok, id, d->flags)) return DSV4_OK;
    size_t add = d->tok->id_nbytes[id], need = d->held + add + 1;
    if (need > d->cap) {
        size_t cap = d->cap ? d->cap : 64;
        while (cap < need) cap *= 2;
        char *b = realloc(d->buf, cap);
        if (!b) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "detokenizer_push");
        d->buf = b;
        d->cap = cap;
    }
    /* The previous call's text was handed out from buf after the held bytes; it is no longer
     * valid, so the held bytes move to the front (they already are) and the new ones follow. */
    memcpy(d->buf + d->held, d->tok->id_bytes[id], add);
    size_t n = d->held + add;
    size_t keep = incomplete_tail((const unsigned char *)d->buf, n);
    size_t emit = n - keep;
    /* Hand out buf[0..emit); the kept tail moves to the front on the next call. */
    if (keep) {
        char tail[4];
        memcpy(tail, d->buf + emit, keep);
        /* Text goes out from a second region so the held tail can sit at the front. */
        if (d->cap < n + keep + 1) {
            char *b = realloc(d->buf, n + keep + 1);
            if (!b) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "detokenizer_push");
            d->buf = b;
            d->cap = n + keep + 1;
        }
        memmove(d->buf + keep, d->buf, emit);
        memcpy(d->buf, tail, keep);
        d->buf[keep + emit] = 0;
        *text = d->buf + keep;
    } else {
        d->buf[emit] = 0;
        *text = d->buf;
    }
    *len = emit;
    d->held = keep;
    return DSV4_OK;
}

dsv4_status dsv4_detokenizer_flush(dsv4_detokenizer *d, const char **text, size_t *len)
{
    dsv4_clear_error();
    if (!d || !text || !len) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "detokenizer_flush: NULL");
    *text = "";
    *len = 0;
    if (!d->held) return DSV4_OK;
    /* Whatever is held can no longer complete: hand it out as it is. */
    *len = d->held;
    *text = d->buf;
    d->held = 0;
    if (d->cap > *len) d->buf[*len] = 0;
    return DSV4_OK;
}
