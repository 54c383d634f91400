#!/usr/bin/env bash
# device_run.sh - runs on the GPU machine over a bundle made by tools/device_bundle.sh.
# Results go to $OUT (when set) as well as stdout. Arguments pick the parts (default: all):
#   ops       the per-op GPU tests (test_gpu_*: each CUDA op against its CPU implementation)
#   engine    the engine on the GPU against the CPU session forward, batch vs singles, graphs
#   cli       dsv4 run/score on the GPU with the embedded model
#   sanitize  compute-sanitizer memcheck over the engine on a small fixture and the op tests
#   racecheck compute-sanitizer racecheck over the op tests' small cases
#   synccheck compute-sanitizer synccheck (barrier use) over the op tests' small cases
#   bench     dsv4 bench (Flash-shaped layers); bench-pro: Pro-shaped layers
#   ncu       per-kernel times (Nsight Compute) of the bench's op-timer steps, batch 1 and 64
#   trace     the kernel timeline of one graph step (a trace bundle: DSV4_CMAKE_ARGS=-DDSV4_TRACE=ON
#             tools/device_bundle.sh build-trace, then DSV4_BUILD=build-trace), Flash and Pro
#   plan      the memory plan's error for a model larger than the GPU
set -uo pipefail
cd "$(dirname "$0")/.."
B=${DSV4_BUILD:-build-device}
[ -f "$B/bundle.tar.xz" ] && xz -dc "$B/bundle.tar.xz" | tar xf -
export LD_LIBRARY_PATH="$PWD/$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=${OUT:-/tmp/dsv4-out}
mkdir -p "$out"
rc=0
step() {
    echo "== $*"
    "$@" || { echo "FAILED($?): $*"; rc=1; }
}
parts=${*:-ops engine cli sanitize synccheck}
f=tests/fixtures
models="$f/goldens/mix/model $f/goldens/hd512-nvfp4/model $f/goldens/hd512-fp8/model models/dsv4-tiny"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for part in $parts; do
    case $part in
    ops)
        step $B/dsv4 device --device cuda
        step $B/tests/test_cuda_dequant $f/hf-saved $f/goldens/hd512-fp8/model \
            $f/goldens/hd512-nvfp4/model $f/mtp/model models/dsv4-tiny
        for t in $B/tests/test_gpu_*; do step "$t"; done
        ;;
    engine) step $B/tests/test_engine --device cuda $models ;;
    cli)
        step $B/dsv4 run -m models/dsv4-tiny --device cuda -p "The capital of France is" \
            --temperature 0 -n 8
        step $B/dsv4 score -m models/dsv4-tiny --device cuda -p "The capital of France is Paris."
        step $B/dsv4 score -m models/dsv4-tiny --device cpu -p "The capital of France is Paris."
        step $B/dsv4 run -m models/dsv4-tiny --device cpu -p "The capital of France is" \
            --temperature 0 -n 8
        ;;
    sanitize)
        step compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_engine \
            --device cuda $f/goldens/mix/model
        for t in $B/tests/test_gpu_*; do
            step compute-sanitizer --tool memcheck --error-exitcode 9 "$t" --small
        done
        ;;
    racecheck) # shared-memory hazards: every kernel runs in the op tests' small cases
        for t in $B/tests/test_gpu_*; do
            step compute-sanitizer --tool racecheck --error-exitcode 9 "$t" --small
        done
        ;;
    synccheck) # barriers: a named barrier met at two instructions, __syncthreads in divergence
        for t in $B/tests/test_gpu_*; do
            step compute-sanitizer --tool synccheck --error-exitcode 9 "$t" --small
        done
        ;;
    bench) step $B/dsv4 bench --shape flash --layers 4 ;;
    bench-pro) step $B/dsv4 bench --shape pro --layers 2 --batches 1,8,64 ;;
    trace) # tools/trace_step.py: each launch's placement and PDL wait in a replayed step
        for sh in flash:4:1,2,8,64 pro:2:1,4,64; do
            IFS=: read -r shape layers batches <<<"$sh"
            step $B/dsv4 bench --shape $shape --layers $layers --batches $batches --contexts 4096 \
                --prefill 0 --no-gemms --steps 20 --trace "$out/trace-$shape.csv"
            step python3 tools/trace_step.py "$out/trace-$shape.csv" --sum >"$out/trace-$shape.md"
        done
        ;;
    ncu) # kernel durations of the 5 op-timer decode steps (profiler range = dsv4_bk_prof)
        for bt in 1 64; do
            ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum \
                --csv --print-units base $B/dsv4 bench --shape flash --layers 4 --batches $bt \
                --contexts 4096 --steps 3 --prefill 0 >"$out/ncu_b$bt.csv" 2>"$out/ncu_b$bt.err"
            echo "== ncu batch $bt (rc $?)"
            python3 tools/ncu_summary.py "$out/ncu_b$bt.csv" 5 | tee "$out/ncu_b$bt.md"
        done
        ;;
    plan) # the whole Flash model does not fit one 80 GB GPU: the engine must say so, with numbers
        echo "== dsv4 bench --shape flash --layers 43 (expected: a clear out-of-memory error)"
        if $B/dsv4 bench --shape flash --layers 43 --batches 1 --contexts 4096; then
            echo "FAILED: a 160 GB model reported no error"
            rc=1
        fi
        ;;
    *) echo "unknown part $part"; rc=1 ;;
    esac
done
exit $rc
