#!/usr/bin/env bash
# device_bundle.sh - builds dsv4 here for the lent GPU machine and packs what it needs there.
#
# The GPU machine (Ubuntu 24.04, CUDA 13, sm_90a) has the PCRE2 runtime but no cJSON and no
# package access, so we build here (release, CUDA on, tests on) into build-device/ and copy the
# cJSON shared library next to the binaries, and pack them into build-device/bundle.tar.xz.
# Then, with the device tool:
#   run(command="bash tools/device_run.sh [parts]", carry=["build-device/bundle.tar.xz"])
# where tools/device_run.sh unpacks it, sets LD_LIBRARY_PATH and runs the GPU checks. The CUDA
# runtime is linked statically, so only the driver is needed there.
# An argument names another build folder (default build-device), so that several bundles can
# be made side by side; DSV4_CMAKE_ARGS adds configure options (e.g. -DDSV4_TRACE=ON for the
# kernel timeline of `dsv4 bench --trace`).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-device}
bash tools/setup.sh >/dev/null
export PATH="$PATH:/usr/local/cuda/bin"
# shellcheck disable=SC2086 # DSV4_CMAKE_ARGS is a list of options
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV4_CUDA=ON ${DSV4_CMAKE_ARGS:-} >/dev/null
cmake --build "$B" -j "$(nproc)"
mkdir -p "$B/lib"
for lib in $(ldd "$B/dsv4" | awk '/cjson/ {print $3}'); do
    cp -L "$lib" "$B/lib/"
done
# Only binaries travel, packed: every test binary links the whole library with its kernels
# (~2.5 MB each), and the tracked tree already takes ~54 of the 64 MiB a device call may carry.
# The GPU tests read the committed checkpoints under tests/fixtures and models/.
# xz -9: its 64 MiB window spans all the binaries (~9 MB each, mostly the same kernels), so they
# pack as one (~2 MB); -6's 8 MiB window held less than one binary (11 MB in all).
tar cf - "$B/dsv4" "$B"/tests/test_engine "$B"/tests/test_gpu_* "$B"/tests/test_cuda_dequant \
    "$B"/tests/bench_gpu_access "$B"/tests/bench_gpu_stream \
    "$B/lib" | xz -9 -T2 >"$B/bundle.tar.xz"
echo "device bundle: $B/bundle.tar.xz ($(du -h "$B/bundle.tar.xz" | cut -f1)); run with"
echo "  run(command=\"bash tools/device_run.sh [parts]\", carry=[\"$B/bundle.tar.xz\"])"
