/*
 * cmd_bench.c - `dsv4 bench`: the batched CUDA engine at the real DeepSeek-V4-Flash or -Pro
 * geometry with random weights (model/model_shape.c + the engine's random_seed), set against the
 * GPU's measured ceilings (backend/cuda/bench_ceilings.cu).
 *
 * It reports decode latency and throughput per context length and batch (wall clock over `steps`
 * steps after a sync), prefill tokens/s for one sequence, a per-op table of a few decode steps
 * (the engine's dsv4_bk_prof timing) and, for every decode figure, the bytes a step must move and
 * how close the step comes to moving them at the measured copy bandwidth ("of floor"). Output is a
 * markdown report, or one JSON object with --json.
 *
 * The command drives the engine through its internal headers (engine/engine.h, model/model.h):
 * it is a developer tool, the one CLI command that reaches past dsv4.h. Without CUDA it says so
 * and exits 1.
 */
#include "commands.h"

#include <stdio.h>

#ifndef DSV4_HAVE_CUDA

int cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsv4 bench: this build has no CUDA backend (configure with -DDSV4_CUDA=ON)\n");
    return 1;
}

#else

#include "backend/cuda/bench_ceilings.h"
#include "core/error.h"
#include "engine/engine.h"
#include "model/model.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    MAX_LIST = 16, /* entries of --batches / --contexts */
    WARMUP_STEPS = 3,
    PROF_STEPS = 5, /* decode steps under the per-op timer */
    MAX_PROF = 64,  /* labels kept */
    PREFILL_CHUNK = 512
};

typedef struct bench_args {
    const char *shape;
    int layers;
    dsv4_weight_format experts;
    int batches[MAX_LIST], n_batches;
    int64_t contexts[MAX_LIST];
    int n_contexts;
    int64_t prefill;
    int steps, graphs, pdl, json, gpu, ceilings_only;
    uint64_t seed;
} bench_args;

typedef struct decode_row {
    int64_t context;
    int batch;
    int kernels; /* kernel launches per step (the step graph's kernel nodes; 0: no graph) */
    double ms, weight_bytes, kv_bytes, other_bytes;
} decode_row;

typedef struct prof_table {
    int batch;
    int64_t context;
    int n;
    dsv4_bk_prof_entry e[MAX_PROF];
} prof_table;

typedef struct bench_out {
    dsv4_bench_ceilings ceil;
    decode_row rows[MAX_LIST * MAX_LIST];
    int n_rows;
    double prefill_s;
    prof_table prof[2];
    int n_prof;
    dsv4_engine_plan plan;
    char when[32];
} bench_out;

/* ---- arguments ----------------------------------------------------------------------------- */

static int usage(int rc)
{
    fprintf(rc ? stderr : stdout,
            "usage: dsv4 bench [--shape flash|pro] [--layers N] [--experts mxfp4|nvfp4]\n"
            "                  [--batches 1,8,32,64] [--contexts 4096,65536] [--prefill 4096]\n"
            "                  [--steps 20] [--no-graphs] [--pdl] [--json] [--gpu I] [--seed S]\n"
            "                  [--ceilings-only]\n"
            "  Times the CUDA engine at the real DeepSeek-V4 geometry with random weights.\n"
            "  --layers N       layers of the model (default 4; fewer than the real count take\n"
            "                   the real layers 2.., alternating CSA and HCA; 0 = all)\n"
            "  --batches        decode batch sizes (sequences per step)\n"
            "  --contexts       tokens already in every sequence when decode is timed\n"
            "  --prefill N      tokens of the timed one-sequence prefill (0: none)\n"
            "  --steps N        timed decode steps per (context, batch), after %d warm-up steps\n"
            "  --no-graphs      launch each decode step's kernels instead of replaying a graph\n"
            "  --pdl            graphs with programmatic dependent launch between kernels\n"
            "  --ceilings-only  measure the device's bandwidth and GEMM ceilings and stop\n",
            WARMUP_STEPS);
    return rc;
}

