/*
 * safetensors.c - one safetensors file: the header parser and the read-only mapping.
 *
 * The header is untrusted input (a checkpoint downloaded from anywhere), so st_parse_header
 * checks every field before anything is derived from it; it never looks at the data region,
 * which for a real checkpoint is tens of gigabytes that must stay unread until inference.
 * The sharded-set logic (index file, directory listing, name lookup) is in safetensors_index.c.
 */
#include "io/safetensors.h"

#include "core/error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Same limit as the reference implementation: a header beyond this is hostile, not large. */
enum { ST_MAX_HEADER_BYTES = 100000000 };
/* cJSON keeps numbers as doubles: integers above 2^53 cannot be told from their neighbours. */
#define ST_MAX_EXACT_INT 9007199254740992.0

/* ------------------------------------------------------------------------------------------
 * JSON helpers
 * ---------------------------------------------------------------------------------------- */

/* Offset of the first byte that is not part of a well-formed UTF-8 sequence (overlong forms,
 * surrogates and code points above U+10FFFF included), or `len` when all of it is valid. */
static size_t utf8_invalid_at(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            n = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (len - i <= n) return i;
        for (size_t k = 1; k <= n; k++) {
            unsigned cc = s[i + k];
            if ((cc & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += n + 1;
    }
    return len;
}

static bool json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

dsv4_status st_json_parse_object(const char *bytes, size_t len, const char *label, cJSON **out)
{
    *out = NULL;
    size_t bad = utf8_invalid_at((const unsigned char *)bytes, len);
    if (bad < len)
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: JSON is not valid UTF-8 (byte 0x%02x at offset %zu)",
                         label, (unsigned char)bytes[bad], bad);
    const char *nul = memchr(bytes, '\0', len);
    if (nul)
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: JSON contains a NUL byte at offset %zu", label,
                         (size_t)(nul - bytes));
    /* cJSON is given a terminated copy so that no parser path can read past the end. */
    char *copy = malloc(len + 1);
    if (!copy)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes for the JSON",
                         label, len + 1);
    memcpy(copy, bytes, len);
    copy[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, len, &end, 0);
    size_t pos = end ? (size_t)(end - copy) : 0;
    free(copy);
    if (!root)
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: invalid JSON near byte %zu of %zu", label, pos, len);
    while (pos < len && json_space(bytes[pos])) pos++;
    if (pos < len) {
        cJSON_Delete(root);
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: unexpected byte 0x%02x at offset %zu after the JSON value "
                         "(only whitespace padding may follow)",
                         label, (unsigned char)bytes[pos], pos);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: expected a JSON object at the top level", label);
    }
    *out = root;
    return DSV4_OK;
}

/* Describes a JSON value for a message: the number itself, or its kind. */
static const char *json_describe(const cJSON *v, char *buf, size_t size)
{
    if (!v) return "missing";
    if (cJSON_IsNumber(v)) {
        snprintf(buf, size, "%.17g", v->valuedouble);
        return buf;
    }
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    return "an invalid value";
}

/* A non-negative integer that a double holds exactly (NaN and infinities fail the range). */
static bool json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0.0 && d <= ST_MAX_EXACT_INT)) return false;
    uint64_t u = (uint64_t)d;
    if ((double)u != d) return false;
    *out = u;
    return true;
}

/* "[1024, 4096]" */
static void format_shape(char *buf, size_t size, const int64_t *shape, int ndim)
{
    size_t n = 0;
    n += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
}

/* ------------------------------------------------------------------------------------------
 * Header parsing
 * ---------------------------------------------------------------------------------------- */

static dsv4_status check_metadata(const cJSON *meta, const char *label)
{
    if (!cJSON_IsObject(meta))
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: \"__metadata__\" must be an object of strings, got %s", label,
                         json_describe(meta, (char[32]){0}, 32));
    const cJSON *v;
    cJSON_ArrayForEach(v, meta)
    {
        if (!cJSON_IsString(v))
            return dsv4_fail(DSV4_ERR_FORMAT,
                             "%s: \"__metadata__\" must be an object of strings, but key '%s' "
                             "holds %s",
                             label, v->string ? v->string : "",
                             json_describe(v, (char[32]){0}, 32));
    }
    return DSV4_OK;
}

