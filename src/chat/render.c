/*
 * render.c - messages to the DeepSeek-V4 prompt text.
 *
 * DeepSeek-V4 ships no Jinja template; its encoding_dsv4.py (encode_messages, render_message,
 * merge_tool_messages, sort_tool_results_by_call_order, _drop_thinking_messages) is the rule.
 * This file follows that logic as read in vendored copies of the file (e.g. ftllm's
 * "DeepSeek-V4 Encoding (vendored from official encoding_dsv4.py)"); the text templates below
 * (TOOLS_TEMPLATE, REASONING_EFFORT_MAX, the DSML call layout) are reproduced character for
 * character because the model was trained on them. In short:
 *   - BOS, then each message; tool messages become <tool_result> blocks of a user turn, and a
 *     user message right after such a user turn joins it (blocks joined by "\n\n");
 *   - system: its text, then "\n\n" + the tools block, then the response-format block;
 *   - user/developer: "<｜User｜>" + text; if an assistant turn (or nothing) follows:
 *     "<｜Assistant｜>" + "<think>" (thinking mode, at or after the last user turn, or when
 *     reasoning is kept) else "</think>";
 *   - assistant: [reasoning + "</think>"] + content + ["\n\n" + DSML tool calls] + EOS, the
 *     reasoning part only in thinking mode and after the last user turn (or when kept);
 *   - reasoning is dropped from turns before the last user turn unless keep_reasoning or any
 *     message carries tools; a developer message before the last user turn is dropped then too;
 *   - in thinking mode with reasoning effort "max", the first message is preceded by
 *     REASONING_EFFORT_MAX.
 * Not implemented: the internal "task" / "latest_reminder" / "wo_eos" extensions.
 */
#include "chat.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

#define BOS           "<｜begin▁of▁sentence｜>"
#define EOS           "<｜end▁of▁sentence｜>"
#define USER_TOK      "<｜User｜>"
#define ASSISTANT_TOK "<｜Assistant｜>"
#define THINK_START   "<think>"
#define THINK_END     "</think>"
#define DSML          "｜DSML｜"

