/*
 * checkpoint.c - binds the weights listed by the schema to tensors of a mapped checkpoint.
 *
 * For each canonical weight it finds the stored tensor under the layout's name(s), classifies
 * its format from the dtype and the companion scale tensors (".scale" ue8m0/f32 -> FP8 or
 * MXFP4; ".weight_scale" e4m3 + ".weight_scale_2" -> NVFP4), and checks dtype and shapes against
 * the config geometry. Every failure names the tensor, the file it is in, and what was expected.
 */
#include "core/error.h"
#include "model/schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static const char *file_of(const struct dsv4_model *m, const st_tensor *t)
{
    return base_name(st_set_file_path(m->set, t->file_index));
}

static void shape_str(const st_tensor *t, char *buf, size_t n)
{
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && used < n; i++)
        used +=
            (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

/* The stored tensor for a canonical name, or NULL. */
static const st_tensor *find_stored(const struct dsv4_model *m, const char *canon)
{
    char cand[8][160];
    int n = 0;
    if (m->layout == DSV4_LAYOUT_HF) {
        n = dsv4_hf_names(canon, cand, 8);
    } else {
        size_t len = strlen(canon);
        if (len + sizeof ".weight" > sizeof cand[0]) return NULL; /* no stored name is this long */
        memcpy(cand[0], canon, len);
        memcpy(cand[0] + len, ".weight", sizeof ".weight");
        memcpy(cand[1], canon, len + 1);
        n = 2;
    }
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_set_find(m->set, cand[i]);
        if (t) return t;
    }
    return NULL;
}

static dsv4_status missing(const struct dsv4_model *m, const schema_slot *s)
{
    char cand[8][160];
    if (m->layout == DSV4_LAYOUT_HF && dsv4_hf_names(s->name, cand, 8) > 0)
        return dsv4_fail(
            DSV4_ERR_MISSING_TENSOR,
            "tensor '%s' (canonical %s, shape %s) is missing from the checkpoint in %s", cand[0],
            s->name, s->dims, m->dir);
    return dsv4_fail(
        DSV4_ERR_MISSING_TENSOR, "tensor '%s%s' (shape %s) is missing from the checkpoint in %s",
        s->name,
        (s->role == ROLE_VECTOR || s->role == ROLE_DENSE_MATRIX || s->role == ROLE_TABLE) &&
                !strstr(s->name, "norm")
            ? ""
            : ".weight",
        s->dims, m->dir);
}

/* Checks t's stored shape equals `want` (ndim entries). */
static dsv4_status expect_shape(const struct dsv4_model *m, const st_tensor *t, int ndim,
                                const int64_t *want, const char *what)
{
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    if (ok) return DSV4_OK;
    char got[128], exp[128];
    size_t used = (size_t)snprintf(exp, sizeof exp, "[");
    for (int i = 0; i < ndim && used < sizeof exp; i++)
        used += (size_t)snprintf(exp + used, sizeof exp - used, "%s%lld", i ? ", " : "",
                                 (long long)want[i]);
    if (used < sizeof exp) snprintf(exp + used, sizeof exp - used, "]");
    shape_str(t, got, sizeof got);
    return dsv4_fail(DSV4_ERR_TENSOR_SHAPE, "tensor '%s' in %s has shape %s; expected %s (%s)",
                     t->name, file_of(m, t), got, exp, what);
}

static int is_dense(dsv4_dtype dt)
{
    return dt == DSV4_DT_F32 || dt == DSV4_DT_BF16 || dt == DSV4_DT_F16;
}

static dsv4_weight_format dense_format(dsv4_dtype dt)
{
    return dt == DSV4_DT_F32    ? DSV4_FORMAT_F32
           : dt == DSV4_DT_BF16 ? DSV4_FORMAT_BF16
                                : DSV4_FORMAT_F16;
}

/* Finds a companion tensor "<base><suffix>" where base is the stored name minus ".weight". */
static const st_tensor *companion(const struct dsv4_model *m, const st_tensor *t,
                                  const char *suffix)
{
    char name[224];
    size_t len = strlen(t->name);
    if (len > 7 && !strcmp(t->name + len - 7, ".weight")) len -= 7;
    if (len + strlen(suffix) >= sizeof name) return NULL;
    memcpy(name, t->name, len);
    strcpy(name + len, suffix);
    return st_set_find(m->set, name);
}

