"""The default support strategy: ``auto`` (registration, else retrieval) where SimpleITK is installed."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch

import fewshotcx as fx
import fewshotcx.backends as backends
from fewshotcx.models import UniverSeg

pytestmark = pytest.mark.default_strategy
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _model() -> UniverSeg:
    torch.manual_seed(0)
    return UniverSeg((4,) * 4, (4,) * 3, in_channels=3).eval()


def test_the_default_is_auto_with_simpleitk_and_retrieval_without(monkeypatch):
    has_sitk = importlib.util.find_spec("SimpleITK") is not None
    assert fx.Segmenter(model=_model(), progress=False).backend.strategy == ("auto" if has_sitk else "retrieval")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "SimpleITK" else real(name, *a))
    assert fx.Segmenter(model=_model(), progress=False).backend.strategy == "retrieval"
    assert fx.Segmenter(model=_model(), progress=False, strategy="position").backend.strategy == "position"
    assert backends.DEFAULT_STRATEGY is None  # nothing pinned for this module's tests
    monkeypatch.setenv(backends.STRATEGY_ENV, "random")
    assert fx.Segmenter(model=_model(), progress=False).backend.strategy == "random"
    monkeypatch.setenv(backends.STRATEGY_ENV, "nearest")
    with pytest.raises(ValueError, match="unknown support strategy"):
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
