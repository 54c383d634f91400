/*
 * cmd_bench.c - `dsv4 bench`: the batched CUDA engine at the real DeepSeek-V4-Flash or -Pro
 * geometry with random weights (model/model_shape.c + the engine's random_seed), set against the
 * GPU's measured ceilings (backend/cuda/bench_ceilings.cu).
 *
 * It reports decode latency and throughput per context length and batch (wall clock over `steps`
 * steps after a sync), prefill tokens/s for one sequence, a per-op table of a few decode steps
 * (the engine's dsv4_bk_prof timing) and, for every decode figure, the bytes a step must move and
 * how close the step comes to moving them at the measured copy bandwidth ("of floor"), the same
 * per op and per layer, kernels per layer, the decode projections of a CSA layer against
 * cuBLASLt FP8 at a few token counts, and, given transformers' layer time
 * (tools/hf_layer_time.py), ours against it. Output is a markdown report, or one JSON object with
 * --json.
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
#include "backend/kv_layout.h"
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
    int layers, hash_layers;
    dsv4_weight_format experts;
    int batches[MAX_LIST], n_batches;
    int64_t contexts[MAX_LIST];
    int n_contexts;
    int64_t prefill;
    int steps, graphs, pdl, json, gpu, ceilings_only, zero_cache;
    uint64_t seed;
    int gemm_n[DSV4_BENCH_GEMM_MAX_N], n_gemm_n; /* --gemms (0 entries: none) */
    double hf_layer_us;                          /* --hf-layer-us / --hf-layer-json (0: none) */
    const char *hf_json;
    int64_t hf_context; /* the context of the transformers figure (0: not said) */
    char hf_note[512];  /* what the transformers figure is (from its JSON file) */
    const char *trace;  /* --trace: the kernel timeline of one step a run (trace builds) */
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

/* A decode projection of the first CSA layer (the first layer when none), timed by
 * dsv4_bench_gemm_measure against cuBLASLt FP8. */
enum { MAX_GEMMS = 8 };
typedef struct gemm_row {
    const char *name;
    const dsv4_weight *w; /* the model's host descriptor */
    int groups;
    dsv4_bench_gemms g;
} gemm_row;

