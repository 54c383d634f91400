/*
 * safetensors_index.c - a checkpoint as a set of safetensors shards, with lookup by name.
 *
 * A model directory holds either model.safetensors.index.json naming the shards, a single
 * model.safetensors, or a bare list of *.safetensors files. This file finds the shards, opens
 * each once (safetensors.c maps and validates them), cross-checks the index against what the
 * shards really hold, and builds a hash table over all tensor names: a DeepSeek-V4 checkpoint
 * has about 70k tensors, and the loader looks every one of them up.
 */
#include "io/safetensors.h"

#include "core/error.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The index is a few MB for the largest checkpoints; anything near this is not an index. */
enum { ST_MAX_INDEX_BYTES = 256 * 1024 * 1024 };

static const char ST_INDEX_NAME[] = "model.safetensors.index.json";
static const char ST_SINGLE_NAME[] = "model.safetensors";
static const char ST_SUFFIX[] = ".safetensors";

struct st_set {
    st_file **files; /* owned; files[i]'s tensors carry file_index i */
    size_t n_files, cap_files;
    const st_tensor **tensors; /* every tensor, file by file in header order (borrowed) */
    size_t n_tensors;
    size_t *slots;  /* open addressing over `tensors`: index + 1, 0 = empty */
    size_t n_slots; /* a power of two, at least twice n_tensors */
};

/* ------------------------------------------------------------------------------------------
 * Paths and files
 * ---------------------------------------------------------------------------------------- */

/* "dir/name" (no doubled slash); NULL when out of memory. Owned by the caller. */
static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    bool slash = a > 0 && dir[a - 1] != '/';
    char *p = malloc(a + slash + b + 1);
    if (!p) return NULL;
    memcpy(p, dir, a);
    if (slash) p[a] = '/';
    memcpy(p + a + slash, name, b + 1);
    return p;
}

