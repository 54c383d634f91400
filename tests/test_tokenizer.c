/*
 * test_tokenizer.c - the tokenizer API beyond parity: V4 special-token ids, the streaming
 * detokenizer holding back split characters, skip-special, invalid UTF-8 handling, errors, and
 * long runs that would expose quadratic behaviour.
 *
 * usage: test_tokenizer TOKENIZER_JSON
 */
#include "dsv4.h"
#include "test_util.h"

#include <stdlib.h>
#include <time.h>

static dsv4_tokenizer *tok;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static size_t encode(const char *s, unsigned flags, int32_t **ids)
{
    size_t n = 0;
    dsv4_status st = dsv4_tokenizer_encode(tok, s, strlen(s), flags, ids, &n);
    CHECK_MSG(st == DSV4_OK, "encode \"%s\": %s", s, dsv4_last_error());
    return n;
}

static void test_special_ids(void)
{
    CHECK(dsv4_tokenizer_vocab_size(tok) == 129280);
    struct {
        const char *text;
        int32_t id;
        int special;
    } want[] = {{"<｜begin▁of▁sentence｜>", 0, 1},
                {"<｜end▁of▁sentence｜>", 1, 1},
                {"<｜User｜>", 128803, 0},
                {"<｜Assistant｜>", 128804, 0},
                {"<think>", 128821, 0},
                {"</think>", 128822, 0},
                {"｜DSML｜", 128825, 0}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK_MSG(dsv4_tokenizer_token_to_id(tok, want[i].text) == want[i].id, "%s", want[i].text);
        CHECK(dsv4_tokenizer_is_special(tok, want[i].id) == want[i].special);
        CHECK(!strcmp(dsv4_tokenizer_id_to_token(tok, want[i].id), want[i].text));
        int32_t *ids;
        size_t n = encode(want[i].text, 0, &ids);
        CHECK_MSG(n == 1 && ids[0] == want[i].id, "%s encodes to one id", want[i].text);
        dsv4_free(ids);
    }
    CHECK(dsv4_tokenizer_token_to_id(tok, "no such token at all") == -1);
    CHECK(dsv4_tokenizer_id_to_token(tok, -1) == NULL);
    CHECK(dsv4_tokenizer_id_to_token(tok, 129280) == NULL);
    /* --split-special: BOS written in text becomes ordinary pieces. */
    int32_t *ids;
    size_t n = encode("<｜begin▁of▁sentence｜>", DSV4_ENCODE_SPLIT_SPECIAL, &ids);
    CHECK(n > 1 && ids[0] != 0);
    dsv4_free(ids);
}

static void test_skip_special(void)
{
    int32_t ids[] = {0, 128803, 1};
    char *text;
    size_t len;
    CHECK(dsv4_tokenizer_decode(tok, ids, 3, DSV4_DECODE_SKIP_SPECIAL, &text, &len) == DSV4_OK);
    CHECK(!strcmp(text, "<｜User｜>") && len == strlen(text)); /* <｜User｜> is not "special" */
    dsv4_free(text);
    CHECK(dsv4_tokenizer_decode(tok, ids, 3, 0, &text, &len) == DSV4_OK);
    CHECK(!strcmp(text, "<｜begin▁of▁sentence｜><｜User｜><｜end▁of▁sentence｜>"));
    dsv4_free(text);
    int32_t bad[] = {5, 129280};
    CHECK(dsv4_tokenizer_decode(tok, bad, 2, 0, &text, &len) == DSV4_ERR_INPUT);
    CHECK_CONTAINS(dsv4_last_error(), "129280");
}

/* Streams ids one at a time; no piece may end inside a character, and the pieces joined
 * must equal the whole decode. */
static void check_stream(const char *s, unsigned flags)
{
    int32_t *ids;
    size_t n = encode(s, 0, &ids);
    dsv4_detokenizer *d;
    CHECK(dsv4_detokenizer_open(tok, flags, &d) == DSV4_OK);
    char joined[4096] = "";
    size_t k = 0;
    int split_char = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *t;
        size_t len;
        dsv4_status st = i < n ? dsv4_detokenizer_push(d, ids[i], &t, &len)
                               : dsv4_detokenizer_flush(d, &t, &len);
        CHECK(st == DSV4_OK);
        if (len && i < n) {
            /* A released piece must not end in the middle of a UTF-8 sequence. */
            unsigned char last = (unsigned char)t[len - 1];
            if (last >= 0xC0) split_char = 1;
        }
        memcpy(joined + k, t, len);
        k += len;
    }
    joined[k] = 0;
    char *whole;
    CHECK(dsv4_tokenizer_decode(tok, ids, n, flags, &whole, NULL) == DSV4_OK);
    CHECK_MSG(!strcmp(joined, whole), "stream \"%s\" != decode \"%s\"", joined, whole);
    CHECK(!split_char);
    dsv4_free(whole);
    dsv4_free(ids);
    dsv4_detokenizer_close(d);
}

