/*
 * test_gpu_linear.c - GPU op test (ctest -L gpu) of dsv4_bk_linear and dsv4_bk_linear_grouped:
 * the CUDA projections against the CPU reference (the session forward's dsv4_cpu_linear_rows;
 * grouped: one such call per group), in every stored weight format, at the Flash and Pro shapes,
 * N in {1, 2, 3, 4, 8, 9, 16, 64, 257}, strided x and y, bf16 rounding on and off; every CUDA
 * kernel (GEMV, MMA, SIMT, MMV) on each call it accepts, not only the dispatcher's pick, and the
 * GEMV split over the CTAs of a cluster (split-K, 2 and 8 slices) on every call it takes. Then
 * dsv4_bk_linear_multi: sets of projections of mixed formats and shapes (the layer's projections
 * of h; every stored format at once; entries the GEMV refuses), N 1..64, its one fused launch
 * (with and without split-K; the GEMV's up to N = 16, MMX's, FP8 and BF16 entries on tensor
 * cores, up to N = 64, with its K split forced to 1 and 8 too; W16X's, each entry a W16 call of
 * one launch, likewise) against the CPU's per-entry calls, under the same bound (W16X: W16's,
 * below), and again on bf16-valued x (xmix_mode 5), where W16X multiplies on its wgmma path rather
 * than its exact f32 one. FMM (FP8,
 * N <= 64) on every FP8 call, at N 17..64 on the Flash wq_b, wo_a, wo_b and indexer wq_b shapes
 * (split over 1, 3, 7 and 8 CTAs of a cluster) and on small shapes with several x chunks. Then the
 * decode bandwidth of the projections, old kernel (GEMV) against new (MMV), at N = 32 and 64 the
 * tiled MMA kernel against FMM, of small matrices without and with split-K, and of the layer's
 * projections of h as separate calls against one multi launch (N = 9..64: MMX and W16X), weights
 * read from HBM (copies in turn, together larger than the L2), CUDA-graph replay and eager.
 *
 * Bound, per output element (the CUDA kernels differ from the CPU only in f32 summation order,
 * plus, on the MMA path and on MMV with BF16 weights, x split into two bf16 halves whose
 * remainder is <= 2^-18 |x|; on MMV and FMM with FP8 weights, x times a power of two split into
 * two f16 halves, remainder <= max(2^-22 |x|, 2^-28 max|x| of its 128-column block). The second
 * term, f16's range, only concerns terms with |x| < 2^-17 of their block's max: with this test's x
 * (block max < 2^14) about 8% of the terms, each off by <= 2^-14 |w|, against S's >= 1.7 |w| per
 * term on average: < 0.3 of the bound even if all those errors had one sign):
 *   |y_gpu - y_cpu| <= 1e-5 * S + 1e-35,   S = sum_c |x_c| |w_rc| (times |scale2|)
 * S is computed by the CPU op itself on |x| and a copy of W with every sign bit cleared; its own
 * f32 rounding (<= cols * 2^-24 relative, non-negative terms) is covered by a 1.001 factor.
 * 1e-5 * S holds for any order of f32 sums over <= 16384 terms in blocks (worst case grows as
 * depth * 2^-24 * S; random-sign data stays far below). With round_bf16 the GPU's value must be
 * the bf16 rounding of some real within that bound of the CPU's unrounded sum: the two differ by
 * one bf16 ulp (2^-8 relative) at most, and only where the CPU sum lies within 1e-5 * S of a
 * rounding boundary.
 * F8W (FP8 x FP8 wgmma, linear_f8w.cu) meets that bound on x that is not
 * act_quant output (its exact f32 path); on act_quant'd x (xmix_mode 3, 4: the Flash and Pro
 * shapes, grouped, odd rows, N 9..128, persistent and split grids, blocks of both paths in one
 * call) it multiplies e4m3 codes, and its bound comes from the tensor cores' accumulation model (a
 * k32 wgmma sums 33 addends aligned to the largest, truncated to 14 significant bits: each off by <
 * 2^-13 of the block's sum |w x|, 4 k32 steps a block): |err| <= (1e-5 + 4 * 33 * 2^-13) * S.
 * W16 and W16X (bf16 wgmma, linear_w16.cu) likewise with 8 k16 steps of 17 addends a block:
 * (1e-5 + 136 * 2^-13) * S (test_gpu_linear_w16.c).
 * Outside [N, nrows] the output buffer must be untouched; the same call twice must give the same
 * bits.
 *
 * usage: test_gpu_linear [--small | --small-xq | --check | --fmm-bench | --multi-bench |
 * --mmv-bench] (--small: a few small shapes, for compute-sanitizer; --small-xq: only its F8W
 * cases on act_quant'd x, for racecheck, whose full --small run takes minutes; --check: the full
 * correctness cases without the timing; --fmm-bench: only the FMM timing lines, N = 32 and 64 on
 * the Flash shapes, to compare builds in one device call; --multi-bench: only the projections of h
 * at N = 9..64, one call per entry against MMX and W16X; --mmv-bench: only the FP8 projections MMV
 * takes at N = 2..16, Flash and Pro shapes, the dispatcher's pick and MMV forced)
 */
#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cuda/linear_path.cuh"
#include "model/quant_sim.h"

#include <math.h>
#include <stdint.h>

#define LIN_TEST_SEED 0x243f6a8885a308d3ull /* this binary's inputs (test_linear.h) */
#include "test_linear.h"

/* FMM and MMX skip x's lo half per chunk of 128-column blocks where every lo of the chunk is
 * zero (the engine's act_quant and bf16 inputs): xmix_mode 1 makes the blocks b of each row with
 * b / 2 % 3 != 1 such blocks (multiples of 1/64 below 7 in magnitude: exact in f16 after any
 * power-of-two scaling that puts the block's max in [2^14, 2^15)), so that chunks with and
 * without lo alternate; 2 makes every block so; 0 leaves fill_x's data.
 * F8W (e4m3 x e4m3 wgmma) multiplies x as e4m3 codes where every 128-column block of the call is
 * e4m3 times a power of two (the engine's act_quant output), in f32 otherwise: xmix_mode 3
 * act_quant's each row's blocks (dsv4_sim_act_quant, from the op's first column: mix_x's xoff,
 * width), 4 all but block 1 of the rows r % 5 == 2 (that block's tiles or K slices take the f32
 * path, the others the codes). W16 and W16X (bf16 wgmma) multiply x as bf16 where every block of
 * a tile is bf16-exact (the engine's h, and its act_quant'd h): xmix_mode 5 rounds x to bf16. */
static int xmix_mode;

static void mix_x(float *x, int64_t n, int64_t ldx, int64_t xoff, int64_t width)
{
    if (xmix_mode == 5) {
        dsv4_sim_bf16(x, n);
        return;
    }
    if (xmix_mode >= 3) {
        for (int64_t r = 0; r < n / ldx; r++) {
            float *row = x + r * ldx + xoff;
            if (xmix_mode == 4 && r % 5 == 2 && width > 256) {
                dsv4_sim_act_quant(row, 128, 128);
                dsv4_sim_act_quant(row + 256, width - 256, 128);
            } else
                dsv4_sim_act_quant(row, width, 128);
        }
        return;
    }
    for (int64_t i = 0; xmix_mode && i < n; i++) {
        const int64_t b = i % ldx / 128;
        if (xmix_mode == 2 || b / 2 % 3 != 1) x[i] = (float)rnd_int(-448, 448) / 64.0f;
    }
}

/* F8W's bound on act_quant'd x (xmix_mode >= 3), from its accumulation model (linear_f8w.cu):
 * within a 128-column block four k32 wgmmas, each adding 33 addends (32 exact e4m3 products and
 * the accumulator) aligned to the largest and truncated to 14 significant bits, so each off by
 * < 2^-13 of the block's sum |w x|: |err| <= 4 * 33 * 2^-13 * S over all blocks, on top of the
 * f32 bound every kernel meets. Its f32 path (any other x) meets the f32 bound alone. */
static double extra_bound(const char *what)
{
    /* W16's (test_gpu_linear_w16.c), W16X's entries alike */
    if (!strcmp(what, "w16") || !strcmp(what, "w16x")) return 136.0 * 0x1p-13;
    return (xmix_mode == 3 || xmix_mode == 4) && !strcmp(what, "f8w") ? 132.0 * 0x1p-13 : 0.0;
}

/* ---- cases ----------------------------------------------------------------------------------- */
typedef struct tcase {
    const char *name;
    int fmt, sdt;
    int64_t rows, cols, row0, nrows;
    int64_t ldx, xoff; /* 0: cols, 0 */
    int64_t ldy, yoff; /* 0: nrows, 0 */
    int64_t ns[6];     /* N values, 0-terminated */
    int groups;        /* > 0: dsv4_bk_linear_grouped over all rows (row0 0, nrows = rows) */
} tcase;

#define FP8 DSV4_FORMAT_FP8
#define MX  DSV4_FORMAT_MXFP4
#define NV  DSV4_FORMAT_NVFP4
#define B16 DSV4_FORMAT_BF16
#define H16 DSV4_FORMAT_F16
#define F32 DSV4_FORMAT_F32
#define E8  DSV4_DT_F8_E8M0
#define SF  DSV4_DT_F32

/* Shapes (rows, cols, row0, nrows, ldx, xoff, ldy, yoff) several tables take: Flash's wo_a
 * grouped (8 groups of 1024 rows; x [N, 8 x 4096]), and 60 groups of 64 rows (FMM: 10 steps, 2 K
 * slices of 5). */
#define WO_A_8 8192, 4096, 0, 8192, 32768, 0, 8192, 0
#define G60_64 60 * 64, 1280, 0, 60 * 64, 60 * 1280, 0, 0, 0

