/*
 * attn.cuh - what the two CUDA attention kernels share: bf16 rounding as quant_sim.c, the
 * bf16 mma.sync / ldmatrix / cp.async wrappers, a row's slot list, the expansion of cached
 * entries (the serving layout, kv_layout.h) into bf16 key rows, the store of a block's partial
 * scores, the host's argument checks and fields, and the entry points of the sequential kernel
 * (attn_seq.cu: the fallback, and the yardstick the split kernel of bk_attn.cu is timed
 * against) and of the plan-forcing test hook (bk_attn.cu).
 */
#ifndef DSV4_CUDA_ATTN_CUH
#define DSV4_CUDA_ATTN_CUH

#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/kv_dev.cuh"
#include "backend/kv_layout.h"

#include <math.h>
#include <stdint.h>

enum {
    AT_THREADS = 256,
    AT_WARPS = 8,
    AT_BLOCK = 64,         /* the faithful kernel's slot block */
    AT_LDS = AT_BLOCK + 4, /* floats a head's row of partial scores */
    AT_LDP = AT_BLOCK + 8, /* bf16 a head's row of p */
    AT_XU = 5              /* 16-byte chunks a lane expands a row (at_expand): hd <= 32 * 8 * 5 */
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

/* 8 bytes global -> shared, asynchronously (cp.async.ca: 4, 8 or 16 bytes). */
__device__ static inline void at_cp_async8(void *dst, const void *src)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(src) : "memory");
}

/* An arrival on the mbarrier at bar (a shared-window address) once every cp.async this thread
 * has issued so far has landed; .noinc: the barrier's count must include it. */
__device__ static inline void at_cp_mbar_arrive(uint32_t bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
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
 * first), [count, W) empty, [W, ns) entries (list[] for CSA, 0 .. n_ent-1 for HCA). Keys are
 * entries of the layout a.kvl (kv_layout.h); wbase, ebase: the entry indices of the row's slot's
 * first window entry and first compressed entry. */

/* The row's window (position p, cache slot sl) and entry bases; list: the CSA picks (shared). */
template <class A, class RK>
__device__ static inline void at_row_init(const A &a, RK &rk, int p, int sl, const int *list)
{
    rk.lo = p - a.W + 1 > 0 ? p - a.W + 1 : 0;
    rk.count = p - rk.lo + 1;
    rk.wbase = (int64_t)sl * a.R;
    rk.ebase = a.mode ? (int64_t)sl * a.cap_e : 0;
    rk.list = list;
}

/* HCA: the entries a row at position p sees, (p + 1) / m capped at cap_e. */
template <class A> __device__ static inline int at_hca_entries(const A &a, int p)
{
    const int64_t ne = ((int64_t)p + 1) / a.m;
    return (int)(ne < a.cap_e ? ne : a.cap_e);
}

/* Slot s's key: the buffer holding it (a.win or a.ent) and its entry index there (*e); NULL for
 * an empty slot. */
template <class A, class RK>
__device__ static inline const uint8_t *at_entry(const A &a, const RK &rk, int s, int64_t *e)
{
    if (s < rk.count) {
        *e = rk.wbase + (rk.lo + s) % a.R;
        return a.win;
    }
    if (s < a.W || s >= rk.ns) return NULL;
    *e = rk.ebase + (a.mode == 2 ? rk.list[s - a.W] : s - a.W);
    return a.ent;
}

/* ---- cached entries -> bf16 key rows -----------------------------------------------------------
 * A block's key tile is [64][hd + 8] bf16, row k = 2 hd + 16 bytes. The loaders stage slot k's
 * entry in its own tile row: the data row (data_bytes <= 2 hd: e4m3 bytes, RoPE bf16, padding)
 * at byte a.stoff (at_stage_off), the scale row at scl + k * scale_bytes. at_expand then
 * rewrites the row as the hd bf16 values the old bf16 cache held (dsv4_kv_decode's values,
 * exact), so everything after it reads the tile as before. In place: a row's e4m3 bytes are all
 * read before any of its bf16 is written (the outputs cover the inputs). */

