"""The registration quality gate: its calibration table (benchmarks/results/registration_gates.csv)
re-checked against the thresholds in the code (which must be that table's fit), its held-out table
(registration_gates_heldout.csv, the report pair) kept current, and the gate's measures on small
synthetic volumes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import sys

import numpy as np
import pytest

from fewshotcx import Volume
from fewshotcx import registration as reg

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import registration_gates  # noqa: E402

#: Label transfer this good must never be refused (issue #20).
GOOD_DICE = 0.6


def _rows(name: str = "registration_gates.csv") -> list[dict[str, str]]:
    with open(BENCHMARKS / "results" / name, newline="") as f:
        return list(csv.DictReader(f))


def test_calibration_table_has_good_and_broken_registrations_of_ct_and_mr():
    rows = _rows()
    kinds = {(r["modality"], r["broken"] == "none") for r in rows}
    assert kinds == {("CT", True), ("CT", False), ("MR", True), ("MR", False)}
    broken = {r["broken"] for r in rows} - {"none"}
    assert {"wrong slab", "left-right flipped", "translated 100 mm"} <= broken
    assert any(float(r["label_dice"]) >= GOOD_DICE for r in rows if r["broken"] == "none" and r["modality"] == "CT")
    assert all(r["machine"] for r in rows)


def test_thresholds_in_the_code_accept_no_broken_registration_and_refuse_no_good_transfer():
    """Both calibration properties hold for the thresholds now in the code, and the table's verdicts
    are the code's (changing a threshold without rerunning the benchmark fails here)."""
    rows = _rows()
    false_accepts = [r["pair"] + " / " + r["broken"] for r in rows if r["broken"] != "none" and reg.accepts(r)]
    false_rejects = [r["pair"] + " / " + r["mode"] for r in rows
                     if r["broken"] == "none" and float(r["label_dice"]) >= GOOD_DICE and not reg.accepts(r)]
    assert not false_accepts, f"broken registrations accepted: {false_accepts}"
    assert not false_rejects, f"good label transfer refused: {false_rejects}"
    stale = [r["pair"] for r in rows if bool(int(r["accepted"])) != reg.accepts(r)]
    assert not stale, f"rerun benchmarks/registration_gates.py: verdicts differ for {stale}"
    now = ";".join(f"{name}>={low:g}" for name, low in reg.THRESHOLDS.items())
    assert {r["thresholds"] for r in rows} == {now}, "rerun benchmarks/registration_gates.py: thresholds changed"


def test_thresholds_in_the_code_are_the_fit_of_the_calibration_table():
    assert registration_gates.fit_thresholds(_rows()) == reg.THRESHOLDS


def test_fit_is_one_step_below_the_worst_good_registration():
    rows = [{"role": "good", "body_dice": 0.93, "overlap": 0.97, "ncc": 0.52, "margin": 0.041},
            {"role": "good", "body_dice": 0.85, "overlap": 1.0, "ncc": 0.9, "margin": 0.2},
            {"role": "broken", "body_dice": 0.1, "overlap": 0.1, "ncc": -0.5, "margin": -1.0}]
    assert registration_gates.fit_thresholds(rows) == {"body_dice": 0.8, "overlap": 0.9, "ncc": 0.45, "margin": 0.03}
    with pytest.raises(ValueError):
        registration_gates.fit_thresholds(rows[2:])


def test_heldout_table_is_the_report_pair_judged_by_the_thresholds_in_the_code():
    rows = _rows("registration_gates_heldout.csv")
    assert {r["data_role"] for r in rows} == {"report"}
    assert {r["pair"] for r in rows} == {f"{p.support} -> {p.query}" for p in registration_gates.HELDOUT_PAIRS}
    assert all(bool(int(r["accepted"])) == reg.accepts(r) for r in rows), "rerun registration_gates.py --set heldout"
    assert all(bool(int(r["accepted_report_fitted"])) == reg.accepts(r, registration_gates.REPORT_FITTED)
               for r in rows)


def test_accepts_reads_every_threshold_and_fails_on_missing_measures():
    passing = {name: low + 0.01 for name, low in reg.THRESHOLDS.items()}
    assert reg.accepts(passing) and not reg.accepts(passing, {**reg.THRESHOLDS, "ncc": 2.0})
    for name in reg.THRESHOLDS:
        assert not reg.accepts({**passing, name: reg.THRESHOLDS[name] - 0.01}), name
        assert not reg.accepts({**passing, name: math.nan}), name
        assert not reg.accepts({k: v for k, v in passing.items() if k != name}), name
    quality = reg.Quality(**{**passing, "nmi": 1.2})
    assert quality.ok and all(name.replace("_", " ") in quality.describe() for name in reg.THRESHOLDS)


# ---------------------------------------------------------------------- synthetic volumes
SPACING = 2.0


def _subject(seed: int, shape=(44, 40, 40)) -> Volume:
    """A body with asymmetric inner structures (left-right and up-down differ), MR-like intensities."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    centre = np.array([n / 2 for n in shape])
    body = (((grid - centre) / np.array([18.0, 15.0, 19.0])) ** 2).sum(-1) <= 1
    image = 100.0 * body + rng.normal(0, 2.0, shape) * body
    for offset, radii, value in (([7, -3, 6], [4, 5, 5], -45), ([-8, 4, -7], [3, 3, 4], 60), ([2, 6, 12], [5, 3, 3], -30)):
        image -= value * ((((grid - centre - offset) / np.array(radii)) ** 2).sum(-1) <= 1)
    return Volume(image.astype(np.float32), np.diag([SPACING, SPACING, SPACING, 1.0]))


@pytest.fixture(scope="module")
def pair():
    return _subject(0), _subject(1)


def _broken(fixed: Volume):
    import SimpleITK as sitk

    centre = reg.FLIP @ (fixed.affine @ np.append((np.array(fixed.shape) - 1) / 2, 1.0))[:3]
    mirror = sitk.AffineTransform(3)
    mirror.SetMatrix((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    mirror.SetCenter(tuple(float(c) for c in centre))
    return {"wrong slab": sitk.TranslationTransform(3, (0.0, 0.0, 30.0)), "flipped": mirror,
            "translated": sitk.TranslationTransform(3, (60.0, 0.0, 0.0))}


def test_gate_accepts_the_right_mapping_and_refuses_broken_ones(pair):
    import SimpleITK as sitk

    moving, fixed = pair
    right = reg.measure(sitk.Transform(3, sitk.sitkIdentity), moving, fixed, modality="mr")
    assert right.ok, right.describe()
    assert right.margin > 0.05 and right.body_dice > 0.95 and right.ncc > 0.8
    for what, transform in _broken(fixed).items():
        quality = reg.measure(transform, moving, fixed, modality="mr")
        assert not quality.ok, f"{what}: {quality.describe()}"
        assert quality.margin < right.margin, what


def test_mirrored_registration_loses_to_its_own_mirror(pair):
    """A left-right flip keeps the bodies aligned (body Dice stays high): only the margin refuses it."""
    moving, fixed = pair
    flipped = reg.measure(_broken(fixed)["flipped"], moving, fixed, modality="mr")
    assert flipped.body_dice > 0.9 and flipped.margin < 0


def test_register_reports_the_gate_on_a_real_registration(pair):
    moving, fixed = pair
    result = reg.register(moving, fixed, mode="rigid", modality="mr")
    assert result.ok and result.quality.margin > 0
    assert set(result.quality.as_dict()) == {"body_dice", "ncc", "overlap", "nmi", "margin"}
