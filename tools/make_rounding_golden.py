#!/usr/bin/env python3
"""Golden values for the faithful mode's roundings (tests/test_quant_sim.c, src/model/quant_sim.c).

Run on the GPU machine (torch with CUDA):  python3 tools/make_rounding_golden.py OUT.bin
The committed copy is tests/fixtures/rounding/rounding.bin; regenerate it, never edit it.

Every record holds inputs and the outputs torch gives for one operation:
- plain casts on the GPU: float8_e4m3fn (in range, and after the official clamp to +-448), bf16,
  and torch's raw e4m3 cast out of range (NaN there: recorded to document it);
- e2m1: torch has no usable float -> float4_e2m1fn_x2 cast, so the golden is ml_dtypes'
  float4_e2m1fn cast, cross-checked against a torch round-half-even formula (they must agree);
- the official kernels' arithmetic written with torch ops, exactly as inference/kernel.py's
  tilelang code computes it: the ue8m0 scales (fast_log2_ceil on the f32 bits of amax * (1/max)),
  act_quant (block 128 and 64) and fp4_act_quant (block 32) in their in-place form, and
  rotate_activation (fast_hadamard_transform's f32 butterfly, strides 1..n/2, then * scale).
Inputs are random (fixed seed) plus adversarial values: exact ties, values next to the block-scale
boundaries (amax = 448 * 2^k and its neighbours), zero blocks, amax below the floors, subnormals.

File layout (little-endian): b"DSV4RND1", u32 record count, then per record: name (32 bytes,
NUL-padded ASCII), i32 param (block size or transform length, 0 for casts), i32 reserved (0),
i64 n, f32 in[n], f32 out[n].
"""
import struct
import sys

import numpy as np
import torch

SEED = 20260417
DEV = "cuda" if torch.cuda.is_available() else "cpu"
RECORDS = []
LOG = []


def log(msg):
    LOG.append(msg)
    print(msg, flush=True)


def add(name, param, x, y):
    x = np.ascontiguousarray(x, dtype=np.float32).ravel()
    y = np.ascontiguousarray(y, dtype=np.float32).ravel()
    assert x.shape == y.shape and len(name) < 32
    RECORDS.append((name, param, x, y))
    log(f"record {name:<26} param {param:4d}  n {x.size}")


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(DEV)


def n(a):
    return a.detach().float().cpu().numpy()


def same_bits(a, b):
    """Bitwise equal, any NaN matching any NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


# ---- narrow formats -------------------------------------------------------------------------


def e4m3_grid():
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    g = np.unique(codes[np.isfinite(codes) & (codes >= 0)])
    return g  # 0 .. 448, subnormals included


def e2m1_torch(x):
    """Round half to even onto {0, .5, 1, 1.5, 2, 3, 4, 6}, saturating at 6: in each binade the
    grid step is a power of two and an even multiple of it has an even mantissa, so
    torch.round (half to even) on x / step is the e2m1 rounding."""
    a = x.abs()
    step = torch.where(a < 2, torch.full_like(a, 0.5), torch.where(a < 4, torch.ones_like(a), torch.full_like(a, 2.0)))
    q = torch.round(a / step) * step
    q = torch.clamp(q, max=6.0)
    return torch.copysign(q, x)


def e2m1_reference(x_np):
    """ml_dtypes' float4_e2m1fn cast (x must already lie in [-6, 6])."""
    import ml_dtypes

    return x_np.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)