/* Where a tile row stages its data row (bytes from the row's start; 16-byte aligned, inside the
 * row). nope % 16 == 0: at nope, so that the RoPE dims (data_bytes = nope + 2 r) land where
 * they stay, and the e4m3 bytes in the upper half of their outputs; otherwise at the row's end. */
static inline int at_stage_off(int hd, int nope, int data_bytes)
{
    return nope % 16 == 0 ? nope : (2 * hd + 16 - data_bytes) & ~15;
}

/* 16 bytes to shared memory in one store (a uint4 assignment through a cast pointer may be split
 * into four 4-byte stores, a 4-way bank conflict each). p: 16-byte aligned. */
__device__ static inline void at_sts128(void *p, uint4 v)
{
    asm volatile(
        "st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"((unsigned)__cvta_generic_to_shared(p)),
        "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
        : "memory");
}

/* Two e4m3 bytes of w (SEL 0x9180: bytes 0, 1; 0xb3a2: bytes 2, 3) times 2^(s - 127) as two bf16
 * (the first low), for 10 <= s <= 134; s2: bf16x2 2^(s - 7). The bytes sign-extended to 16 bits
 * and shifted by 4 put e4m3's sign, exponent and mantissa bits on bf16's, so t is the bf16 of
 * the value times 2^-120, zero and subnormals (then bf16 subnormals) included; the bf16 product
 * is exact and normal in that range. Four integer and float operations a pair instead of
 * dev_kv_bf16x2's conversion (a slow pipe) and ten: the expansion is on the attention's critical
 * path (H100, a 64-key block of hd 512 a CTA: ~2.8 us with dev_kv_bf16x2, ~1 us so). Checked
 * against dev_kv_bf16x2 on every pair of codes at every such s. */
template <uint32_t SEL> __device__ static inline uint32_t at_e4m3x2(uint32_t w, uint32_t s2)
{
    uint32_t y, r;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(y) : "r"(w), "n"(SEL));
    asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"((y << 4) & 0x87f087f0u), "r"(s2));
    return r;
}

/* Eight e4m3 bytes x of one scale block (exponent byte s) as eight bf16: FAST, at_e4m3x2
 * (10 <= s <= 134), else dev_kv_bf16x2 (the same values where both hold). */
template <bool FAST> __device__ static inline uint4 at_e4m3x8(uint2 x, uint32_t s)
{
    if (FAST) {
        const uint32_t f = (s + 120u) << 7, s2 = f | f << 16;
        return make_uint4(at_e4m3x2<0x9180>(x.x, s2), at_e4m3x2<0xb3a2>(x.x, s2),
                          at_e4m3x2<0x9180>(x.y, s2), at_e4m3x2<0xb3a2>(x.y, s2));
    }
    const uint32_t adj = dev_kv_adj2(s);
    return make_uint4(dev_kv_bf16x2(x.x, adj), dev_kv_bf16x2(x.x >> 16, adj),
                      dev_kv_bf16x2(x.y, adj), dev_kv_bf16x2(x.y >> 16, adj));
}

/* Dims [8 c, 8 c + 8) of a staged entry as 8 bf16 (bits), pair by pair (a pair is all e4m3 or
 * all RoPE: nope = hd - r is even): stg its staged data row, sc its scale row. */
