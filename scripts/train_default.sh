#!/usr/bin/env bash
# Reproduces fewshotcx/models/bundled/default_universeg.pt (+ .json), the bundled default UniverSeg model:
# physical scale (128² slices of 2.5 mm around the body, neighbours 3 mm apart), width 32, on the CT-heavy
# mix of docs/model_card.md, with its selection set (--holdout-*: validates training, chooses defaults) and
# report set (--report-*: never seen by training, validation or any choice).
#
# The bundled checkpoint was trained on one GPU (scripts/gpu_session.sh → benchmarks/train_gpu.py, 400 s).
# This script runs the same training anywhere (DEVICE=cuda|cpu, default auto) for a time budget
# (SECONDS_BUDGET, default 400; on a 2-core CPU expect far fewer steps in the same time: give it hours).
# An interrupted run resumes: run the script again (the checkpoint and log live in build/train-default/).
# Needs the package data sources cached or fetchable, and ../shared/data for the sarcoma scans.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT=build/train-default/universeg.pt
resume=()
[[ -f $OUT ]] && resume=(--resume)
"$PYTHON" -m fewshotcx.cli train \
  --data synthetic --data slicerio --data pyradiomics --data brain --data nilearn --data sts \
  --width 32 --size 128 --context 1 --pixel-mm 2.5 --context-mm 3.0 \
  --support-size 2:16 --queries 2 --episodes-per-step 8 --steps 100000 --max-seconds "${SECONDS_BUDGET:-400}" \
  --lr 1e-3 --schedule cosine --warmup 100 --synthetic-ratio 0.2 --synthetic-families 40 \
  --axes axial coronal sagittal \
  --holdout-volume pyradiomics/brain2 --holdout-volume sts/STS_003_CT --holdout-volume sts/STS_003_MR_T1 \
  --holdout-structure "left hippocampus" --holdout-structure "right hippocampus" \
  --report-volume pyradiomics/lung2 --report-volume slicerio/CTChest4 \
  --report-structure "left thalamus" --report-structure "right thalamus" \
  --val-every 1000 --checkpoint-every 250 --volume-cache build/gpu/volumes.npz \
  --out "$OUT" --export fewshotcx/models/bundled/default_universeg.pt --export-dtype float16 \
  --device "${DEVICE:-auto}" --seed 0 --overwrite "${resume[@]}" "$@"
