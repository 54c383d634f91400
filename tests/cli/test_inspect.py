#!/usr/bin/env python3
"""test_inspect.py DSV4 FIXTURE_DIR - `dsv4 inspect` end to end.

The expected per-layer schedule is derived here from the checkpoint's own config.json (the
published compress_ratios and num_hash_layers), not from the engine; the published totals are the
model cards' 284B (Flash) and 1.6T (Pro) parameters, MTP excluded.
"""
import json
import subprocess
import sys

dsv4, fixtures = sys.argv[1], sys.argv[2]
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)


def inspect(path, *extra):
    r = subprocess.run([dsv4, "inspect", path, "--json", *extra], capture_output=True, text=True)
    check(r.returncode == 0, f"inspect {path}: rc {r.returncode}: {r.stderr}")
    return json.loads(r.stdout) if r.returncode == 0 else None


for name, published, unit in (("flash-sparse", 284, 1e9), ("pro-sparse", 16, 1e11)):
    d = inspect(f"{fixtures}/{name}", "--context", "65536")
    if not d:
        continue
    cfg = json.load(open(f"{fixtures}/{name}/config.json"))
    ratios, nh, L = cfg["compress_ratios"], cfg["num_hash_layers"], cfg["num_hidden_layers"]
    kinds = {0: "sliding", 4: "CSA", 128: "HCA"}
    check(d["layout"] == "official", f"{name}: layout {d['layout']}")
    check(d["num_layers"] == L and d["num_mtp_layers"] == 1, f"{name}: layer counts")
    check(len(d["layers"]) == L + 1, f"{name}: {len(d['layers'])} layer rows")
    for row in d["layers"]:
        i = row["index"]
        check(row["attention"] == kinds[ratios[i]], f"{name} layer {i}: {row['attention']}")
        check(row["moe"] == ("hash" if i < nh and not row["mtp"] else "normal"),
              f"{name} layer {i}: moe {row['moe']}")
        check(row["attn_format"] == "FP8" and row["expert_format"] == "MXFP4",
              f"{name} layer {i}: formats")
    main = d["total_params"] - d["mtp_params"]
    check(round(main / unit) == published, f"{name}: {main} parameters vs published")
    mem = d["memory"]
    check(mem["weight_bytes"] == d["total_bytes"], f"{name}: weight bytes")
    check(mem["total_bytes"] == mem["weight_bytes"] + mem["state_bytes"] + mem["workspace_bytes"],
          f"{name}: memory sum")
    print(f"{name}: {main / 1e9:.2f}B main parameters, {d['total_bytes'] / 1e9:.1f} GB, "
          f"run at 64K context needs {mem['total_bytes'] / 1e9:.1f} GB")

# Failures: a clear message and exit status 1; usage errors: 2.
r = subprocess.run([dsv4, "inspect", f"{fixtures}/does-not-exist"], capture_output=True, text=True)
check(r.returncode == 1 and "config.json" in r.stderr, f"missing dir: {r.returncode} {r.stderr}")
r = subprocess.run([dsv4, "inspect", f"{fixtures}/corrupt/missing-tensor"], capture_output=True,
                   text=True)
check(r.returncode == 1 and "layers.1.attn.wkv.weight" in r.stderr, f"missing tensor: {r.stderr}")
r = subprocess.run([dsv4, "inspect"], capture_output=True, text=True)
check(r.returncode == 2, "no argument")
r = subprocess.run([dsv4, "inspect", f"{fixtures}/flash-sparse", "--batch", "x"],
                   capture_output=True, text=True)
check(r.returncode == 2 and "--batch" in r.stderr, "bad --batch")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
