/*
 * cli_generate.c - the shared part of `dsv4 run`, `dsv4 chat` and `dsv4 score` (see
 * cli_generate.h). The weights are memory-mapped by the library; reading the files once here,
 * before the first forward pass, is what "loading" means for a mapped checkpoint, and it lets
 * the user see the progress instead of a first token that takes minutes.
 */
#include "cli_generate.h"
#include "commands.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void cli_gen_defaults(cli_gen_args *a, int64_t max_tokens)
{
    memset(a, 0, sizeof *a);
    dsv4_gen_options_default(&a->gen);
    dsv4_session_options_default(&a->session);
    a->session.device = DSV4_DEVICE_AUTO; /* the CLI uses the GPU when one answers */
    a->gen.max_tokens = max_tokens;
    a->gen.stop = a->stop;
    a->gen.sampling.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
}

static int bad_value(const char *cmd, const char *flag, const char *v, const char *want)
{
    fprintf(stderr, "dsv4 %s: %s '%s': expected %s\n", cmd, flag, v ? v : "(missing)", want);
    return -1;
}

static int parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno) return 0;
    *out = (float)v;
    return 1;
}

static int parse_i64(const char *s, int64_t lo, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo) return 0;
    *out = v;
    return 1;
}

int cli_gen_flag(const char *cmd, int argc, char **argv, int *i, cli_gen_args *a)
{
    const char *f = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    float x;
    int64_t n;
#define TAKE_STR(name, dst)                                                                        \
    if (!strcmp(f, name)) {                                                                        \
        if (!v) return bad_value(cmd, f, v, "a value");                                            \
        dst = v;                                                                                   \
        ++*i;                                                                                      \
        return 1;                                                                                  \
    }
#define TAKE_FLOAT(name, dst)                                                                      \
    if (!strcmp(f, name)) {                                                                        \
        if (!v || !parse_float(v, &x)) return bad_value(cmd, f, v, "a number");                    \
        dst = x;                                                                                   \
        ++*i;                                                                                      \
        return 1;                                                                                  \
    }
    if (!strcmp(f, "-m")) f = "--model";
    if (!strcmp(f, "-p")) f = "--prompt";
    if (!strcmp(f, "-n")) f = "--max-tokens";
    if (!strcmp(f, "--temp")) f = "--temperature";
    TAKE_STR("--model", a->model);
    TAKE_STR("--tokenizer", a->tokenizer);
    TAKE_STR("--prompt", a->prompt);
    TAKE_STR("--ids", a->ids);
    TAKE_STR("--system", a->system);
    TAKE_FLOAT("--temperature", a->gen.sampling.temperature);
    TAKE_FLOAT("--top-p", a->gen.sampling.top_p);
    TAKE_FLOAT("--min-p", a->gen.sampling.min_p);
    TAKE_FLOAT("--repetition-penalty", a->gen.sampling.repetition_penalty);
    TAKE_FLOAT("--presence-penalty", a->gen.sampling.presence_penalty);
    TAKE_FLOAT("--frequency-penalty", a->gen.sampling.frequency_penalty);
    if (!strcmp(f, "--top-k")) {
        if (!v || !parse_i64(v, 0, &n) || n > INT32_MAX)
            return bad_value(cmd, f, v, "an integer >= 0");
        a->gen.sampling.top_k = (int)n;
    } else if (!strcmp(f, "--seed")) {
        char *end;
        errno = 0;
        unsigned long long s = v ? strtoull(v, &end, 10) : 0;
        if (!v || end == v || *end || errno || *v == '-')
            return bad_value(cmd, f, v, "an unsigned integer");
        a->gen.sampling.seed = s;
        a->seed_given = 1;
    } else if (!strcmp(f, "--max-tokens")) {
        if (!v || !parse_i64(v, 1, &n)) return bad_value(cmd, f, v, "an integer >= 1");
        a->gen.max_tokens = n;
    } else if (!strcmp(f, "--context")) {
        if (!v || !parse_i64(v, 2, &n)) return bad_value(cmd, f, v, "an integer >= 2");
        a->session.max_context = n;
    } else if (!strcmp(f, "--threads")) {
        if (!v || !parse_i64(v, 1, &n) || n > 4096)
            return bad_value(cmd, f, v, "an integer in [1, 4096]");
        a->session.n_threads = (int)n;
    } else if (!strcmp(f, "--top-logprobs")) {
        if (!v || !parse_i64(v, 0, &n) || n > 20)
            return bad_value(cmd, f, v, "an integer in [0, 20]");
        a->gen.top_logprobs = (int)n;
    } else if (!strcmp(f, "--stop")) {
        if (!v || !*v) return bad_value(cmd, f, v, "a non-empty string");
        if (a->gen.n_stop == CLI_MAX_STOP) return bad_value(cmd, f, v, "at most 16 stop strings");
        a->stop[a->gen.n_stop++] = v;
    } else if (!strcmp(f, "--device")) {
        if (v && !strcmp(v, "auto"))
            a->session.device = DSV4_DEVICE_AUTO;
        else if (v && !strcmp(v, "cpu"))
            a->session.device = DSV4_DEVICE_CPU;
        else if (v && !strcmp(v, "cuda"))
            a->session.device = DSV4_DEVICE_CUDA;
        else
            return bad_value(cmd, f, v, "auto, cpu or cuda");
    } else if (!strcmp(f, "--mode")) {
        if (v && !strcmp(v, "exact"))
            a->session.mode = DSV4_MODE_EXACT;
        else if (v && !strcmp(v, "faithful"))
            a->session.mode = DSV4_MODE_FAITHFUL;
        else
            return bad_value(cmd, f, v, "exact or faithful");
    } else if (!strcmp(f, "--output")) {
        if (v && !strcmp(v, "json"))
            a->json = 1;
        else if (v && !strcmp(v, "text"))
            a->json = 0;
        else
            return bad_value(cmd, f, v, "text or json");
    } else if (!strcmp(f, "--ignore-eos")) {
        a->gen.ignore_eos = 1;
        return 1;
    } else if (!strcmp(f, "--think")) {
        a->think = 1;
        return 1;
    } else if (!strcmp(f, "--no-bos")) {
        a->no_bos = 1;
        return 1;
    } else if (!strcmp(f, "-q") || !strcmp(f, "--quiet")) {
        a->quiet = 1;
        return 1;
    } else {
        return 0;
    }
    ++*i;
    return 1;
#undef TAKE_STR
#undef TAKE_FLOAT
}

