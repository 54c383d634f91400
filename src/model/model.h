/*
 * model.h - the loaded model behind the opaque dsv4_model handle: config, mapped shards,
 * detected layout and the weight descriptions (model/weights.h).
 */
#ifndef DSV4_MODEL_MODEL_H
#define DSV4_MODEL_MODEL_H

#include "dsv4.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

struct dsv4_model {
    char *dir;
    dsv4_config cfg;
    st_set *set; /* owns the mappings every weight points into */
    dsv4_layout layout;
    dsv4_model_weights w; /* w.n_layers = cfg.num_layers + MTP blocks present */
    int mtp_declared;     /* MTP blocks the config declares */

    /* CUDA sessions share one engine (the weights on the GPU) per model: session_gpu.c */
    struct dsv4_engine *engine;
    unsigned engine_slots_used; /* bit i: slot i belongs to a session */
};

/* Binds every weight of `m->w` from `m->set` (layout already detected), validating dtypes and
 * shapes against m->cfg. Defined in model/checkpoint.c. */
dsv4_status dsv4_checkpoint_bind(struct dsv4_model *m);
void dsv4_checkpoint_free(struct dsv4_model *m);

/* Calls fn(canonical_name, weight, ctx) for every weight present, in a fixed order. The
 * canonical name is the official tensor name without ".weight" ("layers.3.attn.wq_a",
 * "mtp.0.e_proj"); the buffer is only valid during the call. Stops early if fn returns
 * non-zero and returns that value. */
int dsv4_model_foreach_weight(const struct dsv4_model *m,
                              int (*fn)(const char *name, const dsv4_weight *w, void *ctx),
                              void *ctx);

/* Stored names a canonical name may have in a transformers-layout checkpoint, most likely
 * first; returns how many were written (model/names_hf.c). */
int dsv4_hf_names(const char *canonical, char out[][160], int max_out);
/* Stored names of the stacked routed-expert tensor of main layer `layer` in transformers' module
 * layout: gate_up_proj [E, 2I, D] (down = 0) or down_proj [E, D, I] (down = 1). */
int dsv4_hf_stacked_names(int layer, int down, char out[][160], int max_out);

#endif

#ifndef DSV4_MODEL_SHAPE_DECLS /* appended block: its own guard */
#define DSV4_MODEL_SHAPE_DECLS
/* ---- shape models (model/model_shape.c) ---------------------------------------------------
 * A model with the real DeepSeek-V4 geometry and no weight bytes, for benchmarks: shape "flash"
 * or "pro" (the hub config.json of each), `layers` of them (<= 0: all; fewer take the real
 * layers 2.. so CSA and HCA alternate, see model_shape.c), the first hash_layers of them routed
 * by hash (< 0: model_shape.c's default), routed experts MXFP4 or NVFP4, every other weight in
 * the official checkpoint's format; data = scale = NULL, no MTP. Upload with a random_seed
 * (dsv4_engine_options). Freed by dsv4_model_close. */
dsv4_status dsv4_model_create_shape(const char *shape, int layers, int hash_layers,
                                    dsv4_weight_format expert_format, dsv4_model **out);
/* Bytes as stored of layer `layer`'s weights other than its routed experts (attention,
 * compressor, indexer, mHC, norms, router; tid2eid excluded) and of one routed expert (w1 + w2
 * + w3, scales included), counted from the descriptors whether or not data is attached. */
void dsv4_model_layer_bytes(const dsv4_model *m, int layer, uint64_t *dense, uint64_t *expert);
#endif
