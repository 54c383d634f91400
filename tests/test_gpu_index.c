/*
 * test_gpu_index.c - GPU test (ctest -L gpu) of the index op group (backend.h): comp_append,
 * indexer_q and indexer_topk on the CUDA backend against the CPU backend (the reference: the
 * faithful branch of model/forward_attn.c) on fresh seeded random inputs at the real shapes.
 * Flash and Pro share the compressor shapes (head_dim 512, rope 64, indexer 64 x 128) and differ
 * in index_topk (512 / 1024).
 *
 * usage: test_gpu_index [--small]     (--small: small shapes, for compute-sanitizer)
 *
 * What is compared and why the bounds are what they are:
 * - comp_append, on prefill chunks (one slot; two slots interleaved row by row, so that the
 *   kernel's search for the rows of a window runs) and decode steps of N = 1, 2, 7, 64 rows:
 *   ring rows are copies and one f32 add: bit-exact.
 * - comp_append's entries, indexer_q: the kernels run the CPU's f32/double operations in the
 *   CPU's order, so
 *   the result is expected bit-exact. The one known source of difference: the GPU's exp, cos
 *   and sin are correctly rounded (double, rounded once) while glibc's expf/cosf/sinf are not
 *   always (about 1% of cosf/sinf results are 1 ulp off). That moves a value by ~1 f32 ulp
 *   before a bf16 rounding, which flips with probability ~2^-15 per element; a flipped input can
 *   then move FP8/FP4 outputs of its vector (through the Hadamard, or a block scale) by one grid
 *   step of the coarser of the two block scales. Bound: at most one differing vector per case
 *   (expected none), and per element |a-b| / floor <= 0.25 (FP8: one e4m3 step <= amax/8, with
 *   margin; bf16 RoPE dims: one bf16 ulp <= 2^-7 amax) or <= 1.5 (FP4: one e2m1 step at the
 *   doubled scale, 4s, with amax > 3s), floor = the amax of the element's quantisation block
 *   in the CPU result (the RoPE dims of an FP8 entry count as one block).
 * - indexer_topk, checked three ways: (a) the GPU's scores (read from its workspace) against the
 *   CPU's: the inputs are FP4-grid values as in the model (keys from Hadamard + FP4, queries
 *   likewise), so every f32 dot product on the GPU is exact, as the CPU's double one is, and the
 *   scores must be identical (bound: 0 differing); (b) the GPU's selection equals the top-k of
 *   the GPU's own scores computed on the host as the CPU does it (dsv4_op_topk, then the stable
 *   descending sort: ties lower index first), exactly, -1 padding included; (c) the GPU's
 *   selection equals the CPU's, exactly; (d) the workspace's tickets are back at zero. Rows
 *   cover n_vis = 0, below topk, = topk (no selection: only the order), topk + 1, thousands and
 *   cap_e, and a slot whose keys repeat 8 distinct vectors (every score tied hundreds of times,
 *   the cut inside a tie group); N = 1, 2, 7, 8, 64 at cap_e 1025, 4096, 16384 and 20000 (N = 64
 *   at 16384 with Flash's topk only, N <= 8 at 20000: CPU time), which take the fused kernel's
 *   step sizes 16 .. 128 and several steps per CTA; both CUDA paths (fused tensor-core, SIMT) on
 *   every case. Rows of more than 4,096 keys take the top-k's long-row select (bk_topk.cu
 *   row_topk_long: with codes cached in shared memory up to 16,832 keys, from the workspace
 *   beyond: cap_e 20000); --small runs it at cap_e 4608. The weights go in raw with the engine's
 *   w_scale. The cluster path runs every case: alone at cap_e 1025 (and 2048 with --small),
 *   split with the fused kernel beyond (rows of n_vis <= 2048 as clusters, the others fused,
 *   and where cap_e > 4096 selected by clusters again, bk_topk.cu index_select_kernel: cap_e
 *   16384 and 20000, 4608 with --small);
 *   split calls also on rows either side of 2048 (split_rows: 2048, 2049, 0, ...) at cap_e 4096
 *   and 16384, forced and auto (the dispatcher's choice, checked: clusters at N <= 16).
 * - comp_append_multi (a CSA layer's two compressors in one launch, test_comp_pair) and
 *   indexer_q_topk (indexer_q's chain in the top-k kernel's prologue, test_q_topk): each against
 *   the same GPU's single ops (today's kernels) bit for bit (and iq afterwards: each row's
 *   queries unchanged or indexer_q's, a split call's fused rows indexer_q's), and against the
 *   CPU's composition with the bounds above (their comments say which).
 * Timings: indexer_topk at N = 1, 2, 4, 8 and 64 rows with n_vis = cap_e = 16384 (64K context),
 * 1025 (the bench's 4K) and 32768 (128K), every path (op timer events), each run twice:
 * identical selections, the top-k of the GPU's scores;
 * indexer_q_topk against indexer_q + indexer_topk; indexer_q_topk at N = 1 .. 8 in a 64K engine
 * (cap_e 16384) at n_vis 1025 and 16384, fused vs auto (split).
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cuda/index_path.cuh"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/ops.h"
#include "core/float_formats.h"
#include "model/quant_sim.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>

static int g_small;

/* ---- inputs ------------------------------------------------------------------------------- */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unif(void) /* (0, 1) */
{
    return ((double)(rng_next() >> 11) + 0.5) * 0x1p-53;
}

static float rng_gauss(void)
{
    return (float)(sqrt(-2.0 * log(rng_unif())) * cos(6.283185307179586 * rng_unif()));
}

static void fill_gauss(float *x, int64_t n, float scale, float offset)
{
    for (int64_t i = 0; i < n; i++) x[i] = offset + scale * rng_gauss();
}

/* An FP4-grid vector as the indexer makes them: gaussian * scale, Hadamard, FP4 (block 32). */
static void fp4_vector(float *x, int d, float scale)
{
    fill_gauss(x, d, scale, 0.0f);
    dsv4_sim_rotate_activation(x, d);
    dsv4_sim_fp4_act_quant(x, d, 32);
}