def casts(rng):
    g = e4m3_grid()
    mids = ((g[1:].astype(np.float64) + g[:-1]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(1e9))])
    rnd = (rng.standard_normal(1500) * np.exp2(rng.integers(-16, 9, 1500))).astype(np.float32)
    tiny = np.array([1e-30, 2.0**-10, 2.0**-10 * 1.0001, 3 * 2.0**-11, 2.0**-149, -2.0**-149], np.float32)
    x = np.concatenate([g, mids, near, rnd, tiny])
    x = np.concatenate([x, -x, np.array([0.0, -0.0, np.nan], np.float32)])
    x = x[~(np.abs(x) > 464)]
    y = n(t(x).to(torch.float8_e4m3fn).float())
    ycpu = torch.from_numpy(x).to(torch.float8_e4m3fn).float().numpy()
    log(f"e4m3: CUDA vs CPU cast agree on {same_bits(y, ycpu).sum()}/{x.size}")
    add("e4m3", 0, x, y)

    big = np.array([448, 449, 463.99, 464, 464.01, 470, 479.99, 480, 500, 1e4, 3e38, np.inf], np.float32)
    xc = np.concatenate([big, -big, rnd * 64, np.array([np.nan], np.float32)])
    yc = n(torch.clamp(t(xc), -448.0, 448.0).to(torch.float8_e4m3fn).float())
    add("e4m3_clamp", 0, xc, yc)
    over = np.concatenate([big[4:], -big[4:]])
    yo = n(t(over).to(torch.float8_e4m3fn).float())
    log(f"e4m3: torch's raw cast of {over.size} values above 464 gives NaN for {np.isnan(yo).sum()}")
    add("e4m3_raw_over", 0, over, yo)

    # e2m1
    e2 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    m2 = (e2[1:] + e2[:-1]) / 2
    xe = np.concatenate([e2, m2, np.nextafter(m2, np.float32(0)), np.nextafter(m2, np.float32(9)),
                         rng.uniform(-6, 6, 800).astype(np.float32), np.array([2.0**-149, 1e-30], np.float32)])
    xe = np.concatenate([xe, -xe])
    ye = e2m1_reference(xe)
    yt = n(e2m1_torch(t(xe)))
    agree = same_bits(ye, yt).sum()
    log(f"e2m1: ml_dtypes vs torch round-half-even formula agree on {agree}/{xe.size}")
    assert agree == xe.size
    try:  # torch's own dtype, if this build can cast into it
        yn = n(t(xe).to(torch.float4_e2m1fn_x2).float())
        log(f"e2m1: torch float4_e2m1fn_x2 cast agrees on {same_bits(ye, yn).sum()}/{xe.size}")
    except Exception as exc:  # noqa: BLE001 - record why, then carry on
        log(f"e2m1: torch float -> float4_e2m1fn_x2 cast unavailable: {type(exc).__name__}: {str(exc)[:120]}")
    add("e2m1", 0, xe, ye)
    xo = np.array([6, 6.5, 7, 100, 3e38, np.inf, 5.0, 5.5], np.float32)
    xo = np.concatenate([xo, -xo, rng.uniform(-20, 20, 200).astype(np.float32)])
    yo2 = e2m1_reference(np.clip(xo, -6, 6))
    assert same_bits(yo2, n(e2m1_torch(torch.clamp(t(xo), -6.0, 6.0)))).all()
    add("e2m1_clamp", 0, xo, yo2)

    # bf16
    bits = rng.integers(0, 2**32, 3000, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 2**16, 400, dtype=np.uint64).astype(np.uint32) << 16) | 0x8000
    special = np.array([0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0xFF7FFFFF, 0x00008000, 0x00018000,
                        0x00007FFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0, 0x80000000],
                       np.uint32)
    xb = np.concatenate([bits, ties, ties + 1, ties - 1, special]).view(np.float32)
    yb = n(t(xb).to(torch.bfloat16).float())
    ybc = torch.from_numpy(xb.copy()).to(torch.bfloat16).float().numpy()
    log(f"bf16: CUDA vs CPU cast agree (NaN = NaN) on {same_bits(yb, ybc).sum()}/{xb.size}")
    add("bf16", 0, xb, yb)


# ---- the official kernels' arithmetic, in torch ---------------------------------------------


def pow2_ceil_bits(y):
    """fast_pow2(fast_log2_ceil(y)) of inference/kernel.py on an f32 tensor."""
    b = y.view(torch.int32)
    e = ((b >> 23) & 0xFF) - 127 + ((b & 0x7FFFFF) != 0).to(torch.int32)
    return ((e + 127) << 23).view(torch.float32)


def scale_fp8(amax):
    return pow2_ceil_bits(torch.clamp(amax, min=1e-4) * torch.tensor(1.0 / 448.0, dtype=torch.float32, device=amax.device))


def scale_fp4(amax):
    return pow2_ceil_bits(torch.clamp(amax, min=6 * 2.0**-126) * torch.tensor(1.0 / 6.0, dtype=torch.float32, device=amax.device))


