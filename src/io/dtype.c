/*
 * dtype.c - names and sizes of safetensors element types.
 */
#include "io/dtype.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[DSV4_DT_COUNT] = {
    [DSV4_DT_F32] = {"F32", 4},    [DSV4_DT_BF16] = {"BF16", 2},   [DSV4_DT_F16] = {"F16", 2},
    [DSV4_DT_F8_E4M3] = {"F8_E4M3", 1}, [DSV4_DT_F8_E8M0] = {"F8_E8M0", 1},
    [DSV4_DT_I8] = {"I8", 1},      [DSV4_DT_U8] = {"U8", 1},       [DSV4_DT_I32] = {"I32", 4},
    [DSV4_DT_I64] = {"I64", 8},
};

size_t dsv4_dtype_size(dsv4_dtype dt)
{
    return (unsigned)dt < DSV4_DT_COUNT ? dtype_table[dt].size : 0;
}

const char *dsv4_dtype_name(dsv4_dtype dt)
{
    return (unsigned)dt < DSV4_DT_COUNT ? dtype_table[dt].name : "?";
}

int dsv4_dtype_parse(const char *s, size_t len, dsv4_dtype *out)
{
    for (int i = 0; i < DSV4_DT_COUNT; i++) {
        if (strlen(dtype_table[i].name) == len && memcmp(dtype_table[i].name, s, len) == 0) {
            *out = (dsv4_dtype)i;
            return 0;
        }
    }
    return -1;
}
