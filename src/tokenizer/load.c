/*
 * load.c - reads tokenizer.json into a dsv4_tokenizer: the BPE vocabulary and ranked merges,
 * the added tokens (and the tries they are matched with), the declared pre-tokenizer steps and
 * the decoder. Anything this tokenizer cannot reproduce exactly (a normalizer, byte fallback,
 * an unknown pre-tokenizer) is refused with DSV4_ERR_UNSUPPORTED rather than approximated.
 */
#include "tokenizer.h"

#include "core/error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- tries ------------------------------------------------------------------------------- */

static dsv4_status trie_node(tok_trie *t, uint8_t byte, int32_t *out)
{
    if (t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        tok_trie_node *n = realloc(t->nodes, cap * sizeof *n);
        if (!n) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer: added-token trie");
        t->nodes = n;
        t->cap = cap;
    }
    t->nodes[t->count] = (tok_trie_node){-1, -1, -1, byte};
    *out = (int32_t)t->count++;
    return DSV4_OK;
}

dsv4_status tok_trie_add(tok_trie *t, const char *s, size_t len, int32_t token)
{
    int32_t node;
    if (!t->count) DSV4_TRY(trie_node(t, 0, &node)); /* the root */
    node = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t child = t->nodes[node].first_child;
        while (child >= 0 && t->nodes[child].byte != b) child = t->nodes[child].next_sibling;
        if (child < 0) {
            DSV4_TRY(trie_node(t, b, &child));
            t->nodes[child].next_sibling = t->nodes[node].first_child;
            t->nodes[node].first_child = child;
        }
        node = child;
    }
    t->nodes[node].token = token;
    if (len) t->first_byte[(uint8_t)s[0]] = 1;
    return DSV4_OK;
}

void tok_trie_free(tok_trie *t)
{
    free(t->nodes);
    memset(t, 0, sizeof *t);
}

/* ---- JSON helpers ---------------------------------------------------------------------- */

static int json_flag(const cJSON *obj, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static const char *json_type(const cJSON *obj)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : "";
}

static dsv4_status read_file(const char *path, char **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return dsv4_fail(DSV4_ERR_IO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 22;
            char *b = realloc(buf, cap + 1);
            if (!b) {
                free(buf), fclose(f);
                return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: %zu bytes", path, cap);
            }
            buf = b;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return dsv4_fail(DSV4_ERR_IO, "%s: read error", path);
    }
    buf[n] = 0;
    *data = buf;
    *size = n;
    return DSV4_OK;
}

/* ---- sections of tokenizer.json -------------------------------------------------------- */

static dsv4_status load_model_header(dsv4_tokenizer *tok, const cJSON *model, const char *path)
{
    if (!cJSON_IsObject(model)) return dsv4_fail(DSV4_ERR_FORMAT, "%s: no \"model\" object", path);
    const char *type = json_type(model);
    if (*type && strcmp(type, "BPE"))
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: model type \"%s\" (only BPE)", path, type);
    if (json_flag(model, "byte_fallback", 0))
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: BPE byte_fallback", path);
    const char *keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, keys[i]);
        if (cJSON_IsString(v) && v->valuestring[0])
            return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: BPE %s", path, keys[i]);
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: BPE dropout (random merges)", path);
    tok->ignore_merges = json_flag(model, "ignore_merges", 0);
    return DSV4_OK;
}

