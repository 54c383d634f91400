/*
 * dtype.h - the element types a safetensors file may declare, and their sizes.
 * Only the types DeepSeek-V4 checkpoints use are accepted; anything else is a clear error.
 */
#ifndef DSV4_IO_DTYPE_H
#define DSV4_IO_DTYPE_H

#include <stddef.h>

typedef enum dsv4_dtype {
    DSV4_DT_F32 = 0,
    DSV4_DT_BF16,
    DSV4_DT_F16,
    DSV4_DT_F8_E4M3,
    DSV4_DT_F8_E8M0,
    DSV4_DT_I8,
    DSV4_DT_U8,
    DSV4_DT_I32,
    DSV4_DT_I64,
    DSV4_DT_COUNT
} dsv4_dtype;

/* Bytes per element. */
size_t dsv4_dtype_size(dsv4_dtype dt);
/* The safetensors spelling ("F8_E4M3"). */
const char *dsv4_dtype_name(dsv4_dtype dt);
/* Parses a safetensors dtype string of `len` bytes; returns 0 on success, -1 if unknown. */
int dsv4_dtype_parse(const char *s, size_t len, dsv4_dtype *out);

#endif
