/*
 * config.c - reads a DeepSeek-V4 checkpoint config into dsv4_config and validates it.
 *
 * Three spellings (see config.h): the hub config.json, what transformers 5.x writes, and the
 * official inference/config.json (recognised by "dim" / "n_layers"). Scalar keys go through one
 * table and one typed getter, so every failure names the file, the key and what was expected.
 * The per-layer schedule is never invented: it must come from layer_types or compress_ratios.
 * Ownership: parse copies the input, and the copy and the cJSON tree are freed on every path.
 */
#include "model/config.h"

#include "core/error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { MAX_CONFIG_BYTES = 64 << 20, KEY_BUF = 160, PATH_BUF = 4096 };

typedef enum spelling { SPELL_HUB, SPELL_TRANSFORMERS, SPELL_OFFICIAL } spelling;

typedef struct parse_ctx {
    const cJSON *root;
    const char *label;
    spelling spell;
} parse_ctx;

/* ---- JSON access ------------------------------------------------------------------------- */

/* A member of `obj`; an explicit null counts as absent. */
static const cJSON *member(const cJSON *obj, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(item) ? NULL : item;
}

static const char *json_type_name(const cJSON *item)
{
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsArray(item)) return "an array";
    if (cJSON_IsObject(item)) return "an object";
    return "null";
}

/* "prefix.key", or "key" without a prefix, for messages. */
static const char *key_path(char buf[KEY_BUF], const char *prefix, const char *key)
{
    if (prefix && prefix[0]) {
        snprintf(buf, KEY_BUF, "%s.%s", prefix, key);
    } else {
        snprintf(buf, KEY_BUF, "%s", key);
    }
    return buf;
}

static dsv4_status type_error(const parse_ctx *p, const char *key, const char *expected,
                              const cJSON *item)
{
    return dsv4_fail(DSV4_ERR_CONFIG, "%s: key \"%s\": expected %s, got %s", p->label, key,
                     expected, json_type_name(item));
}

static dsv4_status missing_error(const parse_ctx *p, const char *key)
{
    return dsv4_fail(DSV4_ERR_CONFIG, "%s: missing required key \"%s\"", p->label, key);
}

/* An integer in [lo, hi] from a present item; `key` is the name shown in messages. */
static dsv4_status as_int(const parse_ctx *p, const char *key, const cJSON *item, int64_t lo,
                          int64_t hi, int64_t *out)
{
    if (!cJSON_IsNumber(item)) return type_error(p, key, "an integer", item);
    double v = item->valuedouble;
    if (!isfinite(v) || v != floor(v)) {
        return dsv4_fail(DSV4_ERR_CONFIG, "%s: key \"%s\": expected an integer, got %g", p->label,
                         key, v);
    }
    if (v < (double)lo || v > (double)hi) {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: key \"%s\": expected an integer in [%lld, %lld], got %.0f", p->label,
                         key, (long long)lo, (long long)hi, v);
    }
    *out = (int64_t)v;
    return DSV4_OK;
}

/* A finite number in (lo, hi] when lo_open, else [lo, hi], checked as the float it becomes. */
static dsv4_status as_number(const parse_ctx *p, const char *key, const cJSON *item, double lo,
                             int lo_open, double hi, double *out)
{
    if (!cJSON_IsNumber(item)) return type_error(p, key, "a number", item);
    double raw = item->valuedouble, v = raw;
    if (isfinite(v) && fabs(v) <= 1e30) v = (float)v; /* as stored: 1e-60 becomes 0 */
    if (!isfinite(v) || (lo_open ? v <= lo : v < lo) || v > hi) {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: key \"%s\": expected a number %s %g and <= %g, got %g", p->label, key,
                         lo_open ? ">" : ">=", lo, hi, raw);
    }
    *out = v;
    return DSV4_OK;
}

/* obj[key] into *item (NULL when absent: an error if `required`); `name` gets "prefix.key". */
static dsv4_status find_key(const parse_ctx *p, const cJSON *obj, const char *prefix,
                            const char *key, int required, char name[KEY_BUF], const cJSON **item)
{
    *item = member(obj, key);
    key_path(name, prefix, key);
    return !*item && required ? missing_error(p, name) : DSV4_OK;
}

/* obj[key] as an integer in [lo, hi]; absent: `def` (or an error when `required`). */
static dsv4_status get_int(const parse_ctx *p, const cJSON *obj, const char *prefix,
                           const char *key, int required, int64_t def, int64_t lo, int64_t hi,
                           int64_t *out)
{
    char name[KEY_BUF];
    const cJSON *item;
    DSV4_TRY(find_key(p, obj, prefix, key, required, name, &item));
    *out = def;
    return item ? as_int(p, name, item, lo, hi, out) : DSV4_OK;
}

static dsv4_status get_number(const parse_ctx *p, const cJSON *obj, const char *prefix,
                              const char *key, int required, double def, double lo, int lo_open,
                              double hi, double *out)
{
    char name[KEY_BUF];
    const cJSON *item;
    DSV4_TRY(find_key(p, obj, prefix, key, required, name, &item));
    *out = def;
    return item ? as_number(p, name, item, lo, lo_open, hi, out) : DSV4_OK;
}