/* Sizes the id tables from the vocabulary and the added tokens. */
static dsv4_status size_tables(dsv4_tokenizer *tok, const cJSON *vocab, const cJSON *added,
                               const char *path, size_t *text_bytes)
{
    int64_t max_id = -1;
    size_t bytes = 0, n = 0;
    for (const cJSON *e = vocab->child; e; e = e->next, n++) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 1e8)
            return dsv4_fail(DSV4_ERR_FORMAT, "%s: vocab entry \"%s\" has no valid id", path,
                             e->string);
        if (e->valueint > max_id) max_id = e->valueint;
        bytes += strlen(e->string) + 1;
    }
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 1e8 ||
            !cJSON_IsString(content))
            return dsv4_fail(DSV4_ERR_FORMAT, "%s: added_tokens entry without id/content", path);
        if (id->valueint > max_id) max_id = id->valueint;
        bytes += strlen(content->valuestring) + 1;
    }
    if (max_id < 0) return dsv4_fail(DSV4_ERR_FORMAT, "%s: empty vocabulary", path);
    tok->n_ids = (int32_t)max_id + 1;
    size_t ni = (size_t)tok->n_ids;
    tok->id_text = calloc(ni, sizeof *tok->id_text);
    tok->id_len = calloc(ni, sizeof *tok->id_len);
    tok->id_bytes = calloc(ni, sizeof *tok->id_bytes);
    tok->id_nbytes = calloc(ni, sizeof *tok->id_nbytes);
    tok->id_flags = calloc(ni, sizeof *tok->id_flags);
    /* Room for each string twice (as written, and decoded: never longer than written). */
    tok->arena = malloc(2 * bytes + 2);
    if (!tok->id_text || !tok->id_len || !tok->id_bytes || !tok->id_nbytes || !tok->id_flags ||
        !tok->arena)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: tables for %zu ids", path, ni);
    *text_bytes = bytes;
    (void)n;
    return DSV4_OK;
}

static dsv4_status load_vocab(dsv4_tokenizer *tok, const cJSON *vocab, size_t *arena_used,
                              const char *path)
{
    DSV4_TRY(tok_strmap_init(&tok->vocab, (size_t)cJSON_GetArraySize(vocab)));
    for (const cJSON *e = vocab->child; e; e = e->next) {
        size_t len = strlen(e->string);
        char *s = tok->arena + *arena_used;
        memcpy(s, e->string, len + 1);
        *arena_used += len + 1;
        int32_t id = e->valueint;
        if (tok->id_text[id])
            return dsv4_fail(DSV4_ERR_FORMAT, "%s: id %d used by two vocab entries", path, id);
        tok->id_text[id] = s;
        tok->id_len[id] = (uint32_t)len;
        DSV4_TRY(tok_strmap_put(&tok->vocab, s, len, id));
    }
    char ch[4];
    for (int b = 0; b < 256; b++) {
        size_t k = tok_utf8_encode(tok_byte_cp((unsigned char)b), ch);
        tok->byte_token[b] = tok_strmap_get(&tok->vocab, ch, k);
        if (tok->byte_token[b] < 0)
            return dsv4_fail(DSV4_ERR_FORMAT,
                             "%s: vocab lacks the byte-level token for byte 0x%02x", path, b);
    }
    return DSV4_OK;
}

/* One merge: "left right" (older files) or ["left", "right"]. */
static dsv4_status merge_parts(const cJSON *m, size_t i, const char *path, const char **l,
                               size_t *ll, const char **r, size_t *rl, char *buf, size_t bufsz)
{
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return dsv4_fail(DSV4_ERR_FORMAT, "%s: merge %zu \"%s\" is not two tokens", path, i, s);
        *l = s, *ll = (size_t)(sp - s), *r = sp + 1, *rl = strlen(sp + 1);
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
               cJSON_IsString(m->child->next)) {
        *l = m->child->valuestring, *ll = strlen(*l);
        *r = m->child->next->valuestring, *rl = strlen(*r);
    } else {
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: merge %zu is neither \"a b\" nor [a, b]", path, i);
    }
    if (*ll + *rl >= bufsz) return dsv4_fail(DSV4_ERR_FORMAT, "%s: merge %zu is too long", path, i);
    memcpy(buf, *l, *ll);
    memcpy(buf + *ll, *r, *rl);
    return DSV4_OK;
}