static const tcase full_cases[] = {
    /* Flash: hidden 4096, q_lora 1024, 64 heads x 512, o_groups 8 x o_lora 1024, experts 2048 */
    {"flash wq_a fp8", FP8, E8, 1024, 4096, 0, 1024, 0, 0, 0, 0, {1, 3, 16, 64, 257}, 0},
    {"flash wq_a fp8 strided",
     FP8,
     E8,
     1024,
     4096,
     0,
     1024,
     4160,
     32,
     1056,
     16,
     {1, 3, 16, 64, 257},
     0},
    {"flash wq_b fp8", FP8, E8, 32768, 1024, 0, 32768, 0, 0, 0, 0, {1, 2, 16, 64, 257}, 0},
    {"flash wkv fp8", FP8, E8, 512, 4096, 0, 512, 0, 0, 0, 0, {1, 3, 16, 64, 257}, 0},
    {"flash wo_a fp8 group 3",
     FP8,
     E8,
     8192,
     4096,
     3072,
     1024,
     32768,
     3 * 4096,
     8192,
     3072,
     {1, 3, 16, 64, 257},
     0},
    {"flash wo_b fp8", FP8, E8, 4096, 8192, 0, 4096, 0, 0, 0, 0, {1, 2, 4, 16, 64, 257}, 0},
    /* FMM's range, 17..64 tokens (odd N: partial token tiles; NT 4 and 8) */
    {"flash wq_b fp8 mid", FP8, E8, 32768, 1024, 0, 32768, 0, 0, 0, 0, {17, 24, 32, 48, 64}, 0},
    {"flash wo_b fp8 mid", FP8, E8, 4096, 8192, 0, 4096, 0, 0, 0, 0, {17, 24, 32, 48, 64}, 0},
    {"flash idx wq_b fp8", FP8, E8, 8192, 1024, 0, 8192, 0, 0, 0, 0, {17, 32, 64}, 0},
    /* FMM on wgmma: a warpgroup's 64 rows past nrows (odd row counts), N = 8 NT rounded up */
    {"fp8 1000x2048 row0 77 wg", FP8, E8, 1000, 2048, 77, 901, 0, 0, 0, 0, {17, 24, 33, 64}, 0},
    {"flash w1 mxfp4", MX, E8, 2048, 4096, 0, 2048, 0, 0, 0, 0, {1, 3, 16, 64, 257}, 0},
    {"flash w2 mxfp4", MX, E8, 4096, 2048, 0, 4096, 0, 0, 0, 0, {1, 3, 16, 64, 257}, 0},
    {"flash w1 nvfp4", NV, 0, 2048, 4096, 0, 2048, 0, 0, 0, 0, {1, 3, 16, 64, 257}, 0},
    {"flash w2 nvfp4", NV, 0, 4096, 2048, 0, 4096, 0, 0, 0, 0, {1, 16, 257}, 0},
    {"base wq_a fp8 f32-scale", FP8, SF, 1024, 4096, 0, 1024, 0, 0, 0, 0, {1, 3, 16, 64, 257}, 0},
    {"bf16 1024x4096", B16, 0, 1024, 4096, 0, 1024, 0, 0, 0, 0, {1, 2, 8, 16, 257}, 0},
    /* MMV's four token tiles (BF16 only, 17..32 rows; odd N: a partial tile) */
    {"bf16 1024x4096 mmv nt4", B16, 0, 1024, 4096, 0, 1024, 0, 0, 0, 0, {17, 24, 31, 32}, 0},
    {"bf16 gate 256x4096", B16, 0, 256, 4096, 0, 256, 0, 0, 0, 0, {9, 20, 32}, 0},
    {"bf16 weights_proj", B16, 0, 64, 4096, 0, 64, 0, 0, 0, 0, {1, 16, 64}, 0},
    {"flash head bf16", B16, 0, 129280, 4096, 0, 129280, 0, 0, 0, 0, {1}, 0},
    {"f16 512x4096", H16, 0, 512, 4096, 0, 512, 0, 0, 0, 0, {1, 3, 16, 64, 257}, 0},
    {"f32 gate 256x4096", F32, 0, 256, 4096, 0, 256, 0, 0, 0, 0, {1, 16, 64, 257}, 0},
    {"f32 hc fn 24x16384", F32, 0, 24, 16384, 0, 24, 0, 0, 0, 0, {1, 3, 64, 257}, 0},
    /* odd shapes: partial scale blocks, unaligned row0, widths the fast paths refuse */
    {"fp8 1000x4000 row0 7", FP8, E8, 1000, 4000, 7, 990, 0, 0, 0, 0, {1, 5, 33}, 0},
    {"bf16 1000x4100", B16, 0, 1000, 4100, 0, 1000, 0, 0, 0, 0, {1, 17}, 0},
    {"nvfp4 300x4112", NV, 0, 300, 4112, 0, 300, 0, 0, 0, 0, {1, 20}, 0},
    {"fp8 ldx 4097", FP8, E8, 1024, 4096, 0, 1024, 4097, 1, 0, 0, {3, 40}, 0},
    {"fp8 1000x4096 row0 77", FP8, E8, 1000, 4096, 77, 900, 0, 0, 0, 0, {2, 9, 16}, 0},
    {"bf16 1000x4160 ldy 1003", B16, 0, 1000, 4160, 0, 1000, 0, 0, 1003, 3, {1, 5, 12}, 0},
    /* grouped (wo_a): x [N, groups * cols], y [N, rows] */
    {"flash wo_a fp8 grouped", FP8, E8, WO_A_8, {1, 2, 8, 16, 64}, 8},
    {"flash wo_a fp8 grouped mid", FP8, E8, WO_A_8, {17, 24, 32, 48, 64}, 8},
    {"flash wo_a bf16 grouped", B16, 0, WO_A_8, {1, 4, 16}, 8},
    {"fp8 grouped odd strides", FP8, E8, 600, 384, 0, 600, 1157, 0, 611, 0, {1, 5, 12, 40}, 3},
    /* Pro: hidden 7168, q_lora 1536, 128 heads, o_groups 16, experts 3072 */
    {"pro wq_a fp8", FP8, E8, 1536, 7168, 0, 1536, 0, 0, 0, 0, {1, 16, 64, 257}, 0},
    {"pro wq_b fp8", FP8, E8, 65536, 1536, 0, 65536, 0, 0, 0, 0, {1, 2, 16, 129}, 0},
    {"pro wo_a fp8 group 15",
     FP8,
     E8,
     16384,
     4096,
     15360,
     1024,
     65536,
     15 * 4096,
     16384,
     15360,
     {1, 64},
     0},
    {"pro wo_a fp8 grouped", FP8, E8, 16384, 4096, 0, 16384, 65536, 0, 16384, 0, {1, 9}, 16},
    {"pro wo_b fp8", FP8, E8, 7168, 16384, 0, 7168, 0, 0, 0, 0, {1, 9, 64}, 0},
    {"pro w1 mxfp4", MX, E8, 3072, 7168, 0, 3072, 0, 0, 0, 0, {1, 16, 257}, 0},
    {"pro w2 mxfp4", MX, E8, 7168, 3072, 0, 7168, 0, 0, 0, 0, {1, 16, 257}, 0},
};

static const tcase small_cases[] = {
    {"small fp8", FP8, E8, 200, 384, 40, 150, 388, 4, 155, 2, {1, 2, 3, 17, 70}, 0},
    {"small fp8 f32-scale", FP8, SF, 200, 256, 0, 200, 0, 0, 0, 0, {1, 5, 17, 70}, 0},
    {"small fp8 9 tokens", FP8, E8, 100, 512, 0, 100, 0, 0, 0, 0, {9, 16}, 0},
    {"small bf16 12 tokens", B16, 0, 70, 320, 3, 64, 0, 0, 0, 0, {2, 12}, 0},
    {"small fp8 grouped", FP8, E8, 192, 256, 0, 192, 1030, 0, 197, 0, {1, 5, 12, 70}, 4},
    {"small bf16 grouped", B16, 0, 80, 192, 0, 80, 384, 0, 80, 0, {3, 17}, 2},
    {"small mxfp4", MX, E8, 160, 256, 10, 150, 0, 0, 0, 0, {1, 2, 3, 17, 70}, 0},
    {"small nvfp4", NV, 0, 160, 256, 0, 160, 0, 0, 0, 0, {1, 3, 17, 70}, 0},
    {"small nvfp4 48 cols", NV, 0, 40, 48, 0, 40, 0, 0, 0, 0, {1, 20}, 0},
    {"small bf16", B16, 0, 150, 256, 0, 150, 0, 0, 0, 0, {1, 3, 17, 70}, 0},
    {"small bf16 100x100", B16, 0, 100, 100, 0, 100, 0, 0, 0, 0, {1, 20}, 0},
    {"small f16", H16, 0, 150, 256, 0, 150, 0, 0, 0, 0, {1, 17, 70}, 0},
    {"small f32", F32, 0, 24, 512, 0, 24, 0, 0, 0, 0, {1, 2, 3, 70}, 0},
    {"small fp8 ldx 257", FP8, E8, 128, 256, 0, 128, 257, 1, 0, 0, {3, 20}, 0},
    /* FMM: 60 groups of 64 rows, 10 steps: 2 K slices of 5 steps (x chunks of 2, 2, 1 steps
     * at N > 32, 4 and 1 below) */
    {"small fp8 grouped 60", FP8, E8, G60_64, {24, 40, 64}, 60},
};

/* ---- comparison ------------------------------------------------------------------------------ */
/* kernels (DSV4_LIN_PATH_*), then "split": the GEMV split over a cluster's CTAs */
static const char *path_name[] = {"auto", "gemv", "mma", "simt", "mmv",  "multi",
                                  "fmm",  "mmx",  "f8w", "w16",  "w16x", "split"};
enum { NPATH = 12, SPLIT_STAT = 11 };
static double worst_by_path[NPATH]; /* the largest err/bound seen per kernel */
static int64_t checks_by_path[NPATH];
static int quiet; /* compare prints failures only */
static const uint32_t SENTINEL = 0x7fc0deadu;
static int64_t xs_checks;  /* calls whose GEMV staged x, checked against the plain one */
static double quiet_worst; /* the largest err/bound since it was last reset */

/* One summary line: title, then each kernel's worst err/bound and its number of checked calls. */
static void print_worst(const char *title)
{
    printf("%s", title);
    for (int p = 1; p < NPATH; p++)
        printf(" %s %.3f (%lld calls)", path_name[p], worst_by_path[p],
               (long long)checks_by_path[p]);
    printf("\n");
}

/* got/want: [N, ldy] buffers, the op's output at yoff; S [N, nrows]; unr [N, ldy]: the CPU's
 * unrounded result when round (NULL otherwise). Prints one line.
 * err/bound: unrounded, |gpu - cpu| / (1e-5 S); rounded, how far the CPU's unrounded sum lies
 * from the reals that round to the GPU's value, over 1e-5 S (0 when both agree). */
