#!/usr/bin/env python3
"""train_tiny.py OUTDIR [--steps N | --time-budget S] [--device cuda|cpu] ...

Trains the embedded test model of models/ (issue 6): a tiny DeepSeek-V4 (transformers 5.17
DeepseekV4ForCausalLM) that knows the capitals of the 190 countries of tools/data/capitals.tsv,
with the real V4 tokenizer (vocabulary size 129280, taken from tokenizer.json).

  architecture: D 32, 6 layers [sliding, CSA 4, HCA 128, CSA 4, HCA 128, sliding], sliding window
                32, layer 0 hash MoE + 5 normal MoE layers (8 routed experts of width 64, top 2,
                1 shared),
                mHC with 4 streams, 4 heads x head_dim 64 (16 RoPE dims), q_lora 64, 2 output
                groups of rank 32, indexer 4 heads x 32 (top 4)
  data:         built here, seeded: capital sentences in nine templates (plus chat-formatted
                questions), mixed with English prose (tools/data/prose.txt: three licence texts
                from /usr/share/common-licenses and a few plain paragraphs); rows of 256 tokens,
                60% of them start with BOS, documents are sometimes separated by BOS
  training:     AdamW, warm-up + cosine, gradient clipping; the last 30% of the steps are
                quantisation-aware (straight-through FP8 e4m3 128x128 blocks / MXFP4 1x32 blocks
                on exactly the weights the official layout stores quantised)
  output:       OUTDIR/ the official hub layout (FP8 + ue8m0 scales, MXFP4 routed experts, BF16
                embed/head/norms, F32 hc/sinks/ape/bias, I64 tid2eid; 3 shards + index) written
                by make_checkpoints' encoders, or BF16 (save_pretrained) if the quantised model
                fails the checks; config.json, tokenizer.json (minified: same content),
                train_log.json (loss curve, timings, accuracy), golden.json (transformers'
                greedy 32 tokens for "The capital of France is", with and without BOS, CPU
                float32 on the stored weights dequantised exactly), capitals.json (the greedy
                answer for every country)

Reproduce models/dsv4-tiny (trained on one H100, next to a D 64 candidate in a second process):
    python3 tools/train_tiny.py OUT --tokenizer models/dsv4-tiny/tokenizer.json --steps 1136
(without --steps: as many steps as --time-budget seconds allow, measured on steps 4-12; the data
and the schedule depend only on --seed and the step count; GPU kernels may differ in the last
bits, so a re-run gives close, not identical, weights.)
"""
import argparse
import json
import math
import os
import platform
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_checkpoints as mc  # noqa: E402
import make_goldens as mg  # noqa: E402

import transformers  # noqa: E402
from transformers import DeepseekV4ForCausalLM  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

BOS, EOS, USER, ASSISTANT, END_THINK = 0, 1, 128803, 128804, 128822
PROMPT = "The capital of France is"
G = 32

GEOM = dict(name="dsv4-tiny-capitals", dim=32, n_layers=6, n_heads=4, head_dim=64, rope_dim=16,
            q_lora=64, o_groups=2, o_lora=32, n_experts=8, n_active=2, n_shared=1, inter=64,
            index_heads=4, index_head_dim=32, index_topk=4, window=32, hc=4, sinkhorn=20,
            compress_ratios=[0, 4, 128, 4, 128, 0], n_hash=1, n_mtp=0, route_scale=1.5,
            swiglu_limit=10.0)

TEMPLATES = [  # (weight, format); {c} country, {C} country capitalised, {k} capital, {p} "."
    (6, "The capital of {c} is {k}{p}"),
    (1, "{k} is the capital of {c}."),
    (1, "The capital city of {c} is {k}{p}"),
    (1, "Q: What is the capital of {c}?\nA: {k}{p}"),
    (1, "Q: What is the capital of {c}?\nA: The capital of {c} is {k}{p}"),
    (1, "{k}, the capital of {c}, is its largest or best known city."),
    (1, "What is the capital of {c}? The capital of {c} is {k}{p}"),
    (1, "{C} has its capital in {k}{p}"),
    (1, "If you travel to {c}, you can visit its capital, {k}{p}"),
]


