"""Classic baselines a few-shot model has to beat, on label maps indexed ``(X, Y, Z)``.

* :func:`interpolate_slices`: shape-based interpolation from a few labelled slices of the *same*
  volume (what a clinician gets from "contour every n-th slice and interpolate").
* :func:`label_fusion`: majority vote of other patients' label maps, matched by relative position
  (an atlas baseline with no registration).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..pipeline.slicing import nearest_slice, relative_position

_ABSENT = 1.0
"""Signed distance (mm, positive = outside) standing in for a class absent on both slices of a gap."""


def _check_label_map(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D label map (X, Y, Z), got shape {array.shape}")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be an integer or boolean label map, got dtype {array.dtype}")
    return array


def _check_axis(axis: int) -> int:
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return axis % 3


# ---------------------------------------------------------------------- shape-based interpolation
def _signed_distance(mask: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """In-plane signed distance (mm) of a non-empty 2D mask: negative inside, positive outside.

    Inside distances are measured to the nearest background pixel, the image border counting as
    background; the zero level lies halfway between the last inside and first outside pixel.
    """
    inside = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=sampling)[1:-1, 1:-1]
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    return outside - inside


def _slice_distances(
    slice_labels: np.ndarray, classes: np.ndarray, sampling: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances ``(C, X, Y)`` of each class on one slice, and which classes are present ``(C,)``."""
    sd = np.full((len(classes),) + slice_labels.shape, _ABSENT)
    present = np.zeros(len(classes), dtype=bool)
    for i, c in enumerate(classes):
        mask = slice_labels == c
        if mask.any():
            sd[i] = _signed_distance(mask, sampling)
            present[i] = True
    return sd, present


