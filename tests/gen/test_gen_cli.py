#!/usr/bin/env python3
"""test_gen_cli.py - dsv4 run / score / chat end to end on the `mix` golden fixture (vocab 512).

  test_gen_cli.py DSV4_BINARY GOLDEN_DIR WORK_DIR release|asan

WORK_DIR receives copies of the model with a tokenizer.json from tools/make_tiny_tokenizer.py
(and variants whose EOS / <｜User｜> id is a token of the golden continuation, so those stop rules
fire on it). Checks, through the CLI only:
- `run --ids PROMPT --temperature 0 --mode exact` reproduces the golden greedy continuation, with
  logprobs = log_softmax(greedy_logits) within TOL; text output = detokenize(ids);
- `score --ids PROMPT --mode exact` reproduces log_softmax(golden logits) at every position
  within TOL, and the golden top-5 ids where the 5th/6th gap exceeds 2*TOL;
- seeded sampling is reproducible (same seed, same text; another seed, another text);
- each stop rule fires and is reported: eos, user_turn, stop_string (across a token boundary,
  never printed), max_tokens, context;
- errors: missing model dir, tokenizer.json absent, prompt longer than the context, bad flag
  values, no -m (exit 1 / 2);
- chat: two turns, thinking mode shown apart, reproducible;
- a greedy generation of >= 512 tokens: no crash (ASan: no leak, no error); release builds also
  measure the peak RSS of runs generating 8 and 520 tokens: the growth per token must stay within
  2x the session's per-token state (every layer's key row, compressor and indexer projection rows
  and entries, f32, the reference session's layout; 2x for its doubling arrays) + 1 KiB.
"""
import json
import math
import os
import resource
import shutil
import struct
import subprocess
import sys

import numpy as np

TOL = 1e-4  # nats (measured ~6e-6 on the dev box; HF's own float32 paths differ by ~1e-6 of the range)

dsv4, golden, work, variant = sys.argv[1:5]
asan = variant == "asan"
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
fails = 0
passes = 0


def check(name, cond, detail=""):
    global fails, passes
    if cond:
        passes += 1
    else:
        fails += 1
        print(f"FAIL {name} {detail}", file=sys.stderr)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for k, m in h.items():
            if k == "__metadata__" or k not in ("tokens", "logits", "greedy", "greedy_logits"):
                continue
            f.seek(base + m["data_offsets"][0])
            b = f.read(m["data_offsets"][1] - m["data_offsets"][0])
            dt = {"F32": np.float32, "I64": np.int64}[m["dtype"]]
            out[k] = np.frombuffer(b, dtype=dt).reshape(m["shape"])
    return out


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def run(*args, stdin=None):
    p = subprocess.run([dsv4, *args], input=stdin, capture_output=True)
    err = p.stderr.decode("utf-8", "replace")
    check(f"sanitizers quiet: {args[:1]}", "runtime error:" not in err and "Sanitizer" not in err,
          err[-3000:])
    return p.returncode, p.stdout, err


def jlines(out):
    return [json.loads(l) for l in out.decode().splitlines() if l.strip()]


def make_model(name, user_id=None, eos_id=None):
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(os.path.join(golden, "model"), d)
    args = [sys.executable, os.path.join(root, "tools", "make_tiny_tokenizer.py"),
            os.path.join(d, "tokenizer.json")]
    if user_id is not None:
        args += ["--user-id", str(user_id)]
    subprocess.run(args, check=True)
    if eos_id is not None:
        cfg = json.load(open(os.path.join(d, "config.json")))
        cfg["eos_token_id"] = eos_id
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    return d


os.makedirs(work, exist_ok=True)
g = load_safetensors(os.path.join(golden, "golden.safetensors"))
tokens, greedy = [int(t) for t in g["tokens"]], [int(t) for t in g["greedy"]]
ids = ",".join(map(str, tokens))
G = len(greedy)
model = make_model("mix")
exact = ["--mode", "exact", "--temperature", "0", "--ignore-eos"]

# --- golden greedy continuation ------------------------------------------------------------
rc, out, err = run("run", "-m", model, "--ids", ids, *exact, "-n", str(G), "--output", "json",
                   "--top-logprobs", "3")
