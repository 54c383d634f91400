/*
 * test_safetensors.c - the safetensors reader: a valid file, every kind of corruption the parser
 * must reject (with a message naming the file and tensor), and sharded sets with and without an
 * index. Files are written from C into a temporary directory that is removed at the end.
 */
#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char root_dir[] = "/tmp/dsv4_test_st_XXXXXX";
static int case_count;

/* A fresh, empty directory under the temporary root. */
static void new_case_dir(char *out, size_t size)
{
    snprintf(out, size, "%s/case%03d", root_dir, case_count++);
    if (mkdir(out, 0700) != 0) perror(out);
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return;
    }
    if (len && fwrite(data, 1, len, f) != len) perror(path);
    fclose(f);
}

/* Writes a safetensors file: u64 LE header length, the header, then `data_len` bytes whose
 * value is their offset mod 251 (so a test can tell tensors' bytes apart). */
static void write_st(const char *dir, const char *name, const char *header, size_t data_len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t hlen = strlen(header);
    size_t total = 8 + hlen + data_len;
    unsigned char *buf = malloc(total);
    if (!buf) return;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++) buf[8 + hlen + i] = (unsigned char)(i % 251);
    write_bytes(path, buf, total);
    free(buf);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_bytes(path, text, strlen(text));
}

/* Removes one case directory (it only ever holds plain files). */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char path[1024];
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static void remove_all(void)
{
    char dir[256];
    for (int i = 0; i < case_count; i++) {
        snprintf(dir, sizeof dir, "%s/case%03d", root_dir, i);
        remove_dir(dir);
    }
    rmdir(root_dir);
}

/* ------------------------------------------------------------------------------------------
 * A valid single file
 * ---------------------------------------------------------------------------------------- */

static void test_valid_file(void)
{
    char dir[256];
    new_case_dir(dir, sizeof dir);
    /* 24 + 8 + 4 + 8 = 44 data bytes; padded with spaces as safetensors does. */
    const char *header = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
                         "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                         "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                         "\"q\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,2],\"data_offsets\":[32,36]},"
                         "\"empty\":{\"dtype\":\"U8\",\"shape\":[0,5],\"data_offsets\":[36,36]},"
                         "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[36,44]},"
                         "\"e8\":{\"dtype\":\"F8_E8M0\",\"shape\":[0],\"data_offsets\":[44,44]}}"
                         "       ";
    write_st(dir, "model.safetensors", header, 44);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);

    st_file *f = NULL;
    dsv4_status s = st_file_open(path, &f);
    CHECK_MSG(s == DSV4_OK, "%s", dsv4_last_error());
    if (s != DSV4_OK) return;
    CHECK(f->n_tensors == 6);
    CHECK(f->file_size == 8 + strlen(header) + 44);
    CHECK(f->data_offset == 8 + strlen(header));
    CHECK(!strcmp(f->path, path));
    const st_tensor *w = &f->tensors[0];
    CHECK(!strcmp(w->name, "w") && w->dtype == DSV4_DT_F32 && w->ndim == 2);
    CHECK(w->shape[0] == 2 && w->shape[1] == 3 && w->nbytes == 24);
    CHECK(w->data == f->map + f->data_offset && w->data[5] == 5);
    const st_tensor *b = &f->tensors[1];
    CHECK(b->dtype == DSV4_DT_BF16 && b->begin == 24 && b->end == 32 && b->data[0] == 24);
    CHECK(f->tensors[2].dtype == DSV4_DT_F8_E4M3 && f->tensors[2].nbytes == 4);
    const st_tensor *e = &f->tensors[3];
    CHECK(!strcmp(e->name, "empty") && e->nbytes == 0 && e->shape[0] == 0 && e->shape[1] == 5);
    const st_tensor *sc = &f->tensors[4];
    CHECK(sc->dtype == DSV4_DT_I64 && sc->ndim == 0 && sc->nbytes == 8 && sc->data[0] == 36);
    CHECK(f->tensors[5].dtype == DSV4_DT_F8_E8M0 && f->tensors[5].nbytes == 0);
    for (size_t i = 0; i < f->n_tensors; i++) CHECK(f->tensors[i].file_index == 0);
    st_file_close(f);

    /* The same directory as a set: model.safetensors alone. */
    st_set *set = NULL;
    s = st_set_open(dir, &set);
    CHECK_MSG(s == DSV4_OK, "%s", dsv4_last_error());
    if (s != DSV4_OK) return;
    CHECK(st_set_num_files(set) == 1 && st_set_count(set) == 6);
    CHECK(!strcmp(st_set_file_path(set, 0), path));
    CHECK(st_set_file_path(set, 1) == NULL && st_set_file_path(set, -1) == NULL);
    const st_tensor *t = st_set_find(set, "q");
    CHECK(t && t->dtype == DSV4_DT_F8_E4M3 && t->data[0] == 32);
    CHECK(st_set_find(set, "__metadata__") == NULL);
    CHECK(st_set_find(set, "missing") == NULL);
    CHECK(st_set_at(set, 0) == st_set_find(set, "w"));
    CHECK(st_set_at(set, 6) == NULL);
    st_set_close(set);

    /* An empty header object is a valid file with no tensors. */
    new_case_dir(dir, sizeof dir);
    write_st(dir, "none.safetensors", "{}  ", 0);
    snprintf(path, sizeof path, "%s/none.safetensors", dir);
    s = st_file_open(path, &f);
    CHECK_MSG(s == DSV4_OK, "%s", dsv4_last_error());
    if (s == DSV4_OK) {
        CHECK(f->n_tensors == 0);
        st_file_close(f);
    }
}

