"""Every script under examples/ runs to completion on tiny generated inputs and writes what it says.

Each example runs in its own interpreter (as a user would run it) with a tiny, randomly initialised
UniverSeg checkpoint instead of the bundled default, so these tests check the scripts' code paths
and outputs, not segmentation quality. The Python on README.md and the docs' front pages runs here too,
as written, with the bundled model and the library's default strategy.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewshotcx.models import UniverSeg
from fewshotcx.models.weights import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HELPERS = {"synthetic_data.py"}  # imported by the examples, not an example itself
TIMEOUT_S = 300  # a hang guard only: each example takes seconds


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    model = UniverSeg((8,) * 4, (8,) * 3)
    return save_checkpoint(model, tmp_path_factory.mktemp("weights") / "tiny.pt", model.config, {"slice_size": 32})


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>`` with ``args``; return its stdout, failing the test on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models stall on OpenMP threads of a busy 2-core box
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, cwd=ROOT, env=env)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_on_grid(path: Path, like: Path) -> np.ndarray:
    """The label map at ``path`` has ``like``'s shape and affine (the file's own layout); returns it."""
    out, ref = nib.load(str(path)), nib.load(str(like))
    assert out.shape == ref.shape
    assert np.allclose(out.affine, ref.affine, atol=1e-5)
    data = np.asarray(out.dataobj)
    assert np.issubdtype(data.dtype, np.integer)
    return data


def test_quickstart(tmp_path, tiny_weights):
    stdout = run_example("quickstart.py", "--synthetic", "--workdir", str(tmp_path), "--weights", str(tiny_weights),
                         "--device", "cpu")
    query = tmp_path / "data" / "case2_image.nii.gz"
    assert nib.aff2axcodes(nib.load(str(query)).affine) == ("L", "P", "S")  # the query is not stored as RAS
    assert_on_grid(tmp_path / "prediction.nii.gz", query)
    assert re.search(r"Dice \d\.\d{3}  HD95 ", stdout)


def test_few_slices(tmp_path, tiny_weights):
    stdout = run_example("few_slices.py", "--synthetic", "--out-dir", str(tmp_path), "--weights", str(tiny_weights),
                         "--device", "cpu")
    model = nib.load(str(tmp_path / "model.nii.gz"))
    interpolated = nib.load(str(tmp_path / "interpolation.nii.gz"))
    assert model.shape == interpolated.shape and np.allclose(model.affine, interpolated.affine)
    scores = dict(re.findall(r"^(\w+)\s+->.*Dice (\d\.\d+)", stdout, flags=re.M))
    assert set(scores) == {"model", "interpolation"}
    # shape-based interpolation between three slices of an ellipsoid recovers most of it
    assert float(scores["interpolation"]) > 0.6


def test_custom_model(tmp_path, tiny_weights):
    for extra in ([], ["--weights", str(tiny_weights)]):
        stdout = run_example("custom_model.py", "--synthetic", "--out-dir", str(tmp_path), *extra)
        universeg = nib.load(str(tmp_path / "universeg.nii.gz"))
        nearest = nib.load(str(tmp_path / "nearest_slice.nii.gz"))
        assert universeg.shape == nearest.shape and np.allclose(universeg.affine, nearest.affine)
        assert nib.aff2axcodes(nearest.affine) == ("L", "P", "S")  # written in the query's own layout
        # the custom backend transfers the support's labels: the query's organ is found
        assert float(re.search(r"nearest_slice .*Dice (\d\.\d+)", stdout).group(1)) > 0.5


def test_finetune(tmp_path, tiny_weights):
    stdout = run_example("finetune.py", "--tiny", "--init", str(tiny_weights), "--steps", "2",
                         "--workdir", str(tmp_path), "--device", "cpu")
    tuned = tmp_path / "finetuned.pt"
    before, after = load_checkpoint(tiny_weights)[0], load_checkpoint(tuned)[0]
    assert any(not np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)  # it trained
    assert_on_grid(tmp_path / "prediction.nii.gz", tmp_path / "data" / "case3_image.nii.gz")
    assert "slice size 32" in stdout  # the Segmenter took the slice size from the fine-tuned checkpoint


def test_support_sweep(tmp_path, tiny_weights):
    out = tmp_path / "sweep.csv"
    run_example("support_sweep.py", "--synthetic", "--csv", str(out), "--sizes", "1,3", "--seeds", "0,1",
                "--weights", str(tiny_weights), "--device", "cpu")
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["support_size"], r["seed"]) for r in rows] == [("1", "0"), ("1", "1"), ("3", "0"), ("3", "1")]
    assert all(float(r["dice"]) == float(r["dice"]) for r in rows)  # every run was scored (no NaN, no blank)


def test_sam_backend(tmp_path):
    stdout = run_example("sam_backend.py", "--tiny", "--workdir", str(tmp_path), "--tune-steps", "3")
    assert nib.aff2axcodes(nib.load(str(tmp_path / "prediction.nii.gz")).affine) == ("L", "P", "S")
    assert "prompt-tuning loss" in stdout


def test_ptv_rtstruct(tmp_path):
    stdout = run_example("ptv_rtstruct.py", "--keep", str(tmp_path))
    assert (tmp_path / "RS.dcm").is_file() and any((tmp_path / "ct").iterdir())
    assert "PTV" in stdout


# Pages whose ```python blocks are complete programs, run as written on the files they name.
RUNNABLE_PAGES = ("README.md", "docs/index.md", "docs/guide.md")
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_SAVED = re.compile(r"save_volume\(.*,\s*\"([^\"]+)\"\)")


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of ``page`` that are its own code (not a ``--8<--`` include of a script)."""
    return [b for b in _PYTHON_BLOCK.findall(page.read_text(encoding="utf-8")) if "--8<--" not in b]


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_docs_python_runs_as_written(page, tmp_path):
    """Each page's Python runs unchanged, with the library's real default (``strategy="auto"``, the
    bundled model), on the generated volumes of the examples' ``--synthetic`` mode under the names
    the page uses: p1 and p2 labelled, p3 the query (stored in LPS order, as a DICOM-derived file is).
    This checks that the code runs and writes on p3's grid, not segmentation quality."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        from synthetic_data import synthetic_case
    finally:
        sys.path.remove(str(EXAMPLES))
    import fewshotcx as fx

    for i, orientation in ((1, "RAS"), (2, "RAS"), (3, "LPS")):
        image, label = synthetic_case(i - 1, orientation=orientation)
        fx.save_volume(image, tmp_path / f"p{i}_ct.nii.gz")
        fx.save_volume(label, tmp_path / (f"p{i}_ctv.nii.gz" if i < 3 else "p3_reference.nii.gz"))
    blocks = python_blocks(ROOT / page)
    assert blocks, f"{page} has no Python example"
    env = {k: v for k, v in os.environ.items() if k != "FEWSHOTCX_DEFAULT_STRATEGY"}  # the real default
    env["OMP_NUM_THREADS"] = "1"
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=TIMEOUT_S,
                              cwd=tmp_path, env=env)
        assert proc.returncode == 0, f"{page} example exited {proc.returncode}:\n{block}\n{proc.stderr}"
        for name in _SAVED.findall(block):
            out, query = nib.load(str(tmp_path / name)), nib.load(str(tmp_path / "p3_ct.nii.gz"))
            assert out.shape == query.shape and np.allclose(out.affine, query.affine, atol=1e-5), name


def test_every_example_has_a_test():
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - HELPERS
    tested = {name[len("test_"):] + ".py" for name in globals() if name.startswith("test_")}
    assert scripts <= tested, f"examples without a test: {sorted(scripts - tested)}"


def test_interactive_starts(tmp_path, tiny_weights):
    stdout = run_example("interactive_starts.py", "--synthetic", "--out-dir", str(tmp_path), "--weights",
                         str(tiny_weights), "--device", "cpu")
    curves = {name: [float(d) for d in re.findall(r"\d\.\d{3}", line)]
              for name, line in re.findall(r"^(\S+)\s+Dice (.*)$", stdout, flags=re.M)}
    assert len(curves["universeg"]) == 6  # the start and five clicks
    image = tmp_path / "data" / "case1_image.nii.gz"
    for name in curves:
        assert_on_grid(tmp_path / f"{name.replace('+', '_')}.nii.gz", image)
    # each backend either starts (a curve) or says in one line why it cannot
    assert all(name in curves or re.search(rf"^{re.escape(name)}\s+cannot start here: ", stdout, flags=re.M)
               for name in ("universeg", "universeg+atlas", "atlas"))
