/*
 * fuzz_config.c - libFuzzer target: dsv4_config_parse on arbitrary bytes. It must never crash,
 * leak or read out of bounds, and a config it accepts must satisfy the documented invariants.
 */
#include "model/config.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dsv4_config cfg;
    if (dsv4_config_parse((const char *)data, size, "fuzz.json", &cfg) != DSV4_OK) return 0;
    int total = cfg.num_layers + cfg.num_mtp_layers;
    if (cfg.num_layers < 1 || total > DSV4_MAX_LAYERS) __builtin_trap();
    if (cfg.num_heads % cfg.o_groups != 0 || cfg.rope_dim % 2 || cfg.rope_dim > cfg.head_dim)
        __builtin_trap();
    if (cfg.n_experts_per_tok > cfg.n_routed_experts || cfg.num_kv_heads != 1) __builtin_trap();
    if (cfg.num_hash_layers > cfg.num_layers || !(cfg.rms_norm_eps > 0)) __builtin_trap();
    for (int i = 0; i < DSV4_MAX_LAYERS; i++) {
        int r = cfg.compress_ratio[i];
        if (r != 0 && r != 4 && r != 128) __builtin_trap();
        if (i >= total && (r != 0 || cfg.hash_layer[i])) __builtin_trap();
        if (i >= cfg.num_layers && cfg.hash_layer[i]) __builtin_trap();
        if (r == 4 && cfg.index_topk <= 0) __builtin_trap();
    }
    return 0;
}
