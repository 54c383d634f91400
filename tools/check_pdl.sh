#!/usr/bin/env bash
# check_pdl.sh - every CUDA kernel must begin with DSV4_PDL_WAIT() (src/backend/cuda/pdl.cuh):
# the step graphs launch each kernel while the previous one still runs (programmatic dependent
# launch), so a kernel that touched memory before waiting would race with its predecessor.
# A kernel may open with DSV4_PDL_LATE() instead: it waits further down (pdl.cuh says what it may
# read before). Prints the kernels whose body opens with neither; exit 1 if there are any.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - "$@" <<'PY'
import pathlib, re, sys
bad = []
for p in sorted(pathlib.Path("src/backend/cuda").glob("*.cu*")):
    s = p.read_text()
    for m in re.finditer(r"__global__[^;{]*?\([^;{]*?\)\s*\{", s, re.S):
        body = s[m.end():].lstrip()
        if not body.startswith(("DSV4_PDL_WAIT();", "DSV4_PDL_LATE();")):
            names = [n for n in re.findall(r"(\w+)\s*\(", m.group(0)) if n != "__launch_bounds__"]
            bad.append(f"{p}:{s[:m.start()].count(chr(10)) + 1}: {names[0] if names else '?'}")
for b in bad:
    print(f"kernel without DSV4_PDL_WAIT() first: {b}")
sys.exit(1 if bad else 0)
PY
