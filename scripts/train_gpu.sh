#!/usr/bin/env bash
# Trains a stronger default UniverSeg on one GPU in about 8 minutes (v1 width 64, 128^2 slices, 2.5D,
# same data and held-out rules as scripts/train_default.sh / docs/model_card.md), then evaluates it on
# the model card's held-out set into benchmarks/results/train_gpu_heldout.csv. Training stops at
# --train-seconds (default 400); run the script again to resume from build/train-gpu/universeg.pt.
#   scripts/train_gpu.sh [--out DIR] [--report CSV] [--train-seconds S] [--dry-run]
# --dry-run: tiny model, synthetic data, CPU, a few steps, end to end (under a minute on an idle CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" benchmarks/train_gpu.py "$@"
