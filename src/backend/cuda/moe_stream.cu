/*
 * moe_stream.cu - dsv4_bk_moe at decode sizes (N <= 64 rows) as ONE persistent kernel that keeps
 * the expert weights streaming at the memory roofline (sm_90a), for MXFP4 and FP8 (ue8m0)
 * experts. Why: moe_mma.cu's stage kernels spend ~100 us on the ~106 MB of a Flash layer at
 * N = 1 (1.2 TB/s): each CTA lives a few microseconds, loads its 64 KB in two bursts with
 * dependent global reads (work list, expert table, activations) between them, and ends in a
 * barrier and a ticket, so the SMs hold little in flight on average; prep and combine add two
 * launches.
 *
 * Shape of the kernel: one CTA per SM = 1 producer warp + 8 consumer warps + 4 epilogue warps,
 * a ring of 4 slots in shared memory (each: up to 32 KB of weights + their MXFP4 scales + the
 * pass's activations).
 *   producer  claims tasks (one global atomic each, the next one issued a task ahead: every
 *             task is held by a running CTA from its claim on), and for each unit of a task
 *             waits for a free slot and loads the weight rows with cp.async.bulk (TMA,
 *             completing on the slot's full_w mbarrier); the unit's activation rows and scales
 *             follow with cp.async (full_b) as soon as the task's input is ready (a device
 *             counter), so weights never wait for inputs.
 *   consumers every warp takes every 8th 128-column chunk of each unit (the K split), runs the
 *             f16 mma fragments of moe_mma.cu on it (moe_frag.cuh, same numerics), releases the
 *             slot, and after a task's last unit writes its partial sums to a reduction buffer;
 *             the last of the 8 warps to arrive sums them in warp order and queues the sums.
 *   epilogue  warp e takes the tasks e, e + 4, ... of the CTA from the queue and runs the
 *             stage's epilogue (stores, fences, tickets, quantisation, combine). A consumer
 *             warp never waits on global memory, so one task's epilogue (a few round trips)
 *             does not stall the ring (with the epilogue on a consumer warp, Flash N = 1 took
 *             114 us; with these warps and the producer decoding a task ahead, 98 us).
 * Tasks, in claim order (each a function of sel alone, identical in every CTA):
 *   prep      act_quant(h) -> x (codes in L4 and L8) + scales, 64 blocks of 128 a task
 *   stage 1   (slot, 16 rows of w1/w3, <= 2 (MXFP4) or 4 (FP8) tokens): SwiGLU * weight -> a;
 *             the last task of each (slot, 128-row block) quantises the block for the slot's
 *             tokens (aq, sa) and counts it in qa_done[slot]
 *   stage 2   (slot, 16 rows of w2, tokens): y = bf16(w2 . aq); per (row, 16-row tile of out)
 *             a ticket: the last of the row's K + 1 contributions sums the tile in ascending
 *             (expert, slot) order + the shared expert, bf16 -> out (moe_mma's combine, folded)
 * A slot is the shared expert (0) or an active expert (1.., ascending ids); each CTA builds the
 * list from sel in shared memory (pairs in ascending id order, so all CTAs agree). A task waits
 * only on tasks with smaller indices (stage 1 on prep, stage 2 on its slot's stage 1), which
 * were claimed earlier by running CTAs and sit earlier in their rings: no deadlock, whatever
 * the residency. Spins give up after ~2 s (error word set, garbage out) instead of hanging.
 *
 * Status (H100, test_gpu_moe bench): correct (bounds, deterministic, memcheck clean) but not yet
 * faster than moe_mma.cu (Flash N = 1: 98 vs 97 us; N = 64: 2559 vs 1643 us; D 5120 I 512 N 1,
 * 24 MB: 87 vs 39 us), so bk_moe.cu takes it only when forced. The small case suggests (not yet
 * profiled) that the kernel is bound by its chain of dependent global round trips, not by bytes:
 * claim + decode before the first copy, prep (load h, store x, fence, count) -> poll -> inputs ->
 * stage 1 -> tail (fence, ticket) -> quantisation (load a, store aq, fence, count) -> poll ->
 * inputs -> stage 2 -> tail (fence, sel, ticket) -> combine (sel, y) -> exit count: ~20 round
 * trips, ~40 us if each takes ~2 us under a full weight stream. Next, measured first (ncu
 * warp-state sampling): shorten that chain (the first task static, prep inside every CTA at small
 * N, act_quant of a folded into stage 2's fragments: a 128-column chunk is one quantisation block,
 * wts and the per-row counts in shared memory), then the MXFP4 bank conflicts (B: every lane loads,
 * 4-way, where the 8 lanes with g / 2 == t suffice; scale bytes of rows g at a ku / 32-byte stride:
 * up to 8-way).
 *
 * Numerics: those of moe_mma.cu (exact products, f32 sums per fragment, one rounding per
 * scaled partial), sums in a fixed order (chunks of a warp in K order, quad groups
 * ((0 + 1) + (2 + 3)), then warps 0..7): deterministic, and within test_gpu_moe's bounds of the
 * CPU. Which CTA runs a task changes nothing in its arithmetic.
 */
#include "backend/cuda/check.cuh"
#include "backend/cuda/moe.cuh"
#include "backend/cuda/moe_frag.cuh"
#include "backend/cuda/moe_numerics.cuh"
#include "backend/cuda/pdl.cuh"

enum { NC = 8 };                       /* consumer warps (0 .. NC - 1) */
enum { NE = 4 };                       /* epilogue warps (NC .. NC + NE - 1) */
enum { THREADS = 32 * (NC + NE + 1) }; /* + the producer warp (the last one) */
enum { SLOTS = 4 };
enum { WBYTES = 32768, SBYTES = 2048, BBYTES = 16384, XBYTES = 512 }; /* per slot */
enum { XSC = 256 };                                                   /* FP8 scales in x[] */
enum { TPP4 = 2, TPP8 = 4 };                                          /* tokens per pass */
enum { RED_FLOATS = 1024 };
enum { NKM = MOE_STREAM_NKMAX };
enum { U_W = 0, U_PREP = 1, U_END = 2 };
#define SPIN_LIMIT 4000000000ll /* clock cycles (~2 s) */
/* bits of the error word: which wait gave up (1 is always set) */
enum { W_FULLW = 2, W_FULLB = 4, W_LIST = 8, W_IDLE = 16, W_RED = 32, W_QUEUE = 64, W_EPI = 128 };

/* What the producer put into a slot; read by the consumers after its full_w barrier. */
typedef struct ms_desc {
    int32_t kind;  /* U_* */
    int32_t task;  /* CTA-local task number (reduction buffer, parity) */
    int32_t stage; /* 1, 2 */
    int32_t ai;    /* slot: 0 shared, a > 0 active expert a - 1 */
    int32_t tile;  /* tile of rt output rows of the stage */
    int32_t rt;    /* rows of the task: 16, or 32 (stage 2, MXFP4: two m16 halves) */
    int32_t tok0;  /* first token of the pass (index in the slot's token list) */
    int32_t ntok;  /* tokens in the pass */
    int32_t ntoks; /* tokens of the slot */
    int32_t m;     /* matrix of the unit: 0 w1 / w2, 1 w3 */
    int32_t ku;    /* columns of the unit */
    int32_t fmt;   /* MOE_MXFP4, MOE_FP8 */
    int32_t last;  /* last unit of the task */
    int32_t ntg;   /* passes of the slot's tasks (token groups) */
    int32_t prep;  /* U_PREP: the prep task */
    float osc;     /* out_scale of the unit's matrix */
    int32_t p;     /* K part of the unit */
    int32_t pad[3];
} ms_desc;