/* obj[key] as a string, or NULL when absent. */
static dsv4_status get_string(const parse_ctx *p, const cJSON *obj, const char *prefix,
                              const char *key, const char **out)
{
    char name[KEY_BUF];
    const cJSON *item;
    DSV4_TRY(find_key(p, obj, prefix, key, 0, name, &item));
    *out = item && cJSON_IsString(item) ? item->valuestring : NULL;
    return item && !*out ? type_error(p, name, "a string", item) : DSV4_OK;
}

/* obj[key] as an object, or NULL when absent. */
static dsv4_status get_object(const parse_ctx *p, const cJSON *obj, const char *prefix,
                              const char *key, const cJSON **out)
{
    char name[KEY_BUF];
    DSV4_TRY(find_key(p, obj, prefix, key, 0, name, out));
    if (!*out || cJSON_IsObject(*out)) return DSV4_OK;
    dsv4_status st = type_error(p, name, "an object", *out);
    *out = NULL;
    return st;
}

/* The key name this spelling uses, for messages about derived checks. */
static const char *spelled(const parse_ctx *p, const char *hub, const char *official)
{
    return p->spell == SPELL_OFFICIAL && official ? official : hub;
}

/* ---- Scalar keys --------------------------------------------------------------------------- */

typedef enum field_kind { FIELD_INT, FIELD_FLOAT, FIELD_BOOL } field_kind;

typedef struct field_spec {
    const char *name;     /* hub / transformers key */
    const char *alias;    /* another accepted hub / transformers key, or NULL */
    const char *official; /* inference/config.json key, or NULL when it has none */
    size_t offset;        /* into dsv4_config: an int (FIELD_INT, FIELD_BOOL) or a float */
    field_kind kind;
    int required;
    double def, lo, hi; /* lo/hi apply to present values only */
    int lo_open;        /* FIELD_FLOAT: the value must be > lo */
} field_spec;

#define FI(n, a, o, f, req, def, lo, hi)                                                           \
    {                                                                                              \
        n, a, o, offsetof(dsv4_config, f), FIELD_INT, req, def, lo, hi, 0                          \
    }
#define FF(n, a, o, f, req, def, lo, lo_open, hi)                                                  \
    {                                                                                              \
        n, a, o, offsetof(dsv4_config, f), FIELD_FLOAT, req, def, lo, hi, lo_open                  \
    }

/* Defaults only where every published V4 config agrees (and transformers' defaults match). */
static const field_spec fields[] = {
    FI("vocab_size", NULL, "vocab_size", vocab_size, 1, 0, 1, 4 << 20),
    FI("hidden_size", NULL, "dim", hidden_size, 1, 0, 1, 65536),
    FI("num_hidden_layers", NULL, "n_layers", num_layers, 1, 0, 1, DSV4_MAX_LAYERS),
    FI("num_nextn_predict_layers", NULL, "n_mtp_layers", num_mtp_layers, 0, 1, 0, DSV4_MAX_LAYERS),
    FI("num_attention_heads", NULL, "n_heads", num_heads, 1, 0, 1, 1024),
    FI("num_key_value_heads", NULL, NULL, num_kv_heads, 0, 1, 1, 1),
    FI("head_dim", NULL, "head_dim", head_dim, 1, 0, 2, 8192),
    FI("q_lora_rank", NULL, "q_lora_rank", q_lora_rank, 1, 0, 1, 65536),
    FI("o_groups", NULL, "o_groups", o_groups, 1, 0, 1, 1024),
    FI("o_lora_rank", NULL, "o_lora_rank", o_lora_rank, 1, 0, 1, 65536),
    FI("n_routed_experts", "num_local_experts", "n_routed_experts", n_routed_experts, 1, 0, 1,
       4096),
    FI("num_experts_per_tok", NULL, "n_activated_experts", n_experts_per_tok, 1, 0, 1, 4096),
    FI("n_shared_experts", NULL, "n_shared_experts", n_shared_experts, 0, 1, 0, 64),
    FI("moe_intermediate_size", NULL, "moe_inter_dim", moe_intermediate_size, 1, 0, 1, 262144),
    /* Needed only when a layer is CSA; checked against the schedule later. */
    FI("index_n_heads", NULL, "index_n_heads", index_n_heads, 0, 0, 1, 1024),
    FI("index_head_dim", NULL, "index_head_dim", index_head_dim, 0, 0, 1, 8192),
    FI("index_topk", NULL, "index_topk", index_topk, 0, 0, 1, 1 << 24),
    FI("sliding_window", "window_size", "window_size", sliding_window, 1, 0, 1, 1 << 24),
    FI("hc_mult", NULL, "hc_mult", hc_mult, 0, 4, 1, 64),
    FI("hc_sinkhorn_iters", NULL, "hc_sinkhorn_iters", hc_sinkhorn_iters, 0, 20, 1, 10000),
    FF("rms_norm_eps", NULL, "norm_eps", rms_norm_eps, 0, 1e-6, 0, 1, 1),
    FF("hc_eps", NULL, "hc_eps", hc_eps, 0, 1e-6, 0, 1, 1),
    FF("rope_theta", NULL, "rope_theta", rope_theta, 0, 10000, 0, 1, 1e12),
    FF("compress_rope_theta", NULL, "compress_rope_theta", compress_rope_theta, 0, 160000, 0, 1,
       1e12),
    FF("routed_scaling_factor", NULL, "route_scale", routed_scaling_factor, 1, 0, 0, 1, 1e6),
    FF("swiglu_limit", NULL, "swiglu_limit", swiglu_limit, 0, 10, 0, 0, 1e30),
    {"norm_topk_prob", NULL, NULL, offsetof(dsv4_config, norm_topk_prob), FIELD_BOOL, 0, 1, 0, 1,
     0},
};

