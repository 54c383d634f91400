#!/usr/bin/env python3
"""make_faithful_goldens.py GOLDENS_DIR [--only NAME ...] [--device cpu|cuda] [--compare-device DEV]

Faithful-mode goldens (issue 4): the same transformers 5.17 DeepseekV4ForCausalLM, on the same
fixture weights and prompts as tools/make_goldens.py, with the official DeepSeek-V4 inference
reference's roundings inserted at every place docs/numeric-modes.md lists. The HF modules'
forward functions are replaced (class-level monkeypatch, inside a context manager) by versions
that call the same submodules and parameters with the roundings added; the model is still
float32, and "bf16" / "e4m3" / "e2m1" mean a value passed through torch's bfloat16 /
float8_e4m3fn casts (e2m1: round-half-even formula, torch 2.11 cannot cast into float4) and back.

Writes GOLDENS_DIR/<name>/faithful.safetensors (+ faithful.json) next to the exact golden:
`logits_faithful` [T, V] (stateless forward on the prompt), `greedy_faithful` [G] (greedy by
repeated stateless forwards), `greedy_logits_faithful` [G, V], and the per-layer intermediates
(bf16-valued, stored as BF16). Format and rationale: tests/fixtures/goldens/README.md.

    python3 tools/make_faithful_goldens.py tests/fixtures/goldens --compare-device cuda

(--compare-device recomputes the prompt logits there and records the difference: the noise
floor of two correct implementations of the same roundings.)
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_checkpoints as mc  # noqa: E402
import make_goldens as mg  # noqa: E402

import transformers  # noqa: E402
from transformers import DeepseekV4ForCausalLM  # noqa: E402
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as hfm  # noqa: E402

FIXTURES = ["mix", "hd512-fp8"]   # small on disk; hd512 / hd512-nvfp4 are the same geometry
BLOCK = 64                        # sparse_attn_kernel's slots per block

# ----------------------------------------------------------------------------------------------
# roundings (bit-exact with src/model/quant_sim.c: see docs/numeric-modes.md)

F32_INV448 = torch.tensor(1.0 / 448.0, dtype=torch.float32)
F32_INV6 = torch.tensor(1.0 / 6.0, dtype=torch.float32)


def bf(x):
    """f32 -> bf16 -> f32 (round to nearest even)."""
    return x.to(torch.bfloat16).float()


def _pow2_ceil_log2(y):
    """2^ceil(log2 y) read off the f32 bits (fast_log2_ceil / fast_pow2 of kernel.py)."""
    bits = y.contiguous().view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    return torch.exp2(e.to(torch.float32))


def _blocks(x, block):
    n = x.shape[-1]
    pad = (-n) % block
    xp = F.pad(x, (0, pad)) if pad else x
    return xp.reshape(*x.shape[:-1], -1, block), n


def act_quant(x, block):
    """act_quant(x, block, 'ue8m0') in place: bf16 input, e4m3 with power-of-two scales."""
    xb, n = _blocks(bf(x), block)
    amax = xb.abs().amax(-1, keepdim=True)
    s = _pow2_ceil_log2(torch.clamp(amax, min=1e-4) * F32_INV448.to(x.device))
    q = torch.clamp(xb / s, -448.0, 448.0).to(torch.float8_e4m3fn).float() * s
    return bf(q.reshape(*x.shape[:-1], -1)[..., :n])


def round_e2m1(a):
    """|a| <= 6 -> nearest of {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to even (sign kept)."""
    m = a.abs()
    q = torch.where(m < 2, torch.round(m * 2) / 2,
                    torch.where(m < 4, torch.round(m), torch.round(m / 2) * 2))
    return torch.copysign(q, a)


def fp4_act_quant(x, block=32):
    xb, n = _blocks(bf(x), block)
    amax = xb.abs().amax(-1, keepdim=True)
    s = _pow2_ceil_log2(torch.clamp(amax, min=6 * 2.0 ** -126) * F32_INV6.to(x.device))
    q = round_e2m1(torch.clamp(xb / s, -6.0, 6.0)) * s
    return bf(q.reshape(*x.shape[:-1], -1)[..., :n])


def rotate_activation(x):
    """fast_hadamard_transform on bf16 input: f32 butterflies, strides 1, 2, ..., then * n^-0.5."""
    x = bf(x)
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        v = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = v[..., 0, :], v[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return bf(x * torch.tensor(n ** -0.5, dtype=torch.float32, device=x.device))


_linear = F.linear


F64 = [True]   # False: torch's own f32 GEMMs / exps (the noise-floor variant, --noise)


def linear64(x, w, b=None):
    """Every GEMM of the oracle: float64 accumulation, one rounding to f32 (a correctly rounded
    f32 dot product in practice), so the oracle does not depend on the BLAS's summation order
    or blocking (torch's f32 CPU GEMM rounds the tail rows of a call differently, which the
    bf16/FP8 roundings amplify)."""
    if not F64[0]:
        return _linear(x, w, b)
    y = _linear(x.double(), w.double(), None if b is None else b.double())
    return y.float()


def exp64(x):
    """exp of an f32 tensor, computed in float64 and rounded to f32: torch's f32 exp uses SLEEF
    for whole vectors and libm for a tensor's tail, so its bits would depend on tensor sizes."""
    return torch.exp(x.double()).float() if F64[0] else torch.exp(x)


def mm64(eq, *ts):
    if not F64[0]:
        return torch.einsum(eq, *ts)
    return torch.einsum(eq, *(t.double() for t in ts)).float()


def lin_q(x, w):
    """An FP8/FP4-weight Linear: act_quant(x, 128) -> GEMM (f32 accumulation) -> bf16."""
    return bf(F.linear(act_quant(x, 128), w))


def rope(x, cos, sin):
    """HF's interleaved RoPE on the trailing dims of x [..., S, H, D] (cos/sin [1, S, r/2]),
    output bf16."""
    return bf(hfm.apply_rotary_pos_emb(x.transpose(-3, -2), cos, sin).transpose(-3, -2))


# ----------------------------------------------------------------------------------------------
# recording

class Rec:
    on = False
    data = {}


def record(key, t):
    if Rec.on:
        Rec.data[key] = t.detach()[0].float().cpu().clone()


# ----------------------------------------------------------------------------------------------
# the faithful forwards (stateless: past_key_values is None)

def rmsnorm_forward(self, hidden_states):
    """official RMSNorm: f32 arithmetic, f32 weight, output bf16."""
    x = hidden_states.float()
    var = x.double().pow(2).mean(-1, keepdim=True).float()
    x = x * torch.rsqrt(var + self.variance_epsilon)
    return bf(self.weight * x)


def hc_mixes(x, fn, eps):
    """rsqrt-normalised flattened streams times fn (float64, then f32)."""
    flat = x.flatten(start_dim=2).double()
    flat = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + eps)
    return flat, _linear(flat, fn.double())