static void test_streaming(void)
{
    check_stream("emoji 👨‍👩‍👧‍👦 and 🦀 and 𝟙𝟚 and 鿐 and ǅ", 0);
    check_stream("<｜begin▁of▁sentence｜>hi 😀<｜end▁of▁sentence｜>", DSV4_DECODE_SKIP_SPECIAL);
    /* A rare emoji is several byte tokens: the first pushes must hold back. */
    int32_t *ids;
    size_t n = encode("🦀", 0, &ids);
    CHECK(n >= 2);
    dsv4_detokenizer *d;
    CHECK(dsv4_detokenizer_open(tok, 0, &d) == DSV4_OK);
    const char *t;
    size_t len;
    CHECK(dsv4_detokenizer_push(d, ids[0], &t, &len) == DSV4_OK && len == 0);
    for (size_t i = 1; i < n; i++) CHECK(dsv4_detokenizer_push(d, ids[i], &t, &len) == DSV4_OK);
    CHECK(len == 4 && !memcmp(t, "🦀", 4));
    /* An incomplete character at the end is released by flush. */
    CHECK(dsv4_detokenizer_push(d, ids[0], &t, &len) == DSV4_OK && len == 0);
    CHECK(dsv4_detokenizer_flush(d, &t, &len) == DSV4_OK && len >= 1);
    CHECK(dsv4_detokenizer_push(d, -3, &t, &len) == DSV4_ERR_INPUT);
    dsv4_detokenizer_close(d);
    dsv4_free(ids);
}

static void test_invalid_utf8(void)
{
    const char bad[] = "ok \xff\xc3 end";
    int32_t *ids;
    size_t n;
    CHECK(dsv4_tokenizer_encode(tok, bad, sizeof bad - 1, 0, &ids, &n) == DSV4_OK);
    char *back;
    size_t len;
    CHECK(dsv4_tokenizer_decode(tok, ids, n, 0, &back, &len) == DSV4_OK);
    CHECK(len == sizeof bad - 1 && !memcmp(back, bad, len));
    dsv4_free(back);
    dsv4_free(ids);
    CHECK(dsv4_tokenizer_encode(tok, bad, sizeof bad - 1, DSV4_ENCODE_REJECT_INVALID, &ids, &n) ==
          DSV4_ERR_INPUT);
    CHECK_CONTAINS(dsv4_last_error(), "offset 3");
    CHECK(dsv4_tokenizer_encode(tok, "x", 1, 0x80, &ids, &n) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_tokenizer_encode(tok, "", 0, 0, &ids, &n) == DSV4_OK && n == 0);
    dsv4_free(ids);
}

/* 1 MB runs of one character class are single pieces (or many tiny ones): they must encode and
 * round-trip. The time is printed, not asserted (speed lives in benchmarks, docs/PERF.md); a
 * quadratic merge loop or regex would take hours here and fail the run by its time limit. */
static void test_long_runs(void)
{
    const char fill[] = {' ', '7', 'a', '\n', '!'};
    size_t big = 1 << 20;
    char *s = malloc(big + 1);
    for (size_t f = 0; f < sizeof fill; f++) {
        memset(s, fill[f], big);
        s[big] = 0;
        int32_t *ids;
        size_t n = 0;
        double t0 = now();
        dsv4_status st = dsv4_tokenizer_encode(tok, s, big, 0, &ids, &n);
        double dt = now() - t0;
        CHECK_MSG(st == DSV4_OK, "1 MB of '%c': %s", fill[f], dsv4_last_error());
        printf("1 MB of 0x%02x: %zu ids in %.2f s\n", fill[f], n, dt);
        char *back;
        size_t len;
        if (st == DSV4_OK) {
            CHECK(dsv4_tokenizer_decode(tok, ids, n, 0, &back, &len) == DSV4_OK && len == big &&
                  !memcmp(back, s, big));
            dsv4_free(back);
            dsv4_free(ids);
        }
    }
    free(s);
}

static void test_open_errors(void)
{
    dsv4_tokenizer *t = NULL;
    CHECK(dsv4_tokenizer_open("/nonexistent/tokenizer.json", &t) == DSV4_ERR_IO && !t);
    CHECK_CONTAINS(dsv4_last_error(), "/nonexistent/tokenizer.json");
    const char *path = "test_tokenizer_bad.json";
    FILE *f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", f);
    fclose(f);
    CHECK(dsv4_tokenizer_open(path, &t) == DSV4_ERR_UNSUPPORTED);
    f = fopen(path, "w");
    fputs("{\"model\": ", f);
    fclose(f);
    CHECK(dsv4_tokenizer_open(path, &t) == DSV4_ERR_FORMAT);
    remove(path);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON\n", argv[0]);
        return 2;
    }
    if (dsv4_tokenizer_open(argv[1], &tok) != DSV4_OK) {
        fprintf(stderr, "open: %s\n", dsv4_last_error());
        return 1;
    }
    test_special_ids();
    test_skip_special();
    test_streaming();
    test_invalid_utf8();
    test_long_runs();
    test_open_errors();
    dsv4_tokenizer_close(tok);
    return test_finish();
}
