/*
 * test_config.c - the config parser: the Flash and Pro fixtures against the spec table in
 * docs/dsv4-model.md, the three Flash spellings agreeing, error cases from in-test strings,
 * and dsv4_config_load_dir on temporary directories. argv[1] = tests/fixtures/configs.
 */
#include "core/error.h"
#include "model/config.h"
#include "test_util.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *fixtures = ".";

static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
        *len = fread(buf, 1, (size_t)n, f);
        buf[*len] = '\0';
    }
    fclose(f);
    return buf;
}

static dsv4_status parse_fixture(const char *name, dsv4_config *cfg)
{
    char path[1024];
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s", fixtures, name);
    char *text = read_text(path, &len);
    CHECK_MSG(text != NULL, "cannot read %s", path);
    if (!text) return DSV4_ERR_IO;
    dsv4_status st = dsv4_config_parse(text, len, name, cfg);
    CHECK_MSG(st == DSV4_OK, "%s: %s: %s", name, dsv4_status_name(st), dsv4_last_error());
    free(text);
    return st;
}

static dsv4_status parse_str(const char *json, dsv4_config *cfg)
{
    return dsv4_config_parse(json, strlen(json), "test.json", cfg);
}

/* `text` with the first `from` replaced by `to` (static buffer: one at a time). */
static const char *subst(const char *text, const char *from, const char *to)
{
    static char out[8192];
    const char *at = strstr(text, from);
    if (!at) {
        fprintf(stderr, "subst: \"%s\" not found\n", from);
        abort();
    }
    snprintf(out, sizeof out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return out;
}

/* ---- The spec table -------------------------------------------------------------------- */

typedef struct expected {
    int hidden, layers, heads, q_lora, o_groups, experts, inter, topk;
    float route_scale;
} expected;

static void check_model(const dsv4_config *c, const expected *e, const char *what)
{
    fprintf(stderr, "checking %s (%s)\n", what, c->source);
    CHECK(c->hidden_size == e->hidden);
    CHECK(c->num_layers == e->layers);
    CHECK(c->num_mtp_layers == 1);
    CHECK(c->num_heads == e->heads);
    CHECK(c->num_kv_heads == 1);
    CHECK(c->head_dim == 512);
    CHECK(c->rope_dim == 64);
    CHECK(c->q_lora_rank == e->q_lora);
    CHECK(c->o_groups == e->o_groups);
    CHECK(c->o_lora_rank == 1024);
    CHECK(c->n_routed_experts == e->experts);
    CHECK(c->n_experts_per_tok == 6);
    CHECK(c->n_shared_experts == 1);
    CHECK(c->moe_intermediate_size == e->inter);
    CHECK(c->routed_scaling_factor == e->route_scale);
    CHECK(c->swiglu_limit == 10.0f);
    CHECK(c->num_hash_layers == 3);
    CHECK(c->index_n_heads == 64);
    CHECK(c->index_head_dim == 128);
    CHECK(c->index_topk == e->topk);
    CHECK(c->sliding_window == 128);
    CHECK(c->hc_mult == 4);
    CHECK(c->hc_sinkhorn_iters == 20);
    CHECK(c->hc_eps == 1e-6f);
    CHECK(c->rms_norm_eps == 1e-6f);
    CHECK(c->rope_theta == 10000.0f);
    CHECK(c->compress_rope_theta == 160000.0f);
    CHECK(c->yarn_factor == 16.0f);
    CHECK(c->yarn_original_max_position == 65536);
    CHECK(c->yarn_beta_fast == 32.0f);
    CHECK(c->yarn_beta_slow == 1.0f);
    CHECK(c->vocab_size == 129280);
    CHECK(c->bos_token_id == 0);
    CHECK(c->eos_token_id == 1);
    CHECK(c->max_position_embeddings == 1048576);
    CHECK(c->norm_topk_prob == 1);
    CHECK(c->fp8_block_size == 128);
    CHECK(c->expert_quant == DSV4_EXPERT_QUANT_FP4);
    /* Flash: [0,0] + [4,128]*20 + [4,0]; Pro: [128,128] + [4,128]*29 + [4,0]; last = MTP. */
    int first = e->hidden == 4096 ? 0 : 128, bad = 0;
    for (int i = 0; i < e->layers + 1; i++) {
        int want = i < 2 ? first : i >= e->layers ? 0 : i % 2 == 0 ? 4 : 128;
        if (i == e->layers - 1) want = 4;
        if (c->compress_ratio[i] != want) bad++;
        if (c->hash_layer[i] != (i < 3)) bad++;
    }
    CHECK_MSG(bad == 0, "%s: %d per-layer mismatches", what, bad);
    CHECK(c->compress_ratio[e->layers] == 0); /* MTP: sliding only */
    CHECK(c->hash_layer[e->layers] == 0);     /* MTP: normal routing */
}

/* Every field but `source`. */
static int same_geometry(const dsv4_config *a, const dsv4_config *b)
{
#define SAME(f) (a->f == b->f)
    int same = SAME(vocab_size) && SAME(hidden_size) && SAME(num_layers) && SAME(num_mtp_layers) &&
               SAME(num_heads) && SAME(num_kv_heads) && SAME(head_dim) && SAME(rope_dim) &&
               SAME(q_lora_rank) && SAME(o_groups) && SAME(o_lora_rank) && SAME(n_routed_experts) &&
               SAME(n_experts_per_tok) && SAME(n_shared_experts) && SAME(moe_intermediate_size) &&
               SAME(num_hash_layers) && SAME(index_n_heads) && SAME(index_head_dim) &&
               SAME(index_topk) && SAME(sliding_window) && SAME(hc_mult) &&
               SAME(hc_sinkhorn_iters) && SAME(max_position_embeddings) && SAME(bos_token_id) &&
               SAME(eos_token_id) && SAME(rms_norm_eps) && SAME(hc_eps) && SAME(rope_theta) &&
               SAME(compress_rope_theta) && SAME(routed_scaling_factor) && SAME(swiglu_limit) &&
               SAME(norm_topk_prob) && SAME(yarn_factor) && SAME(yarn_original_max_position) &&
               SAME(yarn_beta_fast) && SAME(yarn_beta_slow) && SAME(fp8_block_size) &&
               SAME(expert_quant);
#undef SAME
    return same && !memcmp(a->compress_ratio, b->compress_ratio, sizeof a->compress_ratio) &&
           !memcmp(a->hash_layer, b->hash_layer, sizeof a->hash_layer);
}

static void test_fixtures(void)
{
    static const expected flash = {4096, 43, 64, 1024, 8, 256, 2048, 512, 1.5f};
    static const expected pro = {7168, 61, 128, 1536, 16, 384, 3072, 1024, 2.5f};
    dsv4_config hub, tf, off, c;
    if (parse_fixture("flash_hub.json", &hub) == DSV4_OK) {
        check_model(&hub, &flash, "flash_hub.json");
        CHECK(!strcmp(hub.source, "flash_hub.json (hub)"));
    }
    if (parse_fixture("flash_transformers.json", &tf) == DSV4_OK) {
        check_model(&tf, &flash, "flash_transformers.json");
        CHECK(!strcmp(tf.source, "flash_transformers.json (transformers)"));
        CHECK(same_geometry(&hub, &tf));
    }
    if (parse_fixture("official_inference.json", &off) == DSV4_OK) {
        check_model(&off, &flash, "official_inference.json");
        CHECK(!strcmp(off.source, "official_inference.json (official)"));
        CHECK(same_geometry(&hub, &off));
    }
    if (parse_fixture("pro_hub.json", &c) == DSV4_OK) check_model(&c, &pro, "pro_hub.json");

    if (parse_fixture("hf5.json", &c) == DSV4_OK) {
        CHECK(!strcmp(c.source, "hf5.json (transformers)"));
        CHECK(c.hidden_size == 256 && c.num_layers == 4 && c.num_mtp_layers == 1);
        CHECK(c.num_heads == 8 && c.head_dim == 64 && c.rope_dim == 16); /* 64 * 0.25 */
        CHECK(c.o_groups == 2 && c.n_routed_experts == 8 && c.n_experts_per_tok == 2);
        CHECK(c.compress_ratio[0] == 0 && c.compress_ratio[1] == 4);
        CHECK(c.compress_ratio[2] == 128 && c.compress_ratio[3] == 4);
        CHECK(c.compress_ratio[4] == 0); /* MTP */
        CHECK(c.hash_layer[0] == 1 && c.hash_layer[1] == 1 && c.hash_layer[2] == 0);
        CHECK(c.hash_layer[3] == 0 && c.hash_layer[4] == 0 && c.num_hash_layers == 2);
        CHECK(c.yarn_factor == 4.0f && c.yarn_original_max_position == 16384);
        CHECK(c.rope_theta == 10000.0f && c.compress_rope_theta == 160000.0f);
        CHECK(c.sliding_window == 16 && c.index_topk == 8 && c.max_position_embeddings == 65536);
        CHECK(c.expert_quant == DSV4_EXPERT_QUANT_NONE && c.fp8_block_size == 0);
    }
}

/* ---- Variants and errors from in-test strings ------------------------------------------ */

/* Hub spelling, 4 layers + 1 MTP; no YaRN, no hash key, no quantisation. */
static const char base[] =
    "{\"vocab_size\":1000,\"hidden_size\":256,\"num_hidden_layers\":4,"
    "\"num_nextn_predict_layers\":1,\"num_attention_heads\":8,\"head_dim\":64,"
    "\"qk_rope_head_dim\":16,\"q_lora_rank\":128,\"o_groups\":2,\"o_lora_rank\":64,"
    "\"n_routed_experts\":8,\"num_experts_per_tok\":2,\"moe_intermediate_size\":128,"
    "\"index_n_heads\":4,\"index_head_dim\":32,\"index_topk\":8,\"sliding_window\":16,"
    "\"routed_scaling_factor\":1.5,\"compress_ratios\":[0,4,128,4,0]}";
static const char ratios[] = "\"compress_ratios\":[0,4,128,4,0]";

#define EXPECT_ERR(json, status, key)                                                              \
    do {                                                                                           \
        dsv4_config c_;                                                                            \
        dsv4_status st_ = parse_str((json), &c_);                                                  \
        CHECK_MSG(st_ == (status), "got %s (%s)", dsv4_status_name(st_), dsv4_last_error());       \
        CHECK_CONTAINS(dsv4_last_error(), (key));                                                  \
        CHECK(c_.hidden_size == 0); /* zeroed on failure */                                        \
    } while (0)

static void test_variants(void)
{
    dsv4_config c;
    CHECK(parse_str(base, &c) == DSV4_OK);
    CHECK(!strcmp(c.source, "test.json (hub)"));
    CHECK(c.yarn_factor == 1.0f && c.num_hash_layers == 3 && c.hash_layer[2] == 1);
    CHECK(c.hash_layer[3] == 0 && c.num_kv_heads == 1 && c.hc_mult == 4);
    CHECK(c.expert_quant == DSV4_EXPERT_QUANT_NONE && c.fp8_block_size == 0);
    CHECK(c.bos_token_id == 0 && c.eos_token_id == 1 && c.norm_topk_prob == 1);

    /* Exactly num_layers ratios: the MTP layer is sliding. Extra trailing entries are ignored. */
    CHECK(parse_str(subst(base, ratios, "\"compress_ratios\":[4,4,128,4]"), &c) == DSV4_OK);
    CHECK(c.compress_ratio[0] == 4 && c.compress_ratio[4] == 0);
    CHECK(parse_str(subst(base, ratios, "\"compress_ratios\":[0,4,128,4,0,0,0]"), &c) == DSV4_OK);
    CHECK(c.compress_ratio[5] == 0);
    /* Hash default clamps to the layer count; n_hash_layers is accepted too. */
    char two[sizeof base];
    snprintf(two, sizeof two, "%s",
             subst(base, "\"num_hidden_layers\":4,\"num_nextn_predict_layers\":1",
                   "\"num_hidden_layers\":2,\"num_nextn_predict_layers\":0"));
    CHECK(parse_str(subst(two, ratios, "\"compress_ratios\":[0,4]"), &c) == DSV4_OK);
    CHECK(c.num_hash_layers == 2 && c.num_layers == 2 && c.num_mtp_layers == 0);
    CHECK(parse_str(subst(base, ratios, "\"n_hash_layers\":1,\"compress_ratios\":[0,4,128,4,0]"),
                    &c) == DSV4_OK);
    CHECK(c.num_hash_layers == 1 && c.hash_layer[0] == 1 && c.hash_layer[1] == 0);
    /* eos as a list; null bos; expert dtype; block size; NVFP4 in quantization_config. */
    CHECK(parse_str(subst(base, ratios,
                          "\"eos_token_id\":[7,1],\"bos_token_id\":null,\"expert_dtype\":\"fp8\","
                          "\"quantization_config\":{\"quant_method\":\"fp8\","
                          "\"weight_block_size\":[128,128]},"
                          "\"compress_ratios\":[0,4,128,4,0]"),
                    &c) == DSV4_OK);
    CHECK(c.eos_token_id == 7 && c.bos_token_id == -1);
    CHECK(c.expert_quant == DSV4_EXPERT_QUANT_FP8 && c.fp8_block_size == 128);
    /* YaRN from rope_scaling with rope_type, flat rope_parameters, and the official keys. */
    CHECK(parse_str(subst(base, ratios,
                          "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":8,"
                          "\"original_max_position_embeddings\":4096},"
                          "\"compress_ratios\":[0,4,128,4,0]"),
                    &c) == DSV4_OK);
    CHECK(c.yarn_factor == 8.0f && c.yarn_original_max_position == 4096);
    CHECK(c.yarn_beta_fast == 32.0f && c.yarn_beta_slow == 1.0f);
    CHECK(c.max_position_embeddings == 1048576);
    CHECK(parse_str(subst(base, ratios,
                          "\"rope_parameters\":{\"rope_type\":\"yarn\",\"factor\":2,"
                          "\"original_max_position_embeddings\":100,\"beta_fast\":16},"
                          "\"compress_ratios\":[0,4,128,4,0]"),
                    &c) == DSV4_OK);
    CHECK(c.yarn_factor == 2.0f && c.yarn_beta_fast == 16.0f);
    CHECK(!strcmp(c.source, "test.json (transformers)"));

    /* Errors named by the brief. */
    EXPECT_ERR("{\"hidden_size\": 4096,, }", DSV4_ERR_FORMAT, "test.json");
    EXPECT_ERR("{\"hidden_size\": 4096,, }", DSV4_ERR_FORMAT, "(line 1, column");
    char truncated[sizeof base];
    memcpy(truncated, base, sizeof base / 2);
    truncated[sizeof base / 2] = '\0';
    EXPECT_ERR(truncated, DSV4_ERR_FORMAT, "malformed JSON");
    EXPECT_ERR(subst(base, "\"hidden_size\":256", "\"hidden_size\":\"256\""), DSV4_ERR_CONFIG,
               "hidden_size");
    EXPECT_ERR(subst(base, "\"hidden_size\":256,", ""), DSV4_ERR_CONFIG, "hidden_size");
    EXPECT_ERR(subst(base, ratios, "\"compress_ratios\":[0,3,128,4,0]"), DSV4_ERR_UNSUPPORTED,
               "compress_ratios[1]");
    const char *lt = "\"layer_types\":[\"sliding_attention\",\"compressed_sparse_attention\","
                     "\"heavily_compressed_attention\"]";
    EXPECT_ERR(subst(base, ratios, lt), DSV4_ERR_CONFIG, "layer_types");
    EXPECT_ERR(subst(base, ratios,
                     "\"layer_types\":[\"sliding_attention\",\"full_attention\","
                     "\"sliding_attention\",\"sliding_attention\"]"),
               DSV4_ERR_CONFIG, "layer_types[1]");
    EXPECT_ERR(subst(base, "\"o_groups\":2", "\"o_groups\":3"), DSV4_ERR_CONFIG, "o_groups");
    EXPECT_ERR(subst(base, "\"qk_rope_head_dim\":16", "\"qk_rope_head_dim\":15"), DSV4_ERR_CONFIG,
               "qk_rope_head_dim");
    EXPECT_ERR(subst(base, "\"vocab_size\":1000", "\"vocab_size\":-1000"), DSV4_ERR_CONFIG,
               "vocab_size");
    EXPECT_ERR(subst(base, ratios, "\"x\":0"), DSV4_ERR_CONFIG, "layer_types");
    EXPECT_ERR(subst(base, ratios, "\"x\":0"), DSV4_ERR_CONFIG, "compress_ratios");

    /* More ways to be wrong. */
    EXPECT_ERR("", DSV4_ERR_FORMAT, "byte 0");
    EXPECT_ERR("[1,2]", DSV4_ERR_CONFIG, "object");
    EXPECT_ERR("{} x", DSV4_ERR_FORMAT, "after the JSON value");
    EXPECT_ERR(subst(base, "\"hidden_size\":256", "\"hidden_size\":256.5"), DSV4_ERR_CONFIG,
               "hidden_size");
    EXPECT_ERR(subst(base, "\"hidden_size\":256", "\"hidden_size\":1e999"), DSV4_ERR_CONFIG,
               "hidden_size");
    EXPECT_ERR(subst(base, "\"head_dim\":64", "\"head_dim\":63"), DSV4_ERR_CONFIG, "head_dim");
    /* Found by the fuzzer: a positive double that underflows to float 0. */
    EXPECT_ERR(subst(base, ratios, "\"rms_norm_eps\":1e-60,\"compress_ratios\":[0,4,128,4,0]"),
               DSV4_ERR_CONFIG, "rms_norm_eps");
    EXPECT_ERR(subst(base, "\"qk_rope_head_dim\":16", "\"qk_rope_head_dim\":128"), DSV4_ERR_CONFIG,
               "qk_rope_head_dim");
    EXPECT_ERR(subst(base, "\"head_dim\":64", "\"head_dim\":64,\"num_key_value_heads\":8"),
               DSV4_ERR_CONFIG, "num_key_value_heads");
    EXPECT_ERR(subst(base, "\"num_experts_per_tok\":2", "\"num_experts_per_tok\":9"),
               DSV4_ERR_CONFIG, "num_experts_per_tok");
    EXPECT_ERR(subst(base, "\"sliding_window\":16", "\"sliding_window\":0"), DSV4_ERR_CONFIG,
               "sliding_window");
    EXPECT_ERR(subst(base, "\"index_topk\":8,", ""), DSV4_ERR_CONFIG, "index_topk");
    EXPECT_ERR(subst(base, ratios, "\"compress_ratios\":[0,4,128]"), DSV4_ERR_CONFIG,
               "compress_ratios");
    EXPECT_ERR(subst(base, ratios, "\"compress_ratios\":\"0,4\""), DSV4_ERR_CONFIG,
               "compress_ratios");
    EXPECT_ERR(subst(base, ratios, "\"num_hash_layers\":5,\"compress_ratios\":[0,4,128,4,0]"),
               DSV4_ERR_CONFIG, "num_hash_layers");
    EXPECT_ERR(subst(base, ratios,
                     "\"mlp_layer_types\":[\"hash_moe\",\"dense\",\"moe\",\"moe\"],"
                     "\"compress_ratios\":[0,4,128,4,0]"),
               DSV4_ERR_CONFIG, "mlp_layer_types[1]");
    EXPECT_ERR(subst(base, ratios,
                     "\"layer_types\":[\"sliding_attention\",\"compressed_sparse_attention\","
                     "\"sliding_attention\",\"sliding_attention\"],"
                     "\"compress_rates\":{\"compressed_sparse_attention\":8}"),
               DSV4_ERR_UNSUPPORTED, "compress_rates.compressed_sparse_attention");
    EXPECT_ERR(subst(base, ratios,
                     "\"quantization_config\":{\"weight_block_size\":[64,64]},"
                     "\"compress_ratios\":[0,4,128,4,0]"),
               DSV4_ERR_UNSUPPORTED, "weight_block_size");
    EXPECT_ERR(subst(base, ratios,
                     "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":8},"
                     "\"compress_ratios\":[0,4,128,4,0]"),
               DSV4_ERR_CONFIG, "rope_scaling.original_max_position_embeddings");
    EXPECT_ERR(subst(base, ratios,
                     "\"rope_scaling\":{\"type\":\"linear\",\"factor\":8},"
                     "\"compress_ratios\":[0,4,128,4,0]"),
               DSV4_ERR_UNSUPPORTED, "rope_scaling.type");
    EXPECT_ERR(subst(base, ratios,
                     "\"rope_parameters\":{\"main\":{\"rope_type\":\"default\"},\"compress\":"
                     "{\"rope_type\":\"yarn\",\"factor\":16,\"original_max_position_embeddings\":"
                     "65536,\"attention_factor\":1.277}},\"compress_ratios\":[0,4,128,4,0]"),
               DSV4_ERR_UNSUPPORTED, "rope_parameters.compress.attention_factor");
    EXPECT_ERR(
        subst(base, ratios, "\"partial_rotary_factor\":0.5,\"compress_ratios\":[0,4,128,4,0]"),
        DSV4_ERR_CONFIG, "partial_rotary_factor");
    EXPECT_ERR(subst(base, ratios, "\"expert_dtype\":\"int4\",\"compress_ratios\":[0,4,128,4,0]"),
               DSV4_ERR_UNSUPPORTED, "expert_dtype");
    EXPECT_ERR(
        subst(base, ratios, "\"model_type\":\"deepseek_v3\",\"compress_ratios\":[0,4,128,4,0]"),
        DSV4_ERR_UNSUPPORTED, "model_type");
    EXPECT_ERR(subst(base, "\"num_hidden_layers\":4", "\"num_hidden_layers\":256"), DSV4_ERR_CONFIG,
               "num_nextn_predict_layers");
    EXPECT_ERR("{\"vocab_size\":10,\"dim\":\"4096\",\"n_layers\":2}", DSV4_ERR_CONFIG, "dim");
    EXPECT_ERR("{\"dim\":4096}", DSV4_ERR_CONFIG, "vocab_size");

    CHECK(dsv4_config_parse(base, sizeof base - 1, NULL, NULL) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_config_parse(NULL, 5, "x", &c) == DSV4_ERR_INVALID_ARGUMENT);
    /* The length bounds the text: the same bytes with a shorter length are truncated JSON. */
    CHECK(dsv4_config_parse(base, sizeof base - 2, "x", &c) == DSV4_ERR_FORMAT);
}