/* True when `path` names something (anything) that stat can see. */
static bool path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Reads a whole (small) file into a malloc'd buffer owned by the caller. */
static dsv4_status read_small_file(const char *path, size_t limit, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return dsv4_fail(DSV4_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    dsv4_status status = DSV4_OK;
    char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        status = dsv4_fail(DSV4_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        status = dsv4_fail(DSV4_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    if ((uint64_t)st.st_size > limit) {
        status = dsv4_fail(DSV4_ERR_FORMAT, "%s: %lld bytes, more than the %zu-byte limit", path,
                           (long long)st.st_size, limit);
        goto done;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size ? size : 1);
    if (!buf) {
        status = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes", path, size);
        goto done;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            status = dsv4_fail(DSV4_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0) break; /* shrank while reading: parse what is there */
        got += (size_t)r;
    }
    *out = buf;
    *len = got;
    buf = NULL;
done:
    free(buf);
    close(fd);
    return status;
}

/* Opens `path` as the next shard of the set. */
static dsv4_status set_add_file(st_set *set, const char *path)
{
    if (set->n_files >= (size_t)INT_MAX)
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: too many safetensors files", path);
    if (set->n_files == set->cap_files) {
        size_t cap = set->cap_files ? set->cap_files * 2 : 8;
        st_file **files = realloc(set->files, cap * sizeof *files);
        if (!files)
            return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cannot grow the list of %zu shards",
                             set->n_files);
        set->files = files;
        set->cap_files = cap;
    }
    st_file *f = NULL;
    DSV4_TRY(st_file_open(path, &f));
    for (size_t i = 0; i < f->n_tensors; i++) f->tensors[i].file_index = (int)set->n_files;
    set->files[set->n_files++] = f;
    return DSV4_OK;
}

/* ------------------------------------------------------------------------------------------
 * Name lookup: open addressing with linear probing over FNV-1a hashes
 * ---------------------------------------------------------------------------------------- */

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Collects every tensor of every shard and indexes them by name. A name held by two shards is
 * an error: the loader could not know which one is meant. */
static dsv4_status set_build_table(st_set *set)
{
    size_t n = 0;
    for (size_t i = 0; i < set->n_files; i++) n += set->files[i]->n_tensors;
    size_t slots = 16;
    while (slots < 2 * n) {
        if (slots > SIZE_MAX / 4 / sizeof(size_t))
            return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "too many tensors (%zu) to index", n);
        slots *= 2;
    }
    set->tensors = malloc((n ? n : 1) * sizeof *set->tensors);
    set->slots = calloc(slots, sizeof *set->slots);
    if (!set->tensors || !set->slots)
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cannot allocate a name table for %zu tensors", n);
    set->n_slots = slots;
    size_t mask = slots - 1;
    for (size_t fi = 0; fi < set->n_files; fi++) {
        const st_file *f = set->files[fi];
        for (size_t ti = 0; ti < f->n_tensors; ti++) {
            const st_tensor *t = &f->tensors[ti];
            size_t h = (size_t)fnv1a(t->name) & mask;
            while (set->slots[h]) {
                const st_tensor *o = set->tensors[set->slots[h] - 1];
                if (!strcmp(o->name, t->name))
                    return dsv4_fail(DSV4_ERR_FORMAT, "tensor '%s' is in both %s and %s", t->name,
                                     set->files[o->file_index]->path, f->path);
                h = (h + 1) & mask;
            }
            set->tensors[set->n_tensors] = t;
            set->slots[h] = ++set->n_tensors;
        }
    }
    return DSV4_OK;
}

const st_tensor *st_set_find(const st_set *set, const char *name)
{
    if (!set || !name || set->n_slots == 0) return NULL;
    size_t mask = set->n_slots - 1;
    for (size_t h = (size_t)fnv1a(name) & mask; set->slots[h]; h = (h + 1) & mask) {
        const st_tensor *t = set->tensors[set->slots[h] - 1];
        if (!strcmp(t->name, name)) return t;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * The three layouts
 * ---------------------------------------------------------------------------------------- */

/* A shard name from the index must stay inside the model directory. */
static bool plain_file_name(const char *s)
{
    return s[0] != '\0' && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..") &&
           strcmp(s, ".") != 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* Checks the parsed index, opens every shard it names (each once, in name order) and checks
 * that each tensor it maps is in the shard it names. */
static dsv4_status open_indexed(st_set *set, const char *dir, const char *index_path,
                                const cJSON *root)
{
    const cJSON *map = NULL, *meta = NULL, *e;
    cJSON_ArrayForEach(e, root)
    {
        const cJSON **slot = NULL;
        if (!strcmp(e->string, "weight_map")) slot = &map;
        if (!strcmp(e->string, "metadata")) slot = &meta;
        if (!slot) continue;
        if (*slot)
            return dsv4_fail(DSV4_ERR_FORMAT, "%s: \"%s\" appears twice", index_path, e->string);
        *slot = e;
    }
    if (meta && !cJSON_IsObject(meta) && !cJSON_IsNull(meta))
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: \"metadata\" must be an object", index_path);
    if (!map)
        return dsv4_fail(DSV4_ERR_FORMAT, "%s: missing \"weight_map\" {tensor: file}", index_path);
    if (!cJSON_IsObject(map))
        return dsv4_fail(DSV4_ERR_FORMAT,
                         "%s: \"weight_map\" must be an object {tensor name: file name}",
                         index_path);
    size_t n = 0;
    cJSON_ArrayForEach(e, map)
    {
        if (!cJSON_IsString(e))
            return dsv4_fail(DSV4_ERR_FORMAT,
                             "%s: weight_map entry for tensor '%s' must be a file name string",
                             index_path, e->string);
        if (!plain_file_name(e->valuestring))
            return dsv4_fail(DSV4_ERR_FORMAT,
                             "%s: weight_map puts tensor '%s' in '%s', which is not a plain file "
                             "name inside the model directory",
                             index_path, e->string, e->valuestring);
        n++;
    }
    if (n == 0) return dsv4_fail(DSV4_ERR_FORMAT, "%s: weight_map is empty", index_path);

    dsv4_status status = DSV4_OK;
    const cJSON **entries = malloc(n * sizeof *entries);
    const char **names = malloc(n * sizeof *names);
    if (!entries || !names) {
        status =
            dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu entries", index_path, n);
        goto done;
    }
    size_t i = 0;
    cJSON_ArrayForEach(e, map)
    {
        entries[i] = e;
        names[i++] = e->valuestring;
    }

    /* cJSON keeps repeated keys; a tensor mapped twice is a broken index. */
    qsort(entries, n, sizeof *entries, cmp_key);
    for (i = 1; i < n; i++) {
        if (!strcmp(entries[i - 1]->string, entries[i]->string)) {
            status = dsv4_fail(DSV4_ERR_FORMAT, "%s: weight_map names tensor '%s' twice",
                               index_path, entries[i]->string);
            goto done;
        }
    }

    /* Distinct shard names, sorted: shard k of the set is names[k]. */
    qsort(names, n, sizeof *names, cmp_str);
    size_t n_names = 0;
    for (i = 0; i < n; i++)
        if (n_names == 0 || strcmp(names[n_names - 1], names[i])) names[n_names++] = names[i];
    for (i = 0; i < n_names; i++) {
        char *path = path_join(dir, names[i]);
        if (!path) {
            status = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cannot build a path in %s", dir);
            goto done;
        }
        status = set_add_file(set, path);
        free(path);
        if (status != DSV4_OK) {
            dsv4_fail_context(status, "%s names shard '%s'", index_path, names[i]);
            goto done;
        }
    }
    status = set_build_table(set);
    if (status != DSV4_OK) goto done;

    for (i = 0; i < n; i++) {
        const char *tname = entries[i]->string, *fname = entries[i]->valuestring;
        const char **k = bsearch(&fname, names, n_names, sizeof *names, cmp_str);
        DSV4_ASSERT(k != NULL);
        const st_file *want = set->files[k - names];
        const st_tensor *t = st_set_find(set, tname);
        if (!t) {
            status = dsv4_fail(DSV4_ERR_FORMAT,
                               "%s: weight_map puts tensor '%s' in %s, but that file does not "
                               "contain it",
                               index_path, tname, want->path);
            goto done;
        }
        if (t->file_index != (int)(k - names)) {
            status =
                dsv4_fail(DSV4_ERR_FORMAT, "%s: weight_map puts tensor '%s' in %s, but it is in %s",
                          index_path, tname, want->path, set->files[t->file_index]->path);
            goto done;
        }
    }
done:
    free(entries);
    free(names);
    return status;
}

static dsv4_status open_from_index(st_set *set, const char *dir, const char *index_path)
{
    char *text = NULL;
    size_t len = 0;
    DSV4_TRY(read_small_file(index_path, ST_MAX_INDEX_BYTES, &text, &len));
    cJSON *root = NULL;
    dsv4_status status = st_json_parse_object(text, len, index_path, &root);
    free(text);
    if (status != DSV4_OK) return status;
    status = open_indexed(set, dir, index_path, root);
    cJSON_Delete(root);
    return status;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && !memcmp(s + a - b, suffix, b);
}

/* Every regular *.safetensors file in `dir` (hidden files excluded, as a shell glob would),
 * opened in name order so that shard numbering does not depend on the file system. */
static dsv4_status open_listing(st_set *set, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return dsv4_fail(DSV4_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    dsv4_status status = DSV4_OK;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno) status = dsv4_fail(DSV4_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
            break;
        }
        if (de->d_name[0] == '.' || !has_suffix(de->d_name, ST_SUFFIX)) continue;
        char *path = path_join(dir, de->d_name);
        if (!path) {
            status = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cannot build a path in %s", dir);
            break;
        }
        struct stat st;
        bool regular = stat(path, &st) == 0 && S_ISREG(st.st_mode);
        free(path);
        if (!regular) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) {
                status = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cannot list %s", dir);
                break;
            }
            names = grown;
        }
        names[n] = strdup(de->d_name);
        if (!names[n]) {
            status = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cannot list %s", dir);
            break;
        }
        n++;
    }
    closedir(d);
    if (status == DSV4_OK && n == 0)
        status = dsv4_fail(DSV4_ERR_IO, "no *.safetensors files in %s", dir);
    if (status == DSV4_OK) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && status == DSV4_OK; i++) {
        char *path = path_join(dir, names[i]);
        status = path ? set_add_file(set, path)
                      : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cannot build a path in %s", dir);
        free(path);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    if (status == DSV4_OK) status = set_build_table(set);
    return status;
}

