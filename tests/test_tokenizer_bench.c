/*
 * test_tokenizer_bench.c - encoding throughput on a text file, for docs/PERF.md (not a ctest
 * test). Runs: one cold pass (empty piece cache), then 3 warm passes; prints MB/s of each.
 * Compare with tests/tokenizer/bench_hf.py on the same file.
 *
 * usage: test_tokenizer_bench TOKENIZER_JSON CORPUS_FILE
 */
#include "dsv4.h"
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON CORPUS_FILE\n", argv[0]);
        return 2;
    }
    dsv4_tokenizer *tok;
    double t0 = test_now();
    if (dsv4_tokenizer_open(argv[1], &tok) != DSV4_OK) {
        fprintf(stderr, "%s\n", dsv4_last_error());
        return 1;
    }
    printf("load: %.3f s\n", test_now() - t0);
    FILE *f = fopen(argv[2], "rb");
    if (!f) return 1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) return 1;
    fclose(f);
    for (int pass = 0; pass < 4; pass++) {
        int32_t *ids;
        size_t nid;
        t0 = test_now();
        if (dsv4_tokenizer_encode(tok, text, (size_t)n, 0, &ids, &nid) != DSV4_OK) return 1;
        double dt = test_now() - t0;
        printf("%s pass: %ld bytes -> %zu ids in %.3f s = %.2f MB/s\n", pass ? "warm" : "cold", n,
               nid, dt, n / dt / 1e6);
        dsv4_free(ids);
    }
    free(text);
    dsv4_tokenizer_close(tok);
    return 0;
}