static void compare(const tcase *c, const char *what, int64_t N, int round, int64_t ldy,
                    int64_t yoff, const float *got, const float *want, const float *unr,
                    const float *S)
{
    const int64_t nr = c->nrows;
    double max_abs = 0, max_rel = 0, worst = 0, ss = 0;
    int64_t differ = 0, bad = 0, clobbered = 0;
    for (int64_t t = 0; t < N; t++)
        for (int64_t j = 0; j < nr; j++)
            ss += (double)want[t * ldy + yoff + j] * want[t * ldy + yoff + j];
    const double floor_ = 1e-3 * sqrt(ss / (double)(N * nr)) + 1e-30;
    for (int64_t t = 0; t < N; t++) {
        for (int64_t j = 0; j < ldy; j++) {
            const int64_t i = t * ldy + j;
            if (j < yoff || j >= yoff + nr) {
                uint32_t u;
                memcpy(&u, &got[i], 4);
                clobbered += u != SENTINEL;
                continue;
            }
            const float g = got[i], w = want[i];
            if (memcmp(&g, &w, 4)) differ++;
            if (isnan(g) || isnan(w)) {
                bad++;
                continue;
            }
            const double err = fabs((double)g - (double)w);
            const double bound = (1e-5 + extra_bound(what)) * 1.001 * S[t * nr + j - yoff] + 1e-35;
            double ratio = err / bound;
            if (round && g != w) {
                double lo, hi;
                bf16_cell(g, &lo, &hi);
                const double u = unr[i];
                ratio = (u < lo ? lo - u : u > hi ? u - hi : 0.0) / bound;
            }
            if (err > max_abs) max_abs = err;
            if (err / fmax(fabs(w), floor_) > max_rel) max_rel = err / fmax(fabs(w), floor_);
            if (ratio > worst) worst = ratio;
            if (ratio > 1.0) bad++;
        }
    }
    for (int p = 0; p < NPATH; p++)
        if (!strcmp(what, path_name[p])) {
            checks_by_path[p]++;
            if (worst > worst_by_path[p]) worst_by_path[p] = worst;
        }
    if (worst > quiet_worst) quiet_worst = worst;
    if (!quiet || bad || clobbered)
        printf("  %-26s N=%-3lld rnd=%d %-4s max_abs %.3e max_rel %.3e (floor %.1e) err/bound %.3f "
               "differ %lld/%lld%s\n",
               c->name, (long long)N, round, what, max_abs, max_rel, floor_, worst,
               (long long)differ, (long long)(N * nr), bad || clobbered ? "  FAIL" : "");
    CHECK_MSG(bad == 0, "%s N=%lld %s: %lld elements over the bound (worst %.3f)", c->name,
              (long long)N, what, (long long)bad, worst);
    CHECK_MSG(clobbered == 0, "%s N=%lld %s: %lld elements outside the output were written",
              c->name, (long long)N, what, (long long)clobbered);
}

/* The case's op on backend b: grouped, or rows [row0, row0 + nrows). */
static dsv4_status case_op(dsv4_backend *b, const dsv4_weight *w, const tcase *c, const float *x,
                           int64_t ldx, int64_t N, float *y, int64_t ldy, int round)
{
    if (c->groups) return dsv4_bk_linear_grouped(b, w, c->groups, x, ldx, N, y, ldy, round);
    return dsv4_bk_linear(b, w, c->row0, c->nrows, x, ldx, N, y, ldy, round);
}

/* One GPU call on a sentinel-filled output, forced to `path`; returns the path taken (-1 on
 * error). */
static int gpu_call(ctx *cx, const dsv4_weight *dw, const tcase *c, const float *dx, int64_t ldx,
                    int64_t N, float *dy, int64_t ldy, int64_t yoff, int round, int path, int split,
                    const float *sentinel, float *out)
{
    const size_t ybytes = (size_t)(N * ldy) * sizeof(float);
    dsv4_status st = dsv4_bk_upload(cx->gpu, dy, sentinel, ybytes);
    const int old = dsv4_cuda_linear_force_path(path), olds = dsv4_cuda_linear_force_split(split);
    if (st == DSV4_OK) st = case_op(cx->gpu, dw, c, dx + c->xoff, ldx, N, dy + yoff, ldy, round);
    dsv4_cuda_linear_force_path(old);
    dsv4_cuda_linear_force_split(olds);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    if (st == DSV4_OK) st = dsv4_bk_download(cx->gpu, out, dy, ybytes);
    CHECK_MSG(st == DSV4_OK, "%s N=%lld %s: %s", c->name, (long long)N, path_name[path],
              dsv4_last_error());
    return st == DSV4_OK ? dsv4_cuda_linear_last_path() : -1;
}

static void run_case(ctx *cx, const tcase *c)
{
    hweight W, A;
    dsv4_weight dw;
    dsv4_status st = make_weights(cx, &W, &A, &dw, c->name, c->fmt, c->sdt, c->rows, c->cols);
    if (st != DSV4_OK) goto out;
    for (int k = 0; k < 6 && c->ns[k]; k++) {
        const int64_t N = c->ns[k];
        const int round = k & 1;
        const int64_t ldx = c->ldx ? c->ldx : c->cols, ldy = c->ldy ? c->ldy : c->nrows;
        const size_t nx = (size_t)(N * ldx), ny = (size_t)(N * ldy);
        float *x = malloc(nx * sizeof *x), *xa = malloc(nx * sizeof *xa);
        float *yc = malloc(ny * sizeof *yc), *yg = malloc(ny * sizeof *yg);
        float *yg2 = malloc(ny * sizeof *yg2), *sent = malloc(ny * sizeof *sent);
        float *S = malloc((size_t)(N * c->nrows) * sizeof *S), *yu = malloc(ny * sizeof *yu);
        fill_x(x, (int64_t)nx);
        mix_x(x, (int64_t)nx, ldx, c->xoff, c->groups ? c->groups * c->cols : c->cols);
        for (size_t i = 0; i < nx; i++) xa[i] = fabsf(x[i]);
        for (size_t i = 0; i < ny; i++) memcpy(&sent[i], &SENTINEL, 4);
        memcpy(yc, sent, ny * sizeof *yc);

        st = case_op(cx->cpu, &W.w, c, x + c->xoff, ldx, N, yc + c->yoff, ldy, round);
        if (st == DSV4_OK && round)
            st = case_op(cx->cpu, &W.w, c, x + c->xoff, ldx, N, yu + c->yoff, ldy, 0);
        if (st == DSV4_OK) st = case_op(cx->cpu, &A.w, c, xa + c->xoff, ldx, N, S, c->nrows, 0);
        CHECK_MSG(st == DSV4_OK, "%s N=%lld: cpu: %s", c->name, (long long)N, dsv4_last_error());
        /* the CPU reference must itself keep out of the gaps */
        int64_t cpu_clobbered = 0;
        for (int64_t t = 0; t < N; t++)
            for (int64_t j = 0; j < ldy; j++)
                if (j < c->yoff || j >= c->yoff + c->nrows)
                    cpu_clobbered += memcmp(&yc[t * ldy + j], &SENTINEL, 4) != 0;
        CHECK(cpu_clobbered == 0);

        float *dx = NULL, *dy = NULL;
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, nx * sizeof *x, (void **)&dx);
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, ny * sizeof *yg, (void **)&dy);
        if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, dx, x, nx * sizeof *x);
        CHECK_MSG(st == DSV4_OK, "%s: gpu buffers: %s", c->name, dsv4_last_error());
        if (st == DSV4_OK) {
            const int p = gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round,
                                   DSV4_LIN_PATH_AUTO, 0, sent, yg);
            const int auto_split = dsv4_cuda_linear_last_split();
            const int p2 = gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round,
                                    DSV4_LIN_PATH_AUTO, 0, sent, yg2);
            if (p > 0 && p2 == p) {
                const int sp = p == DSV4_LIN_PATH_GEMV && auto_split > 1;
                compare(c, path_name[sp ? SPLIT_STAT : p], N, round, ldy, c->yoff, yg, yc, yu, S);
                CHECK_MSG(memcmp(yg, yg2, ny * sizeof *yg) == 0,
                          "%s N=%lld: two identical calls differ", c->name, (long long)N);
            }
            /* two rows with x staged in shared memory: the plain GEMV's bits */
            if (p == DSV4_LIN_PATH_GEMV && p2 == p && dsv4_cuda_linear_last_xs()) {
                const int oldx = dsv4_cuda_linear_gemv_xs(0);
                gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round, DSV4_LIN_PATH_AUTO, 0,
                         sent, yg2);
                CHECK(!dsv4_cuda_linear_last_xs());
                dsv4_cuda_linear_gemv_xs(oldx);
                CHECK_MSG(memcmp(yg, yg2, ny * sizeof *yg) == 0,
                          "%s N=%lld: the staged-x GEMV and the plain one differ", c->name,
                          (long long)N);
                xs_checks++;
            }
            for (int q = DSV4_LIN_PATH_GEMV; q <= DSV4_LIN_PATH_F8W; q++) {
                if (q == p || q == DSV4_LIN_PATH_MULTI || q == DSV4_LIN_PATH_MMX) continue;
                if (gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round, q, 0, sent, yg) == q)
                    compare(c, path_name[q], N, round, ldy, c->yoff, yg, yc, yu, S);
            }
            /* split-K: the GEMV over 2 and 8 CTAs of a cluster; twice, the same bits */
            for (int ks = 2; ks <= 8; ks *= 4) {
                if (gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round, DSV4_LIN_PATH_GEMV,
                             ks, sent, yg) != DSV4_LIN_PATH_GEMV ||
                    dsv4_cuda_linear_last_split() != ks)
                    continue;
                compare(c, path_name[SPLIT_STAT], N, round, ldy, c->yoff, yg, yc, yu, S);
                gpu_call(cx, &dw, c, dx, ldx, N, dy, ldy, c->yoff, round, DSV4_LIN_PATH_GEMV, ks,
                         sent, yg2);
                CHECK_MSG(memcmp(yg, yg2, ny * sizeof *yg) == 0,
                          "%s N=%lld split %d: two identical calls differ", c->name, (long long)N,
                          ks);
            }
        }
        dsv4_bk_free(cx->gpu, dx);
        dsv4_bk_free(cx->gpu, dy);
        free(x), free(xa), free(yc), free(yg), free(yg2), free(sent), free(S), free(yu);
        fflush(stdout);
    }
    dsv4_bk_weight_free(cx->gpu, &dw);
out:
    free_weight(&W);
    free_weight(&A);
}

/* ---- dsv4_bk_linear_multi ---------------------------------------------------------------------
 * A set of entries (weights of any format, each with its own x or sharing an earlier entry's),
 * run on the CPU (its per-entry dsv4_bk_linear calls: the reference) and on the GPU: the
 * dispatcher's choice (N <= MULTI_NMAX: the fused launch, above it MMX's, checked), the fused
 * launch forced (N <= 16), and the fused launch split over 2 and 8 CTAs of a cluster. Each entry
 * against the CPU under the single op's bound; twice the same call, the same bits; outside each
 * output untouched. MULTI_NMAX is bk_linear.cu's GV_MULTI_NMAX. */
enum { MULTI_NMAX = 2 };
typedef struct mentry {
    const char *name;
    int fmt, sdt;
    int64_t rows, cols, ldx, ldy; /* 0: cols, rows */
    int round, share;             /* share > 0: x of entry share - 1 (same cols and ldx) */
} mentry;

typedef struct mcase {
    const char *name;
    int n;
    mentry e[DSV4_BK_LINEAR_MULTI_MAX];
    int64_t ns[12]; /* 0-terminated */
} mcase;

