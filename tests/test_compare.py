"""The comparison harness and `fewshotcx compare`; TotalSegmentator's absent path and planted-mask scoring."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import ORIENTATIONS, UNREGISTERED, blob_volume
from fewshotcx import Volume, VolumeError, load_volume, save_volume
from fewshotcx.baselines import compare as cmp
from fewshotcx.baselines import totalsegmentator as ts
from fewshotcx.cli.main import main

LPS = ORIENTATIONS["LPS"]


def _write_case(folder, name, seed, affine=LPS):
    image, label = blob_volume(shape=(24, 20, 12), seed=seed)
    save_volume(Volume(image, affine), folder / f"{name}.nii.gz")
    save_volume(Volume(label, affine, label=True), folder / f"{name}_lab.nii.gz")
    return folder / f"{name}.nii.gz", folder / f"{name}_lab.nii.gz"


def test_totalsegmentator_absent_gives_one_line_reason(monkeypatch):
    monkeypatch.setattr(ts, "find_spec", lambda name: None)
    reason = ts.unavailable()
    assert reason == ts.INSTALL_HINT and "\n" not in reason and "--totalseg-masks" in reason
    with pytest.raises(ImportError, match="pip install TotalSegmentator"):
        ts.predict(Volume(np.zeros((4, 4, 4), np.float32), np.eye(4)), ["liver"])


def test_name_map_matches_spellings_and_unions_lobes():
    assert ts.classes_for("Kidney_L") == ("kidney_left",)
    assert ts.classes_for("Bladder") == ("urinary_bladder",)
    assert ts.classes_for("Lung_L") == ("lung_upper_lobe_left", "lung_lower_lobe_left")
    assert ts.classes_for("portal_vein_and_splenic_vein") == ("portal_vein_and_splenic_vein",)


def test_planted_totalsegmentator_folder_is_read_onto_the_query_grid(tmp_path):
    query = Volume(np.zeros((10, 8, 6), np.float32), LPS)
    canonical = query.canonical()
    upper, lower, kidney = (np.zeros(canonical.shape, np.uint8) for _ in range(3))
    upper[1:4, 1:3, 1:3], lower[5:8, 4:6, 2:5], kidney[2, 2, 2] = 1, 1, 1
    for name, array in (("lung_upper_lobe_left", upper), ("lung_lower_lobe_left", lower), ("kidney_left", kidney)):
        save_volume(Volume(array, canonical.affine, label=True), tmp_path / f"{name}.nii.gz")
    labels = ts.load_masks(tmp_path, ["left lung", "left kidney"], query)
    assert labels.same_grid(query) and labels.label
    back = labels.canonical().array
    assert np.array_equal(back == 1, (upper | lower).astype(bool) & ~kidney.astype(bool))
    assert np.array_equal(back == 2, kidney.astype(bool))
    with pytest.raises(VolumeError, match="liver"):
        ts.load_masks(tmp_path, ["liver"], query)
    with pytest.raises(VolumeError, match="grid"):
        ts.load_masks(tmp_path, ["left kidney"], Volume(np.zeros((10, 8, 7), np.float32), LPS))


def test_unknown_and_unavailable_methods(tmp_path):
    image, label = _write_case(tmp_path, "a", 0)
    run = cmp.load_run([(str(image), str(label))], [(str(image), str(label))])
    with pytest.raises(ValueError, match="unknown method"):
        cmp.compare(run, ["nope"], cmp.Options())
    rows = cmp.compare(run, ["sam"], cmp.Options(), log=lambda line: None)
    assert [(r["method"], r["status"]) for r in rows] == [("sam", "skipped")] and "--sam-weights" in rows[0]["note"]


def test_label_fusion_of_the_query_itself_scores_perfectly(tmp_path):
    image, label = _write_case(tmp_path, "a", 0)
    run = cmp.load_run([(str(image), str(label))], [(str(image), str(label))], {1: "blob"})
    (row,) = cmp.compare(run, ["label-fusion"], cmp.Options(), log=lambda line: None)
    assert (row["structure"], row["dice"], row["hd95_mm"], row["nsd_2mm"]) == ("blob", 1.0, 0.0, 1.0)


@UNREGISTERED
def test_compare_cli_writes_predictions_and_results(tmp_path):
    support = _write_case(tmp_path, "s", 0)
    query, reference = _write_case(tmp_path, "q", 3)
    ts_dir = tmp_path / "ts"
    ts_dir.mkdir()
    save_volume(load_volume(reference, label=True), ts_dir / "liver.nii.gz")  # TotalSegmentator's layout
    out = tmp_path / "out"
    args = ["compare", "--support", f"{support[0]}:{support[1]}", "--query", f"{query}:{reference}",
            "--methods", "universeg,interpolation,totalsegmentator", "--structures", "1=liver",
            "--totalseg-masks", str(ts_dir), "--interpolation-step", "3", "--out", str(out)]
    assert main(args) == 0
    with open(out / "results.csv") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"universeg", "interpolation", "totalsegmentator"}
    assert all(r["status"] == "ok" and r["structure"] == "liver" for r in rows.values())
    assert float(rows["totalsegmentator"]["dice"]) == 1.0  # the planted masks are the reference
    assert 0.5 < float(rows["interpolation"]["dice"]) <= 1.0 and 0.0 <= float(rows["universeg"]["dice"]) <= 1.0
    ref = load_volume(reference, label=True, canonical=False)
    for method in rows:
        pred = load_volume(out / "predictions" / "q" / f"{method}.nii.gz", label=True, canonical=False)
        assert pred.same_grid(ref)
    before = (out / "results.csv").read_bytes()
    assert main(args) == 2  # never overwrites without --overwrite
    assert (out / "results.csv").read_bytes() == before
    assert main([*args[:-2], "--methods", "nope", "--out", str(tmp_path / "o2")]) == 2


def test_seed_comparison_benchmark_runs_every_n_and_writes_csv_and_plot(tmp_path):
    import sys
    from pathlib import Path

    from fewshotcx.datasets.cases import Case

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import seed_comparison  # noqa: PLC0415

    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    cases = [Case(f"synthetic/c{i}", Volume(image, affine), Volume(label, affine, label=True), {1: "blob"},
                  "synthetic", "test licence", "test citation", "MR")
             for i, (image, label) in enumerate(blob_volume(seed=s) for s in range(3))]
    assert [(r.n_support, r.query_ids[0]) for r in seed_comparison.runs(cases, 4)][:3] == [
        (1, "synthetic_c0"), (1, "synthetic_c0"), (2, "synthetic_c0")]
    rows = seed_comparison.run_benchmark({"synthetic": cases}, ["label-fusion", "sam"], cmp.Options())
    fused = [r for r in rows if r["method"] == "label-fusion"]
    assert len(fused) == 9 and {r["n_support"] for r in fused} == {1, 2} and all(0 <= r["dice"] <= 1 for r in fused)
    assert {r["status"] for r in rows if r["method"] == "sam"} == {"skipped"}
    seed_comparison.report(rows, tmp_path / "s.csv", tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0 and len((tmp_path / "s.csv").read_text().splitlines()) == 19


def test_totalsegmentator_is_full_resolution_and_never_scores_colon_as_rectum(monkeypatch):
    """It ran the 3 mm fast model and mapped "rectum" to the whole colon."""
    import inspect

    assert inspect.signature(ts.predict).parameters["fast"].default is False
    with pytest.raises(ValueError, match="no rectum class"):
        ts.classes_for("Rectum")
    assert ts.classes_for("colon") == ("colon",)