/* ---- device helpers ----------------------------------------------------------------------- */
static dsv4_backend *g_cpu, *g_gpu;

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        dsv4_status try_st_ = (expr);                                                              \
        if (try_st_ != DSV4_OK) {                                                                  \
            fprintf(stderr, "FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #expr,                    \
                    dsv4_last_error());                                                            \
            exit(test_finish() + 1);                                                               \
        }                                                                                          \
    } while (0)

/* A device copy of bytes at src (zeros when src is NULL). */
static void *gpu_dup(const void *src, size_t bytes)
{
    void *p = NULL;
    TRY(dsv4_bk_alloc(g_gpu, bytes, &p));
    if (src) TRY(dsv4_bk_upload(g_gpu, p, src, bytes));
    return p;
}

static void *gpu_get(void *dst, const void *src, size_t bytes)
{
    TRY(dsv4_bk_download(g_gpu, dst, src, bytes));
    return dst;
}

/* The rows of one step, as host arrays (CPU view) and device arrays (GPU view). */
typedef struct rowset {
    dsv4_bk_rows c, g;
    int32_t slot[512], pos[512];
} rowset;

static void rows_make(rowset *rs, const int32_t *slot, const int32_t *pos, int n)
{
    memcpy(rs->slot, slot, (size_t)n * sizeof *slot);
    memcpy(rs->pos, pos, (size_t)n * sizeof *pos);
    rs->c = (dsv4_bk_rows){n, rs->slot, rs->pos, NULL};
    rs->g = (dsv4_bk_rows){n, gpu_dup(slot, (size_t)n * 4), gpu_dup(pos, (size_t)n * 4), NULL};
}

static void rows_free(rowset *rs)
{
    dsv4_bk_free(g_gpu, (void *)rs->g.slot);
    dsv4_bk_free(g_gpu, (void *)rs->g.pos);
}

/* ---- comparisons -------------------------------------------------------------------------- */
typedef struct vec_stats {
    int64_t diff_elems, diff_vecs;
    double max_abs, max_rel;
} vec_stats;

/* got/want: n_vec vectors of w elements (f32 values). Elements [0, qn) form quantisation blocks
 * of qb, [qn, w) one more block; the relative error's floor is the CPU block's amax. */
static vec_stats cmp_vectors(const float *got, const float *want, int64_t n_vec, int w, int qn,
                             int qb)
{
    vec_stats s = {0, 0, 0.0, 0.0};
    for (int64_t v = 0; v < n_vec; v++) {
        const float *a = got + v * w, *b = want + v * w;
        int bad = 0;
        for (int b0 = 0; b0 < w;) {
            const int len = b0 < qn ? (qn - b0 < qb ? qn - b0 : qb) : w - b0;
            float amax = 0.0f;
            for (int i = 0; i < len; i++) amax = fmaxf(amax, fabsf(b[b0 + i]));
            const double floor_ = amax > 0.0f ? amax : 1e-30;
            for (int i = b0; i < b0 + len; i++) {
                if (!memcmp(&a[i], &b[i], sizeof(float))) continue;
                const double e = fabs((double)a[i] - (double)b[i]);
                s.diff_elems++;
                bad = 1;
                if (!(e <= s.max_abs)) s.max_abs = e;
                if (!(e / floor_ <= s.max_rel)) s.max_rel = e / floor_;
            }
            b0 += len;
        }
        s.diff_vecs += bad;
    }
    return s;
}

/* The serving layout (kv_layout.h) of compressed entries of dim dims: the indexer's keys, or
 * the attention's entries with r RoPE dims. */
static dsv4_kv_layout ent_layout(int is_index, int dim, int r)
{
    return is_index ? dsv4_ik_layout_of(dim) : dsv4_kv_layout_of(dim, r);
}

/* Bytes of n such entries. */
static size_t ent_bytes(int is_index, int dim, int r, int64_t n)
{
    const dsv4_kv_layout l = ent_layout(is_index, dim, r);
    return (size_t)dsv4_kv_bytes(&l, n);
}

/* The f32 values of n such entries, [n, dim]. */
static void ent_values(float *out, const void *ent, int is_index, int dim, int r, int64_t n)
{
    const dsv4_kv_layout l = ent_layout(is_index, dim, r);
    for (int64_t e = 0; e < n; e++) dsv4_kv_decode(&l, ent, e, out + e * dim);
}

/* ---- comp_append --------------------------------------------------------------------------- */
static float g_freqs[32]; /* compress RoPE: theta 160000, YaRN 16 over 65536, beta 32 / 1 */

/* The rows of step `step` of test_comp (C: the largest step, Rc = 2m + C). Returns N. */
static int comp_step_rows(int step, int m, int C, int Rc, int32_t *sl, int32_t *ps)
{
    const int P1 = 6 * Rc - C / 2 + 1; /* chunk B wraps around the ring's end */
    int n = 0;
    switch (step) {
    case 0: /* A: a prefill chunk of slot 1 from position 0 (closes i = 0, 1, ...) */
    case 1: /* B: a chunk of slot 2 far into its sequence */
        for (int t = 0; t < C; t++) sl[n] = step + 1, ps[n++] = (step ? P1 : 0) + t;
        break;
    case 2: /* chunks of slots 3 and 4 interleaved row by row (the kernel's search path); their
             * first windows reach back before the chunks, into the ring */
        for (int t = 0; t < C; t++)
            sl[n] = 3 + (t & 1), ps[n++] = (t & 1 ? 7 * m + 1 : 5 * m - 3) + t / 2;
        break;
    default: { /* decode steps of N = 1, 2, 7, 64 rows, one per slot, every other row closing */
        static const int NS[4] = {1, 2, 7, 64};
        const int N = NS[step - 3] < C ? NS[step - 3] : C;
        for (int t = 0; t < N; t++) {
            const int64_t i =
                (step == 3 ? (m == 4 ? 999 : 39) : 3 + 5 * t + step) % (m == 4 ? 1000 : 60);
            sl[n] = (t * 5 + step) % 64;
            ps[n++] = (int32_t)((i + 1) * m - 1 + (t & 1)); /* odd rows close none */
        }
        if (step == 4) ps[1] = ps[0] + 2 * m, sl[1] = sl[0] + 1; /* a second close, other slot */
    } break;
    }
    return n;
}

static void test_comp(const char *name, int m, int dim, int width, int is_index)
{
    const int S = 64, r = 64, C = m == 4 ? 64 : (g_small ? 64 : 128), steps = 7;
    const int Rc = 2 * m + C;
    const int64_t cap_e = m == 4 ? 1024 : 64;
    const float eps = 1e-6f;
    const size_t ring_n = (size_t)S * Rc * width, ent_n = (size_t)S * cap_e * dim;
    const size_t ent_b = ent_bytes(is_index, dim, r, (int64_t)S * cap_e);
    float *ape = malloc((size_t)m * width * 4), *norm = malloc((size_t)dim * 4);
    float *rkv = malloc(ring_n * 4), *rg = malloc(ring_n * 4);
    float *kv = malloc((size_t)C * width * 4), *gate = malloc((size_t)C * width * 4);
    uint8_t *ent = calloc(ent_b, 1), *gent = malloc(ent_b);
    float *grkv = malloc(ring_n * 4), *grg = malloc(ring_n * 4);
    fill_gauss(ape, (int64_t)m * width, 0.5f, 0.0f);
    fill_gauss(norm, dim, 0.1f, 1.0f);
    fill_gauss(rkv, (int64_t)ring_n, 1.0f, 0.0f); /* earlier positions' rows */
    fill_gauss(rg, (int64_t)ring_n, 2.0f, 0.0f);
    float *d_ape = gpu_dup(ape, (size_t)m * width * 4), *d_norm = gpu_dup(norm, (size_t)dim * 4);
    float *d_rkv = gpu_dup(rkv, ring_n * 4), *d_rg = gpu_dup(rg, ring_n * 4);
    float *d_kv = gpu_dup(NULL, (size_t)C * width * 4),
          *d_gate = gpu_dup(NULL, (size_t)C * width * 4);
    float *d_freqs = gpu_dup(g_freqs, sizeof g_freqs);
    uint8_t *d_ent = gpu_dup(NULL, ent_b);

    int32_t sl[512], ps[512];
    int nclose = 0;
    char ns_seen[64] = "";
    for (int step = 0; step < steps; step++) {
        const int n = comp_step_rows(step, m, C, Rc, sl, ps);
        for (int i = 0; i < n; i++) nclose += (ps[i] + 1) % m == 0;
        if (step >= 3)
            snprintf(ns_seen + strlen(ns_seen), sizeof ns_seen - strlen(ns_seen), "%s%d",
                     step > 3 ? "/" : "", n);
        rowset rs;
        rows_make(&rs, sl, ps, n);
        fill_gauss(kv, (int64_t)n * width, 1.0f, 0.0f);
        fill_gauss(gate, (int64_t)n * width, 2.0f, 0.0f);
        TRY(dsv4_bk_upload(g_gpu, d_kv, kv, (size_t)n * width * 4));
        TRY(dsv4_bk_upload(g_gpu, d_gate, gate, (size_t)n * width * 4));
        TRY(dsv4_bk_comp_append(g_cpu, ent, cap_e, rkv, rg, Rc, width, dim, m, kv, gate, ape, norm,
                                eps, g_freqs, r, is_index, &rs.c));
        TRY(dsv4_bk_comp_append(g_gpu, d_ent, cap_e, d_rkv, d_rg, Rc, width, dim, m, d_kv, d_gate,
                                d_ape, d_norm, eps, d_freqs, r, is_index, &rs.g));
        TRY(dsv4_bk_sync(g_gpu));
        rows_free(&rs);
    }
    gpu_get(grkv, d_rkv, ring_n * 4);
    gpu_get(grg, d_rg, ring_n * 4);
    gpu_get(gent, d_ent, ent_b);
    const int ring_same = !memcmp(grkv, rkv, ring_n * 4) && !memcmp(grg, rg, ring_n * 4);
    printf("%-20s comp_append: chunks of %d (one slot; two interleaved), decode N = %s; rings "
           "[%d, %d, %d] %s (bound: bit-exact, copies and one f32 add)\n",
           name, C, ns_seen, S, Rc, width, ring_same ? "bit-exact" : "DIFFER");
    CHECK_MSG(ring_same, "%s: comp_append rings differ", name);

    float *a = malloc(ent_n * 4), *b = malloc(ent_n * 4);
    ent_values(a, gent, is_index, dim, r, (int64_t)S * cap_e);
    ent_values(b, ent, is_index, dim, r, (int64_t)S * cap_e);
    const int qn = is_index ? dim : dim - r, qb = is_index ? 32 : 64;
    const double bound = is_index ? 1.5 : 0.25;
    const vec_stats s = cmp_vectors(a, b, S * cap_e, dim, qn, qb);
    printf("%-20s comp_append: %d windows closed, %lld entries differ (%lld elements), max abs "
           "%.3g, max rel %.3g (floor: block amax; bound: <= 1 entry, rel <= %.2g)\n",
           name, nclose, (long long)s.diff_vecs, (long long)s.diff_elems, s.max_abs, s.max_rel,
           bound);
    CHECK_MSG(s.diff_vecs <= 1 && s.max_rel <= bound, "%s: comp_append outside its bound", name);
    int64_t written = 0; /* the closed windows really produced entries */
    for (size_t i = 0; i < ent_n; i++) written += b[i] != 0.0f;
    CHECK_MSG(written > (int64_t)nclose * dim / 2, "%s: only %lld nonzero entry elements", name,
              (long long)written);

    free(a), free(b), free(ape), free(norm), free(rkv), free(rg), free(kv), free(gate);
    free(ent), free(gent), free(grkv), free(grg);
    dsv4_bk_free(g_gpu, d_ape), dsv4_bk_free(g_gpu, d_norm), dsv4_bk_free(g_gpu, d_rkv);
    dsv4_bk_free(g_gpu, d_rg), dsv4_bk_free(g_gpu, d_kv), dsv4_bk_free(g_gpu, d_gate);
    dsv4_bk_free(g_gpu, d_freqs), dsv4_bk_free(g_gpu, d_ent);
}

/* ---- indexer queries ---------------------------------------------------------------------- */
static void test_indexer_q(int nh, int d)
{
    const int N = g_small ? 4 : 64, r = 64;
    const size_t n = (size_t)N * nh * d;
    float *q = malloc(n * 4), *gq = malloc(n * 4);
    fill_gauss(q, (int64_t)n, 2.0f, 0.0f);
    dsv4_sim_bf16(q, (int64_t)n); /* the bf16 output of the indexer's wq_b */
    int32_t sl[64], ps[64];
    for (int i = 0; i < N; i++) {
        sl[i] = 0;
        ps[i] = i == 0 ? 0 : i == 1 ? 65535 : (int32_t)(rng_next() % 65536);
    }
    rowset rs;
    rows_make(&rs, sl, ps, N);
    float *d_q = gpu_dup(q, n * 4), *d_freqs = gpu_dup(g_freqs, sizeof g_freqs);
    TRY(dsv4_bk_indexer_q(g_cpu, q, &rs.c, nh, d, r, g_freqs));
    TRY(dsv4_bk_indexer_q(g_gpu, d_q, &rs.g, nh, d, r, d_freqs));
    gpu_get(gq, d_q, n * 4);
    const vec_stats s = cmp_vectors(gq, q, (int64_t)N * nh, d, d, 32);
    printf("indexer_q [%d, %d, %d]: %lld heads differ (%lld elements), max abs %.3g, max rel %.3g "
           "(floor: block amax; bound: <= 1 head, rel <= 1.5)\n",
           N, nh, d, (long long)s.diff_vecs, (long long)s.diff_elems, s.max_abs, s.max_rel);
    CHECK_MSG(s.diff_vecs <= 1 && s.max_rel <= 1.5, "indexer_q outside its bound");
    rows_free(&rs);
    free(q), free(gq);
    dsv4_bk_free(g_gpu, d_q), dsv4_bk_free(g_gpu, d_freqs);
}

/* ---- indexer top-k ------------------------------------------------------------------------ */
/* forward_attn.c index_token's selection from given scores: sel [topk] */
static void host_topk(int32_t *sel, const float *sc, int64_t nvis, int topk)
{
    const int k = nvis < topk ? (int)nvis : topk;
    for (int a = k; a < topk; a++) sel[a] = -1;
    if (k == 0) return;
    dsv4_op_topk(sel, sc, nvis, k);
    for (int a = 1; a < k; a++) {
        const int32_t x = sel[a];
        int c = a;
        while (c > 0 && sc[sel[c - 1]] < sc[x]) sel[c] = sel[c - 1], c--;
        sel[c] = x;
    }
}

typedef struct index_inputs {
    int nh, d, m, topk, S;
    int64_t cap_e;
    uint8_t *ent; /* S cap_e keys (dsv4_ik_layout_of(d)), host */
    uint8_t *d_ent;
} index_inputs;

/* Keys: FP4-grid vectors; slot 3 repeats 8 vectors (entry e = vector e % 8: ties everywhere);
 * the other slots have duplicates of [100, 200) at [200, 300) and 40 copies of entry 2 spread
 * over the range. */
static void index_inputs_make(index_inputs *in, int nh, int d, int m, int topk, int64_t cap_e)
{
    *in = (index_inputs){nh, d, m, topk, 4, cap_e, NULL, NULL};
    const dsv4_kv_layout l = dsv4_ik_layout_of(d);
    const int64_t ne = (int64_t)in->S * cap_e;
    const size_t bytes = (size_t)dsv4_kv_bytes(&l, ne), vb = (size_t)d * sizeof(float);
    in->ent = calloc(bytes, 1);
    float *x = malloc((size_t)ne * vb); /* the keys' values, [S cap_e, d] */
    for (int s = 0; s < in->S; s++) {
        float *e0 = x + (size_t)s * cap_e * d;
        for (int64_t e = 0; e < cap_e; e++) {
            if (s == 3 && e >= 8)
                memcpy(e0 + e * d, e0 + (e % 8) * d, vb);
            else
                fp4_vector(e0 + e * d, d, (float)exp(0.5 * rng_gauss()));
        }
        if (s == 3) continue;
        for (int64_t e = 200; e < 300 && e < cap_e; e++) memcpy(e0 + e * d, e0 + (e - 100) * d, vb);
        for (int j = 0; j < 40; j++) {
            const int64_t e = 7 + j * (cap_e / 48);
            if (e < cap_e) memcpy(e0 + e * d, e0 + 2 * d, vb);
        }
    }
    for (int64_t e = 0; e < ne; e++) dsv4_kv_encode(&l, in->ent, e, x + e * d);
    free(x);
    in->d_ent = gpu_dup(in->ent, bytes);
}

static void index_inputs_free(index_inputs *in)
{
    free(in->ent);
    dsv4_bk_free(g_gpu, in->d_ent);
}

/* Queries and weights of N rows: FP4-grid heads; weights bf16(N(0,1)) as weights_proj leaves
 * them (the op scales them by w_scale = d^-0.5 nh^-0.5 and rounds, as the engine asks). */
static void make_queries(float *q, float *w, int N, int nh, int d)
{
    for (int64_t i = 0; i < (int64_t)N * nh; i++) fp4_vector(q + i * d, d, 1.0f);
    for (int64_t i = 0; i < (int64_t)N * nh; i++) w[i] = dsv4_round_bf16(rng_gauss());
}

static float w_scale_of(int nh, int d)
{
    return (float)(pow(d, -0.5) * pow(nh, -0.5));
}

/* Row i of a case: kind (5 + i) % 7 of {n_vis 0, 100, topk, topk + 1, ~5000, cap_e (slot 1),
 * cap_e (slot 3: every score tied many times)}, so N = 1 is a full row, N = 2 adds the tied one
 * and N >= 7 has every kind (N = 64: nine of each, the ~5000 ones all different). */
static void topk_rows(int N, int64_t cap_e, int topk, int m, int32_t *sl, int32_t *ps)
{
    const int64_t nv[7] = {0,
                           100 < cap_e ? 100 : cap_e / 2,
                           topk < cap_e ? topk : cap_e,
                           topk + 1 < cap_e ? topk + 1 : cap_e,
                           5000 < cap_e - 64 ? 5000 : cap_e - 67,
                           cap_e,
                           cap_e};
    const int32_t slots[7] = {0, 1, 2, 0, 3, 1, 3};
    for (int i = 0; i < N; i++) {
        const int j = (5 + i) % 7;
        const int64_t v = nv[j] - (j == 4 ? i : 0);
        sl[i] = slots[j];
        ps[i] = (int32_t)(v * m + i % 3); /* (p + 1) / m = v */
    }
}

/* Rows of a split call (cap_e > 2048, the cluster path's limit): row i's n_vis the kind i % 12
 * of {2048 (the cluster's last), 2049 (the fused kernel's first), 0, cap_e, 100, 2047 and 3000
 * (slot 3: ties), topk, topk + 1, 1025 (the bench's 4K), cap_e - 1 (slot 3), 1}, so N = 5 has
 * rows on both sides and N >= 12 every kind. */
static void split_rows(int N, int64_t cap_e, int topk, int m, int32_t *sl, int32_t *ps)
{
    const int64_t nv[12] = {2048, 2049, 0,        cap_e, 100,       2047,
                            3000, topk, topk + 1, 1025,  cap_e - 1, 1};
    const int32_t slots[12] = {0, 1, 2, 1, 0, 3, 3, 2, 0, 1, 3, 2};
    for (int i = 0; i < N; i++) {
        sl[i] = slots[i % 12];
        ps[i] = (int32_t)(nv[i % 12] * m + i % 3); /* (p + 1) / m = n_vis */
    }
}

static const char *path_name(int path)
{
    return path == DSV4_INDEX_PATH_AUTO        ? "auto"
           : path == DSV4_INDEX_PATH_FUSED     ? "fused"
           : path == DSV4_INDEX_PATH_CLUSTER   ? "cluster"
           : path == DSV4_INDEX_PATH_CLUSTER16 ? "cluster16"
           : path == DSV4_INDEX_PATH_SPLIT     ? "split"
           : path == DSV4_INDEX_PATH_SPLIT16   ? "split16"
                                               : "simt";
}

/* Whether the last call (N rows, nh x d, cap_e) took the path forced (AUTO: the dispatcher's
 * choice, bk_topk.cu index_select): a forced cluster path runs split where cap_e > 2048; a
 * forced 16-CTA cluster may fall back to 8 on a GPU that cannot place one (said once; the 8-CTA
 * results are then what is checked); auto takes the cluster kernel at N <= 16 (split where
 * cap_e > 2048), else the fused one. */
static int path_taken(int path, int nh, int d, int64_t cap_e, int N)
{
    static int told;
    const int last = dsv4_cuda_index_last_path(), split = cap_e > 2048;
    if (path == DSV4_INDEX_PATH_AUTO) {
        if (nh != 64 || d != 128) return last == DSV4_INDEX_PATH_SIMT;
        if (N > 16) return last == DSV4_INDEX_PATH_FUSED;
        path = N <= 8 ? DSV4_INDEX_PATH_CLUSTER16 : DSV4_INDEX_PATH_CLUSTER;
    }
    if (split && path == DSV4_INDEX_PATH_CLUSTER) path = DSV4_INDEX_PATH_SPLIT;
    if (split && path == DSV4_INDEX_PATH_CLUSTER16) path = DSV4_INDEX_PATH_SPLIT16;
    const int as8 = path == DSV4_INDEX_PATH_CLUSTER16 ? DSV4_INDEX_PATH_CLUSTER
                    : path == DSV4_INDEX_PATH_SPLIT16 ? DSV4_INDEX_PATH_SPLIT
                                                      : -1;
    if (last == as8) {
        if (!told++) printf("note: this GPU places no 16-CTA cluster; cluster16 ran as 8\n");
        return 1;
    }
    return last == path;
}

/* The CUDA paths that take (nh, d): SIMT always; fused at 64 x 128, and the cluster paths (8
 * and 16 CTAs a row: cap_e <= 2048, else split with the fused kernel); with_auto: the
 * dispatcher's choice too. Returns how many went to paths[]. */
static int paths_for(int nh, int d, int with_auto, int paths[5])
{
    int n = 0;
    if (nh == 64 && d == 128) {
        paths[n++] = DSV4_INDEX_PATH_FUSED;
        paths[n++] = DSV4_INDEX_PATH_CLUSTER;
        paths[n++] = DSV4_INDEX_PATH_CLUSTER16;
    }
    paths[n++] = DSV4_INDEX_PATH_SIMT;
    if (with_auto) paths[n++] = DSV4_INDEX_PATH_AUTO;
    return n;
}

/* N rows (topk_rows, or split_rows where split) on the CPU, then on each GPU path and auto: (a)
 * scores, (b) selection vs the top-k of the GPU's own scores, (c) selection vs the CPU's, (d)
 * the workspace's tickets back at zero. */
static void test_topk(const char *name, const index_inputs *in, int N, int split)
{
    const int nh = in->nh, d = in->d, topk = in->topk, m = in->m;
    const int64_t cap_e = in->cap_e;
    int32_t sl[64], ps[64];
    if (split)
        split_rows(N, cap_e, topk, m, sl, ps);
    else
        topk_rows(N, cap_e, topk, m, sl, ps);
    float *q = malloc((size_t)N * nh * d * 4), *w = malloc((size_t)N * nh * 4);
    make_queries(q, w, N, nh, d);
    const float w_scale = w_scale_of(nh, d);
    const size_t wsb = dsv4_bk_indexer_ws_bytes(N, cap_e), seln = (size_t)N * topk;
    float *ws = malloc(wsb), *gws = malloc(wsb);
    int32_t *sel = malloc(seln * 4), *gsel = malloc(seln * 4), *hsel = malloc((size_t)topk * 4);
    int32_t *junk = malloc(seln * 4);
    memset(junk, 0x7f, seln * 4);
    rowset rs;
    rows_make(&rs, sl, ps, N);
    float *d_q = gpu_dup(q, (size_t)N * nh * d * 4), *d_w = gpu_dup(w, (size_t)N * nh * 4);
    /* the workspace as a call with 8 rows more leaves it (the engine's calls of every N share
     * one): its score words hold scores (here 1.0f), its tickets are zero */
    const size_t wsb_used = dsv4_bk_indexer_ws_bytes(N + 8, cap_e);
    float *used = malloc(wsb_used);
    for (size_t i = 0; i < wsb_used / 4; i++) used[i] = 1.0f;
    for (int i = 0; i < N + 8; i++) memset(used + dsv4_cuda_index_ws_row(i, cap_e) + cap_e, 0, 4);
    void *d_ws = gpu_dup(NULL, wsb_used);
    int32_t *d_sel = gpu_dup(NULL, seln * 4);
    const double t0 = test_now();
    TRY(dsv4_bk_indexer_topk(g_cpu, sel, q, w, w_scale, in->ent, cap_e, nh, d, m, topk, &rs.c, ws));
    const double t1 = test_now();
    int64_t nvis_max = 0;
    for (int i = 0; i < N; i++)
        if ((ps[i] + 1) / m > nvis_max) nvis_max = (ps[i] + 1) / m;

    int paths[5];
    const int npaths = paths_for(nh, d, 1, paths);
    for (int pi = 0; pi < npaths; pi++) {
        const int path = paths[pi];
        dsv4_cuda_index_force_path(path);
        TRY(dsv4_bk_upload(g_gpu, d_sel, junk, seln * 4)); /* every entry must be written */
        TRY(dsv4_bk_upload(g_gpu, d_ws, used, wsb_used));
        TRY(dsv4_bk_indexer_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d, m, topk,
                                 &rs.g, d_ws));
        dsv4_cuda_index_force_path(DSV4_INDEX_PATH_AUTO);
        CHECK_MSG(path_taken(path, nh, d, cap_e, N), "%s: path %s not taken (took %s)", name,
                  path_name(path), path_name(dsv4_cuda_index_last_path()));
        gpu_get(gsel, d_sel, seln * 4);
        gpu_get(gws, d_ws, wsb);

        int64_t sc_diff = 0, own_bad = 0, cpu_bad = 0, straddle = 0, tickets = 0;
        double max_abs = 0.0, max_rel = 0.0;
        for (int i = 0; i < N; i++) {
            const int64_t nvis = (ps[i] + 1) / m;
            const float *a = gws + dsv4_cuda_index_ws_row(i, cap_e), *b = ws + i * cap_e;
            for (int64_t e = 0; e < nvis; e++) {
                if (!memcmp(&a[e], &b[e], 4)) continue;
                sc_diff++;
                const double err = fabs((double)a[e] - b[e]);
                if (!(err <= max_abs)) max_abs = err;
                if (!(err / fmax(fabs(b[e]), 1e-3) <= max_rel))
                    max_rel = err / fmax(fabs(b[e]), 1e-3);
            }
            host_topk(hsel, a, nvis, topk);
            const int32_t *g = gsel + (int64_t)i * topk, *c = sel + (int64_t)i * topk;
            const int row_own = memcmp(hsel, g, (size_t)topk * 4) != 0;
            const int row_cpu = memcmp(c, g, (size_t)topk * 4) != 0;
            own_bad += row_own;
            cpu_bad += row_cpu;
            const int k = nvis < topk ? (int)nvis : topk;
            if (k > 0 && nvis > topk) { /* a tie group cut by the selection */
                const float cut = b[c[k - 1]];
                int64_t n_eq = 0, n_eq_in = 0;
                for (int64_t e = 0; e < nvis; e++) n_eq += b[e] == cut;
                for (int j = 0; j < k; j++) n_eq_in += b[c[j]] == cut;
                straddle += n_eq > n_eq_in && n_eq_in > 0;
            }
            if ((row_own || row_cpu) && own_bad + cpu_bad <= 2) {
                for (int j = 0; j < topk && j < 8; j++)
                    fprintf(stderr,
                            "  row %d (n_vis %lld) j %d: gpu %d cpu %d host(gpu scores) %d\n", i,
                            (long long)nvis, j, g[j], c[j], hsel[j]);
            }
        }
        for (int i = 0; i < N; i++) {
            uint32_t tk;
            memcpy(&tk, gws + dsv4_cuda_index_ws_row(i, cap_e) + cap_e, 4);
            tickets += tk != 0;
        }
        printf("%-20s indexer_topk %s (%s) nh %d d %d topk %d cap_e %lld, N = %d%s (n_vis 0 .. "
               "%lld; %lld with a tie group cut), CPU %.2f s:\n",
               name, path_name(path), path_name(dsv4_cuda_index_last_path()), nh, d, topk,
               (long long)cap_e, N, split ? " split rows" : "", (long long)nvis_max,
               (long long)straddle, t1 - t0);
        printf("  (a) scores vs CPU: %lld differ, max abs %.3g, max rel %.3g (floor 1e-3; bound: "
               "0, exact arithmetic on FP4-grid inputs)\n",
               (long long)sc_diff, max_abs, max_rel);
        printf("  (b) selection vs the top-k of the GPU's own scores: %lld rows differ (bound 0)\n",
               (long long)own_bad);
        printf("  (c) selection vs the CPU's: %lld rows differ (bound 0); (d) tickets left "
               "nonzero: %lld (bound 0)\n",
               (long long)cpu_bad, (long long)tickets);
        CHECK_MSG(sc_diff == 0, "%s %s N %d: %lld scores differ", name, path_name(path), N,
                  (long long)sc_diff);
        CHECK_MSG(own_bad == 0, "%s %s N %d: selection is not the top-k of the GPU's scores", name,
                  path_name(path), N);
        CHECK_MSG(cpu_bad == 0, "%s %s N %d: selection differs from the CPU's", name,
                  path_name(path), N);
        CHECK_MSG(tickets == 0, "%s %s N %d: tickets left in the workspace", name, path_name(path),
                  N);
        /* coverage: with N >= 7 some row's cut falls inside a tie group (with fewer rows the one
         * tied row's cut can land on a group boundary: k = 512 = 4 groups of 128 at 1025) */
        CHECK_MSG(straddle > 0 || g_small || nh != 64 || N < 7, "%s: no row cut a tie group", name);
    }

    rows_free(&rs);
    free(q), free(w), free(ws), free(gws), free(sel), free(gsel), free(hsel), free(junk);
    free(used);
    dsv4_bk_free(g_gpu, d_q), dsv4_bk_free(g_gpu, d_w), dsv4_bk_free(g_gpu, d_ws);
    dsv4_bk_free(g_gpu, d_sel);
}

/* N rows at n_vis = cap_e (slots r % 4) on one path: the selection of every row against the
 * top-k of the GPU's scores, a second run identical (deterministic), and the op's time. Slot 3
 * repeats 8 keys: its rows are ties throughout, as the bench's zero keys are. */
static void topk_at_scale(const index_inputs *in, int N, int path)
{
    const int nh = in->nh, d = in->d, topk = in->topk, m = in->m;
    const int64_t cap_e = in->cap_e;
    int32_t sl[64], ps[64];
    for (int i = 0; i < N; i++) sl[i] = i % in->S, ps[i] = (int32_t)(cap_e * m - 1);
    float *q = malloc((size_t)N * nh * d * 4), *w = malloc((size_t)N * nh * 4);
    make_queries(q, w, N, nh, d);
    const float w_scale = w_scale_of(nh, d);
    const size_t wsb = dsv4_bk_indexer_ws_bytes(N, cap_e), seln = (size_t)N * topk;
    float *gws = malloc(wsb);
    int32_t *gsel = malloc(seln * 4), *gsel2 = malloc(seln * 4), *hsel = malloc((size_t)topk * 4);
    rowset rs;
    rows_make(&rs, sl, ps, N);
    float *d_q = gpu_dup(q, (size_t)N * nh * d * 4), *d_w = gpu_dup(w, (size_t)N * nh * 4);
    void *d_ws = gpu_dup(NULL, wsb);
    int32_t *d_sel = gpu_dup(NULL, seln * 4);
    dsv4_cuda_index_force_path(path);
    TRY(dsv4_bk_indexer_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d, m, topk,
                             &rs.g, d_ws));
    gpu_get(gsel, d_sel, seln * 4);
    gpu_get(gws, d_ws, wsb);
    TRY(dsv4_bk_memset0(g_gpu, d_sel, seln * 4));
    TRY(dsv4_bk_indexer_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d, m, topk,
                             &rs.g, d_ws));
    gpu_get(gsel2, d_sel, seln * 4);
    int64_t bad = 0;
    for (int i = 0; i < N; i++) {
        host_topk(hsel, gws + dsv4_cuda_index_ws_row(i, cap_e), cap_e, topk);
        bad += memcmp(hsel, gsel + (int64_t)i * topk, (size_t)topk * 4) != 0;
    }
    const int same = !memcmp(gsel, gsel2, seln * 4);
    CHECK_MSG(bad == 0, "topk %d at N = %d (%s): %lld rows are not the top-k of the GPU's scores",
              topk, N, path_name(path), (long long)bad);
    CHECK_MSG(same, "topk %d at N = %d (%s): a second run selects differently", topk, N,
              path_name(path));

    const int iters = 20;
    TRY(dsv4_bk_sync(g_gpu));
    TRY(dsv4_bk_prof_start(g_gpu));
    const double t0 = test_now();
    for (int it = 0; it < iters; it++) {
        TRY(dsv4_bk_indexer_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d, m, topk,
                                 &rs.g, d_ws));
        dsv4_bk_prof_mark(g_gpu, "indexer_topk");
    }
    TRY(dsv4_bk_sync(g_gpu));
    const double t1 = test_now();
    dsv4_cuda_index_force_path(DSV4_INDEX_PATH_AUTO);
    dsv4_bk_prof_entry pe[4];
    const int np = dsv4_bk_prof_stop(g_gpu, pe, 4);
    printf("  indexer_topk %-5s N = %2d, n_vis = cap_e = %5lld, topk %4d: %8.1f us (events), "
           "%8.1f us (wall, %d back to back); top-k of its scores in %lld/%d rows, rerun %s\n",
           path_name(path), N, (long long)cap_e, topk,
           np > 0 ? 1e3 * pe[0].ms / (double)pe[0].calls : -1.0, 1e6 * (t1 - t0) / iters, iters,
           (long long)(N - bad), N, same ? "identical" : "DIFFERS");
    rows_free(&rs);
    free(q), free(w), free(gws), free(gsel), free(gsel2), free(hsel);
    dsv4_bk_free(g_gpu, d_q), dsv4_bk_free(g_gpu, d_w), dsv4_bk_free(g_gpu, d_ws);
    dsv4_bk_free(g_gpu, d_sel);
}