__device__ static inline uint4 at_chunk(const uint8_t *stg, const uint8_t *sc, int nope, int c)
{
    const int d0 = 8 * c;
    const uint32_t adj = d0 < nope ? dev_kv_adj2(sc[d0 >> 6]) : 0u;
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int d = d0 + 2 * i;
        if (d < nope) {
            w[i] = dev_kv_bf16x2(*(const uint16_t *)(stg + d), adj);
        } else {
            const uint16_t *h = (const uint16_t *)(stg + 2 * d - nope);
            w[i] = (uint32_t)h[0] | (uint32_t)h[1] << 16;
        }
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* at_expand where nope % 16 != 0 (test shapes; the data row staged at the row's end): a lane
 * takes 16-byte chunks c = l, l + 32, ... (U of them) of one row (hd >= 256), or of one of
 * 32 / (hd / 8) rows; a round's chunks are all read (at_chunk) before any is written. have: the
 * warp's live rows. */
template <int U, class A>
__device__ static void at_expand_any(const A &a, uint16_t *kb, const uint8_t *scl, unsigned have)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ldk = a.hd + 8;
    const int cpr = a.hd >> 3, rpr = cpr < 32 ? 32 / cpr : 1; /* chunks a row, rows a round */
    int rr[U], cc[U]; /* lane's chunks: row rr of the round (-1: none), chunk cc */
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int i = lane + 32 * u;
        rr[u] = i < rpr * cpr ? i / cpr : -1;
        cc[u] = i - (i / cpr) * cpr;
    }
    for (int j0 = 0; j0 < AT_BLOCK / AT_WARPS; j0 += rpr) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + rr[u], k = warp + AT_WARPS * j;
            v[u] = make_uint4(0u, 0u, 0u, 0u);
            if (rr[u] >= 0 && (have >> j & 1u))
                v[u] = at_chunk((const uint8_t *)(kb + k * ldk) + a.stoff,
                                scl + k * a.kvl.scale_bytes, a.kvl.nope, cc[u]);
        }
        __syncwarp();
#pragma unroll
        for (int u = 0; u < U; u++)
            if (rr[u] >= 0)
                at_sts128(kb + (warp + AT_WARPS * (j0 + rr[u])) * ldk + 8 * cc[u], v[u]);
    }
}

/* The RoPE dims [nope, hd) of the warp's empty rows (not in have) <- zeros (their e4m3 dims get
 * zeros from the expansion; nope % 16 == 0). */
__device__ static inline void at_zero_rope(uint16_t *kb, int ldk, int nope, int hd, unsigned have)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (unsigned empty = ~have & 0xffu; empty; empty &= empty - 1) { /* warp-uniform */
        uint16_t *row = kb + (warp + AT_WARPS * (__ffs(empty) - 1)) * ldk;
        for (int d = nope + 8 * lane; d < hd; d += 256)
            at_sts128(row + d, make_uint4(0u, 0u, 0u, 0u));
    }
}

/* at_expand's stores of one batch of B rounds: the chunks x (scale bytes s) of the lane's rows
 * j0 + bb rpe + re[u] (re[u] < 0 or past the warp's rows: none), chunk ce[u], as bf16 by
 * at_e4m3x8<FAST> (one instance a branch, so each loop is straight-line code). */
template <bool FAST, int B, int U>
__device__ static inline void at_store_rows(uint16_t *kb, int ldk, int j0, int rpe,
                                            const int (&re)[U], const int (&ce)[U],
                                            const uint2 (&x)[B][U], const uint32_t (&s)[B][U])
{
    constexpr int RW = AT_BLOCK / AT_WARPS;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int bb = 0; bb < B; bb++)
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + bb * rpe + re[u];
            if (re[u] >= 0 && j < RW)
                at_sts128(kb + (warp + AT_WARPS * j) * ldk + 8 * ce[u],
                          at_e4m3x8<FAST>(x[bb][u], s[bb][u]));
        }
}

/* at_expand_c's: the lane's chunks lane + 32 u (< NE) of rows bb = 0 .. B - 1 from row w (rows
 * RS bytes apart). */
template <bool FAST, int NE, int RS, int B, int UE>
__device__ static inline void at_store_rows_c(uint8_t *w, const uint2 (&x)[B][UE],
                                              const uint32_t (&sc)[B][UE])
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int bb = 0; bb < B; bb++)
#pragma unroll
        for (int u = 0; u < UE; u++)
            if (lane + 32 * u < NE)
                at_sts128(w + bb * RS + 16 * (lane + 32 * u), at_e4m3x8<FAST>(x[bb][u], sc[bb][u]));
}