/* Fills `t` from one header entry {"dtype", "shape", "data_offsets"}; `t->name` is set. */
static dsv4_status parse_entry(const cJSON *entry, uint64_t data_size, const char *label,
                               st_tensor *t)
{
    const char *name = t->name;
    char what[32];
    if (!cJSON_IsObject(entry))
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': expected an object with \"dtype\", \"shape\" and "
                         "\"data_offsets\", got %s",
                         label, name, json_describe(entry, what, sizeof what));

    /* Each field once; unknown fields are ignored, as the reference implementation does. */
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL, *f;
    cJSON_ArrayForEach(f, entry)
    {
        const cJSON **slot = NULL;
        if (!f->string) continue;
        if (!strcmp(f->string, "dtype")) slot = &dtype;
        if (!strcmp(f->string, "shape")) slot = &shape;
        if (!strcmp(f->string, "data_offsets")) slot = &offsets;
        if (!slot) continue;
        if (*slot)
            return dsv4_fail(DSV4_ERR_FORMAT, "%s: tensor '%s': field \"%s\" appears twice", label,
                             name, f->string);
        *slot = f;
    }
    if (!dtype || !shape || !offsets)
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: tensor '%s': missing field \"%s\"", label, name,
                         !dtype   ? "dtype"
                         : !shape ? "shape"
                                  : "data_offsets");

    /* dtype */
    if (!cJSON_IsString(dtype))
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: tensor '%s': \"dtype\" must be a string, got %s",
                         label, name, json_describe(dtype, what, sizeof what));
    if (dsv4_dtype_parse(dtype->valuestring, strlen(dtype->valuestring), &t->dtype) != 0)
        return dsv4_fail(DSV4_ERR_TENSOR_DTYPE,
                         "%s: tensor '%s': unknown dtype '%.64s' (expected F32, BF16, F16, "
                         "F8_E4M3, F8_E8M0, I8, U8, I32 or I64)",
                         label, name, dtype->valuestring);

    /* shape: at most ST_MAX_DIMS non-negative integers whose product does not overflow */
    if (!cJSON_IsArray(shape))
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': \"shape\" must be an array of integers, got %s", label,
                         name, json_describe(shape, what, sizeof what));
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': shape has %d dimensions, at most %d are supported",
                         label, name, ndim, (int)ST_MAX_DIMS);
    t->ndim = ndim;
    uint64_t numel = 1;
    bool overflow = false;
    int d = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, shape)
    {
        uint64_t x;
        if (!json_uint(v, &x))
            return dsv4_fail(DSV4_ERR_FORMAT,
                             "%s: tensor '%s': shape[%d] is %s, expected a non-negative integer "
                             "no larger than 2^53",
                             label, name, d, json_describe(v, what, sizeof what));
        t->shape[d++] = (int64_t)x;
        overflow |= __builtin_mul_overflow(numel, x, &numel);
    }
    char dims[8 * 24];
    format_shape(dims, sizeof dims, t->shape, ndim);
    uint64_t need = 0;
    size_t esize = dsv4_dtype_size(t->dtype);
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)esize, &need))
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': shape %s of %s has a byte size that overflows 64 bits",
                         label, name, dims, dsv4_dtype_name(t->dtype));

    /* data_offsets: [begin, end] inside the data region, spanning exactly the tensor */
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2)
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': \"data_offsets\" must be an array of 2 integers "
                         "[begin, end]",
                         label, name);
    const cJSON *jb = offsets->child, *je = jb->next;
    if (!json_uint(jb, &t->begin) || !json_uint(je, &t->end))
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%s, %s] must be non-negative integers "
                         "no larger than 2^53",
                         label, name, json_describe(jb, what, sizeof what),
                         json_describe(je, (char[32]){0}, 32));
    if (t->begin > t->end)
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", label,
                         name, (unsigned long long)t->begin, (unsigned long long)t->end);
    t->nbytes = t->end - t->begin;
    if (t->nbytes != need)
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': shape %s of %s needs %llu bytes but data_offsets span "
                         "%llu",
                         label, name, dims, dsv4_dtype_name(t->dtype), (unsigned long long)need,
                         (unsigned long long)t->nbytes);
    if (t->end > data_size)
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the "
                         "data region (%llu bytes; file truncated?)",
                         label, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                         (unsigned long long)data_size);
    return DSV4_OK;
}