objs = jlines(out) if rc == 0 else []
toks = [o for o in objs if "id" in o]
check("greedy rc", rc == 0, err)
check("greedy ids", [o["id"] for o in toks] == greedy, f"{[o['id'] for o in toks]} vs {greedy}")
if len(toks) == G:
    ref = log_softmax(g["greedy_logits"])
    d = max(abs(o["logprob"] - ref[j, greedy[j]]) for j, o in enumerate(toks))
    print(f"greedy logprobs: max |d| = {d:.2e} nats")
    check("greedy logprobs", d < TOL, f"{d}")
    check("top_logprobs", all(len(o["top_logprobs"]) == 3 and o["top_logprobs"][0]["id"] == o["id"]
                              for o in toks))
check("json summary", objs and objs[-1].get("done") and objs[-1]["stop_reason"] == "max_tokens"
      and objs[-1]["generated_tokens"] == G and objs[-1]["prompt_tokens"] == len(tokens))
check("closing line", "prompt 420 tokens, prefill" in err and f"generated {G} tokens, decode" in err
      and "stop: max_tokens" in err, err)
check("no progress bar off a TTY", "loading weights" not in err, err)
rc, text, err = run("run", "-m", model, "--ids", ids, *exact, "-n", str(G), "-q")
rc2, detok, _ = run("detokenize", "--tokenizer", os.path.join(model, "tokenizer.json"),
                    stdin=json.dumps(greedy).encode())
check("text output = detokenize(greedy)", rc == 0 and rc2 == 0 and text == detok)
check("quiet", err == "", err)

# The progress bar appears when stderr is a terminal (a pty here).
import pty
master, slave = pty.openpty()
p = subprocess.run([dsv4, "run", "-m", model, "--ids", "0,1", "-n", "2"], stdout=subprocess.PIPE,
                   stderr=slave)
os.close(slave)
tty_err = b""
try:
    while True:
        chunk = os.read(master, 65536)
        if not chunk:
            break
        tty_err += chunk
except OSError:
    pass
os.close(master)
check("progress bar on a TTY", p.returncode == 0 and b"loading weights [" in tty_err
      and b"MiB/s" in tty_err, tty_err[-300:])

# --- score -----------------------------------------------------------------------------------
rc, out, err = run("score", "-m", model, "--ids", ids, "--mode", "exact", "--top-logprobs", "5")
rows = jlines(out) if rc == 0 else []
check("score rc", rc == 0 and len(rows) == len(tokens) + 1, err)
if len(rows) == len(tokens) + 1:
    ref = log_softmax(g["logits"])
    check("score pos 0", rows[0]["logprob"] is None and rows[0]["id"] == tokens[0])
    d = max(abs(rows[p]["logprob"] - ref[p - 1, tokens[p]]) for p in range(1, len(tokens)))
    dt = max(abs(e["logprob"] - ref[p - 1, e["id"]]) for p in range(1, len(tokens))
             for e in rows[p]["top_logprobs"])
    print(f"score logprobs: max |d| = {d:.2e} nats (top-5 entries {dt:.2e})")
    check("score logprobs", d < TOL and dt < TOL, f"{d} {dt}")
    bad = 0
    for p in range(1, len(tokens)):
        order = np.argsort(-ref[p - 1], kind="stable")
        if ref[p - 1, order[4]] - ref[p - 1, order[5]] > 2 * TOL:
            bad += [e["id"] for e in rows[p]["top_logprobs"]] != [int(i) for i in order[:5]]
        rank = 1 + int((ref[p - 1] > ref[p - 1, tokens[p]] + TOL).sum())
        bad += abs(rows[p]["rank"] - rank) > 3
    check("score top-5 ids and ranks", bad == 0, f"{bad} positions")
    last = rows[-1]
    check("score summary", last.get("done") and last["tokens"] == len(tokens)
          and abs(last["sum_logprob"] - sum(r["logprob"] for r in rows[1:-1])) < 1e-2
          and last["next_top_logprobs"][0]["id"] == greedy[0])

# --- seeded sampling -------------------------------------------------------------------------
samp = ["-p", "The quick brown fox", "-n", "24", "--temperature", "1", "-q"]
r1 = run("run", "-m", model, *samp, "--seed", "7")
r2 = run("run", "-m", model, *samp, "--seed", "7")
r3 = run("run", "-m", model, *samp, "--seed", "8")
check("seed reproducible", r1[0] == 0 and r1[1] == r2[1] and len(r1[1]) > 0, r1[2])
check("other seed differs", r3[0] == 0 and r3[1] != r1[1])
filt = samp + ["--top-k", "50", "--top-p", "0.9", "--min-p", "0.05", "--repetition-penalty", "1.3",
               "--presence-penalty", "0.5", "--frequency-penalty", "0.2", "--seed", "11"]
