/*
 * chat.h - internals shared by the chat renderer and parser: a growable string, and a small
 * JSON reader/writer that reproduces Python's json.dumps(ensure_ascii=False), which the
 * official renderer uses for tool schemas and arguments (cJSON's printer differs in spacing and
 * loses how numbers were written, so the ids would differ).
 */
#ifndef DSV4_CHAT_CHAT_H
#define DSV4_CHAT_CHAT_H

#include "dsv4.h"

#include <stddef.h>

typedef struct chat_buf {
    char *s;
    size_t len, cap;
    int oom; /* an append failed; the buffer is then unusable */
} chat_buf;

void buf_add(chat_buf *b, const char *s, size_t n);
void buf_puts(chat_buf *b, const char *s);
/* Takes ownership of the text (NUL-terminated); DSV4_ERR_OUT_OF_MEMORY if an append failed. */
dsv4_status buf_finish(chat_buf *b, char **out);
void buf_free(chat_buf *b);

typedef enum pj_type {
    PJ_NULL,
    PJ_FALSE,
    PJ_TRUE,
    PJ_NUMBER,
    PJ_STRING,
    PJ_ARRAY,
    PJ_OBJECT
} pj_type;

typedef struct pj_node {
    pj_type type;
    char *str; /* STRING: the decoded value; NUMBER: the literal as written */
    size_t len;
    char *key; /* member name inside an object (decoded), else NULL */
    size_t key_len;
    struct pj_node *child, *next;
} pj_node;

/* Parses JSON text; a syntax error is DSV4_ERR_INPUT naming `what` and the offset. */
dsv4_status pj_parse(const char *s, size_t len, const char *what, pj_node **out);
void pj_free(pj_node *n);
/* The member `key` of an object (the last one, as Python's dict keeps), or NULL. */
const pj_node *pj_get(const pj_node *obj, const char *key);
/* Python truthiness: null/false/0/""/[]/{} are false. */
int pj_truthy(const pj_node *n);
/* Appends json.dumps(n, ensure_ascii=False). */
void pj_dump(chat_buf *b, const pj_node *n);
/* Appends a string as json.dumps would write it (quotes included). */
void pj_dump_string(chat_buf *b, const char *s, size_t len);

#endif
