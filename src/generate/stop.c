/*
 * stop.c - the stop-string matcher of stop.h: a held-back tail that is the longest suffix of
 * the text being a proper prefix of some stop string, searched again as each piece arrives.
 */
#include "generate/stop.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

static dsv4_status reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return DSV4_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "stop strings: out of memory");
    *buf = b;
    *cap = c;
    return DSV4_OK;
}

dsv4_status dsv4_stop_init(dsv4_stop_matcher *m, const char *const *stop, size_t n_stop)
{
    memset(m, 0, sizeof *m);
    for (size_t i = 0; i < n_stop; i++)
        if (!stop[i] || !stop[i][0])
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "stop string %zu is empty", i);
    m->stop = stop;
    m->n_stop = n_stop;
    return DSV4_OK;
}

void dsv4_stop_free(dsv4_stop_matcher *m)
{
    free(m->held);
    free(m->out);
    memset(m, 0, sizeof *m);
}

/* Moves held[0..n) to out and keeps the rest held. */
static dsv4_status release(dsv4_stop_matcher *m, size_t n, size_t keep_from, const char **out,
                           size_t *out_len)
{
    DSV4_TRY(reserve(&m->out, &m->out_cap, n + 1));
    memcpy(m->out, m->held, n);
    m->out[n] = 0;
    memmove(m->held, m->held + keep_from, m->held_len - keep_from);
    m->held_len -= keep_from;
    *out = m->out;
    *out_len = n;
    return DSV4_OK;
}

dsv4_status dsv4_stop_push(dsv4_stop_matcher *m, const char *text, size_t len, const char **out,
                           size_t *out_len, int *hit)
{
    *hit = -1;
    DSV4_TRY(reserve(&m->held, &m->held_cap, m->held_len + len + 1));
    if (len) memcpy(m->held + m->held_len, text, len);
    m->held_len += len;
    /* The earliest complete match wins (on equal starts, the first listed). */
    size_t best = (size_t)-1;
    for (size_t i = 0; i < m->n_stop; i++) {
        size_t sl = strlen(m->stop[i]);
        for (size_t at = 0; at + sl <= m->held_len && at < best; at++)
            if (!memcmp(m->held + at, m->stop[i], sl)) {
                best = at;
                *hit = (int)i;
                break;
            }
    }
    if (*hit >= 0) {
        DSV4_TRY(release(m, best, m->held_len, out, out_len));
        return DSV4_OK;
    }
    /* Keep the longest tail that is a proper prefix of a stop string. */
    size_t keep = 0;
    for (size_t i = 0; i < m->n_stop; i++) {
        size_t sl = strlen(m->stop[i]);
        size_t k = sl - 1 < m->held_len ? sl - 1 : m->held_len;
        for (; k > keep; k--)
            if (!memcmp(m->held + m->held_len - k, m->stop[i], k)) break;
        if (k > keep) keep = k;
    }
    size_t n = m->held_len - keep;
    return release(m, n, n, out, out_len);
}

dsv4_status dsv4_stop_flush(dsv4_stop_matcher *m, const char **out, size_t *out_len)
{
    return release(m, m->held_len, m->held_len, out, out_len);
}