static dsv4_status load_merges(dsv4_tokenizer *tok, const cJSON *merges, const char *path)
{
    if (!cJSON_IsArray(merges)) return dsv4_fail(DSV4_ERR_FORMAT, "%s: no merges list", path);
    DSV4_TRY(tok_merges_init(&tok->merges, (size_t)cJSON_GetArraySize(merges)));
    size_t rank = 0;
    char buf[1024];
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *l = NULL, *r = NULL;
        size_t ll = 0, rl = 0;
        DSV4_TRY(merge_parts(m, rank, path, &l, &ll, &r, &rl, buf, sizeof buf));
        int32_t a = tok_strmap_get(&tok->vocab, l, ll), b = tok_strmap_get(&tok->vocab, r, rl);
        int32_t ab = tok_strmap_get(&tok->vocab, buf, ll + rl);
        if (a < 0 || b < 0 || ab < 0)
            return dsv4_fail(DSV4_ERR_FORMAT,
                             "%s: merge %zu (\"%.*s\" + \"%.*s\") names a token "
                             "not in the vocab",
                             path, rank, (int)ll, l, (int)rl, r);
        DSV4_TRY(tok_merges_put(&tok->merges, a, b, (int32_t)rank, ab));
    }
    return DSV4_OK;
}

static dsv4_status load_added(dsv4_tokenizer *tok, const cJSON *added, size_t *arena_used,
                              const char *path)
{
    size_t n = added ? (size_t)cJSON_GetArraySize(added) : 0;
    DSV4_TRY(tok_strmap_init(&tok->added_map, n));
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: added tokens", path);
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const char *content = cJSON_GetObjectItemCaseSensitive(a, "content")->valuestring;
        int32_t id = cJSON_GetObjectItemCaseSensitive(a, "id")->valueint;
        size_t len = strlen(content);
        char *s = tok->arena + *arena_used;
        memcpy(s, content, len + 1);
        *arena_used += len + 1;
        tok_added *t = &tok->added[tok->n_added];
        *t = (tok_added){s,
                         len,
                         id,
                         (unsigned char)json_flag(a, "special", 0),
                         (unsigned char)json_flag(a, "lstrip", 0),
                         (unsigned char)json_flag(a, "rstrip", 0),
                         (unsigned char)json_flag(a, "single_word", 0),
                         (unsigned char)json_flag(a, "normalized", 1)};
        tok->id_text[id] = s; /* an added token's content is what the id stands for */
        tok->id_len[id] = (uint32_t)len;
        tok->id_flags[id] = TOK_ID_ADDED | (t->special ? TOK_ID_SPECIAL : 0);
        DSV4_TRY(tok_strmap_put(&tok->added_map, s, len, id));
        if (len) {
            tok_trie *trie = t->normalized ? &tok->trie_norm : &tok->trie_raw;
            DSV4_TRY(tok_trie_add(trie, s, len, (int32_t)tok->n_added));
        }
        tok->n_added++;
    }
    return DSV4_OK;
}

static dsv4_status load_normalizer(const cJSON *norm, const char *path)
{
    if (!norm || cJSON_IsNull(norm)) return DSV4_OK;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(norm, "normalizers");
    if (!strcmp(json_type(norm), "Sequence") && cJSON_IsArray(list) && !list->child) return DSV4_OK;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                     "%s: normalizer \"%s\" (only none or an empty "
                     "Sequence)",
                     path, json_type(norm));
}

static dsv4_status split_behavior(const cJSON *step, const char *path, tok_split_behavior *out)
{
    static const struct {
        const char *name;
        tok_split_behavior b;
    } names[] = {{"Removed", TOK_SPLIT_REMOVED},
                 {"Isolated", TOK_SPLIT_ISOLATED},
                 {"MergedWithPrevious", TOK_SPLIT_MERGED_WITH_PREVIOUS},
                 {"MergedWithNext", TOK_SPLIT_MERGED_WITH_NEXT},
                 {"Contiguous", TOK_SPLIT_CONTIGUOUS}};
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(step, "behavior");
    for (size_t i = 0; cJSON_IsString(b) && i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(b->valuestring, names[i].name)) {
            *out = names[i].b;
            return DSV4_OK;
        }
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: Split behavior %s", path,
                     cJSON_IsString(b) ? b->valuestring : "(missing)");
}

