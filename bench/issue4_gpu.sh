#!/usr/bin/env bash
# One GPU call's worth of issue-4 measurements, every table written under $OUT (default ./gpu-out):
# the runtime's GPU tests, the stage-1 bf16 plane box at batches around 64 (whether the last wave of
# programs costs time) and the per-layer table of the README.
#
#     OUT=/tmp/out bash bench/issue4_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > "$out/gpu.txt"
timeout 420 python3 -m pytest -q -p no:cacheprovider tests/runtime 2>&1 | tail -20 > "$out/tests.txt"
for batch in 50 56 64 66; do
  python3 bench/bench_forms.py --batch "$batch" --stages 1 --dtypes bf16 --only planetma --planetma 4/2/1 \
    | tail -2 >> "$out/plane-box-batches.md"
done
python3 bench/bench_layers.py --backends triton --cudagraph --out "$out/layers.md" > /dev/null