int cli_gen_check(const char *cmd, cli_gen_args *a)
{
    dsv4_sampler *s;
    dsv4_status st = dsv4_sampler_create(&a->gen.sampling, 1, &s);
    if (st != DSV4_OK) {
        fprintf(stderr, "dsv4 %s: bad sampling value: %s\n", cmd, dsv4_last_error());
        return 2;
    }
    dsv4_sampler_close(s);
    return 0;
}

void cli_gen_usage(FILE *f)
{
    fprintf(f, "model:\n"
               "  -m, --model DIR          checkpoint directory (config.json, *.safetensors)\n"
               "  --tokenizer FILE         tokenizer.json (default: DIR/tokenizer.json)\n"
               "  --mode exact|faithful    numerics (default faithful; exact = HF float32)\n"
               "  --context N              context length (default: the model's)\n"
               "  --threads N              CPU threads (default: all)\n"
               "  --device auto|cpu|cuda   where to run (default auto: the GPU when one answers;\n"
               "                           the GPU runs faithful mode, exact mode the CPU)\n"
               "sampling (defaults: the model card's temperature 1, top-p 1):\n"
               "  --temperature, --temp T  0 = greedy\n"
               "  --top-k K  --top-p P  --min-p P\n"
               "  --repetition-penalty R   divides positive / multiplies negative logits of\n"
               "                           tokens in the prompt or generated (1 = off)\n"
               "  --presence-penalty P     subtracted once from each generated token (0 = off)\n"
               "  --frequency-penalty F    subtracted count x F times (0 = off)\n"
               "  --seed N                 random seed (default: from the clock)\n"
               "stopping:\n"
               "  -n, --max-tokens N       tokens to generate at most\n"
               "  --stop STR               stop string (repeatable, never printed)\n"
               "  --ignore-eos             EOS and <｜User｜> do not stop\n"
               "  -q, --quiet              no closing statistics line on stderr\n");
}