static dsv4_status read_field(const parse_ctx *p, const field_spec *f, dsv4_config *c)
{
    const char *names[3];
    int n = 0;
    if (p->spell == SPELL_OFFICIAL && f->official) names[n++] = f->official;
    names[n++] = f->name;
    if (f->alias) names[n++] = f->alias;
    const cJSON *item = NULL;
    const char *key = names[0];
    for (int i = 0; i < n && !item; i++) {
        item = member(p->root, names[i]);
        if (item) key = names[i];
    }
    char *dst = (char *)c + f->offset;
    if (!item) {
        if (f->required) return missing_error(p, key);
        if (f->kind == FIELD_FLOAT) {
            *(float *)(void *)dst = (float)f->def;
        } else {
            *(int *)(void *)dst = (int)f->def;
        }
        return DSV4_OK;
    }
    if (f->kind == FIELD_BOOL) {
        if (cJSON_IsBool(item)) {
            *(int *)(void *)dst = cJSON_IsTrue(item) ? 1 : 0;
            return DSV4_OK;
        }
        int64_t v;
        if (!cJSON_IsNumber(item)) return type_error(p, key, "a boolean", item);
        DSV4_TRY(as_int(p, key, item, 0, 1, &v));
        *(int *)(void *)dst = (int)v;
    } else if (f->kind == FIELD_INT) {
        int64_t v;
        DSV4_TRY(as_int(p, key, item, (int64_t)f->lo, (int64_t)f->hi, &v));
        *(int *)(void *)dst = (int)v;
    } else {
        double v;
        DSV4_TRY(as_number(p, key, item, f->lo, f->lo_open, f->hi, &v));
        *(float *)(void *)dst = (float)v;
    }
    return DSV4_OK;
}

/* bos/eos: an id, null (none: -1), or for eos a list whose first id is the one kept. */
static dsv4_status read_token_id(const parse_ctx *p, const char *key, int def, dsv4_config *c,
                                 int *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(p->root, key);
    int64_t v;
    *out = def;
    if (!item) return DSV4_OK;
    if (cJSON_IsNull(item)) {
        *out = -1;
        return DSV4_OK;
    }
    if (cJSON_IsArray(item)) {
        char name[KEY_BUF];
        int i = 0;
        if (!item->child) return type_error(p, key, "a token id or a non-empty list of ids", item);
        for (const cJSON *e = item->child; e; e = e->next, i++) {
            snprintf(name, sizeof name, "%s[%d]", key, i);
            DSV4_TRY(as_int(p, name, e, 0, c->vocab_size - 1, &v));
            if (i == 0) *out = (int)v;
        }
        return DSV4_OK;
    }
    DSV4_TRY(as_int(p, key, item, 0, c->vocab_size - 1, &v));
    *out = (int)v;
    return DSV4_OK;
}

/* ---- RoPE and YaRN ------------------------------------------------------------------------- */

/* YaRN factor, original length and betas from `obj` (the official spelling names the first two
 * rope_factor / original_seq_len). A factor of 1 leaves YaRN off. */
static dsv4_status read_yarn(const parse_ctx *p, const cJSON *obj, const char *prefix,
                             const char *factor_key, const char *orig_key, dsv4_config *c)
{
    char name[KEY_BUF];
    double factor, fast, slow;
    int64_t orig;
    DSV4_TRY(get_number(p, obj, prefix, factor_key, 1, 0, 1, 0, 1e6, &factor));
    if (factor == 1) return DSV4_OK;
    DSV4_TRY(get_int(p, obj, prefix, orig_key, 1, 0, 1, INT64_C(1) << 40, &orig));
    DSV4_TRY(get_number(p, obj, prefix, "beta_fast", 0, 32, 0, 1, 1e6, &fast));
    DSV4_TRY(get_number(p, obj, prefix, "beta_slow", 0, 1, 0, 1, 1e6, &slow));
    if (slow > fast) {
        return dsv4_fail(DSV4_ERR_CONFIG, "%s: key \"%s\": %g exceeds beta_fast %g", p->label,
                         key_path(name, prefix, "beta_slow"), slow, fast);
    }
    c->yarn_factor = (float)factor;
    c->yarn_original_max_position = orig;
    c->yarn_beta_fast = (float)fast;
    c->yarn_beta_slow = (float)slow;
    return DSV4_OK;
}

/* A RoPE block (rope_scaling, rope_parameters.compress or a flat rope_parameters): "default"
 * leaves YaRN off, "yarn" fills the YaRN fields. V4 applies no attention mscale. */