def hc_forward(self, hidden_streams):
    """mHC site, HF's formulas in float64 rounded to f32 (pre, post, comb), collapse in float64
    -> f32 -> bf16 (hc_pre's y.to(bf16))."""
    hc, e = self.hc_mult, self.hc_eps
    _, mix = hc_mixes(hidden_streams, self.fn, 1e-6 if not hasattr(
        self.input_norm, "eps") else self.input_norm.eps)
    pre_w, post_w, comb_w = mix.split([hc, hc, hc * hc], dim=-1)
    pre_b, post_b, comb_b = self.base.double().split([hc, hc, hc * hc])
    s0, s1, s2 = self.scale.double().unbind(0)
    pre = torch.sigmoid(pre_w * s0 + pre_b) + e
    post = 2 * torch.sigmoid(post_w * s1 + post_b)
    comb = torch.softmax(comb_w.view(*comb_w.shape[:-1], hc, hc) * s2 + comb_b.view(hc, hc),
                         dim=-1) + e
    comb = comb / (comb.sum(dim=-2, keepdim=True) + e)
    for _ in range(self.hc_sinkhorn_iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + e)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + e)
    pre, post, comb = pre.float(), post.float(), comb.float()
    y = (pre.double().unsqueeze(-1) * hidden_streams.double()).sum(dim=2).float()
    return post, comb, bf(y)


