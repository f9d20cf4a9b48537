from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, UNREGISTERED, blob_volume
from fewshotcx import demo
from fewshotcx.datasets.cases import Case
from fewshotcx.evaluation.metrics import dice
from fewshotcx.viz import spread_slices
from fewshotcx.models import UniverSeg
from fewshotcx.io.volume import Volume, load_volume
from fewshotcx.models.weights import save_checkpoint


def _case(seed: int) -> Case:
    image, label = blob_volume(shape=(24, 20, 12), seed=seed)
    affine = ORIENTATIONS["RAS"]
    return Case(f"synthetic/{seed}", Volume(image, affine), Volume(label, affine, label=True), {1: "blob"},
                "synthetic", "CC0 (generated)", "none", "MR")


def test_drawn_slices_include_the_ends():
    mask = np.zeros((2, 2, 20), bool)
    mask[..., 4:15] = True
    assert spread_slices(mask, 3, ends=True) == [4, 9, 14]
    assert spread_slices(mask, 2, ends=True) == [4, 14]


@UNREGISTERED
def test_demo_tasks_write_prediction_overlay_and_csv(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = UniverSeg((8, 8, 8, 8), (8, 8, 8))
    weights = save_checkpoint(model, tmp_path / "tiny.pt", model.config, {"slice_size": 32})
    tasks = (demo.DemoTask("few", lambda: (_case(1), _case(1)), "blob", 3, "interpolation"),
             demo.DemoTask("cross", lambda: (_case(1), _case(2)), "blob", 0, "label fusion"))
    monkeypatch.setattr(demo, "TASKS", tasks)
    rows = demo.run_demo(tmp_path / "out", device="cpu", weights=str(weights))
    assert [r["task"] for r in rows] == ["few", "cross"]
    references = {"few": _case(1), "cross": _case(2)}
    for r in rows:
        pred = load_volume(tmp_path / "out" / r["task"] / "prediction.nii.gz", label=True)
        assert pred.shape == (24, 20, 12)
        # the reported Dice is that of the written prediction against the query's labels: on the undrawn
        # slices for a completion task (drawn ones are copied), on the whole volume across subjects
        reference = references[r["task"]].labels.array
        if r["task"] == "few":
            assert r["scored_on"] == "undrawn slices"
            drawn = spread_slices(reference > 0, 3, ends=True)
            expected = demo.undrawn_dice(pred.array, reference, drawn)
            assert expected != pytest.approx(dice(pred.array, reference), abs=1e-3)  # the two scores differ here
        else:
            assert r["scored_on"] == "whole volume"
            expected = dice(pred.array, reference)
        assert r["dice_model"] == pytest.approx(expected, abs=6e-4)
        assert (tmp_path / "out" / r["task"] / "overlay.png").stat().st_size > 1000
    with (tmp_path / "out" / "results.csv").open() as f:
        assert {"task", "dice_model", "dice_baseline", "licence"} <= set(next(csv.reader(f)))


@pytest.mark.slow
def test_real_demo_runs_on_package_data(tmp_path):
    """The `make demo` job itself, with the bundled checkpoint on held-out real data."""
    rows = demo.run_demo(tmp_path, device="cpu")
    assert len(rows) == 3 and all(r["dice_model"] > 0.3 for r in rows)


def test_completion_is_scored_on_the_undrawn_slices_only():
    reference = np.zeros((4, 4, 5), dtype=np.uint8)
    reference[1:3, 1:3, 1:4] = 1
    prediction = reference.copy()
    prediction[..., 2] = 0  # misses the one undrawn slice that shows the structure
    assert demo.undrawn_dice(prediction, reference, drawn=[1, 3]) == 0.0
    assert demo.undrawn_dice(reference, reference, drawn=[1, 3]) == 1.0
    assert np.isnan(demo.undrawn_dice(prediction, reference, drawn=[1, 2, 3]))  # nothing left to predict