static const mcase multi_full[] = {
    {"flash csa h projections",
     7,
     {{"wq_a fp8", FP8, E8, 1024, 4096, 0, 0, 1, 0},
      {"wkv fp8", FP8, E8, 512, 4096, 0, 0, 1, 1},
      {"comp wkv bf16", B16, 0, 1024, 4096, 0, 0, 0, 0},
      {"comp wgate bf16", B16, 0, 1024, 4096, 0, 0, 0, 3},
      {"idx comp wkv bf16", B16, 0, 256, 4096, 0, 0, 0, 3},
      {"idx comp wgate bf16", B16, 0, 256, 4096, 0, 0, 0, 3},
      {"idx weights_proj bf16", B16, 0, 64, 4096, 0, 0, 1, 3}},
     {1, 2, 3, 4, 5, 8, 9, 16, 17, 33, 64, 0}},
    {"flash hca h projections",
     4,
     {{"wq_a fp8", FP8, E8, 1024, 4096, 0, 0, 1, 0},
      {"wkv fp8", FP8, E8, 512, 4096, 0, 0, 1, 1},
      {"comp wkv bf16", B16, 0, 512, 4096, 0, 0, 0, 0},
      {"comp wgate bf16", B16, 0, 512, 4096, 0, 0, 0, 3}},
     {1, 4, 8, 12, 32, 64, 100, 0}},
    {"pro csa h projections",
     7,
     {{"wq_a fp8", FP8, E8, 1536, 7168, 0, 0, 1, 0},
      {"wkv fp8", FP8, E8, 512, 7168, 0, 0, 1, 1},
      {"comp wkv bf16", B16, 0, 1024, 7168, 0, 0, 0, 0},
      {"comp wgate bf16", B16, 0, 1024, 7168, 0, 0, 0, 3},
      {"idx comp wkv bf16", B16, 0, 256, 7168, 0, 0, 0, 3},
      {"idx comp wgate bf16", B16, 0, 256, 7168, 0, 0, 0, 3},
      {"idx weights_proj bf16", B16, 0, 64, 7168, 0, 0, 1, 3}},
     {1, 3, 24, 64, 0}},
    {"every format",
     8,
     {{"fp8 e8m0 256x4096", FP8, E8, 256, 4096, 0, 0, 1, 0},
      {"fp8 f32-scale 200x1024", FP8, SF, 200, 1024, 1040, 203, 0, 0},
      {"mxfp4 300x2048", MX, E8, 300, 2048, 0, 0, 1, 0},
      {"nvfp4 128x4096", NV, 0, 128, 4096, 0, 0, 0, 0},
      {"bf16 100x4096 strided", B16, 0, 100, 4096, 4100, 130, 1, 0},
      {"f16 64x512", H16, 0, 64, 512, 0, 0, 0, 0},
      {"f32 24x16384", F32, 0, 24, 16384, 0, 0, 0, 0},
      {"bf16 1000x4100 (no gemv)", B16, 0, 1000, 4100, 0, 0, 1, 0}},
     {1, 2, 3, 4, 7, 8, 12, 16, 33, 64, 0}},
    {"one entry", 1, {{"fp8 512x4096", FP8, E8, 512, 4096, 0, 0, 1, 0}}, {1, 8, 40, 0}},
};

/* Cases run again with x of lo-free blocks (xmix_mode 1 and 2): FMM's and MMX's chunks without
 * lo beside chunks with lo (NT 4 and 8: chunks of 4 and 2 blocks; grouped: the groups' planes). */
static const tcase xmix_full[] = {
    {"flash wq_b fp8 lo-mix", FP8, E8, 32768, 1024, 0, 32768, 0, 0, 0, 0, {17, 40, 64}, 0},
    {"flash wo_a fp8 grouped lo-mix", FP8, E8, WO_A_8, {24, 64}, 8},
    {"fp8 ldx 4097 lo-mix", FP8, E8, 1024, 4096, 0, 1024, 4097, 1, 0, 0, {20, 40}, 0},
    {"fp8 1000x2048 row0 77 wg lo-mix",
     FP8,
     E8,
     1000,
     2048,
     77,
     901,
     0,
     0,
     0,
     0,
     {17, 24, 33, 64},
     0},
};

static const tcase xmix_small[] = {
    {"small fp8 grouped 60 lo-mix", FP8, E8, G60_64, {24, 64}, 60},
    {"small fp8 1536 cols lo-mix", FP8, E8, 100, 1536, 0, 100, 0, 0, 0, 0, {20, 40}, 0},
    {"small fp8 300x1024 wg lo-mix", FP8, E8, 300, 1024, 5, 291, 0, 0, 0, 0, {17, 33, 64}, 0},
};

/* F8W on act_quant'd x (xmix_mode 3, 4): the Flash and Pro shapes it takes (wq_b: 512 tiles,
 * persistent, 2 CTAs an SM up to 64 tokens; wo_b, the shared expert: tiles split over 2-4 K
 * slices), grouped (wo_a), odd rows and row0, N 1..128 (token tiles of 8, 16, 32, 64, 128, partly
 * filled; the dispatcher takes F8W from N = 5; 200: its chunks of <= 128). */
static const tcase xq_full[] = {
    {"flash wq_b fp8 xq", FP8, E8, 32768, 1024, 0, 32768, 0, 0, 0, 0, {9, 17, 64, 100, 128}, 0},
    {"flash wq_b fp8 xq N<=8", FP8, E8, 32768, 1024, 0, 32768, 0, 0, 0, 0, {1, 5, 8}, 0},
    {"flash wo_b fp8 xq N<=8", FP8, E8, 4096, 8192, 0, 4096, 0, 0, 0, 0, {5, 8}, 0},
    {"flash wo_b fp8 xq", FP8, E8, 4096, 8192, 0, 4096, 0, 0, 0, 0, {16, 33, 64, 65, 128}, 0},
    {"flash idx wq_b fp8 xq", FP8, E8, 8192, 1024, 0, 8192, 0, 0, 0, 0, {12, 40, 64, 97, 200}, 0},
    {"flash shared w1 fp8 xq", FP8, E8, 2048, 4096, 0, 2048, 0, 0, 0, 0, {9, 24, 64}, 0},
    {"flash shared w2 fp8 xq", FP8, E8, 4096, 2048, 0, 4096, 0, 0, 0, 0, {10, 64}, 0},
    {"flash wo_a fp8 grouped xq", FP8, E8, WO_A_8, {64, 100}, 8},
    {"fp8 1000x2048 row0 77 xq", FP8, E8, 1000, 2048, 77, 901, 0, 0, 0, 0, {9, 17, 64, 113}, 0},
    {"fp8 strided xq", FP8, E8, 1024, 4096, 0, 1024, 4160, 32, 1056, 16, {19, 64, 128}, 0},
    {"pro wo_b fp8 xq", FP8, E8, 7168, 16384, 0, 7168, 0, 0, 0, 0, {64}, 0},
    {"pro wq_b fp8 xq", FP8, E8, 65536, 1536, 0, 65536, 0, 0, 0, 0, {48}, 0},
};

static const tcase xq_small[] = {
    {"small fp8 xq", FP8, E8, 200, 384, 40, 150, 388, 4, 155, 2, {9, 17, 64, 100}, 0},
    {"small fp8 300x1024 xq", FP8, E8, 300, 1024, 5, 291, 0, 0, 0, 0, {9, 33, 64, 128}, 0},
    {"small fp8 grouped xq", FP8, E8, 192, 256, 0, 192, 1024, 0, 197, 0, {9, 40, 70}, 4},
    {"small fp8 140 tiles xq", FP8, E8, 140 * 64, 256, 0, 140 * 64, 0, 0, 0, 0, {5, 12, 90}, 0},
};

static const mcase multi_small[] = {
    {"small every format",
     7,
     {{"fp8 40x256", FP8, E8, 40, 256, 0, 0, 1, 0},
      {"fp8 f32-scale 33x384", FP8, SF, 33, 384, 388, 35, 0, 0},
      {"mxfp4 20x256", MX, E8, 20, 256, 0, 0, 1, 0},
      {"nvfp4 17x256", NV, 0, 17, 256, 0, 0, 0, 0},
      {"bf16 8x256", B16, 0, 8, 256, 0, 0, 1, 3},
      {"f16 50x128", H16, 0, 50, 128, 0, 0, 0, 0},
      {"f32 3x512", F32, 0, 3, 512, 0, 0, 0, 0}},
     {1, 3, 8, 16, 20, 41, 0}},
    /* FP8 and BF16 / F16 only: at one row bk_linear.cu's gemv_multi_f816_kernel */
    {"small fp8 and bf16",
     3,
     {{"fp8 40x256", FP8, E8, 40, 256, 0, 0, 1, 0},
      {"bf16 24x256", B16, 0, 24, 256, 0, 0, 0, 1},
      {"f16 9x256", H16, 0, 9, 256, 0, 0, 1, 1}},
     {1, 2, 3, 0}},
    /* FP8 and BF16 of one width: W16X from 17 rows (6 tiles, partly filled; two x) */
    {"small w16x",
     3,
     {{"fp8 100x1024", FP8, E8, 100, 1024, 0, 0, 1, 0},
      {"bf16 130x1024", B16, 0, 130, 1024, 0, 0, 0, 1},
      {"bf16 64x1024 own x", B16, 0, 64, 1024, 0, 0, 1, 0}},
     {3, 17, 33, 64, 0}},
};

typedef struct mbuf {
    hweight W, A;
    dsv4_weight dw;
    tcase tc; /* for compare: name, nrows, ldy */
    int64_t ldx, ldy;
    int round;
    float *x, *xa, *dx;        /* x (own or shared), |x|, device x */
    float *yc, *yu, *S, *sent; /* CPU result, unrounded, sum |x||w|, sentinels */
    float *yg, *yg2, *dy;
} mbuf;

/* Whether the GEMV takes the entry (bk_linear.cu gemv_ok; device buffers are 256-byte aligned):
 * whole 16-byte chunks per row, x rows 16-byte aligned. */
static int gemv_takes(const mentry *me, int64_t ldx)
{
    const int E = me->fmt == F32                     ? 4
                  : me->fmt == B16 || me->fmt == H16 ? 8
                  : me->fmt == FP8                   ? 16
                                                     : 32;
    return me->cols % E == 0 && ldx % 4 == 0;
}

/* Whether MMX takes the entry (linear_fp8mma.cu dsv4_lin_mmx_ok): FP8 or BF16, whole 128-column
 * blocks. */
static int mmx_takes(const mentry *me)
{
    return (me->fmt == FP8 || me->fmt == B16) && me->cols % 128 == 0;
}

/* Whether W16X takes the case's entries at N rows (linear_w16.cu dsv4_lin_w16x_ok; device buffers
 * are 256-byte aligned): every entry FP8 with block scales or BF16, of one width in whole
 * 128-column blocks, x rows 16-byte aligned; N <= 64. auto: also the dispatcher's rule
 * (bk_linear.cu W16X_NMIN, W16X_MIN_KS): N >= 33, two entries or more, all 64-row tiles in one wave
 * of the H100's 132 SMs with a K split of two (at least 8 blocks). */
static int w16x_takes(const mcase *mc, const mbuf *m, int64_t N, int autopath)
{
    int64_t tiles = 0;
    for (int i = 0; i < mc->n; i++) {
        const mentry *me = &mc->e[i];
        if (!(me->fmt == FP8 || me->fmt == B16) || me->cols != mc->e[0].cols || me->cols % 128 ||
            m[i].ldx % 4)
            return 0;
        tiles += (me->rows + 63) / 64;
    }
    if (autopath && N > 64) { /* the dispatcher's equal chunks of <= 64 rows */
        const int64_t k = (N + 63) / 64;
        N = (N + k - 1) / k;
    }
    if (N > 64) return 0;
    return !autopath || (N >= 33 && mc->n >= 2 && tiles * 2 <= 132 && mc->e[0].cols >= 1024);
}