static int cmp_by_name(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_by_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* No duplicate names (cJSON keeps both copies of a repeated key) and no two tensors sharing a
 * byte. Empty tensors own no bytes, so they overlap nothing wherever they sit. */
static dsv4_status check_layout(st_tensor *tensors, size_t n, const char *label)
{
    if (n < 2) return DSV4_OK;
    const st_tensor **order = malloc(n * sizeof *order);
    if (!order)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: cannot allocate an index of %zu tensors",
                         label, n);
    for (size_t i = 0; i < n; i++) order[i] = &tensors[i];
    dsv4_status status = DSV4_OK;

    qsort(order, n, sizeof *order, cmp_by_name);
    for (size_t i = 1; i < n; i++) {
        if (!strcmp(order[i - 1]->name, order[i]->name)) {
            status = dsv4_fail(DSV4_ERR_FORMAT, "%s: tensor '%s' is declared twice", label,
                               order[i]->name);
            goto done;
        }
    }

    qsort(order, n, sizeof *order, cmp_by_offset);
    const st_tensor *reach = NULL; /* the non-empty tensor reaching furthest so far */
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = order[i];
        if (t->nbytes == 0) continue;
        if (reach && t->begin < reach->end) {
            status = dsv4_fail(DSV4_ERR_FORMAT,
                               "%s: tensors '%s' (bytes %llu..%llu) and '%s' (bytes %llu..%llu) "
                               "overlap",
                               label, reach->name, (unsigned long long)reach->begin,
                               (unsigned long long)reach->end, t->name,
                               (unsigned long long)t->begin, (unsigned long long)t->end);
            goto done;
        }
        if (!reach || t->end > reach->end) reach = t;
    }
done:
    free(order);
    return status;
}

dsv4_status st_parse_header(const char *json, size_t len, uint64_t data_size, const char *label,
                            st_tensor **tensors, size_t *n_tensors, char **names)
{
    *tensors = NULL;
    *n_tensors = 0;
    *names = NULL;
    if (!label) label = "safetensors header";
    if (!json || len == 0) return dsv4_fail(DSV4_ERR_FORMAT, "%s: header is empty", label);
    if (len > ST_MAX_HEADER_BYTES)
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: header is %zu bytes, more than the %d-byte limit",
                         label, len, ST_MAX_HEADER_BYTES);
    if (json[0] != '{')
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: header starts with byte 0x%02x, expected '{' (not a safetensors "
                         "file?)",
                         label, (unsigned char)json[0]);
    cJSON *root = NULL;
    DSV4_TRY(st_json_parse_object(json, len, label, &root));

    /* First pass: count tensors and name bytes, check __metadata__. */
    dsv4_status status = DSV4_OK;
    size_t count = 0, name_bytes = 0;
    bool have_meta = false;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        const char *key = e->string ? e->string : "";
        if (!strcmp(key, "__metadata__")) {
            if (have_meta) {
                status = dsv4_fail(DSV4_ERR_FORMAT, "%s: \"__metadata__\" appears twice", label);
                goto fail;
            }
            have_meta = true;
            status = check_metadata(e, label);
            if (status != DSV4_OK) goto fail;
            continue;
        }
        count++;
        name_bytes += strlen(key) + 1;
    }
    if (count == 0) {
        cJSON_Delete(root);
        return DSV4_OK;
    }

    st_tensor *ts = calloc(count, sizeof *ts);
    char *store = malloc(name_bytes);
    if (!ts || !store) {
        free(ts);
        free(store);
        status = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu tensor entries", label,
                           count);
        goto fail;
    }

    /* Second pass: fill the entries in header order. */
    size_t i = 0, at = 0;
    cJSON_ArrayForEach(e, root)
    {
        const char *key = e->string ? e->string : "";
        if (!strcmp(key, "__metadata__")) continue;
        size_t n = strlen(key) + 1;
        memcpy(store + at, key, n);
        ts[i].name = store + at;
        ts[i].file_index = 0;
        at += n;
        status = parse_entry(e, data_size, label, &ts[i]);
        if (status != DSV4_OK) break;
        i++;
    }
    if (status == DSV4_OK) status = check_layout(ts, count, label);
    if (status != DSV4_OK) {
        st_tensors_free(ts, store);
        goto fail;
    }
    cJSON_Delete(root);
    *tensors = ts;
    *n_tensors = count;
    *names = store;
    return DSV4_OK;

