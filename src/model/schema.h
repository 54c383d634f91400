/*
 * schema.h - the list of every weight a DeepSeek-V4 model of a given config has: canonical
 * name, where it goes in dsv4_model_weights, its role (which formats are valid) and its
 * logical shape. The loader binds from this list and inspection walks it, so the model's
 * structure is written down exactly once.
 */
#ifndef DSV4_MODEL_SCHEMA_H
#define DSV4_MODEL_SCHEMA_H

#include "model/model.h"

typedef enum schema_role {
    ROLE_MATRIX,       /* projection: dense, FP8 or FP4 */
    ROLE_EXPERT,       /* routed expert projection: dense, FP8 or FP4 */
    ROLE_DENSE_MATRIX, /* fp matrices the reference keeps in high precision (hc_*, ape) */
    ROLE_VECTOR,       /* norm weights, biases, sinks, hc base/scale */
    ROLE_TABLE         /* integer table (tid2eid) */
} schema_role;

typedef struct schema_slot {
    const char *name;  /* canonical name, e.g. "layers.2.attn.wq_a" */
    dsv4_weight *w;
    schema_role role;
    int ndim;          /* 1: [cols]; 2: [rows, cols] */
    int64_t rows, cols;
    const char *dims;  /* the shape in config symbols, for messages */
    int layer;         /* -1 for model-level weights */
    int expert;        /* -1 unless a routed expert */
    int proj;          /* routed expert: 1, 2 or 3 for w1/w2/w3 */
} schema_slot;

/* Calls fn for every slot of `m` (m->w.layers and experts must be allocated). Stops when fn
 * returns non-zero and returns that value. */
int schema_walk(struct dsv4_model *m, int (*fn)(schema_slot *slot, void *ctx), void *ctx);

#endif
