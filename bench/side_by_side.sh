#!/usr/bin/env bash
# side_by_side.sh - issue 8's "side by side in the same run", on the GPU machine: transformers'
# time for one decoder layer (tools/hf_layer_time.py), then `dsv4 bench --shape flash --layers 4`
# given that figure (the bench itself times the decode projections against cuBLASLt FP8).
# Runs over a bundle made by tools/device_bundle.sh:
#   run(command="DSV4_BUILD=build-x bash bench/side_by_side.sh [more bench arguments]",
#       carry=["build-x/bundle.tar.xz"])
# Results go to $OUT (hf_layer.json, hf.txt, bench.md, *.err) as well as stdout. When the bench
# fails it runs once more without the cuBLASLt part and at context 4096 only, so that the rest of
# the report survives.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${DSV4_BUILD:-build-device}
[ -f "$B/bundle.tar.xz" ] && xz -dc "$B/bundle.tar.xz" | tar xf -
export LD_LIBRARY_PATH="$PWD/$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=${OUT:-/tmp/dsv4-out}
mkdir -p "$out"
py=${DSV4_PYTHON:-/opt/torch/.venv/bin/python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
git log -1 --format='commit %H' 2>/dev/null

t0=$(date +%s)
echo "== transformers: tools/hf_layer_time.py (limit ${HF_TIMEOUT:-150} s)"
timeout "${HF_TIMEOUT:-150}" "$py" tools/hf_layer_time.py --json "$out/hf_layer.json" \
    >"$out/hf.txt" 2>"$out/hf.err"
echo "(rc $?, $(($(date +%s) - t0)) s)"
cat "$out/hf.txt"
tail -5 "$out/hf.err"
hf=()
[ -s "$out/hf_layer.json" ] && hf=(--hf-layer-json "$out/hf_layer.json")

t0=$(date +%s)
echo "== $B/dsv4 bench --shape flash --layers 4 $* ${hf[*]}"
timeout "${BENCH_TIMEOUT:-200}" "$B/dsv4" bench --shape flash --layers 4 "$@" "${hf[@]}" \
    >"$out/bench.md" 2>"$out/bench.err"
rc=$?
echo "(rc $rc, $(($(date +%s) - t0)) s)"
cat "$out/bench.md"
tail -4 "$out/bench.err"
if [ $rc -ne 0 ]; then
    echo "== again without the cuBLASLt part, context 4096 only"
    timeout 100 "$B/dsv4" bench --shape flash --layers 4 --contexts 4096 --no-gemms "${hf[@]}" \
        >"$out/bench2.md" 2>"$out/bench2.err"
    echo "(rc $?)"
    cat "$out/bench2.md"
    tail -4 "$out/bench2.err"
fi
exit $rc