static dsv4_status read_rope_block(const parse_ctx *p, const cJSON *obj, const char *prefix,
                                   dsv4_config *c)
{
    char name[KEY_BUF];
    const char *type, *tkey = "rope_type";
    double att;
    DSV4_TRY(get_string(p, obj, prefix, "rope_type", &type));
    if (!type) {
        tkey = "type";
        DSV4_TRY(get_string(p, obj, prefix, "type", &type));
    }
    if (!type || !strcmp(type, "default")) return DSV4_OK;
    if (strcmp(type, "yarn") != 0) {
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "%s: key \"%s\": RoPE type \"%.64s\" is not supported (default or yarn)",
                         p->label, key_path(name, prefix, tkey), type);
    }
    DSV4_TRY(get_number(p, obj, prefix, "attention_factor", 0, 1, 0, 1, 1e6, &att));
    if (att != 1.0) {
        return dsv4_fail(
            DSV4_ERR_UNSUPPORTED,
            "%s: key \"%s\": V4 applies no YaRN attention scaling (expected 1), got %g", p->label,
            key_path(name, prefix, "attention_factor"), att);
    }
    return read_yarn(p, obj, prefix, "factor", "original_max_position_embeddings", c);
}

/* rope_parameters (transformers 5): either {main, compress} or one flat block that describes
 * the compressed layers' scaling (as transformers folds it). */
static dsv4_status read_rope_parameters(const parse_ctx *p, const cJSON *rp, double *main_prf,
                                        dsv4_config *c)
{
    const cJSON *main_block, *comp;
    DSV4_TRY(get_object(p, rp, "rope_parameters", "main", &main_block));
    DSV4_TRY(get_object(p, rp, "rope_parameters", "compress", &comp));
    if (!main_block || !comp) return read_rope_block(p, rp, "rope_parameters", c);

    const char *type;
    double v;
    DSV4_TRY(get_string(p, main_block, "rope_parameters.main", "rope_type", &type));
    if (type && strcmp(type, "default") != 0) {
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "%s: key \"rope_parameters.main.rope_type\": \"%.64s\" is not supported "
                         "(V4's sliding layers use default RoPE)",
                         p->label, type);
    }
    DSV4_TRY(get_number(p, main_block, "rope_parameters.main", "rope_theta", 0, c->rope_theta, 0, 1,
                        1e12, &v));
    c->rope_theta = (float)v;
    DSV4_TRY(get_number(p, main_block, "rope_parameters.main", "partial_rotary_factor", 0, -1, 0, 1,
                        1, main_prf));
    DSV4_TRY(get_number(p, comp, "rope_parameters.compress", "rope_theta", 0,
                        c->compress_rope_theta, 0, 1, 1e12, &v));
    c->compress_rope_theta = (float)v;
    return read_rope_block(p, comp, "rope_parameters.compress", c);
}

/* rope_dim from qk_rope_head_dim / rope_head_dim, or head_dim * partial_rotary_factor. When
 * several are given they must agree. */
static dsv4_status read_rope_dim(const parse_ctx *p, double main_prf, dsv4_config *c)
{
    const char *dim_key = spelled(p, "qk_rope_head_dim", "rope_head_dim");
    int64_t dim = -1;
    double top_prf;
    const cJSON *item = member(p->root, dim_key);
    if (!item && p->spell == SPELL_OFFICIAL) item = member(p->root, dim_key = "qk_rope_head_dim");
    if (item) DSV4_TRY(as_int(p, dim_key, item, 2, 8192, &dim));
    DSV4_TRY(get_number(p, p->root, NULL, "partial_rotary_factor", 0, -1, 0, 1, 1, &top_prf));
    const double prfs[2] = {main_prf, top_prf};
    const char *prf_keys[2] = {"rope_parameters.main.partial_rotary_factor",
                               "partial_rotary_factor"};
    for (int i = 0; i < 2; i++) {
        if (prfs[i] < 0) continue;
        double r = c->head_dim * prfs[i];
        if (fabs(r - nearbyint(r)) > 1e-6 * c->head_dim) {
            return dsv4_fail(DSV4_ERR_CONFIG,
                             "%s: key \"%s\": head_dim %d * %g = %g rotary dims is not an integer",
                             p->label, prf_keys[i], c->head_dim, prfs[i], r);
        }
        if (dim >= 0 && (int64_t)nearbyint(r) != dim) {
            return dsv4_fail(
                DSV4_ERR_CONFIG, "%s: key \"%s\": head_dim %d * %g = %g disagrees with %s = %lld",
                p->label, prf_keys[i], c->head_dim, prfs[i], r, dim_key, (long long)dim);
        }
        dim = (int64_t)nearbyint(r);
    }
    if (dim < 0) {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: missing required key \"%s\" (or partial_rotary_factor)", p->label,
                         dim_key);
    }
    if (dim < 2 || dim % 2 != 0 || dim > c->head_dim) {
        return dsv4_fail(
            DSV4_ERR_CONFIG,
            "%s: key \"%s\": rotary dims must be even, >= 2 and <= head_dim %d, got %lld", p->label,
            dim_key, c->head_dim, (long long)dim);
    }
    c->rope_dim = (int)dim;
    return DSV4_OK;
}

