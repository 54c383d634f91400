/*
 * cmd_inspect.c - `dsv4 inspect MODEL_DIR`: what a checkpoint is and what running it takes.
 * Prints the detected layout, the geometry, each layer's attention and MoE type, parameters
 * and bytes per weight format, and the memory plan for a context length and batch.
 */
#include "commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *layout_name(dsv4_layout l)
{
    switch (l) {
    case DSV4_LAYOUT_OFFICIAL:
        return "official (DeepSeek safetensors)";
    case DSV4_LAYOUT_NVFP4:
        return "nvfp4 (NVIDIA re-quantisation)";
    case DSV4_LAYOUT_HF:
        return "transformers (HF save_pretrained)";
    }
    return "?";
}

static const char *attn_name(dsv4_attention_kind k)
{
    return k == DSV4_ATTN_SLIDING ? "sliding" : k == DSV4_ATTN_CSA ? "CSA" : "HCA";
}

/* Human units: 1.23 GB (decimal, as checkpoint sizes are quoted). */
static void fmt_bytes(char *buf, size_t n, double b)
{
    const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000.0 && i < 4) b /= 1000.0, i++;
    snprintf(buf, n, i ? "%.2f %s" : "%.0f %s", b, u[i]);
}

static void fmt_count(char *buf, size_t n, double c)
{
    if (c >= 1e12)
        snprintf(buf, n, "%.2fT", c / 1e12);
    else if (c >= 1e9)
        snprintf(buf, n, "%.1fB", c / 1e9);
    else if (c >= 1e6)
        snprintf(buf, n, "%.1fM", c / 1e6);
    else if (c >= 1e3)
        snprintf(buf, n, "%.1fK", c / 1e3);
    else
        snprintf(buf, n, "%.0f", c);
}

static int usage(int rc)
{
    fprintf(rc ? stderr : stdout,
            "usage: dsv4 inspect MODEL_DIR [--context N] [--batch B] [--json]\n"
            "  --context N  context length for the memory plan (default: min(65536, model max))\n"
            "  --batch B    sequences decoded together (default 1)\n"
            "  --json       one JSON object instead of text\n");
    return rc;
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v <= 0) return -1;
    *out = v;
    return 0;
}

/* A JSON string literal (paths may hold quotes, backslashes or control bytes). */
static void put_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_json(const char *dir, const dsv4_model *m, const dsv4_model_info *mi,
                       const dsv4_memory_plan *p, int64_t context, int batch)
{
    printf("{\"model\": ");
    put_json_string(dir);
    printf(", \"layout\": \"%s\", \"files\": %d,\n",
           mi->layout == DSV4_LAYOUT_OFFICIAL ? "official"
           : mi->layout == DSV4_LAYOUT_NVFP4  ? "nvfp4"
                                              : "transformers",
           mi->num_files);
    printf(" \"vocab_size\": %d, \"hidden_size\": %d, \"num_layers\": %d, \"num_mtp_layers\": %d,"
           " \"num_heads\": %d, \"head_dim\": %d, \"rope_dim\": %d, \"n_routed_experts\": %d,"
           " \"n_experts_per_tok\": %d, \"moe_intermediate_size\": %d,\n",
           mi->vocab_size, mi->hidden_size, mi->num_layers, mi->num_mtp_layers, mi->num_heads,
           mi->head_dim, mi->rope_dim, mi->n_routed_experts, mi->n_experts_per_tok,
           mi->moe_intermediate_size);
    printf(" \"total_params\": %lld, \"mtp_params\": %lld, \"total_bytes\": %llu,\n",
           (long long)mi->total_params, (long long)mi->mtp_params,
           (unsigned long long)mi->total_bytes);
    printf(" \"formats\": {");
    int first = 1;
    for (int f = 0; f < DSV4_FORMAT_COUNT; f++) {
        if (!mi->params_by_format[f]) continue;
        printf("%s\"%s\": {\"params\": %lld, \"bytes\": %llu}", first ? "" : ", ",
               dsv4_weight_format_name((dsv4_weight_format)f), (long long)mi->params_by_format[f],
               (unsigned long long)mi->bytes_by_format[f]);
        first = 0;
    }
    printf("},\n \"layers\": [");
    for (int i = 0; i < mi->num_layers + mi->num_mtp_layers; i++) {
        dsv4_layer_info li;
        dsv4_model_get_layer_info(m, i, &li);
        printf("%s\n  {\"index\": %d, \"mtp\": %s, \"attention\": \"%s\", \"compress_ratio\": %d,"
               " \"moe\": \"%s\", \"attn_format\": \"%s\", \"expert_format\": \"%s\", \"bytes\": "
               "%llu}",
               i ? "," : "", i, li.is_mtp ? "true" : "false", attn_name(li.attention),
               li.compress_ratio, li.hash_routed ? "hash" : "normal",
               dsv4_weight_format_name(li.attn_format), dsv4_weight_format_name(li.expert_format),
               (unsigned long long)li.bytes);
    }
    printf("],\n \"memory\": {\"context\": %lld, \"batch\": %d, \"weight_bytes\": %llu,"
           " \"state_bytes\": %llu, \"workspace_bytes\": %llu, \"total_bytes\": %llu}}\n",
           (long long)context, batch, (unsigned long long)p->weight_bytes,
           (unsigned long long)p->state_bytes, (unsigned long long)p->workspace_bytes,
           (unsigned long long)p->total_bytes);
}

