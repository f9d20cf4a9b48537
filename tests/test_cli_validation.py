"""Every sub-command checks its arguments before any work: a bad one is one line on stderr, exit 2,
nothing written and no model loaded. And CSVs built from outside data cannot run spreadsheet formulas."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import ORIENTATIONS, blob_volume
from fewshotcx import rt
from fewshotcx.cli.main import main
from fewshotcx.io.tables import safe_cell, write_csv
from fewshotcx.io.volume import Volume

from rt_cases import make_plan, make_query, tiny_weights

PREDICT = ["predict", "--image", "{query}", "--support", "{img}:{lab}", "--out", "{d}/pred.nii.gz"]
COMPLETE = ["complete", "--image", "{img}", "--drawn", "{lab}", "--slices", "3", "--out", "{d}/done.nii.gz"]
COMPARE = ["compare", "--support", "{img}:{lab}", "--query", "{query}", "--out", "{d}/cmp"]
COHORT = ["cohort", "--manifest", "{manifest}", "--support", "{img}:{lab}", "--out", "{d}/cohort"]
MARGIN = ["margin", "--mask", "{lab}", "--margin", "3", "--out", "{d}/ptv.nii.gz"]
RTSTRUCT = ["rtstruct", "--mask", "GTV={lab}", "--series", "{series}", "--out", "{d}/rs.dcm"]
EVALUATE = ["evaluate", "--reference", "{lab}", "--prediction", "{lab}", "--image", "{img}", "--out", "{d}/t.csv"]
TRAIN = ["train", "--steps", "1", "--out", "{d}/run.pt", "--no-progress"]

#: ``(arguments, changes to them)``: each must be refused before any work.
BAD = {
    "predict: --out suffix": (PREDICT, ["--out", "{d}/pred.png"]),
    "predict: --out folder missing": (PREDICT, ["--out", "{d}/nowhere/pred.nii.gz"]),
    "predict: --out exists": (PREDICT, ["--out", "{img}"]),
    "predict: --uncertainty suffix": (PREDICT, ["--uncertainty", "{d}/u.txt"]),
    "predict: --draws 0": (PREDICT, ["--uncertainty", "{d}/u.nii.gz", "--draws", "0"]),
    "predict: --ensemble 0": (PREDICT, ["--ensemble", "0"]),
    "predict: --support-size nan": (PREDICT, ["--support-size", "nan"]),
    "predict: --seed -1": (PREDICT, ["--seed", "-1"]),
    "predict: missing support": (PREDICT, ["--support", "{d}/absent.nii.gz:{lab}"]),
    "predict: --deidentify under a file": (PREDICT, ["--image", "{series}", "--out", "{d}/rs.dcm",
                                                     "--deidentify", "{file}/deid"]),
    "complete: --out suffix": (COMPLETE, ["--out", "{d}/done.txt"]),
    "complete: negative slice": (COMPLETE, ["--slices", "-1"]),
    "complete: missing drawn": (COMPLETE, ["--drawn", "{d}/absent.nii.gz"]),
    "compare: --out is a file": (COMPARE, ["--out", "{file}"]),
    "compare: --unet-steps 0": (COMPARE, ["--unet-steps", "0"]),
    "compare: missing query": (COMPARE, ["--query", "{d}/absent.nii.gz"]),
    "compare: missing --totalseg-masks": (COMPARE, ["--totalseg-masks", "{d}/absent"]),
    "cohort: --workers 0": (COHORT, ["--workers", "0"]),
    "cohort: --gpus-per-worker nan": (COHORT, ["--gpus-per-worker", "nan"]),
    "cohort: --out under a file": (COHORT, ["--out", "{file}/cohort"]),
    "cohort: missing manifest": (COHORT, ["--manifest", "{d}/absent.csv"]),
    "margin: --out suffix": (MARGIN, ["--out", "{d}/x.txt"]),
    "margin: --margin nan": (MARGIN, ["--margin", "nan"]),
    "margin: --margin-si inf": (MARGIN, ["--margin-si", "inf"]),
    "margin: --directions nan": (MARGIN, ["--directions", "anterior=nan"]),
    "margin: --directions negative": (MARGIN, ["--directions", "superior=-2"]),
    "margin: missing --subtract": (MARGIN, ["--subtract", "{d}/absent.nii.gz"]),
    "rtstruct: --out suffix": (RTSTRUCT, ["--out", "{d}/rs.nii.gz"]),
    "rtstruct: --series is a file": (RTSTRUCT, ["--series", "{file}"]),
    "rtstruct: missing mask": (RTSTRUCT, ["--mask", "GTV={d}/absent.nii.gz"]),
    "evaluate: --out suffix": (EVALUATE, ["--out", "{d}/t.txt"]),
    "evaluate: --tolerance nan": (EVALUATE, ["--tolerance", "nan"]),
    "evaluate: --apl-tolerance -inf": (EVALUATE, ["--apl-tolerance", "-inf"]),
    "evaluate: missing reference": (EVALUATE, ["--reference", "{d}/absent.nii.gz"]),
    "serve: --port 99999": (["serve"], ["--port", "99999"]),
    "serve: --port 0": (["serve"], ["--port", "0"]),
    "serve: --max-upload-mb inf": (["serve"], ["--max-upload-mb", "inf"]),
    "serve: --max-upload-mb nan": (["serve"], ["--max-upload-mb", "nan"]),
    "serve: --idle-minutes -1": (["serve"], ["--idle-minutes", "-1"]),
    "serve: --max-sessions 0": (["serve"], ["--max-sessions", "0"]),
    "train: --lr inf": (TRAIN, ["--lr", "inf"]),
    "train: --max-seconds nan": (TRAIN, ["--max-seconds", "nan"]),
    "train: --checkpoint-every 0": (TRAIN, ["--checkpoint-every", "0"]),
    "train: --synthetic-ratio 2": (TRAIN, ["--synthetic-ratio", "2"]),
    "train: --out under a file": (TRAIN, ["--out", "{file}/run.pt"]),
    "train: --out suffix": (TRAIN, ["--out", "{d}/run.csv"]),
    "train: missing --images": (TRAIN, ["--images", "{d}/absent.nii.gz", "--labels", "{lab}"]),
    "train: --volume-cache folder missing": (TRAIN, ["--volume-cache", "{d}/nowhere/v.npz"]),
    "demo: --out is a file": (["demo"], ["--out", "{file}"]),
    "demo: --out under a file": (["demo"], ["--out", "{file}/demo"]),
    "weights: locate without a name": (["weights", "locate"], []),
}


def _apply(base: list[str], changes: list[str]) -> list[str]:
    """``base`` with each ``--option value`` of ``changes`` replaced (or appended)."""
    argv = list(base)
    i = 0
    while i < len(changes):
        option, value = changes[i], changes[i + 1]
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
        i += 2
    return argv


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def files(tmp_path):
    """Small valid inputs; every output of the table goes under ``tmp_path`` too."""
    image, label = blob_volume(seed=1)
    query, _ = blob_volume(seed=2)
    paths = {"d": tmp_path}
    for name, array in {"img": image, "lab": label, "query": query}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, ORIENTATIONS["LPS"]), str(paths[name]))
    paths["manifest"] = tmp_path / "manifest.csv"
    paths["manifest"].write_text(f"id,image\np1,{paths['query']}\n")
    paths["file"] = tmp_path / "a_file"
    paths["file"].write_text("not a folder")
    paths["series"] = tmp_path / "series"
    paths["series"].mkdir()
    return paths


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model or training counts as work: either fails the test."""
    import fewshotcx.segmenter
    import fewshotcx.training.loop

    def refuse(*args, **kwargs):
        raise RuntimeError("work started before the arguments were checked")

    monkeypatch.setattr(fewshotcx.segmenter, "Segmenter", refuse)
    monkeypatch.setattr(fewshotcx.training.loop, "train", refuse)


