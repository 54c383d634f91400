/*
 * bk_moe.cu - CUDA implementation of the MoE ops of backend.h: the router, the device expert
 * table, and dsv4_bk_moe as a fixed sequence of launches that never waits for the host. Two
 * paths:
 *
 *   tensor cores (moe_mma.cu), when every expert matrix is MXFP4 or FP8 with ue8m0 scales and
 *   its workspace fits: prep, stage 1 (w1/w3, SwiGLU, act_quant of a), stage 2 (w2), combine;
 *   dsv4_bk_moe_routed routes in the prep launch (moe_route.cu), the SIMT path by the router
 *
 *   SIMT (moe_gemm.cu), any format:
 *   prep     block 0 compacts sel [N, K] into the work list (moe.cuh moe_list: active experts in
 *            ascending order, the pairs of each); the other blocks write xq = act_quant(h)
 *   stage 1  grouped w1/w3 GEMM with the SwiGLU * weight epilogue -> a [pair, I] (moe_gemm.cu)
 *   quant    a = act_quant(a) per pair row
 *   stage 2  grouped w2 GEMM -> y [pair, D] = bf16(...)
 *   combine  out [r] = bf16(routed y of row r summed in ascending (expert, slot) order + shared)
 *
 * The grids come from host-known bounds (at most min(E, N K) active experts; CTAs past the
 * device count exit at once). Every sum has a fixed order, so results are deterministic;
 * numerics as the CPU (bk_moe.c) up to f32 summation order. tests/test_gpu_moe.c forces either
 * path through moe_path.cuh.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/moe.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/moe_numerics.cuh"
#include "backend/cuda/moe_path.cuh"
#include "backend/cuda/moe_route.cuh"
#include "core/float_formats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- act_quant of the SIMT path ------------------------------------------------------------ */
/* dsv4_sim_act_quant on the 128-block of a row starting at column c0 (one warp, 4 columns a
 * lane): y[c] = e4m3(bf16(x[c]) / s) * s for c < width. width % 4 == 0. y may alias x. */
__device__ __forceinline__ void act_quant_block(float *y, const float *x, int64_t width, int64_t c0,
                                                int lane)
{
    const int64_t c = c0 + 4 * lane;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c < width) {
        const float4 f = *(const float4 *)(x + c);
        v[0] = q_bf16(f.x), v[1] = q_bf16(f.y), v[2] = q_bf16(f.z), v[3] = q_bf16(f.w);
    }
    float m = 0.0f;
    for (int i = 0; i < 4; i++) m = fmaxf(m, fabsf(v[i]));
    for (int d = 16; d > 0; d >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, d));
    const float s = q_scale_fp8(m);
    if (c < width) {
        float4 o;
        o.x = __fmul_rn(q_e4m3(__fdiv_rn(v[0], s)), s);
        o.y = __fmul_rn(q_e4m3(__fdiv_rn(v[1], s)), s);
        o.z = __fmul_rn(q_e4m3(__fdiv_rn(v[2], s)), s);
        o.w = __fmul_rn(q_e4m3(__fdiv_rn(v[3], s)), s);
        *(float4 *)(y + c) = o;
    }
}

/* ---- router -------------------------------------------------------------------------------- */
/* logits [N, E] -> sel [N, K], wts [N, K]: one CTA per row (moe_route.cuh moe_route_row).
 * blockDim: E rounded up to warps (top-k), 32 (hash layers). */
__global__ void moe_router_kernel(int32_t *sel, float *wts, const float *logits, const float *bias,
                                  const int32_t *tid2eid, const int32_t *ids, int E, int K,
                                  float route_scale)
{
    DSV4_PDL_WAIT();
    __shared__ moe_route_smem sm;
    moe_route_row(sm, sel, wts, logits, bias, tid2eid, ids, blockIdx.x, E, K, route_scale);
}

static dsv4_status router_check(const int32_t *tid2eid, const dsv4_bk_rows *rows, int E, int K)
{
    if (E < 1 || E > MOE_MAX_E || K < 1 || K > E || K > MOE_MAX_K)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "cuda router: %d experts, top %d", E, K);
    if (tid2eid && !rows->ids)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "cuda router: hash routing needs token ids");
    return DSV4_OK;
}

