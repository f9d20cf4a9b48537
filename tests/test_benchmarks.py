"""Each benchmark runs end to end on tiny synthetic data with a tiny random network (so they never rot),
writes a CSV with the documented columns and a PNG; plus the harness helpers they share."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import blob_volume
from fewshotcx import Volume
from fewshotcx.datasets.cases import Case
from fewshotcx.models import UniverSeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import finetune_benefit  # noqa: E402
import labelled_slices  # noqa: E402
import support_size  # noqa: E402

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _case(name: str, seed: int, centre=(12, 10, 6), radius: float = 5.0, shape=(24, 20, 12)) -> Case:
    image, label = blob_volume(shape=shape, seed=seed, centre=centre, radius=radius)
    return Case(f"synthetic/{name}", Volume(image, AFFINE), Volume(label, AFFINE, label=True), {1: "blob"},
                "synthetic", "test licence", "test citation", "MR")


def _tiny_model() -> common.ModelSpec:
    torch.manual_seed(0)
    return common.ModelSpec(model=UniverSeg((4, 4, 4, 4), (4, 4, 4), in_channels=3), slice_size=32, device="cpu")


def _read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- support size
def test_score_is_the_metrics_of_the_mask():
    """Hand-checked: 2 predicted voxels, 3 reference voxels, 1 shared → Dice 2·1/5; the slice Dice
    leaves out the excluded (user-labelled) slice."""
    reference = np.zeros((4, 4, 3), np.uint8)
    reference[0, 0, 0] = reference[1, 0, 0] = reference[0, 0, 2] = 1
    pred = np.zeros_like(reference)
    pred[0, 0, 0] = pred[3, 3, 1] = 1
    result = common.score(pred, Volume(reference, np.eye(4), label=True), exclude_slices=[2])
    assert result["dice"] == 0.4
    assert result["slice_dice"] == pytest.approx(2 * 1 / 3, abs=1e-4)  # slice 0 only: 1 shared, 1 + 2 voxels


def test_support_size_sweep_end_to_end(tmp_path):
    tasks = [common.CrossTask(_case("a", 1), _case("b", 2, centre=(11, 9, 6)), "blob")]
    config = support_size.SweepConfig(sizes=(1, 2, 64), draws=2, ensembles=(1, 3), ensemble_sizes=(2,),
                                      random_sizes=(2,), fixed_sizes=(1,), unet_steps=2)
    rows = support_size.run(tasks, _tiny_model(), config, tmp_path, tag="ss")
    table = _read(tmp_path / "ss.csv")
    assert len(table) == len(rows)
    for column in ("support_size", "draw", "dice", "structure", "subject", "method", "ensemble", "hd95", "nsd",
                   "slice_dice", "seconds", "postprocess"):
        assert column in table[0]
    methods = {r["method"] for r in table}
    assert methods == {"universeg-position", "universeg-random", "universeg-same-slices", "unet-scratch",
                       "label-fusion"}
    # S = 64 exceeds the 12-slab pool and is skipped; the random strategy and K = 3 only run at S = 2.
    assert {r["support_size"] for r in table if r["method"] != "label-fusion"} == {"1", "2"}
    assert {r["support_size"] for r in table if r["method"] == "universeg-random"} == {"2"}
    assert {r["support_size"] for r in table if r["ensemble"] == "3"} == {"2"}
    assert {r["support_size"] for r in table if r["method"] in ("unet-scratch", "universeg-same-slices")} == {"1"}
    # Each measurement is scored without and with post-processing.
    assert {r["postprocess"] for r in table} == set(common.POSTPROCESSING)
    assert all(float(r["dice"]) == float(r["dice"]) for r in table)  # every row was scored (no NaN)
    _assert_png(tmp_path / "ss_brain.png")  # one plot per task family (non-lesion tasks are "brain")
    evidence = _read(tmp_path / "ss_evidence.csv")
    assert int(evidence[0]["pairs"]) == 2  # position vs random at S = 2, two draws
    # the report can be redrawn from the CSV alone (--from-csv)
    support_size.report(common.read_csv(tmp_path / "ss.csv"), tmp_path / "again", tag="ss")
    assert _read(tmp_path / "again" / "ss.csv") == table
    assert _read(tmp_path / "again" / "ss_evidence.csv") == evidence


def test_unet_and_same_slices_get_the_same_drawn_slices():
    case = _case("a", 1)
    pool = _tiny_model().segmenter().fit([case.image], [case.labels]).pools[2]
    items = support_size._draw_slices(pool, 4, draw=0)
    assert torch.equal(items, support_size._draw_slices(pool, 4, draw=0))
    assert len(set(items.tolist())) == 4
    assert support_size._slice_indices(pool, items, case.labels.shape[2]) == sorted(items.tolist())
    # mostly slabs showing the structure, as UniverSeg's "random" strategy draws them
    assert int(pool.has_foreground[items].any(dim=1).sum()) >= 3


# --------------------------------------------------------------------------------- labelled slices
def test_labelled_slices_end_to_end(tmp_path):
    # the blob spans axial slices 2..14 of 16: room for an empty bounding slice on each side
    tasks = [common.SliceTask(_case("a", 1, centre=(12, 10, 8), radius=3.0, shape=(24, 20, 16)), "blob")]
    rows = labelled_slices.run(tasks, _tiny_model(), (1, 2, 3, 50), tmp_path, tag="ls")
    table = _read(tmp_path / "ls.csv")
    assert len(table) == len(rows)
    for column in ("labelled_slices", "dice", "dice_unlabelled", "hd95", "nsd", "slice_dice", "method", "structure",
                   "subject", "postprocess", "seconds"):
        assert column in table[0]
    assert {r["method"] for r in table} == {"model", "interpolation", "combined"}
    assert {r["postprocess"] for r in table} == set(labelled_slices.VARIANTS)
    assert {r["protocol"] for r in table} == set(labelled_slices.PROTOCOLS)
    # with bounds, the empty slices just beyond the structure are labelled too (and kept empty)
    bounded = [r for r in table if r["protocol"] == "inside+bounds"]
    assert all(len(r["labelled"].split()) == int(r["labelled_slices"]) + 2 for r in bounded)
    assert (tmp_path / "ls_vs_interpolation.csv").is_file()
    # 50 slices do not fit in the structure's extent: that count collapses onto an earlier one and is skipped
    counts = sorted({int(r["labelled_slices"]) for r in table})
    assert counts[:3] == [1, 2, 3] and len(counts) <= 4
    # the user's own contours are kept: 3D Dice of interpolation with n slices is at least its unlabelled Dice
    for r in table:
        if np.isnan(float(r["dice_unlabelled"])):  # nothing left to predict: every slice showing it was drawn
            assert int(r["labelled_slices"]) == int(r["extent_slices"])
            continue
        assert float(r["dice"]) >= float(r["dice_unlabelled"]) - 1e-9
    for name in labelled_slices.PLOTTED:
        _assert_png(tmp_path / f"ls_{name.replace('+', '-')}.png")


def test_combined_mode_averages_inside_and_uses_the_model_outside():
    shape = (10, 10, 9)
    model_prob = np.full(shape, 0.9, dtype=np.float32)
    interpolated = np.zeros(shape, dtype=np.uint8)
    interpolated[3:7, 3:7, 2:7] = 1
    out = labelled_slices.combine(model_prob, interpolated, [2, 6], (1.0, 1.0, 2.0))
    assert np.allclose(out[..., :2], 0.9) and np.allclose(out[..., 7:], 0.9)  # outside: model only
    inside = out[..., 2:7]
    # 2 mm inside the interpolated contour: sigmoid(2 mm / 1 mm) averaged with the model's 0.9
    assert np.allclose(inside[5, 5], 0.5 * (0.9 + 1 / (1 + np.exp(-2.0))))
    assert inside[0, 0].max() < 0.5  # far outside the contour: the model's 0.9 is outvoted
    soft = labelled_slices.soft_mask(interpolated, (1.0, 1.0))
    assert soft[..., 0].max() == 0.0 and 0.4 < soft[3, 5, 4] < 0.8  # boundary voxel: near one half


# --------------------------------------------------------------------------------- fine-tuning
def test_finetune_benefit_end_to_end(tmp_path):
    from fewshotcx.models.weights import save_checkpoint

    model = _tiny_model().model
    path = save_checkpoint(model, tmp_path / "tiny.pt", model.config, {"slice_size": 32, "context": 1})
    a, b = _case("a", 1), _case("b", 2, centre=(11, 9, 6))
    experiment = finetune_benefit.Experiment("tiny", a, ["blob"], [common.CrossTask(a, b, "blob")],
                                             [common.CrossTask(b, a, "blob")])
    rows = finetune_benefit.run([experiment], common.ModelSpec(str(path), device="cpu"), 2, tmp_path, tag="ft",
                                support_size=(1, 2), queries=1, episodes_per_step=1, device="cpu")
    table = _read(tmp_path / "ft.csv")
    assert len(table) == len(rows)
    assert {r["model"] for r in table} == {"label-fusion", "before", "after"}
    assert {r["role"] for r in table} == {"target", "control"}
    for column in ("dice", "hd95", "nsd", "finetune_steps", "subject", "structure"):
        assert column in table[0]
    _assert_png(tmp_path / "ft.png")


# --------------------------------------------------------------------------------- harness helpers
def test_data_roles_are_read_from_the_checkpoint(tmp_path):
    from fewshotcx.models.weights import save_checkpoint

    model = _tiny_model().model
    config = {"holdout_volumes": ["synthetic/b"], "holdout_structures": ["Hippocampus_L"],
              "report_volumes": ["synthetic/c"], "report_structures": ["Thalamus_R"]}
    path = save_checkpoint(model, tmp_path / "m.pt", model.config, {"training": {"config": config}})
    roles = common.ModelSpec(str(path)).roles()
    assert roles == {"selection": ({"synthetic/b"}, {"left hippocampus"}),
                     "report": ({"synthetic/c"}, {"right thalamus"})}
    assert common.data_role(_case("b", 2), "blob", roles) == "selection"
    assert common.data_role(_case("c", 2), "blob", roles) == "report"
    assert common.data_role(_case("a", 1), "right thalamus", roles) == "report"
    assert common.data_role(_case("a", 1), "blob", roles) == "trained"
    assert common.ModelSpec(model=model).roles() == {"selection": (set(), set()), "report": (set(), set())}


def test_summaries_leave_out_tasks_with_nothing_to_predict():
    rows = [{"m": "a", "dice": 0.5}, {"m": "a", "dice": float("nan")}, {"m": "a", "dice": 0.7},
            {"m": "b", "dice": float("nan")}]
    by_method = {r["m"]: r for r in common.summarise(rows, ["m"])}
    assert by_method["a"]["dice_mean"] == 0.6 and by_method["a"]["n"] == 2
    assert by_method["b"]["n"] == 0 and np.isnan(by_method["b"]["dice_mean"])


def test_paired_difference_and_summaries():
    rows = [{"k": k, "m": m, "dice": d} for k, m, d in
            [(1, "a", 0.5), (1, "b", 0.7), (2, "a", 0.6), (2, "b", 0.5), (3, "a", 0.1)]]
    result = common.paired_difference(rows, "m", "a", "b", ["k"])
    assert result["pairs"] == 2 and result["b_higher"] == 1 and result["a_higher"] == 1
    assert result["mean_diff"] == pytest.approx(0.05)
    stats = common.summarise(rows, ["m"])
    assert stats[0] == {"m": "a", "dice_mean": pytest.approx(0.4), "dice_sd": pytest.approx(0.216, abs=1e-3), "n": 3}


def test_csv_has_every_column_and_plot_draws_flat_lines(tmp_path):
    rows = [{"x": 1, "y": 0.2, "line": "a"}, {"x": 2, "y": 0.4, "line": "a"},
            {"x": 5, "y": 0.3, "line": "flat", "extra": 1}]
    common.write_csv(rows, tmp_path / "r.csv")
    table = _read(tmp_path / "r.csv")
    assert list(table[0]) == ["x", "y", "line", "extra", "git_commit", "checkpoint_sha256"] and table[2]["extra"] == "1"
    _assert_png(common.plot_lines(rows, "x", "y", "line", tmp_path / "p.png", flat=("flat",), log2_x=True))
    with pytest.raises(ValueError, match="no rows"):
        common.write_csv([], tmp_path / "empty.csv")


def test_score_restricts_slice_dice_to_reference_slices():
    ref = np.zeros((6, 6, 4), dtype=np.uint8)
    ref[1:4, 1:4, 1:3] = 1
    pred = ref.copy()
    pred[..., 2] = 0
    result = common.score(pred, Volume(ref, np.eye(4), label=True))
    assert result["slice_dice"] == pytest.approx(0.5)  # slice 1 perfect, slice 2 missed; empty slices ignored
    assert common.score(pred, Volume(ref, np.eye(4), label=True), exclude_slices=[2])["slice_dice"] == 1.0
    assert result["dice"] == pytest.approx(2 * 9 / (9 + 18), abs=1e-4)  # rounded to 4 decimals


def test_crop_axial_keeps_world_coordinates():
    case = _case("a", 1)  # slice k lies at world z = 3 k mm
    cropped = common.crop_axial(case, 6.0, 20.0)  # k = 2..6
    assert cropped.image.shape == (24, 20, 5) and cropped.labels.shape == (24, 20, 5)
    assert np.allclose(cropped.image.affine @ [0, 0, 0, 1], case.image.affine @ [0, 0, 2, 1])
    assert np.array_equal(cropped.labels.array, case.labels.array[..., 2:7])
    assert np.array_equal(cropped.image.array, case.image.array[..., 2:7])
    with pytest.raises(ValueError, match="no axial slice"):
        common.crop_axial(case, 100.0, 200.0)


#: Committed results no run here can reproduce, so they carry no provenance columns: why, per file.
UNSTAMPED_RESULTS = {
    "gpu_check.csv": "written on the lent H200 by benchmarks/gpu_check.py; no GPU here to rerun it",
    "train_gpu_log.csv": "the training log of the bundled default model (H200, 400 s)",
    "train_gpu_log_270s.csv": "the training log of the shorter H200 run",
    "default_training_curve.csv": "the training log of the fov64 model (fewshotcx 0.2)",
}


def test_every_results_csv_records_its_commit_and_checkpoint():
    """Every CSV under benchmarks/results/ that the evidence script reproduces names the code
    (git_commit) and the weights (checkpoint_sha256) behind it, filled in on every row."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    missing = []
    for path in sorted(results.glob("*.csv")):
        if path.name in UNSTAMPED_RESULTS:
            continue
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or any(not r.get("git_commit") or not r.get("checkpoint_sha256") for r in rows):
            missing.append(path.name)
    assert not missing, f"results without provenance columns (rerun scripts/regenerate_evidence.sh): {missing}"


def test_provenance_is_dirty_for_code_changes_not_for_results(tmp_path, monkeypatch):
    """A regeneration rewrites results CSVs one after another in the same checkout: those do not make
    the next CSV's commit ``+dirty``; a changed source file does."""
    import subprocess

    import provenance

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "a.csv").write_text("a\n1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    clean = provenance.provenance()["git_commit"]
    assert len(clean) == 40 and not clean.endswith("+dirty")
    (tmp_path / "benchmarks" / "results" / "a.csv").write_text("a\n2\n")
    assert provenance.provenance()["git_commit"] == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.provenance()["git_commit"] == clean + "+dirty"
