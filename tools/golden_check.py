#!/usr/bin/env python3
"""golden_check.py [FIXTURE_DIR ...] - an independent float64 numpy forward pass over the goldens.

For each fixture (default: every directory of tests/fixtures/goldens/ with a golden.safetensors),
reads the checkpoint in model/ with its own safetensors reader (HF layout F32, or the official
FP8/MXFP4 and NVFP4 layouts, decoded with make_checkpoints' decoders), runs the forward pass of
docs/dsv4-model.md written from the spec in float64 numpy (no torch, no transformers), and
compares with what transformers recorded: logits, per-layer hidden states, compressed entries,
indexer and router top-k sets. Prints the first position/tensor that disagrees and a summary;
exits non-zero when logits differ by more than 1e-4 of the logit range or a top-k set differs.

  golden_check.py --mtp-write DIR ...   writes DIR/mtp_golden.safetensors for the official-layout
                                        checkpoint DIR/model (with mtp.0.*): the MTP block's
                                        logits, from a transcription of the official MTPBlock
  golden_check.py --mtp DIR ...         recomputes it and compares with the stored file

This checks the fixtures against the spec (and the spec against the oracle), and it is a readable
reference for the C code: every step below is one step of the spec. Needs numpy (and ml_dtypes
for the quantised checkpoints).
"""
import json
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ROOT = os.path.join(HERE, "..", "tests", "fixtures", "goldens")

# ----------------------------------------------------------------------------------------------
# safetensors


def read_st(path):
    """{name: (dtype, shape, raw bytes)}"""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = (v["dtype"], v["shape"], data[b:e])
    return out


def plain(dt, shape, raw):
    if dt == "F32":
        return np.frombuffer(raw, np.float32).reshape(shape).astype(np.float64)
    if dt == "BF16":
        u = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape).astype(np.float64)
    if dt == "I64":
        return np.frombuffer(raw, np.int64).reshape(shape).copy()
    raise ValueError(dt)


def read_dir(d):
    t = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            t.update(read_st(os.path.join(d, f)))
    return t


def load_weights(d, cfg, with_mtp=False):
    """canonical name (make_checkpoints) -> float64 / int64 array. with_mtp: also the mtp.{j}.*
    tensors of an official-layout checkpoint (g["n_mtp"] and the MTP ratios then set)."""
    import make_checkpoints as mc
    t = read_dir(d)
    official = "quantization_config" in cfg or "compress_ratios" in cfg
    g = geometry(cfg)
    if with_mtp:
        g["n_mtp"] = cfg.get("num_nextn_predict_layers", 0)
        g["compress_ratios"] = list(cfg["compress_ratios"])[: g["n_layers"] + g["n_mtp"]]
    W = {}
    for canon, kind, shape in mc.canonical_specs(g, with_mtp=with_mtp):
        if not official:
            dt, shp, raw = t[mc.hf_saved_name(canon)]
            W[canon] = plain(dt, shp, raw).reshape(shape)
            continue
        name = mc.official_name(canon)
        dt, shp, raw = t[name]
        if dt in ("F32", "BF16", "I64"):
            W[canon] = plain(dt, shp, raw).reshape(shape)
        elif dt == "F8_E4M3":
            sdt, _, sraw = t[canon + ".scale"]
            W[canon] = mc.dec_fp8(raw, sraw, sdt, *shape).astype(np.float64)
        elif dt == "I8":
            W[canon] = mc.dec_mxfp4(raw, t[canon + ".scale"][2], *shape).astype(np.float64)
        elif dt == "U8":
            W[canon] = mc.dec_nvfp4(raw, t[name + "_scale"][2], t[name + "_scale_2"][2],
                                    *shape).astype(np.float64)
        else:
            raise ValueError(f"{name}: {dt}")
    return W, g