static int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* "1,8,32" -> out[0..n); -1 on a bad entry or too many. */
static int parse_list(const char *s, int64_t lo, int64_t hi, int64_t *out, int *n)
{
    char buf[256];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    *n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_LIST || parse_int(t, lo, hi, &out[*n])) return -1;
        (*n)++;
    }
    return *n ? 0 : -1;
}

static int parse_args(int argc, char **argv, bench_args *a)
{
    memset(a, 0, sizeof *a);
    a->shape = "flash";
    a->layers = 4;
    a->experts = DSV4_FORMAT_MXFP4;
    a->n_batches = 4;
    a->batches[0] = 1, a->batches[1] = 8, a->batches[2] = 32, a->batches[3] = 64;
    a->n_contexts = 2;
    a->contexts[0] = 4096, a->contexts[1] = 65536;
    a->prefill = 4096;
    a->steps = 20;
    a->graphs = 1;
    a->pdl = 0;
    a->seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t x, list[MAX_LIST];
        int n;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) return usage(0) - 1;
        if (!strcmp(o, "--json")) {
            a->json = 1;
        } else if (!strcmp(o, "--no-graphs")) {
            a->graphs = 0;
        } else if (!strcmp(o, "--pdl")) {
            a->pdl = 1;
        } else if (!strcmp(o, "--ceilings-only")) {
            a->ceilings_only = 1;
        } else if (!v) {
            fprintf(stderr, "dsv4 bench: unknown option or missing value: '%s'\n", o);
            return usage(2);
        } else if (!strcmp(o, "--shape")) {
            if (strcmp(v, "flash") && strcmp(v, "pro")) {
                fprintf(stderr, "dsv4 bench: --shape must be flash or pro (got '%s')\n", v);
                return 2;
            }
            a->shape = argv[++i];
        } else if (!strcmp(o, "--experts")) {
            if (!strcmp(v, "mxfp4"))
                a->experts = DSV4_FORMAT_MXFP4;
            else if (!strcmp(v, "nvfp4"))
                a->experts = DSV4_FORMAT_NVFP4;
            else {
                fprintf(stderr, "dsv4 bench: --experts must be mxfp4 or nvfp4 (got '%s')\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(o, "--batches")) {
            if (parse_list(v, 1, 4096, list, &n)) {
                fprintf(stderr,
                        "dsv4 bench: --batches needs up to %d integers in [1, 4096] "
                        "separated by commas (got '%s')\n",
                        MAX_LIST, v);
                return 2;
            }
            for (int k = 0; k < n; k++) a->batches[k] = (int)list[k];
            a->n_batches = n;
            i++;
        } else if (!strcmp(o, "--contexts")) {
            if (parse_list(v, 0, (int64_t)1 << 22, a->contexts, &a->n_contexts)) {
                fprintf(stderr,
                        "dsv4 bench: --contexts needs up to %d integers in [0, 4194304] "
                        "separated by commas (got '%s')\n",
                        MAX_LIST, v);
                return 2;
            }
            i++;
        } else {
            int64_t lo = 0, hi = 1 << 22;
            if (!strcmp(o, "--layers"))
                hi = 256;
            else if (!strcmp(o, "--steps"))
                lo = 1, hi = 1 << 20;
            else if (!strcmp(o, "--gpu"))
                hi = 64;
            else if (!strcmp(o, "--seed"))
                lo = 1, hi = INT64_MAX;
            else if (strcmp(o, "--prefill")) {
                fprintf(stderr, "dsv4 bench: unknown option '%s'\n", o);
                return usage(2);
            }
            if (parse_int(v, lo, hi, &x)) {
                fprintf(stderr, "dsv4 bench: %s needs an integer in [%lld, %lld] (got '%s')\n", o,
                        (long long)lo, (long long)hi, v);
                return 2;
            }
            if (!strcmp(o, "--layers"))
                a->layers = (int)x;
            else if (!strcmp(o, "--steps"))
                a->steps = (int)x;
            else if (!strcmp(o, "--gpu"))
                a->gpu = (int)x;
            else if (!strcmp(o, "--seed"))
                a->seed = (uint64_t)x;
            else
                a->prefill = x;
            i++;
        }
    }
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Token ids: a fixed xorshift sequence over the vocabulary. */
static void fill_ids(int32_t *ids, int64_t n, int vocab, uint64_t *state)
{
    for (int64_t i = 0; i < n; i++) {
        uint64_t x = *state;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        *state = x;
        ids[i] = (int32_t)(x % (uint64_t)vocab);
    }
}

static int max_int(const int *v, int n)
{
    int m = v[0];
    for (int i = 1; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

static int64_t max_i64(const int64_t *v, int n)
{
    int64_t m = v[0];
    for (int i = 1; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* ---- bytes a decode step moves --------------------------------------------------------------
 * Weights: per layer everything but the routed experts (attention, compressor, indexer, mHC,
 * norms, router, shared expert) + the routed experts the batch touches: K for one row, the
 * expected number of distinct experts E (1 - (1 - K/E)^B) for B rows with uniform routing; then
 * the head, the final norms and the B embedding rows. State, per sequence and layer at position
 * p = context: the window keys min(p + 1, W) x head_dim, on CSA layers all (p+1)/4 indexer keys
 * (scored) + the min((p+1)/4, topk) selected entries, on HCA layers the (p+1)/128 entries; all
 * bf16. Not counted: activations, the compressor rings (read when a window closes) and writes. */
static void step_bytes(const dsv4_model *m, int64_t ctx, int B, decode_row *r)
{
    const dsv4_config *c = &m->cfg;
    const double E = c->n_routed_experts, K = c->n_experts_per_tok;
    const double touched = B == 1 ? K : E * (1.0 - pow(1.0 - K / E, (double)B));
    const double p1 = (double)(ctx + 1);
    double w = 0.0, kv = 0.0;
    for (int i = 0; i < m->w.n_layers; i++) {
        uint64_t dense, expert;
        dsv4_model_layer_bytes(m, i, &dense, &expert);
        w += (double)dense + touched * (double)expert;
        const int ratio = m->w.layers[i].compress_ratio;
        kv += fmin(p1, (double)c->sliding_window) * c->head_dim * 2.0;
        if (ratio == 4) {
            const double n_ent = floor(p1 / 4.0);
            kv += n_ent * c->index_head_dim * 2.0 + fmin(n_ent, c->index_topk) * c->head_dim * 2.0;
        } else if (ratio > 0) {
            kv += floor(p1 / ratio) * c->head_dim * 2.0;
        }
    }
    const dsv4_model_weights *mw = &m->w;
    r->weight_bytes = w;
    r->other_bytes = (double)(dsv4_weight_bytes(&mw->head) + dsv4_weight_bytes(&mw->norm) +
                              dsv4_weight_bytes(&mw->hc_head_fn)) +
                     (double)B * (double)c->hidden_size * 2.0;
    r->kv_bytes = kv * B;
}

static double row_bytes(const decode_row *r)
{
    return r->weight_bytes + r->kv_bytes + r->other_bytes;
}

/* ---- the runs ------------------------------------------------------------------------------ */

static dsv4_status seek_all(dsv4_engine *e, int B, int64_t ctx)
{
    for (int s = 0; s < B; s++) DSV4_TRY(dsv4_engine_slot_seek(e, s, ctx));
    return DSV4_OK;
}

static dsv4_status decode_steps(dsv4_engine *e, const int32_t *slots, int32_t *ids, int B, int n,
                                int vocab, uint64_t *rng)
{
    for (int k = 0; k < n; k++) {
        fill_ids(ids, B, vocab, rng);
        DSV4_TRY(dsv4_engine_decode(e, slots, ids, B, NULL));
    }
    return DSV4_OK;
}

static dsv4_status time_decode(dsv4_engine *e, const dsv4_model *m, const bench_args *a,
                               int64_t ctx, int B, int32_t *slots, int32_t *ids, uint64_t *rng,
                               decode_row *r)
{
    dsv4_backend *b = dsv4_engine_backend(e);
    DSV4_TRY(seek_all(e, B, ctx));
    DSV4_TRY(decode_steps(e, slots, ids, B, WARMUP_STEPS, m->cfg.vocab_size, rng));
    DSV4_TRY(dsv4_bk_sync(b));
    const double t0 = now_s();
    DSV4_TRY(decode_steps(e, slots, ids, B, a->steps, m->cfg.vocab_size, rng));
    DSV4_TRY(dsv4_bk_sync(b));
    r->ms = (now_s() - t0) * 1e3 / a->steps;
    r->kernels = dsv4_engine_graph_kernels(e, B);
    r->context = ctx;
    r->batch = B;
    step_bytes(m, ctx, B, r);
    return DSV4_OK;
}

static dsv4_status profile_decode(dsv4_engine *e, const dsv4_model *m, int64_t ctx, int B,
                                  int32_t *slots, int32_t *ids, uint64_t *rng, prof_table *t)
{
    DSV4_TRY(seek_all(e, B, ctx));
    DSV4_TRY(decode_steps(e, slots, ids, B, WARMUP_STEPS, m->cfg.vocab_size, rng));
    DSV4_TRY(dsv4_engine_prof_start(e));
    dsv4_status st = decode_steps(e, slots, ids, B, PROF_STEPS, m->cfg.vocab_size, rng);
    t->n = dsv4_engine_prof_stop(e, t->e, MAX_PROF); /* stops the timer on every path */
    t->batch = B;
    t->context = ctx;
    return st;
}

static dsv4_status time_prefill(dsv4_engine *e, const dsv4_model *m, int64_t n, uint64_t *rng,
                                double *sec)
{
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %lld token ids", (long long)n);
    fill_ids(ids, n, m->cfg.vocab_size, rng);
    dsv4_backend *b = dsv4_engine_backend(e);
    const int64_t warm = n < PREFILL_CHUNK ? n : PREFILL_CHUNK;
    dsv4_status st = dsv4_engine_slot_reset(e, 0);
    if (st == DSV4_OK) st = dsv4_engine_prefill(e, 0, ids, warm, NULL);
    if (st == DSV4_OK) st = dsv4_engine_slot_reset(e, 0);
    if (st == DSV4_OK) st = dsv4_bk_sync(b);
    const double t0 = now_s();
    if (st == DSV4_OK) st = dsv4_engine_prefill(e, 0, ids, n, NULL);
    if (st == DSV4_OK) st = dsv4_bk_sync(b);
    *sec = now_s() - t0;
    free(ids);
    return st;
}

/* ---- output -------------------------------------------------------------------------------- */

static void layer_kinds(const dsv4_model *m, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < m->w.n_layers && used + 8 < n; i++) {
        const int r = m->w.layers[i].compress_ratio;
        used += (size_t)snprintf(buf + used, n - used, "%s%s%s", i ? "," : "",
                                 r == 0   ? "SWA"
                                 : r == 4 ? "CSA"
                                          : "HCA",
                                 m->w.layers[i].hash_routed ? "/hash" : "");
    }
}

static double prof_total(const prof_table *t)
{
    double s = 0.0;
    for (int i = 0; i < t->n; i++) s += t->e[i].ms;
    return s;
}

static void print_markdown(const bench_args *a, const dsv4_model *m, const bench_out *o)
{
    const dsv4_bench_ceilings *c = &o->ceil;
    char kinds[1024];
    layer_kinds(m, kinds, sizeof kinds);
    printf("## dsv4 bench: DeepSeek-V4-%s geometry, %d layers, %s routed experts, random "
           "weights\n\n",
           !strcmp(a->shape, "flash") ? "Flash" : "Pro", m->w.n_layers,
           dsv4_weight_format_name(a->experts));
    printf("| device | date | version | shape | layers | layer kinds | graphs |\n");
    printf("|---|---|---|---|---|---|---|\n");
    printf("| %s (%d SMs, %.0f GiB) | %s | dsv4 %s | %s | %d | %s | %s |\n\n", c->device_name,
           c->sm_count, (double)c->device_bytes / (1u << 30), o->when, dsv4_version(), a->shape,
           m->w.n_layers, kinds,
           !a->graphs ? "off"
           : a->pdl   ? "on, PDL"
                      : "on, no PDL");
    printf("### Ceilings\n\n");
    printf("| copy (read + write) | read stream | cuBLASLt BF16 | cuBLASLt FP8 | mma.sync BF16 | "
           "mma.sync FP8 |\n|---|---|---|---|---|---|\n");
    printf("| %.0f GB/s | %.0f GB/s | %.0f TFLOPS | %.0f TFLOPS | %.0f TFLOPS | %.0f TFLOPS |\n\n",
           c->copy_gbs, c->read_gbs, c->blas_bf16_tflops, c->blas_fp8_tflops, c->mma_bf16_tflops,
           c->mma_fp8_tflops);
    printf("Buffers of %.2f GiB; GEMMs M = N = K = %d, BF16 output; %s.\n\n",
           (double)c->buffer_bytes / (1u << 30), c->gemm_n, c->blas_note);
    if (a->ceilings_only) return;
    printf("Engine memory: weights %.2f GB, state %.2f GB, scratch %.2f GB (window ring %lld, "
           "compressor ring %lld, max context %lld).\n\n",
           o->plan.weight_bytes / 1e9, o->plan.state_bytes / 1e9, o->plan.scratch_bytes / 1e9,
           (long long)o->plan.window_ring, (long long)o->plan.comp_ring,
           (long long)o->plan.max_context);
    printf("### Decode (%d timed steps after %d warm-up steps; wall clock)\n\n", a->steps,
           WARMUP_STEPS);
    printf(
        "| context | batch | ms/step | us/layer | tokens/s | MB/step (weights + state + "
        "other) | floor ms | of floor | kernels/step |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < o->n_rows; i++) {
        const decode_row *r = &o->rows[i];
        const double bytes = row_bytes(r), floor_ms = bytes / (c->copy_gbs * 1e9) * 1e3;
        printf(
            "| %lld | %d | %.3f | %.1f | %.1f | %.1f (%.1f + %.1f + %.1f) | %.3f | %.0f%% | %d |\n",
            (long long)r->context, r->batch, r->ms, r->ms * 1e3 / m->w.n_layers,
            r->batch * 1e3 / r->ms, bytes / 1e6, r->weight_bytes / 1e6, r->kv_bytes / 1e6,
            r->other_bytes / 1e6, floor_ms, 100.0 * floor_ms / r->ms, r->kernels);
    }
    printf("\nus/layer = step time / layers (the head and embedding included). Floor = bytes / "
           "copy bandwidth; routed experts touched by B rows: E (1 - (1 - K/E)^B).\n\n");
    if (a->prefill > 0)
        printf("### Prefill\n\n| tokens | chunk | seconds | tokens/s |\n|---|---|---|---|\n"
               "| %lld | %d | %.3f | %.0f |\n\n",
               (long long)a->prefill, PREFILL_CHUNK, o->prefill_s, a->prefill / o->prefill_s);
    for (int k = 0; k < o->n_prof; k++) {
        const prof_table *t = &o->prof[k];
        const double total = prof_total(t);
        printf("### Per op: batch %d, context %lld (%d steps under the op timer)\n\n", t->batch,
               (long long)t->context, PROF_STEPS);
        printf("| op | ms/step | share | calls/step |\n|---|---|---|---|\n");
        for (int i = 0; i < t->n; i++)
            printf("| %s | %.4f | %.1f%% | %.1f |\n", t->e[i].label, t->e[i].ms / PROF_STEPS,
                   total > 0 ? 100.0 * t->e[i].ms / total : 0.0,
                   (double)t->e[i].calls / PROF_STEPS);
        printf("| total | %.4f | 100%% | |\n\n", total / PROF_STEPS);
    }
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void print_json(const bench_args *a, const dsv4_model *m, const bench_out *o)
{
    const dsv4_bench_ceilings *c = &o->ceil;
    char kinds[1024];
    layer_kinds(m, kinds, sizeof kinds);
    printf("{\"device\": ");
    json_str(c->device_name);
    printf(", \"sm_count\": %d, \"device_bytes\": %llu, \"date\": \"%s\", \"version\": ",
           c->sm_count, (unsigned long long)c->device_bytes, o->when);
    json_str(dsv4_version());
    printf(",\n \"shape\": \"%s\", \"layers\": %d, \"layer_kinds\": \"%s\", \"experts\": \"%s\","
           " \"graphs\": %s, \"pdl\": %s,\n",
           a->shape, m->w.n_layers, kinds, dsv4_weight_format_name(a->experts),
           a->graphs ? "true" : "false", a->graphs && a->pdl ? "true" : "false");
    printf(" \"ceilings\": {\"buffer_bytes\": %llu, \"copy_gbs\": %.1f, \"read_gbs\": %.1f,"
           " \"gemm_n\": %d, \"blas_bf16_tflops\": %.1f, \"blas_fp8_tflops\": %.1f,"
           " \"mma_bf16_tflops\": %.1f, \"mma_fp8_tflops\": %.1f, \"blas_note\": ",
           (unsigned long long)c->buffer_bytes, c->copy_gbs, c->read_gbs, c->gemm_n,
           c->blas_bf16_tflops, c->blas_fp8_tflops, c->mma_bf16_tflops, c->mma_fp8_tflops);
    json_str(c->blas_note);
    printf("}");
    if (a->ceilings_only) {
        printf("}\n");
        return;
    }
    printf(",\n \"memory\": {\"weight_bytes\": %llu, \"state_bytes\": %llu, \"scratch_bytes\": "
           "%llu, \"max_context\": %lld},\n \"decode\": [",
           (unsigned long long)o->plan.weight_bytes, (unsigned long long)o->plan.state_bytes,
           (unsigned long long)o->plan.scratch_bytes, (long long)o->plan.max_context);
    for (int i = 0; i < o->n_rows; i++) {
        const decode_row *r = &o->rows[i];
        const double bytes = row_bytes(r), floor_ms = bytes / (c->copy_gbs * 1e9) * 1e3;
        printf("%s\n  {\"context\": %lld, \"batch\": %d, \"ms_per_step\": %.4f, \"us_per_layer\": "
               "%.2f, \"tokens_per_s\": %.1f, \"bytes\": %.0f, \"weight_bytes\": %.0f, "
               "\"state_bytes\": %.0f, \"other_bytes\": %.0f, \"floor_ms\": %.4f, "
               "\"of_floor\": %.4f, \"kernels_per_step\": %d}",
               i ? "," : "", (long long)r->context, r->batch, r->ms, r->ms * 1e3 / m->w.n_layers,
               r->batch * 1e3 / r->ms, bytes, r->weight_bytes, r->kv_bytes, r->other_bytes,
               floor_ms, floor_ms / r->ms, r->kernels);
    }
    printf("],\n \"prefill\": ");
    if (a->prefill > 0)
        printf("{\"tokens\": %lld, \"seconds\": %.4f, \"tokens_per_s\": %.1f}",
               (long long)a->prefill, o->prefill_s, a->prefill / o->prefill_s);
    else
        printf("null");
    printf(",\n \"per_op\": [");
    for (int k = 0; k < o->n_prof; k++) {
        const prof_table *t = &o->prof[k];
        const double total = prof_total(t);
        printf("%s\n  {\"batch\": %d, \"context\": %lld, \"steps\": %d, \"ops\": [", k ? "," : "",
               t->batch, (long long)t->context, PROF_STEPS);
        for (int i = 0; i < t->n; i++) {
            printf("%s{\"op\": ", i ? ", " : "");
            json_str(t->e[i].label);
            printf(", \"ms_per_step\": %.5f, \"share\": %.4f, \"calls_per_step\": %.2f}",
                   t->e[i].ms / PROF_STEPS, total > 0 ? t->e[i].ms / total : 0.0,
                   (double)t->e[i].calls / PROF_STEPS);
        }
        printf("]}");
    }
    printf("]}\n");
}

/* ---- the command --------------------------------------------------------------------------- */

static dsv4_status measure_ceilings(const bench_args *a, dsv4_bench_ceilings *c)
{
    dsv4_backend *b = NULL;
    DSV4_TRY(dsv4_backend_create(DSV4_DEVICE_CUDA, a->gpu, NULL, &b));
    dsv4_status st = dsv4_bench_ceilings_measure(b, c);
    dsv4_backend_destroy(b);
    return st;
}

static dsv4_status run_engine(const bench_args *a, dsv4_model *m, bench_out *o)
{
    const int max_b = max_int(a->batches, a->n_batches);
    const int64_t max_c = max_i64(a->contexts, a->n_contexts);
    dsv4_engine_options opt;
    dsv4_engine_options_default(&opt);
    opt.device = DSV4_DEVICE_CUDA;
    opt.gpu = a->gpu;
    opt.max_slots = max_b;
    /* every run re-seeks, then adds warm-up + timed (or profiled) steps */
    opt.max_context =
        (max_c > a->prefill ? max_c : a->prefill) + WARMUP_STEPS + a->steps + PROF_STEPS + 64;
    opt.max_chunk = max_b > PREFILL_CHUNK ? max_b : PREFILL_CHUNK;
    opt.graphs = a->graphs;
    opt.pdl = a->pdl;
    opt.random_seed = a->seed;
    fprintf(stderr, "dsv4 bench: creating the engine (%d slots, context %lld, chunk %d)\n",
            opt.max_slots, (long long)opt.max_context, opt.max_chunk);
    dsv4_engine *e = NULL;
    DSV4_TRY(dsv4_engine_create(m, &opt, &e));
    o->plan = *dsv4_engine_get_plan(e);
    int32_t *slots = malloc((size_t)max_b * sizeof *slots), *ids = malloc((size_t)max_b * 4);
    dsv4_status st =
        slots && ids ? DSV4_OK : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %d rows", max_b);
    for (int s = 0; slots && s < max_b; s++) slots[s] = s;
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ a->seed;
    if (st == DSV4_OK && a->prefill > 0) {
        fprintf(stderr, "dsv4 bench: prefill of %lld tokens\n", (long long)a->prefill);
        st = time_prefill(e, m, a->prefill, &rng, &o->prefill_s);
    }
    for (int ci = 0; st == DSV4_OK && ci < a->n_contexts; ci++)
        for (int bi = 0; st == DSV4_OK && bi < a->n_batches; bi++) {
            fprintf(stderr, "dsv4 bench: decode at context %lld, batch %d\n",
                    (long long)a->contexts[ci], a->batches[bi]);
            st = time_decode(e, m, a, a->contexts[ci], a->batches[bi], slots, ids, &rng,
                             &o->rows[o->n_rows]);
            if (st == DSV4_OK) o->n_rows++;
        }
    /* per-op tables at the first context: batch 1 and batch 64 (or the largest batch) */
    const int prof_b[2] = {1, max_b < 64 ? max_b : 64};
    for (int k = 0; st == DSV4_OK && k < (prof_b[1] > 1 ? 2 : 1); k++) {
        st = profile_decode(e, m, a->contexts[0], prof_b[k], slots, ids, &rng, &o->prof[k]);
        if (st == DSV4_OK) o->n_prof++;
    }
    free(slots);
    free(ids);
    dsv4_engine_destroy(e);
    return st;
}

int cmd_bench(int argc, char **argv)
{
    bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    bench_out *o = calloc(1, sizeof *o);
    if (!o) return cli_report("bench", dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating results"));
    const time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(o->when, sizeof o->when, "%Y-%m-%d %H:%M UTC", &tm);

    fprintf(stderr, "dsv4 bench: measuring the device's ceilings\n");
    dsv4_status st = measure_ceilings(&a, &o->ceil);
    dsv4_model *m = NULL;
    if (st == DSV4_OK) st = dsv4_model_create_shape(a.shape, a.layers, a.experts, &m);
    if (st == DSV4_OK && !a.ceilings_only) st = run_engine(&a, m, o);
    if (st == DSV4_OK) {
        if (a.json)
            print_json(&a, m, o);
        else
            print_markdown(&a, m, o);
    }
    dsv4_model_close(m);
    free(o);
    return st == DSV4_OK ? 0 : cli_report("bench", st);
}

#endif