fail:
    cJSON_Delete(root);
    return status;
}

void st_tensors_free(st_tensor *tensors, char *names)
{
    free(tensors);
    free(names);
}

/* ------------------------------------------------------------------------------------------
 * One mapped file
 * ---------------------------------------------------------------------------------------- */

dsv4_status st_file_open(const char *path, st_file **out)
{
    if (!out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "st_file_open: out is NULL");
    *out = NULL;
    if (!path) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "st_file_open: path is NULL");

    st_file *f = calloc(1, sizeof *f);
    if (!f) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: cannot allocate a file handle", path);
    dsv4_status status = DSV4_OK;
    f->path = strdup(path);
    if (!f->path) {
        status = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: cannot copy the path", path);
        goto fail;
    }

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        status = dsv4_fail(DSV4_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        status = dsv4_fail(DSV4_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        status = dsv4_fail(DSV4_ERR_IO, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) {
        close(fd);
        if (size == 0)
            status = dsv4_fail(DSV4_ERR_FORMAT,
                               "%s: file is empty (0 bytes), expected an 8-byte header length "
                               "followed by a JSON header",
                               path);
        else
            status = dsv4_fail(DSV4_ERR_FORMAT,
                               "%s: file is %llu bytes, too short for the 8-byte header length "
                               "(truncated?)",
                               path, (unsigned long long)size);
        goto fail;
    }
    if (size > SIZE_MAX) {
        close(fd);
        status = dsv4_fail(DSV4_ERR_IO, "%s: %llu bytes do not fit in the address space", path,
                           (unsigned long long)size);
        goto fail;
    }
    /* MAP_NORESERVE: a 100+ GB checkpoint must not be charged against swap up front. Nothing
     * below touches pages past the header, so a sparse or cold file stays unread. */
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        status = dsv4_fail(DSV4_ERR_IO, "%s: cannot map %llu bytes: %s", path,
                           (unsigned long long)size, strerror(map_errno));
        goto fail;
    }
    f->map = map;
    f->file_size = size;

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    if (hlen == 0) {
        status = dsv4_fail(DSV4_ERR_FORMAT, "%s: header length is 0, expected a JSON header", path);
        goto fail;
    }
    if (hlen > ST_MAX_HEADER_BYTES) {
        status = dsv4_fail(DSV4_ERR_FORMAT,
                           "%s: header length %llu exceeds the %d-byte limit (not a safetensors "
                           "file?)",
                           path, (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
        goto fail;
    }
    if (hlen > size - 8) {
        status = dsv4_fail(DSV4_ERR_FORMAT,
                           "%s: header length %llu runs past the end of the file (%llu bytes "
                           "follow the length field; truncated?)",
                           path, (unsigned long long)hlen, (unsigned long long)(size - 8));
        goto fail;
    }
    f->data_offset = 8 + hlen;
    status = st_parse_header((const char *)f->map + 8, (size_t)hlen, size - f->data_offset, f->path,
                             &f->tensors, &f->n_tensors, &f->names);
    if (status != DSV4_OK) goto fail;
    for (size_t i = 0; i < f->n_tensors; i++)
        f->tensors[i].data = f->map + f->data_offset + f->tensors[i].begin;
    *out = f;
    return DSV4_OK;

fail:
    st_file_close(f);
    return status;
}

void st_file_close(st_file *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, (size_t)f->file_size);
    st_tensors_free(f->tensors, f->names);
    free(f->path);
    free(f);
}