/* Block b's staged keys in tile kb -> bf16 rows (empty slots: zero rows), by warp w for its
 * keys w + 8 j (the rows whose copies it issued), after the copies have landed; the caller syncs
 * the CTA before the tile is read. With nope % 16 == 0 the RoPE dims are staged in place, and
 * a lane takes the e4m3 chunks (8 dims of one scale block: one 8-byte load, at_e4m3x8)
 * l, l + 32, ... of a row's nope / 8 (U of them; or of 32 / (nope / 8) rows), B rows at a time:
 * all read, __syncwarp, all written, so that B U loads are in flight; branch-free but for one
 * vote a batch on the scales' range (at_e4m3x8<true> where every scale allows). Otherwise
 * at_expand_any. at_expand_c: the same for one layout known at compile time. */
template <int U, int B, class A, class RK>
__device__ static inline void at_expand(const A &a, const RK &rk, uint16_t *kb, const uint8_t *scl,
                                        int b)
{
    constexpr int RW = AT_BLOCK / AT_WARPS; /* rows a warp */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ldk = a.hd + 8;
    const int sb = a.kvl.scale_bytes, nope = a.kvl.nope, ne = nope >> 3;
    int64_t e;
    const unsigned have = __ballot_sync(
        0xffffffffu, lane < 8 && at_entry(a, rk, b * AT_BLOCK + warp + AT_WARPS * lane, &e));
    if (nope & 15) {
        at_expand_any<U>(a, kb, scl, have);
        return;
    }
    /* rows a round, and the lane's chunks: row of the round (-1: none), chunk */
    const int rpe = ne < 32 ? 32 / ne : 1;
    int re[U], ce[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int i = lane + 32 * u;
        re[u] = i < rpe * ne ? (ne >= 32 ? 0 : i / ne) : -1;
        ce[u] = ne >= 32 ? i : i - (i / ne) * ne;
    }
    for (int j0 = 0; j0 < RW; j0 += B * rpe) {
        uint2 x[B][U];
        uint32_t s[B][U];
        bool in = true;
#pragma unroll
        for (int bb = 0; bb < B; bb++) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int j = j0 + bb * rpe + re[u], k = warp + AT_WARPS * j;
                x[bb][u] = make_uint2(0u, 0u);
                s[bb][u] = 127u; /* a zero row: zeros at any scale */
                if (re[u] >= 0 && j < RW && (have >> j & 1u)) {
                    x[bb][u] =
                        *(const uint2 *)((const uint8_t *)(kb + k * ldk) + a.stoff + 8 * ce[u]);
                    s[bb][u] = scl[k * sb + (ce[u] >> 3)];
                }
                in = in && s[bb][u] - 10u <= 124u;
            }
        }
        const bool fast = __all_sync(0xffffffffu, in);
        __syncwarp();
        if (fast)
            at_store_rows<true>(kb, ldk, j0, rpe, re, ce, x, s);
        else
            at_store_rows<false>(kb, ldk, j0, rpe, re, ce, x, s);
    }
    if (have != 0xffu) at_zero_rope(kb, ldk, nope, a.hd, have);
}

/* at_expand for one layout known at compile time (the engine's: hd 512, r 64), the same values
 * with every address folded: ~40% of at_expand's instructions (H100, a block's expansion
 * 2.7 -> ~1 us a CTA). The caller checks a's layout. */
