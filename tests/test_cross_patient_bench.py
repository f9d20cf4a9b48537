"""benchmarks/cross_patient.py end to end on tiny synthetic volumes with a tiny random network."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from test_benchmarks import _assert_png, _case, _read
from fewshotcx.models import UniverSeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import cross_patient  # noqa: E402


def _tiny_model() -> common.ModelSpec:
    torch.manual_seed(0)
    return common.ModelSpec(model=UniverSeg((4, 4, 4, 4), (4, 4, 4), in_channels=3), slice_size=32, device="cpu")


def test_moved_keeps_the_anatomy_and_changes_where_it_is():
    case = _case("a", 1, shape=(24, 24, 24), centre=(12, 12, 12))
    turned = cross_patient.moved(case, seed=3)
    assert turned.image.shape == case.image.shape and np.allclose(turned.image.affine, case.image.affine)
    before, after = case.labels.array.sum(), turned.labels.array.sum()
    assert abs(int(after) - int(before)) <= 0.15 * before  # a rigid motion keeps the volume
    overlap = np.logical_and(case.labels.array, turned.labels.array).sum() / before
    assert overlap < 0.9  # ... but the structure has moved


def test_cropped_window_holds_the_structure_at_the_asked_height():
    case = _case("a", 1, shape=(24, 20, 60), centre=(12, 10, 30), radius=2.0)
    low = cross_patient.cropped(case, "blob", 0.25, 0.3, depth=60)
    high = cross_patient.cropped(case, "blob", 0.25, 0.7, depth=60)
    assert low.image.shape[2] == high.image.shape[2] == 15
    for part, height in ((low, 0.3), (high, 0.7)):
        z = np.flatnonzero(part.labels.array.any(axis=(0, 1)))
        assert abs((z.min() + z.max()) / 2 / 14 - height) <= 0.05
        # world coordinates kept: the first kept slice lies where it lay in the full volume
        start = int(round(part.image.affine[2, 3] / case.image.affine[2, 2]))
        np.testing.assert_array_equal(part.image.array, case.image.array[..., start:start + 15])


def test_cross_patient_benchmark_end_to_end(tmp_path):
    cases = (_case("a", 1, shape=(24, 20, 24), centre=(12, 10, 12)), _case("b", 2, shape=(24, 20, 24), centre=(11, 9, 11)))
    tasks = cross_patient.make_tasks(["blob"], cross_patient.VARIANTS[:2], cases=cases)
    assert [t.kind for t in tasks] == ["cropped", "moved", "cropped", "moved"]
    assert [t.height for t in tasks] == [0.3, 0.5, 0.7, 0.5]
    methods = ["universeg-position", "universeg-retrieval", "label-fusion"]
    rows = cross_patient.run(tasks, _tiny_model(), methods, tmp_path, tag="cp")
    table = _read(tmp_path / "cp.csv")
    assert len(table) == len(rows) == len(tasks) * len(methods)
    assert all(r["error"] == "" for r in table)
    for column in ("task", "kind", "method", "dice", "hd95", "seconds", "query_slices", "data_role"):
        assert column in table[0]
    summary = _read(tmp_path / "cp_summary.csv")
    assert {(r["kind"], r["method"]) for r in summary} == {(k, m) for k in ("cropped", "moved") for m in methods}
    _assert_png(tmp_path / "cp.png")
