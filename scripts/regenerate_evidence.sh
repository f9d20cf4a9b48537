#!/usr/bin/env bash
# Regenerates every CSV under benchmarks/results/ that README.md and docs/ quote, with today's code
# (CPU, one thread each). The bundled default model (physical scale, GPU-trained) is measured by the
# demo, ct_cross_patient.py, retrieval_coverage.py and train_gpu.py --eval-only; the other model lanes
# still measure fewshotcx 0.2's model (weights "fov64", bundled), which is what their committed CSVs
# hold, until they are rerun on the new default (drop the FOV64 argument). `benchmarks/evidence.py` then checks each quoted
# number against them. Usage: scripts/regenerate_evidence.sh [model|review|cross|compare|speed|all|framing|sources]
# (lanes that can run side by side on two cores). About an hour in all on a quiet 2-core machine; the
# framing and sources lanes (not in all) train six small networks each: minutes on a quiet machine, an hour shared.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
R=benchmarks/results
lane="${1:-all}"
FOV64=(--weights fov64)

# selection_sweep WEIGHTS CSV [support_size.py options]: support sizes on the selection set only
selection_sweep() {
  local weights=$1 csv=$2
  shift 2
  "$PY" benchmarks/support_size.py --weights "$weights" --structures "left hippocampus" "right hippocampus" \
    --lesions brain1:brain2 --random-sizes --ensemble-sizes --fixed-sizes --out "build/select_$weights" \
    --threads 1 "$@"
  cp "build/select_$weights/support_size.csv" "$R/$csv"
}

if [[ $lane == model || $lane == all ]]; then
  "$PY" benchmarks/demo_results.py --out "$R"
  "$PY" benchmarks/ct_cross_patient.py --out "$R"   # needs ../shared/data (LUNG1-001)
  # calibration volumes only (MIN_SIMILARITY, MAX_POSITION_GAP are its fit), then the report pair held out
  "$PY" benchmarks/retrieval_coverage.py --out "$R"
  "$PY" benchmarks/retrieval_coverage.py --out "$R" --set heldout
  "$PY" benchmarks/train_gpu.py --eval-only --weights default --device cpu
  "$PY" benchmarks/train_gpu.py --eval-only --weights fov64 --device cpu --report "$R/train_gpu_heldout_fov64.csv"
  "$PY" benchmarks/default_selection.py --out "$R"   # needs ../shared/data (sarcoma scans)
  "$PY" benchmarks/model_card.py "${FOV64[@]}" --out "$R" --threads 1
  "$PY" benchmarks/labelled_slices.py "${FOV64[@]}" --out "$R" --plots docs/img --threads 1
  "$PY" benchmarks/support_size.py "${FOV64[@]}" --structures "left thalamus" "right thalamus" \
    --lesions lung1:lung2 --out "$R" --plots docs/img --threads 1
  "$PY" benchmarks/finetune_benefit.py "${FOV64[@]}" --steps 150 --out "$R" --plots docs/img
  # the selection set (never the report set) that chose fov64's default support size, and the same
  # sweep for the GPU-trained default over the sizes it was trained with (scripts/choose_support_size.py)
  selection_sweep fov64 support_size_selection.csv
  selection_sweep default support_size_selection_default.csv --sizes 1 2 4 8 16
fi
if [[ $lane == review || $lane == all ]]; then
  "$PY" benchmarks/calibration.py "${FOV64[@]}" --threads 1 --out "$R"
  "$PY" benchmarks/active_contouring.py "${FOV64[@]}" --threads 1 --out "$R" --plots docs/img
  "$PY" benchmarks/serve_latency.py --threads 1 --out "$R"
  "$PY" benchmarks/interactive_protocol.py --out "$R" --plots docs/img  # box + clicks (../shared/data)
  "$PY" benchmarks/interaction_latency.py --out "$R"  # seconds per interaction on whole 512 x 512 scans
  "$PY" benchmarks/interactive_dev.py --out "$R"  # the refinement's development set, with and without the negative click's hold
fi
if [[ $lane == cross || $lane == all ]]; then
  "$PY" benchmarks/cross_patient.py "${FOV64[@]}" --out "$R" --plots docs/img
  # needs ../shared/data (development data); the gate thresholds in fewshotcx/registration/gates.py are the
  # fit of its calibration set; the report pair is then only held out (benchmarks/roles.py)
  (cd benchmarks && "../$PY" registration_gates.py && "../$PY" registration_gates.py --set heldout)
  "$PY" benchmarks/rtstruct_fidelity.py  # LUNG1-001's clinical RTSTRUCT (../shared/data)
  # the CT report pair (../shared/data) with its HU-threshold rule row; over an hour on 2 busy cores
  "$PY" benchmarks/ct_cross_patient.py --weights default --seeds 0,1,2 --full-seeds 0 --out "$R"
  "$PY" benchmarks/uncertainty_draws.py --out "$R"  # chooses the uncertainty defaults (selection data, ../shared/data)
fi
if [[ $lane == compare || $lane == all ]]; then
  "$PY" benchmarks/seed_comparison.py "${FOV64[@]}" --cohorts brain --nnunet-epochs 1 --nnunet-iterations 10 --unet-steps 60
  "$PY" benchmarks/cohort_scaling.py --out "$R"
fi
if [[ $lane == speed || $lane == all ]]; then
  "$PY" benchmarks/throughput.py --sizes 16 --repeats 3 --threads 1
  "$PY" benchmarks/model_memory.py --chunks 64,16
  (cd benchmarks && "../$PY" registration_cost.py)
  "$PY" benchmarks/uncertainty_cost.py  # the sarcoma CTs (../shared/data)
  "$PY" benchmarks/sam2_cost.py --frames 3 --threads 1
fi
if [[ $lane == framing ]]; then
  "$PY" benchmarks/framing_ablation.py --out "$R"  # CPU-scale framing ablation, selection data (../shared/data)
fi
if [[ $lane == sources ]]; then
  "$PY" benchmarks/source_ablation.py --out "$R"  # CPU-scale source ablation (+ ssl-ct), selection data (../shared/data)
fi
"$PY" benchmarks/evidence.py