static dsv4_status router_launch(cudaStream_t st, const moe_route *rt, int64_t N, int E, int K)
{
    const unsigned threads = rt->tid2eid ? 32u : (unsigned)((E + 31) / 32 * 32);
    moe_router_kernel<<<(unsigned)N, threads, 0, st>>>(rt->sel, rt->wts, rt->logits, rt->bias,
                                                       rt->tid2eid, rt->ids, E, K, rt->scale);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

static moe_route route_of(int32_t *sel, float *wts, const float *logits, const float *bias,
                          const int32_t *tid2eid, const dsv4_bk_rows *rows, float route_scale,
                          int32_t *counter)
{
    moe_route rt;
    rt.logits = logits;
    rt.bias = bias;
    rt.tid2eid = tid2eid;
    rt.ids = rows->ids;
    rt.sel = sel;
    rt.wts = wts;
    rt.scale = route_scale;
    rt.counter = counter;
    return rt;
}

extern "C" dsv4_status dsv4_cuda_bk_router(dsv4_backend *b, int32_t *sel, float *wts,
                                           const float *logits, const float *bias,
                                           const int32_t *tid2eid, const dsv4_bk_rows *rows, int E,
                                           int K, float route_scale)
{
    DSV4_TRY(router_check(tid2eid, rows, E, K));
    if (rows->n <= 0) return DSV4_OK;
    const moe_route rt = route_of(sel, wts, logits, bias, tid2eid, rows, route_scale, NULL);
    return router_launch(dsv4_cuda_stream(b->cuda), &rt, rows->n, E, K);
}

/* ---- expert table -------------------------------------------------------------------------- */
typedef struct cuda_experts {
    moe_expert *table; /* [E + 1] device; [E] = shared */
    int E;
    int64_t D, I;
    int sms;
    int kw1, rg1, occ1; /* stage 1 CTA shape and residency */
    int kw2, rg2, occ2;
    int mma_ok;       /* every matrix taken by the tensor-core path (moe_mma_mat_ok); tiled */
    int32_t *counter; /* [1] device: moe_route's ticket counter (0 between calls) */
    void **owned;     /* tiled copies of matrices that could not be tiled in place */
    int n_owned;
} cuda_experts;

/* Test hook (moe_path.cuh). Its initial value comes from DSV4_MOE_PATH (simt or mma:
 * a diagnostic switch, so that one device run can time the engine on each path). */
static int force_path = -1, last_path = DSV4_MOE_PATH_AUTO;

static int path_setting(void)
{
    if (force_path < 0) {
        const char *e = getenv("DSV4_MOE_PATH");
        force_path = !e                   ? DSV4_MOE_PATH_AUTO
                     : !strcmp(e, "simt") ? DSV4_MOE_PATH_SIMT
                     : !strcmp(e, "mma")  ? DSV4_MOE_PATH_MMA
                                          : DSV4_MOE_PATH_AUTO;
    }
    return force_path;
}

extern "C" int dsv4_cuda_moe_force_path(int path)
{
    const int old = path_setting();
    force_path = path;
    return old;
}

extern "C" int dsv4_cuda_moe_last_path(void)
{
    return last_path;
}

/* The tensor-core path's slots of the shared expert, each a range of the N tokens (moe.cuh
 * moe_mma_args ss, sst): one up to SHARED_SLOT_TOKENS rows, above that a slot each
 * SHARED_SLOT_TOKENS rows, at most SHARED_SLOTS. In one slot each of its tasks walks all N
 * tokens in passes of 8-16 and so outlasts the routed tasks (~1-2 tokens each): a probe without
 * the shared expert ran Flash batch 16 / 32 / 64 / 128 2.5 / 2.8 / 3.2 / 4.2% faster, Pro 2.5 /
 * - / 3.8 / 4.5%. Split, its passes run side by side on other SMs, with the same bits (a token's
 * sums do not depend on its slot; test_gpu_moe). The rule is the best of 8 / 16 / 32 tokens a
 * slot in one binary (a probe switch): about N / 4, at least 8. Against the single slot (H100,
 * dsv4 bench, ms/step, docs/PERF.md session 22): Flash 4 layers batch 12 2.460 -> 2.440, 16
 * 2.835 -> 2.816, 24 3.598 -> 3.558, 32 4.216 -> 4.159, 64 6.267 -> 6.240, 128 9.625 -> 9.569,
 * prefill of 4096 +1.1%; Pro 2 layers 12 2.938 -> 2.909, 16 3.430 -> 3.402, 64 8.601 -> 8.551;
 * batch 1-8 the same (one slot). */
enum { SHARED_SLOT_TOKENS = 8, SHARED_SLOTS = 4 };
static int force_ss = 0;

extern "C" int dsv4_cuda_moe_force_shared_slots(int slots)
{
    const int old = force_ss;
    force_ss = slots > 0 ? slots : 0;
    return old;
}

static int force_rdy = 0;

extern "C" int dsv4_cuda_moe_force_ready(int mode)
{
    const int old = force_rdy;
    force_rdy = mode > 0 ? 1 : mode < 0 ? -1 : 0;
    return old;
}

static int shared_slots(int64_t N)
{
    int64_t s = force_ss > 0 ? force_ss : (N + SHARED_SLOT_TOKENS - 1) / SHARED_SLOT_TOKENS;
    if (!force_ss && s > SHARED_SLOTS) s = SHARED_SLOTS;
    return (int)(s < 1 ? 1 : s > N ? N : s);
}

static dsv4_status mat_of(const dsv4_weight *w, moe_mat *m)
{
    m->data = (const uint8_t *)w->data;
    m->scale = (const uint8_t *)w->scale;
    m->rows = w->rows;
    m->cols = w->cols;
    m->scale_cols = w->scale_cols;
    m->scale_f32 = 0;
    m->out_scale = 1.0f;
    m->tiled = 0;
    int ok = w->data != NULL && w->cols % MOE_LANE_COLS == 0;
    switch (w->format) {
    case DSV4_FORMAT_MXFP4:
    case DSV4_FORMAT_NVFP4: {
        const int mx = w->format == DSV4_FORMAT_MXFP4;
        m->fmt = mx ? MOE_MXFP4 : MOE_NVFP4;
        m->out_scale = w->scale2;
        ok = ok && w->scale && w->scale_dtype == (mx ? DSV4_DT_F8_E8M0 : DSV4_DT_F8_E4M3);
        break;
    }
    case DSV4_FORMAT_FP8:
        m->fmt = MOE_FP8;
        m->scale_f32 = w->scale_dtype == DSV4_DT_F32;
        ok = ok && w->scale && (m->scale_f32 || w->scale_dtype == DSV4_DT_F8_E8M0);
        break;
    case DSV4_FORMAT_BF16:
        m->fmt = MOE_BF16;
        ok = ok && w->dtype == DSV4_DT_BF16;
        break;
    case DSV4_FORMAT_F32:
        m->fmt = MOE_F32;
        ok = ok && w->dtype == DSV4_DT_F32;
        break;
    case DSV4_FORMAT_F16:
        m->fmt = MOE_F16;
        ok = ok && w->dtype == DSV4_DT_F16;
        break;
    default:
        ok = 0;
        break;
    }
    if (!ok)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "cuda moe: %s (%s [%lld, %lld]): experts must be MXFP4, NVFP4, FP8, BF16, "
                         "F16 or F32 with a multiple of 32 columns",
                         w->name ? w->name : "expert weight", dsv4_weight_format_name(w->format),
                         (long long)w->rows, (long long)w->cols);
    return DSV4_OK;
}

