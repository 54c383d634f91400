/*
 * render_json.c - dsv4_chat_render_json: an OpenAI-style request (JSON) to dsv4_chat_message
 * structs, then the renderer. Request-level "tools" and "response_format" go onto the first
 * system message (an empty one is put first when there is none), as DeepSeek's serving code
 * hands them to encode_messages. Tool-call arguments given as a JSON object instead of a
 * string are treated like the official encoder treats a non-string: one parameter named
 * "arguments". Content given as a list of parts is joined (text parts, "\n\n" between).
 */
#include "chat.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

typedef struct owned {
    char **p;
    size_t n, cap;
} owned;

static char *keep(owned *o, char *s)
{
    if (!s) return NULL;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        char **p = realloc(o->p, cap * sizeof *p);
        if (!p) {
            free(s);
            return NULL;
        }
        o->p = p;
        o->cap = cap;
    }
    return o->p[o->n++] = s;
}

static char *dump(owned *o, const pj_node *n)
{
    chat_buf b = {0};
    pj_dump(&b, n);
    char *s = NULL;
    if (buf_finish(&b, &s) != DSV4_OK) return NULL;
    return keep(o, s);
}

/* A message's text: a string, null, or a list of {"type": "text", "text": ...} parts. */
static dsv4_status text_of(owned *o, const pj_node *n, size_t i, const char **out)
{
    *out = NULL;
    if (!n || n->type == PJ_NULL) return DSV4_OK;
    if (n->type == PJ_STRING) {
        *out = n->str;
        return DSV4_OK;
    }
    if (n->type != PJ_ARRAY)
        return dsv4_fail(DSV4_ERR_INPUT, "message %zu: content is neither text nor a list", i);
    chat_buf b = {0};
    for (const pj_node *p = n->child; p; p = p->next) {
        const pj_node *type = pj_get(p, "type"), *text = pj_get(p, "text");
        if (p != n->child) buf_puts(&b, "\n\n");
        if (type && type->type == PJ_STRING && !strcmp(type->str, "text") && text &&
            text->type == PJ_STRING) {
            buf_add(&b, text->str, text->len);
        } else {
            buf_puts(&b, "[Unsupported ");
            buf_puts(&b, type && type->type == PJ_STRING ? type->str : "None");
            buf_puts(&b, "]");
        }
    }
    char *s = NULL;
    DSV4_TRY(buf_finish(&b, &s));
    *out = keep(o, s);
    return *out ? DSV4_OK : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat_render_json");
}

static const char *str_field(const pj_node *obj, const char *key)
{
    const pj_node *v = pj_get(obj, key);
    return v && v->type == PJ_STRING ? v->str : NULL;
}

static dsv4_status convert_message(owned *o, const pj_node *m, size_t i, dsv4_chat_message *out,
                                   dsv4_tool_call **calls_out)
{
    static const char *roles[] = {"system", "user", "assistant", "tool", "developer"};
    const char *role = str_field(m, "role");
    memset(out, 0, sizeof *out);
    size_t r = 0;
    while (role && r < 5 && strcmp(role, roles[r])) r++;
    if (!role || r == 5)
        return dsv4_fail(DSV4_ERR_INPUT,
                         "message %zu: role \"%s\" is not one of system, user, "
                         "assistant, tool, developer",
                         i, role ? role : "(missing)");
    out->role = (dsv4_role)r;
    DSV4_TRY(text_of(o, pj_get(m, "content"), i, &out->content));
    out->reasoning_content = str_field(m, "reasoning_content");
    out->tool_call_id = str_field(m, "tool_call_id");
    const pj_node *tools = pj_get(m, "tools"), *rf = pj_get(m, "response_format");
    if (tools && tools->type != PJ_NULL) out->tools_json = dump(o, tools);
    if (rf && rf->type != PJ_NULL) out->response_format_json = dump(o, rf);
    const pj_node *tc = pj_get(m, "tool_calls");
    size_t n = 0;
    for (const pj_node *c = tc && tc->type == PJ_ARRAY ? tc->child : NULL; c; c = c->next) n++;
    if (!n) return DSV4_OK;
    dsv4_tool_call *calls = calloc(n, sizeof *calls);
    if (!calls) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat_render_json");
    *calls_out = calls;
    size_t k = 0;
    for (const pj_node *c = tc->child; c; c = c->next, k++) {
        const pj_node *fn = pj_get(c, "function");
        if (!fn || fn->type != PJ_OBJECT)
            return dsv4_fail(DSV4_ERR_INPUT, "message %zu: tool call %zu has no function", i, k);
        calls[k].id = str_field(c, "id");
        calls[k].name = str_field(fn, "name");
        const pj_node *args = pj_get(fn, "arguments");
        if (args && args->type == PJ_STRING) {
            calls[k].arguments = args->str;
        } else if (args) {
            chat_buf b = {0};
            buf_puts(&b, "{\"arguments\": ");
            pj_dump(&b, args);
            buf_puts(&b, "}");
            char *s = NULL;
            DSV4_TRY(buf_finish(&b, &s));
            calls[k].arguments = keep(o, s);
        }
    }
    out->tool_calls = calls;
    out->n_tool_calls = n;
    return DSV4_OK;
}

