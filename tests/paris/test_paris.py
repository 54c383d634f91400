#!/usr/bin/env python3
"""test_paris.py - the embedded test model (models/dsv4-tiny) through the dsv4 CLI.

  test_paris.py DSV4_BINARY MODEL_DIR run|capitals [release|asan]

run:      greedy `dsv4 run -m MODEL -p "The capital of France is"` prints text starting with
          " Paris" (both numeric modes); the 32-token greedy continuation (--output json) equals
          transformers' own generate() recorded in MODEL/golden.json, for the prompt with BOS
          (what -p feeds) and without (--ids), in the exact and the faithful mode; and, when the
          binary was built with a default model, `dsv4 run` without -m uses it and says so in
          one line on stderr.
capitals: greedy "The capital of {country} is" for every country of MODEL/capitals.json (the
          default = faithful mode, what users get): at least 90% must start with " " + capital
          (followed by a non-alphanumeric character); every failure is listed. Under ASan only
          every 10th country (France included) is run, to keep the sanitizer job short.
"""
import concurrent.futures
import json
import os
import subprocess
import sys

dsv4, model, what = sys.argv[1:4]
asan = len(sys.argv) > 4 and sys.argv[4] == "asan"
fails = 0


def check(name, ok, detail=""):
    global fails
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"), flush=True)
    fails += not ok


def run(*args, env=None, timeout=600):
    p = subprocess.run([dsv4, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def greedy_ids(args):
    rc, out, err = run("run", *args, "--temperature", "0", "--output", "json", "-q")
    if rc:
        return None, err
    toks = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [t["id"] for t in toks if "id" in t], err


if what == "run":
    with open(os.path.join(model, "golden.json"), encoding="utf-8") as f:
        gold = json.load(f)
    prompt, G = gold["prompt"], gold["G"]
    for mode in ("exact", "faithful"):
        rc, out, err = run("run", "-m", model, "-p", prompt, "--temperature", "0", "-n", "8",
                           "--mode", mode, "-q")
        check(f"{mode}: run -p {prompt!r} starts with ' Paris'",
              rc == 0 and out.startswith(" Paris"), f"rc {rc}, stdout {out!r}, stderr {err!r}")
        for variant, ent in gold["variants"].items():
            want = ent["greedy_ids"]
            if variant == "bos":   # -p text: BOS + the text's ids, as golden.json's prompt_ids
                args = ["-m", model, "-p", prompt]
            else:
                args = ["-m", model, "--ids", ",".join(map(str, ent["prompt_ids"]))]
            got, err = greedy_ids(args + ["-n", str(G), "--mode", mode])
            first = None if got is None else next(
                (i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                None if len(got) == len(want) else min(len(got), len(want)))
            check(f"{mode}: {G}-token greedy continuation ({variant}) equals transformers' "
                  f"generate()", got == want,
                  f"first difference at step {first}: got {got}, want {want}" if got is not None
                  else err)
    # the default model: no -m (only when this build knows one; see src/cli)
    env = dict(os.environ)
    env.pop("DSV4_DEFAULT_MODEL", None)
    rc, out, err = run("run", "-p", prompt, "--temperature", "0", "-n", "4", "-q", env=env)
    if rc == 2 and "no model given" in err:
        print("skip run without -m: this build has no default model", flush=True)
    else:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        check("run without -m: uses the embedded model, one line on stderr",
              rc == 0 and out.startswith(" Paris") and len(lines) == 1
              and "dsv4-tiny" in lines[0], f"rc {rc}, stdout {out!r}, stderr {err!r}")
    env["DSV4_DEFAULT_MODEL"] = ""
    rc, out, err = run("run", "-p", prompt, env=env)
    check("run without -m and DSV4_DEFAULT_MODEL='': usage error",
          rc == 2 and "no model given" in err, f"rc {rc}, stderr {err!r}")
elif what == "capitals":
    with open(os.path.join(model, "capitals.json"), encoding="utf-8") as f:
        table = json.load(f)
    rows = table["countries"]
    if asan:
        rows = [r for i, r in enumerate(rows) if i % 10 == 0 or r["country"] == "France"]
    n_new = table["n_new_tokens"]

    def answer(r):
        rc, out, err = run("run", "-m", model, "-p", f"The capital of {r['country']} is",
                           "--temperature", "0", "-n", str(n_new), "--threads", "1", "-q")
        want = " " + r["capital"]
        ok = rc == 0 and out.startswith(want) and not out[len(want):len(want) + 1].isalnum()
        return r, ok, out if rc == 0 else f"rc {rc}: {err.strip()}"

    workers = max(1, min(4, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        res = list(ex.map(answer, rows))
    bad = [(r, out) for r, ok, out in res if not ok]
    for r, out in bad:
        print(f"wrong: The capital of {r['country']} is -> {out!r} (want {r['capital']!r}; "
              f"transformers: {r['bos']['answer']!r})", flush=True)
    acc = 1 - len(bad) / len(res)
    check(f"capitals: {len(res) - len(bad)}/{len(res)} right ({100 * acc:.1f}%, need >= 90%)",
          acc >= 0.9, f"{len(bad)} wrong")
    check("capitals: France -> Paris",
          all(ok for r, ok, _ in res if r["country"] == "France"))
else:
    sys.exit(f"unknown test {what!r}")
print(f"{what}: {'FAILED' if fails else 'passed'} ({fails} failure(s))")
sys.exit(1 if fails else 0)
