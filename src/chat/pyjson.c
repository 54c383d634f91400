/*
 * pyjson.c - a small JSON tree reader and a writer that prints what Python's
 * json.dumps(value, ensure_ascii=False) prints: ", " and ": " separators, keys in their
 * original order, non-ASCII left as is, control characters as \u00XX (lower-case hex). Numbers
 * are kept as written, which is what Python prints for integers and for floats already in
 * their shortest form ("1.0", "2.5e-05"); other spellings ("1.50", "1E2") would differ.
 */
#include "chat.h"

#include "core/error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void buf_add(chat_buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

void buf_puts(chat_buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

dsv4_status buf_finish(chat_buf *b, char **out)
{
    if (b->oom) {
        buf_free(b);
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat: building a %zu-byte string", b->len);
    }
    buf_add(b, "", 0);
    if (b->oom) return buf_finish(b, out);
    *out = b->s;
    b->s = NULL;
    b->len = b->cap = 0;
    return DSV4_OK;
}

void buf_free(chat_buf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

/* ---- reader ---------------------------------------------------------------------------- */

typedef struct pj_reader {
    const char *s, *end, *start, *what;
    int depth;
} pj_reader;

static dsv4_status pj_err(pj_reader *r, const char *why)
{
    return dsv4_fail(DSV4_ERR_INPUT, "%s: invalid JSON at offset %zu: %s", r->what,
                     (size_t)(r->s - r->start), why);
}

static void skip_ws(pj_reader *r)
{
    while (r->s < r->end && (*r->s == ' ' || *r->s == '\t' || *r->s == '\n' || *r->s == '\r'))
        r->s++;
}

static int hex4(const char *p, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return 0;
        *v = *v << 4 | (uint32_t)d;
    }
    return 1;
}

static size_t put_utf8(uint32_t cp, char *o)
{
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)), o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static dsv4_status read_string(pj_reader *r, char **out, size_t *out_len)
{
    r->s++; /* opening quote */
    char *o = malloc((size_t)(r->end - r->s) + 1), *w = o;
    if (!o) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: JSON string", r->what);
    while (r->s < r->end && *r->s != '"') {
        unsigned char c = (unsigned char)*r->s;
        if (c < 0x20) {
            free(o);
            return pj_err(r, "control character in a string");
        }
        if (c != '\\') {
            *w++ = (char)c;
            r->s++;
            continue;
        }
        if (r->end - r->s < 2) break;
        char e = r->s[1];
        r->s += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (simple && e) {
            *w++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            continue;
        }
        uint32_t cp, lo;
        if (e != 'u' || r->end - r->s < 4 || !hex4(r->s, &cp)) {
            free(o);
            return pj_err(r, "bad escape");
        }
        r->s += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && r->end - r->s >= 6 && r->s[0] == '\\' &&
            r->s[1] == 'u' && hex4(r->s + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            r->s += 6;
        } else if (cp >= 0xD800 && cp < 0xE000) {
            free(o);
            return pj_err(r, "unpaired surrogate escape");
        }
        w += put_utf8(cp, w);
    }
    if (r->s >= r->end) {
        free(o);
        return pj_err(r, "unterminated string");
    }
    r->s++;
    *w = 0;
    *out = o;
    *out_len = (size_t)(w - o);
    return DSV4_OK;
}

static dsv4_status read_value(pj_reader *r, pj_node **out);