def geometry(cfg):
    """make_checkpoints-style geometry from an HF-written or a hub-style config.json."""
    if "compress_ratios" in cfg:
        ratios = list(cfg["compress_ratios"])[: cfg["num_hidden_layers"]]
        n_hash = cfg["num_hash_layers"]
        yarn = cfg["rope_scaling"]
        rope = cfg["qk_rope_head_dim"]
    else:
        inv = {"sliding_attention": 0, "compressed_sparse_attention": 4,
               "heavily_compressed_attention": 128}
        ratios = [inv[x] for x in cfg["layer_types"]]
        n_hash = sum(1 for x in cfg["mlp_layer_types"] if x == "hash_moe")
        yarn = cfg["rope_parameters"]["compress"]
        rope = int(round(cfg["head_dim"] * cfg["partial_rotary_factor"]))
    return dict(
        vocab=cfg["vocab_size"], dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"], head_dim=cfg["head_dim"], rope_dim=rope,
        q_lora=cfg["q_lora_rank"], o_groups=cfg["o_groups"], o_lora=cfg["o_lora_rank"],
        n_experts=cfg["n_routed_experts"], n_active=cfg["num_experts_per_tok"],
        n_shared=cfg["n_shared_experts"], inter=cfg["moe_intermediate_size"],
        index_heads=cfg["index_n_heads"], index_head_dim=cfg["index_head_dim"],
        index_topk=cfg["index_topk"], window=cfg["sliding_window"], hc=cfg["hc_mult"],
        sinkhorn=cfg["hc_sinkhorn_iters"], hc_eps=cfg["hc_eps"], eps=cfg["rms_norm_eps"],
        compress_ratios=ratios, n_hash=n_hash, n_mtp=0,
        route_scale=cfg["routed_scaling_factor"], swiglu_limit=cfg["swiglu_limit"],
        rope_theta=cfg["rope_theta"], compress_rope_theta=cfg["compress_rope_theta"],
        yarn_factor=yarn["factor"], yarn_orig=yarn["original_max_position_embeddings"],
        beta_fast=yarn["beta_fast"], beta_slow=yarn["beta_slow"])


# ----------------------------------------------------------------------------------------------
# the forward pass (spec: docs/dsv4-model.md)

