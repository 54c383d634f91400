/*
 * encode.c - text to ids: invalid UTF-8 is split off byte by byte, added tokens are cut out
 * before anything else, and the gaps go to the pre-tokenizer and BPE.
 *
 * Added tokens follow HF tokenizers' AddedVocabulary (extract_and_normalize / find_matches):
 * tokens with normalized=false are matched first on the raw text, then tokens with
 * normalized=true in the gaps (the normalizer is the identity here; load.c refuses others).
 * Matching is leftmost-longest over all tokens of a pass; a match that is dropped (a special
 * token under DSV4_ENCODE_SPLIT_SPECIAL, a single_word token inside a word) still consumes its
 * span, as the Aho-Corasick iterator in HF does. lstrip/rstrip widen the match over adjacent
 * whitespace (Unicode White_Space, as Rust's char::is_whitespace).
 *
 * Invalid UTF-8 (our choice; HF's Python API takes str and cannot receive it): each byte that
 * does not start a valid sequence becomes the byte-level token of that byte, and acts as a
 * boundary: the valid runs around it are encoded as if they were separate texts. So
 * decode(encode(x)) == x for any bytes, and the result equals HF's encoding of the valid runs
 * with the byte tokens in between. DSV4_ENCODE_REJECT_INVALID turns it into DSV4_ERR_INPUT.
 */
#include "tokenizer.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

static int is_white_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Approximates Rust's `is_alphanumeric() || '_'` (used by single_word): ASCII exactly, and any
 * non-ASCII code point that is not white space. */
static int is_word_char(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    return !is_white_space(c);
}

/* The code point that ends at s[end) (valid UTF-8). */
static uint32_t cp_before(const char *s, size_t end, size_t *start)
{
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    uint32_t cp;
    tok_utf8_decode((const unsigned char *)s + i, &cp);
    *start = i;
    return cp;
}

/* Longest token of `trie` starting at s[pos]; returns its index into tok->added or -1. */
static int32_t longest_at(const tok_trie *t, const char *s, size_t len, size_t pos, size_t *end)
{
    int32_t node = 0, best = -1;
    for (size_t i = pos; i < len; i++) {
        int32_t child = t->nodes[node].first_child;
        while (child >= 0 && t->nodes[child].byte != (uint8_t)s[i])
            child = t->nodes[child].next_sibling;
        if (child < 0) break;
        node = child;
        if (t->nodes[node].token >= 0) best = t->nodes[node].token, *end = i + 1;
    }
    return best;
}

static dsv4_status encode_gap(const dsv4_tokenizer *tok, int pass, const char *s, size_t len,
                              unsigned flags, tok_ids *out);

/* One added-token pass over s (pass 0: normalized=false tokens, pass 1: normalized=true). */
static dsv4_status added_pass(const dsv4_tokenizer *tok, int pass, const char *s, size_t len,
                              unsigned flags, tok_ids *out)
{
    const tok_trie *t = pass == 0 ? &tok->trie_raw : &tok->trie_norm;
    if (!t->count) return encode_gap(tok, pass, s, len, flags, out);
    size_t done = 0; /* end of the last accepted token */
    size_t pos = 0;
    while (pos < len) {
        if (!t->first_byte[(uint8_t)s[pos]]) {
            pos++;
            continue;
        }
        size_t end = 0;
        int32_t k = longest_at(t, s, len, pos, &end);
        if (k < 0) {
            pos++;
            continue;
        }
        const tok_added *a = &tok->added[k];
        size_t start = pos, stop = end;
        pos = end;
        if (a->special && (flags & DSV4_ENCODE_SPLIT_SPECIAL)) continue;
        if (a->single_word) {
            size_t b;
            int word_before = start > 0 && is_word_char(cp_before(s, start, &b));
            uint32_t next = 0;
            int word_after = stop < len && (tok_utf8_decode((const unsigned char *)s + stop, &next),
                                            is_word_char(next));
            if (word_before || word_after) continue;
        }
        if (a->lstrip) {
            size_t b;
            while (start > done && is_white_space(cp_before(s, start, &b))) start = b;
        }
        if (a->rstrip) {
            uint32_t cp;
            size_t n;
            while (stop < len && (n = tok_utf8_decode((const unsigned char *)s + stop, &cp)) &&
                   is_white_space(cp))
                stop += n;
            pos = stop;
        }
        DSV4_TRY(encode_gap(tok, pass, s + done, start - done, flags, out));
        DSV4_TRY(tok_ids_push(out, a->id));
        done = stop;
    }
    return encode_gap(tok, pass, s + done, len - done, flags, out);
}

static dsv4_status encode_gap(const dsv4_tokenizer *tok, int pass, const char *s, size_t len,
                              unsigned flags, tok_ids *out)
{
    if (!len) return DSV4_OK;
    if (pass == 0) return added_pass(tok, 1, s, len, flags, out);
    return tok_pretokenize_and_bpe(tok, s, len, out);
}

dsv4_status dsv4_tokenizer_encode(const dsv4_tokenizer *tok, const char *text, size_t len,
                                  unsigned flags, int32_t **ids, size_t *n_ids)
{
    dsv4_clear_error();
    if (!tok || !ids || !n_ids || (!text && len))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "tokenizer_encode: NULL argument");
    if (flags & ~(unsigned)(DSV4_ENCODE_SPLIT_SPECIAL | DSV4_ENCODE_REJECT_INVALID))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "tokenizer_encode: unknown flags 0x%x", flags);
    *ids = NULL;
    *n_ids = 0;
    if (!text) text = "";
    tok_ids out = {0};
    dsv4_status st = DSV4_OK;
    const unsigned char *s = (const unsigned char *)text;
    size_t run = 0, i = 0;
    while (i < len && st == DSV4_OK) {
        size_t n = s[i] < 0x80 ? 1 : tok_utf8_valid_len(s + i, len - i);
        if (n) {
            i += n;
            continue;
        }
        if (flags & DSV4_ENCODE_REJECT_INVALID) {
            st = dsv4_fail(DSV4_ERR_INPUT, "text is not valid UTF-8: byte 0x%02x at offset %zu",
                           s[i], i);
            break;
        }
        st = added_pass(tok, 0, text + run, i - run, flags, &out);
        if (st == DSV4_OK) st = tok_ids_push(&out, tok->byte_token[s[i]]);
        run = ++i;
    }
    if (st == DSV4_OK) st = added_pass(tok, 0, text + run, len - run, flags, &out);
    if (st != DSV4_OK) {
        free(out.v);
        return st;
    }
    if (!out.v) out.v = malloc(sizeof *out.v); /* a valid pointer even for zero ids */
    if (!out.v) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer_encode");
    *ids = out.v;
    *n_ids = out.n;
    return DSV4_OK;
}

void dsv4_free(void *p)
{
    free(p);
}
