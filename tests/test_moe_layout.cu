/*
 * test_moe_layout.cu - the packed MXFP4 scale layout of the CUDA MoE (backend/cuda/moe.cuh), on
 * the host: no GPU needed, so it runs in CI wherever nvcc builds the CUDA backend.
 *
 * The layout is an index mapping that the tensor-core kernels, the SIMT kernels and the kernel
 * that writes it must agree on. A wrong mapping gives wrong sums only for the bytes it confuses,
 * which random GPU tests can miss where scales repeat; so here, for published and padded shapes:
 *   - moe_scale_off is a bijection from (row, group) of the padded matrix onto
 *     [0, moe_scale_bytes), and moe_scale_pos (what moe_layout.cu writes from) is its inverse;
 *   - lane (g, t)'s word of chunk pair p (what moe_mma.cu's load_chunks reads: one 32-bit load
 *     at the offset of (row g, chunk 2p, group t)) holds byte (c % 2) * 2 + rr = the scale of
 *     row g + 8 rr, chunk c, group t, and is 4-byte aligned;
 *   - moe_slice_chunks cuts [0, nch) into slices that start on even chunks.
 */
#include "backend/cuda/moe.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            if (failures++ < 20) {                                                                 \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                                        \
                printf(__VA_ARGS__);                                                               \
                printf("\n");                                                                      \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void check_shape(int64_t rows, int64_t cols)
{
    const int64_t nch = (cols + 127) / 128, rp = (rows + 15) / 16 * 16;
    const int64_t groups = (nch + 1) / 2 * 2 * 4; /* padded to a chunk pair */
    const int64_t bytes = moe_scale_bytes(rows, cols);
    CHECK(bytes == rp * groups, "[%lld, %lld]: %lld bytes, expected %lld", (long long)rows,
          (long long)cols, (long long)bytes, (long long)(rp * groups));
    unsigned char *seen = (unsigned char *)calloc((size_t)bytes, 1);
    int bad = 0;
    for (int64_t r = 0; r < rp && !bad; r++)
        for (int64_t q = 0; q < groups && !bad; q++) {
            const int64_t o = moe_scale_off(nch, r, 32 * q);
            if (o < 0 || o >= bytes || seen[o]) {
                CHECK(0, "[%lld, %lld]: (row %lld, group %lld) -> %lld: out of range or taken",
                      (long long)rows, (long long)cols, (long long)r, (long long)q, (long long)o);
                bad = 1;
                break;
            }
            seen[o] = 1;
            int64_t r2, q2;
            moe_scale_pos(nch, o, &r2, &q2);
            CHECK(r2 == r && q2 == q, "[%lld, %lld]: pos(off(%lld, %lld)) = (%lld, %lld)",
                  (long long)rows, (long long)cols, (long long)r, (long long)q, (long long)r2,
                  (long long)q2);
        }
    free(seen);

    /* the lanes' words, as load_chunks reads them */
    for (int64_t tile = 0; tile < rp / 16; tile++)
        for (int64_t p = 0; p < (nch + 1) / 2; p++)
            for (int lane = 0; lane < 32; lane++) {
                const int g = lane >> 2, t = lane & 3;
                const int64_t w = moe_scale_off(nch, tile * 16 + g, 256 * p + 32 * t);
                CHECK(w % 4 == 0, "word at %lld not aligned", (long long)w);
                CHECK(w == ((tile * ((nch + 1) / 2) + p) * 32 + lane) * 4,
                      "lane %d's word of pair %lld at %lld", lane, (long long)p, (long long)w);
                for (int b = 0; b < 4; b++) {
                    const int64_t c = 2 * p + (b >> 1), row = tile * 16 + g + 8 * (b & 1);
                    CHECK(moe_scale_off(nch, row, 128 * c + 32 * t) == w + b,
                          "row %lld chunk %lld group %d: not byte %d of lane %d's word",
                          (long long)row, (long long)c, t, b, lane);
                }
            }
}

static void check_slices(int nch)
{
    for (int ks = 1; ks <= 4; ks *= 2) {
        const int per = moe_slice_chunks(nch, ks);
        CHECK(per * ks >= nch && per <= nch + 1, "nch %d ks %d: %d chunks a slice", nch, ks, per);
        for (int s = 0; s < ks; s++) {
            const int lo = s * per < nch ? s * per : nch;
            CHECK(ks == 1 || lo % 2 == 0 || lo == nch, "nch %d ks %d: slice %d starts at %d", nch,
                  ks, s, lo);
        }
    }
}

int main(void)
{
    /* Flash [I, D] / [D, I], Pro, and padded toy shapes: odd chunk counts, rows not a
     * multiple of 16, columns not a multiple of 128 */
    static const int64_t shapes[][2] = {{2048, 4096}, {4096, 2048}, {3072, 7168}, {7168, 3072},
                                        {352, 4096},  {4096, 352},  {100, 96},    {16, 384},
                                        {48, 160},    {1, 32},      {24, 640}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        check_shape(shapes[i][0], shapes[i][1]);
    for (int nch = 1; nch <= 64; nch++) check_slices(nch);
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
