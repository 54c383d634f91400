/*
 * stop.h - user stop strings matched in streamed text across token boundaries.
 *
 * Why hold text back: a stop string may begin in one token's text and end in a later one's,
 * and it must never be printed. So text that could still be the start of a stop string is kept
 * until the next piece either completes the match (stop: everything before it is released) or
 * rules it out (released).
 */
#ifndef DSV4_GENERATE_STOP_H
#define DSV4_GENERATE_STOP_H

#include "dsv4.h"

#include <stddef.h>

typedef struct dsv4_stop_matcher {
    const char *const *stop; /* borrowed */
    size_t n_stop;
    char *held; /* owned: text not yet released */
    size_t held_len, held_cap;
    char *out; /* owned: the text released by the last call */
    size_t out_cap;
} dsv4_stop_matcher;

/* Borrows the stop strings (each non-empty, else DSV4_ERR_INVALID_ARGUMENT). */
dsv4_status dsv4_stop_init(dsv4_stop_matcher *m, const char *const *stop, size_t n_stop);
void dsv4_stop_free(dsv4_stop_matcher *m);

/* Appends text; *out and *out_len receive the released text (valid until the next call). *hit is
 * the index of the stop string found (the text from its start on is dropped), or -1. */
dsv4_status dsv4_stop_push(dsv4_stop_matcher *m, const char *text, size_t len, const char **out,
                           size_t *out_len, int *hit);

/* End of the stream: releases everything held. */
dsv4_status dsv4_stop_flush(dsv4_stop_matcher *m, const char **out, size_t *out_len);

#endif
