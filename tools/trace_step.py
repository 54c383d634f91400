#!/usr/bin/env python3
"""trace_step.py - prints the kernel timeline of `dsv4 bench --trace FILE` (a trace build:
cmake -DDSV4_TRACE=ON; src/backend/cuda/trace.cuh says what each record holds).

Each launch of the traced step is one line, in the order its CTAs were placed; times in us from
the step's first record:

  placed  when its first CTA started (its last: "last")
  wait    when its first CTA's PDL wait returned, i.e. the work before it had completed (a
          kernel that polls a counter instead, moe_mma.cu's RDY: when the first poll returned)
  end     when its last CTA exited (thread 0's exit)
  run     end - wait: what the launch takes once its inputs are there
  after   the launch that ended last before its wait returned (its predecessor, on one chain)
  wake    wait - that launch's end: the cost of the kernel boundary

Usage: tools/trace_step.py TRACE [--tag CONTEXT:BATCH] [--src src/backend/cuda] [--sum]
  --sum  adds up run and wake per kernel name
"""
import argparse
import collections
import os
import re
import sys


def fnv(s):
    h = 2166136261
    for c in s.encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h


MACRO = re.compile(r"DSV4_PDL_(WAIT|WAIT_HELD|LATE)\(\)")
GLOBAL = re.compile(r"__global__")
FUNC = re.compile(r"(\w+)\s*\(")


def site_names(src):
    """site -> (name, kernel_open): the kernel or function whose body holds the macro."""
    names = {}
    for fn in sorted(os.listdir(src)):
        if not fn.endswith((".cu", ".cuh")):
            continue
        lines = open(os.path.join(src, fn)).read().split("\n")
        base = fnv(fn) & 0xFFFF0000
        for i, l in enumerate(lines):
            if not MACRO.search(l) or l.lstrip().startswith(("*", "/*", "#")):
                continue
            name, opening = "?", False
            for j in range(i - 1, max(-1, i - 60), -1):
                t = lines[j]
                if GLOBAL.search(t):
                    sig = " ".join(lines[j:i])
                    cands = [n for n in FUNC.findall(sig) if n != "__launch_bounds__"]
                    name = cands[0] if cands else "?"
                    body = sig[sig.find("{") + 1:] if "{" in sig else ""
                    opening = body.strip() == ""
                    break
                if t and not t[0].isspace() and t[0] not in "}/*#" and "(" in t:
                    m = FUNC.findall(t)
                    cands = [n for n in m if n not in ("__forceinline__", "__device__")]
                    name = (cands[0] if cands else "?") + "()"
                    break
            names[base | ((i + 1) & 0xFFFF)] = (name, opening)
    return names


def load(path):
    """tag -> records (grid, site, kind, sm, blk, nblk, ts, t0, t1, te)."""
    steps = collections.OrderedDict()
    for l in open(path):
        if l.startswith("#"):
            print(l.rstrip(), file=sys.stderr)
            continue
        f = l.rstrip().split(",")
        if len(f) != 11:
            continue
        steps.setdefault(f[0], []).append(
            (int(f[1]), int(f[2], 16)) + tuple(int(v) for v in f[3:])
        )
    return steps


def launches(recs, names):
    by = collections.defaultdict(list)
    for r in recs:
        by[r[0]].append(r)
    out = []
    for grid, rs in by.items():
        opening = [r for r in rs if names.get(r[1], ("", False))[1]]
        if not opening:
            continue
        name = names[opening[0][1]][0]
        waits = [r[8] for r in rs if r[2] in (1, 2)]
        polls = [r[8] for r in rs if r[2] == 3]
        w = waits or polls
        out.append(
            {
                "grid": grid,
                "name": name + (" (polls)" if polls and not waits else ""),
                "ctas": len(set(r[4] for r in opening)),
                "nblk": opening[0][5],
                "placed": min(r[6] for r in opening),
                "last": max(r[6] for r in opening),
                "wait": min(w) if w else None,
                "end": max(r[9] for r in opening),
            }
        )
    out.sort(key=lambda x: x["placed"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--tag")
    ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src",
                                                  "backend", "cuda"))
    ap.add_argument("--sum", action="store_true")
    a = ap.parse_args()
    names = site_names(a.src)
    for tag, recs in load(a.trace).items():
        if a.tag and tag != a.tag:
            continue
        ls = launches(recs, names)
        t00 = min(x["placed"] for x in ls)
        us = lambda t: "" if t is None else "%.2f" % ((t - t00) / 1e3)
        print(f"## step {tag} (context:batch): {len(ls)} launches, "
              f"{(max(x['end'] for x in ls) - t00) / 1e3:.1f} us from the first CTA to the last")
        print("| # | kernel | CTAs | placed | last | wait | end | run | after | wake |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        per = collections.defaultdict(lambda: [0, 0.0, 0.0])
        for i, x in enumerate(ls):
            t = x["wait"] if x["wait"] is not None else x["placed"]
            prev = [(j, y) for j, y in enumerate(ls) if y is not x and y["end"] <= t + 300]
            after, wake = "", ""
            if prev:
                j, y = max(prev, key=lambda jy: jy[1]["end"])
                after, wake = str(j), "%.2f" % ((t - y["end"]) / 1e3)
                per[x["name"]][2] += (t - y["end"]) / 1e3
            run = (x["end"] - t) / 1e3
            per[x["name"]][0] += 1
            per[x["name"]][1] += run
            ctas = "%d" % x["ctas"] + ("" if x["ctas"] == x["nblk"] else "/%d" % x["nblk"])
            print(f"| {i} | {x['name']} | {ctas} | {us(x['placed'])} | {us(x['last'])} | "
                  f"{us(x['wait'])} | {us(x['end'])} | {run:.2f} | {after} | {wake} |")
        if a.sum:
            print(f"\n### by kernel, step {tag} (us)")
            print("| kernel | launches | run | wake | run a launch |")
            print("|---|---|---|---|---|")
            for n, (c, r, w) in sorted(per.items(), key=lambda kv: -kv[1][1]):
                print(f"| {n} | {c} | {r:.1f} | {w:.1f} | {r / c:.2f} |")
            print()


if __name__ == "__main__":
    main()