struct __align__(128) ms_slot
{
    uint8_t w[WBYTES];      /* [rows][ku bytes (FP8) or ku / 2 (MXFP4)] weight rows */
    uint8_t s[SBYTES];      /* MXFP4: [rows][ku / 32] ue8m0 */
    uint16_t b[BBYTES / 2]; /* [tokens][ku] activation codes (the format's fragment order) */
    float x[XBYTES / 4];    /* [tokens][ku / 128] activation scales; bytes XSC..: FP8 scales */
};

typedef struct ms_smem {
    ms_slot slot[SLOTS];
    float red[2][RED_FLOATS]; /* partial sums of tasks of parity 0, 1 */
    int32_t tmp[MOE_STREAM_EMAX];
    int32_t cum1[NKM + 2], cum2[NKM + 2]; /* tasks of slots before s, stage 1 / 2 */
    int16_t active[NKM], off[NKM], cnt[NKM], pairs[NKM];
    int8_t fmt1[NKM + 1], fmt2[NKM + 1];
    int8_t rdy[NKM + 1]; /* producer: stage-2 input of slot s seen complete */
    ms_desc desc[SLOTS];
    /* the epilogue queue: entry e holds the summed task T = e (mod NE) for epilogue warp e */
    ms_desc qdesc[NE];
    float qtot[NE][8][32]; /* [e][m * 4 + i][lane]: the finishing warp's tot[m][i] */
    float qosc[NE][2];
    uint64_t full_w[SLOTS], full_b[SLOTS], empty[SLOTS];
    int32_t red_epoch[2], red_cnt[2], slot_cnt[SLOTS];
    int32_t qfull[NE], qfree[NE]; /* task in entry e; next task that may write it */
    int32_t na, ntask, list_ready, abort_flag, is_last;
    int32_t nlocal; /* tasks of this CTA, once the producer met the end (-1 before) */
} ms_smem;

/* ---- PTX ---------------------------------------------------------------------------------- */
static __device__ __forceinline__ uint32_t su32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void mbar_init(uint64_t *b, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(su32(b)), "r"(count) : "memory");
}

static __device__ __forceinline__ void mbar_arrive(uint64_t *b)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(su32(b)) : "memory");
}

static __device__ __forceinline__ void mbar_arrive_tx(uint64_t *b, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(su32(b)), "r"(bytes)
                 : "memory");
}

/* Whether the phase of parity `par` has completed; try_wait may suspend a while first. */
static __device__ __forceinline__ bool mbar_try(uint64_t *b, uint32_t par)
{
    uint32_t ok;
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 " selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(su32(b)), "r"(par)
                 : "memory");
    return ok != 0;
}

static __device__ __forceinline__ bool mbar_test(uint64_t *b, uint32_t par)
{
    uint32_t ok;
    asm volatile("{\n .reg .pred p;\n mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 " selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(su32(b)), "r"(par)
                 : "memory");
    return ok != 0;
}

/* Bulk copy global -> shared (TMA), completing `bytes` on mbarrier b. Both 16-byte aligned. */
static __device__ __forceinline__ void bulk_g2s(void *dst, const void *src, uint32_t bytes,
                                                uint64_t *b)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                 "%2, [%3];" ::"r"(su32(dst)),
                 "l"(src), "r"(bytes), "r"(su32(b))
                 : "memory");
}

static __device__ __forceinline__ void cp16(void *dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(su32(dst)), "l"(src) : "memory");
}

static __device__ __forceinline__ void cp4(void *dst, const void *src)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(su32(dst)), "l"(src) : "memory");
}

/* b completes (one of its pending arrivals) once this thread's earlier cp.async have landed. */
static __device__ __forceinline__ void cp_arrive(uint64_t *b)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(su32(b)) : "memory");
}