/* GPU: the multi op on every entry (outputs sentinel-filled first), forced to path/split;
 * downloads into yg (or yg2). Returns the path taken (-1 on error). */
static int multi_gpu(ctx *cx, mbuf *m, int n, int64_t N, int path, int split, int second)
{
    dsv4_bk_linear_entry e[DSV4_BK_LINEAR_MULTI_MAX];
    dsv4_status st = DSV4_OK;
    for (int i = 0; i < n && st == DSV4_OK; i++) {
        st = dsv4_bk_upload(cx->gpu, m[i].dy, m[i].sent, (size_t)(N * m[i].ldy) * sizeof(float));
        e[i] = dsv4_bk_lin_entry(&m[i].dw, m[i].dx, m[i].ldx, m[i].dy, m[i].ldy, m[i].round);
    }
    const int old = dsv4_cuda_linear_force_path(path), olds = dsv4_cuda_linear_force_split(split);
    if (st == DSV4_OK) st = dsv4_bk_linear_multi(cx->gpu, e, n, N);
    const int taken = dsv4_cuda_linear_last_path();
    dsv4_cuda_linear_force_path(old);
    dsv4_cuda_linear_force_split(olds);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    for (int i = 0; i < n && st == DSV4_OK; i++)
        st = dsv4_bk_download(cx->gpu, second ? m[i].yg2 : m[i].yg, m[i].dy,
                              (size_t)(N * m[i].ldy) * sizeof(float));
    CHECK_MSG(st == DSV4_OK, "multi N=%lld path %d split %d: %s", (long long)N, path, split,
              dsv4_last_error());
    return st == DSV4_OK ? taken : -1;
}

static void run_multi(ctx *cx, const mcase *mc)
{
    mbuf m[DSV4_BK_LINEAR_MULTI_MAX];
    memset(m, 0, sizeof m);
    const int n = mc->n;
    int64_t nmax = 0;
    for (int k = 0; k < 12 && mc->ns[k]; k++) nmax = mc->ns[k] > nmax ? mc->ns[k] : nmax;
    dsv4_status st = DSV4_OK;
    for (int i = 0; i < n; i++) {
        const mentry *me = &mc->e[i];
        make_weight(&m[i].W, me->name, me->fmt, me->sdt, me->rows, me->cols);
        make_abs(&m[i].W, &m[i].A);
        if (st == DSV4_OK) st = dsv4_bk_weight_upload(cx->gpu, &m[i].W.w, 0, &m[i].dw);
        m[i].ldx = me->ldx ? me->ldx : me->cols;
        m[i].ldy = me->ldy ? me->ldy : me->rows;
        m[i].tc = (tcase){me->name, me->fmt, me->sdt,  me->rows, me->cols, 0, me->rows,
                          m[i].ldx, 0,       m[i].ldy, 0,        {0},      0};
        m[i].round = me->round;
        const size_t nx = (size_t)(nmax * m[i].ldx), ny = (size_t)(nmax * m[i].ldy);
        if (me->share) {
            m[i].x = m[me->share - 1].x, m[i].xa = m[me->share - 1].xa;
            m[i].dx = m[me->share - 1].dx;
        } else {
            m[i].x = malloc(nx * sizeof(float)), m[i].xa = malloc(nx * sizeof(float));
            fill_x(m[i].x, (int64_t)nx);
            mix_x(m[i].x, (int64_t)nx, m[i].ldx, 0, m[i].ldx);
            for (size_t j = 0; j < nx; j++) m[i].xa[j] = fabsf(m[i].x[j]);
            if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, nx * sizeof(float), (void **)&m[i].dx);
            if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, m[i].dx, m[i].x, nx * sizeof(float));
        }
        m[i].yc = malloc(ny * sizeof(float)), m[i].yu = malloc(ny * sizeof(float));
        m[i].S = malloc((size_t)(nmax * me->rows) * sizeof(float));
        m[i].sent = malloc(ny * sizeof(float));
        m[i].yg = malloc(ny * sizeof(float)), m[i].yg2 = malloc(ny * sizeof(float));
        for (size_t j = 0; j < ny; j++) memcpy(&m[i].sent[j], &SENTINEL, 4);
        if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, ny * sizeof(float), (void **)&m[i].dy);
    }
    CHECK_MSG(st == DSV4_OK, "%s: setup: %s", mc->name, dsv4_last_error());
    for (int k = 0; st == DSV4_OK && k < 12 && mc->ns[k]; k++) {
        const int64_t N = mc->ns[k];
        /* the CPU: the multi op (its per-entry calls), then unrounded and |x||w| per entry */
        dsv4_bk_linear_entry e[DSV4_BK_LINEAR_MULTI_MAX];
        for (int i = 0; i < n; i++) {
            memcpy(m[i].yc, m[i].sent, (size_t)(N * m[i].ldy) * sizeof(float));
            e[i] =
                dsv4_bk_lin_entry(&m[i].W.w, m[i].x, m[i].ldx, m[i].yc, m[i].ldy, mc->e[i].round);
        }
        st = dsv4_bk_linear_multi(cx->cpu, e, n, N);
        for (int i = 0; i < n && st == DSV4_OK; i++) {
            if (mc->e[i].round)
                st = dsv4_bk_linear(cx->cpu, &m[i].W.w, 0, mc->e[i].rows, m[i].x, m[i].ldx, N,
                                    m[i].yu, m[i].ldy, 0);
            if (st == DSV4_OK)
                st = dsv4_bk_linear(cx->cpu, &m[i].A.w, 0, mc->e[i].rows, m[i].xa, m[i].ldx, N,
                                    m[i].S, mc->e[i].rows, 0);
        }
        CHECK_MSG(st == DSV4_OK, "%s N=%lld: cpu: %s", mc->name, (long long)N, dsv4_last_error());
        if (st != DSV4_OK) break;
        /* modes: auto (above 64 rows: launches of <= 64 rows each), the GEMV's fused launch
         * forced (N <= 16), split over 2 and 8 CTAs, MMX's launch forced (N <= 64), its K split
         * forced to 1 and 8, and W16X's likewise */
        enum { NMODE = 10 };
        static const int mode_path[NMODE] = {
            DSV4_LIN_PATH_AUTO, DSV4_LIN_PATH_MULTI, DSV4_LIN_PATH_MULTI, DSV4_LIN_PATH_MULTI,
            DSV4_LIN_PATH_MMX,  DSV4_LIN_PATH_MMX,   DSV4_LIN_PATH_MMX,   DSV4_LIN_PATH_W16X,
            DSV4_LIN_PATH_W16X, DSV4_LIN_PATH_W16X};
        static const int mode_split[NMODE] = {0, 0, 2, 8, 0, 1, 8, 0, 1, 8};
        static const char *mode_name[NMODE] = {
            "auto",        "fused",       "fused split 2", "fused split 8", "mmx",
            "mmx split 1", "mmx split 8", "w16x",          "w16x split 1",  "w16x split 8"};
        int gv_eligible = 0, mx_eligible = 0; /* entries the GEMV, MMX take */
        for (int i = 0; i < n; i++) {
            gv_eligible += gemv_takes(&mc->e[i], m[i].ldx);
            mx_eligible += mmx_takes(&mc->e[i]);
        }
        const int wx_auto = w16x_takes(mc, m, N, 1), wx_eligible = w16x_takes(mc, m, N, 0);
        for (int md = 0; md < NMODE; md++) {
            if ((md > 0 && md < 4 && N > 16) || (md >= 4 && N > 64)) continue;
            const int p = multi_gpu(cx, m, n, N, mode_path[md], mode_split[md], 0);
            if (p < 0) continue;
            const int fused = p == DSV4_LIN_PATH_MULTI, mx = p == DSV4_LIN_PATH_MMX;
            const int wx = p == DSV4_LIN_PATH_W16X;
            if (md == 0) {
                CHECK_MSG(fused == (N <= MULTI_NMAX && gv_eligible >= 2),
                          "%s N=%lld: auto took path %d", mc->name, (long long)N, p);
                CHECK_MSG(wx == wx_auto, "%s N=%lld: auto took path %d", mc->name, (long long)N, p);
                CHECK_MSG(mx == (N > MULTI_NMAX && !wx_auto && mx_eligible >= 2),
                          "%s N=%lld: auto took path %d", mc->name, (long long)N, p);
            } else if (md < 4) {
                CHECK_MSG(fused, "%s N=%lld %s: not fused (path %d)", mc->name, (long long)N,
                          mode_name[md], p);
            } else if (md < 7) {
                CHECK_MSG(mx == (mx_eligible >= 1), "%s N=%lld %s: path %d", mc->name, (long long)N,
                          mode_name[md], p);
            } else {
                CHECK_MSG(wx == wx_eligible, "%s N=%lld %s: path %d", mc->name, (long long)N,
                          mode_name[md], p);
            }
            if (mode_split[md] && (fused || mx || wx))
                CHECK(dsv4_cuda_linear_last_split() == mode_split[md]);
            quiet = 1;
            quiet_worst = 0.0;
            for (int i = 0; i < n; i++) {
                const int in = (fused && gemv_takes(&mc->e[i], m[i].ldx)) ||
                               (mx && mmx_takes(&mc->e[i])) || wx;
                compare(&m[i].tc, in ? path_name[p] : "auto", N, m[i].round, m[i].ldy, 0, m[i].yg,
                        m[i].yc, m[i].yu, m[i].S);
            }
            quiet = 0;
            multi_gpu(cx, m, n, N, mode_path[md], mode_split[md], 1);
            int same = 1;
            for (int i = 0; i < n; i++)
                same &= memcmp(m[i].yg, m[i].yg2, (size_t)(N * m[i].ldy) * sizeof(float)) == 0;
            CHECK_MSG(same, "%s N=%lld %s: two identical calls differ", mc->name, (long long)N,
                      mode_name[md]);
            printf("  multi %-24s N=%-3lld %-13s %-5s %d entries, worst err/bound %.3f%s\n",
                   mc->name, (long long)N, mode_name[md], path_name[p], n, quiet_worst,
                   same ? "" : "  NOT DETERMINISTIC");
        }
        fflush(stdout);
    }
    for (int i = 0; i < n; i++) {
        if (m[i].dw.data) dsv4_bk_weight_free(cx->gpu, &m[i].dw);
        if (!mc->e[i].share) {
            free(m[i].x), free(m[i].xa);
            dsv4_bk_free(cx->gpu, m[i].dx);
        }
        dsv4_bk_free(cx->gpu, m[i].dy);
        free(m[i].yc), free(m[i].yu), free(m[i].S), free(m[i].sent), free(m[i].yg);
        free(m[i].yg2);
        free_weight(&m[i].W);
        free_weight(&m[i].A);
    }
}

