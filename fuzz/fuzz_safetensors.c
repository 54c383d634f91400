/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors header parser, the first code that
 * reads an untrusted checkpoint. The input is the header JSON itself; each input is parsed
 * against several data-region sizes (none, tiny, its own length, 2^53, the maximum) so that
 * both the bounds checks and the layout checks are reached. Accepted headers are re-checked
 * against the parser's promises; a broken promise traps.
 */
#include "io/safetensors.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What st_parse_header guarantees for every tensor it accepts. */
static void check_tensors(const st_tensor *t, size_t n, uint64_t data_size)
{
    for (size_t i = 0; i < n; i++) {
        if (!t[i].name || t[i].data != NULL) __builtin_trap();
        if ((unsigned)t[i].dtype >= DSV4_DT_COUNT) __builtin_trap();
        if (t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS) __builtin_trap();
        if (t[i].begin > t[i].end || t[i].end > data_size) __builtin_trap();
        if (t[i].nbytes != t[i].end - t[i].begin) __builtin_trap();
        uint64_t numel = dsv4_dtype_size(t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] < 0) __builtin_trap();
            if (__builtin_mul_overflow(numel, (uint64_t)t[i].shape[d], &numel)) __builtin_trap();
        }
        if (numel != t[i].nbytes) __builtin_trap();
    }
    if (n > 256) return; /* the pairwise checks below are quadratic */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = i + 1; j < n; j++) {
            if (!strcmp(t[i].name, t[j].name)) __builtin_trap();
            if (t[i].nbytes && t[j].nbytes && t[i].begin < t[j].end && t[j].begin < t[i].end)
                __builtin_trap();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint64_t sizes[] = {0, 16, size, 9007199254740992ull, UINT64_MAX};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        st_tensor *t = NULL;
        size_t n = 0;
        char *names = NULL;
        if (st_parse_header((const char *)data, size, sizes[k], "fuzz", &t, &n, &names) ==
            DSV4_OK) {
            check_tensors(t, n, sizes[k]);
            st_tensors_free(t, names);
        } else if (t || n || names) {
            __builtin_trap(); /* a failed parse hands nothing back */
        }
    }
    return 0;
}