static __device__ __forceinline__ int ld_acquire(const int32_t *p)
{
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

static __device__ __forceinline__ int vload(const int32_t *p)
{
    return *(const volatile int32_t *)p;
}

/* ---- shared helpers ------------------------------------------------------------------------ */
/* Ends a wait that has run too long: sets the CTA's abort flag and the error word. */
static __device__ bool spin_over(const moe_stream_args &a, ms_smem *sm, long long t0, int why)
{
    if (vload(&sm->abort_flag)) return true;
    if (clock64() - t0 < SPIN_LIMIT) return false;
    *(volatile int32_t *)&sm->abort_flag = 1;
    atomicOr(a.ctl.words + 3, 1 | why);
    return true;
}

static __device__ bool mbar_wait(const moe_stream_args &a, ms_smem *sm, uint64_t *b, uint32_t par,
                                 int why)
{
    const long long t0 = clock64();
    while (!mbar_try(b, par))
        if (spin_over(a, sm, t0, why)) return false;
    return true;
}

static __device__ __forceinline__ int tpp_of(int fmt)
{
    return fmt == MOE_MXFP4 ? TPP4 : TPP8;
}

/* Slot ai's tokens, and the pair id of its token tok. */
static __device__ __forceinline__ int slot_tokens(const moe_stream_args &a, const ms_smem *sm,
                                                  int ai)
{
    return ai == 0 ? a.N : sm->cnt[ai - 1];
}

static __device__ __forceinline__ int pair_of(const moe_stream_args &a, const ms_smem *sm, int ai,
                                              int tok)
{
    return ai == 0 ? a.N * a.K + tok : (int)sm->pairs[sm->off[ai - 1] + tok];
}

/* ---- the work list (consumer warp 0, at the start) ---------------------------------------- */
/* sel [N, K] -> active experts (ascending), their pairs (ascending ids), formats, and the task
 * counts before each slot; then list_ready. */
static __device__ void build_list(const moe_stream_args &a, ms_smem *sm, int lane)
{
    const int E = a.E, NK = a.N * a.K;
    int32_t *cntE = sm->tmp;
    for (int e = lane; e < E; e += 32) cntE[e] = 0;
    __syncwarp();
    for (int p = lane; p < NK; p += 32) {
        const int e = __ldg(a.sel + p);
        if (e >= 0 && e < E) atomicAdd(&cntE[e], 1);
    }
    __syncwarp();
    /* scan over the experts: lane takes a contiguous range */
    const int per = (E + 31) / 32, lo = lane * per, hi = min(E, lo + per);
    int c = 0, na = 0;
    for (int e = lo; e < hi; e++) c += cntE[e], na += cntE[e] > 0;
    int ci = c, ni = na;
    for (int d = 1; d < 32; d <<= 1) {
        const int tc = __shfl_up_sync(0xffffffffu, ci, d), tn = __shfl_up_sync(0xffffffffu, ni, d);
        if (lane >= d) ci += tc, ni += tn;
    }
    int cpos = ci - c, apos = ni - na;
    __syncwarp();
    for (int e = lo; e < hi; e++) {
        const int n = cntE[e];
        if (n > 0) {
            sm->active[apos] = (int16_t)e;
            sm->off[apos] = (int16_t)cpos;
            sm->cnt[apos] = (int16_t)n;
            apos++;
        }
        cntE[e] = cpos; /* now the next free position of e's pairs */
        cpos += n;
    }
    const int total_na = __shfl_sync(0xffffffffu, ni, 31);
    __syncwarp();
    /* pairs of each expert in ascending id order: 32 pairs at a time, ranks by match */
    for (int base = 0; base < NK; base += 32) {
        const int p = base + lane;
        int e = p < NK ? __ldg(a.sel + p) : -1;
        const bool ok = e >= 0 && e < E;
        const int key = ok ? e : -1 - lane;
        const unsigned peers = __match_any_sync(0xffffffffu, key);
        const int rank = __popc(peers & ((1u << lane) - 1u));
        if (ok) sm->pairs[cntE[e] + rank] = (int16_t)p;
        __syncwarp();
        if (ok && rank == 0) cntE[e] += __popc(peers);
        __syncwarp();
    }
    /* formats and task counts per slot */
    for (int s = lane; s <= total_na; s += 32) {
        int f1 = a.fmt1s, f2 = a.fmt2s;
        if (s > 0) {
            const moe_expert *x = a.table + sm->active[s - 1];
            f1 = __ldg(&x->w1.fmt);
            f2 = __ldg(&x->w2.fmt);
        }
        sm->fmt1[s] = (int8_t)f1;
        sm->fmt2[s] = (int8_t)f2;
    }
    __syncwarp();
    const int T1 = a.I >> 4;
    int carry1 = 0, carry2 = 0;
    for (int base = 0; base <= total_na; base += 32) {
        const int s = base + lane;
        int v1 = 0, v2 = 0;
        if (s <= total_na) {
            const int nt = s == 0 ? a.N : sm->cnt[s - 1];
            const int t1 = tpp_of(sm->fmt1[s]), t2 = tpp_of(sm->fmt2[s]);
            v1 = T1 * ((nt + t1 - 1) / t1);
            v2 = a.D / a.rt2[sm->fmt2[s] == MOE_MXFP4 ? 0 : 1] * ((nt + t2 - 1) / t2);
        }
        int i1 = v1, i2 = v2;
        for (int d = 1; d < 32; d <<= 1) {
            const int u1 = __shfl_up_sync(0xffffffffu, i1, d),
                      u2 = __shfl_up_sync(0xffffffffu, i2, d);
            if (lane >= d) i1 += u1, i2 += u2;
        }
        if (s <= total_na) {
            sm->cum1[s] = carry1 + i1 - v1;
            sm->cum2[s] = carry2 + i2 - v2;
        }
        carry1 += __shfl_sync(0xffffffffu, i1, 31);
        carry2 += __shfl_sync(0xffffffffu, i2, 31);
    }
    if (lane == 0) {
        sm->cum1[total_na + 1] = carry1;
        sm->cum2[total_na + 1] = carry2;
        sm->na = total_na;
        sm->ntask = a.prep + carry1 + carry2;
    }
    __syncwarp();
    __threadfence_block();
    if (lane == 0) *(volatile int32_t *)&sm->list_ready = 1;
}

/* ---- the producer ------------------------------------------------------------------------- */
/* A decoded task; scalar fields only, so that it lives in registers and the loads of the matrix
 * fields stay in flight until the task's first unit (the producer decodes a task ahead). */
typedef struct ms_task {
    int kind, stage, ai, e, tile, rt, tok0, ntok, ntoks, ntg, fmt, parts, ku, units, prep;
    const uint8_t *data0, *data1, *scale0, *scale1; /* stage 1: w1, w3; stage 2: w2 (twice) */
    int64_t scols0, scols1;
    float osc0, osc1;
} ms_task;

/* Largest s in [0, n] with cum[s] <= k. */
static __device__ int slot_search(const int32_t *cum, int n, int k)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (cum[mid] <= k)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Task k (uniform over the warp). Waits for the list only when k needs it. */
static __device__ __forceinline__ bool decode_task(const moe_stream_args &a, ms_smem *sm, int k,
                                                   ms_task &t)
{
    t.kind = U_W;
    t.prep = 0;
    t.data0 = t.data1 = t.scale0 = t.scale1 = NULL;
    t.scols0 = t.scols1 = 0;
    t.osc0 = t.osc1 = 1.0f;
    if (k < a.prep) {
        t.kind = U_PREP;
        t.prep = k;
        t.units = 1;
        return true;
    }
    k -= a.prep;
    const int T1 = a.I >> 4;
    const int ntg0 = (a.N + tpp_of(a.fmt1s) - 1) / tpp_of(a.fmt1s);
    int ai, local;
    if (k < T1 * ntg0) {
        t.stage = 1, ai = 0, local = k;
    } else {
        const long long t0 = clock64();
        while (!vload(&sm->list_ready))
            if (spin_over(a, sm, t0, W_LIST)) return false;
        __threadfence_block();
        const int na = sm->na, n1 = sm->cum1[na + 1], n2 = sm->cum2[na + 1];
        if (k >= n1 + n2) {
            t.kind = U_END;
            t.units = 1;
            return true;
        }
        if (k < n1) {
            t.stage = 1;
            ai = slot_search(sm->cum1, na, k);
            local = k - sm->cum1[ai];
        } else {
            t.stage = 2;
            ai = slot_search(sm->cum2, na, k - n1);
            local = k - n1 - sm->cum2[ai];
        }
    }
    t.ai = ai;
    t.e = ai == 0 ? a.E : sm->active[ai - 1];
    t.fmt = t.stage == 1 ? (ai == 0 ? a.fmt1s : sm->fmt1[ai]) : (ai == 0 ? a.fmt2s : sm->fmt2[ai]);
    t.ntoks = ai == 0 ? a.N : sm->cnt[ai - 1];
    const int tpp = tpp_of(t.fmt);
    t.ntg = (t.ntoks + tpp - 1) / tpp;
    t.tile = local / t.ntg;
    t.rt = t.stage == 1 ? 16 : a.rt2[t.fmt == MOE_MXFP4 ? 0 : 1];
    const int tg = local - t.tile * t.ntg;
    t.tok0 = tg * tpp;
    t.ntok = min(tpp, t.ntoks - t.tok0);
    const int f = t.fmt == MOE_MXFP4 ? 0 : 1;
    t.parts = a.parts[t.stage - 1][f];
    t.ku = a.ku[t.stage - 1][f];
    t.units = (t.stage == 1 ? 2 : 1) * t.parts;
    /* the matrices' fields, loaded once a task (their first use is the task's first unit) */
    const moe_mat *w0 = t.stage == 1 ? &a.table[t.e].w1 : &a.table[t.e].w2;
    const moe_mat *w1 = t.stage == 1 ? &a.table[t.e].w3 : w0;
    t.data0 = (const uint8_t *)__ldg((const unsigned long long *)&w0->data);
    t.scale0 = (const uint8_t *)__ldg((const unsigned long long *)&w0->scale);
    t.scols0 = __ldg(&w0->scale_cols);
    t.osc0 = __ldg(&w0->out_scale);
    t.data1 = (const uint8_t *)__ldg((const unsigned long long *)&w1->data);
    t.scale1 = (const uint8_t *)__ldg((const unsigned long long *)&w1->scale);
    t.scols1 = __ldg(&w1->scale_cols);
    t.osc1 = __ldg(&w1->out_scale);
    return true;
}

/* Unit ui of task t into slot s: the descriptor, then the weight rows (and MXFP4 scales) by
 * bulk copies on full_w; FP8 block scales by cp.async (they complete with full_b). */
static __device__ __forceinline__ void issue_weights(const moe_stream_args &a, ms_smem *sm,
                                                     const ms_task &t, int local, int ui, int s,
                                                     int lane)
{
    const int m = ui / t.parts, p = ui - m * t.parts;
    const uint8_t *data = m ? t.data1 : t.data0, *scale = m ? t.scale1 : t.scale0;
    const int64_t scols = m ? t.scols1 : t.scols0;
    const float osc = m ? t.osc1 : t.osc0;
    const int C = t.stage == 1 ? a.D : a.I, fp4 = t.fmt == MOE_MXFP4;
    const int64_t rowb = fp4 ? C / 2 : C, partb = fp4 ? t.ku / 2 : t.ku;
    const int64_t r0 = (int64_t)t.tile * t.rt;
    const uint32_t wbytes = (uint32_t)(t.rt * partb);
    const uint32_t sbytes = fp4 ? (uint32_t)t.rt * (uint32_t)(t.ku / 32) : 0u;
    ms_slot *sl = &sm->slot[s];
    if (lane == 0) {
        ms_desc *d = &sm->desc[s];
        d->kind = U_W;
        d->task = local;
        d->stage = t.stage;
        d->ai = t.ai;
        d->tile = t.tile;
        d->rt = t.rt;
        d->tok0 = t.tok0;
        d->ntok = t.ntok;
        d->ntoks = t.ntoks;
        d->m = m;
        d->ku = t.ku;
        d->fmt = t.fmt;
        d->last = ui == t.units - 1;
        d->ntg = t.ntg;
        d->prep = 0;
        d->osc = osc;
        d->p = p;
        mbar_arrive_tx(&sm->full_w[s], wbytes + sbytes);
    }
    __syncwarp();
    if (partb == rowb) {
        if (lane == 0) bulk_g2s(sl->w, data + r0 * rowb, wbytes, &sm->full_w[s]);
    } else if (lane < 16) {
        bulk_g2s(sl->w + lane * partb, data + (r0 + lane) * rowb + p * partb, (uint32_t)partb,
                 &sm->full_w[s]);
    }
    if (fp4) {
        const int64_t sp = t.ku / 32;
        if (sp == scols && p == 0) {
            if (lane == 16) bulk_g2s(sl->s, scale + r0 * scols, sbytes, &sm->full_w[s]);
        } else if (lane >= 16) {
            const int r = lane - 16;
            bulk_g2s(sl->s + r * sp, scale + (r0 + r) * scols + p * sp, (uint32_t)sp,
                     &sm->full_w[s]);
        }
    } else {
        const int nb = t.ku / 128; /* block scales of this unit: a multiple of 4 bytes */
        const uint8_t *src = scale + (r0 >> 7) * scols + (int64_t)p * nb;
        for (int i = lane; i < nb / 4; i += 32) cp4((uint8_t *)sl->x + XSC + 4 * i, src + 4 * i);
    }
}

/* The activations of the unit in slot s (its dependency met) and their scales, by cp.async;
 * every lane then arrives on full_b (also for PREP / END units: nothing to copy). */
static __device__ __forceinline__ void issue_inputs(const moe_stream_args &a, ms_smem *sm, int s,
                                                    int lane)
{
    const ms_desc d = sm->desc[s];
    ms_slot *sl = &sm->slot[s];
    if (d.kind == U_W) {
        const int ku = d.ku, nb = ku / 128;
        for (int j = 0; j < d.ntok; j++) {
            const int pair = pair_of(a, sm, d.ai, d.tok0 + j);
            const uint16_t *src;
            const float *ss;
            if (d.stage == 1) {
                const int r = d.ai == 0 ? d.tok0 + j : pair / a.K;
                src = (d.fmt == MOE_MXFP4 ? a.x4 : a.x8) + (int64_t)r * a.D;
                ss = a.sx + (int64_t)r * (a.D >> 7);
            } else {
                src = a.aq + (int64_t)pair * a.I;
                ss = a.sa + (int64_t)pair * (a.I >> 7);
            }
            src += (int64_t)d.p * ku;
            ss += (int64_t)d.p * nb;
            for (int i = lane; i < ku / 8; i += 32) cp16(sl->b + j * ku + 8 * i, src + 8 * i);
            for (int i = lane; i < nb / 4; i += 32) cp16(sl->x + j * nb + 4 * i, ss + 4 * i);
        }
    }
    cp_arrive(&sm->full_b[s]);
}

/* The issue loop (whole warp, uniform: decisions are lane 0's). Weights run ahead of the
 * inputs by up to the ring: unit uw's weights go out once its slot is free, unit ub's inputs
 * once its task's input is complete (x_done for stage 1, qa_done[slot] for stage 2: an acquire
 * load, once per slot that turns out complete, remembered in rdy). */
static __device__ void producer(const moe_stream_args &a, ms_smem *sm, int lane)
{
    const int nbI = a.I >> 7;
    int uw = 0, ub = 0;    /* units whose weights / inputs are issued */
    int ui = 0, local = 0; /* next unit of the current task; CTA-local task count */
    /* lane 0: two claims in flight (c1 the older), so that the task decoded ahead is known
     * without waiting on an atomic */
    int c1 = 0, c2 = 0;
    if (lane == 0) {
        c1 = atomicAdd(a.ctl.words + 0, 1);
        c2 = atomicAdd(a.ctl.words + 0, 1);
    }
    bool have = false, have_n = false, issuing = true, x_ready = false;
    for (int i = lane; i <= NKM; i += 32) sm->rdy[i] = 0;
    __syncwarp();
    ms_task t, tn; /* the current task, the next one (decoded ahead when have_n) */
    t.units = 0;
    long long idle = clock64();
    while (issuing || ub < uw) {
        bool did = false;
        if (issuing) { /* weights of unit uw, once its slot is free */
            const int s = uw % SLOTS;
            const int free =
                uw < SLOTS ||
                (lane == 0 && mbar_test(&sm->empty[s], (uint32_t)((uw / SLOTS) + 1) & 1u));
            if (__shfl_sync(0xffffffffu, free, 0)) {
                if (!have || ui == t.units) {
                    if (!have_n) { /* the first task */
                        const int k = __shfl_sync(0xffffffffu, c1, 0);
                        if (lane == 0) c1 = c2, c2 = atomicAdd(a.ctl.words + 0, 1);
                        if (!decode_task(a, sm, k, tn)) break;
                    }
                    t = tn;
                    have = true;
                    have_n = false;
                    ui = 0;
                    if (t.kind == U_W) local++;
                }
                if (t.kind == U_W) {
                    issue_weights(a, sm, t, local - 1, ui, s, lane);
                } else {
                    if (lane == 0) {
                        if (t.kind == U_END) {
                            *(volatile int32_t *)&sm->nlocal = local;
                            __threadfence_block();
                        }
                        ms_desc *d = &sm->desc[s];
                        d->kind = t.kind;
                        d->prep = t.prep;
                        d->last = 1;
                        d->stage = 0;
                        mbar_arrive(&sm->full_w[s]);
                    }
                    if (t.kind == U_END) issuing = false;
                }
                __syncwarp();
                ui++;
                uw++;
                did = true;
                if (ui == t.units && t.kind != U_END) {
                    /* the task's last unit is out: decode the next task now, so that its table
                     * loads are in flight while the ring drains to the next free slot */
                    const int k = __shfl_sync(0xffffffffu, c1, 0);
                    if (lane == 0) c1 = c2, c2 = atomicAdd(a.ctl.words + 0, 1);
                    if (!decode_task(a, sm, k, tn)) break;
                    have_n = true;
                }
            }
        }
        if (ub < uw) { /* inputs of unit ub, once its task's input is complete */
            const int s = ub % SLOTS;
            const int kind = __shfl_sync(0xffffffffu, sm->desc[s].kind, 0);
            const int stage = __shfl_sync(0xffffffffu, sm->desc[s].stage, 0);
            const int ai = __shfl_sync(0xffffffffu, sm->desc[s].ai, 0);
            bool ok = true;
            if (kind == U_W && (stage == 1 ? !x_ready : !sm->rdy[ai])) {
                int v = 0;
                if (lane == 0) v = ld_acquire(stage == 1 ? a.ctl.words + 1 : a.ctl.qa_done + ai);
                v = __shfl_sync(0xffffffffu, v, 0);
                ok = v >= (stage == 1 ? a.prep : nbI);
                if (ok && stage == 1) x_ready = true;
                if (ok && stage == 2 && lane == 0) sm->rdy[ai] = 1;
                __syncwarp();
            }
            if (ok) {
                issue_inputs(a, sm, s, lane);
                ub++;
                did = true;
            }
        }
        if (did) {
            idle = clock64();
        } else {
            __nanosleep(64);
            if (__shfl_sync(0xffffffffu, (int)spin_over(a, sm, idle, W_IDLE), 0)) break;
        }
    }
}

/* ---- the consumers ------------------------------------------------------------------------ */
/* acc (the lane's C fragment: moe_mma.cu run_task's layout) += the unit in sl over this warp's
 * chunks c = warp, warp + 8, ... (F: 0 MXFP4, 1 FP8). ntok: tokens of the pass. */
template <int F>
static __device__ __forceinline__ void unit_mma(float (&acc)[4], const ms_slot *sl, int roff,
                                                int ku, int ntok, int warp, int lane)
{
    const int g = lane >> 2, t = lane & 3, nch = ku >> 7;
    if constexpr (F == 0) {
        /* lane (g, t): rows g, g + 8, scale group t of each chunk; B column 2 grp + token */
        const int rb = ku >> 1, sb = ku >> 5, bt = g & 1;
        const bool bon = (g >> 1) == t && bt < ntok;
        const bool two = ntok > 1;
        const uint8_t *wa = sl->w + (roff + g) * rb + 16 * t, *wb = wa + 8 * rb;
        const uint8_t *sa = sl->s + (roff + g) * sb + t, *sbp = sa + 8 * sb;
        const uint16_t *bp = sl->b + bt * ku + 32 * t;
        const float *x0 = sl->x, *x1 = sl->x + nch;
#pragma unroll 2
        for (int c = warp; c < nch; c += NC) {
            const uint4 qa = *(const uint4 *)(wa + 64 * c);
            const uint4 qb = *(const uint4 *)(wb + 64 * c);
            const float w0 = e8m0f(sa[4 * c]), w1 = e8m0f(sbp[4 * c]);
            /* bp is inside the slot on every lane: load, then mask (no array: registers) */
            const uint4 *bq = (const uint4 *)(bp + 128 * c);
            const uint4 z = make_uint4(0u, 0u, 0u, 0u);
            const uint4 b0 = bon ? bq[0] : z, b1 = bon ? bq[1] : z, b2 = bon ? bq[2] : z,
                        b3 = bon ? bq[3] : z;
            const float xs0 = x0[c], xs1 = two ? x1[c] : 0.0f;
            float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                uint32_t pa[4], pb[4];
                fp4_pairs(word4(qa, k), pa);
                fp4_pairs(word4(qb, k), pb);
                const uint4 bk = k == 0 ? b0 : k == 1 ? b1 : k == 2 ? b2 : b3;
                mma_f16(f, pa[0], pb[0], pa[1], pb[1], bk.x, bk.y);
                mma_f16(f, pa[2], pb[2], pa[3], pb[3], bk.z, bk.w);
            }
            acc[0] = fmaf(__fmul_rn(__fmul_rn(f[0], 16384.0f), w0), xs0, acc[0]);
            acc[1] = fmaf(__fmul_rn(__fmul_rn(f[1], 16384.0f), w0), xs1, acc[1]);
            acc[2] = fmaf(__fmul_rn(__fmul_rn(f[2], 16384.0f), w1), xs0, acc[2]);
            acc[3] = fmaf(__fmul_rn(__fmul_rn(f[3], 16384.0f), w1), xs1, acc[3]);
        }
    } else {
        /* lane (g, t): rows g, g + 8, columns 32 t.. of each chunk; B column = token g */
        const int rb = ku, ct = 2 * t;
        const bool bon = g < ntok, on0 = ct < ntok, on1 = ct + 1 < ntok;
        const uint8_t *wa = sl->w + (roff + g) * rb + 32 * t, *wb = wa + 8 * rb;
        const uint8_t *scb = (const uint8_t *)sl->x + XSC;
        const uint16_t *bp = sl->b + (bon ? g : 0) * ku + 32 * t;
        const float *x0 = sl->x + (on0 ? ct : 0) * nch, *x1 = sl->x + (on1 ? ct + 1 : 0) * nch;
#pragma unroll 2
        for (int c = warp; c < nch; c += NC) {
            const uint4 qa0 = *(const uint4 *)(wa + 128 * c),
                        qa1 = *(const uint4 *)(wa + 128 * c + 16);
            const uint4 qb0 = *(const uint4 *)(wb + 128 * c),
                        qb1 = *(const uint4 *)(wb + 128 * c + 16);
            const float ws = e8m0f(scb[c]);
            /* bp is inside the slot on every lane: load, then mask (no array: registers) */
            const uint4 *bq = (const uint4 *)(bp + 128 * c);
            const uint4 z = make_uint4(0u, 0u, 0u, 0u);
            const uint4 b0 = bon ? bq[0] : z, b1 = bon ? bq[1] : z, b2 = bon ? bq[2] : z,
                        b3 = bon ? bq[3] : z;
            const float xs0 = on0 ? x0[c] : 0.0f, xs1 = on1 ? x1[c] : 0.0f;
            float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int s = 0; s < 8; s++) {
                uint32_t pa[2], pb[2];
                fp8_pairs(word4(s < 4 ? qa0 : qa1, s & 3), pa);
                fp8_pairs(word4(s < 4 ? qb0 : qb1, s & 3), pb);
                const uint4 bk = s < 2 ? b0 : s < 4 ? b1 : s < 6 ? b2 : b3;
                mma_f16(f, pa[0], pb[0], pa[1], pb[1], (s & 1) ? bk.z : bk.x,
                        (s & 1) ? bk.w : bk.y);
            }
            acc[0] = fmaf(__fmul_rn(__fmul_rn(f[0], 256.0f), ws), xs0, acc[0]);
            acc[1] = fmaf(__fmul_rn(__fmul_rn(f[1], 256.0f), ws), xs1, acc[1]);
            acc[2] = fmaf(__fmul_rn(__fmul_rn(f[2], 256.0f), ws), xs0, acc[2]);
            acc[3] = fmaf(__fmul_rn(__fmul_rn(f[3], 256.0f), ws), xs1, acc[3]);
        }
    }
}