/* ---- the fused ops ----------------------------------------------------------------------- */
/* indexer_q_topk on raw queries (bf16 values, as the indexer's wq_b leaves them), rows as
 * test_topk: on each CUDA path against the same path's two ops (indexer_q, then indexer_topk:
 * today's kernels) the selection and the scores must be bit-identical (the fused prologue runs
 * indexer_q's f32 operations in its order); against the CPU's composition the selection may
 * differ only where a query head does, which test_indexer_q bounds at one head a case (glibc's
 * cosf / sinf vs the correctly rounded ones): bound <= 1 row. Then the op's time vs the pair's. */
static void test_q_topk(const char *name, const index_inputs *in, int N, int split)
{
    const int nh = in->nh, d = in->d, topk = in->topk, m = in->m, r = 64;
    const int64_t cap_e = in->cap_e;
    int32_t sl[64], ps[64];
    if (split)
        split_rows(N, cap_e, topk, m, sl, ps);
    else
        topk_rows(N, cap_e, topk, m, sl, ps);
    const size_t nq = (size_t)N * nh * d, seln = (size_t)N * topk;
    float *q = malloc(nq * 4), *q0 = malloc(nq * 4), *w = malloc((size_t)N * nh * 4);
    fill_gauss(q0, (int64_t)nq, 2.0f, 0.0f);
    dsv4_sim_bf16(q0, (int64_t)nq);
    for (int64_t i = 0; i < (int64_t)N * nh; i++) w[i] = dsv4_round_bf16(rng_gauss());
    memcpy(q, q0, nq * 4);
    const float w_scale = w_scale_of(nh, d);
    const size_t wsb = dsv4_bk_indexer_ws_bytes(N, cap_e);
    float *ws = malloc(wsb), *gws = malloc(wsb), *gws2 = malloc(wsb);
    int32_t *sel = malloc(seln * 4), *gsel = malloc(seln * 4), *gsel2 = malloc(seln * 4);
    rowset rs;
    rows_make(&rs, sl, ps, N);
    float *d_q = gpu_dup(q0, nq * 4), *d_w = gpu_dup(w, (size_t)N * nh * 4);
    float *d_freqs = gpu_dup(g_freqs, sizeof g_freqs);
    void *d_ws = gpu_dup(NULL, wsb);
    int32_t *d_sel = gpu_dup(NULL, seln * 4), *d_flag = gpu_dup(NULL, sizeof(int32_t));
    const int32_t one = 1;
    TRY(dsv4_bk_indexer_q_topk(g_cpu, sel, q, w, w_scale, in->ent, cap_e, nh, d, r, g_freqs, m,
                               topk, &rs.c, ws, NULL));
    float *gq1 = malloc(nq * 4), *gq2 = malloc(nq * 4);
    int paths[5];
    const int npaths = paths_for(nh, d, 1, paths);
    for (int pi = 0; pi < npaths; pi++) {
        const int path = paths[pi];
        dsv4_cuda_index_force_path(path);
        /* the fused op on the raw queries */
        TRY(dsv4_bk_upload(g_gpu, d_q, q0, nq * 4));
        TRY(dsv4_bk_memset0(g_gpu, d_sel, seln * 4));
        TRY(dsv4_bk_indexer_q_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d, r,
                                   d_freqs, m, topk, &rs.g, d_ws, NULL));
        const int last = dsv4_cuda_index_last_path();
        CHECK_MSG(path_taken(path, nh, d, cap_e, N), "%s: path %s not taken (took %s)", name,
                  path_name(path), path_name(last));
        const int split_path = last == DSV4_INDEX_PATH_SPLIT || last == DSV4_INDEX_PATH_SPLIT16;
        gpu_get(gsel, d_sel, seln * 4);
        gpu_get(gws, d_ws, wsb);
        gpu_get(gq1, d_q, nq * 4);
        /* with a signal that is set (after): the same bits */
        TRY(dsv4_bk_upload(g_gpu, d_q, q0, nq * 4));
        TRY(dsv4_bk_memset0(g_gpu, d_sel, seln * 4));
        TRY(dsv4_bk_upload(g_gpu, d_flag, &one, sizeof one));
        TRY(dsv4_bk_indexer_q_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d, r,
                                   d_freqs, m, topk, &rs.g, d_ws, d_flag));
        gpu_get(gsel2, d_sel, seln * 4);
        gpu_get(gq2, d_q, nq * 4);
        CHECK_MSG(!memcmp(gsel, gsel2, seln * 4) && !memcmp(gq1, gq2, nq * 4),
                  "%s %s N %d: indexer_q_topk with a set signal differs", name, path_name(path), N);
        /* the two ops */
        TRY(dsv4_bk_upload(g_gpu, d_q, q0, nq * 4));
        TRY(dsv4_bk_memset0(g_gpu, d_sel, seln * 4));
        TRY(dsv4_bk_indexer_q(g_gpu, d_q, &rs.g, nh, d, r, d_freqs));
        gpu_get(gq2, d_q, nq * 4);
        TRY(dsv4_bk_indexer_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d, m, topk,
                                 &rs.g, d_ws));
        gpu_get(gsel2, d_sel, seln * 4);
        gpu_get(gws2, d_ws, wsb);
        /* iq afterwards (backend.h: indexer_q's result or unchanged): a row's queries one or the
         * other bit for bit; a split call's fused rows (n_vis > 2048) indexer_q's */
        int64_t sc_diff = 0, two_bad = 0, cpu_bad = 0, iq_bad = 0;
        for (int i = 0; i < N; i++) {
            const int64_t nvis = (ps[i] + 1) / m;
            const int64_t o = dsv4_cuda_index_ws_row(i, cap_e);
            const size_t qo = (size_t)i * nh * d, qb = (size_t)nh * d * 4;
            const int conv = !memcmp(gq1 + qo, gq2 + qo, qb), same = !memcmp(gq1 + qo, q0 + qo, qb);
            iq_bad += !(conv || same) || (split_path && nvis > 2048 && !conv);
            sc_diff += memcmp(gws + o, gws2 + o, (size_t)nvis * 4) != 0;
            two_bad +=
                memcmp(gsel + (int64_t)i * topk, gsel2 + (int64_t)i * topk, (size_t)topk * 4) != 0;
            cpu_bad +=
                memcmp(gsel + (int64_t)i * topk, sel + (int64_t)i * topk, (size_t)topk * 4) != 0;
        }
        double t_one = -1.0, t_two = -1.0;
        if (!g_small) { /* op timer events, 20 calls each (the queries are only re-transformed) */
            TRY(dsv4_bk_sync(g_gpu));
            TRY(dsv4_bk_prof_start(g_gpu));
            for (int it = 0; it < 20; it++) {
                TRY(dsv4_bk_indexer_q_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d,
                                           r, d_freqs, m, topk, &rs.g, d_ws, NULL));
                dsv4_bk_prof_mark(g_gpu, "one");
                TRY(dsv4_bk_indexer_q(g_gpu, d_q, &rs.g, nh, d, r, d_freqs));
                TRY(dsv4_bk_indexer_topk(g_gpu, d_sel, d_q, d_w, w_scale, in->d_ent, cap_e, nh, d,
                                         m, topk, &rs.g, d_ws));
                dsv4_bk_prof_mark(g_gpu, "two");
            }
            dsv4_bk_prof_entry pe[4];
            const int np = dsv4_bk_prof_stop(g_gpu, pe, 4);
            for (int k = 0; k < np; k++) {
                const double us = 1e3 * pe[k].ms / (double)pe[k].calls;
                if (!strcmp(pe[k].label, "one")) t_one = us;
                if (!strcmp(pe[k].label, "two")) t_two = us;
            }
        }
        dsv4_cuda_index_force_path(DSV4_INDEX_PATH_AUTO);
        printf("%-20s indexer_q_topk %s (%s) topk %d cap_e %lld, N = %d%s: vs indexer_q + "
               "indexer_topk (GPU) %lld rows / %lld score rows / %lld query rows differ (bound 0); "
               "vs CPU %lld rows differ (bound 1); %.1f us vs %.1f us (events)\n",
               name, path_name(path), path_name(last), topk, (long long)cap_e, N,
               split ? " split rows" : "", (long long)two_bad, (long long)sc_diff,
               (long long)iq_bad, (long long)cpu_bad, t_one, t_two);
        CHECK_MSG(two_bad == 0 && sc_diff == 0 && iq_bad == 0,
                  "%s %s N %d: indexer_q_topk is not the two ops", name, path_name(path), N);
        CHECK_MSG(cpu_bad <= 1, "%s %s N %d: indexer_q_topk differs from the CPU in %lld rows",
                  name, path_name(path), N, (long long)cpu_bad);
    }
    rows_free(&rs);
    free(q), free(q0), free(w), free(ws), free(gws), free(gws2), free(sel), free(gsel);
    free(gsel2), free(gq1), free(gq2);
    dsv4_bk_free(g_gpu, d_q), dsv4_bk_free(g_gpu, d_w), dsv4_bk_free(g_gpu, d_freqs);
    dsv4_bk_free(g_gpu, d_ws), dsv4_bk_free(g_gpu, d_sel), dsv4_bk_free(g_gpu, d_flag);
}

