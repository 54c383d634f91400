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
    st_set *set;               /* owns the mappings every weight points into */
    dsv4_layout layout;
    dsv4_model_weights w;      /* w.n_layers = cfg.num_layers + MTP blocks present */
    int mtp_declared;          /* MTP blocks the config declares */
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
