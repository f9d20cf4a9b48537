"""The dock widget's prompt layers: clicks (two Points layers, ``+`` inside the structure, ``-``
outside) and boxes (a Shapes layer of rectangles, each a 2D box on the slice it is drawn on), over the
canonical ``(Z, Y, X)`` image, and their items as the session's prompts, in the image's *own* voxels
(:meth:`~fewshotcx.io.grid.AxialSlices.voxels_to_own`), as ``ContourSession.add_point``/``add_box``
take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.grid import AxialSlices

Voxel = tuple[int, int, int]


@dataclass
class PromptLayers:
    """The three napari layers of one session."""

    positive: Any
    negative: Any
    boxes: Any

    @classmethod
    def add_to(cls, viewer: Any, name: str, like: Any) -> "PromptLayers":
        """Add the layers, on the grid (``scale``, ``translate``) of layer ``like``, to ``viewer``."""
        grid = dict(ndim=3, scale=like.scale, translate=like.translate)
        return cls(viewer.add_points(name=f"{name} clicks +", face_color="lime", border_color="white", **grid),
                   viewer.add_points(name=f"{name} clicks -", face_color="red", border_color="white", **grid),
                   viewer.add_shapes(name=f"{name} boxes", edge_color="yellow", face_color="transparent",
                                     edge_width=0.5, **grid))

    @property
    def layers(self) -> tuple[Any, Any, Any]:
        """The positive Points, negative Points and boxes Shapes layers."""
        return self.positive, self.negative, self.boxes


def click_voxel(point: np.ndarray, slices: AxialSlices) -> Voxel:
    """A Points layer's ``(z, y, x)`` → the own voxel ``(i, j, k)`` it falls in.

    Raises:
        ValueError: the point lies outside the image.
    """
    canonical = np.round(np.asarray(point, dtype=float)[::-1]).astype(np.int64)
    if np.any(canonical < 0) or np.any(canonical >= slices.canonical_shape):
        raise ValueError("the click lies outside the image")
    return _own(canonical, slices)


def rectangle_box(vertices: np.ndarray, slices: AxialSlices) -> tuple[Voxel, Voxel]:
    """A rectangle's ``(4, 3)`` ``(z, y, x)`` vertices (drawn on one slice) → inclusive own corners
    ``(lo, hi)`` of the 2D box it covers, cut to the image.

    Raises:
        ValueError: the rectangle does not lie on one axial slice, or misses the image.
    """
    vertices = np.asarray(vertices, dtype=float)
    z = np.unique(np.round(vertices[:, 0]))
    if len(z) != 1:
        raise ValueError("draw boxes on one axial slice (a rectangle across slices is not a box prompt)")
    canonical = slices.canonical_shape
    (x0, y0), (x1, y1) = (np.round(vertices[:, [2, 1]].min(axis=0)), np.round(vertices[:, [2, 1]].max(axis=0)))
    if x1 < 0 or y1 < 0 or x0 >= canonical[0] or y0 >= canonical[1] or not 0 <= z[0] < canonical[2]:
        raise ValueError("the box lies outside the image")
    corners = [_own(np.clip([x, y, z[0]], 0, np.asarray(canonical) - 1).astype(np.int64), slices)
               for x, y in ((x0, y0), (x1, y1))]
    lo = tuple(min(a, b) for a, b in zip(*corners))
    hi = tuple(max(a, b) for a, b in zip(*corners))
    return lo, hi  # type: ignore[return-value]


def _own(canonical: np.ndarray, slices: AxialSlices) -> Voxel:
    """One canonical voxel (in range) → its own ``(i, j, k)`` as ints."""
    return tuple(int(v) for v in slices.voxels_to_own(canonical[None])[0])  # type: ignore[return-value]
