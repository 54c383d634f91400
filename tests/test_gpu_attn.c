/*
 * test_gpu_attn.c - GPU test (ctest -L gpu) of the attn op group (backend.h): dsv4_bk_kv_store
 * and dsv4_bk_attention, CUDA against the CPU reference (bk_attn.c, the session forward's
 * faithful attention) on fresh seeded random inputs at the Flash (H 64) and Pro (H 128) shapes:
 * window ring with wraparound and empty slots (p < W), CSA picks with -1 padding and holes, HCA
 * (0 entries too, 512 entries at 64K context), sliding only (m = 0), prefill chunks, other head
 * dims (64, 128, 192, 256) and head counts (12). The cache is in the serving layout
 * (kv_layout.h): entries dsv4_kv_encode-d from N(0, 1) rows, with 64 RoPE dims at hd 512 and
 * other splits at the small dims (no RoPE dims; non-RoPE dims not a multiple of 64, of 16, of
 * 8). Prints per case the errors, the bound and (for the decode shapes) the CUDA time per
 * call.
 *
 * Cases with the inverse RoPE fused into the epilogue (rope_r > 0, the engine's call) check it
 * against the CPU's attention -> rope (a bound derived below), the CPU's rope on the CUDA
 * attention (test_gpu_rows' rope bound), and every plan bit for bit against the sequential
 * kernel followed by the CUDA rope op.
 *
 * Every case also runs each forced plan of the split kernel (bk_attn.cu: heads a CTA, cluster
 * size, blocks a CTA a round, through dsv4_cuda_attention_cfg) and the sequential kernel
 * (attn_seq.cu) against the same CPU reference and bound, and requires every plan to equal the
 * sequential kernel bit for bit (the split's design; bk_attn.cu says what it keeps). Timed
 * cases print each plan's time per call, eager (50 calls, wall clock) and replayed from a CUDA
 * graph of 20 calls (the engine's way).
 *
 * usage: test_gpu_attn [--small | --sweep]   (--small: small shapes only, for compute-sanitizer;
 * --sweep: also every plan of the timed cases, timed: sweep_plans)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/ops.h"
#include "backend/kv_layout.h"
#include "model/quant_sim.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>

/* bk_attn.cu test hook (declared for CUDA in backend/cuda/attn.cuh): the attention with a
 * forced plan; want = {heads a CTA / 8 (0: choose, -1: the sequential kernel), largest
 * cluster, most blocks a CTA a round}; got = {heads / 8, cluster, blocks, shared bytes}. */
dsv4_status dsv4_cuda_attention_cfg(dsv4_backend *b, float *o, const float *q, int H, int hd,
                                    int kr, const uint8_t *win, int R, int W, const uint8_t *ent,
                                    int64_t cap_e, int m, const int32_t *sel, int topk,
                                    const float *sink, const dsv4_bk_rows *rows, int rope_r,
                                    const float *rope_freqs, const int want[3], int got[6]);

static uint64_t rng = 0x5eed0a77e11ull;

