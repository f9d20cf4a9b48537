#!/usr/bin/env bash
# Trains the bundled default UniverSeg on one GPU for a time budget (physical scale, 128² slices of
# 2.5 mm, width 32, CT-heavy mix; docs/model_card.md), then evaluates it on the held-out sets into
# benchmarks/results/train_gpu_heldout.csv. See benchmarks/train_gpu.py for the options:
#   scripts/train_gpu.sh [--out DIR] [--report CSV] [--train-seconds S] [--volume-cache F] [--skip-eval]
#                        [--eval-only [--weights SPEC] --device cpu] [--lane ssl-ct] [--dry-run]
# --lane ssl-ct: the same recipe plus --data ssl-ct (unlabelled abdominal CTs as supervoxel and Hounsfield
# tasks), into build/train-gpu-ssl-ct and benchmarks/results/train_gpu_ssl_ct_heldout.csv (docs/howto-finetune.md).
# --dry-run: tiny model, synthetic data, CPU, a few steps, end to end (under a minute on an idle CPU);
# it writes under bench-output/train_gpu/ unless --out/--report say otherwise (never benchmarks/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" benchmarks/train_gpu.py "$@"
