"""Small generated volumes for the examples' ``--synthetic`` mode (smoke tests only).

Each case is a noisy, CT-like volume in Hounsfield units (air outside an elliptic "body" at 20 HU)
holding one brighter ellipsoid "organ" at 80 HU, label 1, whose position and size vary with the
seed. None of this is anatomy: scores computed on these volumes check that the code runs end to
end, they say nothing about segmentation quality.

Arrays are ``(X, Y, Z)``; the affine is diagonal with ``spacing`` mm voxels, in RAS or (with
``orientation="LPS"``) with the first two axes flipped, as a DICOM-derived file would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import fewshotcx as fx

SHAPE = (40, 36, 16)
SPACING = (1.2, 1.2, 3.0)


def synthetic_case(seed: int, shape=SHAPE, spacing=SPACING, orientation: str = "RAS") -> tuple[fx.Volume, fx.Volume]:
    """One ``(image, label)`` pair of :class:`fewshotcx.Volume` on the same grid."""
    if orientation not in ("RAS", "LPS"):
        raise ValueError(f"orientation must be 'RAS' or 'LPS', got {orientation!r}")
    rng = np.random.default_rng(seed)
    sign = np.array([1.0, 1.0, 1.0]) if orientation == "RAS" else np.array([-1.0, -1.0, 1.0])
    affine = np.diag([*(sign * np.asarray(spacing, dtype=float)), 1.0])
    grid = np.stack(np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij"), axis=-1)
    body = (grid[..., 0] / 0.9) ** 2 + (grid[..., 1] / 0.8) ** 2 <= 1.0
    centre = rng.uniform(-0.15, 0.15, 3)
    radii = np.array([0.35, 0.3, 0.55]) * rng.uniform(0.85, 1.15, 3)
    organ = (((grid - centre) / radii) ** 2).sum(axis=-1) <= 1.0
    hu = np.where(body, 20.0, -1000.0) + 60.0 * organ + rng.normal(0.0, 15.0, shape)
    image = fx.Volume(hu.astype(np.float32), affine)
    return image, fx.Volume(organ.astype(np.uint8), affine, label=True)


def write_synthetic_cases(folder: Path, count: int, first_seed: int = 0,
                          orientation: str = "RAS") -> list[tuple[Path, Path]]:
    """Write ``count`` cases as ``case<i>_image.nii.gz`` / ``case<i>_label.nii.gz``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, label = synthetic_case(first_seed + i, orientation=orientation)
        pair = (folder / f"case{first_seed + i}_image.nii.gz", folder / f"case{first_seed + i}_label.nii.gz")
        fx.save_volume(image, pair[0], overwrite=True)
        fx.save_volume(label, pair[1], overwrite=True)
        paths.append(pair)
    return paths