/* The size of every *.safetensors file in dir, and their count. */
static uint64_t weight_files(const char *dir, char ***names, int *n)
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    uint64_t total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors")) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) || !S_ISREG(st.st_mode)) continue;
        char **nn = realloc(*names, (size_t)(*n + 1) * sizeof *nn);
        if (!nn) break;
        *names = nn;
        (*names)[(*n)++] = strdup(path);
        total += (uint64_t)st.st_size;
    }
    closedir(d);
    return total;
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Reads every weight file once (into the page cache the mapping uses), with a progress bar
 * when stderr is a terminal. Skipped when the files would not fit in half the memory. */
static void warm_weights(const char *dir)
{
    char **names;
    int n;
    uint64_t total = weight_files(dir, &names, &n);
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    int tty = isatty(STDERR_FILENO);
    int warm = pages > 0 && psize > 0 && total < (uint64_t)pages * (uint64_t)psize / 2;
    size_t bufsz = 8u << 20;
    char *buf = warm ? malloc(bufsz) : NULL;
    uint64_t done = 0;
    double t0 = seconds_now(), shown = 0;
    for (int i = 0; i < n && buf; i++) {
        int fd = open(names[i], O_RDONLY);
        if (fd < 0) continue;
        ssize_t got;
        while ((got = read(fd, buf, bufsz)) > 0) {
            done += (uint64_t)got;
            double t = seconds_now();
            if (tty && (t - shown > 0.1 || done == total)) {
                shown = t;
                double mb = 1.0 / (1 << 20);
                int w = 30, fill = total ? (int)((double)done / (double)total * w) : w;
                fprintf(stderr, "\rloading weights [%.*s%*s] %.0f / %.0f MiB, %.0f MiB/s ", fill,
                        "##############################", w - fill, "", (double)done * mb,
                        (double)total * mb, (double)done * mb / (t - t0 > 1e-9 ? t - t0 : 1e-9));
            }
        }
        close(fd);
    }
    if (tty && buf) fprintf(stderr, "\r\033[K");
    free(buf);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* The embedded test model (models/dsv4-tiny, issue 6) that `run` and `chat` use without -m:
 * $DSV4_DEFAULT_MODEL when set (empty: none), else the source tree's copy named at build time,
 * else models/dsv4-tiny beside the executable or one level up. NULL when there is none. */
static const char *default_model(void)
{
    static char buf[4096];
    const char *e = getenv("DSV4_DEFAULT_MODEL");
    if (e) return *e ? e : NULL;
    struct stat st;
#ifdef DSV4_DEFAULT_MODEL_DIR
    if (!stat(DSV4_DEFAULT_MODEL_DIR, &st) && S_ISDIR(st.st_mode)) return DSV4_DEFAULT_MODEL_DIR;
#endif
    char exe[2048];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return NULL;
    *slash = 0;
    static const char *rel[] = {"models/dsv4-tiny", "../models/dsv4-tiny"};
    for (int i = 0; i < 2; i++) {
        snprintf(buf, sizeof buf, "%s/%s", exe, rel[i]);
        if (!stat(buf, &st) && S_ISDIR(st.st_mode)) return buf;
    }
    return NULL;
}

int cli_open(const char *cmd, const cli_gen_args *a, int need_tok, dsv4_model **m,
             dsv4_tokenizer **tok)
{
    *m = NULL;
    *tok = NULL;
    cli_gen_args da;
    if (!a->model && (!strcmp(cmd, "run") || !strcmp(cmd, "chat")) && default_model()) {
        da = *a;
        da.model = default_model();
        a = &da;
        fprintf(stderr,
                "dsv4 %s: no -m given: using the embedded test model %s (a tiny "
                "DeepSeek-V4 that knows capitals, not a real model)\n",
                cmd, a->model);
    }
    if (!a->model) {
        fprintf(stderr, "dsv4 %s: no model given (-m MODEL_DIR)\n", cmd);
        return 2;
    }
    struct stat st;
    if (stat(a->model, &st) || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "dsv4 %s: model directory '%s' not found\n", cmd, a->model);
        return 1;
    }
    char path[4096];
    if (a->tokenizer)
        snprintf(path, sizeof path, "%s", a->tokenizer);
    else
        snprintf(path, sizeof path, "%s/tokenizer.json", a->model);
    int have_tok = access(path, R_OK) == 0;
    if (need_tok && !have_tok) {
        if (a->tokenizer)
            fprintf(stderr, "dsv4 %s: tokenizer file '%s' not found\n", cmd, path);
        else
            fprintf(stderr,
                    "dsv4 %s: tokenizer.json absent: %s does not exist (give --tokenizer FILE)\n",
                    cmd, path);
        return 1;
    }
    dsv4_status s = dsv4_model_open(a->model, m);
    if (s != DSV4_OK) return cli_report(cmd, s);
    if (have_tok || a->tokenizer) {
        s = dsv4_tokenizer_open(path, tok);
        if (s != DSV4_OK) {
            dsv4_model_close(*m);
            *m = NULL;
            return cli_report(cmd, s);
        }
    }
    warm_weights(a->model);
    return 0;
}

