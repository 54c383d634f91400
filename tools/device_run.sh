#!/usr/bin/env bash
# device_run.sh - runs on the GPU machine over a bundle made by tools/device_bundle.sh.
# Results go to $OUT (when set) as well as stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$PWD/build-device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=${OUT:-/tmp/dsv4-out}
mkdir -p "$out"
rc=0
step() {
    echo "== $*"
    "$@" || { echo "FAILED: $*"; rc=1; }
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
step build-device/dsv4 device
step build-device/dsv4 device --device cuda
f=tests/fixtures
step build-device/tests/test_cuda_dequant $f/hf-saved $f/goldens/hd512-fp8/model \
    $f/goldens/hd512-nvfp4/model $f/mtp/model models/dsv4-tiny
exit $rc