/* ------------------------------------------------------------------------------------------
 * Corruptions
 * ---------------------------------------------------------------------------------------- */

/* Opens dir/name and expects `want`, a NULL handle, and a message holding the file name and
 * up to two more pieces (NULL to skip). */
static void expect_open_error(const char *dir, const char *name, dsv4_status want,
                              const char *needle1, const char *needle2)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    st_file *f = (st_file *)&f; /* must be reset to NULL */
    dsv4_clear_error();
    dsv4_status s = st_file_open(path, &f);
    CHECK_MSG(s == want, "%s: got %s, want %s (%s)", name, dsv4_status_name(s),
              dsv4_status_name(want), dsv4_last_error());
    CHECK(f == NULL);
    if (s == DSV4_OK) st_file_close(f);
    const char *msg = dsv4_last_error();
    CHECK_CONTAINS(msg, name);
    if (needle1) CHECK_CONTAINS(msg, needle1);
    if (needle2) CHECK_CONTAINS(msg, needle2);
}

/* A one-entry header around `entry` (the JSON value for tensor "t.w"), with `data_len` bytes. */
static void expect_entry_error(const char *dir, const char *name, const char *entry,
                               size_t data_len, dsv4_status want, const char *needle)
{
    char header[1024];
    snprintf(header, sizeof header, "{\"t.w\":%s}", entry);
    write_st(dir, name, header, data_len);
    expect_open_error(dir, name, want, "'t.w'", needle);
}