static dsv4_status read_rope(const parse_ctx *p, dsv4_config *c)
{
    const cJSON *rp, *rs;
    double main_prf = -1;
    c->yarn_factor = 1.0f;
    DSV4_TRY(get_object(p, p->root, NULL, "rope_parameters", &rp));
    DSV4_TRY(get_object(p, p->root, NULL, "rope_scaling", &rs));
    if (rp) {
        DSV4_TRY(read_rope_parameters(p, rp, &main_prf, c));
    } else if (rs) {
        DSV4_TRY(read_rope_block(p, rs, "rope_scaling", c));
    } else if (p->spell == SPELL_OFFICIAL && member(p->root, "rope_factor")) {
        DSV4_TRY(read_yarn(p, p->root, NULL, "rope_factor", "original_seq_len", c));
    }
    DSV4_TRY(read_rope_dim(p, main_prf, c));

    /* The official spelling has no max_position_embeddings: YaRN's target length is it. */
    int64_t def = INT64_C(1048576); /* transformers' default, every published config's value */
    if (p->spell == SPELL_OFFICIAL && c->yarn_factor > 1) {
        double n = c->yarn_original_max_position * (double)c->yarn_factor;
        def = n < (double)(INT64_C(1) << 40) ? (int64_t)nearbyint(n) : INT64_C(1) << 40;
    }
    return get_int(p, p->root, NULL, "max_position_embeddings", 0, def, 1, INT64_C(1) << 40,
                   &c->max_position_embeddings);
}

/* ---- Per-layer schedule -------------------------------------------------------------------- */

static dsv4_status check_ratio(const parse_ctx *p, const char *key, int layer, int64_t ratio)
{
    if (ratio == 0 || ratio == 4 || ratio == 128) return DSV4_OK;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                     "%s: key \"%s\": layer %d has compress ratio %lld (supported: 0, 4 or 128)",
                     p->label, key, layer, (long long)ratio);
}

/* transformers: compress_rates {type: rate}, overridden by legacy compress_rate_csa/hca. */
static dsv4_status read_rate(const parse_ctx *p, const cJSON *rates, const char *type,
                             const char *legacy, int64_t expected, int64_t *out)
{
    char name[KEY_BUF];
    const cJSON *item = member(p->root, legacy);
    const char *key = legacy;
    if (!item && rates) {
        item = member(rates, type);
        key = key_path(name, "compress_rates", type);
    }
    *out = expected;
    if (!item) return DSV4_OK;
    DSV4_TRY(as_int(p, key, item, 0, 1 << 20, out));
    if (*out != expected) {
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "%s: key \"%s\": rate %lld is not supported (%s needs %lld)", p->label,
                         key, (long long)*out, type, (long long)expected);
    }
    return DSV4_OK;
}

static dsv4_status read_layer_types(const parse_ctx *p, const cJSON *types, dsv4_config *c)
{
    static const char *const names[3] = {"sliding_attention", "compressed_sparse_attention",
                                         "heavily_compressed_attention"};
    const cJSON *rates;
    int64_t rate[3] = {0, 0, 0};
    DSV4_TRY(get_object(p, p->root, NULL, "compress_rates", &rates));
    DSV4_TRY(read_rate(p, rates, names[1], "compress_rate_csa", 4, &rate[1]));
    DSV4_TRY(read_rate(p, rates, names[2], "compress_rate_hca", 128, &rate[2]));
    if (!cJSON_IsArray(types)) return type_error(p, "layer_types", "an array of strings", types);
    int n = cJSON_GetArraySize(types);
    if (n != c->num_layers) {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: key \"layer_types\": has %d entries, expected num_hidden_layers = %d",
                         p->label, n, c->num_layers);
    }
    int i = 0;
    for (const cJSON *e = types->child; e; e = e->next, i++) {
        char name[KEY_BUF];
        snprintf(name, sizeof name, "layer_types[%d]", i);
        if (!cJSON_IsString(e) || !e->valuestring) return type_error(p, name, "a string", e);
        int t = 0;
        while (t < 3 && strcmp(e->valuestring, names[t]) != 0) t++;
        if (t == 3) {
            return dsv4_fail(
                DSV4_ERR_CONFIG,
                "%s: key \"%s\": unknown layer type \"%.64s\" (expected sliding_attention, "
                "compressed_sparse_attention or heavily_compressed_attention)",
                p->label, name, e->valuestring);
        }
        c->compress_ratio[i] = (int)rate[t];
    }
    return DSV4_OK; /* MTP layers stay sliding (ratio 0) */
}

/* One entry per main layer, then one per MTP layer (absent: ratio 0). Entries past the MTP
 * layers (some published configs carry them) are checked and ignored. */
static dsv4_status read_compress_ratios(const parse_ctx *p, const cJSON *ratios, dsv4_config *c)
{
    if (!cJSON_IsArray(ratios))
        return type_error(p, "compress_ratios", "an array of integers", ratios);
    int n = cJSON_GetArraySize(ratios), total = c->num_layers + c->num_mtp_layers, i = 0;
    if (n < c->num_layers) {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: key \"compress_ratios\": has %d entries, expected one per layer (%d) "
                         "plus one per MTP layer (%d)",
                         p->label, n, c->num_layers, c->num_mtp_layers);
    }
    for (const cJSON *e = ratios->child; e; e = e->next, i++) {
        char name[KEY_BUF];
        int64_t r;
        snprintf(name, sizeof name, "compress_ratios[%d]", i);
        DSV4_TRY(as_int(p, name, e, 0, 1 << 20, &r));
        DSV4_TRY(check_ratio(p, name, i, r));
        if (i < total) c->compress_ratio[i] = (int)r;
    }
    return DSV4_OK;
}