/* Prep task k: x = act_quant(h) codes (L4 and L8) + scales for 128-column blocks
 * [k P, (k + 1) P) of the N rows, one warp per block. */
static __device__ void run_prep(const moe_stream_args &a, int k, int warp, int lane)
{
    const int nbD = a.D >> 7, total = a.N * nbD;
    const int b0 = k * MOE_STREAM_PREP, b1 = min(total, b0 + MOE_STREAM_PREP);
    for (int b = b0 + warp; b < b1; b += NC) {
        const int r = b / nbD, blk = b - r * nbD;
        const int64_t o = (int64_t)r * a.D + (int64_t)blk * 128;
        const float4 f = *(const float4 *)(a.h + o + 4 * lane);
        const float v[4] = {q_bf16(f.x), q_bf16(f.y), q_bf16(f.z), q_bf16(f.w)};
        const float s = quant_store(v, true, a.x4 + o, a.x8 + o, lane);
        if (lane == 0) a.sx[(int64_t)r * nbD + blk] = s;
    }
}

/* act_quant of 128-row block blk of a for every token of slot ai (moe_mma.cu stage1_tail):
 * araw -> aq (the layout of the slot's w2) and sa. One warp. */
static __device__ void quant_block(const moe_stream_args &a, const ms_smem *sm, int ai, int blk,
                                   int lane)
{
    const int I = a.I, nb = I >> 7, ntoks = slot_tokens(a, sm, ai);
    const bool l4 = (ai == 0 ? a.fmt2s : (int)sm->fmt2[ai]) == MOE_MXFP4;
    const int64_t c0 = (int64_t)blk * 128;
    enum { TB = 8 }; /* tokens whose loads are in flight together */
    for (int t0 = 0; t0 < ntoks; t0 += TB) {
        int pair[TB];
        uint2 u[TB];
#pragma unroll
        for (int j = 0; j < TB; j++) {
            pair[j] = t0 + j < ntoks ? pair_of(a, sm, ai, t0 + j) : 0;
            u[j] = make_uint2(0, 0);
            if (t0 + j < ntoks)
                u[j] = __ldcg((const uint2 *)(a.araw + (int64_t)pair[j] * I + c0 + 4 * lane));
        }
#pragma unroll
        for (int j = 0; j < TB; j++) {
            if (t0 + j >= ntoks) break; /* uniform */
            const float v[4] = {
                __uint_as_float(u[j].x << 16), __uint_as_float(u[j].x & 0xffff0000u),
                __uint_as_float(u[j].y << 16), __uint_as_float(u[j].y & 0xffff0000u)};
            uint16_t *d = a.aq + (int64_t)pair[j] * I + c0;
            const float s = quant_store(v, true, l4 ? d : NULL, l4 ? NULL : d, lane);
            if (lane == 0) a.sa[(int64_t)pair[j] * nb + blk] = s;
        }
    }
}

