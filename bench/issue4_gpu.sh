#!/usr/bin/env bash
# Issue 4's GPU measurements in calls of under 10 minutes each, every table and log under $OUT
# (default ./gpu-out):
#
#     OUT=/tmp/out bash bench/issue4_gpu.sh layers       # layer table (fp32 at "highest" and "high"),
#                                                        # plane box at batches 50-66, spectral vs box
#     OUT=/tmp/out bash bench/issue4_gpu.sh spectral     # spectral kernel configs (default, one plane,
#                                                        # two planes) vs box
#     OUT=/tmp/out bash bench/issue4_gpu.sh ncu-spectral # ncu profile of the spectral kernel at stage 1
#     OUT=/tmp/out bash bench/issue4_gpu.sh trees DIR..  # the spectral kernel of runtime copies side by side
#     OUT=/tmp/out bash bench/issue4_gpu.sh kernels [DIR..] # GPU time per kernel of stage 1-2 fp32
#                                                        # forwards (this checkout, or runtime copies)
#     OUT=/tmp/out bash bench/issue4_gpu.sh tests        # the runtime's tests on the GPU
#     OUT=/tmp/out bash bench/issue4_gpu.sh model-bf16   # whole models vs convnext_tiny (also model-fp32)
#
# On the H100 of 2026-12-05 `layers` took 270 s; the runtime tests did not finish in 150 s in one
# process (hence the shards), and bf16 models did not in 280 s (compiling three models for inference
# and training), hence the split.
# `model-*` builds specs, so it needs pydantic importable (on the device: carried wheels, see
# docs/runtime.md "GPU results").
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
part="${1:-layers}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > "$out/gpu.txt"
git log -1 --format=%h >> "$out/gpu.txt" 2>/dev/null
case "$part" in
  layers)
    timeout 180 python3 bench/bench_layers.py --backends triton --cudagraph --out "$out/layers.md" \
      > "$out/layers.log" 2>&1
    timeout 100 python3 bench/bench_layers.py --backends triton --cudagraph --float32-matmul-precision high \
      --out "$out/layers-tf32.md" > "$out/layers-tf32.log" 2>&1
    for batch in 50 56 64 66; do
      timeout 30 python3 bench/bench_forms.py --batch "$batch" --stages 1 --dtypes bf16 --only planetma \
        --planetma 4/2/1 2>&1 | tail -2 >> "$out/plane-box-batches.md"
    done
    timeout 60 python3 bench/bench_forms.py --stages 1,2 --dtypes fp32 --only box:32/2/3,spectral \
      --out "$out/forms-spectral.md" > "$out/forms-spectral.log" 2>&1
    ;;
  spectral)
    timeout 200 python3 bench/bench_forms.py --stages 1,2 --dtypes fp32 --only box:32/2/3,spectral \
      --spectral 4/1,4/1/-1/0/1,4/1/-1/0/2 --out "$out/forms-spectral.md" \
      > "$out/forms-spectral.log" 2>&1
    ;;
  ncu-spectral)
    timeout 150 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
      --section InstructionStats -k regex:spectral python3 bench/ncu_layers.py --stages 1 --dtypes fp32 \
      > "$out/ncu-spectral.txt" 2>&1
    ;;
  trees)
    # Kernel variants side by side: every further argument is a copy of the repo's runtime/ (and
    # cli.py) in a folder of its own, e.g. gpu-vhead from `git show HEAD:...`; each one's spectral
    # kernel is timed at the default config with this checkout's bench/ linked in.
    shift
    out_dir="$(cd "$out" && pwd)"
    for tree in "$@"; do
      ln -sfn "$PWD/bench" "$tree/bench"
      (cd "$tree" && timeout 80 python3 bench/bench_forms.py --stages 1,2 --dtypes fp32 --only spectral \
        --spectral 4/1 --out "$out_dir/forms-$(basename "$tree").md" > "$out_dir/forms-$(basename "$tree").log" 2>&1)
    done
    ;;
  kernels)
    shift
    out_dir="$(cd "$out" && pwd)"
    trees=("$@")
    [ "${#trees[@]}" -eq 0 ] && trees=(.)
    for tree in "${trees[@]}"; do
      [ "$tree" = . ] || ln -sfn "$PWD/bench" "$tree/bench"
      name="$(basename "$(cd "$tree" && pwd)")"
      (cd "$tree" && timeout 90 python3 bench/ncu_layers.py --stages 1,2 --dtypes fp32 --calls 50 --kernels \
        > "$out_dir/kernels-$name.txt" 2>&1)
    done
    ;;
  tests)
    # Kernel compilation dominates on the GPU (each new shape or grid is a new constexpr variant), so
    # the collected tests run in 8 round-robin shards side by side; their logs end up in tests.txt.
    shards="$(mktemp -d)"
    python3 -m pytest -q -p no:cacheprovider --collect-only tests/runtime 2>/dev/null | grep '::' \
      > "$shards/ids.txt"
    for shard in 0 1 2 3 4 5 6 7; do
      awk -v shard="$shard" 'NR % 8 == shard' "$shards/ids.txt" > "$shards/ids-$shard.txt"
      timeout 540 python3 -m pytest -q -p no:cacheprovider --durations=5 $(cat "$shards/ids-$shard.txt") \
        > "$shards/log-$shard.txt" 2>&1 &
    done
    wait
    { tail -q -n 1 "$shards"/log-?.txt; cat "$shards"/log-?.txt; } > "$out/tests.txt"
    ;;
  model-bf16|model-fp32)
    dtype="${part#model-}"
    timeout 560 python3 bench/bench_model.py --compile --compile-mode reduce-overhead --deploy \
      --dtypes "$dtype" --warmup 3 --iters 10 --models convnext_tiny,pelk_t,pelk101_t \
      --out "$out/model-$dtype.md" > "$out/model-$dtype.log" 2>&1
    ;;
  *) echo "usage: bench/issue4_gpu.sh layers|spectral|ncu-spectral|trees DIR..|kernels [DIR..]|tests|model-bf16|model-fp32" >&2; exit 2 ;;
esac