static void test_corrupt_files(void)
{
    char dir[256];
    new_case_dir(dir, sizeof dir);

    /* File-level damage. */
    {
        char path[512];
        snprintf(path, sizeof path, "%s/empty.safetensors", dir);
        write_bytes(path, "", 0);
        snprintf(path, sizeof path, "%s/short.safetensors", dir);
        write_bytes(path, "\x10\x00\x00", 3);
        snprintf(path, sizeof path, "%s/zero_len.safetensors", dir);
        write_bytes(path, "\0\0\0\0\0\0\0\0{}", 10);
        snprintf(path, sizeof path, "%s/past_end.safetensors", dir);
        write_bytes(path, "\x40\x00\x00\x00\x00\x00\x00\x00{}", 10);
        snprintf(path, sizeof path, "%s/huge_len.safetensors", dir);
        write_bytes(path, "\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10);
    }
    expect_open_error(dir, "empty.safetensors", DSV4_ERR_FORMAT, "empty", NULL);
    expect_open_error(dir, "short.safetensors", DSV4_ERR_FORMAT, "3 bytes", NULL);
    expect_open_error(dir, "zero_len.safetensors", DSV4_ERR_FORMAT, "header length is 0", NULL);
    expect_open_error(dir, "past_end.safetensors", DSV4_ERR_FORMAT, "header length 64", NULL);
    expect_open_error(dir, "huge_len.safetensors", DSV4_ERR_FORMAT, "limit", NULL);
    expect_open_error(dir, "absent.safetensors", DSV4_ERR_IO, "cannot open", NULL);

    /* A valid header whose data region was cut short. */
    write_st(dir, "truncated.safetensors",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 10);
    expect_open_error(dir, "truncated.safetensors", DSV4_ERR_FORMAT, "'a'", "10 bytes");

    /* Header-level damage. */
    write_st(dir, "bad_json.safetensors", "{\"a\":{\"dtype\":\"F32\",", 0);
    expect_open_error(dir, "bad_json.safetensors", DSV4_ERR_FORMAT, "invalid JSON", NULL);
    write_st(dir, "array.safetensors", "[1, 2]", 0);
    expect_open_error(dir, "array.safetensors", DSV4_ERR_FORMAT, "expected '{'", NULL);
    write_st(dir, "trailing.safetensors", "{} x", 0);
    expect_open_error(dir, "trailing.safetensors", DSV4_ERR_FORMAT, "after the JSON", NULL);
    write_st(dir, "utf8.safetensors",
             "{\"a\xc3\x28\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
    expect_open_error(dir, "utf8.safetensors", DSV4_ERR_FORMAT, "UTF-8", NULL);
    write_st(dir, "meta.safetensors", "{\"__metadata__\":{\"k\":1}}", 0);
    expect_open_error(dir, "meta.safetensors", DSV4_ERR_FORMAT, "__metadata__", "'k'");
    write_st(dir, "meta2.safetensors", "{\"__metadata__\":[]}", 0);
    expect_open_error(dir, "meta2.safetensors", DSV4_ERR_FORMAT, "__metadata__", NULL);

    /* Entry-level damage: each message names the tensor. */
    expect_entry_error(dir, "not_object.safetensors", "[1]", 0, DSV4_ERR_FORMAT,
                       "expected an object");
    expect_entry_error(dir, "dtype_e5m2.safetensors",
                       "{\"dtype\":\"F8_E5M2\",\"shape\":[1],\"data_offsets\":[0,1]}", 1,
                       DSV4_ERR_TENSOR_DTYPE, "'F8_E5M2'");
    expect_entry_error(dir, "dtype_q4.safetensors",
                       "{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}", 1,
                       DSV4_ERR_TENSOR_DTYPE, "'Q4'");
    expect_entry_error(dir, "dtype_num.safetensors",
                       "{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,1]}", 1, DSV4_ERR_FORMAT,
                       "\"dtype\" must be a string");
    expect_entry_error(dir, "negative.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}", 0,
                       DSV4_ERR_FORMAT, "shape[0] is -1");
    expect_entry_error(dir, "fraction.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[2,2.5],\"data_offsets\":[0,5]}", 5,
                       DSV4_ERR_FORMAT, "shape[1] is 2.5");
    expect_entry_error(dir, "string_dim.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[\"4\"],\"data_offsets\":[0,4]}", 4,
                       DSV4_ERR_FORMAT, "shape[0] is a string");
    expect_entry_error(dir, "big_dim.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[9007199254740994],\"data_offsets\":[0,4]}", 4,
                       DSV4_ERR_FORMAT, "2^53");
    expect_entry_error(dir, "inf_dim.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[1e999],\"data_offsets\":[0,4]}", 4,
                       DSV4_ERR_FORMAT, "shape[0]");
    expect_entry_error(dir, "overflow.safetensors",
                       "{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,2],"
                       "\"data_offsets\":[0,4]}",
                       4, DSV4_ERR_FORMAT, "overflows");
    expect_entry_error(dir, "overflow_bytes.safetensors",
                       "{\"dtype\":\"I64\",\"shape\":[4294967296,536870912],"
                       "\"data_offsets\":[0,4]}",
                       4, DSV4_ERR_FORMAT, "overflows");
    expect_entry_error(dir, "dims.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}", 1,
                       DSV4_ERR_FORMAT, "9 dimensions");
    expect_entry_error(dir, "lying.safetensors",
                       "{\"dtype\":\"F8_E4M3\",\"shape\":[1024,4096],\"data_offsets\":[0,100]}",
                       100, DSV4_ERR_FORMAT,
                       "shape [1024, 4096] of F8_E4M3 needs 4194304 bytes but data_offsets "
                       "span 100");
    expect_entry_error(dir, "beyond.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}", 8,
                       DSV4_ERR_FORMAT, "past the end");
    expect_entry_error(dir, "reversed.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}", 8,
                       DSV4_ERR_FORMAT, "end before");
    expect_entry_error(dir, "three_offsets.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}", 2,
                       DSV4_ERR_FORMAT, "2 integers");
    expect_entry_error(dir, "neg_offset.safetensors",
                       "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}", 2,
                       DSV4_ERR_FORMAT, "data_offsets");
    expect_entry_error(dir, "no_offsets.safetensors", "{\"dtype\":\"U8\",\"shape\":[1]}", 1,
                       DSV4_ERR_FORMAT, "missing field \"data_offsets\"");
    expect_entry_error(dir, "no_shape.safetensors", "{\"dtype\":\"U8\",\"data_offsets\":[0,1]}", 1,
                       DSV4_ERR_FORMAT, "missing field \"shape\"");
    expect_entry_error(dir, "no_dtype.safetensors", "{\"shape\":[1],\"data_offsets\":[0,1]}", 1,
                       DSV4_ERR_FORMAT, "missing field \"dtype\"");
    expect_entry_error(dir, "twice.safetensors",
                       "{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}",
                       1, DSV4_ERR_FORMAT, "appears twice");

    /* Layout damage across entries. */
    write_st(dir, "overlap.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
             "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}",
             10);
    expect_open_error(dir, "overlap.safetensors", DSV4_ERR_FORMAT, "'a'", "'b'");
    write_st(dir, "dup.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
             "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}",
             4);
    expect_open_error(dir, "dup.safetensors", DSV4_ERR_FORMAT, "'a'", "twice");

    /* An empty tensor inside another's bytes owns nothing and is fine. */
    write_st(dir, "inner_empty.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
             "\"z\":{\"dtype\":\"U8\",\"shape\":[3,0],\"data_offsets\":[4,4]}}",
             8);
    char path[512];
    snprintf(path, sizeof path, "%s/inner_empty.safetensors", dir);
    st_file *f = NULL;
    dsv4_status s = st_file_open(path, &f);
    CHECK_MSG(s == DSV4_OK, "%s", dsv4_last_error());
    st_file_close(f);
}

/* st_parse_header directly: it is pure, and must not touch data it was not given. */
static void test_parse_header(void)
{
    st_tensor *t = NULL;
    size_t n = 99;
    char *names = NULL;
    const char *h = "{\"x\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    CHECK(st_parse_header(h, strlen(h), 8, "hdr", &t, &n, &names) == DSV4_OK);
    CHECK(n == 1 && t && t[0].data == NULL && t[0].dtype == DSV4_DT_I32);
    st_tensors_free(t, names);
    CHECK(st_parse_header(h, strlen(h), 7, "hdr", &t, &n, &names) == DSV4_ERR_FORMAT);
    CHECK(t == NULL && n == 0 && names == NULL);
    CHECK_CONTAINS(dsv4_last_error(), "hdr: tensor 'x'");
    /* The length bounds what is parsed: a valid prefix does not pass for the whole. */
    CHECK(st_parse_header(h, 10, 8, "hdr", &t, &n, &names) == DSV4_ERR_FORMAT);
    CHECK(st_parse_header("{}", 0, 0, "hdr", &t, &n, &names) == DSV4_ERR_FORMAT);
    CHECK(st_parse_header("{}\0 ", 4, 0, "hdr", &t, &n, &names) == DSV4_ERR_FORMAT);
    CHECK(st_parse_header("{}\n\t ", 5, 0, "hdr", &t, &n, &names) == DSV4_OK && n == 0);
}

/* ------------------------------------------------------------------------------------------
 * Sharded sets
 * ---------------------------------------------------------------------------------------- */

static const char *SHARD1 = "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                            "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}";
static const char *SHARD2 = "{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"extra\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}";

