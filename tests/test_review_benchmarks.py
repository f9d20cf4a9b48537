"""The calibration and active-contouring benchmarks run end to end on a tiny synthetic task with a
tiny random network (so they never rot) and write their CSVs and plot."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from conftest import blob_volume
from fewshotcx import Volume
from fewshotcx.datasets.cases import Case
from fewshotcx.models import UniverSeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import active_contouring  # noqa: E402
import calibration  # noqa: E402
import common  # noqa: E402

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _task() -> common.SliceTask:
    image, label = blob_volume(shape=(24, 20, 14), seed=3, radius=5.0)
    case = Case("synthetic/blob", Volume(image, AFFINE), Volume(label, AFFINE, label=True), {1: "blob"},
                "synthetic", "test licence", "test citation", "MR")
    return common.SliceTask(case, "blob")


def _tiny_model() -> common.ModelSpec:
    torch.manual_seed(0)
    return common.ModelSpec(model=UniverSeg((4, 4, 4, 4), (4, 4, 4), in_channels=3), slice_size=32, device="cpu")


def test_active_contouring_end_to_end(tmp_path):
    task, model = _task(), _tiny_model()
    rows, cost = active_contouring.run_task(task, model, max_slices=4)
    strategies = {r["strategy"] for r in rows}
    assert strategies == {"suggest", "even", "interpolation", "interpolation+suggest"}
    suggested = [r for r in rows if r["strategy"] == "suggest"]
    assert [r["drawn_slices"] for r in suggested] == [2, 3, 4]
    assert all(0 <= r["dice_undrawn"] <= 1 for r in rows)
    assert cost and all(c["identical"] for c in cost)  # cached results equal a fresh session's
    assert all(c["slices_cached"] <= c["slices_fresh"] for c in cost if not c["first"])
    summary = active_contouring.report(rows, cost, tmp_path, tmp_path, "ac", 4)
    assert {s["task"] for s in summary} == {task.name}
    assert (tmp_path / "ac_summary.csv").is_file() and (tmp_path / "ac.png").read_bytes()[:4] == b"\x89PNG"


def test_calibration_end_to_end(tmp_path):
    task, model = _task(), _tiny_model()
    reference = task.reference()
    labelled = [3, 7, 10]
    seg = model.segmenter(modality="mr").fit([task.case.image], [reference], slices=[labelled])
    row, slices = calibration.run_task(task.name, seg, task.case.image, reference.array, labelled, draws=2)
    assert 0 <= row["ece_before"] <= 1 and 0 <= row["ece_after"] <= 1 and row["temperature"] > 0
    assert slices and not {s["z"] for s in slices} & set(labelled)
    summary = calibration.report([row], slices, tmp_path, "cal")
    assert summary[0]["task"] == "pooled" and (tmp_path / "cal_auroc.csv").is_file()


def test_uncertainty_draws_measures_every_configuration_and_chooses_the_cheapest_good_one():
    import uncertainty_draws

    task, model = _task(), _tiny_model()
    seg = model.segmenter(modality="mr").fit([task.case.image], [task.case.labels])
    rows = uncertainty_draws.measure(seg, task.case.image, task.case.labels.canonical().array, "blob",
                                     draws=(1, 2), fractions=(1.0, 0.5))
    assert [(r["draws"], r["fraction"]) for r in rows] == [(1, 1.0), (2, 1.0), (1, 0.5), (2, 0.5)]
    assert all(0.0 <= r["auroc_voxel"] <= 1.0 or np.isnan(r["auroc_voxel"]) for r in rows)
    synthetic = [{"draws": k, "fraction": f, "auroc_voxel": a, "auroc_slice": a}
                 for k, f, a in ((8, 1.0, 0.80), (8, 0.5, 0.79), (4, 0.5, 0.70), (6, 0.5, 0.785))]
    summary = {(s["draws"], s["fraction"]): s for s in uncertainty_draws.choose(synthetic, tolerance=0.02)}
    assert summary[(8, 1.0)]["reference"] and summary[(6, 0.5)]["chosen"]  # 4 × 0.5 is cheaper but too poor
    assert sum(s["chosen"] for s in summary.values()) == 1