static uint64_t rnd64(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float urand(void) /* [0, 1) */
{
    return (float)(rnd64() >> 40) * 0x1p-24f;
}

static float nrand(void) /* mean 0, sd 1 (sum of four uniforms) */
{
    return (urand() + urand() + urand() + urand() - 2.0f) * 1.7320508f;
}

/* n entries of layout l (dsv4_kv_bytes(l, n) bytes, calloc-ed) encoded from N(0, 1) rows. */
static uint8_t *kv_entries(const dsv4_kv_layout *l, int64_t n)
{
    uint8_t *p = calloc((size_t)dsv4_kv_bytes(l, n), 1);
    float *x = malloc((size_t)l->hd * sizeof *x);
    for (int64_t e = 0; e < n; e++) {
        for (int i = 0; i < l->hd; i++) x[i] = nrand();
        dsv4_kv_encode(l, p, e, x);
    }
    free(x);
    return p;
}

static dsv4_backend *cpu, *gpu;

/* A device copy of host bytes (NULL for NULL). */
static void *dev_copy(const void *src, size_t bytes)
{
    if (!src) return NULL;
    void *d = NULL;
    dsv4_status st = dsv4_bk_alloc(gpu, bytes ? bytes : 1, &d);
    if (st == DSV4_OK) st = dsv4_bk_upload(gpu, d, src, bytes);
    CHECK_MSG(st == DSV4_OK, "device copy of %zu B: %s", bytes, dsv4_last_error());
    return d;
}

/* ---- kv_store: bit-exact (the same act_quant of the non-RoPE dims and nearest-even bf16 of
 * the RoPE dims on both: dsv4_kv_encode's bytes, padding included) -----------------------------
 * The ring starts as random bytes, so padding left unwritten shows. The rows are random bit
 * patterns (bf16 ties, values near 1, -0 among them); NaN, infinity and 3.4e38 (bf16 infinity)
 * sit in row 0's RoPE dims, which keep them as bf16: in the non-RoPE dims they reach the block's
 * division by its scale, where the CPU keeps a NaN's sign and payload and the GPU returns its
 * canonical NaN, so their e4m3 bytes are not defined alike (a finite act_quant-ed row has none).
 * There, exponents 254 and 255 become 252 and 253 (finite, and finite in bf16). */
static void test_kv_store(int hd, int r, int R, int N)
{
    enum { S = 4 };
    const dsv4_kv_layout l = dsv4_kv_layout_of(hd, r);
    int32_t slot[64], pos[64];
    for (int i = 0; i < N; i++) { /* half a chunk of slot 1 across the ring's end, half decode */
        slot[i] = i < N / 2 ? 1 : (i % 3 == 0 ? 0 : i % 3 + 1);
        pos[i] = i < N / 2 ? 4 * R - N / 4 + i : 7 * i + 1; /* distinct ring cells */
    }
    const size_t nb = (size_t)dsv4_kv_bytes(&l, (int64_t)S * R);
    uint8_t *win = malloc(nb), *got = malloc(nb);
    float *kv = malloc((size_t)N * hd * sizeof *kv);
    for (size_t i = 0; i < nb; i++) win[i] = (uint8_t)rnd64();
    for (int i = 0; i < N * hd; i++) {
        uint32_t u = (uint32_t)rnd64();
        if (i % 7 == 0) u = (u & 0xffff0000u) | 0x8000u; /* exact ties */
        if (i % 11 == 0) u = (u & 0xc07fffffu) | 0x3f000000u;
        if (i % hd < l.nope && (u & 0x7f000000u) == 0x7f000000u) u ^= 0x01000000u;
        float v;
        memcpy(&v, &u, sizeof v);
        const int rd = i - l.nope; /* row 0's RoPE dims */
        kv[i] = i == 7 ? -0.0f : rd == 0 ? NAN : rd == 1 ? INFINITY : rd == 2 ? 3.4e38f : v;
    }
    void *dwin = dev_copy(win, nb), *dkv = dev_copy(kv, (size_t)N * hd * 4);
    void *dslot = dev_copy(slot, N * 4), *dpos = dev_copy(pos, N * 4);
    dsv4_bk_rows hr = {N, slot, pos, NULL}, dr = {N, dslot, dpos, NULL};
    dsv4_status st = dsv4_cpu_bk_kv_store(cpu, win, R, hd, r, kv, &hr);
    CHECK_MSG(st == DSV4_OK, "cpu kv_store: %s", dsv4_last_error());
    st = dsv4_cuda_bk_kv_store(gpu, dwin, R, hd, r, dkv, &dr);
    if (st == DSV4_OK) st = dsv4_bk_download(gpu, got, dwin, nb);
    CHECK_MSG(st == DSV4_OK, "cuda kv_store: %s", dsv4_last_error());
    size_t bad = 0;
    for (size_t i = 0; st == DSV4_OK && i < nb; i++) bad += win[i] != got[i];
    printf("kv_store  S %d R %3d hd %d r %2d N %2d: %zu of %zu ring bytes differ (bound 0: "
           "bit-exact)\n",
           S, R, hd, r, N, bad, nb);
    CHECK(bad == 0);
    dsv4_bk_free(gpu, dwin);
    dsv4_bk_free(gpu, dkv);
    dsv4_bk_free(gpu, dslot);
    dsv4_bk_free(gpu, dpos);
    free(win);
    free(got);
    free(kv);
}

/* ---- attention -------------------------------------------------------------------------------
 * Bound, per element, normalised by M = max|o| over the element's (row, head) (the stated floor of
 * the relative error |a-b| / max(|b|, M) is M itself):
 *   - the output is rounded to bf16 last; two pre-rounding values x, y round to values at most
 *     |x - y| + 1 ulp apart, and 1 bf16 ulp of |o| <= M is <= 2^-7 M;
 *   - the pre-rounding outputs differ by f32 summation order (q.k over hd, e over 64 slots,
 *     p.v over 64 slots: ~1e-6 relative, the CPU sums in double) and by the bf16(e) that this
 *     moves across a rounding boundary: such a flip changes one weight by one bf16 ulp (<= 2^-7
 *     of e) and happens on ~|de|/ulp ~ 1e-3 of the slots; with weights ~ 1/n_slots and
 *     max|v| ~ 10-20 M this stays ~1e-4 M; we allow 2^-8 M for it.
 * So |cuda - cpu| <= (2^-7 + 2^-8) M = 3 * 2^-8 M (~0.0117). */
static const double ATTN_BOUND = 3.0 / 256.0;

/* With the inverse RoPE fused (rope_r > 0), against the CPU's attention -> rope: let x, y be
 * the CUDA / CPU attention outputs before the RoPE, |x - y| <= B M_y (B = ATTN_BOUND, M_y the
 * head's max |y|). A rotated pair moves by <= (|cos| + |sin|) B M_y <= sqrt2 B M_y, plus the
 * cos / sin of the two sides (1-2 f32 ulp apart, test_gpu_rows: <= 2^-21 (|y0| + |y1|) <=
 * 2^-20 M_y); both are then rounded to bf16, <= 1 ulp apart more, and a rotated value is
 * <= sqrt2 M_y, so that ulp is <= sqrt2 2^-7 M_y; the other dims keep B M_y. The floor is the
 * reference's head max M' after the RoPE: a pair keeps its norm, so M_y <= sqrt2 M' (1 + 2^-8)
 * (the bf16 rounding of M'). Hence |cuda - cpu| <= (2 B + 2^-6 + 2^-19.5)(1 + 2^-8) M'. */
static const double ROPE_BOUND = (2.0 * (3.0 / 256.0) + 0x1p-6 + 0x1.6a09e6p-20) * (1.0 + 0x1p-8);

typedef struct attn_case {
    const char *name;
    int H, hd, kr, W, R, m, csa, topk, N; /* kr: the keys' RoPE dims (the cache's layout) */
    const int32_t *slot, *pos;
    int holes;    /* CSA: -1 scattered among the picks, not only after them */
    float qscale; /* q ~ N(0, qscale^2): larger makes the scores (and the running max) sharper */
    int timed;    /* print the CUDA time per call */
} attn_case;

/* Errors of a against the reference b: [n_vec, hd], per-vector floor max|b|. */
typedef struct attn_err {
    double max_abs, max_rel, sum_rel;
    size_t inexact, over, nan_bad;
} attn_err;

static attn_err compare(const float *a0, const float *b0, int64_t n_vec, int hd, double bound)
{
    attn_err e = {0, 0, 0, 0, 0, 0};
    for (int64_t v = 0; v < n_vec; v++) {
        const float *a = a0 + v * hd, *b = b0 + v * hd;
        double M = 0;
        for (int i = 0; i < hd; i++) M = fmax(M, fabs(b[i]));
        const double fl = M > 0 ? M : 1e-30;
        for (int i = 0; i < hd; i++) {
            if (isnan(a[i]) || isnan(b[i])) {
                e.nan_bad += isnan(a[i]) != isnan(b[i]);
                continue;
            }
            const double d = fabs((double)a[i] - b[i]), rel = d / fmax(fabs(b[i]), fl);
            e.inexact += a[i] != b[i];
            e.max_abs = fmax(e.max_abs, d);
            e.max_rel = fmax(e.max_rel, rel);
            e.sum_rel += rel;
            e.over += rel > bound;
        }
    }
    return e;
}

/* The device side of a case. */
typedef struct attn_dev {
    float *out, *q, *sink;
    uint8_t *win, *ent;
    int32_t *sel;
    const dsv4_bk_rows *rows;
    int H, hd, kr, R, W, m, topk;
    int64_t cap_e;
    int rope_r;         /* > 0: the fused inverse RoPE */
    const float *freqs; /* its table (device) */
} attn_dev;

/* Forced plans {heads a CTA / 8, largest cluster, most blocks a CTA a round}: first the
 * sequential kernel, then the one-pass form (cluster 1), clusters up to 8 (portable), rounds
 * (kb 1: a row longer than the cluster), and 16 (non-portable; may not be launchable). */
static const int plans[][3] = {{-1, 0, 0}, {0, 0, 0}, {1, 1, 0},  {2, 1, 0},  {4, 1, 0}, {1, 8, 0},
                               {2, 8, 0},  {4, 8, 0}, {1, 8, 1},  {2, 8, 1},  {1, 4, 0}, {1, 2, 1},
                               {4, 2, 0},  {2, 4, 0}, {1, 16, 0}, {2, 16, 0}, {4, 16, 0}};

static dsv4_status run_plan(const attn_dev *d, const int want[3], int got[6])
{
    return dsv4_cuda_attention_cfg(gpu, d->out, d->q, d->H, d->hd, d->kr, d->win, d->R, d->W,
                                   d->ent, d->cap_e, d->m, d->sel, d->topk, d->sink, d->rows,
                                   d->rope_r, d->freqs, want, got);
}

/* Microseconds a call: eager (50 calls back to back, wall clock) and replayed from a graph of
 * 20 calls (10 replays after a warm one). */
static dsv4_status time_plan(const attn_dev *d, const int want[3], double *eager, double *graph)
{
    int got[6];
    dsv4_status st = DSV4_OK;
    const int reps = 50, per_graph = 20, replays = 10;
    double t0 = test_now();
    for (int i = 0; i < reps && st == DSV4_OK; i++) st = run_plan(d, want, got);
    if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
    *eager = (test_now() - t0) / reps * 1e6;
    void *g = NULL;
    if (st == DSV4_OK) st = dsv4_bk_graph_begin(gpu);
    if (st == DSV4_OK) {
        for (int i = 0; i < per_graph && st == DSV4_OK; i++) st = run_plan(d, want, got);
        const dsv4_status st2 = dsv4_bk_graph_end(gpu, &g);
        if (st == DSV4_OK) st = st2;
    }
    if (st == DSV4_OK) st = dsv4_bk_graph_launch(gpu, g);
    if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
    t0 = test_now();
    for (int i = 0; i < replays && st == DSV4_OK; i++) st = dsv4_bk_graph_launch(gpu, g);
    if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
    *graph = (test_now() - t0) / (replays * per_graph) * 1e6;
    dsv4_bk_graph_free(gpu, g);
    return st;
}

/* --sweep: every plan (heads a CTA, exactly C CTAs a cluster, exactly kb blocks a CTA a round)
 * of a timed case, each checked bit for bit against the sequential kernel's o_seq and timed:
 * the data the cost model of bk_attn.cu (sa_cost) is fitted to. A plan that does not fit this
 * shape or GPU is left out. */
static int sweep;

static void sweep_plans(const attn_dev *d, const attn_case *c, const float *o_seq, float *o_gpu,
                        size_t nq)
{
    static const int cs[] = {1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16};
    /* blocks of the longest row the call can see, as the plan chooser counts them */
    const int64_t n_ent = d->sel ? d->topk : d->m ? d->cap_e : 0;
    const int nb = (int)((d->W + n_ent + 63) / 64);
    for (int nt = 1; nt <= 4; nt *= 2)
        for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++)
            for (int kb = 1; kb <= (cs[ci] > 1 ? 4 : 1); kb++) {
                const int want[3] = {nt, -cs[ci], -kb};
                int got[6] = {0, 0, 0, 0, 0, 0};
                dsv4_status st = run_plan(d, want, got);
                if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
                if (st == DSV4_OK) st = dsv4_bk_download(gpu, o_gpu, d->out, nq * 4);
                if (st != DSV4_OK || got[1] != cs[ci] || got[2] != kb) continue;
                size_t ndiff = 0;
                for (size_t i = 0; i < nq; i++)
                    ndiff += memcmp(&o_gpu[i], &o_seq[i], sizeof(float)) != 0;
                CHECK_MSG(ndiff == 0, "%s: sweep plan HG %d C %d kb %d: %zu differ", c->name,
                          8 * nt, cs[ci], kb, ndiff);
                double eager = 0, graph = 0;
                st = time_plan(d, want, &eager, &graph);
                CHECK_MSG(st == DSV4_OK, "%s: sweep timing: %s", c->name, dsv4_last_error());
                printf("    sweep %s N %d H %d nb %d: HG %d C %d kb %d bytes %d per_sm %d cap %d: "
                       "%.2f us graph\n",
                       c->name, c->N, c->H, nb, 8 * nt, cs[ci], kb, got[3], got[4], got[5], graph);
            }
}

