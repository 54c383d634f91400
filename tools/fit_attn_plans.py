#!/usr/bin/env python3
"""fit_attn_plans.py - refits the attention plans' cost model (bk_attn.cu sa_cost) to a sweep.

Input: the output of `test_gpu_attn --sweep` on the GPU (every plan of the timed decode cases,
each a line "sweep <case> N <n> H <h> nb <blocks of the longest row>: HG <hg> C <c> kb <kb>
bytes <b> per_sm <p> cap <k>: <us> us graph"). The model keeps sa_cost's form, in which a
plan's time is linear in its constants once the waves are counted:
    one pass (C = 1):  waves * f * (a1 + nb (b1 + c1 HG))
    cluster  (C > 1):  waves * f * (a2 + rounds (b2 + c2 HG + (kb - 1)(d2 + e2 HG) + max(kb - 2, 0) g2))
f = F where two CTAs share an SM and the grid is more than one CTA an SM, else 1. The constants
come from least squares on the relative error (each row divided by its time), F from a scan.
Prints the constants, each case's measured best plan against the one the model picks (and the
time lost), and the old constants' result for comparison.
Usage: fit_attn_plans.py SWEEP_OUTPUT [N_SM (132)]"""
import re
import sys

import numpy as np

LINE = re.compile(r"sweep (.+) N (\d+) H (\d+) nb (\d+): HG (\d+) C (\d+) kb (\d+) bytes (\d+) "
                  r"per_sm (\d+) cap (\d+): ([\d.]+) us graph")
# sa_cost's constants as bk_attn.cu has them (keep the two in step when either changes)
OLD = dict(a1=4.8, b1=2.85, c1=0.13, a2=6.0, b2=4.3, c2=0.35, d2=3.0, e2=0.15, g2=3.0, F=1.5)


def plans(path):
    out = []
    for line in open(path):
        m = LINE.search(line)
        if not m:
            continue
        name = m.group(1)
        N, H, nb, HG, C, kb, _, per_sm, cap = (int(m.group(i)) for i in range(2, 11))
        out.append(dict(case=(name, N), N=N, H=H, HG=HG, C=C, kb=kb, per_sm=per_sm, cap=cap,
                        nb=nb, us=float(m.group(11))))
    return out


def waves(p, n_sm):
    ctas = p["N"] * -(-p["H"] // p["HG"]) * p["C"]
    w = -(-ctas // (n_sm * p["per_sm"]))
    if p["C"] > 1 and p["cap"] > 0:
        w = max(w, -(-(ctas // p["C"]) // p["cap"]))
    return w, ctas


def features(p, n_sm, F):
    w, ctas = waves(p, n_sm)
    s = w * (F if p["per_sm"] > 1 and ctas > n_sm else 1.0)
    HG, nb, kb = p["HG"], p["nb"], p["kb"]
    if p["C"] == 1:
        return s * np.array([1, nb, nb * HG, 0, 0, 0, 0, 0, 0], float)
    r = -(-nb // (p["C"] * kb))
    return s * np.array([0, 0, 0, 1, r, r * HG, r * (kb - 1), r * (kb - 1) * HG,
                         r * max(kb - 2, 0)], float)


def fit(ps, n_sm, F):
    X = np.array([features(p, n_sm, F) for p in ps])
    y = np.array([p["us"] for p in ps])
    coef, *_ = np.linalg.lstsq(X / y[:, None], np.ones(len(y)), rcond=None)
    rel = X @ coef / y - 1
    return coef, float(np.sqrt(np.mean(rel ** 2)))


def report(ps, n_sm, F, coef, label):
    print(f"## {label}")
    lost = []
    for case in sorted({p["case"] for p in ps}):
        cs = [p for p in ps if p["case"] == case]
        pred = [features(p, n_sm, F) @ coef for p in cs]
        best = min(cs, key=lambda p: p["us"])
        pick = cs[int(np.argmin(pred))]
        lost.append(pick["us"] / best["us"] - 1)
        print(f"{case[0]:18s} N {case[1]:3d}: best HG {best['HG']:2d} C {best['C']:2d} kb "
              f"{best['kb']} {best['us']:6.1f} us; model's pick HG {pick['HG']:2d} C "
              f"{pick['C']:2d} kb {pick['kb']} {pick['us']:6.1f} us (+{100 * lost[-1]:.0f}%)")
    print(f"mean time lost {100 * np.mean(lost):.1f}%, worst {100 * max(lost):.0f}%")


def main():
    ps = plans(sys.argv[1])
    n_sm = int(sys.argv[2]) if len(sys.argv) > 2 else 132
    old = np.array([OLD[k] for k in ("a1", "b1", "c1", "a2", "b2", "c2", "d2", "e2", "g2")])
    rel = np.array([features(p, n_sm, OLD["F"]) @ old / p["us"] - 1 for p in ps])
    print(f"## the old constants: rms relative error {100 * np.sqrt(np.mean(rel ** 2)):.1f}%, "
          f"mean {100 * np.mean(rel):+.1f}%")
    report(ps, n_sm, OLD["F"], old, "the old constants")
    F, coef, err = min(((F, *fit(ps, n_sm, F)) for F in np.arange(1.0, 2.05, 0.05)),
                       key=lambda t: t[2])
    names = ("a1", "b1", "c1", "a2", "b2", "c2", "d2", "e2", "g2")
    print("## fitted: " + ", ".join(f"{k} {v:.3f}" for k, v in zip(names, coef)) +
          f", F {F:.2f}; rms relative error {100 * err:.1f}% over {len(ps)} plans")
    report(ps, n_sm, F, coef, "the fitted constants")


if __name__ == "__main__":
    main()