/* The GPT-2 pattern HF's ByteLevel pre-tokenizer applies when use_regex is true. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static dsv4_status load_pre_step(dsv4_tokenizer *tok, const cJSON *step, int last, const char *path)
{
    const char *type = json_type(step);
    if (!strcmp(type, "Split")) {
        if (tok->has_byte_level)
            return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: a Split after ByteLevel", path);
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(step, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        if (!cJSON_IsString(re) && !cJSON_IsString(lit))
            return dsv4_fail(DSV4_ERR_FORMAT, "%s: Split without a Regex/String pattern", path);
        tok_split_step *s = &tok->steps[tok->n_steps];
        DSV4_TRY(split_behavior(step, path, &s->behavior));
        s->invert = json_flag(step, "invert", 0);
        const char *p = cJSON_IsString(re) ? re->valuestring : lit->valuestring;
        DSV4_TRY(tok_regex_compile(p, strlen(p), !cJSON_IsString(re), &s->re));
        tok->n_steps++;
        return DSV4_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        if (!last)
            return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                             "%s: ByteLevel must be the last "
                             "pre-tokenizer",
                             path);
        tok->has_byte_level = 1;
        tok->bl_add_prefix_space = json_flag(step, "add_prefix_space", 1);
        if (json_flag(step, "use_regex", 1))
            DSV4_TRY(tok_regex_compile(gpt2_pattern, sizeof gpt2_pattern - 1, 0, &tok->bl_regex));
        return DSV4_OK;
    }
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: pre-tokenizer \"%s\"", path, type);
}

static dsv4_status load_pre_tokenizer(dsv4_tokenizer *tok, const cJSON *pre, const char *path)
{
    if (!cJSON_IsObject(pre))
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "%s: no pre_tokenizer (byte-level BPE needs "
                         "ByteLevel)",
                         path);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    int is_seq = !strcmp(json_type(pre), "Sequence");
    if (is_seq && !cJSON_IsArray(list))
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: Sequence without pretokenizers", path);
    size_t n = is_seq ? (size_t)cJSON_GetArraySize(list) : 1;
    tok->steps = calloc(n ? n : 1, sizeof *tok->steps);
    if (!tok->steps) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: pre-tokenizer", path);
    if (!is_seq) return load_pre_step(tok, pre, 1, path);
    size_t i = 0;
    for (const cJSON *s = list->child; s; s = s->next, i++)
        DSV4_TRY(load_pre_step(tok, s, i + 1 == n, path));
    if (!tok->has_byte_level)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: pre-tokenizer has no ByteLevel step", path);
    return DSV4_OK;
}

static dsv4_status load_tail(dsv4_tokenizer *tok, const cJSON *root, const char *path)
{
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (!cJSON_IsObject(dec) || strcmp(json_type(dec), "ByteLevel"))
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: decoder \"%s\" (only ByteLevel)", path,
                         cJSON_IsObject(dec) ? json_type(dec) : "null");
    tok->decoder_byte_level = 1;
    /* A ByteLevel post-processor only adjusts offsets; one that adds tokens (a template) would
     * change the ids, so it is refused. */
    const cJSON *post = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    if (post && !cJSON_IsNull(post) && strcmp(json_type(post), "ByteLevel"))
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: post_processor \"%s\"", path, json_type(post));
    return DSV4_OK;
}

/* Fills id_bytes: what each id decodes to. HF's ByteLevel decoder maps every character of a
 * token back to its byte, and keeps the token's own UTF-8 when some character is outside the
 * byte alphabet (as in "<｜User｜>"). */
