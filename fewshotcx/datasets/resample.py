"""Resampling helpers for labelled volumes: coarser grids for fast tests, labels onto another grid."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from scipy import ndimage

from ..io.volume import Volume


def resample_to_spacing(volume: Volume, spacing: Union[float, Sequence[float]]) -> Volume:
    """``volume`` on a coarser (or finer) grid with the given voxel size in mm.

    The new grid keeps the first voxel centre and the axes' directions: new voxel ``n`` lies at old
    (continuous) index ``n * step`` with ``step = spacing / old spacing`` per axis, so its affine is
    ``affine @ diag(step, 1)`` and world coordinates are unchanged. Label maps are sampled by nearest
    neighbour (exact old voxels when ``step`` is a whole number); images are Gaussian-smoothed
    (sigma ``(step - 1) / 2`` voxels) against aliasing, then linearly interpolated.

    Args:
        volume: any ``(X, Y, Z)`` volume (canonical or not).
        spacing: target voxel size in mm, a scalar or one per array axis.
    Returns:
        a Volume with no ``source`` (it no longer maps back to a file).
    """
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    if not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    step = target / np.asarray(volume.spacing)
    shape = tuple(int((n - 1) // s) + 1 for n, s in zip(volume.shape, step))
    if volume.label:
        array = ndimage.affine_transform(volume.array, step, output_shape=shape, order=0, mode="nearest")
    else:
        sigma = np.maximum(0.0, (step - 1.0) / 2.0)
        smooth = ndimage.gaussian_filter(volume.array, sigma) if np.any(sigma > 0) else volume.array
        array = ndimage.affine_transform(smooth, step, output_shape=shape, order=1, mode="nearest")
    return Volume(array, volume.affine @ np.diag([*step, 1.0]), volume.label)


def labels_onto_grid(labels: Volume, grid: Volume) -> Volume:
    """Label map ``labels`` sampled by nearest neighbour at the voxel centres of ``grid``.

    Exact (a pure voxel shift/flip) when the two grids share spacing and their origins differ by
    whole voxels; voxels of ``grid`` outside ``labels``' field of view get 0.
    """
    to_source = np.linalg.solve(labels.affine, grid.affine)  # grid index -> labels index
    array = ndimage.affine_transform(labels.array, to_source[:3, :3], offset=to_source[:3, 3],
                                     output_shape=grid.shape, order=0, mode="constant", cval=0)
    return Volume(array, grid.affine.copy(), label=True)
