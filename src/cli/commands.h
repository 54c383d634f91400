/*
 * commands.h - the subcommands of the dsv4 CLI. Each lives in its own cmd_<name>.c and is
 * listed in the table in main.c. A command returns the process exit code: 0 success,
 * 1 failure (after printing "dsv4 <cmd>: <detail>" to stderr), 2 usage error.
 */
#ifndef DSV4_CLI_COMMANDS_H
#define DSV4_CLI_COMMANDS_H

#include "dsv4.h"

#include <stdio.h>

int cmd_inspect(int argc, char **argv);
int cmd_device(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_render(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_bench(int argc, char **argv);

/* Reads all of a stream / of the file at `path` ("-" = stdin), NUL-terminated; NULL on failure
 * (errno says why). The caller frees it. */
char *cli_read_all(FILE *in, size_t *len);
char *cli_read_path(const char *path, size_t *len);

/* Prints "dsv4 <cmd>: <status name>: <detail>" to stderr and returns 1. */
int cli_report(const char *cmd, dsv4_status status);

#endif
