"""fx.cohort on a local 2-CPU Ray: same predictions as a plain Segmenter, resumable, fault-tolerant."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, UNREGISTERED, blob_volume
from fewshotcx import Segmenter, Volume, load_volume, metrics
from fewshotcx.backends.universeg import UniverSegBackend
from fewshotcx.cli.main import main
from fewshotcx.cohort import read_manifest, run
from fewshotcx.io.dicom import write_dicom_series
from fewshotcx.rt.rtstruct import read_rtstruct
from fewshotcx.models import UniverSeg
from fewshotcx.models.weights import save_checkpoint

ray = pytest.importorskip("ray")
pytestmark = UNREGISTERED  # small blobs, stored in other orientations: some queries do not register

SHAPE = (32, 32, 16)
VICTIM_DEPTH = 20  # the patient whose worker the kill test shoots has this many axial slices


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs) for the module; workers import this test module (the kill test's backend)."""
    here = str(Path(__file__).resolve().parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([here, str(Path(here).parent)] + ([old] if old else []))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
    if old is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old


def tiny_model():
    torch.manual_seed(0)
    return UniverSeg((8, 8, 8, 8), (8, 8, 8))


def _save(array, affine, path, label=False):
    nib.save(nib.Nifti1Image(array.astype(np.uint8 if label else np.float32), affine), str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Support pair, four queries (two with references, two orientations), one DICOM series query."""
    root = tmp_path_factory.mktemp("cohort")
    image, label = blob_volume(SHAPE, seed=1)
    support = (_save(image, ORIENTATIONS["RAS"], root / "sup.nii.gz"),
               _save(label, ORIENTATIONS["RAS"], root / "sup_lab.nii.gz", label=True))
    rows = []
    for i in range(4):
        affine = ORIENTATIONS["LPS" if i % 2 else "PIR"]
        img, lab = blob_volume(SHAPE, seed=10 + i, centre=(14 + i, 17 - i, 8), radius=5.0 + i / 2)
        row = {"id": f"p{i}", "image": _save(img, affine, root / f"q{i}.nii.gz").name}
        if i < 2:
            row["reference"] = _save(lab, affine, root / f"ref{i}.nii.gz", label=True).name
        rows.append(row)
    img, _ = blob_volume(SHAPE, seed=20)
    write_dicom_series(Volume(img * 100, ORIENTATIONS["LPS"]), root / "series")
    rows.append({"id": "s0", "series": "series"})
    options = {"model": tiny_model(), "slice_size": 32, "seed": 0, "device": "cpu", "modality": "mr"}
    # A threshold that gives this random network a non-trivial mask (about a third of p0 foreground).
    prob = Segmenter(**options, progress=False).fit([support[0]], [support[1]]).predict_proba(root / "q0.nii.gz")
    options["threshold"] = float(np.quantile(prob.array, 0.67))
    return {"root": root, "support": [support], "rows": rows, "options": options}


def write_manifest(path, rows):
    columns = ["id", "image", "reference", "series"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def manifest(data, rows=None, name="queries.csv"):
    return write_manifest(data["root"] / name, rows if rows is not None else data["rows"])


def plain_prediction(data, query, **override):
    seg = Segmenter(**{**data["options"], **override}, progress=False)
    seg.fit([data["support"][0][0]], [data["support"][0][1]])
    return seg.predict(query)


def states(out, names):
    """(inode, mtime_ns) of each output: changes whenever a file is rewritten."""
    return {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in names}


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ manifest
def test_manifest_paths_are_relative_to_the_manifest(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [{"id": "a", "image": "x/a.nii.gz", "reference": "r.nii.gz"},
                                               {"id": "b", "series": "/abs/dicom"}])
    a, b = read_manifest(path)
    assert (a.image, a.reference, a.series, a.outputs) == (tmp_path / "x/a.nii.gz", tmp_path / "r.nii.gz", False,
                                                           ("a.nii.gz",))
    assert (b.image, b.series, b.outputs) == (Path("/abs/dicom"), True, ("b.nii.gz", "b.rtstruct.dcm"))
    assert replace(b, named=True).outputs == ("b.nii.gz", "b.structures.json", "b.rtstruct.dcm")


@pytest.mark.parametrize("text, message", [
    ("name,image\na,a.nii\n", "needs the columns id and image"),
    ("id,image,refrence\na,a.nii,r.nii\n", "unknown column(s) 'refrence'"),
    ("id,image\na,a.nii\nA,b.nii\n", "line 3: duplicate id 'A'"),
    ("id,image\n../a,a.nii\n", "id '../a' is not safe"),
    ("id,image\n,a.nii\n", "id '' is not safe"),
    ("id,image,series\na,a.nii,d\n", "exactly one of image and series"),
    ("id,image\n", "no patients"),
])
def test_bad_manifest_is_one_line_error(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_manifest(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ engine
@pytest.fixture(scope="module")
def first_run(ray_cluster, data):
    """The whole manifest segmented once by two workers (later tests work on copies of its folder)."""
    out = data["root"] / "first"
    return out, run(manifest(data), data["support"], out, workers=2, segmenter_options=data["options"])


def copy_of(first_run, tmp_path):
    return Path(shutil.copytree(first_run[0], tmp_path / "out"))  # copy2 keeps the mtimes the record holds


def test_cohort_equals_plain_segmenter(data, first_run):
    out, results = first_run
    assert [r["id"] for r in results.rows] == ["p0", "p1", "p2", "p3", "s0"]
    assert [r["status"] for r in results.rows] == ["ok"] * 5, results.rows
    predictions = []
    for row in data["rows"]:
        query = data["root"] / (row.get("image") or row["series"])
        expected = plain_prediction(data, query)
        written = load_volume(out / f"{row['id']}.nii.gz", label=True)
        assert np.array_equal(written.array, expected.array) and np.allclose(written.affine, expected.affine)
        predictions.append(expected.array)
        if "reference" in row:  # scored against the reference, as fx.metrics does
            ref = load_volume(data["root"] / row["reference"], label=True)
            got = next(r for r in read_rows(out / "results.csv") if r["id"] == row["id"])
            assert float(got["dice"]) == pytest.approx(metrics.dice(expected, ref), abs=1e-4)
            assert float(got["hd95"]) == pytest.approx(metrics.hd95(expected, ref), abs=0.01)
    assert 0 < predictions[0].mean() < 1 and not np.array_equal(predictions[0], predictions[2])
    # the DICOM series patient also gets an RTSTRUCT that reads back to its prediction
    roi = read_rtstruct(out / "s0.rtstruct.dcm", data["root"] / "series")
    assert np.array_equal(roi["label_1"].array, predictions[-1])
    csv_rows = read_rows(out / "results.csv")
    assert list(csv_rows[0]) == ["id", "status", "seconds", "error", "dice", "hd95"]
    assert csv_rows[2]["dice"] == "" and float(csv_rows[0]["seconds"]) > 0
    assert "5 patients: 5 ok, 0 skipped, 0 failed" in results.summary()


def test_rerun_skips_finished_and_redoes_changed_inputs(data, first_run, tmp_path):
    out = copy_of(first_run, tmp_path)
    names = [f"p{i}.nii.gz" for i in range(4)] + ["s0.nii.gz", "s0.rtstruct.dcm"]
    before = states(out, names)
    again = run(manifest(data), data["support"], out, workers=2, segmenter_options=data["options"])
    assert [r["status"] for r in again.rows] == ["skipped"] * 5
    assert states(out, names) == before  # nothing rewritten
    assert [r["dice"] for r in again.rows] == [r["dice"] for r in first_run[1].rows]

    touched = data["root"] / "q3.nii.gz"  # a changed input redoes that patient only
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        third = run(manifest(data), data["support"], out, workers=2, segmenter_options=data["options"])
    finally:
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [r["status"] for r in third.rows] == ["skipped"] * 3 + ["ok", "skipped"]
    after = states(out, names)
    assert after.pop("p3.nii.gz") != before.pop("p3.nii.gz") and after == before


def test_changed_options_redo_and_overwrite_redoes(data, first_run, tmp_path):
    out, path = copy_of(first_run, tmp_path), manifest(data, data["rows"][:2], "two.csv")
    names = ["p0.nii.gz", "p1.nii.gz"]
    first = states(out, names)
    options = {**data["options"], "threshold": data["options"]["threshold"] * 0.98}
    redone = run(path, data["support"], out, workers=1, segmenter_options=options)
    assert [r["status"] for r in redone.rows] == ["ok", "ok"]
    second = states(out, names)
    assert all(second[n] != first[n] for n in names)
    written = load_volume(out / "p0.nii.gz", label=True).array
    assert np.array_equal(written, plain_prediction(data, data["root"] / "q0.nii.gz",
                                                              threshold=options["threshold"]).array)
    assert not np.array_equal(written, load_volume(first_run[0] / "p0.nii.gz", label=True).array)
    forced = run(path, data["support"], out, workers=1, segmenter_options=options, overwrite=True)
    assert [r["status"] for r in forced.rows] == ["ok", "ok"]
    assert all(states(out, names)[n] != second[n] for n in names)


class KillOnceBackend:
    """UniverSeg that kills its own worker process on the first volume of depth VICTIM_DEPTH it sees
    (``marker`` records that it happened, so the retry runs normally)."""

    name, resize_mode = "universeg", "pad"

    def __init__(self, marker, **options):
        self.marker, self.inner = Path(marker), UniverSegBackend(strategy="position", **options)  # slab-only wrapper
        self.slice_size, self.context, self.device = self.inner.slice_size, self.inner.context, self.inner.device

    def fit(self, pools, generator):
        self.inner.fit(pools, generator)

    def bytes_per_slab(self):
        return self.inner.bytes_per_slab()

    def predict_slices(self, slabs, geometry, generator):
        if geometry.volume_shape[2] == VICTIM_DEPTH and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return self.inner.predict_slices(slabs, geometry, generator)


def test_faults_fail_alone_and_killed_worker_patient_is_retried(ray_cluster, data, tmp_path):
    """A corrupt and a missing scan fail alone; the worker running "victim" is killed once (its retry
    completes on a restarted worker: one output, one row, nothing partial left)."""
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b this is not a gzip stream")
    image, _ = blob_volume((32, 32, VICTIM_DEPTH), seed=30)
    _save(image, ORIENTATIONS["LPS"], tmp_path / "victim.nii.gz")
    rows = [data["rows"][0], {"id": "bad", "image": str(corrupt)}, {"id": "gone", "image": str(tmp_path / "no.nii")},
            {"id": "victim", "image": str(tmp_path / "victim.nii.gz")}, data["rows"][2]]
    marker = tmp_path / "killed"
    backend = KillOnceBackend(marker, model=tiny_model(), slice_size=32)
    options = {"backend": backend, "seed": 0, "modality": "mr", "threshold": data["options"]["threshold"]}
    out, path = tmp_path / "out", manifest(data, rows, "faulty.csv")
    results = run(path, data["support"], out, workers=2, segmenter_options=options)
    assert marker.exists()  # the worker really was killed
    status = {r["id"]: (r["status"], r["error"]) for r in results.rows}
    assert status["p0"] == status["p2"] == status["victim"] == ("ok", "")
    assert status["bad"][0] == "failed" and "corrupt.nii.gz" in status["bad"][1] and "\n" not in status["bad"][1]
    assert status["gone"][0] == "failed" and "no.nii" in status["gone"][1]
    assert sorted(p.name for p in out.iterdir()) == [".fewshotcx-run.json", "p0.nii.gz", "p2.nii.gz", "results.csv",
                                                     "victim.nii.gz"]
    assert [r["id"] for r in read_rows(out / "results.csv")] == ["p0", "bad", "gone", "victim", "p2"]
    expected = plain_prediction(data, tmp_path / "victim.nii.gz", strategy="position")
    assert np.array_equal(load_volume(out / "victim.nii.gz", label=True).array, expected.array)
    again = run(path, data["support"], out, workers=1, segmenter_options=options)
    assert [r["status"] for r in again.rows] == ["skipped", "failed", "failed", "skipped", "skipped"]


def test_all_failed_run_can_be_rerun(ray_cluster, data, tmp_path):
    path = manifest(data, [{"id": "gone", "image": str(tmp_path / "no.nii.gz")}], "gone.csv")
    for _ in range(2):  # the second run must not take the first one's results.csv for a user's file
        results = run(path, data["support"], tmp_path / "out", workers=1, segmenter_options=data["options"])
        assert [r["status"] for r in results.rows] == ["failed"] and "no.nii.gz" in results.rows[0]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".fewshotcx-run.json", "results.csv"]


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli_case(data, tmp_path):
    torch.manual_seed(0)
    weights = save_checkpoint(tiny_model(), tmp_path / "tiny.pt", tiny_model().config, {"slice_size": 32})
    (sup_img, sup_lab), = data["support"]
    path = manifest(data, data["rows"][:2], "cli.csv")
    return ["cohort", "--manifest", str(path), "--support", f"{sup_img}:{sup_lab}", "--out", str(tmp_path / "out"),
            "--weights", str(weights), "--device", "cpu", "--modality", "mr", "--workers", "1"]


def test_cli_without_ray_says_how_to_install(cli_case, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(cli_case) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'fewshotcx[cohort]'" in err and "\n" not in err


def test_cli_bad_manifest(cli_case, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,image\np 1,q.nii.gz\n")
    args = list(cli_case)
    args[args.index("--manifest") + 1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.csv, line 2: id 'p 1' is not safe" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_foreign_results_table_is_not_replaced(cli_case, data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.csv").write_text("a user's table\n")
    with pytest.raises(FileExistsError, match="results.csv exists"):
        run(manifest(data), data["support"], tmp_path / "out", segmenter_options=data["options"])
    assert (tmp_path / "out" / "results.csv").read_text() == "a user's table\n"


def test_cli_refuses_foreign_output_unless_overwrite(ray_cluster, data, cli_case, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "p1.nii.gz"
    mine.write_bytes(b"a user's own file")
    assert main(cli_case) == 2
    err = capsys.readouterr().err.strip()
    assert "p1.nii.gz exists" in err and "--overwrite" in err and "\n" not in err
    assert mine.read_bytes() == b"a user's own file" and not (out / "p0.nii.gz").exists()

    assert main(cli_case + ["--overwrite"]) == 0
    summary = capsys.readouterr().out
    assert "2 patients: 2 ok, 0 skipped, 0 failed" in summary and "mean Dice" in summary
    expected = plain_prediction(data, data["root"] / "q1.nii.gz", threshold=0.5)  # the checkpoint = tiny_model()
    assert np.array_equal(load_volume(mine, label=True).array, expected.array)
    assert main(cli_case) == 0  # a rerun finds both done
    assert "0 ok, 2 skipped" in capsys.readouterr().out

    edited = out / "p0.nii.gz"  # a finished output edited by hand is the user's now
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    assert main(cli_case + ["--seed", "5"]) == 2  # other options would redo it: refused without --overwrite
    assert "p0.nii.gz exists" in capsys.readouterr().err


# ------------------------------------------------------------------------------ model options (issue #23)
COHORT_OPTIONS = {
    "strategy": ["--strategy", "retrieval"],
    "fusion": ["--backend", "atlas", "--registration", "rigid", "--fusion", "weighted"],
    "registration": ["--strategy", "registered", "--registration", "rigid"],
}


@pytest.mark.parametrize("name", sorted(COHORT_OPTIONS))
def test_cli_cohort_forwards_model_options_like_predict(ray_cluster, cli_case, tmp_path, name):
    """Each model option gives the cohort output that ``predict`` gives with the same option."""
    from test_strategies import _head

    option = COHORT_OPTIONS[name]
    (image, label), (image2, label2), (query, _) = _head(0), _head(1, shift=(-3.0, 2.0, -2.0)), _head(2, shift=(3.0, -2.0, 2.0))
    from scipy import ndimage

    label2 = label2.with_array(ndimage.binary_dilation(label2.array, iterations=2).astype(np.uint8))  # atlases disagree
    files = [tmp_path / n for n in ("sup.nii.gz", "sup_lab.nii.gz", "q.nii.gz", "sup2.nii.gz", "sup2_lab.nii.gz")]
    for volume, path in zip((image, label, query, image2, label2), files):
        _save(volume.array, volume.affine, path, label=volume.label)
    weights = cli_case[cli_case.index("--weights") + 1]
    model = [] if "atlas" in option else ["--weights", weights]  # the atlas backend has no network
    shared = ["--support", f"{files[0]}:{files[1]}", "--support", f"{files[3]}:{files[4]}", "--device", "cpu", "--modality", "mr", *model]
    rows = write_manifest(tmp_path / "one.csv", [{"id": "p0", "image": files[2].name}])
    out = tmp_path / "out"
    assert main(["cohort", "--manifest", str(rows), "--out", str(out), "--workers", "1", *shared, *option]) == 0
    assert main(["predict", "--image", str(files[2]), "--out", str(tmp_path / "p.nii.gz"), *shared, *option]) == 0
    predicted = load_volume(tmp_path / "p.nii.gz", label=True).array
    np.testing.assert_array_equal(load_volume(out / "p0.nii.gz", label=True).array, predicted)
    default = {"registration": ["--strategy", "registered"], "fusion": option[:4]}.get(name, [])
    assert main(["predict", "--image", str(files[2]), "--out", str(tmp_path / "d.nii.gz"), *shared, *default]) == 0
    assert not np.array_equal(load_volume(tmp_path / "d.nii.gz", label=True).array, predicted), \
        f"--{name} made no difference here: the test could not fail"


def test_cli_cohort_forwards_the_sam2_config(cli_case, monkeypatch):
    """--config reaches the workers' Segmenter (captured; a SAM 2 checkpoint is too big for a test)."""
    from fewshotcx import cohort

    seen = {}

    def fake_run(*args, segmenter_options, **kwargs):
        seen.update(segmenter_options)
        raise SystemExit(0)

    monkeypatch.setattr(cohort, "require_ray", lambda: None)
    monkeypatch.setattr(cohort, "run", fake_run)
    with pytest.raises(SystemExit):
        main(cli_case + ["--backend", "sam2", "--config", "medsam2"])
    assert seen["config"] == "medsam2" and seen["backend"] == "sam2"