def head_forward(self, x):
    _, mix = hc_mixes(x, self.hc_fn, self.input_norm.eps)
    pre = (torch.sigmoid(mix * self.hc_scale.double() + self.hc_base.double()) + self.eps).float()
    y = bf((pre.double().unsqueeze(-1) * x.double()).sum(dim=2).float())   # hc_head: bf16
    record("hidden.hc_head", y)
    return y


def layer_forward(self, hidden_states, input_ids=None, **kwargs):
    i = self.layer_idx
    post, comb, collapsed = self.attn_hc(hidden_states)
    h = self.input_layernorm(collapsed)
    record(f"hidden.L{i}.attn_in", h)
    attn_output, _ = self.self_attn(h, **kwargs)
    record(f"hidden.L{i}.attn_out", attn_output)
    hidden_states = bf(post.unsqueeze(-1) * attn_output.unsqueeze(-2)
                       + mm64("bsjk,bsjd->bskd", comb, hidden_states))           # hc_post
    post, comb, collapsed = self.ffn_hc(hidden_states)
    h = self.post_attention_layernorm(collapsed)
    record(f"hidden.L{i}.ffn_in", h)
    mlp_output = self.mlp(h, input_ids=input_ids)
    record(f"hidden.L{i}.ffn_out", mlp_output)
    return bf(post.unsqueeze(-1) * mlp_output.unsqueeze(-2)
              + mm64("bsjk,bsjd->bskd", comb, hidden_states))


def q_head_norm(q, eps):
    """q *= rsqrt(q.square().mean(-1) + eps) with every op on bf16 tensors (official Attention):
    each op computes in f32 and rounds to bf16; the mean's f32 sum is taken in float64 (torch's
    bf16 reductions on the CPU depend on tensor sizes)."""
    sq = bf(q * q)
    m = bf((sq.double().sum(-1, keepdim=True) / q.shape[-1]).float())
    r = bf(torch.rsqrt(bf(m + eps)))
    return bf(q * r)


def pool(chunk_kv, chunk_gate):
    """f32 softmax pooling over dim 2 (official Compressor), then kv.to(bf16)."""
    e = exp64(chunk_gate - chunk_gate.amax(dim=2, keepdim=True))
    p = e / e.double().sum(dim=2, keepdim=True).float()
    return bf((chunk_kv.double() * p.double()).sum(dim=2).float())


def overlap(chunk_kv, chunk_gate, d):
    b, n, r, _ = chunk_kv.shape
    kv = chunk_kv.new_zeros((b, n, 2 * r, d))
    gate = chunk_gate.new_full((b, n, 2 * r, d), float("-inf"))
    kv[:, :, r:] = chunk_kv[..., d:]
    gate[:, :, r:] = chunk_gate[..., d:]
    if n > 1:
        kv[:, 1:, :r] = chunk_kv[:, :-1, :, :d]
        gate[:, 1:, :r] = chunk_gate[:, :-1, :, :d]
    return kv, gate


