/*
 * attn.cuh - what the two CUDA attention kernels share: bf16 rounding as quant_sim.c, the
 * bf16 mma.sync / ldmatrix / cp.async wrappers, a row's slot list and the store of its partial
 * scores, the host's argument checks and fields, and the entry points of the sequential kernel
 * (attn_seq.cu: the fallback, and the yardstick the split kernel of bk_attn.cu is timed
 * against) and of the plan-forcing test hook (bk_attn.cu).
 */
#ifndef DSV4_CUDA_ATTN_CUH
#define DSV4_CUDA_ATTN_CUH

#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"

#include <math.h>
#include <stdint.h>

enum {
    AT_THREADS = 256,
    AT_WARPS = 8,
    AT_BLOCK = 64,         /* the faithful kernel's slot block */
    AT_LDS = AT_BLOCK + 4, /* floats a head's row of partial scores */
    AT_LDP = AT_BLOCK + 8  /* bf16 a head's row of p */
};

/* f32 -> bf16 bits, nearest-even, NaN kept quiet: quant_sim.c dsv4_round_bf16 bit for bit.
 * Not quant_dev.cuh's dev_round_bf16: this yields the 16 bf16 bits (for packing mma operands),
 * and at_round_bf16 below drops a NaN's low 16 payload bits where dev_round_bf16 keeps them, so
 * the two differ on such NaNs. */
__device__ static inline uint16_t at_bf16_bits(float x)
{
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u | 0x00400000u) >> 16);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

__device__ static inline float at_round_bf16(float x)
{
    return __uint_as_float((uint32_t)at_bf16_bits(x) << 16);
}

__device__ static inline uint32_t at_ld32(const uint16_t *p)
{
    return *(const uint32_t *)p;
}

/* c [16x8] += a [16x16] . b [16x8]; bf16 inputs, f32 accumulation (PTX fragment layouts). */
__device__ static inline void at_mma(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Four 8x8 bf16 matrices from shared memory; lane l gives the row address of matrix l / 8.
 * Without .trans lane (g, t) = (l / 4, l % 4) gets row g, columns 2t, 2t + 1 of each. */
__device__ static inline void at_ldsm4(uint32_t r[4], const uint16_t *p)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}

/* The same, transposed: lane (g, t) gets rows 2t, 2t + 1 of column g of each matrix. */
__device__ static inline void at_ldsm4_t(uint32_t r[4], const uint16_t *p)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 fills zeros. */
__device__ static inline void at_cp_async16(void *dst, const void *src, int src_bytes)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

__device__ static inline void at_cp_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

__device__ static inline void at_cp_wait_all(void)
{
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ static inline void at_cp_wait_one(void)
{
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}

/* ---- what both kernels do alike with a row's keys -------------------------------------------- */
/* A, RK: the kernel's arguments (attn_args, sa_args) and row (row_keys, sa_row), which share the
 * fields used here. The row's slot list: slots [0, count) are window positions lo .. p (oldest
 * first), [count, W) empty, [W, ns) entries (list[] for CSA, 0 .. n_ent-1 for HCA). */

/* The row's window (position p, cache slot sl) and entry bases (hd: a.hd, as the caller holds
 * it); list: the CSA picks (shared). */
template <class A, class RK>
__device__ static inline void at_row_init(const A &a, RK &rk, int p, int sl, int hd,
                                          const int *list)
{
    rk.lo = p - a.W + 1 > 0 ? p - a.W + 1 : 0;
    rk.count = p - rk.lo + 1;
    rk.wbase = a.win + (int64_t)sl * a.R * hd;
    rk.ebase = a.mode ? a.ent + (int64_t)sl * a.cap_e * hd : NULL;
    rk.list = list;
}

/* HCA: the entries a row at position p sees, (p + 1) / m capped at cap_e. */
template <class A> __device__ static inline int at_hca_entries(const A &a, int p)
{
    const int64_t ne = ((int64_t)p + 1) / a.m;
    return (int)(ne < a.cap_e ? ne : a.cap_e);
}

/* Slot s's key (hd bf16), NULL for an empty slot. */
template <class A, class RK>
__device__ static inline const uint16_t *at_key(const A &a, const RK &rk, int s)
{
    if (s < rk.count) return rk.wbase + (int64_t)((rk.lo + s) % a.R) * a.hd;
    if (s < a.W || s >= rk.ns) return NULL;
    const int e = a.mode == 2 ? rk.list[s - a.W] : s - a.W;
    return rk.ebase + (int64_t)e * a.hd;
}

/* Warp (mt, kh)'s partial scores c [NT][4] (keys 16 mt + g, + 8; heads 8 nt + 2 t, + 1: the mma
 * C fragment) -> sp [2][HG][AT_LDS], half kh. */
template <int NT>
__device__ static inline void at_store_scores(float *sp, int kh, int mt, int g, int t,
                                              const float (&c)[NT][4])
{
    float *spk = sp + kh * 8 * NT * AT_LDS;
    const int key = mt * 16 + g;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int hA = nt * 8 + 2 * t;
        spk[hA * AT_LDS + key] = c[nt][0];
        spk[(hA + 1) * AT_LDS + key] = c[nt][1];
        spk[hA * AT_LDS + key + 8] = c[nt][2];
        spk[(hA + 1) * AT_LDS + key + 8] = c[nt][3];
    }
}

