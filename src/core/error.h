/*
 * error.h - how library code reports failure.
 *
 * Every failing path ends in `return dsv4_fail(STATUS, "fmt", ...)`: it stores the formatted
 * detail text in a per-thread buffer (read back with dsv4_last_error()) and returns STATUS, so
 * the status and its explanation travel together. Helpers that only propagate a status use
 * DSV4_TRY. Programmer errors (broken invariants, not bad input) use DSV4_ASSERT.
 */
#ifndef DSV4_CORE_ERROR_H
#define DSV4_CORE_ERROR_H

#include "dsv4.h"

#include <stdio.h>
#include <stdlib.h>

#if defined(__GNUC__)
#define DSV4_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DSV4_PRINTF(a, b)
#endif

/* Records the detail text for this thread and returns `status`. */
dsv4_status dsv4_fail(dsv4_status status, const char *fmt, ...) DSV4_PRINTF(2, 3);

/* Prepends "prefix: " to the current detail text (adds context on the way up). */
dsv4_status dsv4_fail_context(dsv4_status status, const char *fmt, ...) DSV4_PRINTF(2, 3);

/* Clears the detail text (called at the start of each public entry point). */
void dsv4_clear_error(void);

#define DSV4_TRY(expr)                                                                             \
    do {                                                                                           \
        dsv4_status dsv4_try_status_ = (expr);                                                     \
        if (dsv4_try_status_ != DSV4_OK) return dsv4_try_status_;                                  \
    } while (0)

/* Broken invariant inside the library: a bug, not bad input. */
#define DSV4_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "dsv4: internal error: %s (%s:%d)\n", #cond, __FILE__, __LINE__);      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
