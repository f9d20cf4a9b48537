"""The universeg+sam composite: UniverSeg's coarse map prompts SAM at full resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, blob_volume
from fewshotcx import Segmenter, Volume
from fewshotcx.backends.refined import RefinedBackend
from fewshotcx.models import UniverSeg
from fewshotcx.models.sam import tiny_sam


def _tiny_universeg():
    torch.manual_seed(0)
    return UniverSeg((8, 8, 8, 8), (8, 8, 8))


def test_composite_runs_through_the_segmenter_on_the_query_grid():
    image, label = blob_volume(seed=1)
    support = (Volume(image, ORIENTATIONS["RAS"]), Volume(label, ORIENTATIONS["RAS"], label=True))
    seg = Segmenter(backend="universeg+sam", model=_tiny_universeg(), slice_size=32, support_size=3,
                    sam_model=tiny_sam(seed=0, img_size=64), progress=False)
    assert isinstance(seg.backend, RefinedBackend) and seg.backend.slice_size == 64
    seg.fit([support[0]], [support[1]])
    query = Volume(blob_volume(seed=2)[0], ORIENTATIONS["LPS"])
    prob = seg.predict_proba(query)
    assert prob.shape == query.shape and np.allclose(prob.affine, query.affine)
    assert np.array_equal(seg.predict(query).array, (prob.array > seg.threshold).astype(np.uint8))


def test_slices_the_coarse_model_leaves_empty_stay_empty():
    seg = Segmenter(backend="universeg+sam", model=_tiny_universeg(), slice_size=32,
                    sam_model=tiny_sam(seed=0, img_size=64), progress=False)
    backend: RefinedBackend = seg.backend

    class Nothing:
        context, slice_size = 0, 32

        def predict_slices(self, fitted, slabs, geometry, generator):
            return torch.zeros(slabs.shape[0], 1, 32, 32)

    backend.coarse = Nothing()
    from fewshotcx.backends.base import Fitted
    from fewshotcx.pipeline.slicing import make_geometry

    slabs = torch.rand(3, 3, 64, 64)
    out = backend.predict_slices(Fitted(None, {}, Fitted(None)), slabs,
                                 make_geometry((64, 64, 3), (1, 1, 1), "axial", 64, 1), torch.Generator())
    assert out.shape == (3, 1, 64, 64) and out.abs().sum() == 0


def test_medsam_preprocessing_is_refused():
    with pytest.raises(ValueError, match="MedSAM"):
        Segmenter(backend="universeg+sam", model=_tiny_universeg(), slice_size=32,
                  sam_model=tiny_sam(seed=0, img_size=64), sam_preprocess="medsam")


def test_the_coarse_model_draws_by_position_and_refuses_query_aware_strategies():
    """universeg+sam draws support per slab (no query context): ``position``, not the default ``auto``."""
    seg = Segmenter(backend="universeg+sam", model=_tiny_universeg(), slice_size=32,
                    sam_model=tiny_sam(seed=0, img_size=64), progress=False)
    assert seg.backend.coarse.strategy == "position"
    with pytest.raises(ValueError, match="universeg\\+sam draws support per slab: strategy must be 'position' or "
                                         "'random', got 'auto'"):
        Segmenter(backend="universeg+sam", model=_tiny_universeg(), slice_size=32,
                  sam_model=tiny_sam(seed=0, img_size=64), strategy="auto")
