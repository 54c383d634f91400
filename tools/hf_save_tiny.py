#!/usr/bin/env python3
"""hf_save_tiny.py OUTDIR - a transformers-written DeepSeek-V4 checkpoint for the loader tests.

Run on the GPU machine, where transformers 5.17 is installed (CPU is enough). Builds a tiny,
randomly initialised DeepseekV4ForCausalLM with the tiny geometry of make_checkpoints.py (seeded),
saves it with save_pretrained in float32, reloads it with dtype=bfloat16 (so transformers applies
its own keep-in-fp32 rules) and saves that: OUTDIR/hf-saved/ is then exactly what a user gets from
transformers. OUTDIR/hf-saved.ref.safetensors holds every saved tensor as F32 (tid2eid: I64) under
our canonical name, read back with the `safetensors` package; the name mapping used here is
make_checkpoints.hf_saved_name (written from the measured save layout), independent of the C
loader's renaming rules. The result is committed under tests/fixtures/ and checked by test_loader.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_checkpoints as mc  # noqa: E402


def main():
    out = sys.argv[1]
    g = mc.TINY
    L = g["n_layers"]
    cfg = DeepseekV4Config(
        vocab_size=g["vocab"], hidden_size=g["dim"], moe_intermediate_size=g["inter"],
        num_hidden_layers=L, num_attention_heads=g["n_heads"], num_key_value_heads=1,
        head_dim=g["head_dim"], q_lora_rank=g["q_lora"], num_experts_per_tok=g["n_active"],
        n_routed_experts=g["n_experts"], n_shared_experts=g["n_shared"],
        routed_scaling_factor=g["route_scale"], swiglu_limit=g["swiglu_limit"],
        sliding_window=g["window"], o_groups=g["o_groups"], o_lora_rank=g["o_lora"],
        index_n_heads=g["index_heads"], index_head_dim=g["index_head_dim"],
        index_topk=g["index_topk"], hc_mult=g["hc"], hc_sinkhorn_iters=g["sinkhorn"],
        layer_types=[mc.LAYER_TYPE[r] for r in g["compress_ratios"][:L]],
        mlp_layer_types=["hash_moe" if i < g["n_hash"] else "moe" for i in range(L)],
        partial_rotary_factor=g["rope_dim"] / g["head_dim"],
        rope_parameters={"rope_type": "yarn", "factor": 16.0,
                         "original_max_position_embeddings": 65536, "beta_fast": 32,
                         "beta_slow": 1},
        num_nextn_predict_layers=0,
    )
    torch.manual_seed(1234)
    model = DeepseekV4ForCausalLM(cfg).float().eval()
    # Random init leaves some tensors constant (norms = 1, biases = 0); give every float tensor
    # distinct values so a misplaced tensor cannot compare equal by accident.
    with torch.no_grad():
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        for name, p in tensors:
            if "tid2eid" in name:
                p.copy_(torch.randint(0, g["n_experts"], p.shape, dtype=p.dtype))
            elif p.is_floating_point():
                p.copy_(torch.randn_like(p) * 0.05 + (1.0 if "norm" in name else 0.0))
    tmp = os.path.join(out, "hf-f32")
    dst = os.path.join(out, "hf-saved")
    for d in (tmp, dst):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(tmp)
    bf16 = DeepseekV4ForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16)
    bf16.save_pretrained(dst)
    shutil.rmtree(tmp)

    saved = {}
    for f in sorted(os.listdir(dst)):
        if f.endswith(".safetensors"):
            saved.update(load_file(os.path.join(dst, f)))
    to_canon = {mc.hf_saved_name(c): c for c, _, _ in mc.canonical_specs(g, with_mtp=False)}
    refs, dtypes = {}, {}
    for name, t in saved.items():
        if name not in to_canon:
            sys.exit(f"saved tensor {name} has no canonical name: the documented layout is wrong")
        canon = to_canon[name]
        dtypes[str(t.dtype)] = dtypes.get(str(t.dtype), 0) + 1
        if t.dtype == torch.int64:
            refs[canon] = t.numpy()
        else:
            refs[canon] = t.float().numpy().astype(np.float32)
    missing = set(to_canon.values()) - set(refs)
    if missing:
        sys.exit(f"save_pretrained did not write {sorted(missing)[:5]}")
    mc.write_ref(os.path.join(out, "hf-saved.ref.safetensors"), refs)
    with open(os.path.join(dst, "config.json")) as f:
        keys = sorted(json.load(f))
    print(f"hf-saved: {len(saved)} tensors, dtypes {dtypes}, config keys {keys}")


if __name__ == "__main__":
    main()