/* indexer_q_topk's time (op timer events, 20 calls; the queries are only re-transformed) at N
 * rows of n_vis entries each in an engine of cap_e (slots r % 4) on one path: a 64K engine's
 * rows at 4K (n_vis 1,025: the cluster kernel's in a split call) and at 64K. */
static void q_topk_at_scale(const index_inputs *in, int N, int64_t nvis, int path)
{
    const int nh = in->nh, d = in->d, topk = in->topk, m = in->m, r = 64;
    const int64_t cap_e = in->cap_e;
    int32_t sl[64], ps[64];
    for (int i = 0; i < N; i++) sl[i] = i % in->S, ps[i] = (int32_t)(nvis * m - 1);
    const size_t nq = (size_t)N * nh * d;
    float *q = malloc(nq * 4), *w = malloc((size_t)N * nh * 4);
    fill_gauss(q, (int64_t)nq, 2.0f, 0.0f);
    dsv4_sim_bf16(q, (int64_t)nq);
    for (int64_t i = 0; i < (int64_t)N * nh; i++) w[i] = dsv4_round_bf16(rng_gauss());
    rowset rs;
    rows_make(&rs, sl, ps, N);
    float *d_q = gpu_dup(q, nq * 4), *d_w = gpu_dup(w, (size_t)N * nh * 4);
    float *d_freqs = gpu_dup(g_freqs, sizeof g_freqs);
    void *d_ws = gpu_dup(NULL, dsv4_bk_indexer_ws_bytes(N, cap_e));
    int32_t *d_sel = gpu_dup(NULL, (size_t)N * topk * 4);
    dsv4_cuda_index_force_path(path);
    TRY(dsv4_bk_indexer_q_topk(g_gpu, d_sel, d_q, d_w, w_scale_of(nh, d), in->d_ent, cap_e, nh, d,
                               r, d_freqs, m, topk, &rs.g, d_ws, NULL)); /* warm */
    const int last = dsv4_cuda_index_last_path();
    TRY(dsv4_bk_sync(g_gpu));
    TRY(dsv4_bk_prof_start(g_gpu));
    for (int it = 0; it < 20; it++) {
        TRY(dsv4_bk_indexer_q_topk(g_gpu, d_sel, d_q, d_w, w_scale_of(nh, d), in->d_ent, cap_e, nh,
                                   d, r, d_freqs, m, topk, &rs.g, d_ws, NULL));
        dsv4_bk_prof_mark(g_gpu, "indexer_q_topk");
    }
    dsv4_cuda_index_force_path(DSV4_INDEX_PATH_AUTO);
    dsv4_bk_prof_entry pe[4];
    const int np = dsv4_bk_prof_stop(g_gpu, pe, 4);
    printf("  indexer_q_topk %-9s (%-9s) N = %2d, n_vis = %5lld of cap_e %5lld, topk %4d: %6.1f us "
           "(events)\n",
           path_name(path), path_name(last), N, (long long)nvis, (long long)cap_e, topk,
           np > 0 ? 1e3 * pe[0].ms / (double)pe[0].calls : -1.0);
    rows_free(&rs);
    free(q), free(w);
    dsv4_bk_free(g_gpu, d_q), dsv4_bk_free(g_gpu, d_w), dsv4_bk_free(g_gpu, d_freqs);
    dsv4_bk_free(g_gpu, d_ws), dsv4_bk_free(g_gpu, d_sel);
}