static void write_shards(const char *dir)
{
    write_st(dir, "model-00001-of-00002.safetensors", SHARD1, 8);
    write_st(dir, "model-00002-of-00002.safetensors", SHARD2, 6);
}

static void expect_set_error(const char *dir, dsv4_status want, const char *needle1,
                             const char *needle2)
{
    st_set *set = (st_set *)&set;
    dsv4_clear_error();
    dsv4_status s = st_set_open(dir, &set);
    CHECK_MSG(s == want, "got %s, want %s (%s)", dsv4_status_name(s), dsv4_status_name(want),
              dsv4_last_error());
    CHECK(set == NULL);
    if (s == DSV4_OK) st_set_close(set);
    if (needle1) CHECK_CONTAINS(dsv4_last_error(), needle1);
    if (needle2) CHECK_CONTAINS(dsv4_last_error(), needle2);
}

static void test_indexed_set(void)
{
    char dir[256];
    new_case_dir(dir, sizeof dir);
    write_shards(dir);
    write_text(dir, "model.safetensors.index.json",
               "{\n  \"metadata\": {\"total_size\": 14},\n  \"weight_map\": {\n"
               "    \"c\": \"model-00002-of-00002.safetensors\",\n"
               "    \"a\": \"model-00001-of-00002.safetensors\",\n"
               "    \"b\": \"model-00001-of-00002.safetensors\"\n  }\n}\n");
    /* A stray file the index does not name is not opened. */
    write_st(dir, "stray.safetensors", "{}", 0);
    st_set *set = NULL;
    dsv4_status s = st_set_open(dir, &set);
    CHECK_MSG(s == DSV4_OK, "%s", dsv4_last_error());
    if (s == DSV4_OK) {
        CHECK(st_set_num_files(set) == 2);
        CHECK(st_set_count(set) == 4); /* "extra" is in a shard, not in the index: included */
        CHECK(strstr(st_set_file_path(set, 0), "model-00001-of-00002.safetensors") != NULL);
        CHECK(strstr(st_set_file_path(set, 1), "model-00002-of-00002.safetensors") != NULL);
        const st_tensor *a = st_set_find(set, "a"), *c = st_set_find(set, "c");
        const st_tensor *x = st_set_find(set, "extra");
        CHECK(a && a->file_index == 0 && a->dtype == DSV4_DT_BF16 && a->data[1] == 1);
        CHECK(c && c->file_index == 1 && c->nbytes == 4 && c->data[3] == 3);
        CHECK(x && x->file_index == 1 && x->data[0] == 4);
        CHECK(st_set_find(set, "d") == NULL && st_set_find(set, "") == NULL);
        CHECK(st_set_find(set, "a ") == NULL && st_set_find(set, NULL) == NULL);
        for (size_t i = 0; i < st_set_count(set); i++)
            CHECK(st_set_find(set, st_set_at(set, i)->name) == st_set_at(set, i));
        st_set_close(set);
    }

    /* The index names a file that does not exist. */
    new_case_dir(dir, sizeof dir);
    write_shards(dir);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
               "\"q\":\"model-00003-of-00002.safetensors\"}}");
    expect_set_error(dir, DSV4_ERR_IO, "model-00003-of-00002.safetensors", "index.json");

    /* The index puts a tensor in a shard that lacks it. */
    new_case_dir(dir, sizeof dir);
    write_shards(dir);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
               "\"ghost\":\"model-00002-of-00002.safetensors\"}}");
    expect_set_error(dir, DSV4_ERR_FORMAT, "'ghost'", "model-00002-of-00002.safetensors");

    /* ... or in the wrong shard. */
    new_case_dir(dir, sizeof dir);
    write_shards(dir);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"c\":\"model-00001-of-00002.safetensors\","
               "\"a\":\"model-00002-of-00002.safetensors\"}}");
    expect_set_error(dir, DSV4_ERR_FORMAT, "'", "but it is in");

    /* Path traversal, in several spellings. */
    const char *bad_names[] = {"../model-00001-of-00002.safetensors", "sub/x.safetensors", "..", "",
                               "/etc/passwd"};
    for (size_t i = 0; i < sizeof bad_names / sizeof *bad_names; i++) {
        new_case_dir(dir, sizeof dir);
        write_shards(dir);
        char index[256];
        snprintf(index, sizeof index, "{\"weight_map\":{\"a\":\"%s\"}}", bad_names[i]);
        write_text(dir, "model.safetensors.index.json", index);
        expect_set_error(dir, DSV4_ERR_FORMAT, "not a plain file name", "'a'");
    }

    /* Malformed index files. */
    const struct {
        const char *text, *needle;
    } bad_index[] = {
        {"{\"weight_map\":{\"a\":", "invalid JSON"},
        {"[]", "object"},
        {"{\"metadata\":{}}", "weight_map"},
        {"{\"weight_map\":[]}", "weight_map"},
        {"{\"weight_map\":{}}", "empty"},
        {"{\"weight_map\":{\"a\":1}}", "'a'"},
        {"{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\"},\"metadata\":3}",
         "metadata"},
        {"{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
         "\"a\":\"model-00001-of-00002.safetensors\"}}",
         "twice"},
    };
    for (size_t i = 0; i < sizeof bad_index / sizeof *bad_index; i++) {
        new_case_dir(dir, sizeof dir);
        write_shards(dir);
        write_text(dir, "model.safetensors.index.json", bad_index[i].text);
        expect_set_error(dir, DSV4_ERR_FORMAT, "model.safetensors.index.json", bad_index[i].needle);
    }

    /* A broken shard behind a valid index: the message names the shard. */
    new_case_dir(dir, sizeof dir);
    write_st(dir, "s1.safetensors",
             "{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"s1.safetensors\"}}");
    expect_set_error(dir, DSV4_ERR_TENSOR_DTYPE, "s1.safetensors", "'a'");
}

