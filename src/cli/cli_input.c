/*
 * cli_input.c - reading a whole input (a file, or stdin for "-"), shared by the commands that
 * take text or JSON: run -p -, render --chat, tokenize, detokenize.
 */
#include "commands.h"

#include <stdlib.h>
#include <string.h>

char *cli_read_all(FILE *in, size_t *len)
{
    size_t cap = 1 << 14, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, in);
        if (n < cap) break; /* a short read is end of input or an error */
        cap *= 2;
        char *b = realloc(buf, cap + 1);
        if (!b) free(buf);
        buf = b;
    }
    if (!buf || ferror(in)) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

char *cli_read_path(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) return NULL;
    char *buf = cli_read_all(f, len);
    if (f != stdin) fclose(f);
    return buf;
}
