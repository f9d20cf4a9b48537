#!/usr/bin/env bash
# One GPU check, one CSV (see benchmarks/gpu_check.py and docs/performance.md): the cuda-marked tests,
# CPU-vs-CUDA equality, fp32/bf16/fp16 speed and peak memory on a 512x512x100 volume at S = 16 and 64,
# and the demo tasks' Dice in bf16 vs fp32. About 5 minutes on one datacentre GPU (budget: 8).
#   scripts/gpu_check.sh [--out PATH.csv] [--dry-run]     (default: benchmarks/results/gpu_check.csv)
# --dry-run: tiny sizes on the CPU, CUDA parts recorded as skipped (under a minute); it writes
# bench-output/gpu_check/gpu_check.csv unless --out says otherwise (never the committed results).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
