/*
 * tokenizer.h - internal layout of dsv4_tokenizer, shared by the files of src/tokenizer/.
 *
 * The tokenizer mirrors what HuggingFace `tokenizers` does with a byte-level BPE tokenizer.json:
 * added tokens are cut out first (load.c builds the tries, encode.c matches them), the rest goes
 * through the declared pre-tokenizer steps (pretokenize.c, PCRE2) and then BPE (bpe.c). decode.c
 * maps ids back to bytes. Everything here is read-only after dsv4_tokenizer_open except the piece
 * cache, which has its own lock, so one tokenizer may be shared by threads.
 */
#ifndef DSV4_TOKENIZER_TOKENIZER_H
#define DSV4_TOKENIZER_TOKENIZER_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "dsv4.h"

#include <pcre2.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ---- string -> int32 hash map (keys are borrowed byte spans) ---------------------------- */
typedef struct tok_strmap {
    const char **keys; /* NULL = empty slot */
    uint32_t *lens;
    int32_t *vals;
    size_t cap, count; /* cap is a power of two */
} tok_strmap;

uint64_t tok_hash(const void *data, size_t len);
dsv4_status tok_strmap_init(tok_strmap *m, size_t expected);
void tok_strmap_free(tok_strmap *m);
/* Inserts or overwrites. The key bytes must outlive the map. */
dsv4_status tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val);
/* Returns the value or -1. */
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len);

/* ---- BPE merges: (left id, right id) -> (rank, merged id) -------------------------------- */
typedef struct tok_merge_slot {
    uint64_t key; /* (left << 32 | right) + 1; 0 = empty */
    int32_t rank, merged;
} tok_merge_slot;

typedef struct tok_merges {
    tok_merge_slot *slots;
    size_t cap, count;
} tok_merges;

/* ---- added tokens: a byte trie for leftmost-longest matching ---------------------------- */
typedef struct tok_trie_node {
    int32_t first_child, next_sibling;
    int32_t token; /* index into tok->added, or -1 */
    uint8_t byte;
} tok_trie_node;

typedef struct tok_trie {
    tok_trie_node *nodes;
    size_t count, cap;
    uint8_t first_byte[256]; /* 1 where some token starts with this byte */
} tok_trie;

typedef struct tok_added {
    char *content;
    size_t len;
    int32_t id;
    unsigned char special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* ---- pre-tokenizer steps ------------------------------------------------------------------ */
typedef enum tok_split_behavior {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_WITH_PREVIOUS,
    TOK_SPLIT_MERGED_WITH_NEXT,
    TOK_SPLIT_CONTIGUOUS
} tok_split_behavior;

typedef struct tok_split_step {
    pcre2_code *re;
    tok_split_behavior behavior;
    int invert;
} tok_split_step;

/* ---- the piece cache: piece bytes -> ids --------------------------------------------------- */
typedef struct tok_cache_entry {
    uint64_t hash;
    char *key; /* owned; NULL = empty */
    uint32_t len, n_ids;
    int32_t *ids; /* owned */
} tok_cache_entry;

typedef struct tok_cache {
    pthread_mutex_t lock;
    tok_cache_entry *slots;
    size_t cap, count;
} tok_cache;

#define TOK_ID_ADDED   1u /* an added token (matched before BPE; decoded as its content) */
#define TOK_ID_SPECIAL 2u /* "special": true (skipped by DSV4_DECODE_SKIP_SPECIAL) */

struct dsv4_tokenizer {
    int32_t n_ids;    /* 1 + the largest id of the model vocabulary and added tokens */
    char **id_text;   /* token string as written in tokenizer.json, NUL-terminated; or NULL */
    uint32_t *id_len; /* its length in bytes */
    char **id_bytes;  /* the bytes the token decodes to (byte-level reverse map applied) */
    uint32_t *id_nbytes;
    uint8_t *id_flags;    /* TOK_ID_* */
    char *arena;          /* backing store of id_text / id_bytes strings */
    tok_strmap vocab;     /* model vocabulary: token string -> id */
    tok_strmap added_map; /* added tokens: content -> id */
    tok_merges merges;
    int ignore_merges;
    int32_t byte_token[256]; /* id of the one-byte token for each byte */

    tok_added *added;
    size_t n_added;
    tok_trie trie_raw;  /* tokens with normalized=false: matched on the raw text first */
    tok_trie trie_norm; /* normalized=true: matched in the gaps left by the first pass */

    tok_split_step *steps; /* regex splits, in declaration order */
    size_t n_steps;
    int has_byte_level; /* a ByteLevel pre-tokenizer is declared (last step) */
    int bl_add_prefix_space;
    pcre2_code *bl_regex;   /* the GPT-2 pattern when ByteLevel has use_regex=true, else NULL */
    int decoder_byte_level; /* decoder is ByteLevel (else tokens are concatenated as written) */

    tok_cache cache;
};

/* Byte-level alphabet (GPT-2): the code point byte b is written as. */
uint32_t tok_byte_cp(unsigned char b);
/* Inverse for code points < 512 (all of the alphabet); -1 if not in the alphabet. */
int tok_cp_to_byte(uint32_t cp);

/* Length of the valid UTF-8 sequence starting at s[0] (1-4), or 0 if s[0] starts none. */
size_t tok_utf8_valid_len(const unsigned char *s, size_t n);
/* Decodes one code point of valid UTF-8; returns its length. */
size_t tok_utf8_decode(const unsigned char *s, uint32_t *cp);
/* Encodes cp; returns the byte count (1-4). */
size_t tok_utf8_encode(uint32_t cp, char *out);

/* A growable id array. */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;
dsv4_status tok_ids_push(tok_ids *a, int32_t id);
dsv4_status tok_ids_append(tok_ids *a, const int32_t *ids, size_t n);

/* bpe.c */
dsv4_status tok_merges_init(tok_merges *m, size_t expected);
void tok_merges_free(tok_merges *m);
dsv4_status tok_merges_put(tok_merges *m, int32_t left, int32_t right, int32_t rank,
                           int32_t merged);
/* BPE-encodes one pre-tokenized piece (raw bytes; the byte-level mapping is implicit) and
 * appends the ids. Uses and fills the piece cache. */
dsv4_status tok_bpe_piece(const dsv4_tokenizer *tok, const char *piece, size_t len, tok_ids *out);
void tok_cache_free(tok_cache *c);

/* pretokenize.c: runs the declared split steps and BPE over a span of valid UTF-8 that holds
 * no added token. */
dsv4_status tok_pretokenize_and_bpe(const dsv4_tokenizer *tok, const char *text, size_t len,
                                    tok_ids *out);
/* Compiles a pattern with UTF | UCP and JITs it. `literal` quotes it (Split "String" form). */
dsv4_status tok_regex_compile(const char *pattern, size_t len, int literal, pcre2_code **out);

/* load.c */
dsv4_status tok_trie_add(tok_trie *t, const char *s, size_t len, int32_t token);
void tok_trie_free(tok_trie *t);

#endif