r1, r2 = run("run", "-m", model, *filt), run("run", "-m", model, *filt)
check("filters reproducible", r1[0] == 0 and r1[1] == r2[1], r1[2])

# --- stop rules ------------------------------------------------------------------------------
def first_new(seq, start):
    for j in range(start, len(seq)):
        if seq[j] not in seq[:j]:
            return j
    raise SystemExit("no suitable token")


j = first_new(greedy, 5)
m_eos = make_model("mix_eos", eos_id=greedy[j])
rc, out, err = run("run", "-m", m_eos, "--ids", ids, "--mode", "exact", "--temperature", "0",
                   "--output", "json")
o = jlines(out)
check("eos stop", rc == 0 and o[-1]["stop_reason"] == "eos" and o[-1]["generated_tokens"] == j + 1
      and o[-2]["id"] == greedy[j] and o[-2].get("stop_token") and o[-2]["text"] == ""
      and "stop: eos" in err, f"{rc} {err} {o[-1]}")
k = first_new(greedy, j + 1)
m_usr = make_model("mix_user", user_id=greedy[k])
rc, out, err = run("run", "-m", m_usr, "--ids", ids, "--mode", "exact", "--temperature", "0",
                   "--output", "json")
o = jlines(out)
check("user turn stop", rc == 0 and o[-1]["stop_reason"] == "user_turn"
      and o[-1]["generated_tokens"] == k + 1 and "stop: user_turn" in err, f"{err} {o[-1]}")
rc, out, _ = run("run", "-m", m_usr, "--ids", ids, *exact, "-n", str(G), "--output", "json")
check("--ignore-eos", [x["id"] for x in jlines(out) if "id" in x] == greedy)

# A stop string across a token boundary, from the golden continuation's text: the last char of
# one token's text and the first of the next, both printable ASCII, first occurring there.
pieces = []
tok_json = os.path.join(model, "tokenizer.json")
for t in greedy:
    pieces.append(run("detokenize", "--tokenizer", tok_json, stdin=json.dumps([t]).encode())[1])
full = b"".join(pieces)
stop = None
for a in range(1, G - 1):
    pa, pb = pieces[a], pieces[a + 1]
    if not pa or not pb:
        continue
    s = pa[-2:] + pb[:1] if len(pa) >= 2 else pa[-1:] + pb[:2]
    if all(32 < c < 127 for c in s) and len(s) >= 2:
        at = len(b"".join(pieces[:a + 1])) - (len(s) - (1 if len(pa) >= 2 else 2))
        if full.find(s) == at:
            stop = s
            break
check("found a stop string", stop is not None)
if stop:
    rc, out, err = run("run", "-m", model, "--ids", ids, *exact, "-n", str(G), "--stop",
                       stop.decode(), "--stop", "\x01never")
    check("stop string", rc == 0 and out == full[:full.find(stop)] and stop not in out
          and "stop: stop_string" in err, f"{out!r} {stop!r} {err}")
    rc, out, err = run("run", "-m", model, "--ids", ids, *exact, "-n", str(G), "--stop",
                       stop.decode(), "--output", "json")
    o = jlines(out)
    check("stop string json", o[-1]["stop_reason"] == "stop_string"
          and o[-1]["stop_string"] == stop.decode())
rc, out, err = run("run", "-m", model, "--ids", ids, *exact, "-n", "5", "--output", "json")
o = jlines(out)
check("max tokens", rc == 0 and o[-1]["stop_reason"] == "max_tokens"
      and [x["id"] for x in o[:-1]] == greedy[:5])
rc, out, err = run("run", "-m", model, "--ids", ids, *exact, "--context", str(len(tokens) + 7),
                   "--output", "json")
o = jlines(out)
check("context stop", rc == 0 and o[-1]["stop_reason"] == "context"
      and [x["id"] for x in o[:-1]] == greedy[:7] and "stop: context" in err, err)

# --- errors ----------------------------------------------------------------------------------
rc, _, err = run("run", "-m", os.path.join(work, "nope"), "-p", "x")
check("missing model dir", rc == 1 and "not found" in err, err)
rc, _, err = run("run", "-m", os.path.join(golden, "model"), "-p", "x")
check("tokenizer.json absent", rc == 1 and "tokenizer.json absent" in err, err)
rc, _, err = run("run", "-m", model, "--ids", ids, "--context", "100")
check("prompt longer than the context", rc == 1 and "DSV4_ERR_CONTEXT_OVERFLOW" in err
      and "context" in err, err)