static void test_listed_set(void)
{
    /* No index, no model.safetensors: every *.safetensors, in name order. */
    char dir[256];
    new_case_dir(dir, sizeof dir);
    write_st(dir, "b.safetensors", SHARD2, 6);
    write_st(dir, "a.safetensors", SHARD1, 8);
    write_text(dir, "notes.txt", "not a shard");
    write_st(dir, ".hidden.safetensors", "garbage", 0);
    st_set *set = NULL;
    dsv4_status s = st_set_open(dir, &set);
    CHECK_MSG(s == DSV4_OK, "%s", dsv4_last_error());
    if (s == DSV4_OK) {
        CHECK(st_set_num_files(set) == 2 && st_set_count(set) == 4);
        CHECK(strstr(st_set_file_path(set, 0), "/a.safetensors") != NULL);
        CHECK(strstr(st_set_file_path(set, 1), "/b.safetensors") != NULL);
        const st_tensor *c = st_set_find(set, "c");
        CHECK(c && c->file_index == 1);
        CHECK(st_set_at(set, 0) == st_set_find(set, "a"));
        st_set_close(set);
    }

    /* The same tensor in two shards. */
    new_case_dir(dir, sizeof dir);
    write_st(dir, "x1.safetensors", SHARD1, 8);
    write_st(dir, "x2.safetensors", SHARD1, 8);
    expect_set_error(dir, DSV4_ERR_FORMAT, "'a'", "x2.safetensors");

    /* Nothing to open. */
    new_case_dir(dir, sizeof dir);
    write_text(dir, "config.json", "{}");
    expect_set_error(dir, DSV4_ERR_IO, "no *.safetensors files in", dir);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/does-not-exist", dir);
    expect_set_error(missing, DSV4_ERR_IO, "does-not-exist", NULL);
}

