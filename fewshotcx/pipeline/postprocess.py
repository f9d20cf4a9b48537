"""3D clean-up of predicted label maps.

Operations (applied in the order given, per label value):

* ``"largest_component"`` — keep the largest 26-connected component of each structure (a GTV or an
  organ is one connected object; slice-wise models leave isolated false positives).
* ``"fill_holes"`` — fill enclosed cavities in 3D.
* ``"support_extent"`` — erase slices outside the relative axial range covered by the support's
  foreground (widened by ``extent_margin`` of the axis), for structures whose cranio-caudal extent is
  similar across patients.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .slicing import relative_position

OPERATIONS = ("largest_component", "fill_holes", "support_extent")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 26-connected component of a boolean ``(X, Y, Z)`` mask (empty stays empty)."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == sizes.argmax()


def restrict_extent(mask: np.ndarray, extent: tuple[float, float], margin: float = 0.05) -> np.ndarray:
    """Zero axial slices (axis 2) whose relative position lies outside ``extent`` ± ``margin``."""
    depth = mask.shape[2]
    rel = relative_position(np.arange(depth), depth)
    keep = (rel >= extent[0] - margin) & (rel <= extent[1] + margin)
    return mask & keep[None, None, :]


def postprocess(
    labels: np.ndarray,
    operations: Sequence[str],
    support_extent: Optional[tuple[float, float]] = None,
    extent_margin: float = 0.05,
) -> np.ndarray:
    """Apply ``operations`` to each structure of a ``(X, Y, Z)`` label map; returns the same dtype."""
    unknown = set(operations) - set(OPERATIONS)
    if unknown:
        raise ValueError(f"unknown post-processing {sorted(unknown)}: expected any of {OPERATIONS}")
    if "support_extent" in operations and support_extent is None:
        raise ValueError("'support_extent' needs the support's foreground extent")
    out = np.zeros_like(labels)
    for value in np.unique(labels[labels != 0]):
        mask = labels == value
        for op in operations:
            if op == "largest_component":
                mask = largest_component(mask)
            elif op == "fill_holes":
                mask = ndimage.binary_fill_holes(mask)
            else:
                mask = restrict_extent(mask, support_extent, extent_margin)
        out[mask & (out == 0)] = value
    return out


def keep_drawn(result: np.ndarray, drawn: np.ndarray, slices: Sequence[int], classes: Sequence[int]) -> np.ndarray:
    """What completing a drawn contour keeps (:meth:`fewshotcx.Segmenter.complete`, ``ContourSession``):
    each structure only within its drawn axial extent (first to last drawn slice that shows it), and
    the drawn ``slices`` exactly as drawn. ``result`` and ``drawn`` are ``(X, Y, Z)``; ``result`` is
    changed in place and returned."""
    inside = np.zeros(result.shape[2], dtype=bool)
    for value in classes:
        z = [k for k in slices if np.any(drawn[..., k] == value)]
        inside[:] = False
        if z:
            inside[min(z):max(z) + 1] = True
        result[(result == value) & ~inside[None, None, :]] = 0
    result[..., list(slices)] = drawn[..., list(slices)]
    return result
