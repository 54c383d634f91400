/*
 * test_tokenizer_chat.c - the chat renderer against hand-written expected prompts, and the
 * completion parser (whole and streamed in small pieces, tool calls split anywhere).
 *
 * usage: test_tokenizer_chat TOKENIZER_JSON FIXTURE_DIR
 * Each FIXTURE_DIR/NAME.json is a request plus "expected" (the prompt written by hand from the
 * rules of encoding_dsv4.py). The ids of those strings are compared with HF tokenizers by the
 * parity test; here the rendered ids must start with BOS and hold it exactly once.
 */
#include "dsv4.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdlib.h>

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_fixtures(const dsv4_tokenizer *tok, const char *dir)
{
    DIR *d = opendir(dir);
    CHECK_MSG(d != NULL, "cannot open %s", dir);
    if (!d) return;
    char *names[256];
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 256;)
        if (strstr(e->d_name, ".json")) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    CHECK_MSG(n >= 10, "only %zu chat fixtures", n);
    for (size_t i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        size_t len = 0;
        char *json = test_read_file(path, &len);
        cJSON *root = json ? cJSON_Parse(json) : NULL;
        const cJSON *exp = cJSON_GetObjectItemCaseSensitive(root, "expected");
        CHECK_MSG(cJSON_IsString(exp), "%s: no expected string", names[i]);
        char *prompt = NULL;
        dsv4_status st = dsv4_chat_render_json(json, len, &prompt);
        CHECK_MSG(st == DSV4_OK, "%s: %s", names[i], dsv4_last_error());
        if (st == DSV4_OK && cJSON_IsString(exp)) {
            CHECK_MSG(!strcmp(prompt, exp->valuestring), "%s: rendered\n%s\nexpected\n%s", names[i],
                      prompt, exp->valuestring);
            int32_t *ids;
            size_t nid;
            CHECK(dsv4_tokenizer_encode(tok, prompt, strlen(prompt), 0, &ids, &nid) == DSV4_OK);
            size_t bos = 0;
            for (size_t k = 0; k < nid; k++) bos += ids[k] == 0;
            CHECK_MSG(nid > 0 && ids[0] == 0 && bos == 1, "%s: BOS count %zu", names[i], bos);
            dsv4_free(ids);
        }
        dsv4_free(prompt);
        cJSON_Delete(root);
        free(json);
        free(names[i]);
    }
}

#define EOS "<｜end▁of▁sentence｜>"
#define D   "｜DSML｜"

static const char tool_completion[] =
    "Let me check.</think>Checking now.\n\n<" D "tool_calls>\n<" D
    "invoke name=\"get_weather\">\n<" D "parameter name=\"city\" string=\"true\">São \"Paulo\"</" D
    "parameter>\n<" D "parameter name=\"days\" string=\"false\">3</" D "parameter>\n</" D
    "invoke>\n<" D "invoke name=\"noop\">\n</" D "invoke>\n</" D "tool_calls>" EOS;

static void check_tool_result(const char *reasoning, const char *content,
                              const dsv4_tool_call *calls, size_t n, int finished)
{
    CHECK(!strcmp(reasoning, "Let me check."));
    CHECK(!strcmp(content, "Checking now."));
    CHECK(n == 2);
    if (n == 2) {
        CHECK(!strcmp(calls[0].name, "get_weather"));
        CHECK_MSG(!strcmp(calls[0].arguments, "{\"city\": \"São \\\"Paulo\\\"\", \"days\": 3}"),
                  "%s", calls[0].arguments);
        CHECK(!strcmp(calls[1].name, "noop") && !strcmp(calls[1].arguments, "{}"));
    }
    CHECK(finished);
}

static void test_parse_whole(void)
{
    dsv4_chat_parsed p;
    const char think[] = "Hmm, 12.</think>The answer is 12." EOS;
    CHECK(dsv4_chat_parse(think, sizeof think - 1, 1, &p) == DSV4_OK);
    CHECK(!strcmp(p.reasoning, "Hmm, 12.") && !strcmp(p.content, "The answer is 12."));
    CHECK(p.n_tool_calls == 0 && p.finished);
    dsv4_chat_parsed_free(&p);

    const char chat[] = "Plain answer." EOS;
    CHECK(dsv4_chat_parse(chat, sizeof chat - 1, 0, &p) == DSV4_OK);
    CHECK(!strcmp(p.reasoning, "") && !strcmp(p.content, "Plain answer.") && p.finished);
    dsv4_chat_parsed_free(&p);

    const char cut[] = "Cut off mid"; /* max tokens reached: no EOS */
    CHECK(dsv4_chat_parse(cut, sizeof cut - 1, 0, &p) == DSV4_OK);
    CHECK(!strcmp(p.content, "Cut off mid") && !p.finished);
    dsv4_chat_parsed_free(&p);

    CHECK(dsv4_chat_parse(tool_completion, sizeof tool_completion - 1, 1, &p) == DSV4_OK);
    check_tool_result(p.reasoning, p.content, p.tool_calls, p.n_tool_calls, p.finished);
    dsv4_chat_parsed_free(&p);

    const char bad[] =
        "x\n\n<" D "tool_calls>\n<" D "invoke nom=\"f\">\n</" D "invoke>\n</" D "tool_calls>" EOS;
    CHECK(dsv4_chat_parse(bad, sizeof bad - 1, 0, &p) == DSV4_ERR_INPUT);
    const char unclosed[] = "x\n\n<" D "tool_calls>\n<" D "invoke name=\"f\">\n";
    CHECK(dsv4_chat_parse(unclosed, sizeof unclosed - 1, 0, &p) == DSV4_ERR_INPUT);
    const char after[] = "x\n\n<" D "tool_calls>\n</" D "tool_calls>junk" EOS;
    CHECK(dsv4_chat_parse(after, sizeof after - 1, 0, &p) == DSV4_ERR_INPUT);
}

