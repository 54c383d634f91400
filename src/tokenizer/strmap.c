/*
 * strmap.c - the open-addressing hash map from byte strings to ids used for the vocabulary and
 * the added-token table, plus the growable id array. Keys are borrowed: they point into the
 * tokenizer's arena, so the map holds no copies of 128k strings.
 */
#include "tokenizer.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* 64-bit FNV-1a folded with a final mix; keys are short (vocabulary entries, text pieces). */
uint64_t tok_hash(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 1099511628211ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

dsv4_status tok_strmap_init(tok_strmap *m, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2) cap <<= 1;
    m->keys = calloc(cap, sizeof *m->keys);
    m->lens = calloc(cap, sizeof *m->lens);
    m->vals = calloc(cap, sizeof *m->vals);
    m->cap = cap;
    m->count = 0;
    if (!m->keys || !m->lens || !m->vals)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer: hash map of %zu slots", cap);
    return DSV4_OK;
}

void tok_strmap_free(tok_strmap *m)
{
    free(m->keys);
    free(m->lens);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static dsv4_status strmap_grow(tok_strmap *m)
{
    tok_strmap bigger;
    DSV4_TRY(tok_strmap_init(&bigger, m->cap));
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) DSV4_TRY(tok_strmap_put(&bigger, m->keys[i], m->lens[i], m->vals[i]));
    tok_strmap_free(m);
    *m = bigger;
    return DSV4_OK;
}

dsv4_status tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val)
{
    if ((m->count + 1) * 2 > m->cap) DSV4_TRY(strmap_grow(m));
    size_t mask = m->cap - 1, i = tok_hash(key, len) & mask;
    while (m->keys[i]) {
        if (m->lens[i] == len && !memcmp(m->keys[i], key, len)) {
            m->vals[i] = val;
            return DSV4_OK;
        }
        i = (i + 1) & mask;
    }
    m->keys[i] = key;
    m->lens[i] = (uint32_t)len;
    m->vals[i] = val;
    m->count++;
    return DSV4_OK;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len)
{
    if (!m->cap) return -1;
    size_t mask = m->cap - 1, i = tok_hash(key, len) & mask;
    while (m->keys[i]) {
        if (m->lens[i] == len && !memcmp(m->keys[i], key, len)) return m->vals[i];
        i = (i + 1) & mask;
    }
    return -1;
}

dsv4_status tok_ids_append(tok_ids *a, const int32_t *ids, size_t n)
{
    if (a->n + n > a->cap) {
        size_t cap = a->cap ? a->cap : 64;
        while (cap < a->n + n) cap *= 2;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer: %zu ids", cap);
        a->v = v;
        a->cap = cap;
    }
    memcpy(a->v + a->n, ids, n * sizeof *ids);
    a->n += n;
    return DSV4_OK;
}

dsv4_status tok_ids_push(tok_ids *a, int32_t id)
{
    return tok_ids_append(a, &id, 1);
}
