from __future__ import annotations

import numpy as np
import pytest

from fewshotcx.pipeline.postprocess import largest_component, postprocess, restrict_extent


def test_largest_component_keeps_the_biggest_blob_per_label():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:6, 1:6, 1:6] = 1      # 125 voxels
    labels[8:10, 8:10, 8:10] = 1   # 8 voxels, disconnected
    labels[1:3, 8:11, 8:11] = 2    # another structure survives on its own
    out = postprocess(labels, ["largest_component"])
    assert (out == 1).sum() == 125 and (out == 2).sum() == 18
    assert largest_component(np.zeros((3, 3, 3), bool)).sum() == 0


def test_fill_holes_fills_enclosed_cavity_only():
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:8, 1:8, 1:8] = 1
    labels[4, 4, 4] = 0            # enclosed
    labels[0:2, 4, 4] = 0          # open to the border: not a hole
    out = postprocess(labels, ["fill_holes"])
    assert out[4, 4, 4] == 1 and out[1, 4, 4] == 0


def test_restrict_extent_uses_relative_axial_positions():
    mask = np.ones((2, 2, 11), bool)
    kept = restrict_extent(mask, (0.3, 0.5), margin=0.0)
    assert np.nonzero(kept[0, 0])[0].tolist() == [3, 4, 5]


def test_unknown_operation_and_missing_extent():
    with pytest.raises(ValueError, match="unknown post-processing"):
        postprocess(np.zeros((2, 2, 2), np.uint8), ["smooth"])
    with pytest.raises(ValueError, match="extent"):
        postprocess(np.zeros((2, 2, 2), np.uint8), ["support_extent"])