/* ---- dsv4_config_load_dir -------------------------------------------------------------- */

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot write %s", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

static void test_load_dir(void)
{
    char dir[] = "/tmp/dsv4_test_config_XXXXXX", sub[1024];
    dsv4_config c;
    CHECK(mkdtemp(dir) != NULL);
    snprintf(sub, sizeof sub, "%s/inference", dir);

    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_ERR_IO);
    CHECK_CONTAINS(dsv4_last_error(), "config.json");
    CHECK_CONTAINS(dsv4_last_error(), "inference/config.json");

    write_file(dir, "config.json", base);
    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_OK);
    CHECK(!strcmp(c.source, "config.json (hub)") && c.hidden_size == 256);
    CHECK(c.expert_quant == DSV4_EXPERT_QUANT_NONE);

    write_file(dir, "hf_quant_config.json",
               "{\"producer\":{\"name\":\"modelopt\"},\"quantization\":{\"quant_algo\":\"NVFP4\","
               "\"group_size\":16,\"exclude_modules\":[\"head\"]}}");
    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_OK);
    CHECK(c.expert_quant == DSV4_EXPERT_QUANT_NVFP4);
    write_file(dir, "hf_quant_config.json", "{\"quant_algo\":\"NVFP4\"}");
    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_OK);
    CHECK(c.expert_quant == DSV4_EXPERT_QUANT_NVFP4);
    write_file(dir, "hf_quant_config.json", "{\"quantization\":{\"quant_algo\":\"NVFP4\"");
    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_ERR_FORMAT);
    CHECK_CONTAINS(dsv4_last_error(), "hf_quant_config.json");
    write_file(dir, "hf_quant_config.json", "{\"quantization\":{\"quant_algo\":\"W4A16\"}}");
    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_ERR_UNSUPPORTED);
    CHECK_CONTAINS(dsv4_last_error(), "quant_algo");
    write_file(dir, "hf_quant_config.json", "{\"producer\":{}}");
    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_ERR_CONFIG);
    CHECK_CONTAINS(dsv4_last_error(), "quant_algo");
    remove_file(dir, "hf_quant_config.json");

    /* Only inference/config.json (official spelling here). */
    remove_file(dir, "config.json");
    CHECK(mkdir(sub, 0700) == 0);
    char path[1024];
    size_t len = 0;
    snprintf(path, sizeof path, "%s/official_inference.json", fixtures);
    char *text = read_text(path, &len);
    CHECK(text != NULL);
    if (text) write_file(sub, "config.json", text);
    free(text);
    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_OK);
    CHECK(!strcmp(c.source, "inference/config.json (official)") && c.hidden_size == 4096);

    /* A broken config.json is reported, not skipped in favour of inference/. */
    write_file(dir, "config.json", "{\"vocab_size\":");
    CHECK(dsv4_config_load_dir(dir, &c) == DSV4_ERR_FORMAT);
    CHECK_CONTAINS(dsv4_last_error(), "config.json");

    remove_file(dir, "config.json");
    remove_file(sub, "config.json");
    CHECK(rmdir(sub) == 0);
    CHECK(rmdir(dir) == 0);
}

int main(int argc, char **argv)
{
    if (argc > 1) fixtures = argv[1];
    test_fixtures();
    test_variants();
    test_load_dir();
    return test_finish();
}
