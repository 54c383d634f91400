#!/usr/bin/env bash
# device_compare.sh - on the GPU machine: `dsv4 bench` of two bundles (tools/device_bundle.sh) in
# one call, interleaved old, new, old, new, so that before/after figures come from the same
# machine and moment (run-to-run spread of the decode rows: ~0.5%). With the device tool:
#   run(command="bash tools/device_compare.sh build-old build-new [bench args]",
#       carry=["build-old/bundle.tar.xz", "build-new/bundle.tar.xz"])
# Writes $OUT/bench[_$TAG]_<dir>_<run>.md and prints each run's decode rows (context, batch,
# ms/step, us/layer, of floor, kernels/layer).
set -uo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2
shift 2
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--shape flash --layers 4 --batches 1,8,64 --contexts 4096,65536
    --prefill 0 --no-gemms)
out=${OUT:-.}
for d in "$old" "$new"; do
    [ -x "$d/dsv4" ] || xz -dc "$d/bundle.tar.xz" | tar xf - || exit 1
done
rc=0
for run in 1 2; do
    for d in "$old" "$new"; do
        f="$out/bench${TAG:+_$TAG}_${d}_$run.md"
        LD_LIBRARY_PATH="$PWD/$d/lib" "$d/dsv4" bench "${args[@]}" >"$f" 2>&1 || rc=1
        echo "== $d, run $run"
        grep -A12 '^### Decode' "$f" | grep '^| [0-9]' | cut -d'|' -f2-5,9,12
    done
done
exit $rc