static dsv4_status expert_of(const dsv4_expert_weights *x, int64_t D, int64_t I, moe_expert *o)
{
    DSV4_TRY(mat_of(&x->w1, &o->w1));
    DSV4_TRY(mat_of(&x->w2, &o->w2));
    DSV4_TRY(mat_of(&x->w3, &o->w3));
    if (x->w1.rows != I || x->w3.rows != I || x->w1.cols != D || x->w3.cols != D ||
        x->w2.rows != D || x->w2.cols != I || o->w1.fmt != o->w3.fmt)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "cuda moe: %s: every expert must be [%lld, %lld] / [%lld, %lld] with w1 "
                         "and w3 in one format",
                         x->w1.name ? x->w1.name : "expert", (long long)I, (long long)D,
                         (long long)D, (long long)I);
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_experts_create(dsv4_backend *b,
                                                   const dsv4_expert_weights *experts, int E,
                                                   const dsv4_expert_weights *shared,
                                                   dsv4_bk_experts **out)
{
    *out = NULL;
    if (E < 1 || E > MOE_MAX_E || !experts || !shared)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "cuda experts_create: %d experts (at most %d)",
                         E, MOE_MAX_E);
    const int64_t D = shared->w1.cols, I = shared->w1.rows;
    if (D > (int64_t)MOE_MAX_WARPS * MOE_WARP_COLS || I > (int64_t)MOE_MAX_WARPS * MOE_WARP_COLS)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "cuda moe: width %lld / %lld above %d", (long long)D,
                         (long long)I, MOE_MAX_WARPS * MOE_WARP_COLS);
    moe_expert *host = (moe_expert *)calloc((size_t)E + 1, sizeof *host);
    cuda_experts *t = (cuda_experts *)calloc(1, sizeof *t);
    dsv4_status st =
        host && t ? DSV4_OK : dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "cuda moe: a table of %d", E);
    for (int e = 0; st == DSV4_OK && e < E; e++) st = expert_of(&experts[e], D, I, &host[e]);
    if (st == DSV4_OK) st = expert_of(shared, D, I, &host[E]);
    int mma_ok = st == DSV4_OK;
    for (int e = 0; mma_ok && e <= E; e++)
        mma_ok = moe_mma_mat_ok(&host[e].w1) && moe_mma_mat_ok(&host[e].w2) &&
                 moe_mma_mat_ok(&host[e].w3);
    /* the tensor-core path reads the tiled layout (moe.cuh); the SIMT path reads either */
    if (mma_ok) st = moe_layout_tile(b, host, E + 1, &t->owned, &t->n_owned);
    if (st == DSV4_OK)
        st = dsv4_cuda_bk_alloc(b, ((size_t)E + 1) * sizeof *host, (void **)&t->table);
    if (st == DSV4_OK) st = dsv4_cuda_bk_upload(b, t->table, host, ((size_t)E + 1) * sizeof *host);
    if (st == DSV4_OK) st = dsv4_cuda_bk_alloc(b, sizeof(int32_t), (void **)&t->counter); /* 0 */
    if (st == DSV4_OK) st = dsv4_cuda_bk_sync(b); /* host may be freed */
    free(host);
    if (st == DSV4_OK) {
        t->E = E;
        t->D = D;
        t->I = I;
        t->mma_ok = mma_ok;
        int dev = 0;
        cudaError_t err = cudaGetDevice(&dev);
        if (err == cudaSuccess)
            err = cudaDeviceGetAttribute(&t->sms, cudaDevAttrMultiProcessorCount, dev);
        if (err != cudaSuccess)
            st = dsv4_fail(DSV4_ERR_DEVICE, "cuda moe: SM count: %s", cudaGetErrorString(err));
        moe_gemm_shape(D, &t->kw1, &t->rg1);
        moe_gemm_shape(I, &t->kw2, &t->rg2);
        if (st == DSV4_OK) st = moe_gemm_occupancy(1, t->kw1, t->rg1, &t->occ1);
        if (st == DSV4_OK) st = moe_gemm_occupancy(0, t->kw2, t->rg2, &t->occ2);
    }
    if (st != DSV4_OK) {
        dsv4_cuda_bk_experts_free(b, (dsv4_bk_experts *)t);
        return st;
    }
    *out = (dsv4_bk_experts *)t;
    return DSV4_OK;
}