/* comp_append_multi over a CSA layer's two compressors (512 of 1024 and the indexer's 128 of
 * 256, m 4) on test_comp's steps: on the GPU against the two single comp_append calls (today's
 * kernel, run on a copy of the state): rings and entries bit-identical (bound: 0; a CTA's result
 * does not depend on the block size the pair runs with); against the CPU's composition as
 * test_comp (rings bit-exact, entries <= 1 differing a job, rel <= 0.25 / 1.5). */
static void test_comp_pair(void)
{
    const int S = 64, r = 64, m = 4, C = 64, steps = 7, Rc = 2 * m + C;
    const int64_t cap_e = 1024;
    const float eps = 1e-6f;
    const int dims[2] = {512, 128};
    struct {
        size_t ring_n, ent_n, ent_b;
        int dim, width;
        float *ape, *norm, *rkv, *rg, *kv, *gate;
        uint8_t *ent;
        float *d_ape, *d_norm, *d_rkv[2], *d_rg[2], *d_kv, *d_gate;
        uint8_t *d_ent[2];
    } c[2];
    for (int k = 0; k < 2; k++) {
        c[k].dim = dims[k], c[k].width = 2 * dims[k];
        c[k].ring_n = (size_t)S * Rc * c[k].width, c[k].ent_n = (size_t)S * cap_e * c[k].dim;
        c[k].ent_b = ent_bytes(k, c[k].dim, r, (int64_t)S * cap_e);
        c[k].ape = malloc((size_t)m * c[k].width * 4), c[k].norm = malloc((size_t)c[k].dim * 4);
        c[k].rkv = malloc(c[k].ring_n * 4), c[k].rg = malloc(c[k].ring_n * 4);
        c[k].kv = malloc((size_t)C * c[k].width * 4),
        c[k].gate = malloc((size_t)C * c[k].width * 4);
        c[k].ent = calloc(c[k].ent_b, 1);
        fill_gauss(c[k].ape, (int64_t)m * c[k].width, 0.5f, 0.0f);
        fill_gauss(c[k].norm, c[k].dim, 0.1f, 1.0f);
        fill_gauss(c[k].rkv, (int64_t)c[k].ring_n, 1.0f, 0.0f);
        fill_gauss(c[k].rg, (int64_t)c[k].ring_n, 2.0f, 0.0f);
        c[k].d_ape = gpu_dup(c[k].ape, (size_t)m * c[k].width * 4);
        c[k].d_norm = gpu_dup(c[k].norm, (size_t)c[k].dim * 4);
        for (int v = 0; v < 2; v++) { /* v 0: the pair; v 1: single calls */
            c[k].d_rkv[v] = gpu_dup(c[k].rkv, c[k].ring_n * 4);
            c[k].d_rg[v] = gpu_dup(c[k].rg, c[k].ring_n * 4);
            c[k].d_ent[v] = gpu_dup(NULL, c[k].ent_b);
        }
        c[k].d_kv = gpu_dup(NULL, (size_t)C * c[k].width * 4);
        c[k].d_gate = gpu_dup(NULL, (size_t)C * c[k].width * 4);
    }
    float *d_freqs = gpu_dup(g_freqs, sizeof g_freqs);
    int32_t sl[512], ps[512];
    for (int step = 0; step < steps; step++) {
        const int n = comp_step_rows(step, m, C, Rc, sl, ps);
        rowset rs;
        rows_make(&rs, sl, ps, n);
        dsv4_bk_comp_job hj[2], gj[2];
        for (int k = 0; k < 2; k++) {
            fill_gauss(c[k].kv, (int64_t)n * c[k].width, 1.0f, 0.0f);
            fill_gauss(c[k].gate, (int64_t)n * c[k].width, 2.0f, 0.0f);
            TRY(dsv4_bk_upload(g_gpu, c[k].d_kv, c[k].kv, (size_t)n * c[k].width * 4));
            TRY(dsv4_bk_upload(g_gpu, c[k].d_gate, c[k].gate, (size_t)n * c[k].width * 4));
            hj[k] = (dsv4_bk_comp_job){c[k].ent,   cap_e,     c[k].rkv, c[k].rg, Rc,
                                       c[k].width, c[k].dim,  m,        c[k].kv, c[k].gate,
                                       c[k].ape,   c[k].norm, k};
            gj[k] = (dsv4_bk_comp_job){c[k].d_ent[0],
                                       cap_e,
                                       c[k].d_rkv[0],
                                       c[k].d_rg[0],
                                       Rc,
                                       c[k].width,
                                       c[k].dim,
                                       m,
                                       c[k].d_kv,
                                       c[k].d_gate,
                                       c[k].d_ape,
                                       c[k].d_norm,
                                       k};
        }
        TRY(dsv4_bk_comp_append_multi(g_cpu, hj, 2, eps, g_freqs, r, &rs.c));
        TRY(dsv4_bk_comp_append_multi(g_gpu, gj, 2, eps, d_freqs, r, &rs.g));
        for (int k = 0; k < 2; k++)
            TRY(dsv4_bk_comp_append(g_gpu, c[k].d_ent[1], cap_e, c[k].d_rkv[1], c[k].d_rg[1], Rc,
                                    c[k].width, c[k].dim, m, c[k].d_kv, c[k].d_gate, c[k].d_ape,
                                    c[k].d_norm, eps, d_freqs, r, k, &rs.g));
        TRY(dsv4_bk_sync(g_gpu));
        rows_free(&rs);
    }
    for (int k = 0; k < 2; k++) {
        const size_t rb = c[k].ring_n * 4, eb = c[k].ent_b;
        float *g_rkv[2], *g_rg[2];
        uint8_t *g_ent[2];
        for (int v = 0; v < 2; v++) {
            g_rkv[v] = gpu_get(malloc(rb), c[k].d_rkv[v], rb);
            g_rg[v] = gpu_get(malloc(rb), c[k].d_rg[v], rb);
            g_ent[v] = gpu_get(malloc(eb), c[k].d_ent[v], eb);
        }
        const int same_single = !memcmp(g_rkv[0], g_rkv[1], rb) && !memcmp(g_rg[0], g_rg[1], rb) &&
                                !memcmp(g_ent[0], g_ent[1], eb);
        const int ring_cpu = !memcmp(g_rkv[0], c[k].rkv, rb) && !memcmp(g_rg[0], c[k].rg, rb);
        float *a = malloc(c[k].ent_n * 4), *b = malloc(c[k].ent_n * 4);
        ent_values(a, g_ent[0], k, c[k].dim, r, (int64_t)S * cap_e);
        ent_values(b, c[k].ent, k, c[k].dim, r, (int64_t)S * cap_e);
        const int qn = k ? c[k].dim : c[k].dim - r, qb = k ? 32 : 64;
        const double bound = k ? 1.5 : 0.25;
        const vec_stats st = cmp_vectors(a, b, S * cap_e, c[k].dim, qn, qb);
        printf("comp_append_multi (%s %d of %d): vs single calls %s (bound: identical); vs CPU "
               "rings %s, %lld entries differ, max rel %.3g (bound: <= 1, rel <= %.2g)\n",
               k ? "indexer" : "CSA", c[k].dim, c[k].width, same_single ? "identical" : "DIFFER",
               ring_cpu ? "bit-exact" : "DIFFER", (long long)st.diff_vecs, st.max_rel, bound);
        CHECK_MSG(same_single, "comp_append_multi job %d differs from comp_append", k);
        CHECK_MSG(ring_cpu && st.diff_vecs <= 1 && st.max_rel <= bound,
                  "comp_append_multi job %d outside its bound vs the CPU", k);
        free(a), free(b);
        for (int v = 0; v < 2; v++) {
            free(g_rkv[v]), free(g_rg[v]), free(g_ent[v]);
            dsv4_bk_free(g_gpu, c[k].d_rkv[v]), dsv4_bk_free(g_gpu, c[k].d_rg[v]);
            dsv4_bk_free(g_gpu, c[k].d_ent[v]);
        }
        free(c[k].ape), free(c[k].norm), free(c[k].rkv), free(c[k].rg), free(c[k].kv);
        free(c[k].gate), free(c[k].ent);
        dsv4_bk_free(g_gpu, c[k].d_ape), dsv4_bk_free(g_gpu, c[k].d_norm);
        dsv4_bk_free(g_gpu, c[k].d_kv), dsv4_bk_free(g_gpu, c[k].d_gate);
    }
    dsv4_bk_free(g_gpu, d_freqs);
}

