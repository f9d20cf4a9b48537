"""Seeds handed to SimpleITK stay in its range, so uncertainty draws (63-bit derived seeds) can register.

The real-data test reads two soft-tissue-sarcoma CTs from ../shared/data (Soft-tissue-Sarcoma, TCIA,
CC BY 3.0; development data, never committed) and skips without them.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import UNREGISTERED
from fewshotcx import Segmenter
from fewshotcx.io.volume import Volume, load_volume
from fewshotcx.pipeline.support import derived_generator

register = import_module("fewshotcx.registration.register")  # the module: fx.registration.register is a function
STS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mirp" / "sts_images_flat" / "nifti"


@pytest.mark.parametrize("seed", [0, 1, 41, 2**32 - 2, 2**32 - 1, 2**32, 2**63 - 1, 2**64 + 5, 10**40, -1, -2**31,
                                  -2**63, -10**40])
def test_itk_seed_is_always_in_itk_range(seed):
    folded = register.itk_seed(seed)
    assert isinstance(folded, int) and 1 <= folded <= 2**32 - 1
    assert folded == register.itk_seed(seed)  # a function of the seed alone


def test_itk_seed_keeps_small_seeds_and_hashes_the_rest():
    assert [register.itk_seed(s) for s in (0, 1, 2**32 - 2)] == [1, 2, 2**32 - 1]  # registrations unchanged
    derived = [derived_generator(0, 0x5EED, draw).initial_seed() for draw in range(8)]
    assert max(derived) > 2**32  # what uncertainty draws derive: out of ITK's range as they are
    folded = [register.itk_seed(s) for s in derived + [-s for s in derived]]
    assert len(set(folded)) == len(folded)  # distinct draws keep distinct sampling seeds
    assert register.itk_seed(-5) != register.itk_seed(5)


def test_registration_method_accepts_a_derived_seed():
    image = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    seed = derived_generator(0, 0x5EED, 3).initial_seed()
    assert register._method(0.5, image, seed=seed, threads=1) is not None


def _crop(volume: Volume, start: tuple[int, int, int], size: tuple[int, int, int]) -> Volume:
    """The sub-volume of ``size`` voxels from index ``start``, at the same world position."""
    region = tuple(slice(a, a + n) for a, n in zip(start, size))
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.asarray(start, dtype=float)
    return Volume(np.ascontiguousarray(volume.array[region]), affine, label=volume.label)


def _sts_ct(patient: str, size: tuple[int, int, int]) -> tuple[Volume, Volume]:
    """CT and GTV mask of an STS patient, cropped to ``size`` voxels around the tumour's centre."""
    image = load_volume(STS / f"{patient}_CT_image.nii.gz")
    mask = load_volume(STS / f"{patient}_CT_mask.nii.gz", label=True)
    centre = np.argwhere(mask.array).mean(axis=0).round().astype(int)
    start = tuple(int(np.clip(c - n // 2, 0, s - n)) for c, n, s in zip(centre, size, image.shape))
    return _crop(image, start, size), _crop(mask, start, size)


@pytest.mark.skipif(not (STS / "STS_002_CT_image.nii.gz").is_file(),
                    reason="STS development data not found at ../shared/data (never bundled)")
@UNREGISTERED
def test_predict_uncertainty_across_ct_patients_with_the_default_strategy():
    """The README's quick start on real CT: fit on one patient, uncertainty on another (strategy auto)."""
    size = (96, 96, 16)
    support_image, support_mask = _sts_ct("STS_001", size)
    query, _ = _sts_ct("STS_002", size)
    seg = Segmenter(device="cpu", progress=False)
    assert seg.backend.strategy == "auto"
    seg.fit(images=[support_image], labels=[support_mask])
    uncertainty = seg.predict_uncertainty(query, draws=2)
    assert uncertainty.shape == query.shape and np.isfinite(uncertainty.array).all()
    assert 0.0 <= float(uncertainty.array.min()) and float(uncertainty.array.max()) <= 1.0