/* ---- host: the arguments both entry points share ----------------------------------------------
 */
/* The checks of dsv4_bk_attention's shape arguments. */
static inline dsv4_status at_check(int H, int hd, int R, int W, int m, const int32_t *sel, int topk)
{
    if (H < 1 || hd < 64 || hd % 64 || W < 1 || R < W || m < 0 || (sel && topk < 0))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "attention: H %d, hd %d (a multiple of 64), R %d, W %d, m %d", H, hd, R, W,
                         m);
    return DSV4_OK;
}

/* The call's fields of the kernel arguments *a (attn_args, sa_args; arguments as
 * dsv4_bk_attention): mode 0 window only, 1 HCA (m > 0, entries), 2 CSA (and picks). */
template <class A>
static inline void at_args_set(A *a, float *o, const float *q, int H, int hd, const uint16_t *win,
                               int R, int W, const uint16_t *ent, int64_t cap_e, int m,
                               const int32_t *sel, int topk, const float *sink,
                               const dsv4_bk_rows *rows)
{
    a->o = o, a->q = q, a->sink = sink;
    a->win = win, a->ent = ent, a->sel = sel;
    a->slot = rows->slot, a->pos = rows->pos;
    a->cap_e = cap_e, a->H = H, a->hd = hd, a->R = R, a->W = W, a->m = m;
    a->topk = sel ? topk : 0;
    a->mode = m > 0 && ent ? (sel ? 2 : 1) : 0;
    a->scale = 1.0f / sqrtf((float)hd);
}

/* The sequential kernel (attn_seq.cu): one CTA per (row, group of 8 or 16 heads) walks the
 * row's blocks in order. Arguments and result as dsv4_bk_attention (backend.h). */
extern "C" dsv4_status dsv4_cuda_attention_seq(dsv4_backend *b, float *o, const float *q, int H,
                                               int hd, const uint16_t *win, int R, int W,
                                               const uint16_t *ent, int64_t cap_e, int m,
                                               const int32_t *sel, int topk, const float *sink,
                                               const dsv4_bk_rows *rows);

/* Test hook (bk_attn.cu): dsv4_bk_attention with a forced plan. want[0]: heads a CTA / 8 (1, 2
 * or 4; 0 chooses; -1 runs the sequential kernel, then the RoPE op when rope_r > 0),
 * want[1]: the largest cluster (1..16; 0: 16; above 8 only where the GPU can place it, else the
 * best plan within 8), want[2]: the most blocks a CTA takes a round (1..4; 0: 4); a negative
 * want[1] or want[2] asks for exactly that many (a sweep of the plans). got: [heads / 8,
 * cluster, blocks a CTA a round, shared bytes, CTAs an SM and clusters at once as the cost model
 * counts them] of the plan run (got[0] = -1: the sequential kernel). DSV4_ERR_UNSUPPORTED when
 * no plan within want fits. */
extern "C" dsv4_status dsv4_cuda_attention_cfg(
    dsv4_backend *b, float *o, const float *q, int H, int hd, const uint16_t *win, int R, int W,
    const uint16_t *ent, int64_t cap_e, int m, const int32_t *sel, int topk, const float *sink,
    const dsv4_bk_rows *rows, int rope_r, const float *rope_freqs, const int want[3], int got[6]);

#endif