/* A 128 GiB sparse file: opening it maps the whole file but reads only the header, so it must
 * be quick and use no memory for the data region. Skipped where the file system refuses. */
static void test_sparse_file(void)
{
    char dir[256], path[512];
    new_case_dir(dir, sizeof dir);
    const char *header = "{\"big\":{\"dtype\":\"U8\",\"shape\":[131072,1048576],"
                         "\"data_offsets\":[0,137438953472]},"
                         "\"tail\":{\"dtype\":\"F32\",\"shape\":[2],"
                         "\"data_offsets\":[137438953472,137438953480]}}";
    write_st(dir, "sparse.safetensors", header, 0);
    snprintf(path, sizeof path, "%s/sparse.safetensors", dir);
    off_t size = (off_t)(8 + strlen(header)) + ((off_t)1 << 37) + 8;
    if (truncate(path, size) != 0) {
        printf("sparse file test skipped: truncate to %lld bytes failed\n", (long long)size);
        return;
    }
    st_file *f = NULL;
    dsv4_status s = st_file_open(path, &f);
    CHECK_MSG(s == DSV4_OK, "%s", dsv4_last_error());
    if (s != DSV4_OK) return;
    CHECK(f->file_size == (uint64_t)size && f->n_tensors == 2);
    CHECK(f->tensors[1].data == f->map + f->data_offset + ((uint64_t)1 << 37));
    CHECK(f->tensors[1].data[7] == 0); /* a hole reads as zeros */
    st_file_close(f);
}

