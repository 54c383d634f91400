/*
 * error.c - per-thread error text behind dsv4_last_error(), and the status names.
 */
#include "core/error.h"

#include <stdarg.h>
#include <string.h>

enum { ERROR_TEXT_SIZE = 2048 };
static _Thread_local char error_text[ERROR_TEXT_SIZE];

dsv4_status dsv4_fail(dsv4_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_text, sizeof error_text, fmt, ap);
    va_end(ap);
    return status;
}

dsv4_status dsv4_fail_context(dsv4_status status, const char *fmt, ...)
{
    char prefix[ERROR_TEXT_SIZE];
    char old[ERROR_TEXT_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_text, sizeof old);
    /* Truncation is acceptable: the text is for people, and both parts are bounded. */
    size_t n = strlen(prefix);
    if (n > sizeof error_text - 3) n = sizeof error_text - 3;
    memcpy(error_text, prefix, n);
    memcpy(error_text + n, ": ", 2);
    size_t room = sizeof error_text - n - 3, m = strlen(old);
    if (m > room) m = room;
    memcpy(error_text + n + 2, old, m);
    error_text[n + 2 + m] = '\0';
    return status;
}

void dsv4_clear_error(void)
{
    error_text[0] = '\0';
}

const char *dsv4_last_error(void)
{
    return error_text;
}

const char *dsv4_status_name(dsv4_status status)
{
    switch (status) {
    case DSV4_OK:
        return "DSV4_OK";
    case DSV4_ERR_INVALID_ARGUMENT:
        return "DSV4_ERR_INVALID_ARGUMENT";
    case DSV4_ERR_IO:
        return "DSV4_ERR_IO";
    case DSV4_ERR_FORMAT:
        return "DSV4_ERR_FORMAT";
    case DSV4_ERR_CONFIG:
        return "DSV4_ERR_CONFIG";
    case DSV4_ERR_MISSING_TENSOR:
        return "DSV4_ERR_MISSING_TENSOR";
    case DSV4_ERR_TENSOR_SHAPE:
        return "DSV4_ERR_TENSOR_SHAPE";
    case DSV4_ERR_TENSOR_DTYPE:
        return "DSV4_ERR_TENSOR_DTYPE";
    case DSV4_ERR_UNSUPPORTED:
        return "DSV4_ERR_UNSUPPORTED";
    case DSV4_ERR_OUT_OF_MEMORY:
        return "DSV4_ERR_OUT_OF_MEMORY";
    case DSV4_ERR_DEVICE:
        return "DSV4_ERR_DEVICE";
    case DSV4_ERR_INPUT:
        return "DSV4_ERR_INPUT";
    case DSV4_ERR_CONTEXT_OVERFLOW:
        return "DSV4_ERR_CONTEXT_OVERFLOW";
    }
    return "DSV4_ERR_UNKNOWN";
}

const char *dsv4_version(void)
{
    return "0.1.0";
}