/* Fused-RoPE check (rope_r > 0): the CPU's rope op applied to the CUDA attention without the
 * RoPE (o_un, [n_vec, hd]) against the fused output: the same input pairs, so only the two
 * sides' cos / sin differ (test_gpu_rows' rope bound): a rotated element within
 * 2^-21 (|a| + |b|) of its input pair plus 1 bf16 ulp, the other dims bit-exact. Returns the
 * elements over; *ndiff: those not bit-exact; *worst: the largest error over its bound. */
static size_t check_cpu_rope(const float *fused, const float *o_un, int64_t n_vec, int hd,
                             int rope_r, const float *freqs, const dsv4_bk_rows *hr, int H,
                             size_t *ndiff, double *worst)
{
    const size_t n = (size_t)n_vec * hd;
    float *want = malloc(n * 4);
    memcpy(want, o_un, n * 4);
    const dsv4_status st =
        dsv4_cpu_bk_rope(cpu, want, (int64_t)H * hd, hr, H, hd, rope_r, freqs, 1, 1);
    CHECK_MSG(st == DSV4_OK, "cpu rope: %s", dsv4_last_error());
    size_t over = 0;
    *ndiff = 0;
    *worst = 0;
    for (int64_t v = 0; v < n_vec; v++)
        for (int i = 0; i < hd; i++) {
            const size_t k = (size_t)v * hd + i;
            if (isnan(fused[k]) || isnan(want[k])) {
                over += isnan(fused[k]) != isnan(want[k]);
                continue;
            }
            *ndiff += fused[k] != want[k];
            double b = 0;
            if (i >= hd - rope_r) {
                const size_t k0 = k - ((i - (hd - rope_r)) & 1);
                const double mag = fmax(fabs(fused[k]), fabs(want[k]));
                int ex = 0;
                frexp(mag, &ex);
                b = 0x1p-21 * (fabs(o_un[k0]) + fabs(o_un[k0 + 1])) + ldexp(1.0, ex - 8);
            }
            const double d = fabs((double)fused[k] - want[k]);
            if (d > b) over++;
            if (b > 0 && d / b > *worst) *worst = d / b;
        }
    free(want);
    return over;
}