@pytest.mark.parametrize("what", list(BAD))
def test_bad_argument_is_one_line_exit_2_before_any_work(what, files, no_work, monkeypatch, capsys):
    monkeypatch.chdir(files["d"])
    base, changes = BAD[what]
    argv = [arg.format(**files) for arg in _apply(base, changes)]
    before = _tree(files["d"])
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses a malformed number itself, also with exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, f"{what}: exit {code}: {err}"
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert _tree(files["d"]) == before, f"{what} wrote something"


def test_predict_deidentify_into_an_uncreatable_folder_writes_no_output(tmp_path, capsys):
    ct, rs = make_plan(tmp_path)
    query = make_query(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "pred.dcm"
    argv = ["predict", "--support", f"{ct}:{rs}", "--structures", "GTV", "--image", str(query),
            "--weights", str(tiny_weights(tmp_path / "tiny.pt")), "--device", "cpu", "--out", str(out),
            "--deidentify", str(blocker / "deid")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--deidentify" in err
    assert not out.exists() and not list(tmp_path.glob(".pred.dcm*"))


def test_evaluate_neutralises_formula_names_in_its_csv(files, tmp_path, capsys):
    name = '=HYPERLINK("http://x")'
    label = nib.load(str(files["lab"]))
    mask = Volume(np.asarray(label.dataobj).astype(np.uint8), label.affine, label=True)
    reference, prediction = tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz"
    rt.save_labels(mask, [name], reference)
    rt.save_labels(mask.with_array(np.roll(mask.array, 2, axis=0)), [name], prediction)
    table = tmp_path / "scores.csv"
    assert main(["evaluate", "--reference", str(reference), "--prediction", str(prediction), "--image",
                 str(files["img"]), "--out", str(table)]) == 0
    with table.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["structure"] == "'" + name and row["prediction_name"] == "'" + name
    assert 0 < float(row["dice"]) < 1 and not table.read_text().count("\n=")


@pytest.mark.parametrize("value, written", [
    ("=1+1", "'=1+1"), ("+1+1", "'+1+1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\r=x", "'\r=x"), ("plain", "plain"), ("-0.5", "-0.5"), ("+3e-2", "+3e-2"), (-0.5, "-0.5"), (7, "7"),
    ("", ""),
])
def test_write_csv_quotes_formulas_and_keeps_numbers(value, written, tmp_path):
    path = write_csv([{"cell": value}], tmp_path / "t.csv")
    with path.open(newline="") as f:
        assert next(csv.DictReader(f))["cell"] == written
    assert safe_cell(safe_cell(value)) == safe_cell(value)  # quoting twice changes nothing