static void build_decode_table(dsv4_tokenizer *tok, size_t *arena_used)
{
    for (int32_t id = 0; id < tok->n_ids; id++) {
        const unsigned char *s = (const unsigned char *)tok->id_text[id];
        if (!s) continue;
        size_t len = tok->id_len[id], k = 0;
        char *out = tok->arena + *arena_used;
        int mapped = 1;
        for (size_t i = 0; i < len && mapped;) {
            uint32_t cp;
            size_t n = tok_utf8_valid_len(s + i, len - i);
            if (!n) {
                mapped = 0;
                break;
            }
            tok_utf8_decode(s + i, &cp);
            int b = tok_cp_to_byte(cp);
            if (b < 0)
                mapped = 0;
            else
                out[k++] = (char)b;
            i += n;
        }
        if (!mapped || !tok->decoder_byte_level) {
            memcpy(out, s, len);
            k = len;
        }
        out[k] = 0;
        tok->id_bytes[id] = out;
        tok->id_nbytes[id] = (uint32_t)k;
        *arena_used += k + 1;
    }
}

void dsv4_tokenizer_close(dsv4_tokenizer *tok)
{
    if (!tok) return;
    free(tok->id_text);
    free(tok->id_len);
    free(tok->id_bytes);
    free(tok->id_nbytes);
    free(tok->id_flags);
    free(tok->arena);
    tok_strmap_free(&tok->vocab);
    tok_strmap_free(&tok->added_map);
    tok_merges_free(&tok->merges);
    free(tok->added);
    tok_trie_free(&tok->trie_raw);
    tok_trie_free(&tok->trie_norm);
    for (size_t i = 0; i < tok->n_steps; i++) pcre2_code_free(tok->steps[i].re);
    free(tok->steps);
    pcre2_code_free(tok->bl_regex);
    tok_cache_free(&tok->cache);
    pthread_mutex_destroy(&tok->cache.lock);
    free(tok);
}

static dsv4_status load_all(dsv4_tokenizer *tok, const cJSON *root, const char *path)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    DSV4_TRY(load_model_header(tok, model, path));
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) return dsv4_fail(DSV4_ERR_FORMAT, "%s: no model.vocab", path);
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: added_tokens is not a list", path);
    if (!cJSON_IsArray(added)) added = NULL;
    size_t text_bytes, used = 0;
    DSV4_TRY(size_tables(tok, vocab, added, path, &text_bytes));
    DSV4_TRY(load_vocab(tok, vocab, &used, path));
    DSV4_TRY(load_merges(tok, cJSON_GetObjectItemCaseSensitive(model, "merges"), path));
    DSV4_TRY(load_added(tok, added, &used, path));
    DSV4_TRY(load_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path));
    DSV4_TRY(
        load_pre_tokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path));
    DSV4_TRY(load_tail(tok, root, path));
    build_decode_table(tok, &used);
    return DSV4_OK;
}

dsv4_status dsv4_tokenizer_open(const char *path, dsv4_tokenizer **out)
{
    dsv4_clear_error();
    if (!path || !out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "tokenizer_open: NULL path");
    *out = NULL;
    char *data = NULL;
    size_t size = 0;
    DSV4_TRY(read_file(path, &data, &size));
    cJSON *root = cJSON_ParseWithLength(data, size);
    free(data);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: not a JSON object", path);
    }
    dsv4_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        cJSON_Delete(root);
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "tokenizer");
    }
    pthread_mutex_init(&tok->cache.lock, NULL);
    dsv4_status st = load_all(tok, root, path);
    cJSON_Delete(root);
    if (st != DSV4_OK) {
        dsv4_tokenizer_close(tok);
        return st;
    }
    *out = tok;
    return DSV4_OK;
}

int32_t dsv4_tokenizer_vocab_size(const dsv4_tokenizer *tok)
{
    return tok ? tok->n_ids : 0;
}

int32_t dsv4_tokenizer_token_to_id(const dsv4_tokenizer *tok, const char *token)
{
    if (!tok || !token) return -1;
    size_t len = strlen(token);
    int32_t id = tok_strmap_get(&tok->added_map, token, len);
    return id >= 0 ? id : tok_strmap_get(&tok->vocab, token, len);
}

const char *dsv4_tokenizer_id_to_token(const dsv4_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || id >= tok->n_ids) return NULL;
    return tok->id_text[id];
}

int dsv4_tokenizer_is_special(const dsv4_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || id >= tok->n_ids) return 0;
    return (tok->id_flags[id] & TOK_ID_SPECIAL) != 0;
}
