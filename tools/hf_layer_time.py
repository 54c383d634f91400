#!/usr/bin/env python3
"""hf_layer_time.py - transformers' time for one DeepseekV4 decoder layer in a decode step.

The figure `dsv4 bench --hf-layer-json FILE` sets our layer time against (issue 8). Runs on the
GPU machine (transformers 5.17, torch with CUDA):

    /opt/torch/.venv/bin/python3 tools/hf_layer_time.py [--shape flash] [--layers 2]
        [--context 4096] [--steps 10] [--experts-impl eager|grouped_mm|batched_mm] [--json FILE]

It builds DeepseekV4ForCausalLM with LAYERS decoder layers of the real geometry in bf16 on the GPU
with random weights, cut exactly as `dsv4 bench --layers` cuts it (tools/bench_transformers.py:
layers 2, 3, ... of the real schedule, so 2 layers = one CSA and one HCA layer, as the bench's
4 alternate). It prefills one sequence of CONTEXT tokens through the model's cache
(past_key_values, a DynamicCache), then runs decode steps of 1 token. What is timed: each decoder
layer's forward within those steps, with CUDA events recorded by a forward pre-hook and a forward
hook on the layer module; transformers runs eagerly, so the events span the layer's host launch
time as well as its kernels (the GPU waits for the host). Per layer: the median over STEPS steps
after 3 warm-up steps. hf_layer_us = the mean over the layers. The embedding, the head collapse
and the logits are outside the layers and not counted; the whole step's wall clock is printed too.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_transformers as bt  # noqa: E402  (the config, build and random init it uses)

WARMUP = 3
PREFILL_CHUNK = 1024


def decoder_layers(model):
    """The ModuleList of decoder layers (model.model.layers in transformers' Deepseek models)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise SystemExit("hf_layer_time.py: found no model.model.layers")
    return layers


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="flash", choices=["flash", "pro"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--experts-impl", help="transformers experts_implementation (default: its own)")
    ap.add_argument("--json", help="also write the JSON object to this file")
    args = ap.parse_args()

    import torch
    import transformers
    if not torch.cuda.is_available():
        raise SystemExit("hf_layer_time.py: no CUDA device")
    cfg, hub, ratios, hashed = bt.make_config(args.shape, args.layers)
    kinds = [{0: "SWA", 4: "CSA", 128: "HCA"}[r] + ("/hash" if h else "")
             for r, h in zip(ratios, hashed)]
    t0 = time.perf_counter()
    model = bt.build(cfg, torch, args.experts_impl)
    bt.init_random(model, hub["n_routed_experts"], torch)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    experts = str(getattr(model.config, "_experts_implementation", None))
    attn = str(getattr(model.config, "_attn_implementation", None))
    dev = torch.cuda.get_device_name(0)
    print(f"{dev}, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"{args.shape} {args.layers} layers ({','.join(kinds)}) built in {build_s:.1f} s; "
          f"attention {attn}, experts {experts}", flush=True)

    layers = decoder_layers(model)
    starts = [torch.cuda.Event(enable_timing=True) for _ in layers]
    ends = [torch.cuda.Event(enable_timing=True) for _ in layers]
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda mod, a, i=i: starts[i].record())
        layer.register_forward_hook(lambda mod, a, out, i=i: ends[i].record())

    V, T = hub["vocab_size"], args.context
    g = torch.Generator(device="cuda").manual_seed(7)
    per_layer = [[] for _ in layers]
    step_ms = []
    with torch.inference_mode():
        ids = torch.randint(0, V, (1, T), device="cuda", generator=g)
        t0 = bt.sync_time(torch)
        cache = bt.prefill(model, ids, torch, PREFILL_CHUNK)
        prefill_s = bt.sync_time(torch) - t0
        for s in range(WARMUP + args.steps):
            tok = torch.randint(0, V, (1, 1), device="cuda", generator=g)
            t0 = bt.sync_time(torch)
            out = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
            wall = bt.sync_time(torch) - t0
            cache = out.past_key_values
            if s < WARMUP:
                continue
            step_ms.append(wall * 1e3)
            for i in range(len(layers)):
                per_layer[i].append(starts[i].elapsed_time(ends[i]) * 1e3)
    us = [statistics.median(v) for v in per_layer]
    mean_us = sum(us) / len(us)
    step = statistics.median(step_ms)
    for i, (k, u) in enumerate(zip(kinds, us)):
        print(f"layer {i} ({k}): {u:.1f} us (median of {args.steps} decode steps)")
    print(f"hf_layer_us {mean_us:.1f} (mean of the layers); whole step {step:.2f} ms wall clock; "
          f"prefill of {T} tokens in chunks of {PREFILL_CHUNK}: {prefill_s:.2f} s", flush=True)
    note = (f"transformers {transformers.__version__} (torch {torch.__version__}) on {dev}, "
            f"{args.shape} geometry, bf16, random weights, attention {attn}, experts {experts}; "
            f"decode of 1 token after a {T}-token prefill (DynamicCache); CUDA events around "
            f"each decoder layer's forward (eager: host launch time included), median of "
            f"{args.steps} steps, mean of {len(us)} layers ({','.join(kinds)})")
    res = {"hf_layer_us": round(mean_us, 2), "context": T, "shape": args.shape,
           "layers": [{"kind": k, "us": round(u, 2)} for k, u in zip(kinds, us)],
           "step_ms": round(step, 3), "prefill_s": round(prefill_s, 3), "device": dev,
           "torch": torch.__version__, "transformers": transformers.__version__,
           "experts_implementation": experts, "attn_implementation": attn,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "note": note}
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
