/*
 * cmd_render.c - `dsv4 render --chat FILE.json`: prints the DeepSeek-V4 prompt for an
 * OpenAI-style request (a messages list, or an object with "messages", "tools", "thinking",
 * "reasoning_effort", "keep_reasoning"). With -m/--tokenizer it prints the ids instead.
 */
#include "commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_render(int argc, char **argv)
{
    const char *chat = NULL, *model = NULL, *file = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--chat") && i + 1 < argc)
            chat = argv[++i];
        else if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            file = argv[++i];
        else {
            int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            fprintf(help ? stdout : stderr,
                    "usage: dsv4 render --chat FILE.json [-m MODEL_DIR | --tokenizer FILE]\n"
                    "  prints the prompt text; with a tokenizer, its ids as a JSON array\n");
            return help ? 0 : 2;
        }
    }
    if (!chat) {
        fprintf(stderr, "dsv4 render: --chat FILE.json is required ('-' for stdin)\n");
        return 2;
    }
    size_t len;
    char *json = cli_read_path(chat, &len);
    if (!json) {
        fprintf(stderr, "dsv4 render: %s: %s\n", chat, strerror(errno ? errno : EIO));
        return 1;
    }
    char *prompt = NULL;
    dsv4_status st = dsv4_chat_render_json(json, len, &prompt);
    free(json);
    if (st != DSV4_OK) return cli_report("render", st);
    if (!model && !file) {
        fputs(prompt, stdout);
        dsv4_free(prompt);
        return 0;
    }
    char path[4096];
    if (file)
        snprintf(path, sizeof path, "%s", file);
    else
        snprintf(path, sizeof path, "%s/tokenizer.json", model);
    dsv4_tokenizer *tok;
    st = dsv4_tokenizer_open(path, &tok);
    int32_t *ids = NULL;
    size_t n = 0;
    if (st == DSV4_OK) st = dsv4_tokenizer_encode(tok, prompt, strlen(prompt), 0, &ids, &n);
    dsv4_free(prompt);
    if (st == DSV4_OK) dsv4_tokenizer_close(tok);
    if (st != DSV4_OK) return cli_report("render", st);
    putchar('[');
    for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("]\n");
    dsv4_free(ids);
    return 0;
}