/* Arguments the op must refuse, on both backends. */
static void check_errors(ctx *cx)
{
    hweight W;
    make_weight(&W, "err bf16", B16, 0, 64, 256);
    dsv4_weight dw;
    dsv4_status st = dsv4_bk_weight_upload(cx->gpu, &W.w, 0, &dw);
    CHECK(st == DSV4_OK);
    if (st != DSV4_OK) return;
    float *x = calloc(4 * 256, sizeof *x), *y = calloc(4 * 64, sizeof *y), *dx = NULL, *dy = NULL;
    CHECK(dsv4_bk_alloc(cx->gpu, 4 * 256 * sizeof *x, (void **)&dx) == DSV4_OK);
    CHECK(dsv4_bk_alloc(cx->gpu, 4 * 64 * sizeof *y, (void **)&dy) == DSV4_OK);
    for (int g = 0; g < 2; g++) {
        dsv4_backend *b = g ? cx->gpu : cx->cpu;
        const dsv4_weight *w = g ? &dw : &W.w;
        float *xx = g ? dx : x, *yy = g ? dy : y;
        CHECK(dsv4_bk_linear(b, w, 32, 64, xx, 256, 2, yy, 64, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear(b, w, 0, 64, xx, 255, 2, yy, 64, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear(b, w, 0, 64, xx, 256, 2, yy, 63, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear(b, w, 0, 64, xx, 256, 0, yy, 64, 0) == DSV4_OK);
        dsv4_weight wi = *w;
        wi.format = DSV4_FORMAT_INT;
        wi.dtype = DSV4_DT_I32;
        if (g) CHECK(dsv4_bk_linear(b, &wi, 0, 64, xx, 256, 2, yy, 64, 0) == DSV4_ERR_UNSUPPORTED);
        /* grouped: 64 rows in 2 groups of 32 over x [2, 2 * 256]; x here has 4 * 256 floats */
        CHECK(dsv4_bk_linear_grouped(b, w, 3, xx, 768, 1, yy, 64, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear_grouped(b, w, 0, xx, 512, 1, yy, 64, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear_grouped(b, w, 2, xx, 511, 1, yy, 64, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear_grouped(b, w, 2, xx, 512, 1, yy, 63, 0) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear_grouped(b, w, 2, xx, 512, 0, yy, 64, 0) == DSV4_OK);
        CHECK(dsv4_bk_linear_grouped(b, w, 2, xx, 512, 2, yy, 64, 0) == DSV4_OK);
        if (g)
            CHECK(dsv4_bk_linear_grouped(b, &wi, 2, xx, 512, 2, yy, 64, 0) == DSV4_ERR_UNSUPPORTED);
    }
    /* multi: 64 x 256 weight, x [4, 256], y [4, 64] */
    for (int g = 0; g < 2; g++) {
        dsv4_backend *b = g ? cx->gpu : cx->cpu;
        const dsv4_weight *w = g ? &dw : &W.w;
        float *xx = g ? dx : x, *yy = g ? dy : y;
        dsv4_bk_linear_entry e[DSV4_BK_LINEAR_MULTI_MAX + 1];
        for (int i = 0; i <= DSV4_BK_LINEAR_MULTI_MAX; i++)
            e[i] = dsv4_bk_lin_entry(w, xx, 256, yy, 64, 0);
        CHECK(dsv4_bk_linear_multi(b, e, 1, 2) == DSV4_OK);
        CHECK(dsv4_bk_linear_multi(b, e, 0, 2) == DSV4_OK);
        CHECK(dsv4_bk_linear_multi(b, e, 1, 0) == DSV4_OK);
        CHECK(dsv4_bk_linear_multi(b, e, DSV4_BK_LINEAR_MULTI_MAX + 1, 1) ==
              DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear_multi(b, e, 1, -1) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK(dsv4_bk_linear_multi(b, NULL, 1, 1) == DSV4_ERR_INVALID_ARGUMENT);
        e[1].ldx = 255;
        CHECK(dsv4_bk_linear_multi(b, e, 2, 1) == DSV4_ERR_INVALID_ARGUMENT);
        e[1].ldx = 256, e[1].ldy = 63;
        CHECK(dsv4_bk_linear_multi(b, e, 2, 1) == DSV4_ERR_INVALID_ARGUMENT);
        e[1].ldy = 64, e[1].w = NULL;
        CHECK(dsv4_bk_linear_multi(b, e, 2, 1) == DSV4_ERR_INVALID_ARGUMENT);
        dsv4_weight wi = *w;
        wi.format = DSV4_FORMAT_INT;
        wi.dtype = DSV4_DT_I32;
        e[1].w = &wi;
        if (g) CHECK(dsv4_bk_linear_multi(b, e, 2, 1) == DSV4_ERR_UNSUPPORTED);
    }
    dsv4_bk_free(cx->gpu, dx);
    dsv4_bk_free(cx->gpu, dy);
    dsv4_bk_weight_free(cx->gpu, &dw);
    free(x), free(y);
    free_weight(&W);
}

/* ---- timing ----------------------------------------------------------------------------------
 * Per call with the weights read from HBM: NW copies of the matrix (together >= 160 MB, more
 * than the 50 MB L2) called in turn. graph: one pass over the copies captured in a CUDA graph
 * and replayed (the GPU's time, gaps between kernels included, no host launch cost); eager:
 * launch after launch, then one sync (host launch cost included where it is the longer). x holds
 * bf16 values like the engine's activations (act_quant output, bf16-rounded o), so MMV's lo
 * halves are zero and skipped, except on the line marked f32-x. Output bf16-rounded (engine). */
enum { BENCH_COPIES = 64 };

typedef struct bench_set {
    const char *name;
    int groups, nw;
    int64_t rows, cols, nmax;
    uint64_t bytes; /* one copy: weights + scales */
    dsv4_weight dw[BENCH_COPIES];
    float *dx, *dxf, *dy, *dxq; /* x bf16-valued, x f32, y, x act_quant'd (F8W's input) */
} bench_set;

static int bench_open(ctx *cx, bench_set *b, const char *name, int fmt, int sdt, int64_t rows,
                      int64_t cols, int groups, int64_t nmax)
{
    dsv4_weight w;
    memset(b, 0, sizeof *b);
    weight_desc(&w, name, fmt, sdt, rows, cols);
    b->name = name, b->groups = groups, b->rows = rows, b->cols = cols, b->nmax = nmax;
    b->bytes = w.data_bytes + w.scale_bytes;
    b->nw = (int)((160000000ull + b->bytes - 1) / b->bytes);
    if (b->nw > BENCH_COPIES) b->nw = BENCH_COPIES;
    dsv4_status st = DSV4_OK;
    int n = 0;
    for (; st == DSV4_OK && n < b->nw; n++)
        st = dsv4_bk_weight_upload(cx->gpu, &w, 0x5eedull + 977ull * (uint64_t)n + (uint64_t)rows,
                                   &b->dw[n]);
    if (st != DSV4_OK) n--;
    b->nw = n;
    const int64_t nx = nmax * groups * cols;
    float *x = malloc((size_t)nx * sizeof *x);
    fill_x(x, nx);
    if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, (size_t)nx * sizeof *x, (void **)&b->dxf);
    if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, b->dxf, x, (size_t)nx * sizeof *x);
    dsv4_sim_bf16(x, nx);
    if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, (size_t)nx * sizeof *x, (void **)&b->dx);
    if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, b->dx, x, (size_t)nx * sizeof *x);
    dsv4_sim_act_quant(x, nx, 128);
    if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, (size_t)nx * sizeof *x, (void **)&b->dxq);
    if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, b->dxq, x, (size_t)nx * sizeof *x);
    if (st == DSV4_OK)
        st = dsv4_bk_alloc(cx->gpu, (size_t)(nmax * rows) * sizeof *x, (void **)&b->dy);
    free(x);
    CHECK_MSG(st == DSV4_OK, "bench %s: %s", name, dsv4_last_error());
    return st == DSV4_OK;
}

static void bench_close(ctx *cx, bench_set *b)
{
    for (int i = 0; i < b->nw; i++) dsv4_bk_weight_free(cx->gpu, &b->dw[i]);
    dsv4_bk_free(cx->gpu, b->dx);
    dsv4_bk_free(cx->gpu, b->dxf);
    dsv4_bk_free(cx->gpu, b->dxq);
    dsv4_bk_free(cx->gpu, b->dy);
}

/* One pass over the copies, forced to `path`; split: a grouped matrix as one dsv4_bk_linear
 * call per group (the engine before dsv4_bk_linear_grouped). */
static dsv4_status bench_pass(ctx *cx, bench_set *b, int64_t N, int path, int split,
                              const float *dx)
{
    const int old = dsv4_cuda_linear_force_path(path);
    const int G = b->groups;
    const int64_t R = b->rows / G, ldx = G * b->cols;
    dsv4_status st = DSV4_OK;
    for (int i = 0; st == DSV4_OK && i < b->nw; i++) {
        const dsv4_weight *w = &b->dw[i];
        if (G > 1 && !split)
            st = dsv4_bk_linear_grouped(cx->gpu, w, G, dx, ldx, N, b->dy, b->rows, 1);
        for (int g = 0; (G == 1 || split) && st == DSV4_OK && g < G; g++)
            st = dsv4_bk_linear(cx->gpu, w, g * R, R, dx + g * b->cols, ldx, N, b->dy + g * R,
                                b->rows, 1);
    }
    dsv4_cuda_linear_force_path(old);
    return st;
}

/* Prints one timing line; returns the graph time per pass (us), 0 on failure. */
static double bench_line(ctx *cx, bench_set *b, int64_t N, int path, int split, int f32x,
                         const char *note)
{
    const float *dx = f32x == 2 ? b->dxq : f32x ? b->dxf : b->dx; /* 2: act_quant'd */
    dsv4_status st = bench_pass(cx, b, N, path, split, dx);
    const int taken = dsv4_cuda_linear_last_path();
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    const int reps = b->nw >= 120 ? 2 : 240 / b->nw;
    double t0 = test_now(), eager = 0, graph = 0;
    for (int r = 0; st == DSV4_OK && r < reps; r++) st = bench_pass(cx, b, N, path, split, dx);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    eager = (test_now() - t0) * 1e6 / (reps * b->nw);
    void *g = NULL;
    if (st == DSV4_OK) st = dsv4_bk_graph_begin(cx->gpu);
    if (st == DSV4_OK) {
        dsv4_status sc = bench_pass(cx, b, N, path, split, dx);
        st = dsv4_bk_graph_end(cx->gpu, &g);
        if (st == DSV4_OK) st = sc;
    }
    if (st == DSV4_OK) st = dsv4_bk_graph_launch(cx->gpu, g);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    t0 = test_now();
    for (int r = 0; st == DSV4_OK && r < reps; r++) st = dsv4_bk_graph_launch(cx->gpu, g);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    graph = (test_now() - t0) * 1e6 / (reps * b->nw);
    if (g) dsv4_bk_graph_free(cx->gpu, g);
    CHECK_MSG(st == DSV4_OK, "bench %s N=%lld: %s", b->name, (long long)N, dsv4_last_error());
    if (st != DSV4_OK) return 0.0;
    const double gbs = (double)b->bytes / graph * 1e-3;
    printf("  %-22s N=%-2lld %-4s %-15s graph %8.2f us %5.0f GB/s %5.1f%%  eager %8.2f us\n",
           b->name, (long long)N, path_name[taken], note, graph, gbs, gbs / 30.0, eager);
    return graph;
}

/* fmm_only: the FMM lines at N = 32, 64 alone (--fmm-bench) */
static void bench_all(ctx *cx, int fmm_only)
{
    static const struct {
        const char *name;
        int fmt, sdt;
        int64_t rows, cols;
        int groups, n64;
    } sh[] = {
        {"flash wq_b fp8", FP8, E8, 32768, 1024, 1, 1},
        {"flash wo_b fp8", FP8, E8, 4096, 8192, 1, 1},
        {"flash wo_a fp8 8 groups", FP8, E8, 8192, 4096, 8, 1},
        {"flash wq_a fp8", FP8, E8, 1024, 4096, 1, 1},
        {"flash idx wq_b fp8", FP8, E8, 8192, 1024, 1, 1},
        {"flash shared w1 fp8", FP8, E8, 2048, 4096, 1, 1},
        {"flash wkv fp8", FP8, E8, 512, 4096, 1, 0},
        {"bf16 1024x4096", B16, 0, 1024, 4096, 1, 0},
        {"pro wq_b fp8", FP8, E8, 65536, 1536, 1, 0},
        {"pro wo_b fp8", FP8, E8, 7168, 16384, 1, 0},
        {"flash head bf16", B16, 0, 129280, 4096, 1, 0},
    };
    static const int64_t ns[] = {1, 2, 4, 8, 16};
    printf("timing (H100 copy bandwidth 3.0 TB/s; old = the f32 GEMV, which the dispatcher took "
           "for all N <= 16 before MMV; grouped old = %s):\n",
           "one call per group");
    for (size_t i = 0; i < sizeof sh / sizeof *sh; i++) {
        bench_set b;
        if (fmm_only && !sh[i].n64) continue;
        if (!bench_open(cx, &b, sh[i].name, sh[i].fmt, sh[i].sdt, sh[i].rows, sh[i].cols,
                        sh[i].groups, sh[i].n64 ? 64 : 16)) {
            bench_close(cx, &b);
            continue;
        }
        if (fmm_only) { /* FMM / MMV against F8W on act_quant'd x (the engine's), N = 8..64 */
            for (int64_t N = 8; N <= 64; N *= 2) {
                const int old = N <= 16 ? DSV4_LIN_PATH_MMV : DSV4_LIN_PATH_FMM;
                const double o = bench_line(cx, &b, N, old, 0, 2, "old (xq)");
                const double n = bench_line(cx, &b, N, DSV4_LIN_PATH_F8W, 0, 2, "f8w (xq)");
                if (o > 0 && n > 0)
                    printf("  %-22s N=%-2lld old / f8w = %.2fx\n", sh[i].name, (long long)N, o / n);
            }
            bench_line(cx, &b, 64, DSV4_LIN_PATH_F8W, 0, 0, "f8w bf16-x (f32)");
            bench_close(cx, &b);
            fflush(stdout);
            continue;
        }
        const int head = sh[i].rows > 100000;
        for (size_t k = 0; k < (head ? 1 : sizeof ns / sizeof *ns); k++) {
            const int64_t N = ns[k];
            double o, n;
            if (sh[i].groups > 1) {
                o = bench_line(cx, &b, N, DSV4_LIN_PATH_GEMV, 1, 0, "old, 8 calls");
                n = bench_line(cx, &b, N, DSV4_LIN_PATH_AUTO, 0, 0, "new, grouped");
            } else {
                o = bench_line(cx, &b, N, DSV4_LIN_PATH_GEMV, 0, 0, "old");
                n = bench_line(cx, &b, N, DSV4_LIN_PATH_MMV, 0, 0, "new");
            }
            if (o > 0 && n > 0)
                printf("  %-22s N=%-2lld old / new = %.2fx\n", sh[i].name, (long long)N, o / n);
        }
        /* 17..64 tokens: the tiled MMA kernel (old) against FMM (new), both grouped */
        for (int64_t N = 32; sh[i].n64 && N <= 64; N *= 2) {
            const double o = bench_line(cx, &b, N, DSV4_LIN_PATH_MMA, 0, 0, "old (mma)");
            const double n = bench_line(cx, &b, N, DSV4_LIN_PATH_FMM, 0, 0, "new (fmm)");
            if (o > 0 && n > 0)
                printf("  %-22s N=%-2lld old / new = %.2fx\n", sh[i].name, (long long)N, o / n);
        }
        if (sh[i].n64) bench_line(cx, &b, 64, DSV4_LIN_PATH_FMM, 0, 1, "f32-x (lo on)");
        if (sh[i].n64 && sh[i].groups == 1) {
            bench_line(cx, &b, 16, DSV4_LIN_PATH_MMV, 0, 1, "f32-x (lo on)");
            bench_line(cx, &b, 4, DSV4_LIN_PATH_MMV, 0, 1, "f32-x (lo on)");
        }
        bench_close(cx, &b);
        fflush(stdout);
    }
}

/* --mmv-bench: the decode projections that MMV takes at batches 2..16 (FP8, Flash and Pro
 * shapes), the dispatcher's pick and MMV forced, N = 2, 4, 8, 16: one build's figures, to be
 * set beside another build's in the same device call. */
static void bench_mmv(ctx *cx)
{
    static const struct {
        const char *name;
        int64_t rows, cols;
        int groups;
    } sh[] = {
        {"flash wq_b fp8", 32768, 1024, 1},
        {"flash wo_b fp8", 4096, 8192, 1},
        {"flash wo_a fp8 8 groups", 8192, 4096, 8},
        {"flash idx wq_b fp8", 8192, 1024, 1},
        {"pro wq_b fp8", 65536, 1536, 1},
        {"pro wo_b fp8", 7168, 16384, 1},
        {"pro wo_a fp8 16 groups", 16384, 4096, 16},
    };
    static const int64_t ns[] = {2, 4, 8, 16};
    printf("timing of the MMV projections (H100 copy bandwidth 3.0 TB/s):\n");
    for (size_t i = 0; i < sizeof sh / sizeof *sh; i++) {
        bench_set b;
        if (bench_open(cx, &b, sh[i].name, FP8, E8, sh[i].rows, sh[i].cols, sh[i].groups, 16))
            for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
                bench_line(cx, &b, ns[k], DSV4_LIN_PATH_AUTO, 0, 0, "auto");
                bench_line(cx, &b, ns[k], DSV4_LIN_PATH_MMV, 0, 0, "mmv");
            }
        bench_close(cx, &b);
        fflush(stdout);
    }
}