static dsv4_status bind_scale(const struct dsv4_model *m, dsv4_weight *w, const st_tensor *sc,
                              int64_t srows, int64_t scols, const char *what)
{
    int64_t want[2] = {srows, scols};
    DSV4_TRY(expect_shape(m, sc, 2, want, what));
    w->scale = sc->data;
    w->scale_dtype = sc->dtype;
    w->scale_rows = srows;
    w->scale_cols = scols;
    w->scale_bytes = sc->nbytes;
    return DSV4_OK;
}

static dsv4_status read_scalar_f32(const struct dsv4_model *m, const st_tensor *t, float *out)
{
    int64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) numel *= t->shape[i];
    if (t->dtype != DSV4_DT_F32 || numel != 1)
        return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                         "tensor '%s' in %s must be a single F32 value (got %s with %lld elements)",
                         t->name, file_of(m, t), dsv4_dtype_name(t->dtype), (long long)numel);
    memcpy(out, t->data, 4);
    return DSV4_OK;
}

/* A quantised or dense 2-D matrix: classify by dtype and companions. */
static dsv4_status bind_matrix(const struct dsv4_model *m, const schema_slot *s, const st_tensor *t)
{
    dsv4_weight *w = s->w;
    const int64_t rows = s->rows, cols = s->cols;
    int64_t want[2] = {rows, cols};
    if (is_dense(t->dtype)) {
        DSV4_TRY(expect_shape(m, t, 2, want, s->dims));
        w->format = dense_format(t->dtype);
        return DSV4_OK;
    }
    if (t->dtype == DSV4_DT_F8_E4M3) {
        DSV4_TRY(expect_shape(m, t, 2, want, s->dims));
        const st_tensor *sc = companion(m, t, ".scale");
        if (!sc) sc = companion(m, t, ".weight_scale_inv");
        if (!sc)
            return dsv4_fail(
                DSV4_ERR_MISSING_TENSOR,
                "FP8 tensor '%s' in %s has no block-scale tensor (expected '%.*s.scale')", t->name,
                file_of(m, t), (int)(strlen(t->name) - 7), t->name);
        if (sc->dtype != DSV4_DT_F8_E8M0 && sc->dtype != DSV4_DT_F32)
            return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                             "scale tensor '%s' in %s has dtype %s; expected F8_E8M0 or F32",
                             sc->name, file_of(m, sc), dsv4_dtype_name(sc->dtype));
        w->format = DSV4_FORMAT_FP8;
        return bind_scale(m, w, sc, (rows + 127) / 128, (cols + 127) / 128,
                          "one scale per 128x128 block");
    }
    if (t->dtype == DSV4_DT_I8 || t->dtype == DSV4_DT_U8) {
        if (s->role != ROLE_EXPERT && s->role != ROLE_MATRIX)
            return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                             "tensor '%s' in %s is packed FP4; not valid here", t->name,
                             file_of(m, t));
        int64_t packed[2] = {rows, cols / 2};
        if (cols % 32 && !companion(m, t, ".weight_scale"))
            return dsv4_fail(DSV4_ERR_TENSOR_SHAPE,
                             "tensor '%s' in %s: FP4 needs %lld columns to be a multiple of 32",
                             t->name, file_of(m, t), (long long)cols);
        DSV4_TRY(expect_shape(m, t, 2, packed, "two FP4 values per byte"));
        const st_tensor *nv = companion(m, t, ".weight_scale");
        if (nv) { /* NVFP4: e4m3 per 16 inputs + f32 global scale */
            if (cols % 16)
                return dsv4_fail(
                    DSV4_ERR_TENSOR_SHAPE,
                    "tensor '%s' in %s: NVFP4 needs columns (%lld) to be a multiple of 16", t->name,
                    file_of(m, t), (long long)cols);
            if (nv->dtype != DSV4_DT_F8_E4M3)
                return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                                 "scale tensor '%s' in %s has dtype %s; expected F8_E4M3", nv->name,
                                 file_of(m, nv), dsv4_dtype_name(nv->dtype));
            const st_tensor *g = companion(m, t, ".weight_scale_2");
            if (!g)
                return dsv4_fail(
                    DSV4_ERR_MISSING_TENSOR,
                    "NVFP4 tensor '%s' in %s has no global scale '%.*s.weight_scale_2'", t->name,
                    file_of(m, t), (int)(strlen(t->name) - 7), t->name);
            DSV4_TRY(read_scalar_f32(m, g, &w->scale2));
            const st_tensor *in = companion(m, t, ".input_scale");
            if (in) DSV4_TRY(read_scalar_f32(m, in, &w->input_scale));
            w->format = DSV4_FORMAT_NVFP4;
            return bind_scale(m, w, nv, rows, cols / 16, "one e4m3 scale per 16 inputs");
        }
        const st_tensor *sc = companion(m, t, ".scale");
        if (!sc)
            return dsv4_fail(DSV4_ERR_MISSING_TENSOR,
                             "FP4 tensor '%s' in %s has no scale tensor (expected '%.*s.scale')",
                             t->name, file_of(m, t), (int)(strlen(t->name) - 7), t->name);
        if (sc->dtype != DSV4_DT_F8_E8M0)
            return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                             "scale tensor '%s' in %s has dtype %s; expected F8_E8M0", sc->name,
                             file_of(m, sc), dsv4_dtype_name(sc->dtype));
        w->format = DSV4_FORMAT_MXFP4;
        return bind_scale(m, w, sc, rows, cols / 32, "one ue8m0 scale per 32 inputs");
    }
    return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                     "tensor '%s' in %s has dtype %s; a matrix must be F32, BF16, F16, F8_E4M3 "
                     "(+ scale) or packed FP4 (I8/U8 + scales)",
                     t->name, file_of(m, t), dsv4_dtype_name(t->dtype));
}