template <int HD, int R, int B, class A, class RK>
__device__ static inline void at_expand_c(const A &a, const RK &rk, uint16_t *kb,
                                          const uint8_t *scl, int b)
{
    constexpr int RW = AT_BLOCK / AT_WARPS, LDK = HD + 8, NOPE = HD - R, NE = NOPE / 8;
    constexpr int UE = (NE + 31) / 32, SB = ((NOPE + 63) / 64 + 7) & ~7; /* scale row */
    constexpr int RS = AT_WARPS * LDK * 2, SS = AT_WARPS * SB;           /* a warp's row strides */
    static_assert(NOPE % 16 == 0 && NE >= 32 && RW % B == 0, "layout");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int64_t e;
    const unsigned have = __ballot_sync(
        0xffffffffu, lane < 8 && at_entry(a, rk, b * AT_BLOCK + warp + AT_WARPS * lane, &e));
    uint8_t *w0 = (uint8_t *)(kb + warp * LDK); /* the warp's row 0 (staged at NOPE) */
    const uint8_t *s0 = scl + warp * SB;        /* its scale row */
#pragma unroll
    for (int j0 = 0; j0 < RW; j0 += B) {
        uint2 x[B][UE];
        uint32_t sc[B][UE];
        bool in = true;
#pragma unroll
        for (int bb = 0; bb < B; bb++) {
            const int j = j0 + bb;
#pragma unroll
            for (int u = 0; u < UE; u++) {
                const int c = lane + 32 * u;
                x[bb][u] = make_uint2(0u, 0u);
                sc[bb][u] = 127u;
                if ((have >> j & 1u) && c < NE) {
                    x[bb][u] = *(const uint2 *)(w0 + j * RS + NOPE + 8 * c);
                    sc[bb][u] = s0[j * SS + (c >> 3)];
                }
                in = in && sc[bb][u] - 10u <= 124u;
            }
        }
        const bool fast = __all_sync(0xffffffffu, in);
        __syncwarp();
        if (fast)
            at_store_rows_c<true, NE, RS>(w0 + j0 * RS, x, sc);
        else
            at_store_rows_c<false, NE, RS>(w0 + j0 * RS, x, sc);
    }
    if (have != 0xffu) at_zero_rope(kb, LDK, NOPE, HD, have);
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
/* The checks of dsv4_bk_attention's shape arguments. kr: the keys' RoPE dims (even, below hd,
 * as the CPU's); the cache buffers 16-byte aligned (the loaders' copies). */
static inline dsv4_status at_check(int H, int hd, int kr, const uint8_t *win, int R, int W,
                                   const uint8_t *ent, int m, const int32_t *sel, int topk)
{
    if (H < 1 || hd < 64 || hd % 64 || kr < 0 || kr >= hd || (kr & 1) || W < 1 || R < W || m < 0 ||
        (sel && topk < 0))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "attention: H %d, hd %d (a multiple of 64), key RoPE dims %d, R %d, W %d, "
                         "m %d",
                         H, hd, kr, R, W, m);
    if (((uintptr_t)win & 15) || ((uintptr_t)ent & 15))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "attention: cache not 16-byte aligned");
    return DSV4_OK;
}

/* The call's fields of the kernel arguments *a (attn_args, sa_args; arguments as
 * dsv4_bk_attention): mode 0 window only, 1 HCA (m > 0, entries), 2 CSA (and picks). */
template <class A>
static inline void at_args_set(A *a, float *o, const float *q, int H, int hd, int kr,
                               const uint8_t *win, int R, int W, const uint8_t *ent, int64_t cap_e,
                               int m, const int32_t *sel, int topk, const float *sink,
                               const dsv4_bk_rows *rows)
{
    a->o = o, a->q = q, a->sink = sink;
    a->win = win, a->ent = ent, a->sel = sel;
    a->slot = rows->slot, a->pos = rows->pos;
    a->cap_e = cap_e, a->H = H, a->hd = hd, a->R = R, a->W = W, a->m = m;
    a->kvl = dsv4_kv_layout_of(hd, kr);
    a->stoff = at_stage_off(hd, a->kvl.nope, a->kvl.data_bytes);
    a->topk = sel ? topk : 0;
    a->mode = m > 0 && ent ? (sel ? 2 : 1) : 0;
    a->scale = 1.0f / sqrtf((float)hd);
}

/* The sequential kernel (attn_seq.cu): one CTA per (row, group of 8 or 16 heads) walks the
 * row's blocks in order. Arguments and result as dsv4_bk_attention (backend.h). */
extern "C" dsv4_status dsv4_cuda_attention_seq(dsv4_backend *b, float *o, const float *q, int H,
                                               int hd, int kr, const uint8_t *win, int R, int W,
                                               const uint8_t *ent, int64_t cap_e, int m,
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
extern "C" dsv4_status
dsv4_cuda_attention_cfg(dsv4_backend *b, float *o, const float *q, int H, int hd, int kr,
                        const uint8_t *win, int R, int W, const uint8_t *ent, int64_t cap_e, int m,
                        const int32_t *sel, int topk, const float *sink, const dsv4_bk_rows *rows,
                        int rope_r, const float *rope_freqs, const int want[3], int got[6]);

#endif
