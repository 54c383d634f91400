/*
 * engine.h - the batched inference engine: a model's weights uploaded once to a backend (CPU or
 * CUDA), per-sequence state for a fixed number of slots, and a step that advances any set of
 * rows (a prefill chunk of one sequence, or one token for each of B sequences) through the layer
 * loop of engine_layer.c, written once against backend.h.
 *
 * The engine runs the faithful numeric mode (docs/numeric-modes.md). Its state keeps only what
 * later tokens read: a ring of the last R window keys, a ring of the compressors' last Rc rows,
 * and every compressed entry; sizes follow from max_context and max_chunk (dsv4_engine_plan).
 * Truncation back in time is therefore not possible; a slot is reset and refilled instead.
 *
 * Memory is planned up front: weights in their stored formats + state for max_slots sequences of
 * max_context tokens + the step's scratch for max_chunk rows; creation fails with the numbers
 * when that does not fit the device.
 */
#ifndef DSV4_ENGINE_ENGINE_H
#define DSV4_ENGINE_ENGINE_H

#include "backend/backend.h"
#include "dsv4.h"

#include <stdint.h>

typedef struct dsv4_engine dsv4_engine;

typedef struct dsv4_engine_options {
    dsv4_device_kind device; /* DSV4_DEVICE_CPU or DSV4_DEVICE_CUDA */
    int gpu;                 /* CUDA device index */
    dsv4_cpu_pool *pool;     /* CPU backend threads (may be NULL) */
    int max_slots;           /* sequences held at once (>= 1) */
    int64_t max_context;     /* tokens per sequence (<= 0: the model's max_position_embeddings) */
    int max_chunk;           /* rows per step: prefill chunk and largest decode batch */
    int graphs;              /* CUDA: replay decode steps from graphs, one per batch bucket */
    int pdl;                 /* CUDA graphs: programmatic dependent launch (1 on, 0 off, -1: */
                             /* on for graphs of <= DSV4_ENGINE_PDL_ROWS rows, the default) */
    uint64_t random_seed;    /* != 0: weights are random, never read (benchmarks) */
} dsv4_engine_options;

/* The default's PDL limit: on H100 PDL made the steps of <= 16 rows 1-2% faster and 64 rows 4%
 * slower (session 4); after session 12's kernels, 17-32 rows 0.1-1.2% faster (Flash and Pro),
 * and 64-128 rows up to 3% slower on Pro; after session 20's, 33-128 rows 0.3-1.1% faster on
 * Flash and within -0.3..+0.2% on Pro, 192-256 rows 0.1-0.5% slower on both (docs/PERF.md,
 * session 21). */
enum { DSV4_ENGINE_PDL_ROWS = 128 };

void dsv4_engine_options_default(dsv4_engine_options *o);

typedef struct dsv4_engine_plan {
    uint64_t weight_bytes;  /* weights as stored + decoded small vectors */
    uint64_t state_bytes;   /* all slots: window rings, compressor rings, compressed entries */
    uint64_t scratch_bytes; /* one step's activations and op workspaces */
    uint64_t total_bytes;
    int64_t max_context, window_ring, comp_ring; /* resolved sizes */
} dsv4_engine_plan;

dsv4_status dsv4_engine_plan_memory(const dsv4_model *m, const dsv4_engine_options *o,
                                    dsv4_engine_plan *p);

/* Uploads the weights and allocates everything. DSV4_ERR_OUT_OF_MEMORY with the plan's numbers
 * and the device's free memory when it does not fit. */
dsv4_status dsv4_engine_create(dsv4_model *m, const dsv4_engine_options *o, dsv4_engine **out);
void dsv4_engine_destroy(dsv4_engine *e);

dsv4_backend *dsv4_engine_backend(dsv4_engine *e);
const dsv4_engine_plan *dsv4_engine_get_plan(const dsv4_engine *e);
/* Kernel launches in the decode graph a step of n rows replays (0: no such graph yet). */
int dsv4_engine_graph_kernels(const dsv4_engine *e, int n);

/* Slots: a slot holds one sequence; reset empties it, copy duplicates src into dst (fork). */
dsv4_status dsv4_engine_slot_reset(dsv4_engine *e, int slot);
dsv4_status dsv4_engine_slot_copy(dsv4_engine *e, int dst, int src);
int64_t dsv4_engine_slot_pos(const dsv4_engine *e, int slot);
/* Sets a slot's position without computing (benchmarks: the state then holds whatever it held). */
dsv4_status dsv4_engine_slot_seek(dsv4_engine *e, int slot, int64_t pos);
/* Fills every slot's cached keys (window rings, compressed and indexer entries) with varied
 * valid values (dsv4_bk_fill_kv, the serving layout of both; benchmarks: after slot_seek the
 * attention and the indexer then rank distinct scores instead of a cache of zeros, where every
 * score ties). */
dsv4_status dsv4_engine_fill_cache(dsv4_engine *e, uint64_t seed);

/* Appends ids[0..n) to `slot` in chunks of at most max_chunk rows. logits: host [V] of the last
 * token (NULL: none). */
dsv4_status dsv4_engine_prefill(dsv4_engine *e, int slot, const int32_t *ids, int64_t n,
                                float *logits);
/* As dsv4_engine_prefill, with logits host [n, V] for every token (scoring). */
dsv4_status dsv4_engine_prefill_all(dsv4_engine *e, int slot, const int32_t *ids, int64_t n,
                                    float *logits);
/* One token for each of n distinct slots (n <= max_chunk). logits: host [n, V] (NULL: left on
 * the device, dsv4_engine_logits). With graphs on, the step is replayed from the graph of the
 * smallest bucket >= n (captured on first use). */
dsv4_status dsv4_engine_decode(dsv4_engine *e, const int32_t *slots, const int32_t *ids, int n,
                               float *logits);
/* Backend memory [rows, V] of the last step's logits. */
const float *dsv4_engine_logits(const dsv4_engine *e);

/* Per-op timing of the steps run between start and stop (backend.h dsv4_bk_prof_*). */
dsv4_status dsv4_engine_prof_start(dsv4_engine *e);
int dsv4_engine_prof_stop(dsv4_engine *e, dsv4_bk_prof_entry *out, int max);

#endif
