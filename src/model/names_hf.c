/*
 * names_hf.c - where a canonical weight lives in a transformers-layout checkpoint.
 *
 * Two spellings occur (docs/checkpoint-layouts.md, section (c), measured on transformers
 * 5.17): what save_pretrained writes (official names under "model.", with a few exceptions),
 * and the module names of DeepseekV4ForCausalLM (what other tools save from a state_dict),
 * which transformers derives from the official names by an ordered list of renaming rules.
 * We apply the same rules, so both spellings resolve from one canonical name.
 */
#include "model/model.h"

#include <stdio.h>
#include <string.h>

enum { NAME_MAX_LEN = 160 };

/* Replaces the first occurrence of `from` in s by `to`; with anchor_end, only a suffix. */
static void replace(char *s, const char *from, const char *to, int anchor_end)
{
    size_t ls = strlen(s), lf = strlen(from), lt = strlen(to);
    char *p;
    if (anchor_end)
        p = ls >= lf && !strcmp(s + ls - lf, from) ? s + ls - lf : NULL;
    else
        p = strstr(s, from);
    if (!p || ls - lf + lt >= NAME_MAX_LEN) return;
    memmove(p + lt, p + lf, strlen(p + lf) + 1);
    memcpy(p, to, lt);
}

/* transformers' "deepseek_v4" conversion rules, official name -> module name, in order. */
static void official_to_module(const char *official, char *out)
{
    static const struct {
        const char *from, *to;
        int anchor_end;
    } rules[] = {
        {".attn.", ".self_attn.", 0},
        {".ffn.", ".mlp.", 0},
        {".indexer.compressor.", ".compressor.indexer.", 0},
        {".attn_norm.", ".input_layernorm.", 0},
        {".ffn_norm.", ".post_attention_layernorm.", 0},
        {".hc_attn_fn", ".attn_hc.fn", 1},
        {".hc_attn_base", ".attn_hc.base", 1},
        {".hc_attn_scale", ".attn_hc.scale", 1},
        {".hc_ffn_fn", ".ffn_hc.fn", 1},
        {".hc_ffn_base", ".ffn_hc.base", 1},
        {".hc_ffn_scale", ".ffn_hc.scale", 1},
        {".attn_sink", ".sinks", 1},
        {".indexer.weights_proj.", ".compressor.indexer.scorer.weights_proj.", 0},
        {".indexer.wq_b.", ".compressor.indexer.q_b_proj.", 0},
        {".norm.", ".kv_norm.", 0},
        {".ape", ".position_bias", 1},
        {".wq_a.", ".q_a_proj.", 0},
        {".self_attn.wq_b.", ".self_attn.q_b_proj.", 0},
        {".wkv.", ".kv_proj.", 0},
        {".wgate.", ".gate_proj.", 0},
        {".wo_a.", ".o_a_proj.", 0},
        {".wo_b.", ".o_b_proj.", 0},
        {".q_norm.", ".q_a_norm.", 0},
        {".gate.bias", ".gate.e_score_correction_bias", 1},
        {".shared_experts.w1.", ".shared_experts.gate_proj.", 0},
        {".shared_experts.w2.", ".shared_experts.down_proj.", 0},
        {".shared_experts.w3.", ".shared_experts.up_proj.", 0},
    };
    size_t len = strlen(official);
    if (len >= NAME_MAX_LEN) len = NAME_MAX_LEN - 1;
    memcpy(out, official, len);
    out[len] = '\0';
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        replace(out, rules[i].from, rules[i].to, rules[i].anchor_end);
}

int dsv4_hf_names(const char *canonical, char out[][160], int max_out)
{
    char official[2][NAME_MAX_LEN + 8], module[NAME_MAX_LEN + 8];
    int n = 0;
#define ADD(...)                                                                                   \
    do {                                                                                           \
        if (n < max_out) {                                                                         \
            int w_ = snprintf(out[n], NAME_MAX_LEN, __VA_ARGS__);                                  \
            if (w_ > 0 && w_ < NAME_MAX_LEN) n++;                                                  \
        }                                                                                          \
    } while (0)

    /* Top-level exceptions, identical in both spellings except the head. */
    if (!strcmp(canonical, "embed")) {
        ADD("model.embed_tokens.weight");
        return n;
    }
    if (!strcmp(canonical, "head")) {
        ADD("head.weight");
        ADD("lm_head.weight");
        return n;
    }
    if (!strncmp(canonical, "hc_head_", 8)) {
        ADD("model.hc_head.hc_%s", canonical + 8);
        return n;
    }
    /* save_pretrained: the main KV norm comes out as attn.norm (a reversed renaming rule). */
    size_t len = strlen(canonical);
    if (len > 13 && !strcmp(canonical + len - 13, ".attn.kv_norm"))
        ADD("model.%.*s.attn.norm.weight", (int)(len - 13), canonical);

    if (len + 8 >= NAME_MAX_LEN) return n;
    memcpy(official[0], canonical, len);
    memcpy(official[0] + len, ".weight", 8);
    memcpy(official[1], canonical, len + 1);
    for (int i = 0; i < 2; i++) ADD("model.%s", official[i]);
    for (int i = 0; i < 2; i++) {
        official_to_module(official[i], module);
        if (strcmp(module, official[i])) ADD("model.%s", module);
    }
#undef ADD
    return n;
}

int dsv4_hf_stacked_names(int layer, int down, char out[][160], int max_out)
{
    if (layer < 0 || max_out < 1) return 0;
    snprintf(out[0], NAME_MAX_LEN, "model.layers.%d.mlp.experts.%s", layer,
             down ? "down_proj" : "gate_up_proj");
    return 1;
}