static dsv4_status check_table(const struct dsv4_model *m, const st_tensor *t, const schema_slot *s)
{
    if (t->dtype != DSV4_DT_I64 && t->dtype != DSV4_DT_I32)
        return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                         "tensor '%s' in %s has dtype %s; expected I64 or I32", t->name,
                         file_of(m, t), dsv4_dtype_name(t->dtype));
    int64_t want[2] = {s->rows, s->cols};
    DSV4_TRY(expect_shape(m, t, 2, want, s->dims));
    /* Every entry must name an expert; a bad id would index out of bounds at run time. */
    const int64_t n = s->rows * s->cols, E = m->cfg.n_routed_experts;
    for (int64_t i = 0; i < n; i++) {
        int64_t v;
        if (t->dtype == DSV4_DT_I64) {
            memcpy(&v, t->data + i * 8, 8);
        } else {
            int32_t v32;
            memcpy(&v32, t->data + i * 4, 4);
            v = v32;
        }
        if (v < 0 || v >= E)
            return dsv4_fail(
                DSV4_ERR_FORMAT,
                "tensor '%s' in %s: entry [%lld, %lld] = %lld is not an expert id in [0, %lld)",
                t->name, file_of(m, t), (long long)(i / s->cols), (long long)(i % s->cols),
                (long long)v, (long long)E);
    }
    s->w->format = DSV4_FORMAT_INT;
    return DSV4_OK;
}

/* HF module layout: routed experts stacked as gate_up_proj [E, 2I, D] and down_proj [E, D, I]. */
static dsv4_status bind_stacked_expert(const struct dsv4_model *m, const schema_slot *s, int *found)
{
    char name[8][160];
    const int is_down = s->proj == 2;
    int n = dsv4_hf_stacked_names(m->w.layers[s->layer].is_mtp ? -1 : s->layer, is_down, name, 8);
    const st_tensor *t = NULL;
    for (int i = 0; i < n && !t; i++) t = st_set_find(m->set, name[i]);
    *found = t != NULL;
    if (!t) return DSV4_OK;
    const int64_t E = m->cfg.n_routed_experts, I = m->cfg.moe_intermediate_size,
                  D = m->cfg.hidden_size;
    int64_t want[3] = {E, is_down ? D : 2 * I, is_down ? I : D};
    if (!is_dense(t->dtype))
        return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                         "stacked expert tensor '%s' in %s has dtype %s; expected F32, BF16 or F16",
                         t->name, file_of(m, t), dsv4_dtype_name(t->dtype));
    DSV4_TRY(expect_shape(m, t, 3, want,
                          is_down ? "[n_routed_experts, hidden_size, moe_intermediate_size]"
                                  : "[n_routed_experts, 2*moe_intermediate_size, hidden_size]"));
    const uint64_t es = dsv4_dtype_size(t->dtype);
    const uint64_t per_expert = (uint64_t)(want[1] * want[2]) * es;
    uint64_t off = (uint64_t)s->expert * per_expert;
    if (s->proj == 3) off += (uint64_t)(I * D) * es; /* w3 rows follow the w1 rows */
    dsv4_weight *w = s->w;
    w->name = t->name;
    w->format = dense_format(t->dtype);
    w->dtype = t->dtype;
    w->ndim = 2;
    w->rows = s->rows;
    w->cols = s->cols;
    w->data = t->data + off;
    w->data_bytes = (uint64_t)(s->rows * s->cols) * es;
    w->scale2 = 1.0f;
    return DSV4_OK;
}