extern "C" void dsv4_cuda_bk_experts_free(dsv4_backend *b, dsv4_bk_experts *tp)
{
    cuda_experts *t = (cuda_experts *)tp;
    if (!t) return;
    dsv4_cuda_bk_free(b, t->table);
    dsv4_cuda_bk_free(b, t->counter);
    for (int i = 0; i < t->n_owned; i++) dsv4_cuda_bk_free(b, t->owned[i]);
    free(t->owned);
    free(t);
}

/* ---- prep, quant, combine ------------------------------------------------------------------ */
/* Block 0: sel [N, K] -> the work list L (moe_route.cuh moe_list_build). Blocks 1..: xq [N, D]
 * = act_quant(h [N, D]), one warp per 128-block. */
__global__ void moe_prep_kernel(moe_list L, const int32_t *sel, int64_t NK, int E, float *xq,
                                const float *h, int64_t N, int64_t D)
{
    DSV4_PDL_WAIT();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (blockIdx.x > 0) {
        const int64_t bpr = (D + 127) / 128;
        const int64_t gw = (int64_t)(blockIdx.x - 1) * (blockDim.x >> 5) + warp;
        if (gw >= N * bpr) return;
        const int64_t r = gw / bpr, c0 = (gw % bpr) * 128;
        act_quant_block(xq + r * D, h + r * D, D, c0, lane);
        return;
    }
    extern __shared__ int32_t wl[];
    moe_list_build(L, sel, NK, E, wl);
}

