/*
 * cli_generate.h - what the commands that run the model (run, chat, score) share: their
 * common flags, opening the model and tokenizer with clear errors, warming the weights with a
 * progress bar, JSON string output, and the closing statistics line.
 */
#ifndef DSV4_CLI_GENERATE_H
#define DSV4_CLI_GENERATE_H

#include "dsv4.h"

#include <stdio.h>

#define CLI_MAX_STOP 16

typedef struct cli_gen_args {
    const char *model, *tokenizer, *prompt, *ids, *system;
    dsv4_gen_options gen;
    dsv4_session_options session;
    const char *stop[CLI_MAX_STOP];
    int json, think, no_bos, quiet, seed_given;
} cli_gen_args;

/* Defaults of the generating commands (max_tokens as given). */
void cli_gen_defaults(cli_gen_args *a, int64_t max_tokens);

/* Tries to take the flag at argv[*i] (and its value). Returns 1 when taken, 0 when the flag is
 * not a shared one, -1 after printing a usage error (bad or missing value). */
int cli_gen_flag(const char *cmd, int argc, char **argv, int *i, cli_gen_args *a);

/* Takes every argument with cli_gen_flag; --help/-h prints `usage` to stdout, an unknown option
 * prints it to stderr. Returns -1 when all arguments were taken, else the exit code (0 or 2). */
int cli_gen_parse(const char *cmd, int argc, char **argv, cli_gen_args *a, void (*usage)(FILE *));

/* Checks the sampling values (via the library's own checks); prints and returns 2 if bad. */
int cli_gen_check(const char *cmd, cli_gen_args *a);

/* The help text of the shared flags. */
void cli_gen_usage(FILE *f);

/* Opens a->model (with a progress bar while the weights are read in) and, when need_tok is 1
 * or a tokenizer file exists, the tokenizer (a->tokenizer, else MODEL_DIR/tokenizer.json).
 * Returns 0, or the exit code after printing why. */
int cli_open(const char *cmd, const cli_gen_args *a, int need_tok, dsv4_model **m,
             dsv4_tokenizer **tok);

/* Parses "0,123,456" into *ids (malloc'd). Returns 0, or 2 after a usage message. */
int cli_parse_ids(const char *cmd, const char *s, int32_t **ids, int64_t *n);

/* Writes `len` bytes as a JSON string literal (invalid UTF-8 bytes become U+FFFD). */
void cli_json_string(FILE *f, const char *s, size_t len);

/* The text of one id on its own, as a JSON string, or null without a tokenizer. */
void cli_json_token_text(FILE *f, const dsv4_tokenizer *tok, int32_t id);

/* "prompt N tokens, prefill X tok/s; generated M tokens, decode Y tok/s; stop: REASON". */
void cli_print_stats(FILE *f, const char *cmd, const dsv4_gen_result *r, const char *stop_str);

#endif