static void print_text(const char *dir, const dsv4_model *m, const dsv4_model_info *mi,
                       const dsv4_memory_plan *p, int64_t context, int batch)
{
    char a[32], b[32], c[32], d[32];
    printf("model:       %s\n", dir);
    printf("layout:      %s, %d safetensors file%s\n", layout_name(mi->layout), mi->num_files,
           mi->num_files == 1 ? "" : "s");
    printf("geometry:    hidden %d, %d layers + %d MTP, vocab %d, max positions %lld\n",
           mi->hidden_size, mi->num_layers, mi->num_mtp_layers, mi->vocab_size,
           (long long)mi->max_position_embeddings);
    printf("attention:   %d heads x %d (rope %d), one KV head, q_lora %d, output %d groups x %d,"
           " window %d\n",
           mi->num_heads, mi->head_dim, mi->rope_dim, mi->q_lora_rank, mi->o_groups,
           mi->o_lora_rank, mi->sliding_window);
    printf("indexer:     %d heads x %d, top-%d\n", mi->index_n_heads, mi->index_head_dim,
           mi->index_topk);
    printf("moe:         %d routed experts (%d per token) + %d shared, intermediate %d, %d hash "
           "layers, routed scale %g, swiglu limit %g\n",
           mi->n_routed_experts, mi->n_experts_per_tok, mi->n_shared_experts,
           mi->moe_intermediate_size, mi->num_hash_layers, mi->routed_scaling_factor,
           mi->swiglu_limit);
    printf("mhc:         %d streams, %d Sinkhorn iterations, eps %g\n", mi->hc_mult,
           mi->hc_sinkhorn_iters, mi->hc_eps);
    printf("rope:        theta %g; compressed layers theta %g", mi->rope_theta,
           mi->compress_rope_theta);
    if (mi->yarn_factor != 1.0f)
        printf(" with YaRN x%g (original %lld, beta %g/%g)", mi->yarn_factor,
               (long long)mi->yarn_original_max_position, mi->yarn_beta_fast, mi->yarn_beta_slow);
    printf("\n");
    fmt_count(a, sizeof a, (double)mi->total_params);
    fmt_count(b, sizeof b, (double)(mi->total_params - mi->mtp_params));
    fmt_count(c, sizeof c, (double)mi->mtp_params);
    fmt_bytes(d, sizeof d, (double)mi->total_bytes);
    printf("parameters:  %s total (%s main + %s MTP), %s as stored\n", a, b, c, d);
    printf("by format:\n");
    for (int f = 0; f < DSV4_FORMAT_COUNT; f++) {
        if (!mi->params_by_format[f]) continue;
        fmt_count(a, sizeof a, (double)mi->params_by_format[f]);
        fmt_bytes(b, sizeof b, (double)mi->bytes_by_format[f]);
        printf("  %-6s %10s params %12s\n", dsv4_weight_format_name((dsv4_weight_format)f), a, b);
    }
    printf("layers:\n  %5s  %-8s %5s  %-6s  %-6s  %-6s  %s\n", "layer", "attn", "ratio", "moe",
           "proj", "expert", "bytes");
    for (int i = 0; i < mi->num_layers + mi->num_mtp_layers; i++) {
        dsv4_layer_info li;
        dsv4_model_get_layer_info(m, i, &li);
        char idx[16];
        if (li.is_mtp)
            snprintf(idx, sizeof idx, "mtp%d", i - mi->num_layers);
        else
            snprintf(idx, sizeof idx, "%d", i);
        fmt_bytes(a, sizeof a, (double)li.bytes);
        printf("  %5s  %-8s %5d  %-6s  %-6s  %-6s  %s\n", idx, attn_name(li.attention),
               li.compress_ratio, li.hash_routed ? "hash" : "normal",
               dsv4_weight_format_name(li.attn_format), dsv4_weight_format_name(li.expert_format),
               a);
    }
    fmt_bytes(a, sizeof a, (double)p->weight_bytes);
    fmt_bytes(b, sizeof b, (double)p->state_bytes);
    fmt_bytes(c, sizeof c, (double)p->workspace_bytes);
    fmt_bytes(d, sizeof d, (double)p->total_bytes);
    printf("memory:      context %lld x batch %d: weights %s + state %s + workspace %s = %s\n",
           (long long)context, batch, a, b, c, d);
}

int cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL;
    int64_t context = 0, batch = 1;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(0);
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--context") && i + 1 < argc) {
            if (parse_i64(argv[++i], &context)) {
                fprintf(stderr, "dsv4 inspect: --context needs a positive integer, got '%s'\n",
                        argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
            if (parse_i64(argv[++i], &batch) || batch > 1 << 20) {
                fprintf(stderr, "dsv4 inspect: --batch needs a positive integer, got '%s'\n",
                        argv[i]);
                return 2;
            }
        } else if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "dsv4 inspect: unexpected argument '%s'\n", argv[i]);
            return usage(2);
        } else
            dir = argv[i];
    }
    if (!dir) return usage(2);
    dsv4_model *m;
    dsv4_status st = dsv4_model_open(dir, &m);
    if (st != DSV4_OK) return cli_report("inspect", st);
    dsv4_model_info mi;
    dsv4_memory_plan plan;
    st = dsv4_model_get_info(m, &mi);
    if (st == DSV4_OK && !context)
        context = mi.max_position_embeddings < 65536 ? mi.max_position_embeddings : 65536;
    if (st == DSV4_OK) st = dsv4_model_plan_memory(m, context, (int)batch, &plan);
    if (st != DSV4_OK) {
        dsv4_model_close(m);
        return cli_report("inspect", st);
    }
    if (json)
        print_json(dir, m, &mi, &plan, context, (int)batch);
    else
        print_text(dir, m, &mi, &plan, context, (int)batch);
    dsv4_model_close(m);
    return 0;
}