def blocks(x, block):
    """[rows, n] -> [rows, nb, block] padded with zeros (a zero changes no amax)."""
    rows, m = x.shape
    nb = -(-m // block)
    pad = torch.zeros(rows, nb * block, dtype=x.dtype, device=x.device)
    pad[:, :m] = x
    return pad.view(rows, nb, block), m


def act_quant_sim(x, block):
    """act_quant(x, block, "ue8m0", inplace=True) body: clamp(x / s, +-448) -> e4m3 -> * s."""
    xb, m = blocks(x, block)
    s = scale_fp8(xb.abs().amax(dim=-1, keepdim=True))
    q = torch.clamp(xb / s, -448.0, 448.0).to(torch.float8_e4m3fn).float() * s
    return q.view(x.shape[0], -1)[:, :m]


def fp4_act_quant_sim(x, block):
    """fp4_act_quant(x, block, inplace=True) body: clamp(x / s, +-6) -> e2m1 -> * s."""
    xb, m = blocks(x, block)
    s = scale_fp4(xb.abs().amax(dim=-1, keepdim=True))
    q = e2m1_torch(torch.clamp(xb / s, -6.0, 6.0)) * s
    return q.view(x.shape[0], -1)[:, :m]


def hadamard_f32(x):
    """fast_hadamard_transform(x, scale=n ** -0.5) in f32: butterflies with strides 1, 2, .., n/2
    ((lo, hi) -> (lo + hi, lo - hi)), then one multiply by the scale as an f32."""
    rows, m = x.shape
    h = 1
    while h < m:
        v = x.reshape(rows, m // (2 * h), 2, h)
        a, b = v[:, :, 0, :], v[:, :, 1, :]
        x = torch.stack([a + b, a - b], dim=2).reshape(rows, m)
        h *= 2
    return x * torch.tensor(m ** -0.5, dtype=torch.float32, device=x.device)


def bf16(x):
    return x.to(torch.bfloat16).float()


def adversarial_fp8_rows(rng, width, block):
    """Rows whose blocks sit on the FP8 scale boundaries, ties, zeros and floors."""
    g = e4m3_grid()
    mids = ((g[1:].astype(np.float64) + g[:-1]) / 2).astype(np.float32)
    rows = []
    for k in (-20, -8, -1, 0, 3):
        r = rng.standard_normal(width).astype(np.float32)
        for b in range(0, width, block):
            r[b] = np.float32(448.0 * 2.0**k)  # amax exactly 448 * 2^k
        rows.append(r)
        r2 = r.copy()
        r2[::block] = np.nextafter(np.float32(448.0 * 2.0**k), np.float32(1e30))
        rows.append(r2)
        r3 = r.copy()
        r3[::block] = np.nextafter(np.float32(448.0 * 2.0**k), np.float32(0))
        rows.append(r3)
    s = 2.0**-3
    tie = np.resize(np.concatenate([mids, -mids]), width).astype(np.float32) * np.float32(s)
    tie[::block] = 448.0 * s  # pin the scale so x / s lands on the midpoints
    rows.append(tie)
    rows.append(np.zeros(width, np.float32))
    rows.append(-np.zeros(width, np.float32))
    rows.append((rng.standard_normal(width) * 1e-6).astype(np.float32))  # amax below the 1e-4 floor
    r = (rng.standard_normal(width) * 1e-3).astype(np.float32)
    r[::block] = 1e-4
    rows.append(r)
    r = rng.standard_normal(width).astype(np.float32)
    r[1::block] = 1e-9  # far below the block's subnormal step
    r[2::block] = 3.0 * 2.0**-10  # e4m3 subnormal ties once scaled by 2^0 .. (block dependent)
    rows.append(r)
    return np.stack(rows)


def adversarial_fp4_rows(rng, width, block):
    e2 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    m2 = (e2[1:] + e2[:-1]) / 2
    rows = []
    for k in (-30, -3, 0, 2):
        s = np.float32(2.0**k)
        r = np.resize(np.concatenate([m2, -m2, e2]), width).astype(np.float32) * s
        r[::block] = 6 * s
        rows.append(r)
        r2 = rng.standard_normal(width).astype(np.float32)
        r2[::block] = np.nextafter(np.float32(6 * 2.0**k), np.float32(1e30))
        rows.append(r2)
    rows.append(np.zeros(width, np.float32))
    rows.append((rng.standard_normal(width) * 1e-37).astype(np.float32))  # amax near the floor
    r = rng.standard_normal(width).astype(np.float32)
    r[3::block] = 1e-20
    rows.append(r)
    return np.stack(rows)


def kernels(rng):
    # ue8m0 scales on their own
    ks = np.arange(-40, 30, dtype=np.float64)
    edge = np.concatenate([448.0 * 2.0**ks, 6.0 * 2.0**ks, 2.0**ks]).astype(np.float32)
    am = np.concatenate([edge, np.nextafter(edge, np.float32(0)), np.nextafter(edge, np.float32(1e38)),
                         np.abs(rng.standard_normal(500) * np.exp2(rng.integers(-30, 20, 500))).astype(np.float32),
                         np.array([0, 1e-4, 1e-5, 6 * 2.0**-126, 1e-38, 2.0**-149, 3e38], np.float32)])
    am = np.concatenate([am, np.nextafter(np.float32(1e-4), np.float32([0, 1]))])
    s8 = n(scale_fp8(t(am)))
    s4 = n(scale_fp4(t(am)))
    add("scale_fp8", 0, am, s8)
    add("scale_fp4", 0, am, s4)
    # the float log2/ceil formula, for the record
    a8 = torch.clamp(t(am), min=1e-4)
    via_log = n(torch.exp2(torch.ceil(torch.log2(a8 * torch.tensor(1 / 448.0, device=DEV)))))
    exact = np.exp2(np.ceil(np.log2(np.maximum(am.astype(np.float64), np.float32(1e-4)) / 448.0)))
    log(f"scale_fp8: torch log2/ceil formula differs from the bit formula on {(~same_bits(via_log, s8)).sum()}"
        f"/{am.size}; float64 amax/448 formula differs on {(exact.astype(np.float32) != s8).sum()}")

    # act_quant: random bf16 rows (block 128), KV-like 448-wide rows (block 64), f32 rows, a tail
    xr = bf16(t(rng.standard_normal((12, 512)) * np.exp2(rng.integers(-12, 8, (12, 1)))))
    xa = torch.cat([xr, bf16(t(adversarial_fp8_rows(rng, 512, 128)))])
    add("act_quant_b128", 128, n(xa), n(act_quant_sim(xa, 128)))
    xk = bf16(t(np.concatenate([rng.standard_normal((10, 448)) * np.exp2(rng.integers(-6, 6, (10, 1))),
                                adversarial_fp8_rows(rng, 448, 64)])))
    add("act_quant_b64", 64, n(xk), n(act_quant_sim(xk, 64)))
    xf = t(rng.standard_normal((8, 256)) * 3)
    add("fp8_blocks_f32_b128", 128, n(xf), n(act_quant_sim(xf, 128)))
    xt = t(rng.standard_normal((1, 300)) * 5)
    add("fp8_blocks_tail_b128", 128, n(xt), n(act_quant_sim(xt, 128)))
    xc = t(rng.standard_normal((6, 384)) * np.exp2(rng.integers(-8, 8, (6, 1))))
    add("act_quant_call_b128", 128, n(xc), n(act_quant_sim(bf16(xc), 128)))

    # fp4_act_quant: indexer-like rows of 128 (block 32)
    xq = bf16(t(np.concatenate([rng.standard_normal((16, 128)) * np.exp2(rng.integers(-10, 6, (16, 1))),
                                adversarial_fp4_rows(rng, 128, 32)])))
    add("fp4_quant_b32", 32, n(xq), n(fp4_act_quant_sim(xq, 32)))
    xt4 = t(rng.standard_normal((1, 100)) * 2)
    add("fp4_blocks_tail_b32", 32, n(xt4), n(fp4_act_quant_sim(xt4, 32)))
    xc4 = t(rng.standard_normal((6, 128)))
    add("fp4_act_quant_call_b32", 32, n(xc4), n(fp4_act_quant_sim(bf16(xc4), 32)))

    # Walsh-Hadamard
    for m, rows in ((128, 24), (64, 4), (256, 4), (1, 2), (2, 2)):
        xh = t(rng.standard_normal((rows, m)) * np.exp2(rng.integers(-6, 6, (rows, 1))))
        yh = hadamard_f32(xh)
        if m > 1:
            hm = torch.ones(1, 1, dtype=torch.float64)
            while hm.shape[0] < m:
                hm = torch.cat([torch.cat([hm, hm], 1), torch.cat([hm, -hm], 1)], 0)
            ref = (xh.double().cpu() @ hm) * m ** -0.5
            err = (torch.from_numpy(n(yh)).double() - ref).abs().max().item()
            log(f"hadamard {m}: f32 butterfly vs float64 Sylvester matrix: max abs diff {err:.3g}")
        add(f"hadamard_{m}", m, n(xh), n(yh))
    xr = t(rng.standard_normal((16, 128)) * 2)
    add("rotate_activation_128", 128, n(xr), n(bf16(hadamard_f32(bf16(xr)))))
    # the indexer chain: rotate_activation then fp4_act_quant (block 32)
    xi = t(rng.standard_normal((8, 128)))
    add("rotate_fp4_128", 128, n(xi), n(fp4_act_quant_sim(bf16(hadamard_f32(bf16(xi))), 32)))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/rounding/rounding.bin"
    log(f"torch {torch.__version__} on {DEV}" + (f" ({torch.cuda.get_device_name()})" if DEV == "cuda" else ""))
    rng = np.random.default_rng(SEED)
    casts(rng)
    kernels(rng)
    with open(out, "wb") as f:
        f.write(b"DSV4RND1" + struct.pack("<I", len(RECORDS)))
        for name, param, x, y in RECORDS:
            f.write(name.encode().ljust(32, b"\0") + struct.pack("<iiq", param, 0, x.size))
            f.write(x.astype("<f4").tobytes() + y.astype("<f4").tobytes())
    with open(out + ".log", "w") as f:
        f.write("\n".join(LOG) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