static dsv4_status read_hash_layers(const parse_ctx *p, dsv4_config *c)
{
    const cJSON *types = member(p->root, "mlp_layer_types");
    if (types) {
        if (!cJSON_IsArray(types)) {
            return type_error(p, "mlp_layer_types", "an array of strings", types);
        }
        int n = cJSON_GetArraySize(types), i = 0;
        if (n != c->num_layers) {
            return dsv4_fail(
                DSV4_ERR_CONFIG,
                "%s: key \"mlp_layer_types\": has %d entries, expected num_hidden_layers = %d",
                p->label, n, c->num_layers);
        }
        c->num_hash_layers = 0;
        for (const cJSON *e = types->child; e; e = e->next, i++) {
            char name[KEY_BUF];
            snprintf(name, sizeof name, "mlp_layer_types[%d]", i);
            if (!cJSON_IsString(e) || !e->valuestring) return type_error(p, name, "a string", e);
            if (!strcmp(e->valuestring, "hash_moe")) {
                c->hash_layer[i] = 1;
                c->num_hash_layers++;
            } else if (strcmp(e->valuestring, "moe") != 0) {
                return dsv4_fail(
                    DSV4_ERR_CONFIG,
                    "%s: key \"%s\": unknown MLP type \"%.64s\" (expected hash_moe or moe)",
                    p->label, name, e->valuestring);
            }
        }
        return DSV4_OK;
    }
    const char *keys[2] = {spelled(p, "num_hash_layers", "n_hash_layers"),
                           spelled(p, "n_hash_layers", "num_hash_layers")};
    int64_t n = -1;
    for (int k = 0; k < 2 && n < 0; k++) {
        const cJSON *item = member(p->root, keys[k]);
        if (item) DSV4_TRY(as_int(p, keys[k], item, 0, c->num_layers, &n));
    }
    if (n < 0) n = c->num_layers < 3 ? c->num_layers : 3; /* transformers' default */
    c->num_hash_layers = (int)n;
    for (int i = 0; i < n; i++) c->hash_layer[i] = 1;
    return DSV4_OK;
}

static dsv4_status read_schedule(const parse_ctx *p, dsv4_config *c)
{
    const cJSON *types = member(p->root, "layer_types");
    const cJSON *ratios = member(p->root, "compress_ratios");
    if (types) {
        DSV4_TRY(read_layer_types(p, types, c));
    } else if (ratios) {
        DSV4_TRY(read_compress_ratios(p, ratios, c));
    } else {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: no per-layer attention schedule: expected key \"layer_types\" or "
                         "\"compress_ratios\" (it must come from the checkpoint's config)",
                         p->label);
    }
    /* The lightning indexer's sizes matter only when some layer is CSA. */
    for (int i = 0; i < c->num_layers + c->num_mtp_layers; i++) {
        if (c->compress_ratio[i] != 4) continue;
        const char *need[3] = {"index_n_heads", "index_head_dim", "index_topk"};
        const int have[3] = {c->index_n_heads, c->index_head_dim, c->index_topk};
        for (int k = 0; k < 3; k++) {
            if (have[k] <= 0) {
                return dsv4_fail(
                    DSV4_ERR_CONFIG,
                    "%s: missing required key \"%s\" (layer %d is compressed sparse attention)",
                    p->label, need[k], i);
            }
        }
        if (c->index_head_dim < c->rope_dim) {
            return dsv4_fail(DSV4_ERR_CONFIG,
                             "%s: key \"index_head_dim\": %d is smaller than the %d rotary dims",
                             p->label, c->index_head_dim, c->rope_dim);
        }
        break;
    }
    return read_hash_layers(p, c);
}

/* ---- Quantisation -------------------------------------------------------------------------- */

static dsv4_status read_quant(const parse_ctx *p, dsv4_config *c)
{
    const char *s;
    DSV4_TRY(get_string(p, p->root, NULL, "expert_dtype", &s));
    if (s) {
        if (!strcmp(s, "fp4")) {
            c->expert_quant = DSV4_EXPERT_QUANT_FP4;
        } else if (!strcmp(s, "fp8")) {
            c->expert_quant = DSV4_EXPERT_QUANT_FP8;
        } else if (strcmp(s, "bf16") != 0) {
            return dsv4_fail(
                DSV4_ERR_UNSUPPORTED,
                "%s: key \"expert_dtype\": \"%.64s\" is not supported (fp4, fp8 or bf16)", p->label,
                s);
        }
    }
    if (p->spell == SPELL_OFFICIAL) {
        DSV4_TRY(get_string(p, p->root, NULL, "dtype", &s));
        if (s && !strcmp(s, "fp8")) {
            c->fp8_block_size = 128; /* the official code's fixed block */
        } else if (s && strcmp(s, "bf16") != 0) {
            return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                             "%s: key \"dtype\": \"%.64s\" is not supported (fp8 or bf16)",
                             p->label, s);
        }
    }

    const cJSON *q, *wbs;
    DSV4_TRY(get_object(p, p->root, NULL, "quantization_config", &q));
    if (!q) return DSV4_OK;
    DSV4_TRY(get_string(p, q, "quantization_config", "quant_method", &s));
    if (s && !strcmp(s, "fp8")) c->fp8_block_size = 128;
    DSV4_TRY(get_string(p, q, "quantization_config", "quant_algo", &s));
    if (s && !strcmp(s, "NVFP4")) c->expert_quant = DSV4_EXPERT_QUANT_NVFP4;
    wbs = member(q, "weight_block_size");
    if (wbs) {
        if (!cJSON_IsArray(wbs)) {
            return type_error(p, "quantization_config.weight_block_size", "an array", wbs);
        }
        const cJSON *a = wbs->child, *b = a ? a->next : NULL;
        if (!a || !b || b->next || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) ||
            a->valuedouble != 128 || b->valuedouble != 128) {
            return dsv4_fail(
                DSV4_ERR_UNSUPPORTED,
                "%s: key \"quantization_config.weight_block_size\": only [128, 128] is supported",
                p->label);
        }
        c->fp8_block_size = 128;
    }
    return DSV4_OK;
}