/* out [r, 16 tile ..) = bf16(routed y of row r in ascending (expert, slot) order, from 0, in
 * f32, + the shared expert's y): moe_mma_combine_kernel on one 16-column tile. Lanes 0..15. */
static __device__ void combine_tile(const moe_stream_args &a, int r, int tile, int lane)
{
    if (lane >= 16) return;
    const int K = a.K, E = a.E;
    const int64_t D = a.D, col = (int64_t)tile * 16 + lane;
    /* every load first (sel, then the K + 1 rows of y), then the sums in order */
    int sel[MOE_MAX_K];
#pragma unroll
    for (int j = 0; j < MOE_MAX_K; j++) sel[j] = j < K ? __ldg(a.sel + (int64_t)r * K + j) : -1;
    uint32_t yv[MOE_MAX_K];
#pragma unroll
    for (int j = 0; j < MOE_MAX_K; j++)
        yv[j] = sel[j] >= 0 && sel[j] < E ? __ldcg(a.y + ((int64_t)r * K + j) * D + col) : 0u;
    const uint32_t s = __ldcg(a.y + ((int64_t)a.N * K + r) * D + col);
    int ord[MOE_MAX_K], n = 0;
    for (int j = 0; j < K; j++) { /* insertion by expert id; equal ids keep slot order */
        const int e = sel[j];
        if (e < 0 || e >= E) continue;
        int i = n++;
        for (; i > 0 && sel[ord[i - 1]] > e; i--) ord[i] = ord[i - 1];
        ord[i] = j;
    }
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc = __fadd_rn(acc, __uint_as_float(yv[ord[i]] << 16));
    a.out[(int64_t)r * D + col] = q_bf16(__fadd_rn(acc, __uint_as_float(s << 16)));
}