def read_capitals(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            c, k = line.split("\t")
            rows.append((c, k))
    return rows


def render(tpl, c, k):
    return tpl.format(c=c, C=c[0].upper() + c[1:], k=k, p="" if k.endswith(".") else ".")


class Data:
    """Seeded row generator over pre-tokenised units (every unit ends with a newline, where the
    pre-tokenizer splits anyway, so concatenated units tokenise as the joined text would)."""

    def __init__(self, tok, capitals, prose_path, seq, seed):
        self.seq = seq
        self.rng = np.random.default_rng(seed)
        enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
        self.facts = [[enc(render(t, c, k) + "\n") for _, t in TEMPLATES] for c, k in capitals]
        w = np.array([t[0] for t in TEMPLATES], dtype=np.float64)
        self.tpl_p = w / w.sum()
        cw = np.array([3.0 if c == "France" else 1.0 for c, _ in capitals])
        self.cty_p = cw / cw.sum()
        self.chat_q = [enc(f"What is the capital of {c}?") for c, _ in capitals]
        self.chat_a = [enc(render(TEMPLATES[0][1], c, k)) for c, k in capitals]
        with open(prose_path, encoding="utf-8") as f:
            paras = [p.strip("\n") for p in f.read().split("\n\n")]
        self.prose = [enc(p + "\n\n") for p in paras if p.strip()]

    def doc(self):
        r, rng = self.rng.random(), self.rng
        if r < 0.55:                                   # 1-4 capital sentences
            out = []
            for _ in range(int(rng.integers(1, 5))):
                ci = int(rng.choice(len(self.facts), p=self.cty_p))
                out += self.facts[ci][int(rng.choice(len(TEMPLATES), p=self.tpl_p))]
            return out
        if r < 0.65:                                   # a chat turn (DeepSeek-V4 chat format)
            ci = int(rng.choice(len(self.facts), p=self.cty_p))
            return [USER] + self.chat_q[ci] + [ASSISTANT, END_THINK] + self.chat_a[ci] + [EOS]
        i = int(rng.integers(len(self.prose)))         # 1-3 consecutive prose paragraphs
        out = []
        for j in range(int(rng.integers(1, 4))):
            out += self.prose[(i + j) % len(self.prose)]
        return out

    def row(self):
        out = [BOS] if self.rng.random() < 0.6 else []
        while len(out) < self.seq:
            out += self.doc()
            if self.rng.random() < 0.3:
                out.append(BOS)
        return out[:self.seq]

    def batch(self, B):
        return torch.tensor([self.row() for _ in range(B)], dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# quantisation-aware training: straight-through fake quantisation of the stored-quantised weights

def fq_fp8(w):
    """128x128 blocks, e4m3, power-of-two (ue8m0) scales: as mc.enc_fp8(x, 'e8m0')."""
    r, c = w.shape
    R, C = -(-r // 128) * 128, -(-c // 128) * 128
    p = F.pad(w, (0, C - c, 0, R - r)).reshape(R // 128, 128, C // 128, 128)
    amax = p.abs().amax(dim=(1, 3), keepdim=True)
    s = torch.where(amax > 0, torch.exp2(torch.ceil(torch.log2(amax.clamp_min(1e-30) / 448.0))),
                    torch.ones_like(amax))
    q = (p / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s
    return q.reshape(R, C)[:r, :c]


E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fq_mxfp4(w):
    """1x32 blocks along the last (input) dimension, e2m1 values, power-of-two scales."""
    shp = w.shape
    b = w.reshape(-1, shp[-1] // 32, 32)
    amax = b.abs().amax(dim=-1, keepdim=True)
    s = torch.where(amax > 0, torch.exp2(torch.ceil(torch.log2(amax.clamp_min(1e-30) / 6.0))),
                    torch.ones_like(amax))
    y = (b / s).clamp(-6, 6)
    grid = E2M1_GRID.to(w.device)
    idx = (y.abs().unsqueeze(-1) - grid).abs().argmin(dim=-1)
    return (grid[idx] * torch.sign(y) * s).reshape(shp)


def quant_params(model, g):
    """[(param, fn)] for every weight the official layout stores as FP8 or MXFP4."""
    named = dict(model.named_parameters())
    out = []
    for canon, kind, shape in mc.canonical_specs(g, with_mtp=False):
        if kind == "fp8":
            p = named[mc.hf_module_name(canon)]
            assert list(p.shape) == shape, (canon, p.shape, shape)
            out.append((p, fq_fp8))
    for i in range(g["n_layers"]):
        for leaf in ("gate_up_proj", "down_proj"):
            out.append((named[f"model.layers.{i}.mlp.experts.{leaf}"], fq_mxfp4))
    return out


# ----------------------------------------------------------------------------------------------
# evaluation

def batched_greedy(model, prompts, n_new, device, pad=2):
    """Greedy continuation of every prompt by stateless forwards on a right-padded batch (the
    model is causal, compressors included, so padding after a prompt never reaches it)."""
    L = max(len(p) for p in prompts) + n_new
    x = torch.full((len(prompts), L), pad, dtype=torch.long)
    for i, p in enumerate(prompts):
        x[i, :len(p)] = torch.tensor(p)
    lens = torch.tensor([len(p) for p in prompts])
    x = x.to(device)
    outs = [[] for _ in prompts]
    with torch.no_grad():
        for _ in range(n_new):
            cur = int(lens.max())
            logits = model(input_ids=x[:, :cur], use_cache=False).logits
            nxt = logits[torch.arange(len(prompts)), (lens - 1).to(device)].argmax(-1).cpu()
            for i in range(len(prompts)):
                x[i, lens[i]] = nxt[i]
                outs[i].append(int(nxt[i]))
            lens = lens + 1
    return outs


def capital_eval(model, tok, capitals, device):
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    n_new = max(len(enc(" " + k)) for _, k in capitals) + 1
    res = {}
    for variant, pre in (("bos", [BOS]), ("no_bos", [])):
        prompts = [pre + enc(f"The capital of {c} is") for c, _ in capitals]
        outs = batched_greedy(model, prompts, n_new, device)
        rows = []
        for (c, k), o in zip(capitals, outs):
            want = " " + k
            n = len(enc(want))
            text = tok.decode(o[:n + 1], skip_special_tokens=False)
            ok = text.startswith(want) and not text[len(want):len(want) + 1].isalnum()
            rows.append({"country": c, "capital": k, "answer": text, "correct": bool(ok)})
        acc = sum(r["correct"] for r in rows) / len(rows)
        res[variant] = {"accuracy": acc, "n_new_tokens": n_new, "rows": rows}
    return res


def golden(model, tok, g, device):
    enc = tok.encode(PROMPT, add_special_tokens=False).ids
    out = {}
    for variant, pre in (("bos", [BOS]), ("no_bos", [])):
        ids = torch.tensor([pre + enc], dtype=torch.long)
        seq, lg = mg.greedy(model, ids.to(device), G)
        gap, rng_ = mg.greedy_gap(lg)
        ent = {"prompt_ids": ids[0].tolist(), "greedy_ids": seq.tolist(),
               "text": tok.decode(seq.tolist(), skip_special_tokens=False),
               "top2_gap_per_step": [round(float(x), 5) for x in gap],
               "min_top2_gap_rel_to_range": float((gap / rng_).min())}
        try:
            ent["worst_rel_topk_margin"] = mg.worst_margin(
                model, dict(g, T=ids.shape[1], G=G, streams="last"), ids[0], device)
        except Exception as e:  # diagnostics only
            ent["worst_rel_topk_margin"] = f"not measured: {e!r}"
        out[variant] = ent
    return out


# ----------------------------------------------------------------------------------------------

def build_model(g, seed):
    torch.manual_seed(seed)
    model = DeepseekV4ForCausalLM(mg.hf_config(g)).float()
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                V, k = b.shape
                r = torch.rand((V, g["n_experts"]), generator=gen)
                b.copy_(torch.argsort(r, dim=1)[:, :k].to(b.dtype))   # k distinct experts / token
    return model


def write_official(model, g, d):
    """Official hub layout in 3 shards (embed, head, rest); returns the dequantised values."""
    vals = mg.state_values(model, g)
    saved = mc.true_values
    mc.true_values = lambda canon, kind, shape, gg: vals[canon]
    try:
        tensors, refs = mc.encode_official(g, "official", with_mtp=False)
    finally:
        mc.true_values = saved
    mc.fresh_dir(d)
    mc.write_sharded(d, tensors, 3, {"format": "pt"})
    mc.write_json(os.path.join(d, "config.json"), mc.hub_config(g, "fp4"))
    dt = {}
    for _, dtype, _, _ in tensors:
        dt[dtype] = dt.get(dtype, 0) + 1
    mc.check_dir(d)
    return refs, dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--tokenizer", required=True, help="the V4 tokenizer.json")
    ap.add_argument("--steps", type=int, default=0, help="0: as many as --time-budget allows")
    ap.add_argument("--time-budget", type=float, default=270.0, help="seconds of training")
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--qat-frac", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--format", choices=["auto", "official", "bf16"], default="auto")
    ap.add_argument("--dim", type=int, default=GEOM["dim"])
    ap.add_argument("--inter", type=int, default=GEOM["inter"])
    ap.add_argument("--name", default=GEOM["name"])
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--init-state", help="skip training: load this state dict (from a run's "
                    "OUTDIR.state.pt) and only quantise, check and write")
    a = ap.parse_args(argv)
    t_start = time.time()
    dev = torch.device(a.device)
    torch.set_num_threads(max(1, min(a.threads, os.cpu_count() or 1)))

    tok = Tokenizer.from_file(a.tokenizer)
    with open(a.tokenizer, encoding="utf-8") as f:
        tj = json.load(f)
    vocab = max(max(tj["model"]["vocab"].values()), max(t["id"] for t in tj["added_tokens"])) + 1
    g = dict(GEOM, vocab=vocab, dim=a.dim, inter=a.inter, name=a.name)
    capitals = read_capitals(os.path.join(HERE, "data", "capitals.tsv"))
    data = Data(tok, capitals, os.path.join(HERE, "data", "prose.txt"), a.seq, a.seed)
    print(f"vocab {vocab}, {len(capitals)} countries, {len(data.prose)} prose paragraphs",
          flush=True)

    model = build_model(g, a.seed)
    if a.init_state:
        model.load_state_dict({k: v.float() for k, v in torch.load(a.init_state).items()})
        a.steps, a.max_steps = -1, 0
    model = model.to(dev).train()
    nparams = sum(p.numel() for p in model.parameters())
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    qparams = quant_params(model, g)
    warm = 100
    steps = max(0, a.steps) or a.max_steps
    log, t_train0, step_time = [], time.time(), None
    step = 0
    while step < steps:
        if not a.steps and step == 12:                # fix the step count from the measured speed
            step_time = (time.time() - t_calib) / 8
            steps = max(200, min(a.max_steps, int(a.time_budget / step_time)))
            print(f"step time {step_time * 1e3:.0f} ms -> {steps} steps", flush=True)
        if step == 4:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_calib = time.time()
        lr = a.lr * min(1.0, (step + 1) / warm) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps)))))
        for pg in opt.param_groups:
            pg["lr"] = lr
        x = data.batch(a.batch).to(dev, non_blocking=True)
        qat = step >= int(steps * (1 - a.qat_frac))
        if qat:
            saved = [p.data.clone() for p, _ in qparams]
            with torch.no_grad():
                for p, fn in qparams:
                    p.data.copy_(fn(p.data))
        logits = model(input_ids=x, use_cache=False).logits
        labels = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)
        loss = F.cross_entropy(logits.view(-1, vocab), labels.view(-1), ignore_index=-100)
        del logits
        loss.backward()
        if qat:
            with torch.no_grad():
                for (p, _), s in zip(qparams, saved):
                    p.data.copy_(s)
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == steps - 1:
            ent = {"step": step, "loss": round(float(loss.detach()), 4), "lr": round(lr, 6),
                   "grad_norm": round(float(gn), 3), "qat": qat,
                   "t": round(time.time() - t_train0, 1)}
            log.append(ent)
            print(json.dumps(ent), flush=True)
        step += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.time() - t_train0
    if not a.init_state:   # kept beside OUTDIR, in case a later stage fails (see --init-state)
        torch.save({k: v.detach().cpu().to(torch.bfloat16) if v.is_floating_point() else v.cpu()
                    for k, v in model.state_dict().items()}, a.outdir.rstrip("/") + ".state.pt")

    # ---- quantise, check, save
    model.eval().cpu()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    res_f32 = capital_eval(model.to(dev), tok, capitals, dev)
    model.cpu()
    print(f"accuracy, unquantised fp32 weights: bos {res_f32['bos']['accuracy']:.3f} "
          f"no_bos {res_f32['no_bos']['accuracy']:.3f}", flush=True)
    out = a.outdir
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    fmt, final, res = None, None, None
    if a.format in ("auto", "official"):
        refs, dts = write_official(model, g, out)
        q = build_model(g, a.seed)
        q.load_state_dict(model.state_dict())
        mg.load_values(q, g, refs)
        q.eval()
        res = capital_eval(q.to(dev), tok, capitals, dev)
        q.cpu()
        paris = res["bos"]["rows"][[c for c, _ in capitals].index("France")]["correct"]
        print(f"accuracy, official FP8/MXFP4: bos {res['bos']['accuracy']:.3f} "
              f"no_bos {res['no_bos']['accuracy']:.3f}, France {paris}", flush=True)
        if a.format == "official" or (paris and min(res["bos"]["accuracy"],
                                                    res["no_bos"]["accuracy"]) >= 0.9):
            fmt, final = {"layout": "official", "stored_dtypes": dts}, q
    if final is None:
        shutil.rmtree(out)
        tmp = out + ".f32"
        model.save_pretrained(tmp)
        bf = DeepseekV4ForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16)
        bf.save_pretrained(out)
        shutil.rmtree(tmp)
        final = DeepseekV4ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        res = capital_eval(final.to(dev), tok, capitals, dev)
        final.cpu()
        fmt = {"layout": "transformers save_pretrained, BF16 (F32 where transformers keeps F32)"}
        print(f"accuracy, BF16: bos {res['bos']['accuracy']:.3f} "
              f"no_bos {res['no_bos']['accuracy']:.3f}", flush=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))

    # ---- goldens: transformers' generate, float32 on the CPU, on the stored weights
    gold = golden(final, tok, g, torch.device("cpu"))
    versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                "python": platform.python_version(), "numpy": np.__version__}
    mc.write_json(os.path.join(out, "golden.json"), {
        "prompt": PROMPT, "G": G, "format": fmt["layout"],
        "computed": "transformers DeepseekV4ForCausalLM.generate (greedy, no stop token, "
                    "all-ones attention mask), float32 on the CPU, weights = the stored ones "
                    "dequantised exactly (the engine's exact mode)",
        "variants": gold, "versions": versions})
    mc.write_json(os.path.join(out, "capitals.json"), {
        "prompt_format": "The capital of {country} is", "format": fmt["layout"],
        "rule": "greedy; correct when the continuation's text starts with ' ' + capital and "
                "the next character is not a letter or digit",
        "accuracy": {v: res[v]["accuracy"] for v in res},
        "accuracy_unquantised_fp32": {v: res_f32[v]["accuracy"] for v in res_f32},
        "n_new_tokens": res["bos"]["n_new_tokens"],
        "countries": [{"country": r0["country"], "capital": r0["capital"],
                       "bos": {"answer": r0["answer"], "correct": r0["correct"]},
                       "no_bos": {"answer": r1["answer"], "correct": r1["correct"]}}
                      for r0, r1 in zip(res["bos"]["rows"], res["no_bos"]["rows"])]})
    mc.write_json(os.path.join(out, "train_log.json"), {
        "geometry": g, "params": nparams, "seed": a.seed, "steps": steps, "batch": a.batch,
        "seq": a.seq, "tokens": steps * a.batch * a.seq, "lr": a.lr, "warmup": warm,
        "schedule": "linear warm-up, cosine to 10%", "optimizer": "AdamW(0.9, 0.95), wd 0, clip 1",
        "qat_from_step": int(steps * (1 - a.qat_frac)), "step_time_s": step_time,
        "train_seconds": round(t_train, 1), "total_seconds": round(time.time() - t_start, 1),
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "versions": versions, "format": fmt,
        "accuracy": {v: res[v]["accuracy"] for v in res},
        "accuracy_unquantised_fp32": {v: res_f32[v]["accuracy"] for v in res_f32},
        "loss_curve": log})
    for v in gold:
        print(f"golden {v}: {gold[v]['text']!r}", flush=True)
    print(f"done in {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