typedef struct bench_out {
    dsv4_bench_ceilings ceil;
    gemm_row gemms[MAX_GEMMS];
    int n_gemms;
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
    fprintf(
        rc ? stderr : stdout,
        "usage: dsv4 bench [--shape flash|pro] [--layers N] [--hash-layers K]\n"
        "                  [--experts mxfp4|nvfp4]\n"
        "                  [--batches 1,8,32,64] [--contexts 4096,65536] [--prefill 4096]\n"
        "                  [--steps 20] [--no-graphs] [--pdl | --no-pdl] [--zero-cache] [--json]\n"
        "                  [--gpu I] [--seed S] [--ceilings-only] [--gemms 1,8,64 | --no-gemms]\n"
        "                  [--hf-layer-us X | --hf-layer-json FILE] [--trace FILE]\n"
        "  Times the CUDA engine at the real DeepSeek-V4 geometry with random weights.\n"
        "  --layers N       layers of the model (default 4; fewer than the real count take\n"
        "                   the real layers 2.., alternating CSA and HCA; 0 = all)\n"
        "  --hash-layers K  the first K layers route by hash (default: 3 as the real models,\n"
        "                   or all but the last of <= 3; the real bulk routes by top-k)\n"
        "  --batches        decode batch sizes (sequences per step)\n"
        "  --contexts       tokens already in every sequence when decode is timed\n"
        "  --prefill N      tokens of the timed one-sequence prefill (0: none)\n"
        "  --steps N        timed decode steps per (context, batch), after %d warm-up steps\n"
        "  --no-graphs      launch each decode step's kernels instead of replaying a graph\n"
        "  --pdl, --no-pdl  programmatic dependent launch between the kernels of every\n"
        "                   graph, of none (default: the engine's, graphs of <= %d rows)\n"
        "  --zero-cache     leave the cached keys at zero (default: varied bf16 values, so\n"
        "                   that attention and the indexer rank distinct scores, not ties)\n"
        "  --ceilings-only  measure the device's bandwidth and GEMM ceilings and stop\n"
        "  --gemms          token counts at which the decode projections of a CSA layer\n"
        "                   are timed against cuBLASLt FP8 (up to %d; --no-gemms: none)\n"
        "  --hf-layer-us X  transformers' time of one decoder layer at a decode step (us),\n"
        "                   set against ours; --hf-layer-json reads it from the file\n"
        "                   tools/hf_layer_time.py writes (key \"hf_layer_us\")\n"
        "  --trace FILE     after each timed run, one more step with the kernels' timeline\n"
        "                   written to FILE (a trace build only: cmake -DDSV4_TRACE=ON;\n"
        "                   tools/trace_step.py reads it)\n",
        WARMUP_STEPS, (int)DSV4_ENGINE_PDL_ROWS, DSV4_BENCH_GEMM_MAX_N);
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

/* The transformers figure from the JSON object tools/hf_layer_time.py writes: the numbers after
 * the keys "hf_layer_us" and "context" and the string after "note". A plain scan (the CLI does
 * not link cJSON; the file is ours and flat). 0 on success, 2 with a message. */
static const char *json_key(const char *text, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(text, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == ':') p++;
    return p;
}

static int read_hf_json(bench_args *a)
{
    FILE *f = fopen(a->hf_json, "rb");
    char text[65536];
    const size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = 0;
    const char *us = json_key(text, "hf_layer_us"), *ctx = json_key(text, "context");
    const char *note = json_key(text, "note");
    if (!f || !us || !(strtod(us, NULL) > 0.0)) {
        fprintf(stderr, "dsv4 bench: --hf-layer-json: %s has no positive \"hf_layer_us\"\n",
                a->hf_json);
        return 2;
    }
    a->hf_layer_us = strtod(us, NULL);
    a->hf_context = ctx ? strtoll(ctx, NULL, 10) : 0;
    a->hf_note[0] = 0;
    if (note && *note == '"') {
        size_t k = 0;
        for (note++; *note && *note != '"' && k + 1 < sizeof a->hf_note; note++)
            a->hf_note[k++] = *note == '|' ? '/' : *note; /* stays one markdown cell */
        a->hf_note[k] = 0;
    }
    return 0;
}

static int parse_args(int argc, char **argv, bench_args *a)
{
    memset(a, 0, sizeof *a);
    a->shape = "flash";
    a->layers = 4;
    a->hash_layers = -1;
    a->experts = DSV4_FORMAT_MXFP4;
    a->n_batches = 4;
    a->batches[0] = 1, a->batches[1] = 8, a->batches[2] = 32, a->batches[3] = 64;
    a->n_contexts = 2;
    a->contexts[0] = 4096, a->contexts[1] = 65536;
    a->prefill = 4096;
    a->steps = 20;
    a->graphs = 1;
    a->pdl = -1; /* the engine's default: graphs of <= DSV4_ENGINE_PDL_ROWS rows */
    a->seed = 1;
    a->n_gemm_n = 3;
    a->gemm_n[0] = 1, a->gemm_n[1] = 8, a->gemm_n[2] = 64;
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
        } else if (!strcmp(o, "--no-pdl")) {
            a->pdl = 0;
        } else if (!strcmp(o, "--zero-cache")) {
            a->zero_cache = 1;
        } else if (!strcmp(o, "--ceilings-only")) {
            a->ceilings_only = 1;
        } else if (!strcmp(o, "--no-gemms")) {
            a->n_gemm_n = 0;
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
        } else if (!strcmp(o, "--gemms")) {
            if (parse_list(v, 1, 4096, list, &n) || n > DSV4_BENCH_GEMM_MAX_N) {
                fprintf(stderr,
                        "dsv4 bench: --gemms needs up to %d integers in [1, 4096] separated by "
                        "commas (got '%s')\n",
                        DSV4_BENCH_GEMM_MAX_N, v);
                return 2;
            }
            for (int k = 0; k < n; k++) a->gemm_n[k] = (int)list[k];
            a->n_gemm_n = n;
            i++;
        } else if (!strcmp(o, "--hf-layer-us")) {
            char *end;
            a->hf_layer_us = strtod(v, &end);
            if (!*v || *end || !(a->hf_layer_us > 0.0)) {
                fprintf(stderr, "dsv4 bench: --hf-layer-us needs a positive number (got '%s')\n",
                        v);
                return 2;
            }
            snprintf(a->hf_note, sizeof a->hf_note, "given with --hf-layer-us");
            i++;
        } else if (!strcmp(o, "--hf-layer-json")) {
            a->hf_json = argv[++i];
        } else if (!strcmp(o, "--trace")) {
            a->trace = argv[++i];
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
            if (!strcmp(o, "--layers") || !strcmp(o, "--hash-layers"))
                hi = 256;
            else if (!strcmp(o, "--steps"))
                lo = 1, hi = 1 << 20;
            else if (!strcmp(o, "--gpu"))
                hi = 64;
            else if (!strcmp(o, "--seed"))
                lo = 1, hi = INT64_MAX;
            else if (strcmp(o, "--prefill") && strcmp(o, "--hash-layers")) {
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
            else if (!strcmp(o, "--hash-layers"))
                a->hash_layers = (int)x;
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
    return a->hf_json ? read_hf_json(a) : 0;
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
 * (scored) + the min((p+1)/4, topk) selected entries, on HCA layers the (p+1)/128 entries; the
 * attention's entries and the indexer keys in the serving layout (kv_bytes: 584 B and 68 B at
 * Flash/Pro shapes). Not counted: activations, the compressor rings (read when a window closes) and
 * writes. */
static double kv_bytes(const dsv4_config *c)
{
    const dsv4_kv_layout l = dsv4_kv_layout_of(c->head_dim, c->rope_dim);
    return (double)dsv4_kv_entry_bytes(&l);
}

static double ik_bytes(const dsv4_config *c)
{
    const dsv4_kv_layout l = dsv4_ik_layout_of(c->index_head_dim);
    return (double)dsv4_kv_entry_bytes(&l);
}

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
        kv += fmin(p1, (double)c->sliding_window) * kv_bytes(c);
        if (ratio == 4) {
            const double n_ent = floor(p1 / 4.0);
            kv += n_ent * ik_bytes(c) + fmin(n_ent, c->index_topk) * kv_bytes(c);
        } else if (ratio > 0) {
            kv += floor(p1 / ratio) * kv_bytes(c);
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

static double wb(const dsv4_weight *w)
{
    return (double)dsv4_weight_bytes(w);
}

/* The bytes of step_bytes that the op behind a per-op timer label reads in one step (all layers),
 * at batch B and position ctx: its weights, for attn.core the window and the selected or
 * compressed entries, for index.topk the indexer keys it scores. 0: an op with no weights of its
 * own (norms, RoPE, stores: activations only), shown as "-". */
static double op_bytes(const dsv4_model *m, const char *op, int64_t ctx, int B)
{
    const dsv4_config *c = &m->cfg;
    const double E = c->n_routed_experts, K = c->n_experts_per_tok;
    const double touched = B == 1 ? K : E * (1.0 - pow(1.0 - K / E, (double)B));
    const double p1 = (double)(ctx + 1);
    const dsv4_model_weights *mw = &m->w;
    if (!strcmp(op, "embed")) return B * wb(&mw->embed) / (double)c->vocab_size;
    if (!strcmp(op, "head.logits")) return wb(&mw->head);
    if (!strcmp(op, "head.collapse")) return wb(&mw->hc_head_fn) + wb(&mw->norm);
    double s = 0.0;
    for (int i = 0; i < mw->n_layers; i++) {
        const dsv4_layer_weights *l = &mw->layers[i];
        const int ratio = l->compress_ratio;
        if (!strcmp(op, "mhc.pre"))
            s += i == 0 ? wb(&l->hc_attn_fn) : 0.0;
        else if (!strcmp(op, "mhc.seam"))
            s += (i ? wb(&l->hc_attn_fn) : 0.0) + wb(&l->hc_ffn_fn);
        else if (!strcmp(op, "attn.proj"))
            s += wb(&l->wq_a) + wb(&l->wkv) + wb(&l->compressor.wkv) + wb(&l->compressor.wgate) +
                 wb(&l->idx_compressor.wkv) + wb(&l->idx_compressor.wgate) +
                 wb(&l->idx_weights_proj);
        else if (!strcmp(op, "attn.q"))
            s += wb(&l->wq_b);
        else if (!strcmp(op, "index.q"))
            s += wb(&l->idx_wq_b);
        else if (!strcmp(op, "attn.out"))
            s += wb(&l->wo_a) + wb(&l->wo_b);
        else if (!strcmp(op, "moe.router"))
            s += wb(&l->gate);
        else if (!strcmp(op, "moe.experts")) {
            uint64_t dense, expert;
            dsv4_model_layer_bytes(m, i, &dense, &expert);
            s += wb(&l->shared.w1) + wb(&l->shared.w2) + wb(&l->shared.w3) +
                 touched * (double)expert;
        } else if (!strcmp(op, "attn.core")) {
            double kv = fmin(p1, (double)c->sliding_window) * kv_bytes(c);
            if (ratio == 4)
                kv += fmin(floor(p1 / 4.0), c->index_topk) * kv_bytes(c);
            else if (ratio > 0)
                kv += floor(p1 / ratio) * kv_bytes(c);
            s += kv * B;
        } else if (!strcmp(op, "index.topk") && ratio == 4)
            s += floor(p1 / 4.0) * ik_bytes(c) * B;
    }
    return s;
}

/* Ops of the per-op timer outside the layers (embedding, head collapse + final norm, logits). */
static int is_head_op(const char *op)
{
    return !strcmp(op, "embed") || !strcmp(op, "head.collapse") || !strcmp(op, "head.logits");
}

/* Kernels of a decode step outside the layers: the embedding, the head collapse + final norm
 * (one hc_site kernel) and the logits projection, one launch each (engine_layer.c
 * dsv4_engine_forward, engine.c head). */
enum { HEAD_EMBED_KERNELS = 3 };

static double kernels_per_layer(const decode_row *r, int layers)
{
    return r->kernels > HEAD_EMBED_KERNELS && layers > 0
               ? (double)(r->kernels - HEAD_EMBED_KERNELS) / layers
               : 0.0;
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

/* One more step at (ctx, B) with the kernel trace on (backend.h dsv4_bk_trace_*): its records
 * appended to path, tagged "context:batch". Run after time_decode, so the step replays a graph
 * that is already built. */
enum { TRACE_RECORDS = 1 << 21 };
static dsv4_status trace_decode(dsv4_engine *e, const dsv4_model *m, const char *path, int64_t ctx,
                                int B, int32_t *slots, int32_t *ids, uint64_t *rng)
{
    dsv4_backend *b = dsv4_engine_backend(e);
    DSV4_TRY(seek_all(e, B, ctx));
    DSV4_TRY(decode_steps(e, slots, ids, B, WARMUP_STEPS, m->cfg.vocab_size, rng));
    DSV4_TRY(dsv4_bk_sync(b));
    DSV4_TRY(dsv4_bk_trace_begin(b, TRACE_RECORDS));
    dsv4_status st = decode_steps(e, slots, ids, B, 1, m->cfg.vocab_size, rng);
    char tag[48];
    snprintf(tag, sizeof tag, "%lld:%d", (long long)ctx, B);
    const dsv4_status end = dsv4_bk_trace_end(b, path, tag); /* ends it on every path */
    return st != DSV4_OK ? st : end;
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

/* The per-op table of batch B at ctx, or NULL. */
static const prof_table *find_prof(const bench_out *o, int B, int64_t ctx)
{
    for (int k = 0; k < o->n_prof; k++)
        if (o->prof[k].batch == B && o->prof[k].context == ctx) return &o->prof[k];
    return NULL;
}

/* The decode row set against transformers: batch 1 at the transformers figure's context when
 * there is one, else the first batch-1 row; NULL when none. */
static const decode_row *hf_row(const bench_args *a, const bench_out *o)
{
    const decode_row *first = NULL;
    for (int i = 0; i < o->n_rows; i++) {
        if (o->rows[i].batch != 1) continue;
        if (!first) first = &o->rows[i];
        if (a->hf_context && o->rows[i].context == a->hf_context) return &o->rows[i];
    }
    return first;
}

/* Our time of one layer (us) in a decode step r: the graph-replayed step minus what the op timer
 * gives the embedding and head ops at the same batch and context (*head_out = 1), or the step /
 * layers when no such table was taken (*head_out = 0). */
static double layer_us(const dsv4_model *m, const bench_out *o, const decode_row *r, int *head_out)
{
    const prof_table *t = find_prof(o, r->batch, r->context);
    double head_ms = 0.0;
    for (int i = 0; t && i < t->n; i++)
        if (is_head_op(t->e[i].label)) head_ms += t->e[i].ms / PROF_STEPS;
    *head_out = t != NULL;
    return (r->ms - head_ms) * 1e3 / m->w.n_layers;
}

static double gbs(double bytes, double us)
{
    return us > 0.0 ? bytes / us / 1e3 : 0.0;
}

static void print_gemms_markdown(const bench_out *o)
{
    const dsv4_bench_ceilings *c = &o->ceil;
    if (!o->n_gemms) return;
    const char *lt = o->gemms[0].g.note[0] ? o->gemms[0].g.note : "no cuBLASLt";
    printf("### Decode projections against cuBLASLt FP8 (first CSA layer's shapes)\n\n");
    printf("| projection | W rows x cols | format | MB | N | dsv4 us | dsv4 GB/s | of copy | "
           "kernels | cuBLASLt us | cuBLASLt GB/s | cuBLASLt scaling | dsv4 / cuBLASLt |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int k = 0; k < o->n_gemms; k++) {
        const gemm_row *g = &o->gemms[k];
        const double bytes = (double)dsv4_weight_bytes(g->w);
        for (int i = 0; i < g->g.n_n; i++) {
            const dsv4_bench_gemm *r = &g->g.r[i];
            char blas[64] = "-", ratio[32] = "-", scaling[48] = "-";
            if (r->blas_us > 0.0) {
                snprintf(blas, sizeof blas, "%.2f | %.0f", r->blas_us,
                         gbs((double)g->g.fp8_bytes, r->blas_us));
                snprintf(ratio, sizeof ratio, "%.2f", r->ours_us / r->blas_us);
                snprintf(scaling, sizeof scaling, "%s%s, best of %d",
                         r->blas_block ? "block 128x128 / 1x128" : "per tensor",
                         r->blas_w_is_a ? "" : " (D^T)", r->blas_algos);
            } else {
                snprintf(blas, sizeof blas, "- | -");
            }
            char shape[64];
            snprintf(shape, sizeof shape, "%lld x %lld", (long long)g->w->rows,
                     (long long)g->w->cols);
            if (g->groups > 1)
                snprintf(shape + strlen(shape), sizeof shape - strlen(shape), " (%d groups)",
                         g->groups);
            printf("| %s | %s | %s | %.1f | %d | %.2f | %.0f | %.0f%% | %d | %s | %s | %s |\n",
                   g->name, shape, dsv4_weight_format_name(g->w->format), bytes / 1e6, r->n,
                   r->ours_us, gbs(bytes, r->ours_us), 100.0 * gbs(bytes, r->ours_us) / c->copy_gbs,
                   r->ours_kernels, blas, scaling, ratio);
        }
    }
    printf("\nPer call, CUDA graph of back-to-back calls over distinct copies of the weight "
           "(%d for wq_a: 256 MB or 64 copies, so L2 keeps none), best of 5 launches. dsv4: "
           "the engine's op (dsv4_bk_linear; wo_a: dsv4_bk_linear_grouped) on f32 x "
           "(FP8 weights: act_quant'd, block 128), "
           "bf16-rounded output. "
           "cuBLASLt: e4m3 x e4m3 -> bf16, f32 accumulation, wo_a as a strided batch of its "
           "groups, the fastest of up to %d heuristic candidates per scaling layout; block "
           "scaling = f32 scales per 128 x 128 of W and per 1 x 128 of x (cuBLASLt takes "
           "the ue8m0 scales as f32 values), else one f32 scale per tensor. GB/s = W's bytes "
           "(cuBLASLt: e4m3 + f32 block scales) / time; dsv4 / cuBLASLt < 1: ours faster. "
           "%.*s.\n\n",
           o->gemms[0].g.copies, DSV4_BENCH_GEMM_ALGOS, (int)strcspn(lt, ";"), lt);
    int fell_back = 0; /* where block scaling fell back, shape by shape */
    for (int k = 0; k < o->n_gemms; k++)
        if (strstr(o->gemms[k].g.note, "; ")) {
            printf("- %s: %s\n", o->gemms[k].name, strstr(o->gemms[k].g.note, "; ") + 2);
            fell_back = 1;
        }
    if (fell_back) printf("\n");
}

static void print_hf_markdown(const bench_args *a, const dsv4_model *m, const bench_out *o)
{
    const decode_row *r = hf_row(a, o);
    if (!(a->hf_layer_us > 0.0) || !r) return;
    int head = 0;
    const double us = layer_us(m, o, r, &head);
    printf("### Against transformers (one decoder layer, decode step of 1 token)\n\n");
    printf("| transformers us/layer | dsv4 us/layer (batch 1, context %lld) | transformers / dsv4 "
           "|\n|---|---|---|\n| %.1f | %.1f | %.1fx |\n\n",
           (long long)r->context, a->hf_layer_us, us, a->hf_layer_us / us);
    printf("transformers: %s%s. dsv4: %s.\n\n", a->hf_note[0] ? a->hf_note : "as given",
           a->hf_context ? "" : " (context not given)",
           head ? "the graph-replayed step minus the op timer's embed, head.collapse and "
                  "head.logits, / layers"
                : "the graph-replayed step / layers (head included: no op-timer table)");
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
    char graphs[48];
    if (a->graphs && a->pdl < 0)
        snprintf(graphs, sizeof graphs, "on, PDL up to %d rows", (int)DSV4_ENGINE_PDL_ROWS);
    else
        snprintf(graphs, sizeof graphs, "%s",
                 !a->graphs   ? "off"
                 : a->pdl > 0 ? "on, PDL"
                              : "on, no PDL");
    printf("| %s (%d SMs, %.0f GiB) | %s | dsv4 %s | %s | %d | %s | %s |\n\n", c->device_name,
           c->sm_count, (double)c->device_bytes / (1u << 30), o->when, dsv4_version(), a->shape,
           m->w.n_layers, kinds, graphs);
    printf("Cached keys: %s.\n\n", a->zero_cache
                                       ? "zeros (--zero-cache: every attention and indexer "
                                         "score ties)"
                                       : "varied bf16 values (dsv4_engine_fill_cache)");
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
    printf("| context | batch | ms/step | us/layer | tokens/s | MB/step (weights + state + "
           "other) | floor ms | of floor | GB/s | kernels/step | kernels/layer |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < o->n_rows; i++) {
        const decode_row *r = &o->rows[i];
        const double bytes = row_bytes(r), floor_ms = bytes / (c->copy_gbs * 1e9) * 1e3;
        printf("| %lld | %d | %.3f | %.1f | %.1f | %.1f (%.1f + %.1f + %.1f) | %.3f | %.0f%% | "
               "%.0f | %d | %.1f |\n",
               (long long)r->context, r->batch, r->ms, r->ms * 1e3 / m->w.n_layers,
               r->batch * 1e3 / r->ms, bytes / 1e6, r->weight_bytes / 1e6, r->kv_bytes / 1e6,
               r->other_bytes / 1e6, floor_ms, 100.0 * floor_ms / r->ms, gbs(bytes, r->ms * 1e3),
               r->kernels, kernels_per_layer(r, m->w.n_layers));
    }
    printf("\nus/layer = step time / layers (the head and embedding included). Floor = bytes / "
           "copy bandwidth; routed experts touched by B rows: E (1 - (1 - K/E)^B). GB/s = "
           "bytes / step time. kernels/layer = (kernels of the step's graph - %d for the "
           "embedding, head collapse and logits) / layers.\n\n",
           HEAD_EMBED_KERNELS);
    if (a->prefill > 0)
        printf("### Prefill\n\n| tokens | chunk | seconds | tokens/s |\n|---|---|---|---|\n"
               "| %lld | %d | %.3f | %.0f |\n\n",
               (long long)a->prefill, PREFILL_CHUNK, o->prefill_s, a->prefill / o->prefill_s);
    for (int k = 0; k < o->n_prof; k++) {
        const prof_table *t = &o->prof[k];
        const double total = prof_total(t);
        printf("### Per op: batch %d, context %lld (%d steps under the op timer)\n\n", t->batch,
               (long long)t->context, PROF_STEPS);
        printf("| op | ms/step | share | calls/step | MB/step | GB/s | of copy |\n"
               "|---|---|---|---|---|---|---|\n");
        double head_ms = 0.0;
        for (int i = 0; i < t->n; i++) {
            const double ms = t->e[i].ms / PROF_STEPS;
            const double bytes = op_bytes(m, t->e[i].label, t->context, t->batch);
            char bw[64] = "- | - | -";
            if (bytes > 0.0)
                snprintf(bw, sizeof bw, "%.2f | %.0f | %.0f%%", bytes / 1e6, gbs(bytes, ms * 1e3),
                         100.0 * gbs(bytes, ms * 1e3) / c->copy_gbs);
            if (is_head_op(t->e[i].label)) head_ms += ms;
            printf("| %s | %.4f | %.1f%% | %.1f | %s |\n", t->e[i].label, ms,
                   total > 0 ? 100.0 * t->e[i].ms / total : 0.0, (double)t->e[i].calls / PROF_STEPS,
                   bw);
        }
        printf("| total | %.4f | 100%% | | | | |\n\n", total / PROF_STEPS);
        decode_row lr;
        memset(&lr, 0, sizeof lr);
        step_bytes(m, t->context, t->batch, &lr);
        const double L = m->w.n_layers, lus = (total / PROF_STEPS - head_ms) * 1e3 / L;
        const double lbytes = (lr.weight_bytes + lr.kv_bytes) / L;
        printf("Per layer, %.1f MB (weights + state): op timer (eager, without embed and head) "
               "%.1f us, %.0f GB/s = %.0f%% of copy",
               lbytes / 1e6, lus, gbs(lbytes, lus), 100.0 * gbs(lbytes, lus) / c->copy_gbs);
        for (int i = 0; i < o->n_rows; i++) {
            const decode_row *r = &o->rows[i];
            if (r->batch != t->batch || r->context != t->context) continue;
            int head = 0;
            const double gus = layer_us(m, o, r, &head);
            printf("; graph step minus the op timer's embed and head, / layers: %.1f us, %.0f "
                   "GB/s = %.0f%% of copy",
                   gus, gbs(lbytes, gus), 100.0 * gbs(lbytes, gus) / c->copy_gbs);
            break;
        }
        printf(". MB/step: what step_bytes counts for the op (weights; attn.core the window and "
               "selected entries; index.topk the indexer keys); \"-\": activations only.\n\n");
    }
    print_gemms_markdown(o);
    print_hf_markdown(a, m, o);
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
    char pdl[32];
    if (a->graphs && a->pdl < 0)
        snprintf(pdl, sizeof pdl, "up to %d rows", (int)DSV4_ENGINE_PDL_ROWS);
    else
        snprintf(pdl, sizeof pdl, "%s", !a->graphs || !a->pdl ? "off" : "on");
    printf(",\n \"shape\": \"%s\", \"layers\": %d, \"layer_kinds\": \"%s\", \"experts\": \"%s\","
           " \"graphs\": %s, \"pdl\": \"%s\", \"cached_keys\": \"%s\",\n",
           a->shape, m->w.n_layers, kinds, dsv4_weight_format_name(a->experts),
           a->graphs ? "true" : "false", pdl, a->zero_cache ? "zeros" : "varied");
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
               "\"of_floor\": %.4f, \"kernels_per_step\": %d, \"kernels_per_layer\": %.2f}",
               i ? "," : "", (long long)r->context, r->batch, r->ms, r->ms * 1e3 / m->w.n_layers,
               r->batch * 1e3 / r->ms, bytes, r->weight_bytes, r->kv_bytes, r->other_bytes,
               floor_ms, floor_ms / r->ms, r->kernels, kernels_per_layer(r, m->w.n_layers));
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
            printf(", \"ms_per_step\": %.5f, \"share\": %.4f, \"calls_per_step\": %.2f, "
                   "\"bytes\": %.0f}",
                   t->e[i].ms / PROF_STEPS, total > 0 ? t->e[i].ms / total : 0.0,
                   (double)t->e[i].calls / PROF_STEPS,
                   op_bytes(m, t->e[i].label, t->context, t->batch));
        }
        printf("]}");
    }
    printf("],\n \"gemms\": [");
    for (int k = 0; k < o->n_gemms; k++) {
        const gemm_row *g = &o->gemms[k];
        printf("%s\n  {\"name\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"groups\": %d, "
               "\"format\": \"%s\", \"bytes\": %llu, \"fp8_bytes\": %llu, \"copies\": %d, "
               "\"runs\": [",
               k ? "," : "", g->name, (long long)g->w->rows, (long long)g->w->cols, g->groups,
               dsv4_weight_format_name(g->w->format), (unsigned long long)dsv4_weight_bytes(g->w),
               (unsigned long long)g->g.fp8_bytes, g->g.copies);
        for (int i = 0; i < g->g.n_n; i++) {
            const dsv4_bench_gemm *r = &g->g.r[i];
            printf("%s{\"n\": %d, \"ours_us\": %.3f, \"ours_kernels\": %d, \"blas_us\": "
                   "%.3f, \"blas_block_scaled\": %s, \"blas_w_is_a\": %s, \"blas_algos\": %d}",
                   i ? ", " : "", r->n, r->ours_us, r->ours_kernels, r->blas_us,
                   r->blas_block ? "true" : "false", r->blas_w_is_a ? "true" : "false",
                   r->blas_algos);
        }
        printf("], \"blas_note\": ");
        json_str(g->g.note);
        printf("}");
    }
    printf("],\n \"transformers\": ");
    const decode_row *hr = hf_row(a, o);
    if (a->hf_layer_us > 0.0 && hr) {
        int head = 0;
        const double us = layer_us(m, o, hr, &head);
        printf("{\"hf_layer_us\": %.2f, \"context\": %lld, \"ours_layer_us\": %.2f, "
               "\"head_removed\": %s, \"ratio\": %.3f, \"note\": ",
               a->hf_layer_us, (long long)hr->context, us, head ? "true" : "false",
               a->hf_layer_us / us);
        json_str(a->hf_note);
        printf("}");
    } else {
        printf("null");
    }
    printf("}\n");
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
    /* the contexts are reached by seeking, so the cache holds what it is filled with */
    dsv4_status fill = a->zero_cache ? DSV4_OK : dsv4_engine_fill_cache(e, a->seed ^ 0xcac4e);
    if (fill != DSV4_OK) {
        dsv4_engine_destroy(e);
        return fill;
    }
    int32_t *slots = malloc((size_t)max_b * sizeof *slots), *ids = malloc((size_t)max_b * 4);
    dsv4_status st =
        slots && ids ? DSV4_OK : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %d rows", max_b);
    for (int s = 0; slots && s < max_b; s++) slots[s] = s;
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ a->seed;
    if (st == DSV4_OK && a->prefill > 0) {
        fprintf(stderr, "dsv4 bench: prefill of %lld tokens\n", (long long)a->prefill);
        st = time_prefill(e, m, a->prefill, &rng, &o->prefill_s);
    }
    if (st == DSV4_OK && a->trace) { /* trace_decode appends */
        FILE *f = fopen(a->trace, "w");
        if (!f || fclose(f) != 0)
            st = dsv4_fail(DSV4_ERR_IO, "cannot create the trace file %s", a->trace);
    }
    for (int ci = 0; st == DSV4_OK && ci < a->n_contexts; ci++)
        for (int bi = 0; st == DSV4_OK && bi < a->n_batches; bi++) {
            fprintf(stderr, "dsv4 bench: decode at context %lld, batch %d\n",
                    (long long)a->contexts[ci], a->batches[bi]);
            st = time_decode(e, m, a, a->contexts[ci], a->batches[bi], slots, ids, &rng,
                             &o->rows[o->n_rows]);
            if (st == DSV4_OK) o->n_rows++;
            if (st == DSV4_OK && a->trace)
                st =
                    trace_decode(e, m, a->trace, a->contexts[ci], a->batches[bi], slots, ids, &rng);
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

/* The decode projections of the first CSA layer (the first layer when none is): the FP8 GEMVs
 * of the attention, the shared expert and the indexer query. */
static int gemm_shapes(const dsv4_model *m, gemm_row *g)
{
    const dsv4_layer_weights *l = &m->w.layers[0];
    for (int i = 0; i < m->w.n_layers; i++)
        if (m->w.layers[i].compress_ratio == 4) {
            l = &m->w.layers[i];
            break;
        }
    const struct {
        const char *name;
        const dsv4_weight *w;
        int groups;
    } s[MAX_GEMMS] = {{"wq_a", &l->wq_a, 1},           {"wkv", &l->wkv, 1},
                      {"wq_b", &l->wq_b, 1},           {"wo_a", &l->wo_a, m->cfg.o_groups},
                      {"wo_b", &l->wo_b, 1},           {"shared w1 (= w3)", &l->shared.w1, 1},
                      {"shared w2", &l->shared.w2, 1}, {"indexer wq_b", &l->idx_wq_b, 1}};
    int n = 0;
    for (int i = 0; i < MAX_GEMMS; i++) {
        if (s[i].w->rows * s[i].w->cols <= 0) continue; /* no indexer on this layer */
        memset(&g[n], 0, sizeof g[n]);
        g[n].name = s[i].name;
        g[n].w = s[i].w;
        g[n].groups = s[i].groups;
        n++;
    }
    return n;
}

static dsv4_status run_gemms(const bench_args *a, const dsv4_model *m, bench_out *o)
{
    if (!a->n_gemm_n) return DSV4_OK;
    dsv4_backend *b = NULL;
    DSV4_TRY(dsv4_backend_create(DSV4_DEVICE_CUDA, a->gpu, NULL, &b));
    const int n = gemm_shapes(m, o->gemms);
    dsv4_status st = DSV4_OK;
    for (int k = 0; k < n && st == DSV4_OK; k++) {
        gemm_row *g = &o->gemms[k];
        fprintf(stderr, "dsv4 bench: %s [%lld x %lld] against cuBLASLt\n", g->name,
                (long long)g->w->rows, (long long)g->w->cols);
        st = dsv4_bench_gemm_measure(b, g->w, g->groups, a->gemm_n, a->n_gemm_n, &g->g);
        if (st == DSV4_OK) o->n_gemms++;
    }
    dsv4_backend_destroy(b);
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
    if (st == DSV4_OK)
        st = dsv4_model_create_shape(a.shape, a.layers, a.hash_layers, a.experts, &m);
    if (st == DSV4_OK && !a.ceilings_only) st = run_engine(&a, m, o);
    if (st == DSV4_OK && !a.ceilings_only && run_gemms(&a, m, o) != DSV4_OK)
        fprintf(stderr, "dsv4 bench: the projections against cuBLASLt stopped after %d: %s\n",
                o->n_gemms, dsv4_last_error()); /* the report keeps what was measured */
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
