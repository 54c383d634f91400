/*
 * safetensors.h - memory-mapped safetensors files and sharded checkpoints.
 *
 * A safetensors file is: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {string: string}}, then the data region. Offsets are relative to the data
 * region. The parser checks everything a malicious or truncated file could get wrong: header
 * length inside the file, valid JSON object, known dtype, non-negative integer shape whose
 * element count times dtype size equals end - begin (no overflow), offsets inside the data
 * region, no two tensors overlapping, no duplicate names.
 *
 * A checkpoint set is every shard of a model directory: the files named by
 * model.safetensors.index.json ("weight_map": {tensor: file}), or a single model.safetensors,
 * or (no index) every *.safetensors file in the directory. Names are looked up by hash.
 *
 * Ownership: st_set owns its files; tensor pointers and names live until st_set_close.
 */
#ifndef DSV4_IO_SAFETENSORS_H
#define DSV4_IO_SAFETENSORS_H

#include "dsv4.h"
#include "io/dtype.h"

#include <stddef.h>
#include <stdint.h>

enum { ST_MAX_DIMS = 8 };

typedef struct st_tensor {
    const char *name;
    dsv4_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;      /* byte offsets within the data region */
    const uint8_t *data;      /* points into the mapping (NULL until the file is mapped) */
    uint64_t nbytes;          /* end - begin */
    int file_index;           /* which shard of the set */
} st_tensor;

typedef struct st_file {
    char *path;
    uint8_t *map;             /* whole file, read-only */
    uint64_t file_size;
    uint64_t data_offset;     /* 8 + header length */
    st_tensor *tensors;
    size_t n_tensors;
    char *names;              /* storage for tensor names */
} st_file;

/* Parses header JSON bytes `json[0..len)` for a file whose data region has `data_size` bytes.
 * `label` names the file in error messages. Pure: no I/O, safe to fuzz. On success the caller
 * owns *tensors (free with st_tensors_free); tensor.data stays NULL. */
dsv4_status st_parse_header(const char *json, size_t len, uint64_t data_size, const char *label,
                            st_tensor **tensors, size_t *n_tensors, char **names);
void st_tensors_free(st_tensor *tensors, char *names);

/* Parses `bytes[0..len)` as a JSON document whose top level is an object, for the header and
 * index parsers. The bytes must be valid UTF-8 without NUL bytes; whitespace after the object
 * (safetensors pads headers with spaces) is accepted, anything else is not. `label` names the
 * source in error messages. On success the caller owns *out (cJSON_Delete). */
struct cJSON;
dsv4_status st_json_parse_object(const char *bytes, size_t len, const char *label,
                                 struct cJSON **out);

/* Opens and maps one file, validating its header. */
dsv4_status st_file_open(const char *path, st_file **out);
void st_file_close(st_file *f);

typedef struct st_set st_set;

/* Opens every shard of the checkpoint in `dir` (see above). Checks that the index JSON is well
 * formed, that every file it names exists, and that every tensor it maps is in that file. */
dsv4_status st_set_open(const char *dir, st_set **out);
void st_set_close(st_set *set);

/* NULL when absent. */
const st_tensor *st_set_find(const st_set *set, const char *name);
size_t st_set_count(const st_set *set);
const st_tensor *st_set_at(const st_set *set, size_t i);
size_t st_set_num_files(const st_set *set);
const char *st_set_file_path(const st_set *set, int file_index);

#endif
