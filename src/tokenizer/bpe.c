/*
 * bpe.c - the BPE merge loop for one pre-tokenized piece, and the piece cache in front of it.
 *
 * The loop follows HF tokenizers' Word::merge_all exactly: a min-heap of candidate merges
 * ordered by (rank, position); a popped candidate is applied only if its left symbol is still
 * alive, still has a right neighbour, and that pair still merges to the same token. Symbols are
 * a doubly linked list over an array, so a piece of n bytes costs O(n log n) whatever its
 * content (1 MB of spaces is one piece and must not go quadratic).
 */
#include "tokenizer.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* ---- merges table ----------------------------------------------------------------------- */

static uint64_t pair_key(int32_t left, int32_t right)
{
    return ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
}

static size_t pair_slot(uint64_t key, size_t mask)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ h >> 31) & mask;
}

dsv4_status tok_merges_init(tok_merges *m, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2) cap <<= 1;
    m->slots = calloc(cap, sizeof *m->slots);
    m->cap = cap;
    m->count = 0;
    if (!m->slots) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer: merges table");
    return DSV4_OK;
}

void tok_merges_free(tok_merges *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

dsv4_status tok_merges_put(tok_merges *m, int32_t left, int32_t right, int32_t rank, int32_t merged)
{
    if ((m->count + 1) * 2 > m->cap) {
        tok_merges bigger;
        DSV4_TRY(tok_merges_init(&bigger, m->cap));
        for (size_t i = 0; i < m->cap; i++) {
            tok_merge_slot *s = &m->slots[i];
            if (!s->key) continue;
            size_t j = pair_slot(s->key, bigger.cap - 1);
            while (bigger.slots[j].key) j = (j + 1) & (bigger.cap - 1);
            bigger.slots[j] = *s;
            bigger.count++;
        }
        tok_merges_free(m);
        *m = bigger;
    }
    uint64_t key = pair_key(left, right);
    size_t mask = m->cap - 1, i = pair_slot(key, mask);
    while (m->slots[i].key && m->slots[i].key != key) i = (i + 1) & mask;
    if (!m->slots[i].key) m->count++;
    /* A repeated pair keeps the later rank, as HF's HashMap collect does. */
    m->slots[i] = (tok_merge_slot){key, rank, merged};
    return DSV4_OK;
}

static const tok_merge_slot *merges_get(const tok_merges *m, int32_t left, int32_t right)
{
    uint64_t key = pair_key(left, right);
    size_t mask = m->cap - 1, i = pair_slot(key, mask);
    while (m->slots[i].key) {
        if (m->slots[i].key == key) return &m->slots[i];
        i = (i + 1) & mask;
    }
    return NULL;
}

/* ---- merge loop -------------------------------------------------------------------------- */

typedef struct cand {
    int32_t rank, pos, merged;
} cand;

static int cand_less(const cand *a, const cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0], last = h[--*n];
    size_t i = 0, count = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const cand *best = &last;
        if (l < count && cand_less(&h[l], best)) m = l, best = &h[l];
        if (r < count && cand_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (count) h[i] = last;
    return top;
}

/* Merges the bytes of one piece; appends the resulting ids. */
static dsv4_status bpe_merge(const dsv4_tokenizer *tok, const unsigned char *s, size_t n,
                             tok_ids *out)
{
    enum { SMALL = 64 };
    int32_t id_s[SMALL], prev_s[SMALL], next_s[SMALL];
    cand heap_s[2 * SMALL];
    int32_t *id = id_s, *prev = prev_s, *next = next_s;
    cand *heap = heap_s;
    if (n > SMALL) {
        id = malloc(n * sizeof *id);
        prev = malloc(n * sizeof *prev);
        next = malloc(n * sizeof *next);
        heap = malloc(2 * n * sizeof *heap); /* n-1 initial candidates + at most 1 net per merge */
        if (!id || !prev || !next || !heap) {
            free(id), free(prev), free(next), free(heap);
            return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer: BPE of a %zu-byte piece", n);
        }
    }
    size_t nheap = 0;
    for (size_t i = 0; i < n; i++) {
        id[i] = tok->byte_token[s[i]];
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const tok_merge_slot *m = merges_get(&tok->merges, id[i], id[i + 1]);
        if (m) heap_push(heap, &nheap, (cand){m->rank, (int32_t)i, m->merged});
    }
    /* Each applied merge pops one candidate and pushes at most two, and there are at most n-1
     * merges: the heap stays under 2n entries. */
    while (nheap) {
        cand c = heap_pop(heap, &nheap);
        int32_t p = c.pos;
        if (id[p] < 0 || next[p] < 0) continue;
        int32_t q = next[p];
        const tok_merge_slot *m = merges_get(&tok->merges, id[p], id[q]);
        if (!m || m->merged != c.merged) continue;
        id[p] = c.merged;
        id[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        if (prev[p] >= 0) {
            const tok_merge_slot *ml = merges_get(&tok->merges, id[prev[p]], id[p]);
            if (ml) heap_push(heap, &nheap, (cand){ml->rank, prev[p], ml->merged});
        }
        if (next[p] >= 0) {
            const tok_merge_slot *mr = merges_get(&tok->merges, id[p], id[next[p]]);
            if (mr) heap_push(heap, &nheap, (cand){mr->rank, p, mr->merged});
        }
    }
    dsv4_status st = DSV4_OK;
    for (int32_t i = 0; i >= 0 && st == DSV4_OK; i = next[i]) st = tok_ids_push(out, id[i]);
    if (n > SMALL) free(id), free(prev), free(next), free(heap);
    return st;
}

/* ---- piece cache -------------------------------------------------------------------------- */

enum { CACHE_MAX_PIECE = 256, CACHE_MAX_ENTRIES = 1 << 16 };

void tok_cache_free(tok_cache *c)
{
    for (size_t i = 0; i < c->cap; i++) {
        free(c->slots[i].key);
        free(c->slots[i].ids);
    }
    free(c->slots);
    c->slots = NULL;
    c->cap = c->count = 0;
}

/* Looks `piece` up; on a hit appends its ids to `out` and returns 1. Caller holds the lock. */
static int cache_get(tok_cache *c, uint64_t h, const char *piece, size_t len, tok_ids *out,
                     dsv4_status *st)
{
    if (!c->cap) return 0;
    size_t mask = c->cap - 1, i = h & mask;
    for (; c->slots[i].key; i = (i + 1) & mask) {
        tok_cache_entry *e = &c->slots[i];
        if (e->hash == h && e->len == len && !memcmp(e->key, piece, len)) {
            *st = tok_ids_append(out, e->ids, e->n_ids);
            return 1;
        }
    }
    return 0;
}

/* Stores a copy; a full cache is emptied first (simple, and real text refills it quickly). A
 * failed allocation only skips caching. Caller holds the lock. */
static void cache_put(tok_cache *c, uint64_t h, const char *piece, size_t len, const int32_t *ids,
                      size_t n)
{
    if (c->count * 2 >= c->cap) {
        if (c->cap >= 2 * CACHE_MAX_ENTRIES || !c->cap) {
            size_t cap = c->cap ? c->cap : 1024;
            tok_cache_free(c);
            c->slots = calloc(cap, sizeof *c->slots);
            if (!c->slots) return;
            c->cap = cap;
        } else {
            tok_cache_entry *old = c->slots;
            size_t old_cap = c->cap;
            tok_cache_entry *slots = calloc(old_cap * 2, sizeof *slots);
            if (!slots) return;
            c->slots = slots;
            c->cap = old_cap * 2;
            for (size_t i = 0; i < old_cap; i++) {
                if (!old[i].key) continue;
                size_t j = old[i].hash & (c->cap - 1);
                while (slots[j].key) j = (j + 1) & (c->cap - 1);
                slots[j] = old[i];
            }
            free(old);
        }
    }
    char *key = malloc(len ? len : 1);
    int32_t *copy = malloc(n * sizeof *copy);
    if (!key || !copy) {
        free(key), free(copy);
        return;
    }
    memcpy(key, piece, len);
    memcpy(copy, ids, n * sizeof *copy);
    size_t mask = c->cap - 1, i = h & mask;
    while (c->slots[i].key) i = (i + 1) & mask;
    c->slots[i] = (tok_cache_entry){h, key, (uint32_t)len, (uint32_t)n, copy};
    c->count++;
}

dsv4_status tok_bpe_piece(const dsv4_tokenizer *tok, const char *piece, size_t len, tok_ids *out)
{
    if (!len) return DSV4_OK;
    const unsigned char *s = (const unsigned char *)piece;
    if (len == 1) return tok_ids_push(out, tok->byte_token[s[0]]);
    if (tok->ignore_merges) {
        /* The whole piece is a vocabulary entry: HF takes it without merging. */
        char small[4 * 64], *mapped = len <= 64 ? small : malloc(4 * len);
        if (!mapped) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer: %zu-byte piece", len);
        size_t k = 0;
        for (size_t i = 0; i < len; i++) k += tok_utf8_encode(tok_byte_cp(s[i]), mapped + k);
        int32_t id = tok_strmap_get(&tok->vocab, mapped, k);
        if (mapped != small) free(mapped);
        if (id >= 0) return tok_ids_push(out, id);
    }
    tok_cache *cache = (tok_cache *)&tok->cache; /* the one mutable part, under its lock */
    int cacheable = len <= CACHE_MAX_PIECE;
    uint64_t h = 0;
    if (cacheable) {
        h = tok_hash(piece, len);
        dsv4_status st = DSV4_OK;
        pthread_mutex_lock(&cache->lock);
        int hit = cache_get(cache, h, piece, len, out, &st);
        pthread_mutex_unlock(&cache->lock);
        if (hit) return st;
    }
    size_t start = out->n;
    DSV4_TRY(bpe_merge(tok, s, len, out));
    if (cacheable) {
        pthread_mutex_lock(&cache->lock);
        cache_put(cache, h, piece, len, out->v + start, out->n - start);
        pthread_mutex_unlock(&cache->lock);
    }
    return DSV4_OK;
}