/* ---- timing: split-K on small matrices, the multi op on a layer's projections of h ----------
 * A set of weights (one entry, or the projections of h), NW copies (>= 160 MB in all) called in
 * turn, as bench_line. Modes: "old" = one dsv4_bk_linear per entry without split-K (the
 * kernels and grids before it), "split" = one call per entry with split-K where the planner
 * takes it, "multi" = dsv4_bk_linear_multi (N = 16: its fused launch forced). Times per copy
 * of the set. */
enum { TS_OLD = 0, TS_SPLIT = 1, TS_MULTI = 2, TS_W16X = 3 }; /* TS_W16X: multi, W16X forced */

typedef struct tset {
    const char *name;
    int n, nw;
    dsv4_weight *dw; /* [nw][n] */
    int round[DSV4_BK_LINEAR_MULTI_MAX];
    int64_t cols;
    float *dx, *dy[DSV4_BK_LINEAR_MULTI_MAX];
    uint64_t bytes; /* one copy */
} tset;

static int tset_open(ctx *cx, tset *t, const char *name, int n, const mentry *e)
{
    memset(t, 0, sizeof *t);
    t->name = name, t->n = n, t->cols = e[0].cols;
    dsv4_weight w[DSV4_BK_LINEAR_MULTI_MAX];
    for (int i = 0; i < n; i++) {
        weight_desc(&w[i], e[i].name, e[i].fmt, e[i].sdt, e[i].rows, e[i].cols);
        t->bytes += w[i].data_bytes + w[i].scale_bytes;
        t->round[i] = e[i].round;
    }
    t->nw = (int)((160000000ull + t->bytes - 1) / t->bytes);
    if (t->nw > BENCH_COPIES) t->nw = BENCH_COPIES;
    t->dw = calloc((size_t)(t->nw * n), sizeof *t->dw);
    dsv4_status st = t->dw ? DSV4_OK : DSV4_ERR_OUT_OF_MEMORY;
    for (int c = 0; st == DSV4_OK && c < t->nw; c++)
        for (int i = 0; st == DSV4_OK && i < n; i++)
            st = dsv4_bk_weight_upload(cx->gpu, &w[i], 0x7ab1eull + 131ull * (uint64_t)(c * n + i),
                                       &t->dw[c * n + i]);
    const int64_t nx = 64 * t->cols;
    float *x = malloc((size_t)nx * sizeof *x);
    fill_x(x, nx);
    dsv4_sim_bf16(x, nx); /* activations as the engine's: bf16 values */
    if (st == DSV4_OK) st = dsv4_bk_alloc(cx->gpu, (size_t)nx * sizeof *x, (void **)&t->dx);
    if (st == DSV4_OK) st = dsv4_bk_upload(cx->gpu, t->dx, x, (size_t)nx * sizeof *x);
    for (int i = 0; st == DSV4_OK && i < n; i++)
        st = dsv4_bk_alloc(cx->gpu, (size_t)(64 * e[i].rows) * sizeof(float), (void **)&t->dy[i]);
    free(x);
    CHECK_MSG(st == DSV4_OK, "bench %s: %s", name, dsv4_last_error());
    return st == DSV4_OK;
}

static void tset_close(ctx *cx, tset *t)
{
    for (int j = 0; t->dw && j < t->nw * t->n; j++)
        if (t->dw[j].data) dsv4_bk_weight_free(cx->gpu, &t->dw[j]);
    free(t->dw);
    dsv4_bk_free(cx->gpu, t->dx);
    for (int i = 0; i < t->n; i++) dsv4_bk_free(cx->gpu, t->dy[i]);
}

static dsv4_status tset_pass(ctx *cx, tset *t, int64_t N, int mode)
{
    const int old = dsv4_cuda_linear_force_path(mode == TS_W16X             ? DSV4_LIN_PATH_W16X
                                                : mode == TS_MULTI && N > 8 ? DSV4_LIN_PATH_MMX
                                                                            : DSV4_LIN_PATH_AUTO);
    const int olds = dsv4_cuda_linear_force_split(mode == TS_OLD ? 1 : 0);
    dsv4_status st = DSV4_OK;
    for (int c = 0; st == DSV4_OK && c < t->nw; c++) {
        const dsv4_weight *w = &t->dw[c * t->n];
        if (mode == TS_MULTI || mode == TS_W16X) {
            dsv4_bk_linear_entry e[DSV4_BK_LINEAR_MULTI_MAX];
            for (int i = 0; i < t->n; i++)
                e[i] = dsv4_bk_lin_entry(&w[i], t->dx, t->cols, t->dy[i], w[i].rows, t->round[i]);
            st = dsv4_bk_linear_multi(cx->gpu, e, t->n, N);
        } else {
            for (int i = 0; st == DSV4_OK && i < t->n; i++)
                st = dsv4_bk_linear(cx->gpu, &w[i], 0, w[i].rows, t->dx, t->cols, N, t->dy[i],
                                    w[i].rows, t->round[i]);
        }
    }
    dsv4_cuda_linear_force_path(old);
    dsv4_cuda_linear_force_split(olds);
    return st;
}