/* x [rows, width] (row stride width) in place: act_quant, one warp per 128-block. */
__global__ void moe_act_quant_kernel(float *x, int64_t rows, int64_t width)
{
    DSV4_PDL_WAIT();
    const int64_t bpr = (width + 127) / 128;
    const int64_t gw = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (gw >= rows * bpr) return;
    const int64_t r = gw / bpr, c0 = (gw % bpr) * 128;
    act_quant_block(x + r * width, x + r * width, width, c0, threadIdx.x & 31);
}

/* y [N(K+1), D] -> out [N, D]: per row, the routed pairs in ascending (expert, slot) order added
 * in f32 from 0 (moe_body's acc), then + the shared expert's row, then bf16. 4 columns a thread. */
__global__ void moe_combine_kernel(float *out, const float *y, const int32_t *sel, int64_t N, int K,
                                   int64_t D, int E)
{
    DSV4_PDL_WAIT();
    const int64_t r = blockIdx.y, c = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (c >= D) return;
    int ord[MOE_MAX_K], n = 0;
    for (int j = 0; j < K; j++) { /* insertion by expert id; equal ids keep slot order */
        const int e = sel[r * K + j];
        if (e < 0 || e >= E) continue;
        int i = n++;
        for (; i > 0 && sel[r * K + ord[i - 1]] > e; i--) ord[i] = ord[i - 1];
        ord[i] = j;
    }
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int i = 0; i < n; i++) {
        const float4 v = *(const float4 *)(y + (r * K + ord[i]) * D + c);
        acc.x = __fadd_rn(acc.x, v.x), acc.y = __fadd_rn(acc.y, v.y);
        acc.z = __fadd_rn(acc.z, v.z), acc.w = __fadd_rn(acc.w, v.w);
    }
    const float4 s = *(const float4 *)(y + (N * K + r) * D + c);
    float4 o;
    o.x = q_bf16(__fadd_rn(acc.x, s.x)), o.y = q_bf16(__fadd_rn(acc.y, s.y));
    o.z = q_bf16(__fadd_rn(acc.z, s.z)), o.w = q_bf16(__fadd_rn(acc.w, s.w));
    *(float4 *)(out + r * D + c) = o;
}

/* ---- dsv4_bk_moe --------------------------------------------------------------------------- */
/* Item size and grid of a stage with `rows` output rows per expert, at most `bound` experts and
 * `cap` resident CTAs: batches of rg * rpw rows, grouped rb to an item so that there are about
 * two items per CTA (fewer passes, each with one barrier and one epilogue, when many experts
 * are active; small items when few are). Returns the grid. */
static int plan_stage(moe_gemm_args *a, int64_t rows, int rpw, int64_t bound, int cap)
{
    const int64_t br = (int64_t)a->rg * rpw, batches = (rows + br - 1) / br;
    int64_t rb = bound * batches / (2 * (int64_t)cap);
    if (rb > (int64_t)MOE_MAX_RB) rb = MOE_MAX_RB;
    if (rb < 1) rb = 1;
    a->rb = (int)rb;
    a->tiles = (int)((batches + rb - 1) / rb);
    const int64_t items = bound * a->tiles;
    return (int)(items < cap ? items : cap);
}

static char *carve(char **p, size_t bytes)
{
    char *r = *p;
    *p += (bytes + 255) & ~(size_t)255;
    return r;
}

