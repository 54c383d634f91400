/*
 * main.c - entry point of the dsv4 command: dispatches to one subcommand.
 */
#include "commands.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"inspect", cmd_inspect, "inspect MODEL_DIR: layout, geometry, layers, sizes, memory needs"},
    {"device", cmd_device, "device [--device auto|cpu|cuda]: which compute device a run uses"},
    {"tokenize", cmd_tokenize, "tokenize -m MODEL_DIR | --tokenizer FILE: stdin text -> JSON ids"},
    {"detokenize", cmd_detokenize, "detokenize -m MODEL_DIR | --tokenizer FILE: JSON ids -> text"},
    {"render", cmd_render, "render --chat FILE.json: the DeepSeek-V4 prompt for a messages list"},
    {"run", cmd_run, "run -m MODEL_DIR -p TEXT | --ids 0,1,..: raw completion, streamed"},
    {"chat", cmd_chat, "chat -m MODEL_DIR [--think] [--system TEXT]: interactive chat"},
    {"score", cmd_score, "score -m MODEL_DIR --ids 0,1,..: log-probabilities of every position"},
    {"bench", cmd_bench, "bench [--shape flash|pro] [--layers N]: the CUDA engine, random weights"},
};

int cli_report(const char *cmd, dsv4_status status)
{
    fprintf(stderr, "dsv4 %s: %s: %s\n", cmd, dsv4_status_name(status), dsv4_last_error());
    return 1;
}

static void usage(FILE *f)
{
    fprintf(f, "dsv4 %s - DeepSeek-V4 inference engine\n\nusage: dsv4 COMMAND [ARGS]\n\n",
            dsv4_version());
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nRun 'dsv4 COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("dsv4 %s\n", dsv4_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "dsv4: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