def _gap_endpoints(
    lo: tuple[np.ndarray, np.ndarray], hi: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances at both ends of a gap, after filling classes present on one end only.

    A class missing at one end gets the other end's map shifted by its depth (deepest inside
    distance), so that linear interpolation erodes it uniformly to nothing across the gap.
    """
    (sd_lo, has_lo), (sd_hi, has_hi) = lo, hi
    sd_lo, sd_hi = sd_lo.copy(), sd_hi.copy()
    for i in np.flatnonzero(has_lo & ~has_hi):
        sd_hi[i] = sd_lo[i] - sd_lo[i].min()
    for i in np.flatnonzero(has_hi & ~has_lo):
        sd_lo[i] = sd_hi[i] - sd_hi[i].min()
    return sd_lo, sd_hi


def interpolate_slices(
    label_volume: np.ndarray,
    labelled: Sequence[int],
    axis: int = 2,
    spacing: Optional[Sequence[float]] = None,
    extrapolate: bool = False,
) -> np.ndarray:
    """Fill a label map from a few labelled slices by shape-based (signed-distance) interpolation.

    For each class, the in-plane signed distance map (mm, using ``spacing``) of every labelled
    slice is computed; a slice between two consecutive labelled slices ``lo < z < hi`` gets the
    linear blend ``(1 - t) * sd_lo + t * sd_hi`` with ``t = (z - lo) / (hi - lo)``, and a voxel takes
    the class with the most negative blended distance, if any is negative (else background). A
    class present on only one end of a gap erodes uniformly to nothing towards the other end.

    Only the labelled slices of ``label_volume`` are read; everything else in it is ignored.

    Args:
        label_volume: ``(X, Y, Z)`` integer or boolean label map (0 = background).
        labelled: indices along ``axis`` of the slices whose labels are known (any order).
        axis: the slice axis (2 = axial for canonical volumes).
        spacing: voxel size in mm per array axis (3 values); only the in-plane two matter. ``None``
            means isotropic.
        extrapolate: outside the labelled range, ``False`` leaves slices empty; ``True`` copies the
            nearest labelled slice.
    Returns:
        ``(X, Y, Z)`` label map of the input's dtype; labelled slices equal the input's.
    """
    volume = _check_label_map(label_volume, "label_volume")
    axis = _check_axis(axis)
    n = volume.shape[axis]
    indices = np.unique(np.asarray(labelled, dtype=np.int64).reshape(-1))
    if indices.size == 0:
        raise ValueError("labelled must name at least one slice")
    if indices[0] < 0 or indices[-1] >= n:
        raise ValueError(f"labelled slice indices must lie in [0, {n - 1}], got {indices.tolist()}")
    if spacing is None:
        spacing = (1.0, 1.0, 1.0)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing}")
    sampling = tuple(float(s) for i, s in enumerate(spacing) if i != axis)

    source = np.moveaxis(volume, axis, -1)
    out = np.zeros_like(volume)
    target = np.moveaxis(out, axis, -1)
    known = source[..., indices]
    classes = np.unique(known[known != 0])
    target[..., indices] = known

    distances = {int(z): _slice_distances(source[..., z], classes, sampling) for z in indices}
    for lo, hi in zip(indices[:-1], indices[1:]):
        if hi - lo < 2 or classes.size == 0:
            continue
        sd_lo, sd_hi = _gap_endpoints(distances[int(lo)], distances[int(hi)])
        for z in range(lo + 1, hi):
            t = (z - lo) / (hi - lo)
            blended = (1.0 - t) * sd_lo + t * sd_hi
            winner = np.argmin(blended, axis=0)
            inside = np.take_along_axis(blended, winner[None], axis=0)[0] < 0
            target[..., z] = np.where(inside, classes[winner], 0)
    if extrapolate:
        target[..., : indices[0]] = source[..., indices[0], None]
        target[..., indices[-1] + 1:] = source[..., indices[-1], None]
    return out


# ---------------------------------------------------------------------- label fusion
def _nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """Centre-aligned nearest-neighbour source index for each of ``n_out`` samples of ``n_in``."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def label_fusion(
    query_shape: tuple[int, int, int], support_labels: Sequence[np.ndarray], axis: int = 2
) -> np.ndarray:
    """Majority vote of support label maps matched to the query by relative position.

    For each query slice along ``axis`` at relative position ``p`` (:func:`~fewshotcx.pipeline.slicing.relative_position`),
    every support contributes its slice at the same relative position (nearest), resampled in-plane
    to the query's slice shape by centre-aligned nearest neighbour (as torch's ``nearest-exact``).
    Each voxel takes the label with most votes; ties go to the smaller label (background wins a
    tie). Both steps are nearest-neighbour, so the result does not depend on ``axis``; it sets
    which slices are processed together.

    Args:
        query_shape: ``(X, Y, Z)`` of the query grid.
        support_labels: ``K >= 1`` label maps ``(X_k, Y_k, Z_k)`` (integer or boolean).
        axis: the slice axis.
    Returns:
        ``(X, Y, Z)`` label map with the supports' common dtype.
    """
    shape = tuple(int(s) for s in query_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"query_shape must be 3 positive sizes, got {query_shape}")
    supports = [_check_label_map(s, f"support_labels[{k}]") for k, s in enumerate(support_labels)]
    if not supports:
        raise ValueError("label_fusion needs at least one support label map")
    axis = _check_axis(axis)
    dtype = np.result_type(*supports)
    labels = np.unique(np.concatenate([np.unique(s) for s in supports]).astype(dtype))
    in_plane = [a for a in range(3) if a != axis]
    picks = [
        (np.moveaxis(s, axis, -1), [*(_nearest_indices(shape[a], s.shape[a]) for a in in_plane),
                                    nearest_slice(relative_position(np.arange(shape[axis]), shape[axis]), s.shape[axis])])
        for s in supports
    ]
    out = np.zeros(shape, dtype=dtype)
    target = np.moveaxis(out, axis, -1)
    for q in range(shape[axis]):
        stack = np.stack([s[..., iz[q]][np.ix_(ix, iy)] for s, (ix, iy, iz) in picks])  # (K, X', Y')
        votes = np.stack([np.count_nonzero(stack == label, axis=0) for label in labels])  # (L, X', Y')
        target[..., q] = labels[np.argmax(votes, axis=0)]
    return out
