/*
 * test_cpu_topk.c - dsv4_op_topk (backend/cpu/ops_attn.c), the top-k of the CPU router and
 * indexer, against its definition: the k largest scores, ties to the lower index, NaN above every
 * number (torch.topk's order; the GPU router follows it, test_gpu_moe), returned in ascending
 * index order. The oracle sorts all n indices by that order (qsort) and takes the first k, so it
 * shares no code with the heap under test. Inputs: hand cases, then random arrays drawn from a
 * few values (ties), with NaN, +-0 and +-inf mixed in, for every k of several n.
 */
#include "backend/cpu/ops.h"

#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const float *oracle_s; /* qsort's comparator reads the scores from here */

/* <0 when index a ranks above index b */
static int oracle_cmp(const void *pa, const void *pb)
{
    const int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    const float x = oracle_s[a], y = oracle_s[b];
    const int nx = isnan(x), ny = isnan(y);
    if (nx != ny) return nx ? -1 : 1;
    if (!nx && x != y) return x > y ? -1 : 1;
    return (a > b) - (a < b);
}

static int cmp_idx(const void *pa, const void *pb)
{
    const int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

static void oracle_topk(int32_t *idx, const float *s, int n, int k)
{
    int32_t *all = malloc((size_t)n * sizeof *all);
    for (int i = 0; i < n; i++) all[i] = i;
    oracle_s = s;
    qsort(all, (size_t)n, sizeof *all, oracle_cmp);
    memcpy(idx, all, (size_t)k * sizeof *idx);
    qsort(idx, (size_t)k, sizeof *idx, cmp_idx);
    free(all);
}

static int same(const int32_t *a, const int32_t *b, int k)
{
    return memcmp(a, b, (size_t)k * sizeof *a) == 0;
}

static void check_hand(void)
{
    const float s[] = {1.0f, 3.0f, 2.0f, 3.0f, NAN, -INFINITY, NAN};
    int32_t got[7];
    dsv4_op_topk(got, s, 7, 3); /* both NaNs, then the first 3 */
    CHECK(got[0] == 1 && got[1] == 4 && got[2] == 6);
    dsv4_op_topk(got, s, 7, 1); /* the first NaN */
    CHECK(got[0] == 4);
    const float t[] = {2.0f, 2.0f, 2.0f, 2.0f};
    dsv4_op_topk(got, t, 4, 2); /* ties: the lower indices */
    CHECK(got[0] == 0 && got[1] == 1);
    const float z[] = {-0.0f, 0.0f, -1.0f, INFINITY};
    dsv4_op_topk(got, z, 4, 2); /* +inf, then -0 == +0: the lower index */
    CHECK(got[0] == 0 && got[1] == 3);
}

static void check_random(void)
{
    static const float pool[] = {0.5f, -0.5f, 1.0f, 1.0f, 2.0f, -0.0f, 0.0f, INFINITY, -INFINITY};
    unsigned long long seed = 0x70b4c0deull;
    int bad = 0, cases = 0;
    for (int n = 1; n <= 40; n += 3)
        for (int rep = 0; rep < 20; rep++) {
            float s[40];
            for (int i = 0; i < n; i++) {
                const unsigned long long r = test_splitmix(&seed);
                s[i] = r % 11 == 0  ? NAN
                       : r % 3 == 0 ? pool[(r >> 8) % (sizeof pool / sizeof *pool)]
                                    : (float)((int)((r >> 16) % 64) - 32) * 0.25f;
            }
            for (int k = 1; k <= n; k++) {
                int32_t got[40], want[40];
                dsv4_op_topk(got, s, n, k);
                oracle_topk(want, s, n, k);
                bad += !same(got, want, k);
                cases++;
            }
        }
    printf("topk: %d random cases (n 1..40, every k), %d differ from the oracle\n", cases, bad);
    CHECK(bad == 0);
}

int main(void)
{
    check_hand();
    check_random();
    return test_finish();
}
