/*
 * test_tokenizer_parity.c - our encoder against HF `tokenizers` on the same inputs.
 *
 * usage: test_tokenizer_parity TOKENIZER_JSON PARITY.bin
 * PARITY.bin is written by tests/tokenizer/make_parity.py (expected ids from HF, never from us).
 * Every case must give identical ids; decode(encode(x)) must give back x byte for byte; the
 * hand-written cases also check decode with skip-special against HF's.
 */
#include "dsv4.h"
#include "test_util.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

typedef struct reader {
    const unsigned char *p, *end;
} reader;

static int rd_u32(reader *r, uint32_t *v)
{
    if (r->end - r->p < 4) return 0;
    *v = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
         (uint32_t)r->p[3] << 24;
    r->p += 4;
    return 1;
}

static int rd_bytes(reader *r, size_t n, const unsigned char **out)
{
    if ((size_t)(r->end - r->p) < n) return 0;
    *out = r->p;
    r->p += n;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON PARITY.bin\n", argv[0]);
        return 2;
    }
    dsv4_tokenizer *tok;
    dsv4_status st = dsv4_tokenizer_open(argv[1], &tok);
    if (st != DSV4_OK) {
        fprintf(stderr, "open: %s\n", dsv4_last_error());
        return 1;
    }
    size_t size;
    unsigned char *data = (unsigned char *)test_read_file(argv[2], &size);
    CHECK(data != NULL && size > 12 && !memcmp(data, "DSV4TOKP", 8));
    if (!data) return test_finish();
    reader r = {data + 8, data + size};
    uint32_t count = 0;
    CHECK(rd_u32(&r, &count));
    size_t mismatched = 0, total_bytes = 0, total_ids = 0;
    double enc_time = 0;
    for (uint32_t c = 0; c < count; c++) {
        uint32_t name_len, flags, text_len, n_ids;
        const unsigned char *name, *text, *idb;
        int ok = rd_u32(&r, &name_len) && rd_bytes(&r, name_len, &name) && rd_u32(&r, &flags) &&
                 rd_u32(&r, &text_len) && rd_bytes(&r, text_len, &text) && rd_u32(&r, &n_ids) &&
                 rd_bytes(&r, (size_t)n_ids * 4, &idb);
        uint32_t skip_len_u = 0;
        const unsigned char *skip = NULL;
        ok = ok && rd_u32(&r, &skip_len_u);
        int32_t skip_len = (int32_t)skip_len_u;
        if (ok && skip_len >= 0) ok = rd_bytes(&r, (size_t)skip_len, &skip);
        CHECK_MSG(ok, "fixture truncated at case %u", c);
        if (!ok) break;

        int32_t *ids = NULL;
        size_t n = 0;
        double t0 = test_now();
        st = dsv4_tokenizer_encode(tok, (const char *)text, text_len, flags, &ids, &n);
        enc_time += test_now() - t0;
        total_bytes += text_len;
        total_ids += n;
        CHECK_MSG(st == DSV4_OK, "%.*s: encode: %s", (int)name_len, name, dsv4_last_error());
        if (st != DSV4_OK) continue;
        size_t first = 0;
        while (first < n && first < n_ids &&
               (int32_t)((uint32_t)idb[4 * first] | (uint32_t)idb[4 * first + 1] << 8 |
                         (uint32_t)idb[4 * first + 2] << 16 | (uint32_t)idb[4 * first + 3] << 24) ==
                   ids[first])
            first++;
        int same = n == n_ids && first == n;
        CHECK_MSG(same, "%.*s: ids differ from HF (ours %zu ids, HF %u) at index %zu",
                  (int)name_len, name, n, n_ids, first);
        if (!same && mismatched++ < 5) {
            fprintf(stderr, "  ours:");
            for (size_t i = first > 3 ? first - 3 : 0; i < n && i < first + 6; i++)
                fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\n  HF:  ");
            for (size_t i = first > 3 ? first - 3 : 0; i < n_ids && i < first + 6; i++)
                fprintf(stderr, " %d",
                        (int32_t)((uint32_t)idb[4 * i] | (uint32_t)idb[4 * i + 1] << 8 |
                                  (uint32_t)idb[4 * i + 2] << 16 | (uint32_t)idb[4 * i + 3] << 24));
            fprintf(stderr, "\n");
        }
        char *back = NULL;
        size_t back_len = 0;
        st = dsv4_tokenizer_decode(tok, ids, n, 0, &back, &back_len);
        CHECK_MSG(st == DSV4_OK && back_len == text_len && !memcmp(back, text, text_len),
                  "%.*s: decode(encode(x)) != x", (int)name_len, name);
        dsv4_free(back);
        if (skip_len >= 0) {
            st = dsv4_tokenizer_decode(tok, ids, n, DSV4_DECODE_SKIP_SPECIAL, &back, &back_len);
            CHECK_MSG(st == DSV4_OK && back_len == (size_t)skip_len &&
                          !memcmp(back, skip, back_len),
                      "%.*s: decode with skip-special differs from HF", (int)name_len, name);
            dsv4_free(back);
        }
        dsv4_free(ids);
    }
    printf("parity: %u cases, %zu bytes, %zu ids, encoded at %.1f MB/s\n", count, total_bytes,
           total_ids, enc_time > 0 ? total_bytes / enc_time / 1e6 : 0.0);
    free(data);
    dsv4_tokenizer_close(tok);
    return test_finish();
}
