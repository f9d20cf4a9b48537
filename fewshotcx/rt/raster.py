"""Closed planar contours → voxels, as a planning system fills them (used by ``read_rtstruct``).

Rule, per ROI:

1. **Slices.** Each contour (vertices in voxel units ``(i, j, k)``) belongs to the nearest slice
   ``k``; a contour exactly half-way between two slices goes to the upper one (so a structure shifted
   by half a slice keeps one plane per slice). A contour farther than :data:`OFF_PLANE_TOLERANCE`
   (a fraction of the slice spacing) from its slice is *off-plane*: the caller warns.
2. **Planes.** Contours whose ``k`` agree within the tolerance lie on one plane. Only contours of the
   same plane can cut holes into each other; planes that land on the same slice are unioned.
3. **Nesting.** On a plane, contour ``c`` is inside ``d`` when ``d`` has the larger area and every
   vertex of ``c`` is inside ``d`` or on its boundary. The smallest such ``d`` is ``c``'s parent;
   depth 0 (no parent) is an outer boundary, odd depth a hole, even depth an island in a hole.
   Overlapping contours that are not nested, and duplicates, are unioned, never cancelled.
4. **Voxels.** A voxel is filled when its centre is inside an even-depth contour and not inside one
   of that contour's holes (point in polygon, ``matplotlib.path``; a centre exactly on an edge may
   fall either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Largest distance from a slice plane, in slice spacings, at which a contour still counts as on it.
OFF_PLANE_TOLERANCE = 0.01
_HALF_WAY = 1e-3  # slice spacings: contours this close to half-way round up, consistently
_ON_EDGE = 1e-6  # voxels: a vertex this close to a contour lies on it


@dataclass(frozen=True)
class Raster:
    """The filled voxels of one ROI.

    Attributes:
        inside: ``(X, Y, Z)`` bool.
        outside: contours whose slice is outside the series (not filled).
        off_plane: contours farther than the tolerance from their slice.
        max_offset: the largest distance of a contour from its slice, in slice spacings.
    """

    inside: np.ndarray
    outside: int
    off_plane: int
    max_offset: float


def rasterise(contours: list[np.ndarray], shape: tuple[int, int, int]) -> Raster:
    """Fill closed planar ``contours`` (each ``(N, 3)`` vertices in voxel units) on a ``shape`` grid."""
    inside = np.zeros(shape, dtype=bool)
    depth = np.array([c[:, 2].mean() for c in contours], dtype=np.float64)
    planes = _planes(depth)
    plane_depth = np.bincount(planes, weights=depth) / np.maximum(np.bincount(planes), 1)
    slices = np.floor(plane_depth[planes] + 0.5 + _HALF_WAY).astype(np.int64)  # one slice per plane
    offsets = np.abs(depth - slices)
    on_grid = (slices >= 0) & (slices < shape[2])
    for plane in np.unique(planes[on_grid]):
        members = np.flatnonzero(planes == plane)
        inside[:, :, slices[members[0]]] |= fill_plane([contours[m][:, :2] for m in members], shape[:2])
    return Raster(inside=inside, outside=int(np.count_nonzero(~on_grid)),
                  off_plane=int(np.count_nonzero(offsets > OFF_PLANE_TOLERANCE)),
                  max_offset=float(offsets.max(initial=0.0)))


def _planes(depth: np.ndarray) -> np.ndarray:
    """``(C,)`` plane index per contour: sorted depths split where they differ by more than the tolerance."""
    order = np.argsort(depth, kind="stable")
    ordered = depth[order]
    planes = np.empty(len(depth), dtype=np.int64)
    planes[order] = np.cumsum(np.diff(ordered, prepend=ordered[:1]) > OFF_PLANE_TOLERANCE)
    return planes


def fill_plane(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """``(X, Y)`` bool: the contours ``(N, 2)`` of one plane filled by containment depth (module rule)."""
    areas = np.array([_area(p) for p in polygons])
    parents = _parents(polygons, areas)
    depths = [0] * len(polygons)
    for c in np.argsort(-areas, kind="stable"):  # parents (larger) before their children
        depths[c] = 0 if parents[c] < 0 else depths[parents[c]] + 1
    out = np.zeros(shape, dtype=bool)
    for c in (c for c in range(len(polygons)) if depths[c] % 2 == 0):
        region = polygon_mask(polygons[c], shape)
        for hole in (h for h in range(len(polygons)) if parents[h] == c):
            region &= ~polygon_mask(polygons[hole], shape)
        out |= region
    return out


def _parents(polygons: list[np.ndarray], areas: np.ndarray) -> list[int]:
    """The index of each contour's smallest enclosing contour of larger area, ``-1`` for none."""
    order = np.argsort(-areas, kind="stable")
    parents = [-1] * len(polygons)
    for position, c in enumerate(order):
        for d in order[:position][::-1]:  # the smallest larger contour first
            if areas[c] < areas[d] * (1.0 - 1e-9) and _within(polygons[c], polygons[d]):
                parents[c] = int(d)
                break
    return parents


def _within(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Whether every vertex of ``inner`` ``(N, 2)`` lies inside ``outer`` ``(M, 2)`` or on its boundary."""
    from matplotlib.path import Path as PolygonPath

    if np.any(inner.min(axis=0) < outer.min(axis=0) - _ON_EDGE) or \
            np.any(inner.max(axis=0) > outer.max(axis=0) + _ON_EDGE):
        return False
    out = inner[~PolygonPath(outer).contains_points(inner)]
    return bool(np.all(_edge_distance(out, outer) <= _ON_EDGE))


def _edge_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """``(P,)`` distance of each point ``(P, 2)`` to the closed polygon's edges ``(M, 2)``."""
    start, edge = polygon, np.roll(polygon, -1, axis=0) - polygon
    rel = points[:, None, :] - start[None, :, :]
    length = np.maximum((edge ** 2).sum(axis=1), 1e-300)
    t = np.clip((rel * edge[None]).sum(axis=2) / length, 0.0, 1.0)
    return np.linalg.norm(rel - t[..., None] * edge[None], axis=2).min(axis=1, initial=np.inf)


def _area(polygon: np.ndarray) -> float:
    """Unsigned shoelace area of a closed polygon ``(N, 2)``."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_mask(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(X, Y)`` bool: voxel centres inside the closed polygon ``vertices`` ``(N, 2)`` in (i, j) units."""
    from matplotlib.path import Path as PolygonPath

    out = np.zeros(shape, dtype=bool)
    lo = np.maximum(np.ceil(vertices.min(axis=0)), 0).astype(int)
    hi = np.minimum(np.floor(vertices.max(axis=0)), np.asarray(shape) - 1).astype(int)
    if len(vertices) < 3 or np.any(hi < lo):
        return out
    i, j = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    inside = PolygonPath(vertices).contains_points(np.column_stack([i.ravel(), j.ravel()]))
    out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1] = inside.reshape(i.shape)
    return out
