#!/usr/bin/env bash
# fuzz.sh SECONDS - builds the libFuzzer targets (clang, ASan+UBSan) and runs each for SECONDS,
# starting from the seed corpus in fuzz/corpus/<target>/. Crashes are saved in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
bash tools/setup.sh >/dev/null
CC=clang cmake -S . -B build-fuzz -G Ninja -DDSV4_FUZZ=ON -DDSV4_CUDA=OFF -DDSV4_TESTS=OFF \
    -DDSV4_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$(nproc)"
for t in fuzz_safetensors fuzz_config; do
    work=build-fuzz/corpus-$t
    mkdir -p "$work"
    echo "fuzz: $t for ${secs}s"
    (cd build-fuzz && ./fuzz/"$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "corpus-$t" "../fuzz/corpus/$t" 2>&1 | tail -n 12)
done
