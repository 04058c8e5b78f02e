#!/bin/bash
# The GPU benchmark in one short run (about 1-2 minutes on an H100/H200, capped at 4.5), from
# the repository root of a machine with a CUDA GPU and PyTorch (MindSpore optional):
#   bash benchmarks/gpu_check.sh
# prints nvidia-smi, runs `benchmarks/benchmark.py --device gpu` and writes its JSON report to
# $OUT/benchmark_gpu.json and the whole log to $OUT/benchmark_gpu_log.txt (OUT defaults to
# /tmp; the committed report is benchmarks/results/benchmark_gpu.json, so
# OUT=benchmarks/results writes it in place).
# Exit status: the benchmark's (2: no CUDA GPU visible to PyTorch; 124: out of time).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-/tmp}"
mkdir -p "$out" || exit 1
budget="${GPU_CHECK_SECONDS:-270}"

{
  echo "== $(date -u '+%Y-%m-%d %H:%M:%S') UTC on $(hostname), repository $(pwd)"
  nvidia-smi || echo "nvidia-smi: not available (exit $?)"
  echo "== python3 benchmarks/benchmark.py --device gpu --out $out/benchmark_gpu.json" \
       "(at most ${budget} s)"
  PYTHONUNBUFFERED=1 timeout -k 10 "$budget" \
    python3 benchmarks/benchmark.py --device gpu --out "$out/benchmark_gpu.json"
  status=$?
  echo "== exit status $status"
  exit "$status"
} 2>&1 | tee "$out/benchmark_gpu_log.txt"
exit "${PIPESTATUS[0]}"