for bad in (["--temperature", "-1"], ["--temperature", "abc"], ["--top-p", "0"], ["--top-p", "2"],
            ["--min-p", "1.5"], ["--repetition-penalty", "0"], ["--top-k", "-3"],
            ["--max-tokens", "0"], ["--mode", "fast"], ["--ids", "1,x"], ["--bogus"],
            ["--top-logprobs", "99"], ["--context", "1"], ["--seed", "-1"]):
    args = ["run", "-m", model, "--ids", "0,1"] + bad if bad[0] != "--ids" else \
        ["run", "-m", model] + bad
    rc, _, err = run(*args)
    check(f"bad flag {bad}", rc == 2 and err.startswith("dsv4 run:"), f"{rc} {err}")
os.environ["DSV4_DEFAULT_MODEL"] = ""   # no embedded model (models/dsv4-tiny): the usage error
for cmd in ("run", "chat"):
    rc, _, err = run(cmd, "-p", "x") if cmd == "run" else run(cmd)
    check(f"{cmd} without -m", rc == 2 and "no model given (-m MODEL_DIR)" in err, err)
rc, _, err = run("score", "-m", model)
check("score usage", rc == 2, err)

# --- chat ------------------------------------------------------------------------------------
conv = b"Hello there\nHow are you?\n"
chat = ["chat", "-m", model, "-n", "12", "--seed", "5"]
rc, out, err = run(*chat, stdin=conv)
check("chat two turns", rc == 0 and err.count("dsv4 chat: prompt") == 2
      and out.count(b"\n") >= 2, err)
check("chat reproducible", run(*chat, stdin=conv)[1] == out)
rc, out, err = run(*chat, "--think", "--system", "Be brief.", stdin=conv)
check("chat thinking shown apart", rc == 0 and out.startswith(b"[reasoning]\n"), out[:60])

# --- long greedy generation ------------------------------------------------------------------
def peak_rss_kib(args):
    """Peak RSS of one dsv4 process, measured in a fresh child interpreter."""
    code = ("import resource,subprocess,sys;"
            "r=subprocess.run(sys.argv[1:],capture_output=True);"
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    p = subprocess.run([sys.executable, "-c", code, dsv4, *args], capture_output=True, text=True)
    rc, kib = p.stdout.split()
    return int(rc), int(kib)


N_LONG = 520
long_args = ["run", "-m", model, "--ids", ",".join(map(str, tokens[:16])), "--mode", "exact",
             "--temperature", "0", "--ignore-eos", "--output", "json"]
rc, out, err = run(*long_args, "-n", str(N_LONG))
o = jlines(out) if rc == 0 else []
check("long generation", rc == 0 and o and o[-1]["generated_tokens"] == N_LONG
      and o[-1]["stop_reason"] == "max_tokens", err[-2000:])
if not asan:
    # Per-token state of the reference session (f32): every layer's key row (head_dim), and per
    # compressor both projections (kv + gate) of width 2*dim (ratio 4) or dim (128) plus one
    # entry of dim every m tokens; CSA layers also have the indexer's compressor.
    cfg = json.load(open(os.path.join(model, "config.json")))
    hd, ihd = cfg["head_dim"], cfg["index_head_dim"]
    per_tok = 4  # the id
    for t in cfg["layer_types"]:
        per_tok += 4 * hd
        if t == "compressed_sparse_attention":
            per_tok += 4 * (2 * 2 * hd + hd / 4) + 4 * (2 * 2 * ihd + ihd / 4)
        elif t == "heavily_compressed_attention":
            per_tok += 4 * (2 * hd + hd / 128)
    rc1, small = peak_rss_kib(long_args + ["-n", "8"])
    rc2, big = peak_rss_kib(long_args + ["-n", str(N_LONG)])
    growth = (big - small) * 1024 / (N_LONG - 8)
    # The session doubles its arrays when full: up to 2x the state, plus allocator slack.
    limit = 2 * per_tok + 1024
    print(f"memory: peak RSS {small} KiB at 8 tokens, {big} KiB at {N_LONG}: "
          f"{growth:.0f} B/token (state {per_tok:.0f} B/token, limit {limit:.0f})")
    check("memory per token bounded", rc1 == 0 and rc2 == 0 and growth <= limit,
          f"{growth} > {limit}")

print(f"{passes} passed, {fails} failed")
sys.exit(1 if fails else 0)
