#!/usr/bin/env bash
# One GPU session in one command (issue: GPU run): the CUDA check without the data-dependent part, then
# the default model's training from the carried volume cache. Everything lands in $OUT (or build/gpu-out).
#   scripts/gpu_session.sh [TRAIN_SECONDS]      (default 270)
# Needs build/gpu/volumes.npz (written on a machine with the data by `python benchmarks/train_gpu.py
# --volume-cache build/gpu/volumes.npz --skip-eval --dry-run`-style runs or `fewshotcx train --volume-cache`).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-build/gpu-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
timeout 200 "$PYTHON" benchmarks/gpu_check.py --parts tests,equality,speed --out "$OUT/gpu_check.csv" 2>&1 | tail -40
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/train_gpu.py --out "$OUT/train" --train-seconds "${1:-270}" \
  --volume-cache build/gpu/volumes.npz --skip-eval 2>&1 | tail -20
cp "$OUT/train/universeg.csv" "$OUT/train_log.csv" 2>/dev/null
ls -la "$OUT" "$OUT/train"