/* The same completion pushed `step` bytes at a time: the accumulated deltas must equal the
 * whole parse, and no marker text may leak into reasoning or content. */
static void test_parse_stream(size_t step)
{
    dsv4_chat_parser *ps;
    CHECK(dsv4_chat_parser_open(1, &ps) == DSV4_OK);
    char reasoning[256] = "", content[256] = "";
    size_t rl = 0, cl = 0;
    dsv4_tool_call calls[4];
    char names[4][64], args[4][256];
    size_t nc = 0;
    int finished = 0;
    size_t len = sizeof tool_completion - 1;
    for (size_t i = 0; i <= len; i += step) {
        dsv4_chat_delta d;
        size_t k = i + step <= len ? step : len - i;
        dsv4_status st = dsv4_chat_parser_push(ps, tool_completion + i, k, &d);
        CHECK_MSG(st == DSV4_OK, "push at %zu: %s", i, dsv4_last_error());
        if (st != DSV4_OK) break;
        memcpy(reasoning + rl, d.reasoning, d.reasoning_len), rl += d.reasoning_len;
        memcpy(content + cl, d.content, d.content_len), cl += d.content_len;
        for (size_t c = 0; c < d.n_tool_calls && nc < 4; c++, nc++) {
            snprintf(names[nc], sizeof names[nc], "%s", d.tool_calls[c].name);
            snprintf(args[nc], sizeof args[nc], "%s", d.tool_calls[c].arguments);
            calls[nc] = (dsv4_tool_call){NULL, names[nc], args[nc]};
        }
        finished |= d.finished;
    }
    dsv4_chat_delta d;
    CHECK(dsv4_chat_parser_finish(ps, &d) == DSV4_OK);
    reasoning[rl] = 0;
    content[cl] = 0;
    check_tool_result(reasoning, content, calls, nc, finished || d.finished);
    dsv4_chat_parser_close(ps);
}

/* A rendered assistant turn parses back into the message it came from. */
static void test_render_parse_roundtrip(void)
{
    dsv4_tool_call tc = {"id1", "lookup", "{\"q\": \"x < y\", \"n\": [1, 2]}"};
    dsv4_chat_message msgs[2] = {{.role = DSV4_ROLE_USER, .content = "go"},
                                 {.role = DSV4_ROLE_ASSISTANT,
                                  .content = "ok",
                                  .reasoning_content = "think",
                                  .tool_calls = &tc,
                                  .n_tool_calls = 1}};
    dsv4_chat_options o = {.thinking = 1};
    char *prompt;
    CHECK(dsv4_chat_render(msgs, 2, &o, &prompt) == DSV4_OK);
    const char *start = strstr(prompt, "<think>");
    CHECK(start != NULL);
    if (start) {
        start += strlen("<think>");
        dsv4_chat_parsed p;
        CHECK(dsv4_chat_parse(start, strlen(start), 1, &p) == DSV4_OK);
        CHECK(!strcmp(p.reasoning, "think") && !strcmp(p.content, "ok") && p.n_tool_calls == 1);
        if (p.n_tool_calls == 1) {
            CHECK(!strcmp(p.tool_calls[0].name, "lookup"));
            CHECK_MSG(!strcmp(p.tool_calls[0].arguments, tc.arguments), "%s",
                      p.tool_calls[0].arguments);
        }
        dsv4_chat_parsed_free(&p);
    }
    dsv4_free(prompt);
    /* Errors: bad JSON, unknown role, empty developer message. */
    char *out;
    CHECK(dsv4_chat_render_json("[{\"role\": \"user\"", 16, &out) == DSV4_ERR_INPUT);
    const char *unknown = "[{\"role\": \"robot\", \"content\": \"x\"}]";
    CHECK(dsv4_chat_render_json(unknown, strlen(unknown), &out) == DSV4_ERR_INPUT);
    CHECK_CONTAINS(dsv4_last_error(), "robot");
    dsv4_chat_message dev = {.role = DSV4_ROLE_DEVELOPER};
    CHECK(dsv4_chat_render(&dev, 1, NULL, &out) == DSV4_ERR_INPUT);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON FIXTURE_DIR\n", argv[0]);
        return 2;
    }
    dsv4_tokenizer *tok;
    if (dsv4_tokenizer_open(argv[1], &tok) != DSV4_OK) {
        fprintf(stderr, "open: %s\n", dsv4_last_error());
        return 1;
    }
    test_fixtures(tok, argv[2]);
    test_parse_whole();
    for (size_t step = 1; step <= 9; step++) test_parse_stream(step);
    test_render_parse_roundtrip();
    dsv4_tokenizer_close(tok);
    return test_finish();
}