/* One case; rope_r > 0 runs the op with the inverse RoPE fused (freqs: the compressed YaRN
 * table at rope_r dims) and checks it against the CPU's attention -> rope (ROPE_BOUND), the
 * CPU's rope on the CUDA attention (check_cpu_rope), and every plan bit for bit against the
 * sequential kernel followed by the CUDA rope op. */
static void run_attn(const attn_case *c, int rope_r)
{
    const int H = c->H, hd = c->hd, kr = c->kr, N = c->N, topk = c->csa ? c->topk : 0;
    const dsv4_kv_layout kl = dsv4_kv_layout_of(hd, kr);
    float freqs[DSV4_ROPE_MAX / 2];
    if (rope_r) dsv4_rope_freqs(freqs, rope_r, 160000.0f, 16.0f, 65536, 32.0f, 1.0f);
    const double bound = rope_r ? ROPE_BOUND : ATTN_BOUND;
    int S = 0;
    int64_t cap_e = 0;
    for (int r = 0; r < N; r++) {
        if (c->slot[r] + 1 > S) S = c->slot[r] + 1;
        const int64_t ne = c->m ? ((int64_t)c->pos[r] + 1) / c->m : 0;
        if (ne > cap_e) cap_e = ne;
    }
    if (cap_e == 0 && c->m) cap_e = 1;
    const size_t nq = (size_t)N * H * hd;
    const size_t nw = (size_t)dsv4_kv_bytes(&kl, (int64_t)S * c->R);
    const size_t ne = (size_t)dsv4_kv_bytes(&kl, (int64_t)S * cap_e);
    float *q = malloc(nq * 4), *o_cpu = malloc(nq * 4), *o_gpu = malloc(nq * 4);
    float *sink = malloc((size_t)H * 4);
    int32_t *sel = c->csa ? malloc((size_t)N * topk * 4) : NULL;
    for (size_t i = 0; i < nq; i++) q[i] = dsv4_round_bf16(nrand() * c->qscale);
    for (int h = 0; h < H; h++) sink[h] = nrand() * 2.0f;
    uint8_t *win = kv_entries(&kl, (int64_t)S * c->R);
    uint8_t *ent = c->m ? kv_entries(&kl, (int64_t)S * cap_e) : NULL;
    int64_t n_slots = 0;
    for (int r = 0; sel && r < N; r++) { /* k distinct picks of the n_vis visible entries */
        int32_t *sr = sel + (size_t)r * topk;
        const int n_vis = (c->pos[r] + 1) / c->m, k = n_vis < topk ? n_vis : topk;
        for (int j = 0; j < topk; j++) sr[j] = -1;
        int *perm = malloc((size_t)(n_vis > 0 ? n_vis : 1) * sizeof *perm);
        for (int i = 0; i < n_vis; i++) perm[i] = i;
        for (int j = 0; j < k; j++) { /* partial Fisher-Yates: k distinct, in random order */
            const int i = j + (int)(rnd64() % (uint64_t)(n_vis - j));
            const int t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
            sr[j] = t;
        }
        free(perm);
        if (c->holes) /* move some picks up so -1 sit between them: shuffle the whole row */
            for (int j = topk - 1; j > 0; j--) {
                const int i = (int)(rnd64() % (uint64_t)(j + 1));
                const int32_t t = sr[i];
                sr[i] = sr[j];
                sr[j] = t;
            }
        n_slots += c->W + k;
    }
    for (int r = 0; !sel && r < N; r++) n_slots += c->W + (c->m ? (c->pos[r] + 1) / c->m : 0);

    dsv4_bk_rows hr = {N, c->slot, c->pos, NULL};
    double t0 = test_now();
    dsv4_status st =
        dsv4_cpu_bk_attention(cpu, o_cpu, q, H, hd, kr, win, c->R, c->W, ent, cap_e, c->m, sel,
                              topk, sink, &hr, rope_r, rope_r ? freqs : NULL);
    const double t_cpu = test_now() - t0;
    CHECK_MSG(st == DSV4_OK, "%s: cpu: %s", c->name, dsv4_last_error());

    float *dq = dev_copy(q, nq * 4), *dsink = dev_copy(sink, (size_t)H * 4), *dout = NULL;
    uint8_t *dwin = dev_copy(win, nw), *dent = dev_copy(ent, ne);
    int32_t *dsel = dev_copy(sel, (size_t)N * topk * 4);
    int32_t *dslot = dev_copy(c->slot, (size_t)N * 4), *dpos = dev_copy(c->pos, (size_t)N * 4);
    float *dfreqs = rope_r ? dev_copy(freqs, (size_t)rope_r / 2 * 4) : NULL;
    CHECK(dsv4_bk_alloc(gpu, nq * 4, (void **)&dout) == DSV4_OK);
    dsv4_bk_rows dr = {N, dslot, dpos, NULL};
    st = dsv4_cuda_bk_attention(gpu, dout, dq, H, hd, kr, dwin, c->R, c->W, dent, cap_e, c->m, dsel,
                                topk, dsink, &dr, rope_r, dfreqs);
    if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
    if (st == DSV4_OK) st = dsv4_bk_download(gpu, o_gpu, dout, nq * 4);
    CHECK_MSG(st == DSV4_OK, "%s: cuda: %s", c->name, dsv4_last_error());

    attn_err e = compare(o_gpu, o_cpu, (int64_t)N * H, hd, bound);
    printf("%-34s%s N %2d H %3d hd %d kr %d slots/row %5.0f: max abs %.3g, max rel %.3g (mean "
           "%.2g; floor max|o| of the head), bound %.4f; %zu of %zu not bit-exact; cpu %.2f s",
           c->name, rope_r ? " +rope" : "", N, H, hd, kr, (double)n_slots / N, e.max_abs, e.max_rel,
           e.sum_rel / (double)nq, bound, e.inexact, nq, t_cpu);
    if (c->timed && st == DSV4_OK) {
        const int reps = 50;
        double t1 = test_now();
        for (int i = 0; i < reps && st == DSV4_OK; i++)
            st = dsv4_cuda_bk_attention(gpu, dout, dq, H, hd, kr, dwin, c->R, c->W, dent, cap_e,
                                        c->m, dsel, topk, dsink, &dr, rope_r, dfreqs);
        if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
        printf("; cuda %.1f us/call", (test_now() - t1) / reps * 1e6);
    }
    printf("\n");
    CHECK_MSG(st == DSV4_OK && e.over == 0 && e.nan_bad == 0,
              "%s: %zu elements over the bound, %zu NaN mismatches", c->name, e.over, e.nan_bad);
    if (rope_r && st == DSV4_OK) { /* the CPU's rope on the CUDA attention without it */
        float *o_un = malloc(nq * 4);
        st = dsv4_cuda_bk_attention(gpu, dout, dq, H, hd, kr, dwin, c->R, c->W, dent, cap_e, c->m,
                                    dsel, topk, dsink, &dr, 0, NULL);
        if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
        if (st == DSV4_OK) st = dsv4_bk_download(gpu, o_un, dout, nq * 4);
        CHECK_MSG(st == DSV4_OK, "%s: cuda without rope: %s", c->name, dsv4_last_error());
        size_t nd = 0;
        double worst = 0;
        const size_t over =
            check_cpu_rope(o_gpu, o_un, (int64_t)N * H, hd, rope_r, freqs, &hr, H, &nd, &worst);
        printf("    fused rope r %d vs the CPU rope on the CUDA attention: %zu of %zu not "
               "bit-exact, worst err / bound %.3g (bound 2^-21 (|a|+|b|) + 1 bf16 ulp)\n",
               rope_r, nd, nq, worst);
        CHECK_MSG(over == 0, "%s: fused rope: %zu elements over the rope bound", c->name, over);
        free(o_un);
    }

    /* every plan, the sequential kernel first (the bit-identity yardstick) */
    attn_dev dv = {dout, dq,   dsink, dwin, dent, dsel,  &dr,    H,     hd,
                   kr,   c->R, c->W,  c->m, topk, cap_e, rope_r, dfreqs};
    float *o_seq = calloc(nq, 4), *o_nan = malloc(nq * 4);
    for (size_t i = 0; i < nq; i++) o_nan[i] = NAN;
    for (size_t v = 0; v < sizeof plans / sizeof plans[0]; v++) {
        int got[6] = {0, 0, 0, 0, 0, 0};
        st = dsv4_bk_upload(gpu, dout, o_nan, nq * 4); /* an element a plan misses shows */
        if (st == DSV4_OK) st = run_plan(&dv, plans[v], got);
        if (st == DSV4_OK) st = dsv4_bk_sync(gpu);
        if (st == DSV4_OK) st = dsv4_bk_download(gpu, o_gpu, dout, nq * 4);
        if (st != DSV4_OK) { /* a forced plan that does not fit this shape or GPU */
            const int may_fail = plans[v][0] > 0;
            printf("    plan {%2d %2d %d}: not run: %s\n", plans[v][0], plans[v][1], plans[v][2],
                   dsv4_last_error());
            CHECK_MSG(may_fail, "%s: plan %zu: %s", c->name, v, dsv4_last_error());
            continue;
        }
        if (v == 0) memcpy(o_seq, o_gpu, nq * 4);
        e = compare(o_gpu, o_cpu, (int64_t)N * H, hd, bound);
        size_t ndiff = 0;
        for (size_t i = 0; i < nq; i++) ndiff += memcmp(&o_gpu[i], &o_seq[i], sizeof(float)) != 0;
        if (got[0] < 0)
            printf("    sequential kernel             ");
        else
            printf("    plan {%2d %2d %d}: HG %2d C %2d kb %d", plans[v][0], plans[v][1],
                   plans[v][2], 8 * got[0], got[1], got[2]);
        printf(" %6.1f KB: max rel %.3g, over %zu; %zu differ from sequential", got[3] / 1024.0,
               e.max_rel, e.over + e.nan_bad, ndiff);
        if (c->timed) {
            double eager = 0, graph = 0;
            st = time_plan(&dv, plans[v], &eager, &graph);
            if (st == DSV4_OK)
                printf("; %6.1f us eager, %6.1f us graph", eager, graph);
            else
                printf("; timing failed: %s", dsv4_last_error());
            CHECK_MSG(st == DSV4_OK || plans[v][0] > 0, "%s: timing plan %zu: %s", c->name, v,
                      dsv4_last_error());
        }
        printf("\n");
        CHECK_MSG(e.over == 0 && e.nan_bad == 0, "%s: plan %zu: %zu over the bound, %zu NaN",
                  c->name, v, e.over, e.nan_bad);
        CHECK_MSG(ndiff == 0, "%s: plan %zu: %zu elements differ from the sequential kernel",
                  c->name, v, ndiff);
    }
    if (sweep && c->timed && !rope_r) sweep_plans(&dv, c, o_seq, o_gpu, nq);
    free(o_seq);
    free(o_nan);
    dsv4_bk_free(gpu, dq);
    dsv4_bk_free(gpu, dsink);
    dsv4_bk_free(gpu, dfreqs);
    dsv4_bk_free(gpu, dout);
    dsv4_bk_free(gpu, dwin);
    dsv4_bk_free(gpu, dent);
    dsv4_bk_free(gpu, dsel);
    dsv4_bk_free(gpu, dslot);
    dsv4_bk_free(gpu, dpos);
    free(q);
    free(o_cpu);
    free(o_gpu);
    free(sink);
    free(win);
    free(ent);
    free(sel);
}

