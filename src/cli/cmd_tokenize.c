/*
 * cmd_tokenize.c - `dsv4 tokenize` (UTF-8 text on stdin -> a JSON array of ids on stdout) and
 * `dsv4 detokenize` (a JSON array of ids on stdin -> text on stdout). The tokenizer is
 * MODEL_DIR/tokenizer.json (-m) or a file given directly (--tokenizer).
 */
#include "commands.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads all of stdin. Returns NULL (after printing why) on failure. */
static char *read_stdin(const char *cmd, size_t *len)
{
    char *buf = cli_read_all(stdin, len);
    if (!buf) fprintf(stderr, "dsv4 %s: reading stdin: %s\n", cmd, strerror(errno));
    return buf;
}

/* Parses -m/--tokenizer plus the one boolean flag `flag_name` of each command. Returns 0 on
 * success, else the exit code. */
static int parse_args(const char *cmd, int argc, char **argv, const char *flag_name, int *flag,
                      char *path, size_t path_size)
{
    const char *model = NULL, *file = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
            file = argv[++i];
        } else if (!strcmp(argv[i], flag_name)) {
            *flag = 1;
        } else {
            int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            fprintf(help ? stdout : stderr,
                    "usage: dsv4 %s (-m MODEL_DIR | --tokenizer FILE) [%s]\n", cmd, flag_name);
            return help ? -1 : 2;
        }
    }
    if (!model == !file) {
        fprintf(stderr, "dsv4 %s: give one of -m MODEL_DIR or --tokenizer FILE\n", cmd);
        return 2;
    }
    if (file)
        snprintf(path, path_size, "%s", file);
    else
        snprintf(path, path_size, "%s/tokenizer.json", model);
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    char path[4096];
    int split = 0;
    int rc = parse_args("tokenize", argc, argv, "--split-special", &split, path, sizeof path);
    if (rc) return rc < 0 ? 0 : rc;
    dsv4_tokenizer *tok;
    dsv4_status st = dsv4_tokenizer_open(path, &tok);
    if (st != DSV4_OK) return cli_report("tokenize", st);
    size_t len;
    char *text = read_stdin("tokenize", &len);
    if (!text) {
        dsv4_tokenizer_close(tok);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    unsigned flags = DSV4_ENCODE_REJECT_INVALID | (split ? DSV4_ENCODE_SPLIT_SPECIAL : 0);
    st = dsv4_tokenizer_encode(tok, text, len, flags, &ids, &n);
    free(text);
    dsv4_tokenizer_close(tok);
    if (st != DSV4_OK) return cli_report("tokenize", st);
    putchar('[');
    for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("]\n");
    dsv4_free(ids);
    return 0;
}

/* Parses a JSON array of integers. Returns the count, or -1 with *where set to the bad offset. */
static long parse_id_array(const char *s, int32_t *ids, size_t *where)
{
    const char *p = s;
    long n = 0;
    while (isspace((unsigned char)*p)) p++;
    if (*p++ != '[') goto bad;
    while (isspace((unsigned char)*p)) p++;
    if (*p == ']') {
        p++;
    } else {
        for (;;) {
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < 0 || v > INT32_MAX || *end == '.' || *end == 'e' ||
                *end == 'E')
                goto bad;
            if (ids) ids[n] = (int32_t)v;
            n++;
            p = end;
            while (isspace((unsigned char)*p)) p++;
            if (*p == ']') {
                p++;
                break;
            }
            if (*p++ != ',') goto bad;
            while (isspace((unsigned char)*p)) p++;
        }
    }
    while (isspace((unsigned char)*p)) p++;
    if (*p) goto bad;
    return n;
bad:
    *where = (size_t)(p - s);
    return -1;
}

int cmd_detokenize(int argc, char **argv)
{
    char path[4096];
    int skip = 0;
    int rc = parse_args("detokenize", argc, argv, "--skip-special", &skip, path, sizeof path);
    if (rc) return rc < 0 ? 0 : rc;
    size_t len, where = 0;
    char *input = read_stdin("detokenize", &len);
    if (!input) return 1;
    long n = parse_id_array(input, NULL, &where);
    if (n < 0) {
        fprintf(stderr, "dsv4 detokenize: stdin is not a JSON array of token ids (at byte %zu)\n",
                where);
        free(input);
        return 1;
    }
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!ids) {
        free(input);
        fprintf(stderr, "dsv4 detokenize: out of memory\n");
        return 1;
    }
    parse_id_array(input, ids, &where);
    free(input);
    dsv4_tokenizer *tok;
    dsv4_status st = dsv4_tokenizer_open(path, &tok);
    if (st != DSV4_OK) {
        free(ids);
        return cli_report("detokenize", st);
    }
    char *text = NULL;
    size_t text_len = 0;
    st = dsv4_tokenizer_decode(tok, ids, (size_t)n, skip ? DSV4_DECODE_SKIP_SPECIAL : 0, &text,
                               &text_len);
    free(ids);
    dsv4_tokenizer_close(tok);
    if (st != DSV4_OK) return cli_report("detokenize", st);
    fwrite(text, 1, text_len, stdout);
    dsv4_free(text);
    return 0;
}