dsv4_status dsv4_chat_render_json(const char *json, size_t len, char **out)
{
    dsv4_clear_error();
    if (!json || !out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "chat_render_json: NULL");
    *out = NULL;
    pj_node *root;
    DSV4_TRY(pj_parse(json, len, "chat request", &root));
    const pj_node *list = root->type == PJ_ARRAY ? root : pj_get(root, "messages");
    if (!list || list->type != PJ_ARRAY) {
        pj_free(root);
        return dsv4_fail(DSV4_ERR_INPUT, "chat request: no \"messages\" list");
    }
    dsv4_chat_options opts = {0};
    const pj_node *v;
    if ((v = pj_get(root, "thinking"))) opts.thinking = pj_truthy(v);
    if ((v = pj_get(root, "keep_reasoning"))) opts.keep_reasoning = pj_truthy(v);
    if ((v = pj_get(root, "reasoning_effort")) && v->type == PJ_STRING) {
        if (!strcmp(v->str, "max"))
            opts.reasoning_effort = DSV4_EFFORT_MAX;
        else if (!strcmp(v->str, "high"))
            opts.reasoning_effort = DSV4_EFFORT_HIGH;
        else {
            pj_free(root);
            return dsv4_fail(DSV4_ERR_INPUT, "reasoning_effort \"%s\" (use \"high\" or \"max\")",
                             v->str);
        }
    }
    size_t n = 0;
    for (const pj_node *m = list->child; m; m = m->next) n++;
    dsv4_chat_message *msgs = calloc(n + 1, sizeof *msgs);
    dsv4_tool_call **calls = calloc(n + 1, sizeof *calls);
    owned o = {0};
    dsv4_status st = msgs && calls ? DSV4_OK : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "chat request");
    size_t k = 1; /* slot 0 is for a system message made to carry request-level tools */
    for (const pj_node *m = list->child; m && st == DSV4_OK; m = m->next, k++)
        st = convert_message(&o, m, k - 1, &msgs[k], &calls[k]);
    const pj_node *tools = pj_get(root, "tools"), *rf = pj_get(root, "response_format");
    int attach = (pj_truthy(tools) || pj_truthy(rf)) && st == DSV4_OK;
    dsv4_chat_message *first = msgs + 1;
    size_t count = n;
    if (attach) {
        dsv4_chat_message *sys = NULL;
        for (size_t i = 1; i <= n && !sys; i++)
            if (msgs[i].role == DSV4_ROLE_SYSTEM) sys = &msgs[i];
        if (!sys) {
            sys = &msgs[0];
            sys->role = DSV4_ROLE_SYSTEM;
            sys->content = "";
            first = msgs;
            count = n + 1;
        }
        if (pj_truthy(tools)) sys->tools_json = dump(&o, tools);
        if (pj_truthy(rf)) sys->response_format_json = dump(&o, rf);
    }
    if (st == DSV4_OK) st = dsv4_chat_render(first, count, &opts, out);
    for (size_t i = 0; calls && i <= n; i++) free(calls[i]);
    for (size_t i = 0; i < o.n; i++) free(o.p[i]);
    free(o.p);
    free(calls);
    free(msgs);
    pj_free(root);
    return st;
}