static __device__ __forceinline__ float pick4(const float (&v)[4], int i)
{
    return i == 0 ? v[0] : i == 1 ? v[1] : i == 2 ? v[2] : v[3];
}

static __device__ void task_tail(const moe_stream_args &a, ms_smem *sm, const ms_desc &d,
                                 const float (&tot)[2][4], const float (&osc)[2], int lane);

/* After a task's last unit: this warp's partial sums into the task's reduction buffer; the last
 * of the NC warps sums them in warp order, frees the buffer and queues the sums for epilogue
 * warp task % NE (shared memory only: no consumer warp waits on global memory). */
static __device__ void finish_task(const moe_stream_args &a, ms_smem *sm, const ms_desc &d,
                                   float (&acc)[2][4], const float (&osc)[2], int warp, int lane)
{
    /* nm accumulator sets: stage 1 w1, w3; stage 2 w2 (rt 16) or its two row halves (rt 32) */
    const int g = lane >> 2, t = lane & 3, buf = d.task & 1;
    const int nm = d.stage == 1 || d.rt == 32 ? 2 : 1;
    const bool fp4 = d.fmt == MOE_MXFP4;
    float *red = sm->red[buf];
    if (fp4) /* the quad's four groups: ((0 + 1) + (2 + 3)) on every lane */
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                acc[m][i] = __fadd_rn(acc[m][i], __shfl_xor_sync(0xffffffffu, acc[m][i], 1));
                acc[m][i] = __fadd_rn(acc[m][i], __shfl_xor_sync(0xffffffffu, acc[m][i], 2));
            }
    {
        const long long t0 = clock64();
        while (vload(&sm->red_epoch[buf]) != d.task)
            if (spin_over(a, sm, t0, W_RED)) return;
    }
    __threadfence_block();
    for (int m = 0; m < nm; m++) {
        if (fp4) {
            red[(warp * 2 + m) * 32 + lane] = pick4(acc[m], t);
        } else if (t < 2) {
#pragma unroll
            for (int i = 0; i < 4; i++) red[((warp * 2 + m) * 4 + i) * 16 + 2 * g + t] = acc[m][i];
        }
    }
    __threadfence_block();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(&sm->red_cnt[buf], 1) == NC - 1;
    if (!__shfl_sync(0xffffffffu, last, 0)) return;
    __threadfence_block();
    float tot[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    for (int m = 0; m < nm; m++) {
        if (fp4) {
            float v = red[(0 * 2 + m) * 32 + lane];
            for (int w = 1; w < NC; w++) v = __fadd_rn(v, red[(w * 2 + m) * 32 + lane]);
            tot[m][0] = v;
        } else if (t < 2) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float v = red[((0 * 2 + m) * 4 + i) * 16 + 2 * g + t];
                for (int w = 1; w < NC; w++)
                    v = __fadd_rn(v, red[((w * 2 + m) * 4 + i) * 16 + 2 * g + t]);
                tot[m][i] = v;
            }
        }
    }
    __syncwarp();
    if (lane == 0) {
        sm->red_cnt[buf] = 0;
        __threadfence_block();
        *(volatile int32_t *)&sm->red_epoch[buf] = d.task + 2;
    }
    const int e = d.task % NE;
    {
        const long long t0 = clock64();
        while (vload(&sm->qfree[e]) != d.task)
            if (spin_over(a, sm, t0, W_QUEUE)) return;
    }
    __threadfence_block();
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int i = 0; i < 4; i++) sm->qtot[e][m * 4 + i][lane] = tot[m][i];
    if (lane == 0) {
        sm->qdesc[e] = d;
        sm->qosc[e][0] = osc[0];
        sm->qosc[e][1] = osc[1];
    }
    __threadfence_block();
    __syncwarp();
    if (lane == 0) *(volatile int32_t *)&sm->qfull[e] = d.task;
}