/* Many tensors: the hash table must find every one (and probe past collisions). */
static void test_many_tensors(void)
{
    enum { N = 5000 };
    size_t cap = (size_t)N * 80 + 16;
    char *header = malloc(cap);
    if (!header) return;
    size_t at = 0;
    at += (size_t)snprintf(header + at, cap - at, "{");
    for (int i = 0; i < N; i++)
        at += (size_t)snprintf(header + at, cap - at,
                               "%s\"layers.%d.w\":{\"dtype\":\"U8\",\"shape\":[2],"
                               "\"data_offsets\":[%d,%d]}",
                               i ? "," : "", i, 2 * i, 2 * i + 2);
    snprintf(header + at, cap - at, "}");
    char dir[256];
    new_case_dir(dir, sizeof dir);
    write_st(dir, "model.safetensors", header, 2 * N);
    free(header);
    st_set *set = NULL;
    dsv4_status s = st_set_open(dir, &set);
    CHECK_MSG(s == DSV4_OK, "%s", dsv4_last_error());
    if (s != DSV4_OK) return;
    int found = 0;
    char name[64];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "layers.%d.w", i);
        const st_tensor *t = st_set_find(set, name);
        found += t && t->begin == (uint64_t)(2 * i);
        snprintf(name, sizeof name, "layers.%d.v", i);
        found -= st_set_find(set, name) != NULL;
    }
    CHECK(found == N);
    st_set_close(set);
}

int main(void)
{
    if (!mkdtemp(root_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_valid_file();
    test_parse_header();
    test_corrupt_files();
    test_indexed_set();
    test_listed_set();
    test_many_tensors();
    test_sparse_file();
    remove_all();
    return test_finish();
}