def compress(self, hidden_states, with_overlap, d):
    """The compressed entries of one compressor: [1, N, d] after pooling, norm and RoPE (bf16)."""
    m = self.compress_rate
    kv = self.kv_proj(hidden_states)          # f32 weights, f32 GEMM (no act_quant)
    gate = self.gate_proj(hidden_states)
    usable = (kv.shape[1] // m) * m
    n = usable // m
    if n == 0:
        return kv.new_zeros((1, 0, d))
    ckv = kv[:, :usable].view(1, n, m, -1)
    cg = gate[:, :usable].view(1, n, m, -1) + self.position_bias
    if with_overlap:
        ckv, cg = overlap(ckv, cg, d)
    c = self.kv_norm(pool(ckv, cg))           # bf16, RMSNorm -> bf16
    pos = (torch.arange(n, device=c.device) * m).unsqueeze(0)
    cos, sin = self.rotary_emb(c, position_ids=pos, layer_type="compress")
    return rope(c.unsqueeze(-2), cos, sin).squeeze(-2)


def fp8_kv(kv, rd):
    """act_quant(kv[..., :-rd], 64) in place: FP8 on the non-RoPE dims."""
    return torch.cat([act_quant(kv[..., :-rd], 64), kv[..., -rd:]], dim=-1)


def hca_forward(self, hidden_states, q_residual, position_ids, past_key_values, layer_idx):
    assert past_key_values is None, "faithful oracle: stateless only"
    c = fp8_kv(compress(self, hidden_states, False, self.head_dim), self._rd)
    return c.unsqueeze(1), None


def csa_forward(self, hidden_states, q_residual, position_ids, past_key_values, layer_idx):
    assert past_key_values is None, "faithful oracle: stateless only"
    c = fp8_kv(compress(self, hidden_states, True, self.head_dim), self._rd)
    topk = self.indexer(hidden_states, q_residual, position_ids, None, layer_idx)
    return c.unsqueeze(1), topk


def indexer_forward(self, hidden_states, q_residual, position_ids, past_key_values, layer_idx):
    """official Indexer: keys and queries RoPE -> Hadamard -> FP4; bf16 weights and scores;
    top-k by a stable descending sort (ties: lower index first)."""
    S = hidden_states.shape[1]
    nh, d = self.num_heads, self.head_dim
    keys = fp4_act_quant(rotate_activation(compress(self, hidden_states, True, d)))[0]  # [N, d]
    cos, sin = self.rotary_emb(hidden_states, position_ids=position_ids, layer_type="compress")
    q = lin_q(q_residual, self.q_b_proj.weight).view(1, S, nh, d)
    q = fp4_act_quant(rotate_activation(rope(q, cos, sin)))[0]                           # [S, nh, d]
    scale = torch.tensor(d ** -0.5 * nh ** -0.5, dtype=torch.float32, device=q.device)
    w = bf(bf(F.linear(hidden_states, self.scorer.weights_proj.weight))[0] * scale)       # [S, nh]
    N = keys.shape[0]
    k = min(self.index_topk, N)
    if N == 0:
        return torch.zeros((S, 0), dtype=torch.int64, device=q.device)
    sc = bf(mm64("shd,td->sht", q, keys)).relu()
    sc = bf(bf(sc * w.unsqueeze(-1)).double().sum(dim=1).float())                        # [S, N]
    thr = (position_ids[0] + 1) // self.compress_rate
    future = torch.arange(N, device=sc.device)[None, :] >= thr[:, None]
    sc = sc.masked_fill(future, float("-inf"))
    order = torch.sort(sc, dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.where(order >= thr[:, None], torch.full_like(order, -1), order)


def sparse_attn(q, kv, sink, idx, scale):
    """sparse_attn_kernel: q [S, H, c], kv [n, c], idx [S, K] (-1 = empty slot) -> o [S, H, c].
    Slots in blocks of 64 in index order; per block: scores in f32, running max (scores only,
    not the sink), exps in f32 summed unrounded, bf16 exps times V, acc rescaled; at the end the
    sink joins the denominator; o bf16."""
    S, H, c = q.shape
    K = idx.shape[1]
    acc = q.new_zeros((S, H, c))
    ssum = q.new_zeros((S, H))
    mx = q.new_full((S, H), float("-inf"))
    for b0 in range(0, K, BLOCK):
        ib = idx[:, b0:b0 + BLOCK]
        valid = ib >= 0
        kb = kv[ib.clamp(min=0)] * valid.unsqueeze(-1)                 # [S, B, c]
        s = mm64("shc,sbc->shb", q, kb) * scale
        s = s.masked_fill(~valid.unsqueeze(1), float("-inf"))
        m_new = torch.maximum(mx, s.amax(-1))
        alpha = exp64(mx - m_new)
        e = exp64(s - m_new.unsqueeze(-1))
        ssum = ssum * alpha + e.double().sum(-1).float()
        acc = acc * alpha.unsqueeze(-1) + mm64("shb,sbc->shc", bf(e), kb)
        mx = m_new
    ssum = ssum + exp64(sink.float()[None, :] - mx)
    return bf(acc / ssum.unsqueeze(-1))


def slot_indices(S, W, n_win_kv, comp, topk, ratio):
    """official prefill topk_idxs: W window slots (oldest first, -1 padding at the end when
    fewer than W positions exist; min(S, W) of them), then the compressed slots (offset by the
    window kv's length): the indexer's picks in score order, or every entry (HCA) with -1 for
    the invisible ones."""
    t = torch.arange(S)[:, None]
    nw = min(S, W)
    win = (t - W + 1).clamp(min=0) + torch.arange(nw)[None, :]
    win = torch.where(win > t, torch.full_like(win, -1), win)
    if comp is None:
        return win
    if topk is not None:
        ci = torch.where(topk >= 0, topk + n_win_kv, topk)
    else:
        N = comp
        ci = torch.arange(N)[None, :].expand(S, N)
        ci = torch.where(ci >= (t + 1) // ratio, torch.full_like(ci, -1), ci + n_win_kv)
    return torch.cat([win, ci.to(win.dtype)], dim=1)


def attn_forward(self, hidden_states, position_embeddings, position_ids, attention_mask,
                 past_key_values=None, **kwargs):
    assert past_key_values is None, "faithful oracle: stateless only"
    B, S, _ = hidden_states.shape
    assert B == 1
    H, hd, cfg = self.num_heads, self.head_dim, self.config
    cos, sin = position_embeddings[self.rope_layer_type]
    rd = 2 * cos.shape[-1]                                                 # RoPE dims
    h = hidden_states
    qr = self.q_a_norm(lin_q(h, self.q_a_proj.weight))
    q = lin_q(qr, self.q_b_proj.weight).view(B, S, H, hd)
    q = rope(q_head_norm(q, cfg.rms_norm_eps), cos, sin)
    kv = self.kv_norm(lin_q(h, self.kv_proj.weight))                       # [1, S, hd]
    kv = fp8_kv(rope(kv.unsqueeze(-2), cos, sin).squeeze(-2), rd)
    comp, topk, n_comp = None, None, None
    if self.compressor is not None:
        self.compressor._rd = rd
        comp, topk = self.compressor(h, qr, position_ids, None, self.layer_idx)
        comp = comp[:, 0]                                                  # [1, N, hd]
        n_comp = comp.shape[1]
        ratio = self.compressor.compress_rate
        allkv = torch.cat([kv, comp], dim=1)[0]
    else:
        ratio = 0
        allkv = kv[0]
    idx = slot_indices(S, self.sliding_window, S, n_comp, None if topk is None else topk.cpu(),
                       ratio).to(h.device)
    o = sparse_attn(q[0], allkv, self.sinks, idx, self.scaling)           # [S, H, hd]
    o = rope(o.unsqueeze(0), cos, -sin)                                     # inverse RoPE
    grouped = o.reshape(B, S, cfg.o_groups, -1)
    wa = self.o_a_proj.weight.view(cfg.o_groups, -1, grouped.shape[-1])
    z = bf(mm64("bsgd,grd->bsgr", grouped, wa).flatten(2))                   # wo_a: bf16 GEMM
    return lin_q(z, self.o_b_proj.weight), None


def router_weights(self, hidden_states, input_ids=None):
    """HF's router with the scores sqrt(softplus(logits)) in float64 -> f32."""
    flat = hidden_states.reshape(-1, self.hidden_dim)
    logits = linear64(flat, self.weight)
    scores = F.softplus(logits.double()).sqrt().float()
    if input_ids is not None:
        indices = self.tid2eid[input_ids.reshape(-1)].long()
    else:
        indices = torch.topk(scores + self.e_score_correction_bias, self.top_k, dim=-1,
                             sorted=False).indices
    w = scores.gather(1, indices)
    w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return w * self.routed_scaling_factor, indices


def moe_forward(self, hidden_states, input_ids=None):
    """official MoE: routed experts (act_quant, FP4/FP8 GEMM -> bf16, clamp, SwiGLU in f32,
    routing weight before w2, bf16, act_quant, w2 -> bf16) summed in f32 in expert order, then
    the shared expert, then bf16."""
    B, S, D = hidden_states.shape
    x = hidden_states.view(-1, D)
    weights, indices = router_weights(self.gate, hidden_states,
                                      input_ids if self.is_hash else None)
    ex = self.experts
    I = ex.intermediate_dim
    lim = ex.limit
    y = torch.zeros_like(x)

    def swiglu(g, u, wts=None):
        u = torch.clamp(u, min=-lim, max=lim)
        g = torch.clamp(g, max=lim)
        a = (g.double() * torch.sigmoid(g.double())).float() * u
        return a if wts is None else wts * a

    for e in range(ex.num_experts):
        tok, slot = torch.where(indices == e)
        if tok.numel() == 0:
            continue
        xe = x[tok]
        gu = ex.gate_up_proj[e]
        a = swiglu(lin_q(xe, gu[:I]), lin_q(xe, gu[I:]), weights[tok, slot, None])
        y[tok] += lin_q(bf(a), ex.down_proj[e])
    sh = self.shared_experts
    a = swiglu(lin_q(x, sh.gate_proj.weight), lin_q(x, sh.up_proj.weight))
    y += lin_q(bf(a), sh.down_proj.weight)
    return bf(y).view(B, S, D)


@torch.no_grad()
def rotary_forward(self, x, position_ids, layer_type=None):
    """HF's cos/sin of the f32 angles inv_freq * pos, computed in float64 -> f32."""
    inv_freq = getattr(self, f"{layer_type}_inv_freq")
    scaling = getattr(self, f"{layer_type}_attention_scaling")
    freqs = (inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
             @ position_ids[:, None, :].float()).transpose(1, 2)
    return ((freqs.double().cos() * scaling).float(), (freqs.double().sin() * scaling).float())


@contextlib.contextmanager
def faithful(model):
    """Swaps the faithful forwards into the HF classes (and rounds the embedding rows)."""
    patches = [
        (hfm.DeepseekV4RMSNorm, "forward", rmsnorm_forward),
        (hfm.DeepseekV4HyperConnection, "forward", hc_forward),
        (hfm.DeepseekV4HyperHead, "forward", head_forward),
        (hfm.DeepseekV4DecoderLayer, "forward", layer_forward),
        (hfm.DeepseekV4Attention, "forward", attn_forward),
        (hfm.DeepseekV4HCACompressor, "forward", hca_forward),
        (hfm.DeepseekV4CSACompressor, "forward", csa_forward),
        (hfm.DeepseekV4Indexer, "forward", indexer_forward),
        (hfm.DeepseekV4SparseMoeBlock, "forward", moe_forward),
        (hfm.DeepseekV4RotaryEmbedding, "forward", rotary_forward),
    ]
    saved = [(c, n, c.__dict__[n]) for c, n, _ in patches]
    for c, n, f in patches:
        setattr(c, n, f)
    F.linear = linear64                       # every nn.Linear / F.linear call of the model

    def emb_hook(mod, args, out):
        out = bf(out)
        record("embed", out)
        return out

    def norm_hook(mod, args, out):
        record("hidden.final", out)

    hs = [model.model.embed_tokens.register_forward_hook(emb_hook),
          model.model.norm.register_forward_hook(norm_hook)]
    try:
        yield
    finally:
        for c, n, f in saved:
            setattr(c, n, f)
        F.linear = _linear
        for h in hs:
            h.remove()


def stateless(model, ids, rec=False):
    Rec.on, Rec.data = rec, {}
    try:
        with torch.no_grad(), faithful(model):
            out = model(input_ids=ids[None], use_cache=False)
    finally:
        Rec.on = False
    return out.logits[0].float().cpu()


# ----------------------------------------------------------------------------------------------

def build_group(device):
    """{fixture name: model} for the fixtures, with the exact weights of make_goldens.py."""
    out = {}
    for base, g in mg.MODELS.items():
        names = [n for n in FIXTURES if n == base or mg.QUANT.get(n, ("",))[0] == base]
        if not names:
            continue
        model = mg.build(g, "cpu")
        for name in names:
            if name == base:
                out[name] = (model, g)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                refs, _ = mg.write_quantised(model, g, mg.QUANT[name][1], os.path.join(tmp, "m"))
            q = DeepseekV4ForCausalLM(mg.hf_config(g)).float().eval()
            q.load_state_dict(model.state_dict())
            mg.load_values(q, g, refs)
            out[name] = (q, g)
    return {k: (m.to(device), g) for k, (m, g) in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("goldens")
    ap.add_argument("--only", action="append", choices=FIXTURES)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compare-device", default=None)
    a = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    device = torch.device(a.device)
    models = build_group(device)
    for name in a.only or FIXTURES:
        model, g = models[name]
        root = os.path.join(a.goldens, name)
        ex = load_file(os.path.join(root, "golden.safetensors"))
        tokens = ex["tokens"].to(torch.int64)
        T, G, V = g["T"], g["G"], g["vocab"]
        # the model is the golden's: its exact-mode logits reproduce golden.safetensors
        with torch.no_grad():
            lx = model(input_ids=tokens[None].to(device), use_cache=False).logits[0].float().cpu()
        dx = (lx - ex["logits"]).abs().max().item()
        assert dx < 1e-3, f"{name}: rebuilt model's exact logits differ from the golden by {dx}"

        logits = stateless(model, tokens.to(device), rec=True)
        inter = {k: v for k, v in Rec.data.items() if not k.startswith("_")}
        seq = tokens.clone()
        gen, step_rows = [], []
        for _ in range(G):
            row = stateless(model, seq.to(device))[-1]
            step_rows.append(row)
            tok = int(torch.argmax(row))
            gen.append(tok)
            seq = torch.cat([seq, torch.tensor([tok])])
        gen = torch.tensor(gen, dtype=torch.int64)
        full = stateless(model, torch.cat([tokens, gen[:-1]]).to(device))
        glog = full[T - 1:]
        assert torch.equal(glog.argmax(-1), gen), f"{name}: greedy not reproduced by one call"
        d_steps = (torch.stack(step_rows) - glog).abs().max().item()
        d_prompt = (full[:T] - logits).abs().max().item()
        rng_row = logits.max(-1).values - logits.min(-1).values
        top2 = torch.topk(glog, 2, dim=-1).values
        gap = (top2[:, 0] - top2[:, 1]) / (glog.max(-1).values - glog.min(-1).values)
        ptop2 = torch.topk(logits, 2, dim=-1).values
        pgap = (ptop2[:, 0] - ptop2[:, 1]) / rng_row
        meta = {
            "name": name, "T": T, "G": G, "device": str(device) if device.type == "cpu"
            else torch.cuda.get_device_name(0),
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                         "python": platform.python_version(), "numpy": np.__version__},
            "exact_rebuild_max_abs": dx,
            "vs_exact": {"max_abs_rel_to_range": float(((logits - ex["logits"]).abs().max(-1)
                                                        .values / rng_row).max()),
                         "prompt_argmax_agree": int((logits.argmax(-1) == ex["logits"]
                                                     .argmax(-1)).sum()),
                         "greedy_same_prefix": int(next((i for i in range(G)
                                                         if gen[i] != ex["greedy"][i]), G))},
            "greedy_steps_vs_one_call_max_abs": d_steps,
            "prompt_in_long_call_vs_prompt_call_max_abs": d_prompt,
            "greedy_min_top2_gap_rel": float(gap.min()),
            "greedy_min_top2_gap_step": int(gap.argmin()),
            "prompt_min_top2_gap_rel": float(pgap.min()),
        }
        # noise floor: the same roundings with torch's f32 GEMMs and exps (another summation
        # order): how far two correct implementations land apart (see the README)
        F64[0] = False
        try:
            ln = stateless(model, tokens.to(device))
            gn = stateless(model, torch.cat([tokens, gen[:-1]]).to(device))[T - 1:]
        finally:
            F64[0] = True
        en = (ln - logits).abs().max(-1).values / rng_row
        eg = (gn - glog).abs().max(-1).values / (glog.max(-1).values - glog.min(-1).values)
        meta["noise_floor"] = {
            "what": "f32-GEMM/exp variant of this oracle vs this oracle, per-position max |d| "
                    "/ logit range",
            "median": float(en.median()), "p90": float(en.quantile(0.9)), "max": float(en.max()),
            "argmax_agree": int((ln.argmax(-1) == logits.argmax(-1)).sum()),
            "greedy_rows_median": float(eg.median()), "greedy_rows_max": float(eg.max()),
            "greedy_rows_argmax_agree": int((gn.argmax(-1) == gen).sum())}
        if a.compare_device:
            m2 = model.to(a.compare_device)
            l2 = stateless(m2, tokens.to(a.compare_device))
            model.to(device)
            dd = (l2 - logits).abs().max(-1).values / rng_row
            meta["compare_device"] = {
                "device": a.compare_device, "max_abs_rel_to_range": float(dd.max()),
                "per_pos_rel_to_range_p50_p99": [float(dd.quantile(0.5)), float(dd.quantile(0.99))],
                "argmax_agree": int((l2.argmax(-1) == logits.argmax(-1)).sum())}
        t = {"logits_faithful": logits, "greedy_faithful": gen, "greedy_logits_faithful": glog}
        for k, v in inter.items():
            t[k + ".faithful"] = v.to(torch.bfloat16)
        assert all(torch.equal(v.float(), inter[k]) for k, v in
                   ((k, t[k + ".faithful"]) for k in inter)), "an intermediate is not bf16-exact"
        t = {k: v.contiguous() for k, v in t.items()}
        save_file(t, os.path.join(root, "faithful.safetensors"),
                  metadata={"format": "dsv4-golden-faithful", "version": "1"})
        meta["tensors"] = {k: {"dtype": str(v.dtype).replace("torch.", ""),
                               "shape": list(v.shape)} for k, v in sorted(t.items())}
        mc.write_json(os.path.join(root, "faithful.json"), meta)
        print(f"{name}: faithful vs exact {meta['vs_exact']}, greedy {gen.tolist()[:8]}..., "
              f"steps-vs-call {d_steps:.3g}, prompt-in-long {d_prompt:.3g}, min top2 gap "
              f"{gap.min():.3g} (greedy) {pgap.min():.3g} (prompt), noise floor "
              f"{meta['noise_floor']}"
              + (f", {a.compare_device}: {meta['compare_device']}" if a.compare_device else ""),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