/* Epilogue warp e: the tasks T = e, e + NE, ... of this CTA, as the consumers queue them, until
 * the producer has counted them all. */
static __device__ void epilogue_warp(const moe_stream_args &a, ms_smem *sm, int e, int lane)
{
    for (int T = e;; T += NE) {
        const long long t0 = clock64();
        while (vload(&sm->qfull[e]) != T) {
            const int nl = vload(&sm->nlocal);
            if (nl >= 0 && T >= nl) return;
            if (spin_over(a, sm, t0, W_EPI)) return;
            __nanosleep(128);
        }
        __threadfence_block();
        const ms_desc d = sm->qdesc[e];
        float tot[2][4], osc[2] = {sm->qosc[e][0], sm->qosc[e][1]};
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int i = 0; i < 4; i++) tot[m][i] = sm->qtot[e][m * 4 + i][lane];
        __syncwarp();
        if (lane == 0) {
            __threadfence_block();
            *(volatile int32_t *)&sm->qfree[e] = T + NE;
        }
        task_tail(a, sm, d, tot, osc, lane);
    }
}

/* The stage's epilogue of a summed task (one warp): outputs, then stage 1's ticket (and the
 * quantisation of a finished 128-row block), or stage 2's tickets (and the combines). */
static __device__ void task_tail(const moe_stream_args &a, ms_smem *sm, const ms_desc &d,
                                 const float (&tot)[2][4], const float (&osc)[2], int lane)
{
    const int g = lane >> 2, t = lane & 3;
    const int nm = d.stage == 1 || d.rt == 32 ? 2 : 1;
    const bool fp4 = d.fmt == MOE_MXFP4;
    /* epilogue: FP4 lane t writes output t of its quad; FP8 lanes t < 2 their 4 outputs */
    const int nout = fp4 ? 1 : (t < 2 ? 4 : 0);
#pragma unroll
    for (int o = 0; o < 4; o++) {
        if (o >= nout) break;
        const int i = fp4 ? t : o;
        const int rl = i < 2 ? g : g + 8, j = fp4 ? (t & 1) : 2 * t + (i & 1);
        if (j >= d.ntok) continue;
        const int tok = d.tok0 + j, pair = pair_of(a, sm, d.ai, tok);
        if (d.stage == 1) {
            const int64_t row = (int64_t)d.tile * 16 + rl;
            const float gv = q_bf16(__fmul_rn(pick4(tot[0], fp4 ? 0 : o), osc[0]));
            const float uv = q_bf16(__fmul_rn(pick4(tot[1], fp4 ? 0 : o), osc[1]));
            float v = q_swiglu(gv, uv, a.limit);
            if (d.ai > 0) v = __fmul_rn(v, __ldg(a.wts + pair));
            a.araw[(int64_t)pair * a.I + row] = (uint16_t)(__float_as_uint(q_bf16(v)) >> 16);
        } else {
            for (int h = 0; h < nm; h++) {
                const int64_t row = (int64_t)d.tile * d.rt + 16 * h + rl;
                const float yv = q_bf16(__fmul_rn(pick4(tot[h], fp4 ? 0 : o), osc[h]));
                a.y[(int64_t)pair * a.D + row] = (uint16_t)(__float_as_uint(yv) >> 16);
            }
        }
    }
    __threadfence();
    __syncwarp();

    if (d.stage == 1) { /* the last task of the 128-row block quantises it */
        const int nbI = a.I >> 7, blk = d.tile >> 3, need = 8 * d.ntg;
        int tk = 0;
        if (lane == 0) tk = atomicAdd(a.ctl.qtick + (int64_t)d.ai * nbI + blk, 1);
        if (__shfl_sync(0xffffffffu, tk, 0) != need - 1) return;
        __threadfence();
        quant_block(a, sm, d.ai, blk, lane);
        __threadfence();
        __syncwarp();
        if (lane == 0) atomicAdd(a.ctl.qa_done + d.ai, 1);
        return;
    }
    /* stage 2: one ticket per (row, 16-row tile of out); the row's last contribution (of its
     * valid routed pairs + the shared expert) combines the tile. Lane 16 h + j: token j of the
     * pass, row half h. */
    int r = 0, tl = 0;
    bool mine = false;
    const int h = lane >> 4, j = lane & 15;
    if (h < (d.rt >> 4) && j < d.ntok) {
        const int tok = d.tok0 + j, pair = pair_of(a, sm, d.ai, tok);
        r = d.ai == 0 ? tok : pair / a.K;
        tl = d.tile * (d.rt >> 4) + h;
        int nv = 0;
        for (int q = 0; q < a.K; q++) {
            const int e = __ldg(a.sel + (int64_t)r * a.K + q);
            nv += e >= 0 && e < a.E;
        }
        const int old = atomicAdd(a.ctl.ctick + (int64_t)r * (a.D >> 4) + tl, 1);
        mine = old == nv;
    }
    unsigned lm = __ballot_sync(0xffffffffu, mine);
    if (lm) __threadfence();
    while (lm) {
        const int q = __ffs(lm) - 1;
        lm &= lm - 1;
        combine_tile(a, __shfl_sync(0xffffffffu, r, q), __shfl_sync(0xffffffffu, tl, q), lane);
    }
}