/* One timing line; returns the graph time per copy of the set (us), 0 on failure. */
static double tset_line(ctx *cx, tset *t, int64_t N, int mode)
{
    static const char *mode_name[] = {"old", "split", "multi", "w16x"};
    dsv4_status st = tset_pass(cx, t, N, mode);
    const int path = dsv4_cuda_linear_last_path(), split = dsv4_cuda_linear_last_split();
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    const int reps = t->nw >= 120 ? 2 : 240 / t->nw;
    double t0 = test_now();
    for (int r = 0; st == DSV4_OK && r < reps; r++) st = tset_pass(cx, t, N, mode);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    const double eager = (test_now() - t0) * 1e6 / (reps * t->nw);
    void *g = NULL;
    if (st == DSV4_OK) st = dsv4_bk_graph_begin(cx->gpu);
    if (st == DSV4_OK) {
        dsv4_status sc = tset_pass(cx, t, N, mode);
        st = dsv4_bk_graph_end(cx->gpu, &g);
        if (st == DSV4_OK) st = sc;
    }
    if (st == DSV4_OK) st = dsv4_bk_graph_launch(cx->gpu, g);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    t0 = test_now();
    for (int r = 0; st == DSV4_OK && r < reps; r++) st = dsv4_bk_graph_launch(cx->gpu, g);
    if (st == DSV4_OK) st = dsv4_bk_sync(cx->gpu);
    const double graph = (test_now() - t0) * 1e6 / (reps * t->nw);
    if (g) dsv4_bk_graph_free(cx->gpu, g);
    CHECK_MSG(st == DSV4_OK, "bench %s N=%lld: %s", t->name, (long long)N, dsv4_last_error());
    if (st != DSV4_OK) return 0.0;
    const double gbs = (double)t->bytes / graph * 1e-3;
    printf("  %-26s N=%-2lld %-5s (last %-5s split %d) graph %8.2f us %5.0f GB/s %5.1f%%  eager "
           "%8.2f us\n",
           t->name, (long long)N, mode_name[mode], path_name[path], split, graph, gbs, gbs / 30.0,
           eager);
    return graph;
}

/* The layer's projections of h at N = 9..64: one call per entry (split: HEAD's multi op above 8
 * rows) against MMX's one launch (multi) and W16X's (w16x; bf16 x, as the engine's). */
static void bench_multi_mmx(ctx *cx)
{
    for (int k = 0; k < 3; k++) {
        const mcase *mc = &multi_full[k];
        tset t;
        if (tset_open(cx, &t, mc->name, mc->n, mc->e)) {
            static const int64_t ns[] = {9, 16, 24, 32, 48, 64};
            for (size_t j = 0; j < sizeof ns / sizeof *ns; j++) {
                const int64_t N = ns[j];
                const double sp = tset_line(cx, &t, N, TS_SPLIT);
                const double mu = tset_line(cx, &t, N, TS_MULTI);
                const double wx = tset_line(cx, &t, N, TS_W16X);
                if (sp > 0 && mu > 0 && wx > 0)
                    printf("  %-26s N=%-2lld singles / mmx = %.2fx, mmx / w16x = %.2fx\n", t.name,
                           (long long)N, sp / mu, mu / wx);
            }
        }
        tset_close(cx, &t);
        fflush(stdout);
    }
}

static void bench_multi(ctx *cx)
{
    printf("timing of split-K and dsv4_bk_linear_multi (per copy of the set; old = one call per "
           "matrix without split-K):\n");
    static const struct {
        const char *name;
        mentry e;
    } one[] = {
        {"weights_proj bf16 64x4096", {"wp", B16, 0, 64, 4096, 0, 0, 1, 0}},
        {"gate bf16 256x4096", {"gate", B16, 0, 256, 4096, 0, 0, 0, 0}},
        {"idx comp bf16 256x4096", {"ic", B16, 0, 256, 4096, 0, 0, 0, 0}},
        {"wkv fp8 512x4096", {"wkv", FP8, E8, 512, 4096, 0, 0, 1, 0}},
        {"hc_head f32 24x16384", {"hc", F32, 0, 24, 16384, 0, 0, 0, 0}},
    };
    for (size_t i = 0; i < sizeof one / sizeof *one; i++) {
        tset t;
        if (tset_open(cx, &t, one[i].name, 1, &one[i].e))
            for (int64_t N = 1; N <= 4; N *= 4) {
                const double o = tset_line(cx, &t, N, TS_OLD), n = tset_line(cx, &t, N, TS_SPLIT);
                if (o > 0 && n > 0)
                    printf("  %-26s N=%-2lld old / split = %.2fx\n", t.name, (long long)N, o / n);
            }
        tset_close(cx, &t);
        fflush(stdout);
    }
    for (int k = 0; k < 2; k++) {
        const mcase *mc = &multi_full[k];
        tset t;
        if (tset_open(cx, &t, mc->name, mc->n, mc->e)) {
            static const int64_t ns[] = {1, 2, 4, 8};
            for (size_t j = 0; j < sizeof ns / sizeof *ns; j++) {
                const int64_t N = ns[j];
                const double o = tset_line(cx, &t, N, TS_OLD);
                const double sp = tset_line(cx, &t, N, TS_SPLIT);
                const double mu = tset_line(cx, &t, N, TS_MULTI);
                if (o > 0 && sp > 0 && mu > 0)
                    printf("  %-26s N=%-2lld old / multi = %.2fx (split singles %.2fx)\n", t.name,
                           (long long)N, o / mu, o / sp);
            }
        }
        tset_close(cx, &t);
        fflush(stdout);
    }
    bench_multi_mmx(cx);
}

int main(int argc, char **argv)
{
    const int xq_only = argc > 1 && !strcmp(argv[1], "--small-xq");
    const int small = xq_only || (argc > 1 && !strcmp(argv[1], "--small"));
    const int check_only = argc > 1 && !strcmp(argv[1], "--check");
    const int fmm_bench = argc > 1 && !strcmp(argv[1], "--fmm-bench");
    const int multi_bench = argc > 1 && !strcmp(argv[1], "--multi-bench");
    const int mmv_bench = argc > 1 && !strcmp(argv[1], "--mmv-bench");
    dsv4_cpu_pool *pool;
    ctx cx;
    if (ctx_open(&cx, &pool) != DSV4_OK) return test_finish();
    if (fmm_bench || multi_bench || mmv_bench) {
        if (fmm_bench) bench_all(&cx, 1);
        if (multi_bench) bench_multi_mmx(&cx);
        if (mmv_bench) bench_mmv(&cx);
        dsv4_backend_destroy(cx.gpu);
        dsv4_backend_destroy(cx.cpu);
        dsv4_cpu_pool_destroy(pool);
        return test_finish();
    }

    printf("linear: bound |gpu - cpu| <= 1e-5 * sum|x||w| (rounded: gpu = bf16(v), |v - cpu "
           "unrounded| <= bound); err/bound <= 1 passes;\n  max_rel = |gpu - cpu| / max(|cpu|, "
           "floor), floor = 1e-3 * rms(cpu)\n");
    const double t0 = test_now();
    check_errors(&cx);
    const tcase *cases = small ? small_cases : full_cases;
    const size_t n_cases = xq_only ? 0
                           : small ? sizeof small_cases / sizeof *small_cases
                                   : sizeof full_cases / sizeof *full_cases;
    for (size_t i = 0; i < n_cases; i++) run_case(&cx, &cases[i]);
    printf("two-row GEMV with x staged: %lld calls, the plain GEMV's bits\n", (long long)xs_checks);
    CHECK_MSG(xq_only || xs_checks > 0, "no case ran the staged-x GEMV");
    const mcase *mcases = small ? multi_small : multi_full;
    const size_t n_mcases = xq_only ? 0
                            : small ? sizeof multi_small / sizeof *multi_small
                                    : sizeof multi_full / sizeof *multi_full;
    for (size_t i = 0; i < n_mcases; i++) run_multi(&cx, &mcases[i]);
    printf("correctness: %.1f s; ", test_now() - t0);
    print_worst("worst err/bound per kernel:");
    /* x with lo-free 128-column blocks: single ops and the multi cases (their MMX launches) */
    for (xmix_mode = 1; xmix_mode <= 2 && !xq_only; xmix_mode++) {
        const tcase *xc = small ? xmix_small : xmix_full;
        const size_t n_xc =
            small ? sizeof xmix_small / sizeof *xmix_small : sizeof xmix_full / sizeof *xmix_full;
        for (size_t i = 0; i < n_xc; i++) run_case(&cx, &xc[i]);
        run_multi(&cx, &mcases[0]);
    }
    xmix_mode = 0;
    print_worst("with lo-free x blocks: worst err/bound per kernel:");
    /* act_quant'd x: F8W's e4m3 path, under its own bound (extra_bound) */
    memset(worst_by_path, 0, sizeof worst_by_path);
    memset(checks_by_path, 0, sizeof checks_by_path);
    for (xmix_mode = 3; xmix_mode <= 4; xmix_mode++) {
        const tcase *xc = small ? xq_small : xq_full;
        const size_t n_xc =
            small ? sizeof xq_small / sizeof *xq_small : sizeof xq_full / sizeof *xq_full;
        for (size_t i = 0; i < n_xc; i++) run_case(&cx, &xc[i]);
    }
    xmix_mode = 0;
    print_worst("act_quant'd x (f8w: bound (1e-5 + 132 2^-13) S): worst err/bound per kernel:");
    /* bf16 x: W16X's wgmma path (the multi cases of FP8 and BF16 entries of one width) */
    memset(worst_by_path, 0, sizeof worst_by_path);
    memset(checks_by_path, 0, sizeof checks_by_path);
    xmix_mode = 5;
    if (!xq_only) {
        if (small)
            run_multi(&cx, &multi_small[2]);
        else
            for (int i = 0; i < 3; i++) run_multi(&cx, &multi_full[i]);
    }
    xmix_mode = 0;
    print_worst("bf16 x (w16, w16x: bound (1e-5 + 136 2^-13) S): worst err/bound per kernel:");
    CHECK_MSG(xq_only || checks_by_path[DSV4_LIN_PATH_W16X] > 0, "no call took W16X");

    if (!small && !check_only) bench_multi(&cx);
    if (!small && !check_only) bench_all(&cx, 0);
    ctx_close(&cx, pool);
    return test_finish();
}
