#!/usr/bin/env python3
"""ncu_summary.py - sums an `ncu --csv --metrics gpu__time_duration.sum` log per kernel name.

Reads the CSV that tools/device_run.sh's `ncu` part writes (one row per profiled kernel launch
of the bench's op-timer steps) and prints, per kernel, launches, total and mean microseconds and
the share of the whole, sorted by total. Arguments: the CSV file and the number of steps it
covers (to print per-step figures)."""
import csv
import sys
from collections import defaultdict


def main():
    path, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    tot = defaultdict(float)
    cnt = defaultdict(int)
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].split("(")[0]
        tot[name] += float(row["Metric Value"].replace(",", "")) / 1e3  # ns -> us
        cnt[name] += 1
    total = sum(tot.values())
    launches = sum(cnt.values())
    print(f"{launches / steps:.0f} kernels/step, {total / steps:.1f} us/step of kernel time")
    print("| kernel | launches/step | us/step | us/launch | share |")
    print("|---|---|---|---|---|")
    for k in sorted(tot, key=tot.get, reverse=True):
        print(f"| {k} | {cnt[k] / steps:.1f} | {tot[k] / steps:.1f} | {tot[k] / cnt[k]:.2f} "
              f"| {100 * tot[k] / total:.1f}% |")


if __name__ == "__main__":
    main()