static const char reasoning_effort_max[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n";

static const char tools_head[] =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools "
    "by writing a \"<" DSML "tool_calls>\" block like the following:\n\n"
    "<" DSML "tool_calls>\n"
    "<" DSML "invoke name=\"$TOOL_NAME\">\n"
    "<" DSML "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSML
    "parameter>\n"
    "...\n"
    "</" DSML "invoke>\n"
    "<" DSML "invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</" DSML "invoke>\n"
    "</" DSML "tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by " THINK_START "), you MUST output your complete "
    "reasoning inside " THINK_START "..." THINK_END " BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after " THINK_END " with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";

static const char tools_tail[] = "\n\nYou MUST strictly follow the above defined tool name and "
                                 "parameter schemas to invoke tool calls.\n";

/* A user turn after merging: its text and tool-result blocks. */
typedef struct block {
    int is_tool;
    const char *text; /* text, or the tool result */
    const char *tool_id;
} block;

typedef struct rmsg {
    const dsv4_chat_message *m; /* the original (for system/assistant/developer) */
    dsv4_role role;
    block *blocks; /* user turns */
    size_t n_blocks;
    int drop_reasoning;
} rmsg;

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

/* "\n\n" + the tools block, for a JSON array of OpenAI tools ({"type", "function": {...}}). */
static dsv4_status render_tools(chat_buf *b, const char *tools_json)
{
    pj_node *tools;
    DSV4_TRY(pj_parse(tools_json, strlen(tools_json), "tools", &tools));
    if (tools->type != PJ_ARRAY) {
        pj_free(tools);
        return dsv4_fail(DSV4_ERR_INPUT, "tools: not a JSON array");
    }
    buf_puts(b, "\n\n");
    buf_puts(b, tools_head);
    for (const pj_node *t = tools->child; t; t = t->next) {
        const pj_node *fn = pj_get(t, "function");
        if (!fn) {
            pj_free(tools);
            return dsv4_fail(DSV4_ERR_INPUT, "tools: an entry has no \"function\" object");
        }
        if (t != tools->child) buf_puts(b, "\n");
        pj_dump(b, fn);
    }
    buf_puts(b, tools_tail);
    pj_free(tools);
    return DSV4_OK;
}

static int tools_present(const char *tools_json)
{
    if (!tools_json) return 0;
    pj_node *t;
    if (pj_parse(tools_json, strlen(tools_json), "tools", &t) != DSV4_OK) return 1;
    int present = pj_truthy(t);
    pj_free(t);
    return present;
}

static dsv4_status render_response_format(chat_buf *b, const char *rf_json)
{
    pj_node *rf;
    DSV4_TRY(pj_parse(rf_json, strlen(rf_json), "response_format", &rf));
    if (pj_truthy(rf)) {
        buf_puts(b, "\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema "
                    "to reply:\n");
        pj_dump(b, rf);
    }
    pj_free(rf);
    return DSV4_OK;
}

/* One tool call's parameters: json.loads(arguments), each key as a DSML parameter (strings
 * as they are, other values as JSON); arguments that are not JSON become one "arguments"
 * string parameter, as the official encode_arguments_to_dsml does. */
static dsv4_status render_arguments(chat_buf *b, const dsv4_tool_call *tc)
{
    const char *args = str_or_empty(tc->arguments);
    pj_node *obj = NULL;
    if (pj_parse(args, strlen(args), "arguments", &obj) != DSV4_OK) {
        dsv4_clear_error();
        buf_puts(b, "<" DSML "parameter name=\"arguments\" string=\"true\">");
        buf_puts(b, args);
        buf_puts(b, "</" DSML "parameter>");
        return DSV4_OK;
    }
    if (obj->type != PJ_OBJECT) {
        pj_free(obj);
        return dsv4_fail(DSV4_ERR_INPUT, "tool call %s: arguments are not a JSON object",
                         str_or_empty(tc->name));
    }
    for (const pj_node *a = obj->child; a; a = a->next) {
        if (a != obj->child) buf_puts(b, "\n");
        buf_puts(b, "<" DSML "parameter name=\"");
        buf_add(b, a->key, a->key_len);
        buf_puts(b, a->type == PJ_STRING ? "\" string=\"true\">" : "\" string=\"false\">");
        if (a->type == PJ_STRING)
            buf_add(b, a->str, a->len);
        else
            pj_dump(b, a);
        buf_puts(b, "</" DSML "parameter>");
    }
    pj_free(obj);
    return DSV4_OK;
}

static dsv4_status render_tool_calls(chat_buf *b, const dsv4_chat_message *m)
{
    buf_puts(b, "\n\n<" DSML "tool_calls>\n");
    for (size_t i = 0; i < m->n_tool_calls; i++) {
        const dsv4_tool_call *tc = &m->tool_calls[i];
        if (i) buf_puts(b, "\n");
        buf_puts(b, "<" DSML "invoke name=\"");
        buf_puts(b, str_or_empty(tc->name));
        buf_puts(b, "\">\n");
        DSV4_TRY(render_arguments(b, tc));
        buf_puts(b, "\n</" DSML "invoke>");
    }
    buf_puts(b, "\n</" DSML "tool_calls>");
    return DSV4_OK;
}

static int is_user_like(dsv4_role r)
{
    return r == DSV4_ROLE_USER || r == DSV4_ROLE_DEVELOPER;
}

static dsv4_status render_one(chat_buf *b, const rmsg *msgs, size_t n, size_t i,
                              const dsv4_chat_options *o, int drop, long last_user)
{
    const rmsg *r = &msgs[i];
    const dsv4_chat_message *m = r->m;
    if (i == 0 && o->thinking && o->reasoning_effort == DSV4_EFFORT_MAX)
        buf_puts(b, reasoning_effort_max);
    switch (r->role) {
    case DSV4_ROLE_SYSTEM:
    case DSV4_ROLE_DEVELOPER:
        if (r->role == DSV4_ROLE_DEVELOPER) {
            if (!m->content || !*m->content)
                return dsv4_fail(DSV4_ERR_INPUT, "message %zu: a developer message needs content",
                                 i);
            buf_puts(b, USER_TOK);
        }
        buf_puts(b, str_or_empty(m->content));
        if (tools_present(m->tools_json)) DSV4_TRY(render_tools(b, m->tools_json));
        if (m->response_format_json) DSV4_TRY(render_response_format(b, m->response_format_json));
        break;
    case DSV4_ROLE_USER:
        buf_puts(b, USER_TOK);
        for (size_t k = 0; k < r->n_blocks; k++) {
            if (k) buf_puts(b, "\n\n");
            if (r->blocks[k].is_tool) buf_puts(b, "<tool_result>");
            buf_puts(b, str_or_empty(r->blocks[k].text));
            if (r->blocks[k].is_tool) buf_puts(b, "</tool_result>");
        }
        break;
    case DSV4_ROLE_ASSISTANT:
        if (o->thinking && (!drop || (long)i > last_user)) {
            buf_puts(b, r->drop_reasoning ? "" : str_or_empty(m->reasoning_content));
            buf_puts(b, THINK_END);
        }
        buf_puts(b, str_or_empty(m->content));
        if (m->n_tool_calls) DSV4_TRY(render_tool_calls(b, m));
        buf_puts(b, EOS);
        break;
    default:
        return dsv4_fail(DSV4_ERR_INPUT, "message %zu: unknown role %d", i, (int)r->role);
    }
    if (i + 1 < n && msgs[i + 1].role != DSV4_ROLE_ASSISTANT) return DSV4_OK;
    if (is_user_like(r->role)) {
        buf_puts(b, ASSISTANT_TOK);
        buf_puts(b, o->thinking && (!drop || (long)i >= last_user) ? THINK_START : THINK_END);
    }
    return DSV4_OK;
}

/* merge_tool_messages: tool results join the user turn before them (or open one); a user
 * message right after a user turn joins it as a further block. */
static dsv4_status merge_messages(const dsv4_chat_message *in, size_t n, rmsg *out, size_t *n_out,
                                  block *blocks)
{
    size_t k = 0, nb = 0;
    for (size_t i = 0; i < n; i++) {
        const dsv4_chat_message *m = &in[i];
        if (m->role == DSV4_ROLE_TOOL || m->role == DSV4_ROLE_USER) {
            block bl = {m->role == DSV4_ROLE_TOOL, m->content, m->tool_call_id};
            if (k && out[k - 1].role == DSV4_ROLE_USER) {
                /* blocks of one turn are contiguous: this turn is the last one opened */
                blocks[nb++] = bl;
                out[k - 1].n_blocks++;
                continue;
            }
            blocks[nb] = bl;
            out[k++] = (rmsg){m, DSV4_ROLE_USER, &blocks[nb], 1, 0};
            nb++;
            continue;
        }
        if (m->role > DSV4_ROLE_DEVELOPER)
            return dsv4_fail(DSV4_ERR_INPUT, "message %zu: unknown role %d", i, (int)m->role);
        out[k++] = (rmsg){m, m->role, NULL, 0, 0};
    }
    *n_out = k;
    return DSV4_OK;
}

/* sort_tool_results_by_call_order: within a user turn, tool results follow the order of the
 * last assistant turn's tool calls (stable; an unknown id sorts as position 0). */
static void sort_tool_results(rmsg *msgs, size_t n)
{
    const dsv4_chat_message *calls = NULL;
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].role == DSV4_ROLE_ASSISTANT && msgs[i].m->n_tool_calls) {
            calls = msgs[i].m;
            continue;
        }
        if (msgs[i].role != DSV4_ROLE_USER || !calls) continue;
        block *bl = msgs[i].blocks;
        size_t nb = msgs[i].n_blocks, ntool = 0;
        for (size_t k = 0; k < nb; k++) ntool += bl[k].is_tool;
        if (ntool < 2) continue;
        size_t *slot = malloc(ntool * sizeof *slot);
        block *tools = malloc(ntool * sizeof *tools);
        long *key = malloc(ntool * sizeof *key);
        if (!slot || !tools || !key) {
            free(slot), free(tools), free(key);
            continue;
        }
        size_t t = 0;
        for (size_t k = 0; k < nb; k++) {
            if (!bl[k].is_tool) continue;
            slot[t] = k;
            tools[t] = bl[k];
            key[t] = 0;
            for (size_t c = 0; c < calls->n_tool_calls; c++)
                if (bl[k].tool_id && calls->tool_calls[c].id && *calls->tool_calls[c].id &&
                    !strcmp(bl[k].tool_id, calls->tool_calls[c].id))
                    key[t] = (long)c; /* the last call with this id, as the dict keeps */
            t++;
        }
        for (size_t a = 1; a < ntool; a++) /* stable insertion sort */
            for (size_t c = a; c > 0 && key[c - 1] > key[c]; c--) {
                long tk = key[c];
                key[c] = key[c - 1], key[c - 1] = tk;
                block tb = tools[c];
                tools[c] = tools[c - 1], tools[c - 1] = tb;
            }
        for (size_t k = 0; k < ntool; k++) bl[slot[k]] = tools[k];
        free(slot), free(tools), free(key);
    }
}

