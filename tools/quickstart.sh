#!/usr/bin/env bash
# quickstart.sh [MODEL_DIR] - installs dependencies, builds dsv4 (release), and runs the main job:
# without MODEL_DIR, greedy `dsv4 run -p "The capital of France is"` on the embedded test model
# (models/dsv4-tiny, a tiny DeepSeek-V4 in the official FP8/MXFP4 layout that knows capitals;
# `dsv4 run` uses it when no -m is given); with MODEL_DIR, `dsv4 inspect MODEL_DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
model=${1:-}
./build/dsv4 device
if [ -z "$model" ]; then
    ./build/dsv4 inspect models/dsv4-tiny
    ./build/dsv4 run -p "The capital of France is" --temperature 0 -n 16 -q
    echo
else
    ./build/dsv4 inspect "$model"
fi
