#!/usr/bin/env bash
# test.sh - the test command: installs dependencies, builds, and runs the whole CPU test suite.
#   bash tools/test.sh              release build in build/, ctest (GPU tests excluded)
#   bash tools/test.sh --sanitize   the same under ASan+UBSan, in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

dir=build; extra=()
if [ "${1:-}" = "--sanitize" ]; then
    # The sanitized build is for the C code; CUDA sources are compiled by the plain build.
    dir=build-asan; extra=(-DDSV4_SANITIZE=ON -DDSV4_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug)
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
fi
jobs=$(nproc)
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${extra[@]}" >/dev/null
cmake --build "$dir" -j "$jobs"
ctest --test-dir "$dir" --output-on-failure -LE gpu -j "$jobs"
