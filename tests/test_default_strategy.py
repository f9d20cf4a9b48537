"""One default support strategy, ``"auto"`` (registered onto each query, retrieval where registration
fails its check), whatever the install and whichever door: ``$FEWSHOTCX_DEFAULT_STRATEGY`` is the only override."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fewshotcx as fx
import fewshotcx.backends as backends
from fewshotcx.backends.universeg import UniverSegBackend
from fewshotcx.cli.main import build_parser
from fewshotcx.cli.predict import model_options
from fewshotcx.models import UniverSeg

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: The sub-commands that take the Segmenter's options, with the arguments each one requires.
COMMANDS = {
    "predict": ["--image", "q.nii.gz", "--support", "i.nii.gz:l.nii.gz", "--out", "o.nii.gz"],
    "complete": ["--image", "q.nii.gz", "--drawn", "d.nii.gz", "--slices", "1,2", "--out", "o.nii.gz"],
    "cohort": ["--manifest", "m.csv", "--support", "i.nii.gz:l.nii.gz", "--out", "out"],
}


def _model() -> UniverSeg:
    torch.manual_seed(0)
    return UniverSeg((4,) * 4, (4,) * 3, in_channels=3).eval()


def _requirement_name(requirement: str) -> str:
    """``"SimpleITK>=2.4"`` → ``"simpleitk"``."""
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def test_a_plain_install_gets_auto(monkeypatch):
    """``pip install fewshotcx`` (no extras) installs SimpleITK, so ``auto`` is everyone's default."""
    monkeypatch.delenv(backends.STRATEGY_ENV, raising=False)
    assert backends.default_strategy() == "auto"
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert "simpleitk" in {_requirement_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert all("simpleitk" not in {_requirement_name(r) for r in extra} for extra in extras.values())
    assert extras["registration"] == []  # the old extra, an empty alias for one release


def test_segmenter_backend_and_cli_agree_on_the_default(monkeypatch):
    """``Segmenter()``, a backend built directly, ``universeg+atlas`` and every CLI command with model
    options (cohort workers and the server build their Segmenter the same way)."""
    monkeypatch.delenv(backends.STRATEGY_ENV, raising=False)
    strategies = {"Segmenter()": fx.Segmenter(model=_model(), progress=False).backend.strategy,
                  "UniverSegBackend()": UniverSegBackend(model=_model()).strategy,
                  "universeg+atlas": fx.Segmenter(backend="universeg+atlas", model=_model(),
                                                  progress=False).backend.universeg.strategy}
    for command, required in COMMANDS.items():
        args = build_parser().parse_args([command, *required])
        options = {**model_options(args), "model": _model()}
        strategies[command] = fx.Segmenter(**options, progress=False).backend.strategy
    assert set(strategies.values()) == {"auto"}, strategies


def test_cli_help_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default auto" in help_text and "FEWSHOTCX_DEFAULT_STRATEGY" in help_text
    assert "default deformable" in help_text and "default affine" not in help_text


def test_the_environment_variable_is_the_only_override(monkeypatch):
    monkeypatch.setenv(backends.STRATEGY_ENV, "random")
    assert fx.Segmenter(model=_model(), progress=False).backend.strategy == "random"
    assert UniverSegBackend(model=_model()).strategy == "random"
    assert fx.Segmenter(model=_model(), progress=False, strategy="position").backend.strategy == "position"
    assert not hasattr(backends, "DEFAULT_STRATEGY")
    monkeypatch.setenv(backends.STRATEGY_ENV, "nearest")
    with pytest.raises(ValueError, match="unknown support strategy 'nearest'"):
        fx.Segmenter(model=_model(), progress=False)


def test_complete_and_contour_sessions_match_by_position_under_the_default():
    """The drawn slices are the very volume being contoured: no registration, and the fit is restored."""
    from conftest import blob_volume

    image, label = blob_volume((24, 20, 12))
    seg = fx.Segmenter(model=_model(), slice_size=32, progress=False)
    strategy = seg.backend.strategy
    vol = fx.Volume(image, AFFINE)
    drawn = fx.Volume(label, AFFINE, label=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        done = seg.complete(vol, drawn, slices=[2, 6, 9])
        session = fx.ContourSession(vol, segmenter=seg)
        session.draw(2, label[..., 2])
        session.draw(9, label[..., 9])
        result = session.result()
    assert seg.backend.strategy == strategy  # complete() is pure
    assert done.shape == vol.shape and result.shape == vol.shape
    np.testing.assert_array_equal(done.array[..., 6], label[..., 6])  # drawn slices kept exactly
