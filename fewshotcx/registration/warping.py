"""Resampling anything on a moving scan's grid onto the fixed (query) grid through a registration."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..io.volume import Volume
from .convert import load_sitk, to_sitk
from .result import Registration


def warp(volume: Volume, registration: Registration, fixed: Volume, label: bool = False,
         default: Optional[float] = None) -> Volume:
    """``volume`` (on the moving scan's grid) resampled onto ``fixed``'s exact grid and affine.

    Args:
        label: label maps use nearest-neighbour interpolation (never mixes values, exact at identity;
            label-Gaussian was measured to erode thin structures at identity: Dice 0.97); images linear.
        default: value outside the moving field of view (0 for labels; the image minimum otherwise).
    Returns:
        a Volume with ``fixed``'s shape, affine and source.
    """
    sitk = load_sitk()
    if label:
        image, interpolator = to_sitk(volume, dtype=np.uint16 if volume.array.max() < 65536 else np.uint32), sitk.sitkNearestNeighbor
        fill = 0.0 if default is None else default
    else:
        image, interpolator = to_sitk(volume), sitk.sitkLinear
        fill = float(volume.array.min()) if default is None else default
    reference = to_sitk(fixed.with_array(np.zeros(fixed.shape, dtype=np.uint8), label=True), dtype=np.uint8)
    out = sitk.Resample(image, reference, registration.transform, interpolator, fill, image.GetPixelID())
    array = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    return fixed.with_array(np.ascontiguousarray(array), label=label)


def coverage(volume: Volume, registration: Registration, fixed: Volume) -> np.ndarray:
    """``(X, Y, Z)`` bool on ``fixed``'s grid: the voxels whose mapped point lies inside ``volume``."""
    ones = volume.with_array(np.ones(volume.shape, dtype=np.uint8), label=True)
    return warp(ones, registration, fixed, label=True).array.astype(bool)
