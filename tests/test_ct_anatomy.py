"""Hounsfield-defined training labels (fewshotcx.datasets.ct_anatomy): the lungs carry the patient's
sides (canonical RAS: larger x is the patient's right), checked on a phantom and on LUNG1-001's
clinical contours."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from fewshotcx import Volume, load_volume, metrics, rt
from fewshotcx.datasets.ct_anatomy import HU_STRUCTURES, hu_anatomy

LUNG1 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mirp" / "ct_images_seg_nsclc" / "LUNG1-001"
LEFT, RIGHT = (value for value, name in HU_STRUCTURES.items() if name in ("left lung", "right lung"))


def test_the_air_on_the_patients_right_is_the_right_lung():
    x, y, z = np.meshgrid(np.arange(64), np.arange(48), np.arange(8), indexing="ij")
    hu = np.full(x.shape, -1000.0, np.float32)
    hu[((x - 32) / 28.0) ** 2 + ((y - 24) / 20.0) ** 2 <= 1] = 40.0  # the body
    hu[((x - 44) / 8.0) ** 2 + ((y - 24) / 10.0) ** 2 <= 1] = -850.0  # air at larger x: the patient's right
    labels, names = hu_anatomy(Volume(hu, np.diag([1.0, 1.0, 3.0, 1.0])))
    assert (labels[44, 24] == RIGHT).all() and not (labels == LEFT).any()
    assert names[RIGHT] == "right lung"


@pytest.mark.skipif(not LUNG1.is_dir(), reason="needs ../shared/data (LUNG1-001, development data)")
def test_hu_lungs_match_the_clinical_lungs_side_by_side():
    ct = load_volume(LUNG1 / "image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clinical = rt.read_rtstruct(LUNG1 / "mask_rtstruct" / "1-1.dcm", LUNG1 / "image", ["Lung-Left", "Lung-Right"])
    labels, _ = hu_anatomy(ct)
    for value, name, other in ((LEFT, "Lung-Left", "Lung-Right"), (RIGHT, "Lung-Right", "Lung-Left")):
        mine = labels == value
        assert metrics.dice(mine, clinical[name].array) > 0.9, name
        assert metrics.dice(mine, clinical[other].array) < 0.05, name
