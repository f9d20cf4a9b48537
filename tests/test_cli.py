from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, UNREGISTERED, blob_volume
from fewshotcx.cli.main import main
from fewshotcx.models import UniverSeg
from fewshotcx.models.weights import save_checkpoint


@pytest.fixture
def case(tmp_path):
    """Support image/label, a query, and a tiny UniverSeg checkpoint, all on disk."""
    affine = ORIENTATIONS["LPS"]
    image, label = blob_volume(seed=1)
    query, _ = blob_volume(seed=2)
    paths = {}
    for name, array in {"img": image, "lab": label, "query": query}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(paths[name]))
    torch.manual_seed(0)
    model = UniverSeg((8, 8, 8, 8), (8, 8, 8))
    paths["weights"] = save_checkpoint(model, tmp_path / "tiny.pt", model.config, {"slice_size": 32})
    paths["out"] = tmp_path / "out" / "pred.nii.gz"
    paths["out"].parent.mkdir()
    return paths


def _predict_args(p, **override):
    args = {"--image": p["query"], "--support": f"{p['img']}:{p['lab']}", "--out": p["out"],
            "--weights": p["weights"], "--device": "cpu"}
    args.update(override)
    return [str(x) for kv in args.items() for x in kv if kv[1] is not None]


@UNREGISTERED
def test_predict_writes_a_label_map_on_the_query_grid(case, capsys):
    assert main(["predict", *_predict_args(case)]) == 0
    out = nib.load(str(case["out"]))
    query = nib.load(str(case["query"]))
    assert out.shape == query.shape and np.allclose(out.affine, query.affine)
    assert np.issubdtype(out.get_data_dtype(), np.integer)
    assert "wrote" in capsys.readouterr().out


@UNREGISTERED
def test_existing_output_needs_overwrite(case, capsys):
    case["out"].write_bytes(b"precious")
    assert main(["predict", *_predict_args(case)]) == 2
    assert case["out"].read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", *_predict_args(case), "--overwrite"]) == 0
    assert nib.load(str(case["out"])).shape == nib.load(str(case["query"])).shape


def _bad_inputs(case, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 12), np.uint8), ORIENTATIONS["LPS"]), str(empty))
    other_grid = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(blob_volume(seed=1)[1], ORIENTATIONS["RAS"]), str(other_grid))
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), ORIENTATIONS["LPS"]), str(small))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    sam_like = tmp_path / "sam.pt"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(2)}, str(sam_like))
    fourd = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(fourd))
    return {
        "missing query": {"--image": tmp_path / "nope.nii.gz"},
        "4D query": {"--image": fourd},
        "support without colon": {"--support": str(case["img"])},
        "empty support label": {"--support": f"{case['img']}:{empty}"},
        "label on another grid": {"--support": f"{case['img']}:{other_grid}"},
        "label of another shape": {"--support": f"{case['img']}:{small}"},
        "garbage checkpoint": {"--weights": garbage},
        "SAM checkpoint given to UniverSeg": {"--weights": sam_like},
        "missing checkpoint": {"--weights": tmp_path / "absent.pt"},
        "output not NIfTI": {"--out": tmp_path / "out" / "pred.png"},
        "output dir missing": {"--out": tmp_path / "nowhere" / "pred.nii.gz"},
        "cuda without a GPU": {"--device": "cuda"} if not torch.cuda.is_available() else {"--device": "tpu"},
    }


def test_every_bad_input_is_one_line_exit_2_and_no_output(case, tmp_path, capsys):
    for what, override in _bad_inputs(case, tmp_path).items():
        code = None
        try:
            code = main(["predict", *_predict_args(case, **override)])
        except SystemExit as exc:  # argparse-level errors (bad IMAGE:LABEL) exit 2 by themselves
            code = exc.code
        err = capsys.readouterr().err.strip()
        assert code == 2, what
        assert err and "Traceback" not in err, what
        assert len(err.splitlines()) == 1, f"{what}: {err}"
        assert not list(case["out"].parent.iterdir()), what  # no output and no temporary file


def test_process_exit_status_and_no_traceback(case, tmp_path):
    result = subprocess.run([sys.executable, "-m", "fewshotcx.cli", "predict",
                             *_predict_args(case, **{"--image": tmp_path / "nope.nii.gz"})],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_internal_error_exits_1_with_one_line_and_user_error_exits_2(case, monkeypatch, capsys):
    """A bug inside a command (RuntimeError) is exit 1 with one line that says "internal error"; the
    same command with a user error is exit 2. Fails on 4901220, which let the RuntimeError escape
    ``main`` as a traceback."""
    from fewshotcx.segmenter import Segmenter

    def broken(self, *args, **kwargs):
        raise RuntimeError("shape mismatch in\nsome kernel")

    monkeypatch.setattr(Segmenter, "fit", broken)
    assert main(["predict", *_predict_args(case)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (RuntimeError): shape mismatch in some kernel" in err
    assert not list(case["out"].parent.iterdir())
    assert main(["predict", *_predict_args(case, **{"--image": case["out"].parent / "nope.nii.gz"})]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err


def test_weights_list_runs(capsys):
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "universeg-official" in listing and "OpenRAIL" in listing


def test_missing_optional_dependency_names_the_extra(case, monkeypatch, capsys):
    """``--backend sam2`` without sam2: one line naming the extra, exit 2, nothing written (it
    was an "internal error ... please report it")."""
    monkeypatch.setitem(sys.modules, "sam2", None)  # import sam2 -> ModuleNotFoundError
    assert main(["predict", *_predict_args(case), "--backend", "sam2", "--config", "sam2.1_hiera_t"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install" in err and "fewshotcx[sam2]" in err
    assert "internal error" not in err and not list(case["out"].parent.iterdir())


@pytest.mark.parametrize("module, expected", [("nnunetv2.run", 2), ("not_an_extra", 1)])
def test_missing_module_is_a_user_error_only_for_known_extras(case, monkeypatch, capsys, module, expected):
    from fewshotcx.segmenter import Segmenter

    def needs(self, *args, **kwargs):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr(Segmenter, "fit", needs)
    assert main(["predict", *_predict_args(case)]) == expected
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("fewshotcx[nnunet]" in err) == (expected == 2)
