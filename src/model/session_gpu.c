/*
 * session_gpu.c - sessions on the GPU: a dsv4_session whose state is one slot of the model's
 * CUDA engine (engine/engine.h), so that run, chat and score drive the GPU through the same
 * public calls as the CPU. The engine is created with the first CUDA session of a model and
 * shared by up to DSV4_CUDA_SESSIONS sessions (one slot each). Its state keeps only what later
 * tokens read, so a truncation empties the slot and re-runs the kept prefix (the token ids are
 * kept here on the host).
 */
#include "core/error.h"
#include "engine/engine.h"
#include "model/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dsv4_status engine_for(dsv4_session *s)
{
    dsv4_model *m = s->m;
    if (m->engine) {
        const int64_t have = dsv4_engine_get_plan(m->engine)->max_context;
        if (s->opt.max_context > have)
            return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                             "a CUDA session of %lld tokens: the model's GPU engine was set up "
                             "for %lld by its first session",
                             (long long)s->opt.max_context, (long long)have);
        s->opt.max_context = have;
        return DSV4_OK;
    }
    dsv4_engine_options o;
    dsv4_engine_options_default(&o);
    o.device = DSV4_DEVICE_CUDA;
    o.max_slots = DSV4_CUDA_SESSIONS;
    o.max_context = s->opt.max_context;
    o.max_chunk = 256;
    return dsv4_engine_create(m, &o, &m->engine);
}

dsv4_status dsv4_session_gpu_open(dsv4_session *s)
{
    if (s->opt.mode != DSV4_MODE_FAITHFUL)
        return dsv4_fail(
            DSV4_ERR_UNSUPPORTED,
            "the GPU runs the faithful numeric mode only (use --device cpu for exact)");
    if (s->opt.max_context <= 0) {
        s->opt.max_context = s->cfg->max_position_embeddings;
        if (s->opt.max_context > DSV4_CUDA_DEFAULT_CONTEXT)
            s->opt.max_context = DSV4_CUDA_DEFAULT_CONTEXT;
    }
    DSV4_TRY(engine_for(s));
    dsv4_model *m = s->m;
    int slot = 0;
    while (slot < DSV4_CUDA_SESSIONS && (m->engine_slots_used >> slot & 1)) slot++;
    if (slot == DSV4_CUDA_SESSIONS)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "a model holds at most %d CUDA sessions at once",
                         DSV4_CUDA_SESSIONS);
    DSV4_TRY(dsv4_engine_slot_reset(m->engine, slot));
    m->engine_slots_used |= 1u << slot;
    s->eng = m->engine;
    s->slot = slot;
    return DSV4_OK;
}

void dsv4_session_gpu_close(dsv4_session *s)
{
    if (s->eng) s->m->engine_slots_used &= ~(1u << s->slot);
    s->eng = NULL;
}

/* Room for n ids on the host. */
static dsv4_status reserve_ids(dsv4_session *s, int64_t n)
{
    if (n <= s->cap) return DSV4_OK;
    int64_t cap = s->cap * 2 > n ? s->cap * 2 : n;
    if (cap < 256) cap = 256;
    int32_t *p = realloc(s->ids, (size_t)cap * sizeof *p);
    if (!p)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "growing a session to %lld ids", (long long)cap);
    s->ids = p;
    s->cap = cap;
    return DSV4_OK;
}

dsv4_status dsv4_session_gpu_eval(dsv4_session *s, const int32_t *ids, int64_t n, float *logits,
                                  int all_positions)
{
    if (s->capture)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "capture hooks run on the CPU only (--device cpu)");
    DSV4_TRY(reserve_ids(s, s->pos + n));
    const int64_t p0 = s->pos;
    dsv4_status st;
    if (all_positions)
        st = dsv4_engine_prefill_all(s->eng, s->slot, ids, n, logits);
    else if (n == 1)
        st = dsv4_engine_decode(s->eng, &s->slot, ids, 1, logits);
    else
        st = dsv4_engine_prefill(s->eng, s->slot, ids, n, logits);
    if (st != DSV4_OK) { /* the slot may hold part of the chunk: rebuild what was held */
        const dsv4_status keep = st;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dsv4_last_error());
        if (dsv4_session_gpu_truncate(s, p0) != DSV4_OK) s->pos = 0;
        return dsv4_fail(keep, "%s", msg);
    }
    memcpy(s->ids + p0, ids, (size_t)n * sizeof *ids);
    s->pos = p0 + n;
    return DSV4_OK;
}

dsv4_status dsv4_session_gpu_truncate(dsv4_session *s, int64_t n)
{
    if (n == s->pos && dsv4_engine_slot_pos(s->eng, s->slot) == n) return DSV4_OK;
    DSV4_TRY(dsv4_engine_slot_reset(s->eng, s->slot));
    s->pos = 0;
    if (n > 0) DSV4_TRY(dsv4_engine_prefill(s->eng, s->slot, s->ids, n, NULL));
    s->pos = n;
    return DSV4_OK;
}

dsv4_status dsv4_session_gpu_fork(const dsv4_session *s, dsv4_session *d)
{
    DSV4_TRY(reserve_ids(d, s->pos > 0 ? s->pos : 1));
    memcpy(d->ids, s->ids, (size_t)s->pos * sizeof *s->ids);
    DSV4_TRY(dsv4_engine_slot_copy(s->eng, d->slot, s->slot));
    d->pos = s->pos;
    return DSV4_OK;
}