static long last_user_index(const rmsg *msgs, size_t n)
{
    for (size_t i = n; i-- > 0;)
        if (is_user_like(msgs[i].role)) return (long)i;
    return -1;
}

dsv4_status dsv4_chat_render(const dsv4_chat_message *messages, size_t n,
                             const dsv4_chat_options *opts, char **out)
{
    dsv4_clear_error();
    if (!out || (!messages && n)) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "chat_render: NULL");
    *out = NULL;
    dsv4_chat_options o = {0};
    if (opts) o = *opts;
    if (o.reasoning_effort > DSV4_EFFORT_MAX)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "chat_render: reasoning effort %d",
                         (int)o.reasoning_effort);
    rmsg *msgs = calloc(n + 1, sizeof *msgs);
    block *blocks = calloc(n + 1, sizeof *blocks);
    if (!msgs || !blocks) {
        free(msgs), free(blocks);
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat_render: %zu messages", n);
    }
    size_t nm = 0;
    dsv4_status st = merge_messages(messages, n, msgs, &nm, blocks);
    if (st == DSV4_OK) sort_tool_results(msgs, nm);

    int drop = !o.keep_reasoning;
    for (size_t i = 0; i < nm && st == DSV4_OK; i++)
        if (tools_present(msgs[i].m->tools_json) && msgs[i].role != DSV4_ROLE_USER) drop = 0;
    if (st == DSV4_OK && o.thinking && drop) {
        /* _drop_thinking_messages: before the last user turn, assistant turns lose their
         * reasoning and other roles than system/user are left out. */
        long last = last_user_index(msgs, nm);
        size_t k = 0;
        for (size_t i = 0; i < nm; i++) {
            rmsg r = msgs[i];
            if ((long)i < last && r.role == DSV4_ROLE_ASSISTANT)
                r.drop_reasoning = 1;
            else if ((long)i < last && r.role == DSV4_ROLE_DEVELOPER)
                continue;
            msgs[k++] = r;
        }
        nm = k;
    }
    chat_buf b = {0};
    if (!o.no_bos) buf_puts(&b, BOS);
    long last = last_user_index(msgs, nm);
    for (size_t i = 0; i < nm && st == DSV4_OK; i++)
        st = render_one(&b, msgs, nm, i, &o, drop, last);
    free(msgs);
    free(blocks);
    if (st != DSV4_OK) {
        buf_free(&b);
        return st;
    }
    return buf_finish(&b, out);
}