/* ---- Whole-config checks ------------------------------------------------------------------- */

static dsv4_status check_string_key(const parse_ctx *p, const char *key, const char *want)
{
    const char *s;
    DSV4_TRY(get_string(p, p->root, NULL, key, &s));
    if (s && strcmp(s, want) != 0) {
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "%s: key \"%s\": \"%.64s\" is not supported (expected \"%s\")", p->label,
                         key, s, want);
    }
    return DSV4_OK;
}

static dsv4_status validate(const parse_ctx *p, dsv4_config *c)
{
    const char *heads = spelled(p, "num_attention_heads", "n_heads");
    if (c->num_layers + c->num_mtp_layers > DSV4_MAX_LAYERS) {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: key \"%s\": %d main + %d MTP layers exceed the maximum of %d",
                         p->label, spelled(p, "num_nextn_predict_layers", "n_mtp_layers"),
                         c->num_layers, c->num_mtp_layers, DSV4_MAX_LAYERS);
    }
    if (c->head_dim % 2 != 0) {
        return dsv4_fail(DSV4_ERR_CONFIG, "%s: key \"head_dim\": expected an even number, got %d",
                         p->label, c->head_dim);
    }
    if (c->num_heads % c->o_groups != 0) {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: key \"o_groups\": %s = %d is not divisible by o_groups = %d",
                         p->label, heads, c->num_heads, c->o_groups);
    }
    if (c->n_experts_per_tok > c->n_routed_experts) {
        return dsv4_fail(DSV4_ERR_CONFIG,
                         "%s: key \"%s\": %d experts per token exceed %d routed experts", p->label,
                         spelled(p, "num_experts_per_tok", "n_activated_experts"),
                         c->n_experts_per_tok, c->n_routed_experts);
    }
    return DSV4_OK;
}

static dsv4_status fill_config(const parse_ctx *p, dsv4_config *c)
{
    DSV4_TRY(check_string_key(p, "model_type", "deepseek_v4"));
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        DSV4_TRY(read_field(p, &fields[i], c));
    }
    DSV4_TRY(read_token_id(p, "bos_token_id", 0, c, &c->bos_token_id));
    DSV4_TRY(read_token_id(p, "eos_token_id", 1, c, &c->eos_token_id));
    DSV4_TRY(check_string_key(p, spelled(p, "scoring_func", "score_func"), "sqrtsoftplus"));
    DSV4_TRY(check_string_key(p, "hidden_act", "silu"));
    DSV4_TRY(read_rope(p, c));
    DSV4_TRY(validate(p, c)); /* layer counts first: the schedule indexes by them */
    DSV4_TRY(read_schedule(p, c));
    return read_quant(p, c);
}

/* ---- Entry points -------------------------------------------------------------------------- */

/* Parses `json[0..len)` into an object tree the caller frees; DSV4_ERR_FORMAT names the byte
 * offset of a syntax error. */
static dsv4_status parse_json(const char *json, size_t len, const char *label, cJSON **out)
{
    *out = NULL;
    if (!json && len) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: NULL JSON text", label);
    /* A terminated copy: cJSON never reads past the end, whatever it was given. */
    char *buf = malloc(len + 1);
    if (!buf)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: %zu bytes for the JSON text", label, len);
    if (len) memcpy(buf, json, len);
    buf[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    size_t at = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
    if (root) {
        while (at < len &&
               (buf[at] == ' ' || buf[at] == '\t' || buf[at] == '\n' || buf[at] == '\r'))
            at++;
    }
    if (!root || at != len) {
        size_t line = 1, col = 1;
        for (size_t i = 0; i < at; i++) {
            col = buf[i] == '\n' ? 1 : col + 1;
            line += buf[i] == '\n';
        }
        cJSON_Delete(root);
        free(buf);
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: %s at byte %zu (line %zu, column %zu)", label,
                         root ? "unexpected data after the JSON value" : "malformed JSON", at, line,
                         col);
    }
    free(buf);
    if (!cJSON_IsObject(root)) {
        dsv4_status st =
            dsv4_fail(DSV4_ERR_CONFIG, "%s: expected a JSON object at the top level, got %s", label,
                      json_type_name(root));
        cJSON_Delete(root);
        return st;
    }
    *out = root;
    return DSV4_OK;
}