/* The tensor-core path's workspace regions (offsets from the 256-aligned base); returns the
 * bytes they take. moe.cuh moe_mma_args. */
typedef struct mma_ws {
    size_t x4, x8, sx, araw, aq, sa, y, ints, tickets, end;
} mma_ws;

static size_t mma_ws_plan(mma_ws *w, int64_t N, int K, int64_t D, int64_t I, int E, int slots)
{
    const size_t n = (size_t)N, nk = n * (size_t)K, p = nk + n;
    const size_t nbd = (size_t)((D + 127) / 128), nbi = (size_t)((I + 127) / 128);
    size_t o = 0;
#define MMA_REGION(field, bytes) (w->field = o, o += ((bytes) + 255) & ~(size_t)255)
    MMA_REGION(x4, n * (size_t)D * 2);
    MMA_REGION(x8, n * (size_t)D * 2);
    MMA_REGION(sx, n * nbd * 4);
    MMA_REGION(araw, p * (size_t)I * 2);
    MMA_REGION(aq, p * (size_t)I * 2);
    MMA_REGION(sa, p * nbi * 4);
    MMA_REGION(y, p * (size_t)D * 2);
    MMA_REGION(ints, (3 * (size_t)E + nk + 8) * 4);
    MMA_REGION(tickets, (size_t)moe_counter_ints(slots, I) * 4); /* then ready */
#undef MMA_REGION
    w->end = o;
    return o;
}

/* dsv4_bk_moe; with rt, routed first (dsv4_bk_moe_routed): on the tensor-core path in the prep
 * launch (moe_route.cu), on the SIMT path by the router kernel. */