int cli_parse_ids(const char *cmd, const char *s, int32_t **ids, int64_t *n)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    *ids = malloc(cap * sizeof **ids);
    *n = 0;
    if (!*ids) return 1;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        while (*p == ' ') p++;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) break;
        (*ids)[(*n)++] = (int32_t)v;
        p = end;
        while (*p == ' ') p++;
        if (!*p) return 0;
        if (*p++ != ',') break;
    }
    fprintf(stderr, "dsv4 %s: --ids '%s': expected comma-separated token ids like 0,123,456\n", cmd,
            s);
    free(*ids);
    *ids = NULL;
    return 2;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t l = c < 0x80             ? 1
               : (c & 0xe0) == 0xc0 ? 2
               : (c & 0xf0) == 0xe0 ? 3
               : (c & 0xf8) == 0xf0 ? 4
                                    : 0;
    if (!l || l > n) return 0;
    uint32_t cp = l == 1 ? c : l == 2 ? c & 0x1f : l == 3 ? c & 0x0f : c & 0x07;
    for (size_t i = 1; i < l; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[l] || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return 0;
    return l;
}

void cli_json_string(FILE *f, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    fputc('"', f);
    for (size_t i = 0; i < len;) {
        unsigned c = u[i];
        size_t l = utf8_len(u + i, len - i);
        if (!l) {
            fputs("\\ufffd", f);
            i++;
            continue;
        }
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fwrite(u + i, 1, l, f);
        i += l;
    }
    fputc('"', f);
}

int cli_gen_parse(const char *cmd, int argc, char **argv, cli_gen_args *a, void (*usage)(FILE *))
{
    for (int i = 1; i < argc; i++) {
        int r = cli_gen_flag(cmd, argc, argv, &i, a);
        if (r < 0) return 2;
        if (r) continue;
        int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
        if (!help) fprintf(stderr, "dsv4 %s: unknown option '%s'\n", cmd, argv[i]);
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    return -1;
}

void cli_json_token_text(FILE *f, const dsv4_tokenizer *tok, int32_t id)
{
    char *t = NULL;
    size_t n = 0;
    if (tok && dsv4_tokenizer_decode(tok, &id, 1, 0, &t, &n) == DSV4_OK)
        cli_json_string(f, t, n);
    else
        fputs("null", f);
    dsv4_free(t);
}

void cli_print_stats(FILE *f, const char *cmd, const dsv4_gen_result *r, const char *stop_str)
{
    double pre = r->prefill_seconds > 0 ? (double)r->prompt_tokens / r->prefill_seconds : 0;
    double dec = r->decode_seconds > 0 && r->generated_tokens > 1
                     ? (double)(r->generated_tokens - 1) / r->decode_seconds
                     : 0;
    fprintf(f,
            "dsv4 %s: prompt %" PRId64 " tokens, prefill %.1f tok/s; generated %" PRId64
            " tokens, decode %.1f tok/s; stop: %s",
            cmd, r->prompt_tokens, pre, r->generated_tokens, dec, dsv4_stop_reason_name(r->reason));
    if (r->reason == DSV4_STOP_STRING && stop_str) {
        fputc(' ', f);
        cli_json_string(f, stop_str, strlen(stop_str));
    }
    fputc('\n', f);
}