/* "inference/config.json" or the base name of `label`, for dsv4_config.source. */
static const char *short_name(const char *label)
{
    static const char tail[] = "inference/config.json";
    size_t n = strlen(label), t = sizeof tail - 1;
    if (n >= t && !strcmp(label + n - t, tail) && (n == t || label[n - t - 1] == '/')) {
        return label + n - t;
    }
    const char *slash = strrchr(label, '/');
    return slash ? slash + 1 : label;
}

dsv4_status dsv4_config_parse(const char *json, size_t len, const char *label, dsv4_config *cfg)
{
    dsv4_clear_error();
    if (!label) label = "config";
    if (!cfg) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: NULL config", label);
    memset(cfg, 0, sizeof *cfg);
    cJSON *root;
    DSV4_TRY(parse_json(json, len, label, &root));
    parse_ctx p = {root, label, SPELL_HUB};
    if (member(root, "dim") || member(root, "n_layers")) {
        p.spell = SPELL_OFFICIAL;
    } else if (member(root, "layer_types") || member(root, "rope_parameters") ||
               member(root, "mlp_layer_types") || member(root, "compress_rates")) {
        p.spell = SPELL_TRANSFORMERS;
    }
    dsv4_config c;
    memset(&c, 0, sizeof c);
    dsv4_status st = fill_config(&p, &c);
    if (st == DSV4_OK) {
        static const char *const kinds[3] = {"hub", "transformers", "official"};
        snprintf(c.source, sizeof c.source, "%.48s (%s)", short_name(label), kinds[p.spell]);
        *cfg = c;
    }
    cJSON_Delete(root);
    return st;
}

/* Reads a whole regular file; *missing = 1 (and OK) when it does not exist. */
static dsv4_status read_file(const char *path, char **out, size_t *len, int *missing)
{
    *out = NULL;
    *len = 0;
    *missing = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            *missing = 1;
            return DSV4_OK;
        }
        return dsv4_fail(DSV4_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return dsv4_fail(DSV4_ERR_IO, "%s: not a readable regular file", path);
    }
    if (st.st_size > MAX_CONFIG_BYTES) {
        close(fd);
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: %lld bytes is too large for a config (max %d)", path,
                         (long long)st.st_size, MAX_CONFIG_BYTES);
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: %zu bytes", path, size);
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            free(buf);
            return dsv4_fail(DSV4_ERR_IO, "%s: read failed after %zu of %zu bytes%s%s", path, got,
                             size, e ? ": " : "", e ? strerror(e) : "");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';
    *out = buf;
    *len = size;
    return DSV4_OK;
}

static dsv4_status join_path(char *buf, const char *dir, const char *name)
{
    int n = snprintf(buf, PATH_BUF, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_BUF) {
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "%s: path too long", dir);
    }
    return DSV4_OK;
}

/* hf_quant_config.json (NVIDIA ModelOpt): quantization.quant_algo, or a top-level quant_algo. */
static dsv4_status read_hf_quant(const parse_ctx *p, dsv4_expert_quant *out)
{
    const cJSON *q;
    const char *algo = NULL, *key = "quantization.quant_algo";
    DSV4_TRY(get_object(p, p->root, NULL, "quantization", &q));
    if (q) DSV4_TRY(get_string(p, q, "quantization", "quant_algo", &algo));
    if (!algo) DSV4_TRY(get_string(p, p->root, NULL, key = "quant_algo", &algo));
    if (!algo) return missing_error(p, "quantization.quant_algo");
    if (strcmp(algo, "NVFP4") != 0) {
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "%s: key \"%s\": \"%.64s\" is not supported (NVFP4)",
                         p->label, key, algo);
    }
    *out = DSV4_EXPERT_QUANT_NVFP4;
    return DSV4_OK;
}

dsv4_status dsv4_config_load_dir(const char *dir, dsv4_config *cfg)
{
    dsv4_clear_error();
    if (!dir || !cfg) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "NULL directory or config");
    char path[PATH_BUF], alt[PATH_BUF];
    char *text;
    size_t len;
    int missing;
    DSV4_TRY(join_path(path, dir, "config.json"));
    DSV4_TRY(join_path(alt, dir, "inference/config.json"));
    DSV4_TRY(read_file(path, &text, &len, &missing));
    if (missing) {
        memcpy(path, alt, sizeof path);
        DSV4_TRY(read_file(path, &text, &len, &missing));
    }
    if (missing) {
        return dsv4_fail(DSV4_ERR_IO, "%s: no model config: neither %s/config.json nor %s exists",
                         dir, dir, alt);
    }
    dsv4_status st = dsv4_config_parse(text, len, path, cfg);
    free(text);
    DSV4_TRY(st);

    DSV4_TRY(join_path(path, dir, "hf_quant_config.json"));
    DSV4_TRY(read_file(path, &text, &len, &missing));
    if (missing) return DSV4_OK;
    cJSON *root;
    st = parse_json(text, len, path, &root);
    free(text);
    if (st == DSV4_OK) {
        parse_ctx p = {root, path, SPELL_HUB};
        st = read_hf_quant(&p, &cfg->expert_quant);
        cJSON_Delete(root);
    }
    if (st != DSV4_OK) memset(cfg, 0, sizeof *cfg);
    return st;
}
