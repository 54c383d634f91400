#!/usr/bin/env bash
# quickstart.sh [MODEL_DIR] - installs dependencies, builds dsv4 (release), and runs the main job
# on MODEL_DIR, or on a tiny synthetic DeepSeek-V4 checkpoint in the official layout when no
# directory is given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
model=${1:-}
if [ -z "$model" ]; then
    .venv/bin/python tools/make_checkpoints.py build/quickstart --only tiny-official >/dev/null
    model=build/quickstart/tiny-official
fi
./build/dsv4 device
./build/dsv4 inspect "$model"
