from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshotcx.pipeline.intensity import clean_nonfinite, ct_window, looks_like_ct, minmax_per_slice, normalize


def _ct(seed=0):
    rng = np.random.default_rng(seed)
    vol = np.full((20, 20, 10), -1000.0)
    vol[4:16, 4:16] = rng.normal(40, 30, (12, 12, 10))
    return vol.astype(np.float32)


def test_ct_detection_and_window():
    ct = _ct()
    assert looks_like_ct(ct)
    assert not looks_like_ct(np.random.default_rng(0).random((10, 10, 10)) * 800)
    out = normalize(ct)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() <= 1.0
    assert np.isclose(ct_window(np.array([40.0]))[0], 0.5)  # window centre → 0.5
    assert np.allclose(normalize(ct, window=(0, 100)), ct_window(ct, 0, 100))
    with pytest.raises(ValueError):
        ct_window(ct, 0, 0)


def test_mr_percentiles_clip():
    mr = np.random.default_rng(1).gamma(2.0, 100.0, (30, 30, 10)).astype(np.float32)
    out = normalize(mr, modality="mr")
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.004 <= np.mean(out == 1.0) <= 0.01  # top 0.5% clipped


def test_nonfinite_voxels_are_replaced():
    a = np.array([[[1.0, np.nan, np.inf, -np.inf, 3.0]]], dtype=np.float32)
    clean = clean_nonfinite(a)
    assert np.array_equal(clean, [[[1.0, 1.0, 3.0, 1.0, 3.0]]])
    assert np.all(np.isfinite(normalize(a, modality="mr")))
    with pytest.raises(ValueError, match="finite"):
        clean_nonfinite(np.full((2, 2, 2), np.nan))


def test_minmax_per_slice_is_joint_over_channels():
    slabs = torch.stack([torch.linspace(2, 4, 48).view(3, 4, 4), torch.ones(3, 4, 4)])
    out = minmax_per_slice(slabs)
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.equal(out[1], torch.zeros(3, 4, 4))


def test_bad_modality():
    with pytest.raises(ValueError, match="modality"):
        normalize(np.zeros((2, 2, 2)), modality="pet")