int main(int argc, char **argv)
{
    g_small = argc > 1 && !strcmp(argv[1], "--small");
    dsv4_cpu_pool *pool = NULL;
    TRY(dsv4_cpu_pool_create(0, &pool));
    TRY(dsv4_backend_create(DSV4_DEVICE_CPU, 0, pool, &g_cpu));
    dsv4_status st = dsv4_backend_create(DSV4_DEVICE_CUDA, 0, NULL, &g_gpu);
    CHECK_MSG(st == DSV4_OK, "no CUDA backend: %s", dsv4_last_error());
    if (st != DSV4_OK) return test_finish();
    dsv4_rope_freqs(g_freqs, 64, 160000.0f, 16.0f, 65536, 32.0f, 1.0f);
    printf("test_gpu_index%s: CUDA vs CPU backend, seeded random inputs\n",
           g_small ? " --small" : "");

    test_comp("Flash/Pro CSA", 4, 512, 1024, 0);
    test_comp("Flash/Pro HCA", 128, 512, 512, 0);
    test_comp("indexer compressor", 4, 128, 256, 1);
    test_indexer_q(64, 128);
    test_comp_pair();

    /* Flash (topk 512) and Pro (topk 1024) at N = 1, 2, 7, 8, 64 on every path; the entry counts
     * pick different step sizes of the fused kernel (16 .. 128 entries, several steps a CTA) and
     * both selects of the top-k (rows over 4,096 keys: the long-row one, its codes in shared
     * memory up to 16,832 keys); 64K context (16384 entries) at N = 64 for Flash only (CPU
     * time) */
    const int topks[2] = {512, 1024};
    const char *names[2] = {"Flash", "Pro"};
    const int64_t caps[4] = {g_small ? 2048 : 16384, 1025, 4096, g_small ? 4608 : 20000};
    const int Ns[5] = {1, 2, 7, 8, 64};
    for (int t = 0; t < 2; t++)
        for (int c = 0; c < 4; c++) {
            index_inputs in;
            index_inputs_make(&in, 64, 128, 4, topks[t], caps[c]);
            for (int n = 0; n < 5; n++) {
                const int big = caps[c] > 4096 || Ns[n] == 64;
                if (g_small && Ns[n] > 2) continue;
                if (big && caps[c] * Ns[n] > 16384 * 16 && !(t == 0 && caps[c] == 16384))
                    continue; /* CPU time */
                test_topk(names[t], &in, Ns[n], 0);
            }
            index_inputs_free(&in);
        }
    /* split calls (cap_e > 2048: the cluster kernel for the rows of up to 2048 entries, the fused
     * one for the others): rows on both sides of 2048 (split_rows), 16-CTA clusters (N = 5) and
     * 8 (N = 12), forced and auto, Flash and Pro at cap_e 4096 and Flash at 16384 */
    for (int t = 0; t < 2; t++)
        for (int c = 0; c < 2; c++) {
            if ((g_small || t == 1) && c == 1) continue;
            index_inputs in;
            index_inputs_make(&in, 64, 128, 4, topks[t], c ? 16384 : 4096);
            test_topk(names[t], &in, 5, 1);
            if (!g_small) test_topk(names[t], &in, 12, 1);
            if (t == 0 && c == 0) {
                test_q_topk(names[t], &in, 5, 1);
                if (!g_small) test_q_topk(names[t], &in, 12, 1);
            }
            index_inputs_free(&in);
        }
    {
        index_inputs in;
        index_inputs_make(&in, 8, 64, 4, 16, 256);
        test_topk("generic nh 8 d 64", &in, 7, 0);
        test_q_topk("generic nh 8 d 64", &in, 7, 0);
        index_inputs_free(&in);
    }
    /* the fused indexer_q_topk: Flash at the bench's 4K (cluster path) and 64K (fused path) */
    const int64_t qcaps[2] = {1025, g_small ? 2048 : 16384};
    for (int c = 0; c < 2; c++) {
        index_inputs in;
        index_inputs_make(&in, 64, 128, 4, 512, qcaps[c]);
        for (int n = 0; n < 5; n++) {
            if (g_small && Ns[n] > 2) continue;
            if (qcaps[c] > 4096 && Ns[n] > 2) continue; /* CPU time */
            test_q_topk("Flash", &in, Ns[n], 0);
        }
        index_inputs_free(&in);
    }
    if (!g_small) {
        const int64_t tcaps[3] = {16384, 1025, 32768}; /* 64K context; the bench's 4K; 128K */
        const int bn[5] = {1, 2, 4, 8, 64}; /* the decode batches the cluster path takes, and 64 */
        for (int c = 0; c < 3; c++) {
            index_inputs in;
            index_inputs_make(&in, 64, 128, 4, 512, tcaps[c]);
            for (int t = 0; t < 2; t++) {
                in.topk = topks[t];
                int paths[5];
                const int np = paths_for(64, 128, 0, paths);
                for (int pi = 0; pi < np; pi++)
                    for (int n = 0; n < 5; n++) topk_at_scale(&in, bn[n], paths[pi]);
                if (c == 0) /* a 64K engine's rows at 4K (split) and 64K: auto vs fused */
                    for (int n = 0; n < 4; n++)
                        for (int v = 0; v < 2; v++)
                            for (int pi = 0; pi < 2; pi++)
                                q_topk_at_scale(&in, bn[n], v ? in.cap_e : 1025,
                                                pi ? DSV4_INDEX_PATH_AUTO : DSV4_INDEX_PATH_FUSED);
            }
            index_inputs_free(&in);
        }
    }
    dsv4_backend_destroy(g_gpu);
    dsv4_backend_destroy(g_cpu);
    dsv4_cpu_pool_destroy(pool);
    return test_finish();
}