static int bind_slot(schema_slot *s, void *ctx)
{
    struct dsv4_model *m = ctx;
    dsv4_weight *w = s->w;
    const st_tensor *t = find_stored(m, s->name);
    if (!t && s->role == ROLE_EXPERT && m->layout == DSV4_LAYOUT_HF) {
        int found = 0;
        dsv4_status st = bind_stacked_expert(m, s, &found);
        if (st != DSV4_OK || found) return (int)st;
    }
    if (!t) return (int)missing(m, s);
    memset(w, 0, sizeof *w);
    w->name = t->name;
    w->dtype = t->dtype;
    w->ndim = s->ndim;
    w->rows = s->rows;
    w->cols = s->cols;
    w->data = t->data;
    w->data_bytes = t->nbytes;
    w->scale2 = 1.0f;
    dsv4_status st = DSV4_OK;
    switch (s->role) {
    case ROLE_MATRIX:
    case ROLE_EXPERT:
        st = bind_matrix(m, s, t);
        break;
    case ROLE_DENSE_MATRIX:
    case ROLE_VECTOR:
        if (!is_dense(t->dtype)) {
            st = dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                           "tensor '%s' in %s has dtype %s; expected F32, BF16 or F16", t->name,
                           file_of(m, t), dsv4_dtype_name(t->dtype));
            break;
        }
        w->format = dense_format(t->dtype);
        if (s->ndim == 2) {
            int64_t want[2] = {s->rows, s->cols};
            st = expect_shape(m, t, 2, want, s->dims);
        } else if (!(t->ndim == 1 && t->shape[0] == s->cols) && !(s->cols == 1 && t->ndim == 0)) {
            int64_t want[1] = {s->cols};
            st = expect_shape(m, t, 1, want, s->dims);
        }
        break;
    case ROLE_TABLE:
        st = check_table(m, t, s);
        break;
    }
    return (int)st;
}

/* A tensor the config says should not exist (e.g. a compressor on a sliding layer) means the
 * config and the weights disagree; loading would silently ignore trained weights. */
static dsv4_status check_absent(const struct dsv4_model *m, const char *canon, const char *why)
{
    const st_tensor *t = find_stored(m, canon);
    if (t)
        return dsv4_fail(DSV4_ERR_CONFIG, "tensor '%s' in %s exists but the config says %s",
                         t->name, file_of(m, t), why);
    return DSV4_OK;
}

static dsv4_status check_schedule(const struct dsv4_model *m)
{
    char name[160], why[160];
    for (int i = 0; i < m->w.n_layers; i++) {
        const dsv4_layer_weights *L = &m->w.layers[i];
        char prefix[32];
        if (L->is_mtp)
            snprintf(prefix, sizeof prefix, "mtp.%d.", i - m->cfg.num_layers);
        else
            snprintf(prefix, sizeof prefix, "layers.%d.", i);
        if (L->compress_ratio == 0) {
            snprintf(name, sizeof name, "%sattn.compressor.wkv", prefix);
            snprintf(why, sizeof why, "layer %d is sliding-window only (compress ratio 0)", i);
            DSV4_TRY(check_absent(m, name, why));
        }
        if (L->compress_ratio != 4) {
            snprintf(name, sizeof name, "%sattn.indexer.wq_b", prefix);
            snprintf(why, sizeof why, "layer %d has compress ratio %d (the indexer is CSA-only)", i,
                     L->compress_ratio);
            DSV4_TRY(check_absent(m, name, why));
        }
        if (!L->hash_routed) {
            snprintf(name, sizeof name, "%sffn.gate.tid2eid", prefix);
            snprintf(why, sizeof why, "layer %d is not hash-routed (num_hash_layers = %d)", i,
                     m->cfg.num_hash_layers);
            DSV4_TRY(check_absent(m, name, why));
        }
    }
    return DSV4_OK;
}