static int32_t seq[64], ramp[64], s64[64], p64a[64], p64b[64], p64c[64];

static void full_cases(void)
{
    for (int r = 0; r < 64; r++) {
        seq[r] = r;
        s64[r] = 0;
        p64a[r] = 2100 + 29 * r; /* every row: 128 window keys + 512 picks */
        /* mixed: p < W (empty window slots, few picks), around W, p >> W (ring wraparound) */
        p64b[r] = r % 8 == 0 ? r / 2 : r % 8 == 1 ? 126 + r / 8 : 300 + 67 * r;
        ramp[r] = 1000 + r;      /* a prefill chunk across the HCA boundary 1023 -> 1024 */
        p64c[r] = 8000 + 37 * r; /* Pro: 128 window keys + 1024 picks */
    }
    static const int32_t z1[1] = {0}, p5000[1] = {5000}, p64k[1] = {65535};
    static const int32_t s8[8] = {3, 0, 7, 1, 6, 2, 5, 4};
    static const int32_t hca8[8] = {0, 5, 127, 128, 300, 1000, 5000, 20000};
    static const int32_t win8[8] = {0, 1, 63, 64, 127, 128, 1000, 99999};
    static const int32_t pro4[4] = {300, 2000, 4500, 9000}, pro2[2] = {130, 65535};
    static const int32_t csa16[16] = {3000, 3001, 3002, 3003, 3004, 3005, 3006, 3007,
                                      3008, 3009, 3010, 3011, 3012, 3013, 3014, 3015};
    const attn_case cases[] = {
        {"flash csa decode", 64, 512, 64, 128, 256, 4, 1, 512, 1, z1, p5000, 0, 2.0f, 1},
        {"flash csa decode", 64, 512, 64, 128, 256, 4, 1, 512, 64, seq, p64a, 0, 2.0f, 1},
        /* the engine's batch 2 and 4: plans whose clusters may not all fit at once */
        {"flash csa decode", 64, 512, 64, 128, 256, 4, 1, 512, 2, seq, p64a, 0, 2.0f, 1},
        {"flash csa decode", 64, 512, 64, 128, 256, 4, 1, 512, 4, seq, p64a, 0, 2.0f, 1},
        {"flash csa mixed (p<W, -1 pad, holes)", 64, 512, 64, 128, 256, 4, 1, 512, 64, seq, p64b, 1,
         4.0f, 0},
        {"flash hca 64K", 64, 512, 64, 128, 256, 128, 0, 0, 1, z1, p64k, 0, 2.0f, 1},
        {"flash hca mixed (0 entries too)", 64, 512, 64, 128, 256, 128, 0, 0, 8, s8, hca8, 0, 8.0f,
         0},
        {"flash window only (m 0)", 64, 512, 64, 128, 256, 0, 0, 0, 8, s8, win8, 0, 2.0f, 0},
        {"flash hca prefill chunk R 192", 64, 512, 64, 128, 192, 128, 0, 0, 64, s64, ramp, 0, 2.0f,
         0},
        {"flash csa prefill chunk", 64, 512, 64, 128, 256, 4, 1, 512, 16, s64, csa16, 0, 2.0f, 0},
        {"pro csa decode", 128, 512, 64, 128, 256, 4, 1, 1024, 4, seq, pro4, 0, 2.0f, 1},
        {"pro hca", 128, 512, 64, 128, 256, 128, 0, 0, 2, seq, pro2, 0, 4.0f, 0},
        /* more of the engine's batches, timed for the plans' cost model */
        {"flash csa decode", 64, 512, 64, 128, 256, 4, 1, 512, 8, seq, p64a, 0, 2.0f, 1},
        {"flash csa decode", 64, 512, 64, 128, 256, 4, 1, 512, 16, seq, p64a, 0, 2.0f, 1},
        {"flash csa decode", 64, 512, 64, 128, 256, 4, 1, 512, 32, seq, p64a, 0, 2.0f, 1},
        {"pro csa decode", 128, 512, 64, 128, 256, 4, 1, 1024, 1, z1, p5000, 0, 2.0f, 1},
        {"pro csa decode", 128, 512, 64, 128, 256, 4, 1, 1024, 16, seq, p64c, 0, 2.0f, 1},
        {"pro csa decode", 128, 512, 64, 128, 256, 4, 1, 1024, 64, seq, p64c, 0, 2.0f, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_attn(&cases[i], 0);
    /* the engine's call: the inverse RoPE of the last 64 dims fused (Flash and Pro decode, the
     * mixed rows, HCA, a prefill chunk) */
    static const size_t fused[] = {0, 1, 4, 5, 8, 10};
    for (size_t i = 0; i < sizeof fused / sizeof fused[0]; i++) run_attn(&cases[fused[i]], 64);
}

static void small_cases(void)
{
    static const int32_t s5[5] = {0, 1, 2, 3, 4}, p5[5] = {2, 40, 200, 700, 1500};
    static const int32_t s4[4] = {1, 0, 1, 2}, p4[4] = {10, 99, 101, 640};
    /* kr: the keys' RoPE dims; non-RoPE dims 96 (a short last scale block), 130 (not a
     * multiple of 16 or 8 either: a chunk across them, RoPE dims 2-byte aligned), 64, 48, 256
     * (no RoPE dims), 88 (a multiple of 8, not of 16) */
    const attn_case cases[] = {
        {"hd 128 H 12 csa holes", 12, 128, 32, 128, 160, 4, 1, 64, 5, s5, p5, 1, 3.0f, 0},
        {"hd 192 H 8 W 100 hca", 8, 192, 62, 100, 128, 16, 0, 0, 4, s4, p4, 0, 3.0f, 0},
        {"hd 128 H 16 window only", 16, 128, 64, 128, 160, 0, 0, 0, 5, s5, p5, 0, 3.0f, 0},
        {"hd 64 H 16 csa", 16, 64, 16, 128, 160, 4, 1, 96, 5, s5, p5, 0, 3.0f, 0},
        {"hd 256 H 8 csa holes", 8, 256, 0, 128, 160, 4, 1, 64, 5, s5, p5, 1, 3.0f, 0},
        {"hd 128 H 8 hca", 8, 128, 40, 100, 128, 16, 0, 0, 4, s4, p4, 0, 3.0f, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_attn(&cases[i], 0);
    /* the fused inverse RoPE: 64 of 128 dims, 2 of 192 (a pair inside a dim tile), all 64 */
    run_attn(&cases[0], 64);
    run_attn(&cases[1], 2);
    run_attn(&cases[3], 64);
}

int main(int argc, char **argv)
{
    const int small = argc > 1 && !strcmp(argv[1], "--small");
    sweep = argc > 1 && !strcmp(argv[1], "--sweep");
    dsv4_cpu_pool *pool = NULL;
    dsv4_status st = dsv4_cpu_pool_create(0, &pool);
    if (st == DSV4_OK) st = dsv4_backend_create(DSV4_DEVICE_CPU, 0, pool, &cpu);
    if (st == DSV4_OK) st = dsv4_backend_create(DSV4_DEVICE_CUDA, 0, NULL, &gpu);
    CHECK_MSG(st == DSV4_OK, "backends: %s", dsv4_last_error());
    if (st != DSV4_OK) return test_finish();
    test_kv_store(128, 32, 64, 16); /* non-RoPE dims 96: a short last scale block */
    test_kv_store(192, 62, 64, 16); /* 130: a block of 2, RoPE dims 2-byte aligned */
    if (!small) test_kv_store(512, 64, 256, 64);
    small_cases();
    if (!small) full_cases();
    dsv4_backend_destroy(gpu);
    dsv4_backend_destroy(cpu);
    dsv4_cpu_pool_destroy(pool);
    return test_finish();
}