static dsv4_status moe_enqueue(dsv4_backend *b, const moe_route *rt, float *out, const float *h,
                               const int32_t *sel, const float *wts, const dsv4_bk_experts *tp,
                               int64_t N, int K, int64_t D, float limit, void *ws)
{
    const cuda_experts *t = (const cuda_experts *)tp;
    if (D != t->D || K < 1 || K > MOE_MAX_K || N < 0 || N > 65535)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "cuda moe: N %lld, K %d, width %lld (table %lld)", (long long)N, K,
                         (long long)D, (long long)t->D);
    if (((uintptr_t)out | (uintptr_t)h) & 15)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "cuda moe: h and out must be 16-byte aligned");
    if (N == 0) return DSV4_OK;
    cudaStream_t st = dsv4_cuda_stream(b->cuda);
    const int E = t->E;
    const int64_t I = t->I, NK = N * K, P = NK + N;
    /* at most min(E, NK) routed experts + the shared one */
    const int64_t bound = (NK < E ? NK : E) + 1;

    const int path = path_setting();
    mma_ws mw;
    int ss = shared_slots(N);
    const int sst = (int)((N + ss - 1) / ss); /* its tokens a slot */
    ss = (int)((N + sst - 1) / sst);          /* none empty */
    if (path != DSV4_MOE_PATH_SIMT && t->mma_ok &&
        mma_ws_plan(&mw, N, K, D, I, E, (int)bound + ss - 1) + 256 <=
            dsv4_bk_moe_ws_bytes(N, K, D, I, E)) {
        char *base = (char *)(((uintptr_t)ws + 255) & ~(uintptr_t)255);
        moe_mma_args m;
        m.table = t->table;
        m.E = E;
        m.K = K;
        m.N = N;
        m.D = D;
        m.I = I;
        m.wts = wts;
        m.limit = limit;
        m.x4 = (uint16_t *)(base + mw.x4);
        m.x8 = (uint16_t *)(base + mw.x8);
        m.sx = (float *)(base + mw.sx);
        m.araw = (uint16_t *)(base + mw.araw);
        m.aq = (uint16_t *)(base + mw.aq);
        m.sa = (float *)(base + mw.sa);
        m.y = (uint16_t *)(base + mw.y);
        int32_t *ints = (int32_t *)(base + mw.ints);
        m.list.n_active = ints;
        m.list.active = ints + 8;
        m.list.off = m.list.active + E;
        m.list.cnt = m.list.off + E;
        m.list.pairs = m.list.cnt + E;
        m.tickets = (int32_t *)(base + mw.tickets);
        m.slots = (int)bound + ss - 1;
        m.ready = m.tickets + moe_ticket_ints(m.slots, I);
        m.rdy = force_rdy;
        m.rdy_shared = 0;
        m.sms = t->sms;
        m.ss = ss;
        m.sst = sst;
        last_path = DSV4_MOE_PATH_MMA;
        return moe_mma_run(st, &m, rt, out, h, sel);
    }
    last_path = DSV4_MOE_PATH_SIMT;
    if (rt) DSV4_TRY(router_launch(st, rt, N, E, K));

    /* regions: the CUDA layout of dsv4_bk_moe_ws_bytes */
    char *p = (char *)(((uintptr_t)ws + 255) & ~(uintptr_t)255);
    float *xq = (float *)carve(&p, (size_t)(N * D) * sizeof(float));
    float *act = (float *)carve(&p, (size_t)(P * I) * sizeof(float));
    float *y = (float *)carve(&p, (size_t)(P * D) * sizeof(float));
    int32_t *ints = (int32_t *)carve(&p, (size_t)(3 * E + NK + 8) * 4);
    moe_list L;
    L.n_active = ints;
    L.active = ints + 8;
    L.off = L.active + E;
    L.cnt = L.off + E;
    L.pairs = L.cnt + E;

    /* prep: the work list and xq */
    const int64_t qwarps = N * ((D + 127) / 128);
    const unsigned prep_grid = 1u + (unsigned)((qwarps + 7) / 8);
    moe_prep_kernel<<<prep_grid, 256, (size_t)3 * E * sizeof(int32_t), st>>>(L, sel, NK, E, xq, h,
                                                                             N, D);
    CUDA_LAUNCHED();

    /* stage 1 over the bound's experts */
    moe_gemm_args a;
    a.table = t->table;
    a.E = E;
    a.K = K;
    a.N = N;
    a.list = L;
    a.wts = wts;
    a.limit = limit;
    a.x = xq;
    a.ldx = D;
    a.out = act;
    a.ldo = I;
    a.kw = t->kw1;
    a.rg = t->rg1;
    DSV4_TRY(moe_gemm_launch(st, 1, &a, plan_stage(&a, I, MOE_RPW1, bound, t->occ1 * t->sms)));

    /* act_quant of every pair's activation row */
    const int64_t awarps = P * ((I + 127) / 128);
    moe_act_quant_kernel<<<(unsigned)((awarps + 7) / 8), 256, 0, st>>>(act, P, I);
    CUDA_LAUNCHED();

    /* stage 2 */
    a.x = act;
    a.ldx = I;
    a.out = y;
    a.ldo = D;
    a.kw = t->kw2;
    a.rg = t->rg2;
    DSV4_TRY(moe_gemm_launch(st, 0, &a, plan_stage(&a, D, MOE_RPW2, bound, t->occ2 * t->sms)));

    /* combine */
    dim3 cgrid((unsigned)((D / 4 + 255) / 256), (unsigned)N);
    moe_combine_kernel<<<cgrid, 256, 0, st>>>(out, y, sel, N, K, D, E);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_moe(dsv4_backend *b, float *out, const float *h,
                                        const int32_t *sel, const float *wts,
                                        const dsv4_bk_experts *tp, int64_t N, int K, int64_t D,
                                        float limit, void *ws)
{
    return moe_enqueue(b, NULL, out, h, sel, wts, tp, N, K, D, limit, ws);
}

extern "C" dsv4_status dsv4_cuda_bk_moe_routed(dsv4_backend *b, float *out, int32_t *sel,
                                               float *wts, const float *h, const float *logits,
                                               const float *bias, const int32_t *tid2eid,
                                               const dsv4_bk_rows *rows, const dsv4_bk_experts *tp,
                                               int E, int K, int64_t D, float route_scale,
                                               float limit, void *ws)
{
    const cuda_experts *t = (const cuda_experts *)tp;
    DSV4_TRY(router_check(tid2eid, rows, E, K));
    if (E != t->E)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "cuda moe_routed: %d experts (table %d)", E,
                         t->E);
    const moe_route rt = route_of(sel, wts, logits, bias, tid2eid, rows, route_scale, t->counter);
    return moe_enqueue(b, &rt, out, h, sel, wts, tp, rows->n, K, D, limit, ws);
}
