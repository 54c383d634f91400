/*
 * prof.c - per-op timing for benchmarks (backend.h dsv4_bk_prof_*). Each mark closes the
 * interval since the previous one and charges it to the mark's label. On CUDA the marks are
 * events on the stream, read back in batches so that timing does not serialise the launches;
 * on the CPU they are wall-clock readings.
 */
#include "backend/backend.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>

#ifdef DSV4_HAVE_CUDA
dsv4_status dsv4_cuda_event_record(dsv4_backend *b, void **ev);
float dsv4_cuda_event_ms(void *from, void *to);
void dsv4_cuda_event_destroy(void *ev);
void dsv4_cuda_profiler_range(int on);
#endif

enum { PROF_LABELS = 96, PROF_EVENTS = 4096 };

struct dsv4_bk_prof {
    dsv4_bk_prof_entry e[PROF_LABELS];
    int n_labels;
    void *ev[PROF_EVENTS]; /* CUDA: ev[0] opens, ev[i] closes interval i */
    int lab[PROF_EVENTS];  /* label of interval i */
    int n_ev;
    double t_prev; /* CPU: seconds at the previous mark */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int label_index(dsv4_bk_prof *p, const char *label)
{
    for (int i = 0; i < p->n_labels; i++)
        if (!strcmp(p->e[i].label, label)) return i;
    if (p->n_labels == PROF_LABELS) return PROF_LABELS - 1; /* the last label takes overflow */
    dsv4_bk_prof_entry *e = &p->e[p->n_labels];
    snprintf(e->label, sizeof e->label, "%s", label);
    return p->n_labels++;
}

#ifdef DSV4_HAVE_CUDA
/* Reads the closed intervals, keeps the last event as the opening of the next batch. */
static void drain(dsv4_bk_prof *p)
{
    for (int i = 1; i < p->n_ev; i++) {
        p->e[p->lab[i]].ms += dsv4_cuda_event_ms(p->ev[i - 1], p->ev[i]);
        p->e[p->lab[i]].calls++;
    }
    if (p->n_ev > 1) {
        void *t = p->ev[0];
        p->ev[0] = p->ev[p->n_ev - 1];
        p->ev[p->n_ev - 1] = t;
        p->n_ev = 1;
    }
}
#endif

dsv4_status dsv4_bk_prof_start(dsv4_backend *b)
{
    if (!b->prof) {
        b->prof = calloc(1, sizeof *b->prof);
        if (!b->prof) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating the op timer");
    }
    dsv4_bk_prof *p = b->prof;
    p->n_labels = 0;
    memset(p->e, 0, sizeof p->e);
    p->n_ev = 0;
    p->t_prev = now_s();
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) {
        DSV4_TRY(dsv4_cuda_event_record(b, &p->ev[0]));
        p->n_ev = 1;
        dsv4_cuda_profiler_range(1);
    }
#endif
    return DSV4_OK;
}

void dsv4_bk_prof_mark(dsv4_backend *b, const char *label)
{
    dsv4_bk_prof *p = b->prof;
    if (!p || (b->kind == DSV4_DEVICE_CUDA && p->n_ev == 0)) return;
    const int li = label_index(p, label);
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) {
        if (p->n_ev == PROF_EVENTS) drain(p);
        if (dsv4_cuda_event_record(b, &p->ev[p->n_ev]) != DSV4_OK) return;
        p->lab[p->n_ev++] = li;
        return;
    }
#endif
    const double t = now_s();
    p->e[li].ms += 1e3 * (t - p->t_prev);
    p->e[li].calls++;
    p->t_prev = t;
}

int dsv4_bk_prof_stop(dsv4_backend *b, dsv4_bk_prof_entry *out, int max)
{
    dsv4_bk_prof *p = b->prof;
    if (!p) return 0;
#ifdef DSV4_HAVE_CUDA
    if (b->kind == DSV4_DEVICE_CUDA) {
        dsv4_cuda_profiler_range(0);
        drain(p);
    }
    for (int i = 0; i < PROF_EVENTS; i++) dsv4_cuda_event_destroy(p->ev[i]);
#endif
    int n = p->n_labels < max ? p->n_labels : max;
    if (out && n > 0) memcpy(out, p->e, (size_t)n * sizeof *out);
    free(p);
    b->prof = NULL;
    return out ? n : 0;
}
