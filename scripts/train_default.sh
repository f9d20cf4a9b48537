#!/usr/bin/env bash
# Reproduces fewshotcx/models/bundled/default_universeg.pt (+ .json), the bundled default UniverSeg model.
# Held-out data come in two sets (docs/model_card.md): the *selection* set (--holdout-*) validates
# training and chooses the defaults; the *report* set (--report-*) is never seen by training,
# validation or any choice, and is the only one reported as unseen.
# See docs/model_card.md. CPU only, one thread (robust on a shared 2-core machine), about 40 minutes.
# Needs the package data sources cached or fetchable (see `python -c "import fewshotcx.datasets as d; print(d.available())"`).
# The resumable training checkpoint and its validation log go to build/train-default/ (not committed);
# add --resume to continue an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

"$PYTHON" -m fewshotcx.cli train \
  --data synthetic --data slicerio --data pyradiomics --data brain --data nilearn \
  --width 32 --size 64 --context 1 \
  --support-size 2:16 --queries 2 --episodes-per-step 4 \
  --steps 1250 --lr 1e-3 --schedule cosine --warmup 50 \
  --synthetic-ratio 0.3 --synthetic-families 40 \
  --axes axial coronal sagittal \
  --holdout-volume pyradiomics/brain2 \
  --holdout-structure "left hippocampus" --holdout-structure "right hippocampus" \
  --report-volume pyradiomics/lung2 \
  --report-structure "left thalamus" --report-structure "right thalamus" \
  --val-every 125 --checkpoint-every 125 \
  --out build/train-default/universeg.pt \
  --export fewshotcx/models/bundled/default_universeg.pt --export-dtype float16 \
  --device cpu --seed 0 --overwrite "$@"  # replaces the bundled checkpoint: that is what this script is for

# The default support size is chosen on the selection set only (never the report set), then
# recorded in the checkpoint (scripts/choose_support_size.py).
"$PYTHON" benchmarks/support_size.py --weights default --structures "left hippocampus" "right hippocampus" \
  --lesions brain1:brain2 --random-sizes --ensemble-sizes --fixed-sizes --out build/train-default/select
cp build/train-default/select/support_size.csv benchmarks/results/support_size_selection.csv
"$PYTHON" scripts/choose_support_size.py benchmarks/results/support_size_selection.csv \
  fewshotcx/models/bundled/default_universeg.pt
