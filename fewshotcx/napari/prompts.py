"""The dock widget's prompt layers: clicks (two Points layers, ``+`` inside the structure, ``-``
outside), boxes (a Shapes layer of rectangles, each a box on the slice it is drawn on, or over the
slices ``depth`` above and below it) and scribbles (two Labels layers painted with the brush, ``+`` and
``-``), over the canonical ``(Z, Y, X)`` image, and their contents as the session's prompts, in the
image's *own* voxels (:class:`~fewshotcx.io.grid.AxialSlices`), as ``ContourSession.add_point``/
``add_box``/``add_scribble`` take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.grid import AxialSlices

Voxel = tuple[int, int, int]


@dataclass
class PromptLayers:
    """The five napari layers of one session."""

    positive: Any
    negative: Any
    boxes: Any
    scribble_positive: Any
    scribble_negative: Any

    @classmethod
    def add_to(cls, viewer: Any, name: str, like: Any) -> "PromptLayers":
        """Add the layers, on the grid (``scale``, ``translate``) of layer ``like``, a 3D ``(Z, Y, X)``
        Image layer, to ``viewer``."""
        grid = dict(scale=like.scale, translate=like.translate)
        shape = np.shape(like.data)

        def scribbles(sign: str) -> Any:
            layer = viewer.add_labels(np.zeros(shape, dtype=np.uint8), name=f"{name} scribbles {sign}",
                                      opacity=0.8, **grid)
            layer.brush_size = 3
            return layer

        return cls(viewer.add_points(name=f"{name} clicks +", face_color="lime", border_color="white", ndim=3,
                                     **grid),
                   viewer.add_points(name=f"{name} clicks -", face_color="red", border_color="white", ndim=3,
                                     **grid),
                   viewer.add_shapes(name=f"{name} boxes", edge_color="yellow", face_color="transparent",
                                     edge_width=0.5, ndim=3, **grid),
                   scribbles("+"), scribbles("-"))

    @property
    def layers(self) -> tuple[Any, Any, Any]:
        """The layers of items (each item one prompt): the positive Points, negative Points and boxes
        Shapes layers."""
        return self.positive, self.negative, self.boxes

    @property
    def scribbles(self) -> tuple[Any, Any]:
        """The positive and negative scribble Labels layers."""
        return self.scribble_positive, self.scribble_negative


def click_voxel(point: np.ndarray, slices: AxialSlices) -> Voxel:
    """A Points layer's ``(z, y, x)`` → the own voxel ``(i, j, k)`` it falls in.

    Raises:
        ValueError: the point lies outside the image.
    """
    canonical = np.round(np.asarray(point, dtype=float)[::-1]).astype(np.int64)
    if np.any(canonical < 0) or np.any(canonical >= slices.canonical_shape):
        raise ValueError("the click lies outside the image")
    return _own(canonical, slices)


def rectangle_box(vertices: np.ndarray, slices: AxialSlices, depth: int = 0) -> tuple[Voxel, Voxel]:
    """A rectangle's ``(4, 3)`` ``(z, y, x)`` vertices (drawn on canonical slice ``z``) → inclusive own
    corners ``(lo, hi)`` of the box it covers, cut to the image: 2D on slice ``z`` (``depth`` 0), else
    3D over canonical slices ``z - depth`` to ``z + depth``.

    Raises:
        ValueError: the rectangle does not lie on one axial slice, or misses the image; a negative depth.
    """
    if depth < 0:
        raise ValueError(f"the box depth is a number of slices >= 0, got {depth}")
    vertices = np.asarray(vertices, dtype=float)
    z = np.unique(np.round(vertices[:, 0]))
    if len(z) != 1:
        raise ValueError("draw boxes on one axial slice (a rectangle across slices is not a box prompt)")
    canonical = slices.canonical_shape
    (x0, y0), (x1, y1) = (np.round(vertices[:, [2, 1]].min(axis=0)), np.round(vertices[:, [2, 1]].max(axis=0)))
    if x1 < 0 or y1 < 0 or x0 >= canonical[0] or y0 >= canonical[1] or not 0 <= z[0] < canonical[2]:
        raise ValueError("the box lies outside the image")
    corners = [_own(np.clip([x, y, z[0] + dz], 0, np.asarray(canonical) - 1).astype(np.int64), slices)
               for x, y, dz in ((x0, y0, -depth), (x1, y1, depth))]
    lo = tuple(min(a, b) for a, b in zip(*corners))
    hi = tuple(max(a, b) for a, b in zip(*corners))
    return lo, hi  # type: ignore[return-value]


def scribble_mask(data: np.ndarray, slices: AxialSlices) -> np.ndarray:
    """A scribble Labels layer's canonical ``(Z, Y, X)`` data → the bool mask of its painted (nonzero)
    voxels in the image's own ``(X, Y, Z)`` order, as ``add_scribble`` takes it.

    Raises:
        ValueError: ``data`` is not of the image's canonical shape, or nothing is painted.
    """
    canonical = np.transpose(np.asarray(data), (2, 1, 0)) != 0  # (X, Y, Z), canonical
    if canonical.shape != tuple(slices.canonical_shape):
        raise ValueError(f"a scribble layer of shape {np.shape(data)} does not cover the image")
    if not canonical.any():
        raise ValueError("nothing painted on the scribble layer")
    return slices.volume_to_own(canonical)


def _own(canonical: np.ndarray, slices: AxialSlices) -> Voxel:
    """One canonical voxel (in range) → its own ``(i, j, k)`` as ints."""
    return tuple(int(v) for v in slices.voxels_to_own(canonical[None])[0])  # type: ignore[return-value]