/* Routed experts of the main layers must agree with what the config declares. */
static dsv4_status check_expert_quant(const struct dsv4_model *m)
{
    dsv4_weight_format want;
    const char *what;
    switch (m->cfg.expert_quant) {
    case DSV4_EXPERT_QUANT_FP4:
        want = DSV4_FORMAT_MXFP4;
        what = "expert_dtype \"fp4\" (MXFP4)";
        break;
    case DSV4_EXPERT_QUANT_FP8:
        want = DSV4_FORMAT_FP8;
        what = "expert_dtype \"fp8\"";
        break;
    case DSV4_EXPERT_QUANT_NVFP4:
        want = DSV4_FORMAT_NVFP4;
        what = "hf_quant_config.json (NVFP4)";
        break;
    default:
        return DSV4_OK;
    }
    for (int i = 0; i < m->cfg.num_layers; i++) {
        const dsv4_weight *w = &m->w.layers[i].experts[0].w1;
        if (w->format == want || w->format == DSV4_FORMAT_F32 || w->format == DSV4_FORMAT_BF16 ||
            w->format == DSV4_FORMAT_F16)
            continue;
        return dsv4_fail(DSV4_ERR_CONFIG, "tensor '%s' is %s but the config declares %s", w->name,
                         dsv4_weight_format_name(w->format), what);
    }
    return DSV4_OK;
}

static dsv4_status detect_layout(struct dsv4_model *m)
{
    if (st_set_find(m->set, "embed.weight")) {
        m->layout = m->cfg.expert_quant == DSV4_EXPERT_QUANT_NVFP4 ? DSV4_LAYOUT_NVFP4
                                                                   : DSV4_LAYOUT_OFFICIAL;
        return DSV4_OK;
    }
    char cand[8][160];
    int n = dsv4_hf_names("embed", cand, 8);
    for (int i = 0; i < n; i++)
        if (st_set_find(m->set, cand[i])) {
            m->layout = DSV4_LAYOUT_HF;
            return DSV4_OK;
        }
    return dsv4_fail(DSV4_ERR_MISSING_TENSOR,
                     "%s: cannot recognise the checkpoint layout: no 'embed.weight' (official) "
                     "and no '%s' (transformers)",
                     m->dir, cand[0]);
}

dsv4_status dsv4_checkpoint_bind(struct dsv4_model *m)
{
    const dsv4_config *c = &m->cfg;
    DSV4_TRY(detect_layout(m));

    /* MTP blocks load when their weights are present. */
    m->mtp_declared = c->num_mtp_layers;
    int mtp = 0;
    for (int j = 0; j < c->num_mtp_layers; j++) {
        char canon[64];
        snprintf(canon, sizeof canon, "mtp.%d.e_proj", j);
        if (!find_stored(m, canon)) break;
        mtp++;
    }
    m->w.n_layers = c->num_layers + mtp;
    m->w.layers = calloc((size_t)m->w.n_layers, sizeof *m->w.layers);
    if (!m->w.layers)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %d layers", m->w.n_layers);
    for (int i = 0; i < m->w.n_layers; i++) {
        dsv4_layer_weights *L = &m->w.layers[i];
        L->index = i;
        L->is_mtp = i >= c->num_layers;
        L->compress_ratio = c->compress_ratio[i];
        L->hash_routed = !L->is_mtp && c->hash_layer[i];
        L->experts = calloc((size_t)c->n_routed_experts, sizeof *L->experts);
        if (!L->experts)
            return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "allocating %d experts", c->n_routed_experts);
    }
    DSV4_TRY(check_schedule(m));
    int rc = schema_walk(m, bind_slot, m);
    if (rc) return (dsv4_status)rc;
    DSV4_TRY(check_expert_quant(m));
    if (m->layout == DSV4_LAYOUT_OFFICIAL && c->num_layers > 0 &&
        m->w.layers[0].experts[0].w1.format == DSV4_FORMAT_NVFP4)
        m->layout = DSV4_LAYOUT_NVFP4;
    return DSV4_OK;
}

void dsv4_checkpoint_free(struct dsv4_model *m)
{
    for (int i = 0; m->w.layers && i < m->w.n_layers; i++) free(m->w.layers[i].experts);
    free(m->w.layers);
    m->w.layers = NULL;
}
