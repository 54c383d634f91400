#!/usr/bin/env python3
"""make_checkpoints.py OUTDIR [--only NAME ...]

Writes synthetic DeepSeek-V4 checkpoints in every layout the loader must read (see
docs/checkpoint-layouts.md), with tiny dimensions but the real tensor names, dtypes and block
layouts, plus one reference file per checkpoint:

  tiny-official       hub layout: FP8 (E8M0 block scales) + MXFP4 routed experts, MTP block, 3 shards
  tiny-official-base  Base layout: FP8 everywhere incl. routed experts, F32 block scales,
                      only inference/config.json (official key spelling), one file, no MTP
  tiny-nvfp4          NVIDIA NVFP4 routed experts (main layers), MTP experts MXFP4, 2 shards
  tiny-hf             what transformers 5.17 save_pretrained writes (F32), one file
  tiny-hf-modules     transformers module names, stacked experts, BF16 (+F32 where HF keeps F32), 2 shards
  flash-sparse        full DeepSeek-V4-Flash geometry, official layout, real headers, data never written
  pro-sparse          full DeepSeek-V4-Pro geometry, likewise (~865 GB logical, sparse on disk)
  corrupt             broken copies of tiny-official + corrupt/cases.json

OUTDIR/<name>.ref.safetensors holds, for every tiny checkpoint, one F32 tensor per canonical weight
name (tid2eid: I64) decoded back from the bytes stored (float64 arithmetic, ml_dtypes decoding,
then rounded to F32). Matrices are [rows, cols], vectors [len], scalars [1].

Everything is deterministic (numpy default_rng seeded from 1234 + crc32 of the canonical name).
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys
import zlib

import ml_dtypes
import numpy as np

E4M3 = ml_dtypes.float8_e4m3fn
E8M0 = ml_dtypes.float8_e8m0fnu
E2M1 = ml_dtypes.float4_e2m1fn
BF16 = ml_dtypes.bfloat16

DTYPE_SIZE = {"F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BF16": 2, "F16": 2, "F32": 4,
              "I32": 4, "I64": 8, "F8_E5M2": 1}

# ----------------------------------------------------------------------------------------------
# geometries

TINY = dict(
    name="tiny", vocab=256, dim=96, n_layers=4, n_heads=4, head_dim=64, rope_dim=16,
    q_lora=144, o_groups=2, o_lora=40, n_experts=4, n_active=2, n_shared=1, inter=32,
    index_heads=4, index_head_dim=32, index_topk=4, window=8, hc=4, sinkhorn=20,
    compress_ratios=[0, 4, 128, 4, 0], n_hash=1, n_mtp=1, route_scale=1.5, swiglu_limit=10.0,
)
FLASH = dict(
    name="flash", vocab=129280, dim=4096, n_layers=43, n_heads=64, head_dim=512, rope_dim=64,
    q_lora=1024, o_groups=8, o_lora=1024, n_experts=256, n_active=6, n_shared=1, inter=2048,
    index_heads=64, index_head_dim=128, index_topk=512, window=128, hc=4, sinkhorn=20,
    compress_ratios=[0, 0] + [4, 128] * 20 + [4, 0], n_hash=3, n_mtp=1, route_scale=1.5,
    swiglu_limit=10.0,
)
PRO = dict(
    name="pro", vocab=129280, dim=7168, n_layers=61, n_heads=128, head_dim=512, rope_dim=64,
    q_lora=1536, o_groups=16, o_lora=1024, n_experts=384, n_active=6, n_shared=1, inter=3072,
    index_heads=64, index_head_dim=128, index_topk=1024, window=128, hc=4, sinkhorn=20,
    compress_ratios=[128, 128] + [4, 128] * 29 + [4, 0], n_hash=3, n_mtp=1, route_scale=2.5,
    swiglu_limit=10.0,
)
for _g in (TINY, FLASH, PRO):
    assert len(_g["compress_ratios"]) == _g["n_layers"] + _g["n_mtp"]

# ----------------------------------------------------------------------------------------------
# canonical tensor list (official layout, docs/checkpoint-layouts.md section (a))
#   kind: fp8 (block FP8 linear), expert (routed expert linear), bf16, f32, i64

BARE_LEAVES = ("hc_attn_fn", "hc_attn_base", "hc_attn_scale", "hc_ffn_fn", "hc_ffn_base",
               "hc_ffn_scale", "hc_head_fn", "hc_head_base", "hc_head_scale", "attn_sink", "ape",
               "bias", "tid2eid")


def canonical_specs(g, with_mtp=True):
    """[(canonical, kind, shape)] in a stable order."""
    D, H, c, n = g["dim"], g["n_heads"], g["head_dim"], g["hc"]
    V, ql, go, ol = g["vocab"], g["q_lora"], g["o_groups"], g["o_lora"]
    E, I, k = g["n_experts"], g["inter"], g["n_active"]
    IH, Ic = g["index_heads"], g["index_head_dim"]
    mix = (2 + n) * n
    out = [("embed", "bf16", [V, D]), ("head", "bf16", [V, D]), ("norm", "bf16", [D]),
           ("hc_head_fn", "f32", [n, n * D]), ("hc_head_base", "f32", [n]),
           ("hc_head_scale", "f32", [1])]

    def block(p, ratio, is_hash):
        w = c * (2 if ratio == 4 else 1)
        t = []
        for site in ("attn", "ffn"):
            t += [(p + f"hc_{site}_fn", "f32", [mix, n * D]), (p + f"hc_{site}_base", "f32", [mix]),
                  (p + f"hc_{site}_scale", "f32", [3])]
        t += [(p + "attn_norm", "bf16", [D]), (p + "ffn_norm", "bf16", [D]),
              (p + "attn.wq_a", "fp8", [ql, D]), (p + "attn.q_norm", "bf16", [ql]),
              (p + "attn.wq_b", "fp8", [H * c, ql]), (p + "attn.wkv", "fp8", [c, D]),
              (p + "attn.kv_norm", "bf16", [c]),
              (p + "attn.wo_a", "fp8", [go * ol, H * c // go]),
              (p + "attn.wo_b", "fp8", [D, go * ol]), (p + "attn.attn_sink", "f32", [H])]
        if ratio:
            t += [(p + "attn.compressor.wkv", "bf16", [w, D]),
                  (p + "attn.compressor.wgate", "bf16", [w, D]),
                  (p + "attn.compressor.ape", "f32", [ratio, w]),
                  (p + "attn.compressor.norm", "bf16", [c])]
        if ratio == 4:
            t += [(p + "attn.indexer.wq_b", "fp8", [IH * Ic, ql]),
                  (p + "attn.indexer.weights_proj", "bf16", [IH, D]),
                  (p + "attn.indexer.compressor.wkv", "bf16", [2 * Ic, D]),
                  (p + "attn.indexer.compressor.wgate", "bf16", [2 * Ic, D]),
                  (p + "attn.indexer.compressor.ape", "f32", [4, 2 * Ic]),
                  (p + "attn.indexer.compressor.norm", "bf16", [Ic])]
        t += [(p + "ffn.gate", "bf16", [E, D])]
        t += [(p + "ffn.gate.tid2eid", "i64", [V, k])] if is_hash else [(p + "ffn.gate.bias", "f32", [E])]
        for e in range(E):
            t += [(p + f"ffn.experts.{e}.w1", "expert", [I, D]),
                  (p + f"ffn.experts.{e}.w2", "expert", [D, I]),
                  (p + f"ffn.experts.{e}.w3", "expert", [I, D])]
        t += [(p + "ffn.shared_experts.w1", "fp8", [I, D]), (p + "ffn.shared_experts.w2", "fp8", [D, I]),
              (p + "ffn.shared_experts.w3", "fp8", [I, D])]
        return t

    for i in range(g["n_layers"]):
        out += block(f"layers.{i}.", g["compress_ratios"][i], i < g["n_hash"])
    if with_mtp:
        for j in range(g["n_mtp"]):
            p = f"mtp.{j}."
            out += block(p, g["compress_ratios"][g["n_layers"] + j], False)
            out += [(p + "e_proj", "fp8", [D, D]), (p + "h_proj", "fp8", [D, D]),
                    (p + "enorm", "bf16", [D]), (p + "hnorm", "bf16", [D]), (p + "norm", "bf16", [D]),
                    (p + "hc_head_fn", "f32", [n, n * D]), (p + "hc_head_base", "f32", [n]),
                    (p + "hc_head_scale", "f32", [1])]
    return out


def official_name(canon):
    """canonical -> stored name of the value tensor in the official layout."""
    return canon if canon.rsplit(".", 1)[-1] in BARE_LEAVES else canon + ".weight"


# ----------------------------------------------------------------------------------------------
# values

def rng_for(canon):
    return np.random.default_rng(1234 + zlib.crc32(canon.encode()))


def true_values(canon, kind, shape, g):
    """float64 'master' values (or int64 for tid2eid) for a canonical tensor."""
    rng = rng_for(canon)
    leaf = canon.rsplit(".", 1)[-1]
    if kind == "i64":                      # tid2eid: k distinct experts per token
        V, k = shape
        return np.argsort(rng.random((V, g["n_experts"])), axis=1)[:, :k].astype(np.int64)
    if leaf in ("attn_norm", "ffn_norm", "q_norm", "kv_norm", "norm", "enorm", "hnorm"):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if leaf.endswith("_fn"):
        return 0.05 * rng.standard_normal(shape)
    if leaf.endswith("_base"):
        return 0.5 * rng.standard_normal(shape)
    if leaf.endswith("_scale"):
        return rng.uniform(0.5, 1.5, shape)
    if leaf == "attn_sink":
        return rng.standard_normal(shape)
    if leaf == "ape":
        return 0.5 * rng.standard_normal(shape)
    if leaf == "bias":
        return 0.1 * rng.standard_normal(shape)
    if canon == "embed":
        return rng.standard_normal(shape)
    x = rng.standard_normal(shape) / math.sqrt(shape[-1])
    if kind == "expert" and canon.endswith(".experts.0.w1"):
        x[0, :32] = 0.0                    # an all-zero quantisation block
    return x


# ----------------------------------------------------------------------------------------------
# encoders: each returns ([(stored_suffix, dtype, shape, bytes)], ref_f32)
#   suffix "" = the value tensor's own name; ".scale" etc. appended to the canonical name.

def _pad_to(x, rb, cb):
    r, c = x.shape
    R, C = -(-r // rb) * rb, -(-c // cb) * cb
    p = np.zeros((R, C), dtype=x.dtype)
    p[:r, :c] = x
    return p


def _expand_blocks(s, rb, cb, r, c):
    return np.repeat(np.repeat(s, rb, axis=0), cb, axis=1)[:r, :c]


def enc_bf16(x):
    b = np.asarray(x, dtype=np.float64).astype(BF16).tobytes()
    return [("", "BF16", list(x.shape), b)], dec_plain(b, BF16, x.shape)


def enc_f32(x):
    b = np.asarray(x, dtype=np.float64).astype(np.float32).tobytes()
    return [("", "F32", list(x.shape), b)], dec_plain(b, np.float32, x.shape)


def enc_i64(x):
    b = np.asarray(x, dtype=np.int64).tobytes()
    return [("", "I64", list(x.shape), b)], np.frombuffer(b, dtype=np.int64).reshape(x.shape).copy()


def dec_plain(b, dt, shape):
    return np.frombuffer(b, dtype=dt).reshape(shape).astype(np.float64).astype(np.float32)


def enc_fp8(x, scale_fmt):
    """128x128 block FP8; scale_fmt 'e8m0' (power of two, F8_E8M0) or 'f32' (amax/448, F32)."""
    r, c = x.shape
    nbr, nbc = -(-r // 128), -(-c // 128)
    blocks = _pad_to(x, 128, 128).reshape(nbr, 128, nbc, 128)
    amax = np.abs(blocks).max(axis=(1, 3))
    if scale_fmt == "e8m0":
        e = np.where(amax > 0, np.ceil(np.log2(np.where(amax > 0, amax, 1.0) / 448.0)), 0.0)
        scale = np.exp2(np.clip(e, -127, 127))
        sbytes = scale.astype(E8M0).tobytes()
        sdt = "F8_E8M0"
    else:
        scale = np.where(amax > 0, amax / 448.0, 1.0).astype(np.float32).astype(np.float64)
        sbytes = scale.astype(np.float32).tobytes()
        sdt = "F32"
    y = np.clip(x / _expand_blocks(scale, 128, 128, r, c), -448.0, 448.0)
    wbytes = y.astype(E4M3).tobytes()
    parts = [("", "F8_E4M3", [r, c], wbytes), (".scale", sdt, [nbr, nbc], sbytes)]
    return parts, dec_fp8(wbytes, sbytes, sdt, r, c)


def dec_fp8(wbytes, sbytes, sdt, r, c):
    nbr, nbc = -(-r // 128), -(-c // 128)
    q = np.frombuffer(wbytes, dtype=E4M3).reshape(r, c).astype(np.float64)
    sd = E8M0 if sdt == "F8_E8M0" else np.float32
    s = np.frombuffer(sbytes, dtype=sd).reshape(nbr, nbc).astype(np.float64)
    return (q * _expand_blocks(s, 128, 128, r, c)).astype(np.float32)


def _pack_nibbles(codes):
    """codes uint8 [r, c] (0..15) -> bytes [r, c/2], element 2j in the low nibble."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(packed, r, c):
    p = np.frombuffer(packed, dtype=np.uint8).reshape(r, c // 2)
    codes = np.empty((r, c), dtype=np.uint8)
    codes[:, 0::2] = p & 0x0F
    codes[:, 1::2] = p >> 4
    return codes.view(E2M1).astype(np.float64)       # decoding by ml_dtypes


def enc_mxfp4(x):
    r, c = x.shape
    assert c % 32 == 0, (r, c)
    xb = x.reshape(r, c // 32, 32)
    amax = np.abs(xb).max(axis=2)
    e = np.where(amax > 0, np.ceil(np.log2(np.where(amax > 0, amax, 1.0) / 6.0)), 0.0)
    scale = np.exp2(np.clip(e, -127, 127))
    q = np.clip(xb / scale[:, :, None], -6.0, 6.0).reshape(r, c).astype(E2M1)
    wbytes = _pack_nibbles(q.view(np.uint8) & 0x0F).tobytes()
    sbytes = scale.astype(E8M0).tobytes()
    parts = [("", "I8", [r, c // 2], wbytes), (".scale", "F8_E8M0", [r, c // 32], sbytes)]
    return parts, dec_mxfp4(wbytes, sbytes, r, c)


def dec_mxfp4(wbytes, sbytes, r, c):
    v = _unpack_nibbles(wbytes, r, c)
    s = np.frombuffer(sbytes, dtype=E8M0).reshape(r, c // 32).astype(np.float64)
    return (v * np.repeat(s, 32, axis=1)).astype(np.float32)


def enc_nvfp4(x, canon, scalar_shape):
    r, c = x.shape
    assert c % 16 == 0, (r, c)
    amax_t = float(np.abs(x).max())
    ws2 = np.float32(amax_t / (448.0 * 6.0) if amax_t > 0 else 1.0)
    xb = x.reshape(r, c // 16, 16)
    amax = np.abs(xb).max(axis=2)
    ws = np.clip(amax / 6.0 / float(ws2), 0.0, 448.0).astype(E4M3)
    d = ws.astype(np.float64) * float(ws2)
    safe = np.where(d > 0, d, 1.0)
    q = np.where(d[:, :, None] > 0, np.clip(xb / safe[:, :, None], -6.0, 6.0), 0.0)
    q = q.reshape(r, c).astype(E2M1)
    wbytes = _pack_nibbles(q.view(np.uint8) & 0x0F).tobytes()
    sbytes = ws.tobytes()
    s2bytes = np.array(ws2, dtype=np.float32).reshape(scalar_shape).tobytes()
    in_scale = np.float32(0.01 + 0.001 * (zlib.crc32(canon.encode()) % 97))
    ibytes = np.array(in_scale, dtype=np.float32).reshape(scalar_shape).tobytes()
    parts = [("", "U8", [r, c // 2], wbytes), ("_scale", "F8_E4M3", [r, c // 16], sbytes),
             ("_scale_2", "F32", list(scalar_shape), s2bytes),
             ("input_scale", "F32", list(scalar_shape), ibytes)]
    return parts, dec_nvfp4(wbytes, sbytes, s2bytes, r, c)


def dec_nvfp4(wbytes, sbytes, s2bytes, r, c):
    v = _unpack_nibbles(wbytes, r, c)
    ws = np.frombuffer(sbytes, dtype=E4M3).reshape(r, c // 16).astype(np.float64)
    ws2 = float(np.frombuffer(s2bytes, dtype=np.float32)[0])
    return ((v * np.repeat(ws, 16, axis=1)) * ws2).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# safetensors writing

def st_header(tensors, metadata=None, mutate=None):
    """tensors: [(name, dtype, shape, nbytes)] -> header bytes (length-prefixed, space padded)."""
    hdr = {}
    if metadata is not None:
        hdr["__metadata__"] = metadata
    off = 0
    for name, dt, shape, nb in tensors:
        assert nb == DTYPE_SIZE[dt] * int(np.prod(shape, dtype=np.int64)) or mutate, name
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + nb]}
        off += nb
    if mutate:
        mutate(hdr)
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js, off


def write_st(path, tensors, metadata=None, mutate=None):
    """tensors: [(name, dtype, shape, bytes)]."""
    head, total = st_header([(n, d, s, len(b)) for n, d, s, b in tensors], metadata, mutate)
    with open(path, "wb") as f:
        f.write(head)
        for _, _, _, b in tensors:
            f.write(b)
    return total


def split_shards(tensors, n, size_of):
    total = sum(size_of(t) for t in tensors)
    target = total / n
    shards, cur, acc = [], [], 0
    for t in tensors:
        cur.append(t)
        acc += size_of(t)
        if acc >= target * (len(shards) + 1) and len(shards) < n - 1:
            shards.append(cur)
            cur = []
    shards.append(cur)
    assert len(shards) == n and all(shards)
    return shards


def shard_name(k, n):
    return f"model-{k + 1:05d}-of-{n:05d}.safetensors"


def write_sharded(d, tensors, n, metadata):
    """Writes n shards (n==1: model.safetensors) + index when n > 1, split by bytes."""
    if n == 1:
        write_st(os.path.join(d, "model.safetensors"), tensors, metadata)
        return {"model.safetensors": tensors}
    return write_shards(d, split_shards(tensors, n, lambda t: len(t[3])), metadata)


def write_shards(d, shards, metadata):
    n = len(shards)
    files = {}
    wmap, total = {}, 0
    for k, sh in enumerate(shards):
        fn = shard_name(k, n)
        total += write_st(os.path.join(d, fn), sh, metadata)
        for t in sh:
            wmap[t[0]] = fn
        files[fn] = sh
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": wmap})
    return files


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------------------------
# configs

def hub_config(g, expert_dtype="fp4"):
    """config.json as on the hub (legacy HF keys, like DeepSeek-V4-Flash/config.json)."""
    return {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
        "bos_token_id": 0, "eos_token_id": 1, "vocab_size": g["vocab"],
        "hidden_size": g["dim"], "num_hidden_layers": g["n_layers"],
        "num_attention_heads": g["n_heads"], "num_key_value_heads": 1, "head_dim": g["head_dim"],
        "qk_rope_head_dim": g["rope_dim"], "q_lora_rank": g["q_lora"], "o_groups": g["o_groups"],
        "o_lora_rank": g["o_lora"], "n_routed_experts": g["n_experts"],
        "n_shared_experts": g["n_shared"], "num_experts_per_tok": g["n_active"],
        "moe_intermediate_size": g["inter"], "routed_scaling_factor": g["route_scale"],
        "scoring_func": "sqrtsoftplus", "norm_topk_prob": True, "topk_method": "noaux_tc",
        "swiglu_limit": g["swiglu_limit"], "num_hash_layers": g["n_hash"],
        "sliding_window": g["window"], "compress_ratios": list(g["compress_ratios"]),
        "compress_rope_theta": 160000, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                         "beta_fast": 32, "beta_slow": 1},
        "index_n_heads": g["index_heads"], "index_head_dim": g["index_head_dim"],
        "index_topk": g["index_topk"], "hc_mult": g["hc"], "hc_sinkhorn_iters": g["sinkhorn"],
        "hc_eps": 1e-6, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "max_position_embeddings": 1048576, "num_nextn_predict_layers": g["n_mtp"],
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "expert_dtype": expert_dtype,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
        "transformers_version": "4.57.1",
    }


def inference_config(g):
    """inference/config.json, official key spelling (ModelArgs of inference/model.py)."""
    return {
        "vocab_size": g["vocab"], "dim": g["dim"], "moe_inter_dim": g["inter"],
        "n_layers": g["n_layers"], "n_hash_layers": g["n_hash"], "n_mtp_layers": g["n_mtp"],
        "n_heads": g["n_heads"], "n_routed_experts": g["n_experts"], "n_shared_experts": g["n_shared"],
        "n_activated_experts": g["n_active"], "score_func": "sqrtsoftplus",
        "route_scale": g["route_scale"], "swiglu_limit": g["swiglu_limit"], "q_lora_rank": g["q_lora"],
        "head_dim": g["head_dim"], "rope_head_dim": g["rope_dim"], "norm_eps": 1e-6,
        "o_groups": g["o_groups"], "o_lora_rank": g["o_lora"], "window_size": g["window"],
        "compress_ratios": list(g["compress_ratios"]), "compress_rope_theta": 160000.0,
        "original_seq_len": 65536, "rope_theta": 10000.0, "rope_factor": 16, "beta_fast": 32,
        "beta_slow": 1, "index_n_heads": g["index_heads"], "index_head_dim": g["index_head_dim"],
        "index_topk": g["index_topk"], "hc_mult": g["hc"], "hc_sinkhorn_iters": g["sinkhorn"],
        "hc_eps": 1e-6, "dtype": "fp8", "scale_fmt": None, "scale_dtype": "fp32",
        "expert_dtype": "fp8",
    }


LAYER_TYPE = {0: "sliding_attention", 4: "compressed_sparse_attention",
              128: "heavily_compressed_attention"}


def hf_config(g, dtype):
    """config.json as transformers 5.17 writes it (measured key set)."""
    L = g["n_layers"]
    prf = g["rope_dim"] / g["head_dim"]
    return {
        "architectures": ["DeepseekV4ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0,
        "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
        "compress_rope_theta": 160000.0, "dtype": dtype, "eos_token_id": 1, "hc_eps": 1e-06,
        "hc_mult": g["hc"], "hc_sinkhorn_iters": g["sinkhorn"], "head_dim": g["head_dim"],
        "hidden_act": "silu", "hidden_size": g["dim"], "index_head_dim": g["index_head_dim"],
        "index_n_heads": g["index_heads"], "index_topk": g["index_topk"], "initializer_range": 0.02,
        "layer_types": [LAYER_TYPE[r] for r in g["compress_ratios"][:L]],
        "max_position_embeddings": 1048576, "mlp_bias": False,
        "mlp_layer_types": ["hash_moe" if i < g["n_hash"] else "moe" for i in range(L)],
        "model_type": "deepseek_v4", "moe_intermediate_size": g["inter"],
        "n_routed_experts": g["n_experts"], "n_shared_experts": g["n_shared"], "norm_topk_prob": True,
        "num_attention_heads": g["n_heads"], "num_experts_per_tok": g["n_active"],
        "num_hidden_layers": L, "num_key_value_heads": 1, "num_nextn_predict_layers": 0,
        "o_groups": g["o_groups"], "o_lora_rank": g["o_lora"], "output_router_logits": False,
        "pad_token_id": None, "partial_rotary_factor": prf, "q_lora_rank": g["q_lora"],
        "qk_rope_head_dim": g["rope_dim"], "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "compress": {"attention_factor": 1.0, "beta_fast": 32, "beta_slow": 1, "factor": 16,
                         "original_max_position_embeddings": 65536, "partial_rotary_factor": prf,
                         "rope_theta": 160000.0, "rope_type": "yarn", "type": "yarn"},
            "main": {"partial_rotary_factor": prf, "rope_theta": 10000.0, "rope_type": "default"}},
        "rope_theta": 10000.0, "routed_scaling_factor": g["route_scale"],
        "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "scoring_func": "sqrtsoftplus",
        "sliding_window": g["window"], "swiglu_limit": g["swiglu_limit"],
        "tie_word_embeddings": False, "transformers_version": "5.17.0", "use_cache": True,
        "vocab_size": g["vocab"],
    }


# ----------------------------------------------------------------------------------------------
# transformers names

def hf_saved_name(canon):
    """Name save_pretrained (5.17) writes for a canonical main-model tensor."""
    if canon == "embed":
        return "model.embed_tokens.weight"
    if canon == "head":
        return "head.weight"
    if canon.startswith("hc_head_"):
        return "model.hc_head.hc_" + canon[len("hc_head_"):]
    if canon.endswith(".attn.kv_norm"):
        return "model." + canon[: -len("kv_norm")] + "norm.weight"
    return "model." + official_name(canon)


def hf_module_name(canon):
    """transformers 5.17 module (state_dict) name for a canonical main-model tensor (not experts)."""
    if canon == "embed":
        return "model.embed_tokens.weight"
    if canon == "head":
        return "lm_head.weight"
    if canon == "norm":
        return "model.norm.weight"
    if canon.startswith("hc_head_"):
        return "model.hc_head.hc_" + canon[len("hc_head_"):]
    pre, i, rest = canon.split(".", 2)
    assert pre == "layers"
    p = f"model.layers.{i}."
    for site in ("attn", "ffn"):
        for part in ("fn", "base", "scale"):
            if rest == f"hc_{site}_{part}":
                return p + f"{site}_hc.{part}"
    table = {
        "attn_norm": "input_layernorm.weight", "ffn_norm": "post_attention_layernorm.weight",
        "attn.wq_a": "self_attn.q_a_proj.weight", "attn.q_norm": "self_attn.q_a_norm.weight",
        "attn.wq_b": "self_attn.q_b_proj.weight", "attn.wkv": "self_attn.kv_proj.weight",
        "attn.kv_norm": "self_attn.kv_norm.weight", "attn.wo_a": "self_attn.o_a_proj.weight",
        "attn.wo_b": "self_attn.o_b_proj.weight", "attn.attn_sink": "self_attn.sinks",
        "attn.compressor.wkv": "self_attn.compressor.kv_proj.weight",
        "attn.compressor.wgate": "self_attn.compressor.gate_proj.weight",
        "attn.compressor.ape": "self_attn.compressor.position_bias",
        "attn.compressor.norm": "self_attn.compressor.kv_norm.weight",
        "attn.indexer.wq_b": "self_attn.compressor.indexer.q_b_proj.weight",
        "attn.indexer.weights_proj": "self_attn.compressor.indexer.scorer.weights_proj.weight",
        "attn.indexer.compressor.wkv": "self_attn.compressor.indexer.kv_proj.weight",
        "attn.indexer.compressor.wgate": "self_attn.compressor.indexer.gate_proj.weight",
        "attn.indexer.compressor.ape": "self_attn.compressor.indexer.position_bias",
        "attn.indexer.compressor.norm": "self_attn.compressor.indexer.kv_norm.weight",
        "ffn.gate": "mlp.gate.weight", "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
        "ffn.gate.tid2eid": "mlp.gate.tid2eid",
        "ffn.shared_experts.w1": "mlp.shared_experts.gate_proj.weight",
        "ffn.shared_experts.w2": "mlp.shared_experts.down_proj.weight",
        "ffn.shared_experts.w3": "mlp.shared_experts.up_proj.weight",
    }
    return p + table[rest]


def hf_keeps_f32(canon):
    """_keep_in_fp32_modules_strict of transformers 5.17 (measured on a BF16 load)."""
    leaf = canon.rsplit(".", 1)[-1]
    return (leaf.startswith("hc_") or leaf in ("attn_sink", "ape", "bias", "attn_norm", "ffn_norm",
                                               "q_norm", "kv_norm", "norm"))


# ----------------------------------------------------------------------------------------------
# tiny checkpoints

def encode_official(g, variant, with_mtp):
    """variant: official | base | nvfp4. Returns (tensors [(name,dt,shape,bytes)], refs {canon: arr})."""
    tensors, refs = [], {}
    scale_fmt = "f32" if variant == "base" else "e8m0"
    for canon, kind, shape in canonical_specs(g, with_mtp):
        x = true_values(canon, kind, shape, g)
        stored = official_name(canon)
        if kind == "bf16":
            parts, ref = enc_bf16(x)
        elif kind == "f32":
            parts, ref = enc_f32(x)
        elif kind == "i64":
            parts, ref = enc_i64(x)
        elif kind == "fp8" or (kind == "expert" and variant == "base"):
            parts, ref = enc_fp8(x, scale_fmt)
        elif kind == "expert" and variant == "nvfp4" and canon.startswith("layers."):
            layer = int(canon.split(".")[1])
            parts, ref = enc_nvfp4(x, canon, [1] if layer == g["n_layers"] - 1 else [])
        else:
            parts, ref = enc_mxfp4(x)
        for suffix, dt, shp, b in parts:
            if suffix == "":
                name = stored
            elif suffix == "input_scale":
                name = canon + ".input_scale"
            elif suffix.startswith("_"):
                name = stored + suffix
            else:
                name = canon + suffix
            tensors.append((name, dt, shp, b))
        refs[canon] = ref
    return tensors, refs


def write_ref(path, refs):
    t = []
    for canon, a in refs.items():
        a = np.asarray(a)
        if a.dtype == np.int64:
            t.append((canon, "I64", list(a.shape), a.tobytes()))
        else:
            assert a.dtype == np.float32
            t.append((canon, "F32", list(a.shape), a.tobytes()))
    write_st(path, t, {"format": "pt", "content": "dsv4 reference dequantisation"})


def fresh_dir(d):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


def summary(name, d, tensors, nfiles, refs):
    size = sum(len(t[3]) for t in tensors)
    print(f"{name:20s} {nfiles} file(s) {len(tensors):5d} tensors {size / 1e6:8.3f} MB data, "
          f"{len(refs)} canonical refs -> {d}")


def make_tiny_official(out):
    g = TINY
    d = os.path.join(out, "tiny-official")
    fresh_dir(d)
    tensors, refs = encode_official(g, "official", True)
    # Shard 1 holds the tensors the corrupt/ cases edit (kept small, so each broken copy is small);
    # shard 3 holds the MTP block, shard 2 the rest. Layers thus straddle shards, as on the hub.
    first = ("layers.0.attn.", "layers.0.ffn.gate.", "layers.1.attn.wkv.", "layers.1.attn.wo_b.")
    s1 = [t for t in tensors if t[0].startswith(first)]
    s3 = [t for t in tensors if t[0].startswith("mtp.")]
    s2 = [t for t in tensors if t not in s1 and t not in s3]
    write_shards(d, [s1, s2, s3], {"format": "pt"})
    write_json(os.path.join(d, "config.json"), hub_config(g, "fp4"))
    write_ref(os.path.join(out, "tiny-official.ref.safetensors"), refs)
    summary("tiny-official", d, tensors, 3, refs)
    return tensors


def make_tiny_official_base(out):
    g = dict(TINY, n_mtp=0, compress_ratios=TINY["compress_ratios"][:TINY["n_layers"]])
    d = os.path.join(out, "tiny-official-base")
    fresh_dir(d)
    tensors, refs = encode_official(g, "base", False)
    write_sharded(d, tensors, 1, {"format": "pt"})
    os.makedirs(os.path.join(d, "inference"))
    write_json(os.path.join(d, "inference", "config.json"), inference_config(g))
    write_ref(os.path.join(out, "tiny-official-base.ref.safetensors"), refs)
    summary("tiny-official-base", d, tensors, 1, refs)


def make_tiny_nvfp4(out):
    g = TINY
    d = os.path.join(out, "tiny-nvfp4")
    fresh_dir(d)
    tensors, refs = encode_official(g, "nvfp4", True)
    write_sharded(d, tensors, 2, {"format": "pt"})
    cfg = hub_config(g, "fp4")
    qc = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
          "exclude_modules": ["*attn*", "*shared_experts*", "*ffn.gate*", "embed", "head", "mtp*"]}
    cfg["quantization_config"] = dict(quant_method="modelopt", **qc)
    write_json(os.path.join(d, "config.json"), cfg)
    write_json(os.path.join(d, "hf_quant_config.json"),
               {"producer": {"name": "modelopt", "version": "0.37.0"}, "quantization": qc})
    write_ref(os.path.join(out, "tiny-nvfp4.ref.safetensors"), refs)
    summary("tiny-nvfp4", d, tensors, 2, refs)


def make_tiny_hf(out):
    g = TINY
    d = os.path.join(out, "tiny-hf")
    fresh_dir(d)
    tensors, refs = [], {}
    for canon, kind, shape in canonical_specs(g, with_mtp=False):
        x = true_values(canon, kind, shape, g)
        parts, ref = enc_i64(x) if kind == "i64" else enc_f32(x)
        tensors.append((hf_saved_name(canon),) + parts[0][1:])
        refs[canon] = ref
    tensors.sort(key=lambda t: t[0])           # safetensors (the library) writes names sorted
    write_sharded(d, tensors, 1, {"format": "pt"})
    write_json(os.path.join(d, "config.json"), hf_config(g, "float32"))
    write_ref(os.path.join(out, "tiny-hf.ref.safetensors"), refs)
    summary("tiny-hf", d, tensors, 1, refs)


def make_tiny_hf_modules(out):
    g = TINY
    d = os.path.join(out, "tiny-hf-modules")
    fresh_dir(d)
    E, I, D = g["n_experts"], g["inter"], g["dim"]
    tensors, refs = [], {}
    for canon, kind, shape in canonical_specs(g, with_mtp=False):
        if kind == "expert":
            continue
        x = true_values(canon, kind, shape, g)
        if kind == "i64":
            parts, ref = enc_i64(x)
        elif hf_keeps_f32(canon):
            parts, ref = enc_f32(x)
        else:
            parts, ref = enc_bf16(x)
        tensors.append((hf_module_name(canon),) + parts[0][1:])
        refs[canon] = ref
        if canon.endswith("ffn.shared_experts.w3"):     # experts of this layer, stacked
            p = canon[: -len("shared_experts.w3")]
            gu = np.zeros((E, 2 * I, D))
            dn = np.zeros((E, D, I))
            for e in range(E):
                gu[e, :I] = true_values(p + f"experts.{e}.w1", "expert", [I, D], g)
                gu[e, I:] = true_values(p + f"experts.{e}.w3", "expert", [I, D], g)
                dn[e] = true_values(p + f"experts.{e}.w2", "expert", [D, I], g)
            mp = hf_module_name(p + "gate")[: -len("gate.weight")]
            (gup, gur), (dnp, dnr) = enc_bf16(gu), enc_bf16(dn)
            (_, dt, s, gub), (_, _, s2, dnb) = gup[0], dnp[0]
            tensors.append((mp + "experts.gate_up_proj", dt, s, gub))
            tensors.append((mp + "experts.down_proj", dt, s2, dnb))
            for e in range(E):
                refs[p + f"experts.{e}.w1"] = np.ascontiguousarray(gur[e, :I])
                refs[p + f"experts.{e}.w3"] = np.ascontiguousarray(gur[e, I:])
                refs[p + f"experts.{e}.w2"] = np.ascontiguousarray(dnr[e])
    write_sharded(d, tensors, 2, {"format": "pt"})
    write_json(os.path.join(d, "config.json"), hf_config(g, "bfloat16"))
    write_ref(os.path.join(out, "tiny-hf-modules.ref.safetensors"), refs)
    summary("tiny-hf-modules", d, tensors, 2, refs)


# ----------------------------------------------------------------------------------------------
# sparse full-size checkpoints

def spec_tensors(g):
    """[(name, dtype, shape, nbytes, logical_params, is_mtp)] of the official layout, no data."""
    out = []
    for canon, kind, shape in canonical_specs(g, True):
        mtp = canon.startswith("mtp.")
        n = int(np.prod(shape, dtype=np.int64))
        stored = official_name(canon)
        r, c = (shape + [1])[:2] if len(shape) == 1 else shape
        if kind == "bf16":
            out.append((stored, "BF16", shape, 2 * n, n, mtp))
        elif kind == "f32":
            out.append((stored, "F32", shape, 4 * n, n, mtp))
        elif kind == "i64":
            out.append((stored, "I64", shape, 8 * n, n, mtp))
        elif kind == "fp8":
            sb = [-(-r // 128), -(-c // 128)]
            out.append((stored, "F8_E4M3", shape, n, n, mtp))
            out.append((canon + ".scale", "F8_E8M0", sb, sb[0] * sb[1], 0, mtp))
        else:
            out.append((stored, "I8", [r, c // 2], n // 2, n, mtp))
            out.append((canon + ".scale", "F8_E8M0", [r, c // 32], n // 32, 0, mtp))
    return out


def make_sparse(out, g, name, nshards):
    d = os.path.join(out, name)
    fresh_dir(d)
    specs = spec_tensors(g)
    shards = split_shards(specs, nshards, lambda t: t[3])
    wmap, total = {}, 0
    for k, sh in enumerate(shards):
        fn = shard_name(k, nshards)
        head, nbytes = st_header([(t[0], t[1], t[2], t[3]) for t in sh], {"format": "pt"})
        with open(os.path.join(d, fn), "wb") as f:
            f.write(head)
            f.truncate(len(head) + nbytes)          # data region: a hole, never written
        total += nbytes
        for t in sh:
            wmap[t[0]] = fn
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": wmap})
    write_json(os.path.join(d, "config.json"), hub_config(g, "fp4"))
    main = sum(t[4] for t in specs if not t[5])
    mtp = sum(t[4] for t in specs if t[5])
    print(f"{name:20s} {nshards} files {len(specs):6d} tensors {total / 1e9:8.2f} GB logical; "
          f"params main {main:,} ({main / 1e9:.2f}B) mtp {mtp:,} ({mtp / 1e9:.2f}B) "
          f"total {main + mtp:,} ({(main + mtp) / 1e9:.2f}B)")
    return main, mtp


# ----------------------------------------------------------------------------------------------
# corrupt checkpoints (derived from tiny-official)

def make_corrupt(out, official_tensors):
    base = os.path.join(out, "tiny-official")
    root = os.path.join(out, "corrupt")
    fresh_dir(root)
    with open(os.path.join(base, "model.safetensors.index.json")) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    by_name = {t[0]: t for t in official_tensors}
    shard_tensors = {fn: [by_name[n] for n in by_name if index["weight_map"][n] == fn] for fn in files}
    with open(os.path.join(base, "config.json")) as f:
        config = json.load(f)
    cases = []

    def new_case(name, status, mention, note, any_of=None):
        d = os.path.join(root, name)
        os.makedirs(d)
        c = {"name": name, "status": status, "must_mention": mention, "note": note}
        if any_of:
            c["must_mention_any"] = any_of
        cases.append(c)
        return d

    def link_rest(d, skip=(), with_index=True, with_config=True):
        for fn in files + (["model.safetensors.index.json"] if with_index else []) + \
                (["config.json"] if with_config else []):
            if fn in skip:
                continue
            src, dst = os.path.join(base, fn), os.path.join(d, fn)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)

    def shard_of(tname):
        return index["weight_map"][tname]

    def rewrite(d, fn, tensors, mutate=None):
        write_st(os.path.join(d, fn), tensors, {"format": "pt"}, mutate)

    def drop(d, names):
        wm = {k: v for k, v in index["weight_map"].items() if k not in names}
        touched = sorted({index["weight_map"][n] for n in names})
        for fn in touched:
            rewrite(d, fn, [t for t in shard_tensors[fn] if t[0] not in names])
        link_rest(d, skip=touched + ["model.safetensors.index.json"])
        total = sum(len(t[3]) for t in official_tensors if t[0] in wm)
        write_json(os.path.join(d, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": wm})

    def replace(d, tname, new):
        fn = shard_of(tname)
        rewrite(d, fn, [new if t[0] == tname else t for t in shard_tensors[fn]])
        link_rest(d, skip=[fn])

    # 1. truncated shard
    fn = files[0]
    d = new_case("truncated-shard", "DSV4_ERR_FORMAT", [fn],
                 "the first shard is cut in the middle of its data region")
    link_rest(d, skip=[fn])
    raw = open(os.path.join(base, fn), "rb").read()
    hl = struct.unpack("<Q", raw[:8])[0]
    with open(os.path.join(d, fn), "wb") as f:
        f.write(raw[: 8 + hl + (len(raw) - 8 - hl) // 2])

    # 2. header length beyond the file
    fn = files[0]
    d = new_case("header-length-beyond-file", "DSV4_ERR_FORMAT", [fn],
                 "the 8-byte header length is larger than the file")
    link_rest(d, skip=[fn])
    raw = bytearray(open(os.path.join(base, fn), "rb").read())
    raw[:8] = struct.pack("<Q", len(raw) + 4096)
    open(os.path.join(d, fn), "wb").write(raw)

    # 3. overlapping data_offsets: the second of two equal-sized tensors points at the first's bytes
    fn = files[0]
    ts = shard_tensors[fn]
    na, nb = next((x[0], y[0]) for i, x in enumerate(ts) for y in ts[i + 1:]
                  if len(x[3]) == len(y[3]) and len(x[3]) > 8)
    d = new_case("overlapping-offsets", "DSV4_ERR_FORMAT", [fn],
                 f"{nb} has the data_offsets of {na}", any_of=[na, nb])

    def overlap(h):
        h[nb]["data_offsets"] = list(h[na]["data_offsets"])
    rewrite(d, fn, ts, overlap)
    link_rest(d, skip=[fn])

    # 4. lying shape: shape product * dtype size != byte range
    tn = "layers.1.attn.wo_b.weight"
    d = new_case("lying-shape", "DSV4_ERR_FORMAT", [tn],
                 "header shape [D, g*o_lora+1] does not match the byte range")
    fn = shard_of(tn)

    def lie(h):
        h[tn]["shape"] = [h[tn]["shape"][0], h[tn]["shape"][1] + 1]
    rewrite(d, fn, shard_tensors[fn], lie)
    link_rest(d, skip=[fn])

    # 5. bad JSON in a header
    fn = files[0]
    d = new_case("bad-header-json", "DSV4_ERR_FORMAT", [fn], "the header JSON is not valid JSON")
    link_rest(d, skip=[fn])
    raw = bytearray(open(os.path.join(base, fn), "rb").read())
    hl = struct.unpack("<Q", raw[:8])[0]
    hdr = raw[8: 8 + hl]
    p = hdr.index(b'"dtype"')
    hdr[p: p + 7] = b'"dtype\x00'             # unterminated key with a control character
    hdr[p - 1: p] = b"["                       # and a stray bracket
    raw[8: 8 + hl] = hdr
    open(os.path.join(d, fn), "wb").write(raw)

    # 6. unknown dtype
    tn = "layers.0.attn.wq_b.weight"
    d = new_case("unknown-dtype", "DSV4_ERR_TENSOR_DTYPE", [tn], "dtype F8_E5M2 is not accepted")
    t = by_name[tn]
    replace(d, tn, (tn, "F8_E5M2", t[2], t[3]))

    # 7. malformed config.json
    d = new_case("malformed-config", "DSV4_ERR_FORMAT", ["config.json"], "config.json is cut short")
    link_rest(d, with_config=False)
    txt = json.dumps(config, indent=2)
    open(os.path.join(d, "config.json"), "w").write(txt[: len(txt) // 2])

    # 8. config without hidden_size
    d = new_case("config-missing-hidden-size", "DSV4_ERR_CONFIG", ["hidden_size"],
                 "config.json lacks hidden_size")
    link_rest(d, with_config=False)
    write_json(os.path.join(d, "config.json"), {k: v for k, v in config.items() if k != "hidden_size"})

    # 9. missing tensor (weight and its scale both gone)
    d = new_case("missing-tensor", "DSV4_ERR_MISSING_TENSOR", ["layers.1.attn.wkv"],
                 "layers.1.attn.wkv.weight (and its .scale) absent from shard and index")
    drop(d, {"layers.1.attn.wkv.weight", "layers.1.attn.wkv.scale"})

    # 10. consistent but wrong shape (scale shaped to match it)
    tn, sn = "layers.0.attn.wq_a.weight", "layers.0.attn.wq_a.scale"
    rows, cols, bad = TINY["q_lora"], TINY["dim"], TINY["dim"] - 32
    d = new_case("wrong-shape", "DSV4_ERR_TENSOR_SHAPE", ["layers.0.attn.wq_a"],
                 f"wq_a stored as [{rows}, {bad}] (expected [{rows}, {cols}]) with a matching scale")
    wb = np.frombuffer(by_name[tn][3], dtype=np.uint8).reshape(rows, cols)[:, :bad].tobytes()
    sshape = [-(-rows // 128), -(-bad // 128)]
    sb = np.frombuffer(by_name[sn][3], dtype=np.uint8).reshape(by_name[sn][2])[:, :sshape[1]].tobytes()
    fn = shard_of(tn)
    assert shard_of(sn) == fn

    def swap(t):
        if t[0] == tn:
            return (tn, "F8_E4M3", [rows, bad], wb)
        if t[0] == sn:
            return (sn, "F8_E8M0", sshape, sb)
        return t
    rewrite(d, fn, [swap(t) for t in shard_tensors[fn]])
    link_rest(d, skip=[fn, "model.safetensors.index.json"])
    delta = len(wb) + len(sb) - len(by_name[tn][3]) - len(by_name[sn][3])
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": {"total_size": index["metadata"]["total_size"] + delta},
                "weight_map": index["weight_map"]})

    # 11. wrong dtype for the role
    tn = "layers.0.attn.attn_sink"
    d = new_case("wrong-dtype-for-role", "DSV4_ERR_TENSOR_DTYPE", [tn], "attn_sink stored as I32")
    t = by_name[tn]
    replace(d, tn, (tn, "I32", t[2], np.arange(len(t[3]) // 4, dtype=np.int32).tobytes()))

    # 12. missing FP8 scale
    d = new_case("missing-fp8-scale", "DSV4_ERR_MISSING_TENSOR", ["layers.0.attn.wo_b.scale"],
                 "layers.0.attn.wo_b.weight is F8_E4M3 but has no .scale")
    drop(d, {"layers.0.attn.wo_b.scale"})

    # 13. wrong scale shape (same byte count, transposed)
    tn = "layers.0.attn.wq_a.scale"
    t = by_name[tn]
    d = new_case("wrong-scale-shape", "DSV4_ERR_TENSOR_SHAPE", [tn],
                 f"scale stored as {t[2][::-1]} instead of {t[2]}")
    assert t[2][0] != t[2][1]
    replace(d, tn, (tn, t[1], t[2][::-1], t[3]))

    # 14. index names a shard that does not exist
    missing = "model-00004-of-00004.safetensors"
    d = new_case("index-missing-shard", "DSV4_ERR_IO", [missing],
                 f"the index maps the tensors of {files[2]} to {missing}, which is absent")
    link_rest(d, skip=[files[2], "model.safetensors.index.json"])
    wm = {k: (missing if v == files[2] else v) for k, v in index["weight_map"].items()}
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": index["metadata"], "weight_map": wm})

    # 15. hash layer without tid2eid
    d = new_case("missing-tid2eid", "DSV4_ERR_MISSING_TENSOR", ["layers.0.ffn.gate.tid2eid"],
                 "layer 0 is a hash layer (num_hash_layers 1) but has no tid2eid")
    drop(d, {"layers.0.ffn.gate.tid2eid"})

    # 16. tid2eid value out of range
    tn = "layers.0.ffn.gate.tid2eid"
    d = new_case("tid2eid-out-of-range", "DSV4_ERR_FORMAT", ["tid2eid"],
                 f"tid2eid[7, 1] = {TINY['n_experts']} (>= n_routed_experts)")
    t = by_name[tn]
    arr = np.frombuffer(t[3], dtype=np.int64).reshape(t[2]).copy()
    arr[7, 1] = TINY["n_experts"]
    replace(d, tn, (tn, "I64", t[2], arr.tobytes()))

    write_json(os.path.join(root, "cases.json"), cases)
    print(f"{'corrupt':20s} {len(cases)} cases -> {root}")


# ----------------------------------------------------------------------------------------------
# --check: re-read what was written

def read_st_header(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        hl = struct.unpack("<Q", f.read(8))[0]
        assert 8 + hl <= size, path
        hdr = json.loads(f.read(hl))
    return hdr, 8 + hl, size


def check_st(path, sparse=False):
    """Header parses, offsets contiguous from 0 to the end of the file, sizes match dtype*shape."""
    hdr, start, size = read_st_header(path)
    ents = sorted(((v["data_offsets"], k, v) for k, v in hdr.items() if k != "__metadata__"),
                  key=lambda e: e[0][0])
    off = 0
    for (b, e), k, v in ents:
        assert b == off, (path, k, b, off)
        assert e - b == DTYPE_SIZE[v["dtype"]] * int(np.prod(v["shape"], dtype=np.int64)), (path, k)
        off = e
    assert start + off == size, (path, start + off, size)
    if not sparse:
        try:
            from safetensors import safe_open
        except ImportError:
            safe_open = None
        if safe_open is not None:
            with safe_open(path, framework="numpy") as f:
                assert set(f.keys()) == {k for _, k, _ in ents}, path
                assert f.metadata() == hdr.get("__metadata__"), path
    return hdr


def check_dir(d, sparse=False):
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    names = {}
    for fn in files:
        for k, v in check_st(os.path.join(d, fn), sparse).items():
            if k != "__metadata__":
                assert k not in names, (d, k)
                names[k] = (fn, v)
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            index = json.load(f)
        assert index["weight_map"] == {k: v[0] for k, v in names.items()}, d
        total = sum(v[1]["data_offsets"][1] - v[1]["data_offsets"][0] for v in names.values())
        assert index["metadata"]["total_size"] == total, d
    else:
        assert files == ["model.safetensors"], d
    return names


def check(out):
    for name in ALL:
        d = os.path.join(out, name)
        if not os.path.isdir(d) or name == "corrupt":
            continue
        names = check_dir(d, sparse=name.endswith("-sparse"))
        msg = f"{len(names)} tensors"
        ref = os.path.join(out, name + ".ref.safetensors")
        if os.path.exists(ref):
            rh = check_st(ref)
            canon = [k for k in rh if k != "__metadata__"]
            assert all(rh[k]["dtype"] == ("I64" if k.endswith("tid2eid") else "F32") for k in canon)
            msg += f", ref {len(canon)} canonical"
        print(f"check {name:18s} ok: {msg}")


# ----------------------------------------------------------------------------------------------

ALL = ["tiny-official", "tiny-official-base", "tiny-nvfp4", "tiny-hf", "tiny-hf-modules",
       "flash-sparse", "pro-sparse", "corrupt"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--only", action="append", choices=ALL, help="make only this one (repeatable)")
    ap.add_argument("--check", action="store_true",
                    help="afterwards re-read every file written (headers, offsets, index, refs)")
    a = ap.parse_args(argv)
    only = set(a.only or ALL)
    os.makedirs(a.outdir, exist_ok=True)
    print(f"tiny geometry: D={TINY['dim']} H={TINY['n_heads']} c={TINY['head_dim']} r={TINY['rope_dim']} "
          f"q_lora={TINY['q_lora']} g={TINY['o_groups']} o_lora={TINY['o_lora']} E={TINY['n_experts']} "
          f"k={TINY['n_active']} I={TINY['inter']} IH={TINY['index_heads']} Ic={TINY['index_head_dim']} "
          f"V={TINY['vocab']} ratios={TINY['compress_ratios']} hash={TINY['n_hash']}")
    off = None
    if "tiny-official" in only or "corrupt" in only:
        off = make_tiny_official(a.outdir)
    if "tiny-official-base" in only:
        make_tiny_official_base(a.outdir)
    if "tiny-nvfp4" in only:
        make_tiny_nvfp4(a.outdir)
    if "tiny-hf" in only:
        make_tiny_hf(a.outdir)
    if "tiny-hf-modules" in only:
        make_tiny_hf_modules(a.outdir)
    if "flash-sparse" in only:
        make_sparse(a.outdir, FLASH, "flash-sparse", 46)
    if "pro-sparse" in only:
        make_sparse(a.outdir, PRO, "pro-sparse", 64)
    if "corrupt" in only:
        make_corrupt(a.outdir, off)
    if a.check:
        check(a.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