/* ------------------------------------------------------------------------------------------
 * Public calls
 * ---------------------------------------------------------------------------------------- */

dsv4_status st_set_open(const char *dir, st_set **out)
{
    if (!out) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "st_set_open: out is NULL");
    *out = NULL;
    if (!dir) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "st_set_open: dir is NULL");
    st_set *set = calloc(1, sizeof *set);
    char *index_path = path_join(dir, ST_INDEX_NAME);
    char *single_path = path_join(dir, ST_SINGLE_NAME);
    dsv4_status status;
    if (!set || !index_path || !single_path) {
        status = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "%s: cannot allocate a checkpoint set", dir);
    } else if (path_exists(index_path)) {
        status = open_from_index(set, dir, index_path);
    } else if (path_exists(single_path)) {
        status = set_add_file(set, single_path);
        if (status == DSV4_OK) status = set_build_table(set);
    } else {
        status = open_listing(set, dir);
    }
    free(index_path);
    free(single_path);
    if (status != DSV4_OK) {
        st_set_close(set);
        return status;
    }
    *out = set;
    return DSV4_OK;
}

void st_set_close(st_set *set)
{
    if (!set) return;
    for (size_t i = 0; i < set->n_files; i++) st_file_close(set->files[i]);
    free(set->files);
    free(set->tensors);
    free(set->slots);
    free(set);
}

size_t st_set_count(const st_set *set)
{
    return set ? set->n_tensors : 0;
}

const st_tensor *st_set_at(const st_set *set, size_t i)
{
    return set && i < set->n_tensors ? set->tensors[i] : NULL;
}

size_t st_set_num_files(const st_set *set)
{
    return set ? set->n_files : 0;
}

const char *st_set_file_path(const st_set *set, int file_index)
{
    if (!set || file_index < 0 || (size_t)file_index >= set->n_files) return NULL;
    return set->files[file_index]->path;
}
