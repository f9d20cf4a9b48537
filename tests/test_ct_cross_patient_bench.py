"""benchmarks/ct_cross_patient.py's own logic on a tiny synthetic CT: the HU-threshold rule's rows, the
seed loop (the rule runs once) and the summary (seeds, HD95, which structures the rule solves)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from test_benchmarks import _read
from fewshotcx import Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ct_cross_patient as ctcp  # noqa: E402


def _chest(shape: tuple[int, int, int] = (40, 30, 12)) -> tuple[Volume, Volume]:
    """A body (40 HU) in air (-1000 HU) holding two air-filled "lungs" (-850 HU): left at low x
    (canonical RAS: larger x is the patient's right), labelled 1 = left, 2 = right."""
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[4:36, 4:26, :] = 40.0
    labels = np.zeros(shape, dtype=np.uint8)
    labels[8:17, 8:22, 2:10] = 1
    labels[23:32, 8:22, 2:10] = 2
    hu[labels > 0] = -850.0
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    return Volume(hu, affine), Volume(labels, affine.copy(), label=True)


def test_rule_rows_score_the_hu_threshold_lungs_and_need_no_support():
    query = _chest()
    rows = ctcp.run_pair(None, query, "a -> b", "full", {ctcp.RULE: {}}, seed=4)  # type: ignore[arg-type]
    assert [(r["method"], r["structure"], r["seed"]) for r in rows] == [
        (ctcp.RULE, "left lung", 4), (ctcp.RULE, "right lung", 4)]
    assert all(r["dice"] == pytest.approx(1.0) and r["error"] == "" for r in rows)
    # the rule's left is the patient's left: swapped labels would score 0
    swapped = query[1].with_array(np.where(query[1].array > 0, 3 - query[1].array, 0).astype(np.uint8), label=True)
    assert all(r["dice"] == 0.0 for r in ctcp.run_pair(None, (query[0], swapped), "a -> b", "full",  # type: ignore[arg-type]
                                                       {ctcp.RULE: {}}))


def _row(kind: str, method: str, seed: int, structure: str, dice: float, hd95: float) -> dict:
    return {"kind": kind, "method": method, "seed": seed, "structure": structure, "dice": dice, "hd95": hd95}


def test_summary_pools_seeds_and_names_what_the_rule_solves():
    rows = [_row("cropped", "atlas", seed, s, dice, 10.0 * (seed + 1))
            for seed in (0, 1) for s, dice in (("left lung", 0.8), ("right lung", 0.9))]
    rows += [_row("cropped", ctcp.RULE, 0, "left lung", 0.95, 4.0), _row("cropped", ctcp.RULE, 0, "left lung", 0.97, 6.0),
             _row("cropped", ctcp.RULE, 0, "right lung", 0.99, 2.0), _row("cropped", ctcp.RULE, 0, "right lung", 0.75, 8.0)]
    summary = {r["method"]: r for r in ctcp.summary_rows(rows)}
    atlas, rule = summary["atlas"], summary[ctcp.RULE]
    assert (atlas["n"], atlas["seeds"], atlas["dice_mean"], atlas["hd95_mean"]) == (4, 2, 0.85, 15.0)
    assert atlas["dice_sd"] == pytest.approx(0.05) and atlas["rule_solved"] == "" and atlas["rule_solved_n"] == ""
    assert atlas["dice_seed_sd"] == 0.0 and rule["dice_seed_sd"] == ""  # both seeds' means are 0.85; one seed
    # right lung: 0.75 on one query, below RULE_SOLVED_DICE (0.8): not solved, although its mean is 0.87
    assert (rule["seeds"], rule["rule_solved"], rule["rule_solved_n"]) == (1, "left lung", 1)


def test_main_runs_the_rule_once_whatever_the_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(ctcp, "load_patients", lambda shared: {"LUNG1-001": _chest(), "CTChest4": _chest()})
    assert ctcp.main(["--methods", ctcp.RULE, "--full-methods", ctcp.RULE, "--seeds", "2,1",
                      "--full-seeds", "1", "--out", str(tmp_path)]) == 0
    table = _read(tmp_path / "ct_cross_patient.csv")
    assert {(r["kind"], r["seed"]) for r in table} == {("cropped", "1"), ("full", "1")}
    assert len(table) == 2 * 2 * 2 and {r["weights"] for r in table} == {"default"}
    summary = _read(tmp_path / "ct_cross_patient_summary.csv")
    assert [(r["kind"], r["method"], r["seeds"], r["rule_solved"]) for r in summary] == [
        ("cropped", ctcp.RULE, "1", "left lung; right lung"), ("full", ctcp.RULE, "1", "left lung; right lung")]
    assert ctcp.seed_list("0, 1,2") == [0, 1, 2]
    (tmp_path / "again").mkdir()  # --from-csv: the same summary from the rows alone
    assert ctcp.main(["--from-csv", str(tmp_path / "ct_cross_patient.csv"), "--out", str(tmp_path / "again")]) == 0
    assert _read(tmp_path / "again" / "ct_cross_patient_summary.csv") == summary