static dsv4_status read_container(pj_reader *r, pj_node *n, char close)
{
    r->s++;
    skip_ws(r);
    if (r->s < r->end && *r->s == close) {
        r->s++;
        return DSV4_OK;
    }
    pj_node **tail = &n->child;
    for (;;) {
        char *key = NULL;
        size_t key_len = 0;
        skip_ws(r);
        if (close == '}') {
            if (r->s >= r->end || *r->s != '"') return pj_err(r, "expected a member name");
            DSV4_TRY(read_string(r, &key, &key_len));
            skip_ws(r);
            if (r->s >= r->end || *r->s != ':') {
                free(key);
                return pj_err(r, "expected ':'");
            }
            r->s++;
        }
        pj_node *child = NULL;
        dsv4_status st = read_value(r, &child);
        if (st != DSV4_OK) {
            free(key);
            pj_free(child);
            return st;
        }
        child->key = key;
        child->key_len = key_len;
        *tail = child;
        tail = &child->next;
        skip_ws(r);
        if (r->s < r->end && *r->s == ',') {
            r->s++;
            continue;
        }
        if (r->s < r->end && *r->s == close) {
            r->s++;
            return DSV4_OK;
        }
        return pj_err(r, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static dsv4_status read_value(pj_reader *r, pj_node **out)
{
    skip_ws(r);
    if (r->s >= r->end) return pj_err(r, "unexpected end");
    if (++r->depth > 200) return pj_err(r, "nested too deeply");
    pj_node *n = calloc(1, sizeof *n);
    if (!n) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: JSON", r->what);
    *out = n;
    dsv4_status st = DSV4_OK;
    char c = *r->s;
    if (c == '{')
        n->type = PJ_OBJECT, st = read_container(r, n, '}');
    else if (c == '[')
        n->type = PJ_ARRAY, st = read_container(r, n, ']');
    else if (c == '"')
        n->type = PJ_STRING, st = read_string(r, &n->str, &n->len);
    else if (r->end - r->s >= 4 && !memcmp(r->s, "null", 4))
        n->type = PJ_NULL, r->s += 4;
    else if (r->end - r->s >= 4 && !memcmp(r->s, "true", 4))
        n->type = PJ_TRUE, r->s += 4;
    else if (r->end - r->s >= 5 && !memcmp(r->s, "false", 5))
        n->type = PJ_FALSE, r->s += 5;
    else if (c == '-' || (c >= '0' && c <= '9')) {
        const char *p = r->s;
        if (*p == '-') p++;
        if (p >= r->end || *p < '0' || *p > '9') return pj_err(r, "bad number");
        while (p < r->end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' ||
                              *p == '+' || *p == '-'))
            p++;
        n->type = PJ_NUMBER;
        n->len = (size_t)(p - r->s);
        n->str = malloc(n->len + 1);
        if (!n->str) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: JSON", r->what);
        memcpy(n->str, r->s, n->len);
        n->str[n->len] = 0;
        r->s = p;
    } else {
        return pj_err(r, "unexpected character");
    }
    r->depth--;
    return st;
}

void pj_free(pj_node *n)
{
    while (n) {
        pj_node *next = n->next;
        pj_free(n->child);
        free(n->str);
        free(n->key);
        free(n);
        n = next;
    }
}

dsv4_status pj_parse(const char *s, size_t len, const char *what, pj_node **out)
{
    pj_reader r = {s, s + len, s, what, 0};
    pj_node *n = NULL;
    dsv4_status st = read_value(&r, &n);
    if (st == DSV4_OK) {
        skip_ws(&r);
        if (r.s != r.end) st = pj_err(&r, "text after the value");
    }
    if (st != DSV4_OK) {
        pj_free(n);
        return st;
    }
    *out = n;
    return DSV4_OK;
}

const pj_node *pj_get(const pj_node *obj, const char *key)
{
    const pj_node *found = NULL;
    if (!obj || obj->type != PJ_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (const pj_node *c = obj->child; c; c = c->next)
        if (c->key_len == kl && !memcmp(c->key, key, kl)) found = c;
    return found;
}

int pj_truthy(const pj_node *n)
{
    if (!n) return 0;
    switch (n->type) {
    case PJ_NULL:
    case PJ_FALSE:
        return 0;
    case PJ_TRUE:
        return 1;
    case PJ_NUMBER:
        return strspn(n->str, "-0.eE+") != n->len; /* 0, -0, 0.0 are false */
    case PJ_STRING:
        return n->len > 0;
    default:
        return n->child != NULL;
    }
}

/* ---- writer ---------------------------------------------------------------------------- */

void pj_dump_string(chat_buf *b, const char *s, size_t len)
{
    buf_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[8];
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c < 0x20) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            esc = tmp;
        }
        if (!esc) continue;
        buf_add(b, s + run, i - run);
        buf_puts(b, esc);
        run = i + 1;
    }
    buf_add(b, s + run, len - run);
    buf_add(b, "\"", 1);
}

void pj_dump(chat_buf *b, const pj_node *n)
{
    switch (n->type) {
    case PJ_NULL:
        buf_puts(b, "null");
        break;
    case PJ_TRUE:
        buf_puts(b, "true");
        break;
    case PJ_FALSE:
        buf_puts(b, "false");
        break;
    case PJ_NUMBER:
        buf_add(b, n->str, n->len);
        break;
    case PJ_STRING:
        pj_dump_string(b, n->str, n->len);
        break;
    case PJ_ARRAY:
    case PJ_OBJECT:
        buf_puts(b, n->type == PJ_ARRAY ? "[" : "{");
        for (const pj_node *c = n->child; c; c = c->next) {
            if (c != n->child) buf_puts(b, ", ");
            if (n->type == PJ_OBJECT) {
                pj_dump_string(b, c->key, c->key_len);
                buf_puts(b, ": ");
            }
            pj_dump(b, c);
        }
        buf_puts(b, n->type == PJ_ARRAY ? "]" : "}");
        break;
    }
}