def rms(x, w, eps):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * w if w is not None else y


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis):
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def inv_freqs(g, compress):
    """one frequency per interleaved pair of the rope_dim tail."""
    rd = g["rope_dim"]
    base = g["compress_rope_theta"] if compress else g["rope_theta"]
    f = 1.0 / base ** (np.arange(0, rd, 2) / rd)
    if not compress:
        return f
    # YaRN on the compressed layers (no attention mscale); ramp bounds from the rope dim in use
    def corr(rot):
        return rd * math.log(g["yarn_orig"] / (rot * 2 * math.pi)) / (2 * math.log(base))
    lo = max(math.floor(corr(g["beta_fast"])), 0)
    hi = min(math.ceil(corr(g["beta_slow"])), rd - 1)
    if lo == hi:
        hi += 0.001
    ramp = np.clip((np.arange(rd // 2) - lo) / (hi - lo), 0, 1)   # 0: keep, 1: divide by factor
    return f / g["yarn_factor"] * ramp + f * (1 - ramp)


def rope(x, pos, freqs, sign=1.0):
    """x [..., P, d] (P positions on axis -2 ... broadcast) rotate the tail pairs (2i, 2i+1)."""
    rd = 2 * len(freqs)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * freqs[None, :] * sign   # [P, rd/2]
    c, s = np.cos(ang), np.sin(ang)
    y = x.copy()
    a, b = x[..., -rd::2], x[..., -rd + 1::2]
    # align [P, rd/2] with x's position axis (axis 0) and broadcast over the rest
    expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
    c, s = c[expand], s[expand]
    y[..., -rd::2] = a * c - b * s
    y[..., -rd + 1::2] = a * s + b * c
    return y


def hc_site(X, fn, base, scale, g):
    """X [T, n, D] -> (pre [T,n], post [T,n], comb [T,n,n])."""
    T, n, D = X.shape
    flat = X.reshape(T, n * D)
    m = rms(flat, None, g["eps"]) @ fn.T
    pre = sigmoid(m[:, :n] * scale[0] + base[:n]) + g["hc_eps"]
    post = 2 * sigmoid(m[:, n:2 * n] * scale[1] + base[n:2 * n])
    c = m[:, 2 * n:].reshape(T, n, n) * scale[2] + base[2 * n:].reshape(n, n)
    c = softmax(c, -1) + g["hc_eps"]
    c = c / (c.sum(-2, keepdims=True) + g["hc_eps"])
    for _ in range(g["sinkhorn"] - 1):
        c = c / (c.sum(-1, keepdims=True) + g["hc_eps"])
        c = c / (c.sum(-2, keepdims=True) + g["hc_eps"])
    return pre, post, c


def compress(y, wkv, wgate, ape, norm, m, width, overlap, freqs, g):
    """Entries of the compressor (all closed windows of the T tokens): [N, width]."""
    T = y.shape[0]
    N = T // m
    kv = (y @ wkv.T)[: N * m].reshape(N, m, -1)
    z = (y @ wgate.T)[: N * m].reshape(N, m, -1) + ape[None]
    if overlap:         # CSA: slots = previous window's first halves ++ this window's second
        kvs = np.concatenate([np.zeros((N, m, width)), kv[:, :, width:]], axis=1)
        zs = np.concatenate([np.full((N, m, width), -np.inf), z[:, :, width:]], axis=1)
        kvs[1:, :m] = kv[:-1, :, :width]
        zs[1:, :m] = z[:-1, :, :width]
    else:
        kvs, zs = kv, z
    ent = (softmax(zs, 1) * kvs).sum(1)
    ent = rms(ent, norm, g["eps"])
    return rope(ent, np.arange(N) * m, freqs)


def attention(y, W, p, ratio, g, rec, i, tokens_pos):
    T = y.shape[0]
    H, c, eps = g["n_heads"], g["head_dim"], g["eps"]
    fr = inv_freqs(g, compress=ratio > 0)
    pos = tokens_pos
    qr = rms(y @ W[p + "attn.wq_a"].T, W[p + "attn.q_norm"], eps)
    q = (qr @ W[p + "attn.wq_b"].T).reshape(T, H, c)
    q = rope(rms(q, None, eps), pos, fr)
    kv = rope(rms(y @ W[p + "attn.wkv"].T, W[p + "attn.kv_norm"], eps), pos, fr)   # [T, c]
    # window: keys s with t - window < s <= t
    s_idx = np.arange(T)
    win = (s_idx[None, :] <= pos[:, None]) & (s_idx[None, :] > pos[:, None] - g["window"])
    keys = kv
    mask = win
    if ratio:
        ent = compress(y, W[p + "attn.compressor.wkv"], W[p + "attn.compressor.wgate"],
                       W[p + "attn.compressor.ape"], W[p + "attn.compressor.norm"], ratio, c,
                       ratio == 4, fr, g)
        rec[f"compressed.L{i}.kv"] = ent
        N = ent.shape[0]
        vis = np.arange(N)[None, :] < ((pos + 1) // ratio)[:, None]                   # [T, N]
        if ratio == 4:
            Ic, IH, k = g["index_head_dim"], g["index_heads"], g["index_topk"]
            ik = compress(y, W[p + "attn.indexer.compressor.wkv"],
                          W[p + "attn.indexer.compressor.wgate"],
                          W[p + "attn.indexer.compressor.ape"],
                          W[p + "attn.indexer.compressor.norm"], 4, Ic, True, fr, g)
            rec[f"compressed.L{i}.index_kv"] = ik
            qi = rope((qr @ W[p + "attn.indexer.wq_b"].T).reshape(T, IH, Ic), pos, fr)
            w = (y @ W[p + "attn.indexer.weights_proj"].T) * Ic ** -0.5 * IH ** -0.5      # [T, IH]
            sc = np.einsum("th,ths->ts", w, np.maximum(np.einsum("thd,sd->ths", qi, ik), 0))
            sc = np.where(vis, sc, -np.inf)
            sel = np.zeros_like(vis)
            picks = np.full((T, k), -1, dtype=np.int64)
            for t in range(T):
                nv = int(vis[t].sum())
                order = np.argsort(-sc[t], kind="stable")[: min(k, nv)]
                sel[t, order] = True
                picks[t, : len(order)] = order
            rec[f"topk.L{i}.indexer"] = picks
            vis = sel
        keys = np.concatenate([kv, ent], axis=0)
        mask = np.concatenate([win, vis], axis=1)
    logit = np.einsum("thd,sd->ths", q, keys) * c ** -0.5
    logit = np.where(mask[:, None, :], logit, -np.inf)
    sink = W[p + "attn.attn_sink"]                                               # [H]
    mx = np.maximum(logit.max(-1), sink[None, :])
    e = np.exp(logit - mx[..., None])
    den = e.sum(-1) + np.exp(sink[None, :] - mx)
    o = np.einsum("ths,sd->thd", e / den[..., None], keys)
    o = rope(o, pos, fr, sign=-1.0)
    G, ol = g["o_groups"], g["o_lora"]
    og = o.reshape(T, G, H // G * c)
    wo_a = W[p + "attn.wo_a"].reshape(G, ol, H // G * c)
    mid = np.einsum("tgi,goi->tgo", og, wo_a).reshape(T, G * ol)
    return mid @ W[p + "attn.wo_b"].T


def moe(y, W, p, is_hash, tokens, g, rec, i):
    T = y.shape[0]
    k, lim = g["n_active"], g["swiglu_limit"]
    logits = y @ W[p + "ffn.gate"].T
    scores = np.sqrt(np.logaddexp(0, logits))
    if is_hash:
        idx = W[p + "ffn.gate.tid2eid"][tokens].astype(np.int64)
    else:
        b = scores + W[p + "ffn.gate.bias"]
        idx = np.argsort(-b, axis=1, kind="stable")[:, :k]
        rec[f"topk.L{i}.router"] = np.sort(idx, axis=1)
    wts = np.take_along_axis(scores, idx, 1)
    wts = wts / wts.sum(1, keepdims=True) * g["route_scale"]

    def expert(x, w1, w2, w3):
        gt = np.minimum(x @ w1.T, lim)
        up = np.clip(x @ w3.T, -lim, lim)
        return (gt / (1 + np.exp(-gt)) * up) @ w2.T

    out = expert(y, W[p + "ffn.shared_experts.w1"], W[p + "ffn.shared_experts.w2"],
                 W[p + "ffn.shared_experts.w3"])
    for e in range(g["n_experts"]):
        rows, slot = np.nonzero(idx == e)
        if len(rows):
            pe = p + f"ffn.experts.{e}."
            out[rows] += wts[rows, slot, None] * expert(y[rows], W[pe + "w1"], W[pe + "w2"],
                                                         W[pe + "w3"])
    return out


def forward(W, g, tokens):
    rec = {}
    T, n = len(tokens), g["hc"]
    pos = np.arange(T)
    h = W["embed"][tokens]
    rec["embed"] = h
    X = np.repeat(h[:, None, :], n, axis=1)
    for i in range(g["n_layers"]):
        p = f"layers.{i}."
        pre, post, comb = hc_site(X, W[p + "hc_attn_fn"], W[p + "hc_attn_base"],
                                  W[p + "hc_attn_scale"], g)
        y = rms(np.einsum("tj,tjd->td", pre, X), W[p + "attn_norm"], g["eps"])
        rec[f"hidden.L{i}.attn_in"] = y
        a = attention(y, W, p, g["compress_ratios"][i], g, rec, i, pos)
        rec[f"hidden.L{i}.attn_out"] = a
        X = post[:, :, None] * a[:, None, :] + np.einsum("tjk,tjd->tkd", comb, X)
        pre, post, comb = hc_site(X, W[p + "hc_ffn_fn"], W[p + "hc_ffn_base"],
                                  W[p + "hc_ffn_scale"], g)
        y = rms(np.einsum("tj,tjd->td", pre, X), W[p + "ffn_norm"], g["eps"])
        rec[f"hidden.L{i}.ffn_in"] = y
        f = moe(y, W, p, i < g["n_hash"], tokens, g, rec, i)
        rec[f"hidden.L{i}.ffn_out"] = f
        X = post[:, :, None] * f[:, None, :] + np.einsum("tjk,tjd->tkd", comb, X)
        rec[f"hidden.L{i}.streams"] = X
    flat = rms(X.reshape(T, -1), None, g["eps"])
    pre = sigmoid(flat @ W["hc_head_fn"].T * W["hc_head_scale"][0] + W["hc_head_base"]) + g["hc_eps"]
    y = np.einsum("tj,tjd->td", pre, X)
    rec["hidden.hc_head"] = y
    y = rms(y, W["norm"], g["eps"])
    rec["hidden.final"] = y
    return y @ W["head"].T, rec


# ----------------------------------------------------------------------------------------------
# MTP: transcribed from the OFFICIAL inference/model.py (class MTPBlock, whose forward is
#     e = self.embed(input_ids); e = self.enorm(e); x = self.hnorm(x)
#     x = self.e_proj(e).unsqueeze(2) + self.h_proj(x)
#     x = super().forward(x, start_pos, input_ids)          # Block.forward: hc_pre/attn/hc_post,
#                                                           #   hc_pre/ffn/hc_post
#     logits = self.head(x, self.hc_head_fn, self.hc_head_scale, self.hc_head_base, self.norm)
# with ParallelHead.hc_head: pre = sigmoid(mixes * hc_scale + hc_base) + hc_eps, then norm and
# the shared head weight) -- not from the C code. transformers has no MTP module, so this is the
# only oracle. Layer index of block j: n_layers + j (ratio compress_ratios[n_layers + j], never
# hash-routed: layer_id >= n_hash_layers). Inputs: X = the main model's n streams after the last
# layer at positions 0 .. T-2, input_ids = tokens 1 .. T-1 (the token after each position),
# start_pos 0 (position t of the block = position t of the main stream it reads). Row t of the
# result: logits for the token at t + 2. Exact arithmetic (float64), no faithful roundings.

def mtp_forward(W, g, X, tokens, j=0):
    """X [T, n, D] main streams, tokens [T] (each one position after X's) -> logits [T, V], rec."""
    rec = {}
    i = g["n_layers"] + j
    p = f"mtp.{j}."
    T, n = X.shape[0], g["hc"]
    pos = np.arange(T)
    e = rms(W["embed"][tokens], W[p + "enorm"], g["eps"])                       # [T, D]
    x = rms(X, W[p + "hnorm"], g["eps"])                                          # [T, n, D]
    X = (e @ W[p + "e_proj"].T)[:, None, :] + x @ W[p + "h_proj"].T               # [T, n, D]
    # Block.forward (the same Block class as the main layers)
    pre, post, comb = hc_site(X, W[p + "hc_attn_fn"], W[p + "hc_attn_base"], W[p + "hc_attn_scale"], g)
    y = rms(np.einsum("tj,tjd->td", pre, X), W[p + "attn_norm"], g["eps"])
    rec[f"hidden.L{i}.attn_in"] = y
    a = attention(y, W, p, g["compress_ratios"][i], g, rec, i, pos)
    rec[f"hidden.L{i}.attn_out"] = a
    X = post[:, :, None] * a[:, None, :] + np.einsum("tjk,tjd->tkd", comb, X)
    pre, post, comb = hc_site(X, W[p + "hc_ffn_fn"], W[p + "hc_ffn_base"], W[p + "hc_ffn_scale"], g)
    y = rms(np.einsum("tj,tjd->td", pre, X), W[p + "ffn_norm"], g["eps"])
    rec[f"hidden.L{i}.ffn_in"] = y
    f = moe(y, W, p, False, tokens, g, rec, i)
    rec[f"hidden.L{i}.ffn_out"] = f
    X = post[:, :, None] * f[:, None, :] + np.einsum("tjk,tjd->tkd", comb, X)
    rec[f"hidden.L{i}.streams"] = X
    # self.head(x, self.hc_head_fn, ..., self.norm): the block's own collapse and norm
    flat = rms(X.reshape(T, -1), None, g["eps"])
    pre = sigmoid(flat @ W[p + "hc_head_fn"].T * W[p + "hc_head_scale"][0] + W[p + "hc_head_base"]) \
        + g["hc_eps"]
    y = np.einsum("tj,tjd->td", pre, X)
    rec["mtp.hc_head"] = y
    y = rms(y, W[p + "norm"], g["eps"])
    rec["mtp.final"] = y
    return y @ W["head"].T, rec


def router_margin(W, g, y, p, is_hash):
    """Smallest gap between the k-th and (k+1)-th biased router score over the rows of y: how
    far a float32 implementation is from choosing another expert set."""
    if is_hash:
        return math.inf
    sc = np.sqrt(np.logaddexp(0, y @ W[p + "ffn.gate"].T)) + W[p + "ffn.gate.bias"]
    s = -np.sort(-sc, axis=1)
    k = g["n_active"]
    return float((s[:, k - 1] - s[:, k]).min()) if s.shape[1] > k else math.inf


def mtp_golden(fixture, tokens=None, seed=7, length=136):
    """Computes (and with tokens=None, first draws) the MTP golden of an official-layout
    checkpoint fixture/model with mtp.0.*: writes fixture/mtp_golden.safetensors."""
    import make_checkpoints as mc
    mdir = os.path.join(fixture, "model")
    with open(os.path.join(mdir, "config.json")) as f:
        cfg = json.load(f)
    W, g = load_weights(mdir, cfg, with_mtp=True)
    assert g["n_mtp"] >= 1, "no MTP block in " + mdir
    if tokens is None:
        tokens = np.random.default_rng(seed).integers(0, g["vocab"], length).astype(np.int64)
    main_logits, rec = forward(W, g, tokens)
    X = rec[f"hidden.L{g['n_layers'] - 1}.streams"]
    logits, mrec = mtp_forward(W, g, X[:-1], tokens[1:])
    L = g["n_layers"]
    margins = {f"L{i}": router_margin(W, g, rec[f"hidden.L{i}.ffn_in"], f"layers.{i}.", i < g["n_hash"])
               for i in range(L)}
    margins["mtp"] = router_margin(W, g, mrec[f"hidden.L{L}.ffn_in"], "mtp.0.", False)
    t = [("tokens", "I64", [len(tokens)], tokens.astype(np.int64).tobytes()),
         ("main_logits", "F32", list(main_logits.shape), main_logits.astype(np.float32).tobytes()),
         ("mtp_logits", "F32", list(logits.shape), logits.astype(np.float32).tobytes())]
    for k in ("mtp.hc_head", "mtp.final", f"hidden.L{L}.attn_out", f"hidden.L{L}.ffn_out"):
        t.append((k, "F32", list(mrec[k].shape), mrec[k].astype(np.float32).tobytes()))
    meta = {"format": "pt", "content": "dsv4 MTP golden: tools/golden_check.py (numpy float64 "
            "transcription of the official MTPBlock)",
            "router_margins": json.dumps(margins)}
    mc.write_st(os.path.join(fixture, "mtp_golden.safetensors"), t, meta)
    rng = logits.max(1) - logits.min(1)
    print(f"{os.path.basename(os.path.normpath(fixture))}: MTP logits [{logits.shape[0]}, "
          f"{logits.shape[1]}], range {rng.min():.3g}..{rng.max():.3g}, argmax "
          f"{logits.argmax(1).tolist()}; smallest router margins {margins}")
    return logits


def check_mtp(fixture):
    """Recomputes the MTP golden from the checkpoint and compares with the stored one."""
    gold = {k: plain(*v) for k, v in read_st(os.path.join(fixture, "mtp_golden.safetensors")).items()}
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(os.path.abspath(os.path.join(fixture, "model")), os.path.join(tmp, "model"))
        logits = mtp_golden(tmp, tokens=gold["tokens"])
    ref = gold["mtp_logits"]
    d = (np.abs(logits - ref).max(1) / (ref.max(1) - ref.min(1))).max()
    print(f"  stored MTP golden vs recomputed: max |d|/range {d:.3g}")
    return d < 1e-6


# ----------------------------------------------------------------------------------------------

def check(fixture):
    mdir = os.path.join(fixture, "model")
    with open(os.path.join(mdir, "config.json")) as f:
        cfg = json.load(f)
    W, g = load_weights(mdir, cfg)
    gold = {k: plain(*v) if v[0] in ("F32", "I64") else None
            for k, v in read_st(os.path.join(fixture, "golden.safetensors")).items()}
    tokens = gold["tokens"]
    logits, rec = forward(W, g, tokens)
    ref = gold["logits"]
    rng = ref.max(1) - ref.min(1)
    d = np.abs(logits - ref).max(1) / rng
    ok = True
    name = os.path.basename(os.path.normpath(fixture))
    print(f"{name}: logits max |d|/range {d.max():.3g} (pos {int(d.argmax())}); "
          f"cached golden vs ours {(np.abs(logits - gold['logits_cached']).max(1) / rng).max():.3g}")
    if d.max() > 1e-4:
        ok = False
    # stored checkpoints in forward order
    for k in [k for k in rec if k in gold]:
        a, b = rec[k], gold[k]
        if b.dtype == np.int64:
            if k.startswith("topk") and "indexer" in k:
                same = all(set(a[t][a[t] >= 0]) == set(b[t][b[t] >= 0]) for t in range(len(a)))
            else:
                same = np.array_equal(a, b)
            ok = ok and same
            print(f"  {k:28s} {'same sets' if same else 'top-k sets differ   <-- differs'}")
            continue
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
        flag = "" if err < 1e-4 else "   <-- differs"
        if flag:
            ok = False
        print(f"  {k:28s} max|d|/max|golden| {err:.2e}{flag}")
    return ok


def main(argv):
    if argv[:1] in (["--mtp-write"], ["--mtp"]):   # MTP goldens (official-layout fixtures)
        if argv[0] == "--mtp-write":
            for d in argv[1:]:
                mtp_golden(d)
            return 0
        bad = [d for d in argv[1:] if not check_mtp(d)]
        return 1 if bad else 0
    dirs = argv or sorted(os.path.join(DEFAULT_ROOT, d) for d in os.listdir(DEFAULT_ROOT)
                          if os.path.exists(os.path.join(DEFAULT_ROOT, d, "golden.safetensors")))
    bad = [d for d in dirs if not check(d)]
    print(f"{len(dirs) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
