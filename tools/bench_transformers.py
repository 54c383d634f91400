#!/usr/bin/env python3
"""bench_transformers.py - transformers' DeepseekV4ForCausalLM at the geometry of `dsv4 bench`.

Runs on the GPU machine (transformers 5.17, torch with CUDA):

    /opt/torch/.venv/bin/python3 tools/bench_transformers.py [--runs flash:4,pro:1]
        [--context 4096] [--batches 1,8] [--steps 10] [--json FILE]
        [--experts-impl eager|grouped_mm|batched_mm] [--keep-f32]

For each SHAPE:LAYERS run it builds the model in bf16 on the GPU (random init: normal(0, 0.02)
matrices, norm weights and mHC scales 1, other vectors 0, random tid2eid; every parameter bf16,
also the small mHC / norm / sink modules from_pretrained would keep in f32: --keep-f32 keeps
them), with the real Flash / Pro geometry (tests/fixtures/configs/<shape>_hub.json) cut to
LAYERS layers exactly as src/model/model_shape.c cuts it: all layers = the real schedule; fewer =
the compress ratios of the real layers 2, 3, ... (CSA, HCA, CSA, ...), the first 3 layers
hash-routed when more than 3, else all but the last. No MTP. Then it times

  prefill  one sequence of --context tokens in one forward (a fresh cache; logits of the last token
           only), tokens/s; if that runs out of memory, in chunks of 1024 (said in the output);
  decode   per batch B: B sequences prefilled to --context tokens (chunks of 512 tokens, batched),
           then --steps steps of one token each, ms/step and tokens/s (wall clock after a
           torch.cuda.synchronize, 3 warm-up steps first).

Geometries that do not fit the GPU in bf16 are reported as skipped with the bytes they need. The
attention is transformers' eager path (the only one DeepseekV4 supports); the routed experts use
whatever experts implementation the installed transformers picks by default (printed).
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "tests", "fixtures", "configs")
LAYER_TYPE = {0: "sliding_attention", 4: "compressed_sparse_attention",
              128: "heavily_compressed_attention"}
WARMUP = 3
CHUNK = 1024        # prefill of one sequence when one forward runs out of memory
BATCH_CHUNK = 512   # the batched prefill before batched decode


def cut_schedule(hub, layers):
    """(compress ratios, hash flags) of a `layers`-layer model, as model_shape.c chooses them."""
    real = hub["num_hidden_layers"]
    ratios = hub["compress_ratios"]
    if layers <= 0 or layers > real:
        raise SystemExit(f"--runs: layers must be in [1, {real}] (got {layers})")
    if layers == real:
        cut = ratios[:real]
    else:
        cut = [ratios[min(i + 2, real - 1)] for i in range(layers)]
    n_hash = hub["num_hash_layers"]
    hashed = n_hash if (layers == real or layers > n_hash) else layers - 1
    return cut, [i < hashed for i in range(layers)]


def make_config(shape, layers):
    from transformers import DeepseekV4Config
    with open(os.path.join(CONFIGS, f"{shape}_hub.json")) as f:
        hub = json.load(f)
    ratios, hashed = cut_schedule(hub, layers)
    rs = hub["rope_scaling"]
    cfg = DeepseekV4Config(
        vocab_size=hub["vocab_size"], hidden_size=hub["hidden_size"],
        moe_intermediate_size=hub["moe_intermediate_size"], num_hidden_layers=layers,
        num_attention_heads=hub["num_attention_heads"], num_key_value_heads=1,
        head_dim=hub["head_dim"], q_lora_rank=hub["q_lora_rank"],
        num_experts_per_tok=hub["num_experts_per_tok"], n_routed_experts=hub["n_routed_experts"],
        n_shared_experts=hub["n_shared_experts"],
        routed_scaling_factor=hub["routed_scaling_factor"], swiglu_limit=hub["swiglu_limit"],
        sliding_window=hub["sliding_window"], o_groups=hub["o_groups"],
        o_lora_rank=hub["o_lora_rank"], index_n_heads=hub["index_n_heads"],
        index_head_dim=hub["index_head_dim"], index_topk=hub["index_topk"],
        hc_mult=hub["hc_mult"], hc_sinkhorn_iters=hub["hc_sinkhorn_iters"], hc_eps=hub["hc_eps"],
        rms_norm_eps=hub["rms_norm_eps"], rope_theta=float(hub["rope_theta"]),
        compress_rope_theta=float(hub["compress_rope_theta"]),
        max_position_embeddings=hub["max_position_embeddings"],
        layer_types=[LAYER_TYPE[r] for r in ratios],
        mlp_layer_types=["hash_moe" if h else "moe" for h in hashed],
        partial_rotary_factor=hub["qk_rope_head_dim"] / hub["head_dim"],
        rope_parameters={"rope_type": "yarn", "factor": float(rs["factor"]),
                         "original_max_position_embeddings": rs["original_max_position_embeddings"],
                         "beta_fast": rs["beta_fast"], "beta_slow": rs["beta_slow"]},
        num_nextn_predict_layers=0, bos_token_id=hub["bos_token_id"],
        eos_token_id=hub["eos_token_id"])
    return cfg, hub, ratios, hashed


def bf16_bytes(hub, layers, ratios):
    """Parameter bytes of the bf16 model (the few f32 modules counted as bf16: a lower bound)."""
    D, V, H, c = hub["hidden_size"], hub["vocab_size"], hub["num_attention_heads"], hub["head_dim"]
    E, I, ql = hub["n_routed_experts"], hub["moe_intermediate_size"], hub["q_lora_rank"]
    IH, Ic = hub["index_n_heads"], hub["index_head_dim"]
    n = 2 * V * D
    for r in ratios:
        n += 3 * (E + 1) * I * D + E * D                                    # experts, shared, gate
        n += ql * D + H * c * ql + c * D + H * c * hub["o_lora_rank"] + hub["o_groups"] * \
            hub["o_lora_rank"] * D                                          # attention
        n += 2 * (2 if r == 4 else 1) * c * D if r else 0                   # compressor
        n += (IH * Ic * ql + IH * D + 4 * Ic * D) if r == 4 else 0         # indexer
    return 2 * n


def init_random(model, n_experts, torch):
    """Random values in place: matrices normal(0, 0.02), norm weights and scales 1, other vectors
    (mHC base, sinks, router bias) 0, tid2eid random experts."""
    g = torch.Generator(device="cuda").manual_seed(1234)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if "tid2eid" in name:
                p.copy_(torch.randint(0, n_experts, p.shape, device=p.device, generator=g))
            elif "inv_freq" in name:
                continue
            elif p.is_floating_point():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02, generator=g)
                elif "norm" in name or name.endswith("scale"):
                    p.fill_(1.0)
                else:
                    p.zero_()


def keep_f32(model, torch):
    """Casts the parameters of the modules in _keep_in_fp32_modules_strict to f32."""
    keys = set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    n = 0
    for name, p in model.named_parameters():
        if p.dtype != torch.float32 and any(k in name.split(".") for k in keys):
            p.data = p.data.float()
            n += 1
    return n


def build(cfg, torch, experts_impl):
    from transformers import DeepseekV4ForCausalLM
    kw = {"experts_implementation": experts_impl} if experts_impl else {}
    with torch.device("cuda"):
        model = DeepseekV4ForCausalLM._from_config(cfg, dtype=torch.bfloat16, **kw)
    model.eval()
    return model


def sync_time(torch):
    torch.cuda.synchronize()
    return time.perf_counter()


def prefill(model, ids, torch, chunk=None):
    """Runs ids [B, T] into a fresh cache (in chunks when chunk is set); returns the cache."""
    cache = None
    T = ids.shape[1]
    step = chunk or T
    for s in range(0, T, step):
        out = model(input_ids=ids[:, s:s + step], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
    return cache


def run_one(shape, layers, args, torch):
    cfg, hub, ratios, hashed = make_config(shape, layers)
    kinds = ",".join({0: "SWA", 4: "CSA", 128: "HCA"}[r] + ("/hash" if h else "")
                     for r, h in zip(ratios, hashed))
    res = {"shape": shape, "layers": layers, "layer_kinds": kinds, "dtype": "bf16"}
    free, total = torch.cuda.mem_get_info()
    need = bf16_bytes(hub, layers, ratios)
    res["param_bytes_estimate"] = need
    if need > 0.92 * free:
        res["skipped"] = (f"the bf16 weights need {need / 1e9:.1f} GB; the GPU has "
                          f"{free / 1e9:.1f} GB free of {total / 1e9:.1f} GB")
        print(f"[{shape}:{layers}] skipped: {res['skipped']}", flush=True)
        return res
    t0 = time.perf_counter()
    try:
        model = build(cfg, torch, args.experts_impl)
    except torch.cuda.OutOfMemoryError as e:
        res["skipped"] = f"out of memory building the model: {str(e).splitlines()[0]}"
        print(f"[{shape}:{layers}] skipped: {res['skipped']}", flush=True)
        return res
    res["f32_params"] = keep_f32(model, torch) if args.keep_f32 else 0
    init_random(model, hub["n_routed_experts"], torch)
    torch.cuda.synchronize()
    res["build_s"] = round(time.perf_counter() - t0, 2)
    res["experts_implementation"] = str(getattr(model.config, "_experts_implementation", None))
    res["attn_implementation"] = str(getattr(model.config, "_attn_implementation", None))
    res["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"[{shape}:{layers}] {kinds}: built in {res['build_s']} s, "
          f"{res['param_bytes'] / 1e9:.1f} GB of parameters, experts "
          f"{res['experts_implementation']}, attention {res['attn_implementation']}", flush=True)
    V, T = hub["vocab_size"], args.context
    g = torch.Generator(device="cuda").manual_seed(7)

    def rand_ids(b, t):
        return torch.randint(0, V, (b, t), device="cuda", generator=g)

    with torch.inference_mode():
        prefill(model, rand_ids(1, 256), torch)                            # warm-up
        ids = rand_ids(1, T)
        mode = "one forward"
        try:
            t0 = sync_time(torch)
            cache = prefill(model, ids, torch)
            sec = sync_time(torch) - t0
        except torch.cuda.OutOfMemoryError:
            cache = None
            torch.cuda.empty_cache()
            mode = f"chunks of {CHUNK} (one forward ran out of memory)"
            t0 = sync_time(torch)
            cache = prefill(model, ids, torch, CHUNK)
            sec = sync_time(torch) - t0
        res["prefill"] = {"tokens": T, "mode": mode, "seconds": round(sec, 4),
                          "tokens_per_s": round(T / sec, 1)}
        print(f"[{shape}:{layers}] prefill {T} tokens ({mode}): {sec:.3f} s, {T / sec:.0f} tok/s",
              flush=True)
        res["decode"] = []
        for B in args.batches:
            try:
                if B != 1:
                    del cache
                    cache = None
                    torch.cuda.empty_cache()
                    t0 = sync_time(torch)
                    cache = prefill(model, rand_ids(B, T), torch, BATCH_CHUNK)
                    pre = sync_time(torch) - t0
                else:
                    pre = sec
                for _ in range(WARMUP):
                    model(input_ids=rand_ids(B, 1), past_key_values=cache, use_cache=True,
                          logits_to_keep=1)
                t0 = sync_time(torch)
                for _ in range(args.steps):
                    model(input_ids=rand_ids(B, 1), past_key_values=cache, use_cache=True,
                          logits_to_keep=1)
                ms = (sync_time(torch) - t0) * 1e3 / args.steps
            except torch.cuda.OutOfMemoryError as e:
                res["decode"].append({"batch": B, "skipped": str(e).splitlines()[0]})
                print(f"[{shape}:{layers}] decode batch {B}: out of memory", flush=True)
                cache = None
                torch.cuda.empty_cache()
                continue
            row = {"batch": B, "context": T, "ms_per_step": round(ms, 3),
                   "us_per_layer": round(ms * 1e3 / layers, 1),
                   "tokens_per_s": round(B * 1e3 / ms, 1), "prefill_s": round(pre, 3)}
            res["decode"].append(row)
            print(f"[{shape}:{layers}] decode batch {B} at context {T}: {ms:.2f} ms/step, "
                  f"{B * 1e3 / ms:.1f} tok/s (prefill of the batch {pre:.2f} s)", flush=True)
        res["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    del model, cache
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return res


def table(results):
    lines = ["| shape | layers | prefill tok/s | batch | ms/step | us/layer | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['shape']} | {r['layers']} | skipped: {r['skipped']} | | | | |")
            continue
        pf = r["prefill"]["tokens_per_s"]
        for d in r["decode"]:
            if "skipped" in d:
                lines.append(f"| {r['shape']} | {r['layers']} | {pf} | {d['batch']} | "
                             f"out of memory | | |")
            else:
                lines.append(f"| {r['shape']} | {r['layers']} | {pf} | {d['batch']} | "
                             f"{d['ms_per_step']} | {d['us_per_layer']} | {d['tokens_per_s']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="flash:4", help="SHAPE:LAYERS,... (shape flash or pro)")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", help="also write the JSON object to this file")
    ap.add_argument("--experts-impl", help="transformers experts_implementation (default: its own)")
    ap.add_argument("--keep-f32", action="store_true",
                    help="keep _keep_in_fp32_modules_strict in f32 as from_pretrained does")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    runs = []
    for item in args.runs.split(","):
        shape, _, n = item.partition(":")
        if shape not in ("flash", "pro"):
            raise SystemExit(f"--runs: unknown shape '{shape}' (flash or pro)")
        runs.append((shape, int(n or 4)))

    import torch
    import transformers
    if not torch.cuda.is_available():
        raise SystemExit("bench_transformers.py: no CUDA device")
    head = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                            time.gmtime())}
    print(f"{head['device']}, torch {head['torch']}, transformers {head['transformers']}",
          flush=True)
    results = []
    for shape, layers in runs:
        try:
            results.append(run_one(shape, layers, args, torch))
        except Exception as e:  # one failing geometry must not hide the others
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"[{shape}:{layers}] failed: {msg}", flush=True)
            results.append({"shape": shape, "layers": layers, "skipped": f"failed: {msg}"})
            torch.cuda.empty_cache()
    print()
    print(table(results))
    out = dict(head, context=args.context, steps=args.steps, runs=results)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if all("skipped" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