static __device__ void consumer(const moe_stream_args &a, ms_smem *sm, int warp, int lane)
{
    if (warp == 0) build_list(a, sm, lane);
    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    float osc[2] = {1.0f, 1.0f};
    for (int u = 0;; u++) {
        const int s = u % SLOTS;
        const uint32_t par = (uint32_t)(u / SLOTS) & 1u;
        if (!mbar_wait(a, sm, &sm->full_w[s], par, W_FULLW)) return;
        if (!mbar_wait(a, sm, &sm->full_b[s], par, W_FULLB)) return;
        const ms_desc d = sm->desc[s];
        if (d.kind == U_END) return;
        if (d.kind == U_PREP) {
            run_prep(a, d.prep, warp, lane);
            __threadfence();
            __syncwarp();
            if (lane == 0 && atomicAdd(&sm->slot_cnt[s], 1) == NC - 1) {
                sm->slot_cnt[s] = 0;
                __threadfence();
                atomicAdd(a.ctl.words + 1, 1);
            }
            __syncwarp();
            if (lane == 0) mbar_arrive(&sm->empty[s]);
            continue;
        }
        if (d.m == 0 && d.p == 0)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[0][i] = acc[1][i] = 0.0f;
        const ms_slot *sl = &sm->slot[s];
        if (d.rt == 32) { /* stage 2, MXFP4: rows 0..15 into acc[0], 16..31 into acc[1] */
            osc[0] = osc[1] = d.osc;
            unit_mma<0>(acc[0], sl, 0, d.ku, d.ntok, warp, lane);
            unit_mma<0>(acc[1], sl, 16, d.ku, d.ntok, warp, lane);
        } else if (d.m == 0) {
            osc[0] = d.osc;
            if (d.fmt == MOE_MXFP4)
                unit_mma<0>(acc[0], sl, 0, d.ku, d.ntok, warp, lane);
            else
                unit_mma<1>(acc[0], sl, 0, d.ku, d.ntok, warp, lane);
        } else {
            osc[1] = d.osc;
            if (d.fmt == MOE_MXFP4)
                unit_mma<0>(acc[1], sl, 0, d.ku, d.ntok, warp, lane);
            else
                unit_mma<1>(acc[1], sl, 0, d.ku, d.ntok, warp, lane);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(&sm->empty[s]);
        if (d.last) finish_task(a, sm, d, acc, osc, warp, lane);
    }
}

/* ---- the kernel --------------------------------------------------------------------------- */
__global__ void __launch_bounds__(THREADS, 1) moe_stream_kernel(const moe_stream_args a)
{
    DSV4_PDL_WAIT();
    extern __shared__ __align__(128) uint8_t smem_raw[];
    ms_smem *sm = (ms_smem *)smem_raw;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (threadIdx.x == 0) {
        for (int s = 0; s < SLOTS; s++) {
            mbar_init(&sm->full_w[s], 1);
            mbar_init(&sm->full_b[s], 32);
            mbar_init(&sm->empty[s], NC);
            sm->slot_cnt[s] = 0;
        }
        for (int e = 0; e < NE; e++) sm->qfull[e] = -1, sm->qfree[e] = e;
        sm->nlocal = -1;
        sm->red_epoch[0] = 0, sm->red_epoch[1] = 1;
        sm->red_cnt[0] = sm->red_cnt[1] = 0;
        sm->list_ready = 0, sm->abort_flag = 0, sm->is_last = 0, sm->na = 0;
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == NC + NE)
        producer(a, sm, lane);
    else if (warp >= NC)
        epilogue_warp(a, sm, warp - NC, lane);
    else
        consumer(a, sm, warp, lane);
    __syncthreads();

    /* the last CTA out puts the table's counters and tickets back to zero */
    if (threadIdx.x == 0) {
        __threadfence();
        sm->is_last = atomicAdd(a.ctl.words + 2, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!sm->is_last) return;
    __threadfence();
    const int na = sm->na, nbI = a.I >> 7, nD16 = a.D >> 4;
    for (int i = threadIdx.x; i < (na + 1) * nbI; i += THREADS) a.ctl.qtick[i] = 0;
    for (int i = threadIdx.x; i <= na; i += THREADS) a.ctl.qa_done[i] = 0;
    for (int i = threadIdx.x; i < a.N * nD16; i += THREADS) a.ctl.ctick[i] = 0;
    if (threadIdx.x == 0) a.ctl.words[0] = a.ctl.words[1] = a.ctl.words[2] = 0;
}

static_assert(sizeof(ms_smem) <= 232448, "moe_stream: shared memory above the sm_90 limit");

/* ---- host ----------------------------------------------------------------------------------- */
int moe_stream_mat_ok(const moe_mat *m)
{
    if (((uintptr_t)m->data & 15) != 0 || m->cols % 512 != 0 || m->rows % 16 != 0 || !m->scale)
        return 0;
    if (m->fmt == MOE_MXFP4)
        return ((uintptr_t)m->scale & 15) == 0 && m->scale_cols >= m->cols / 32 &&
               m->scale_cols % 16 == 0;
    if (m->fmt == MOE_FP8)
        return !m->scale_f32 && ((uintptr_t)m->scale & 3) == 0 && m->scale_cols >= m->cols / 128 &&
               m->scale_cols % 4 == 0;
    return 0;
}

int moe_stream_geometry(int64_t cols, int f, int *parts, int *ku)
{
    const int64_t tpp = f == 0 ? TPP4 : TPP8;
    for (int p = 1; p <= 64; p++) {
        if (cols % p != 0 || (cols / p) % 512 != 0) continue;
        const int64_t k = cols / p;
        const int64_t wb = 16 * (f == 0 ? k / 2 : k), bb = tpp * k * 2;
        const int64_t sb = f == 0 ? 16 * (k / 32) : 0, xb = tpp * (k / 128) * 4;
        if (wb <= WBYTES && bb <= BBYTES && sb <= SBYTES && xb <= XSC && k / 128 <= XBYTES - XSC) {
            *parts = p;
            *ku = (int)k;
            return 1;
        }
    }
    return 0;
}

size_t moe_stream_ctl_words(int E, int64_t D, int64_t I)
{
    return 8 + (size_t)(E + 1) + (size_t)(E + 1) * (size_t)(I / 128) +
           (size_t)MOE_STREAM_NMAX * (size_t)(D / 16);
}

void moe_stream_ctl_carve(int32_t *base, int E, int64_t D, int64_t I, moe_stream_ctl *c)
{
    (void)D;
    c->words = base;
    c->qa_done = base + 8;
    c->qtick = c->qa_done + E + 1;
    c->ctick = c->qtick + (size_t)(E + 1) * (size_t)(I / 128);
}

dsv4_status moe_stream_prepare(int *ok)
{
    int dev = 0, optin = 0;
    *ok = 0;
    CUDA_TRY(cudaGetDevice(&dev));
    CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if ((size_t)optin < sizeof(ms_smem)) return DSV4_OK;
    CUDA_TRY(cudaFuncSetAttribute(moe_stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)sizeof(ms_smem)));
    *ok = 1;
    return DSV4_OK;
}

dsv4_status moe_stream_run(cudaStream_t st, const moe_stream_args *a, int grid)
{
    moe_stream_kernel<<<(unsigned)grid, THREADS, sizeof(ms_smem), st>>>(*a);
    CUDA_LAUNCHED();
    return DSV4_OK;
}

int moe_stream_rows32(int64_t cols)
{
    int parts = 0, ku = 0;
    return moe_stream_geometry(cols, 0, &parts, &ku) && parts == 1 && 32 * (ku / 2) <= WBYTES &&
           32 * (ku / 32) <= SBYTES;
}
