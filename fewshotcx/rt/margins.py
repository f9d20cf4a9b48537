"""Radiotherapy structures: exact millimetre margins and structure algebra (``fx.rt``).

Margins (GTV → CTV → PTV)
-------------------------
A margin is a structuring element ``E`` in world millimetres; the expanded mask is the Minkowski sum
of the mask's voxel centres with ``E``, sampled at the voxel centres of the *same* grid::

    x ∈ expand(M)  ⇔  ∃ p ∈ M :  Σ_i ((x_i − p_i) / m_i(sign(x_i − p_i)))² ≤ 1

where ``i`` runs over the three world axes (R–L, A–P, S–I) and ``m_i(+)``, ``m_i(−)`` are the margins
towards the positive (Right, Anterior, Superior) and negative (Left, Posterior, Inferior) side.

* Scalar margin: ``E`` is a ball; computed with an exact Euclidean distance transform in mm
  (``scipy.ndimage.distance_transform_edt`` with ``sampling``), so the result is exact on the grid.
* Per-axis margins ``(x, y, z)``: ``E`` is an axis-aligned ellipsoid; the same distance transform on
  axes rescaled by ``spacing / margin`` (exact).
* Per-direction margins (``{"anterior": 5, "posterior": 3, ...}``): ``E`` is made of eight ellipsoid
  octants (each octant uses the semi-axes of the directions it points to), a convex shape that is the
  standard asymmetric margin of treatment planning systems. Its cost is separable per axis, so it is
  computed exactly by three 1-D min-plus passes over the voxel offsets it can reach (no voxel-step
  approximation, no iteration of small dilations).

Margins smaller than half a voxel along an axis cannot move the surface along that axis on a fixed
grid. Directions are defined in world (RAS) terms through the affine, whatever the array layout; on
oblique grids each world direction is applied along the nearest voxel axis (a warning gives the
angle). The grid is kept: nothing is padded, so a structure touching the border is clipped there, and
the border does not erode structures in :func:`shrink_margin` (what lies outside is unknown).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

from ..io.volume import Volume, VolumeError, binary_mask

MarginSpec = Union[float, Sequence[float], Mapping[str, float]]

#: World direction → (RAS axis, side): side 0 is towards +axis (R, A, S), side 1 towards −axis.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "right": (0, 0), "left": (0, 1),
    "anterior": (1, 0), "posterior": (1, 1),
    "superior": (2, 0), "inferior": (2, 1),
}

_TOLERANCE = 1e-6  # relative slack on the ellipsoid boundary, so r = margin exactly is inside


# ---------------------------------------------------------------------------- margins
def expand_margin(mask: Volume, margin_mm: MarginSpec) -> Volume:
    """Grow a mask by an exact margin in mm (the Minkowski sum with a ball, ellipsoid or octant shape).

    Args:
        mask: binary mask (non-zero = inside), any orientation; array ``(X, Y, Z)``.
        margin_mm: a scalar (isotropic), ``(x, y, z)`` per world axis (L–R, A–P, S–I), or a dict of
            per-direction margins with keys ``right, left, anterior, posterior, superior, inferior``
            (missing keys = 0). All in mm, non-negative.
    Returns:
        ``uint8`` label volume on the mask's grid (same affine and source, so it saves like the mask).
    Raises:
        ValueError: malformed or negative margins. VolumeError: the volume is not a binary mask.
    """
    inside = binary_mask(mask)
    margins = _array_margins(mask.affine, _world_margins(margin_mm))
    return mask.with_array(_dilate(inside, mask.spacing, margins).astype(np.uint8), label=True)


def shrink_margin(mask: Volume, margin_mm: MarginSpec) -> Volume:
    """Erode a mask by an exact margin in mm: the surface facing each direction moves inwards by it.

    A voxel stays iff every grid point of ``E`` placed on it (see :func:`expand_margin`) is inside the
    mask, so ``expand_margin(shrink_margin(m, s), s) ⊆ m``. Voxels outside the grid count as inside.
    """
    inside = binary_mask(mask)
    margins = _array_margins(mask.affine, _world_margins(margin_mm))
    out = np.zeros(inside.shape, dtype=np.uint8)
    if inside.any():
        # Only background within reach of the mask can erode it: work in the mask's box plus that reach.
        reach = _reach(margins, mask.spacing)
        voxels = np.argwhere(inside)
        box = _box(voxels.min(axis=0) - reach[:, 1], voxels.max(axis=0) + reach[:, 0] + 1, inside.shape)
        # Erosion by E is the complement of the complement's dilation by the reflected element −E.
        eaten = _dilate(~inside[box], mask.spacing, margins[:, ::-1])
        out[box] = inside[box] & ~eaten
    return mask.with_array(out, label=True)


def union(*volumes: Volume) -> Volume:
    """Voxels inside any of the masks (all on one grid); ``uint8`` on the first mask's grid."""
    return _combine(volumes, np.logical_or, "union")


def intersect(*volumes: Volume) -> Volume:
    """Voxels inside every mask (all on one grid); ``uint8`` on the first mask's grid."""
    return _combine(volumes, np.logical_and, "intersect")


def subtract(a: Volume, b: Volume) -> Volume:
    """Voxels of ``a`` that are not in ``b``, e.g. ``subtract(expand_margin(ctv, 7), bladder)``."""
    _check_same_grid((a, b), "subtract")
    return a.with_array((binary_mask(a) & ~binary_mask(b)).astype(np.uint8), label=True)


def _combine(volumes: Sequence[Volume], op: np.ufunc, what: str) -> Volume:
    if not volumes:
        raise ValueError(f"{what} needs at least one mask")
    _check_same_grid(volumes, what)
    return volumes[0].with_array(op.reduce([binary_mask(v) for v in volumes]).astype(np.uint8), label=True)


def _check_same_grid(volumes: Sequence[Volume], what: str) -> None:
    first = volumes[0]
    atol = 1e-3 * max(1.0, *first.spacing)
    for n, other in enumerate(volumes[1:], start=2):
        if other.shape != first.shape or not np.allclose(other.affine, first.affine, atol=atol):
            raise VolumeError(f"{what}: mask {n} is not on the grid of mask 1 (shape {other.shape} vs "
                              f"{first.shape} or different affine); resample it first")


def _world_margins(margin_mm: MarginSpec) -> np.ndarray:
    """``(3, 2)`` margins in mm: rows R–L, A–P, S–I; columns towards +axis (R, A, S) and −axis."""
    if isinstance(margin_mm, Mapping):
        unknown = sorted(set(margin_mm) - set(DIRECTIONS))
        if unknown:
            raise ValueError(f"unknown margin direction(s) {unknown}; use {sorted(DIRECTIONS)}")
        out = np.zeros((3, 2))
        for name, value in margin_mm.items():
            out[DIRECTIONS[name]] = _check_mm(value, name)
        return out
    if np.ndim(margin_mm) == 0:
        return np.full((3, 2), _check_mm(margin_mm, "margin"))
    values = list(margin_mm)  # type: ignore[arg-type]
    if len(values) != 3:
        raise ValueError(f"a per-axis margin needs 3 values (x, y, z in mm), got {len(values)}")
    return np.repeat([[_check_mm(v, a)] for v, a in zip(values, "xyz")], 2, axis=1)


def _check_mm(value: object, name: str) -> float:
    try:
        mm = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"margin {name!r} must be a number of mm, got {value!r}") from None
    if not np.isfinite(mm) or mm < 0:
        raise ValueError(f"margin {name!r} must be finite and >= 0 mm, got {value!r} "
                         "(use shrink_margin to erode)")
    return mm


def _array_margins(affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    """World margins ``(3, 2)`` → margins per array axis ``(3, 2)``: towards increasing / decreasing index."""
    axes = ornt.io_orientation(affine)  # row i: (world axis, +1 if index i increases towards +world)
    out = np.empty((3, 2))
    for i, (w, flip) in enumerate(axes):
        out[i] = world[int(w)] if flip > 0 else world[int(w)][::-1]
    _warn_geometry(affine, anisotropic=not np.allclose(world, world[0, 0]))
    return out


def _warn_geometry(affine: np.ndarray, anisotropic: bool) -> None:
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    shear = np.abs(directions.T @ directions - np.eye(3)).max()
    if shear > 1e-3:
        warnings.warn(f"voxel axes are not orthogonal (shear cos {shear:.3f}): margins are computed "
                      "along the voxel axes and are approximate", stacklevel=4)
    tilt = np.degrees(np.arccos(np.clip(np.abs(directions).max(axis=0).min(), -1.0, 1.0)))
    if anisotropic and tilt > 0.1:
        warnings.warn(f"grid is oblique by up to {tilt:.1f} degrees: per-axis/per-direction margins are "
                      "applied along the nearest voxel axes", stacklevel=4)


def _dilate(inside: np.ndarray, spacing: Sequence[float], margins: np.ndarray) -> np.ndarray:
    """Dilate boolean ``(X, Y, Z)`` ``inside`` by the element of ``margins`` ``(3, 2)`` mm per array axis."""
    spacing = np.asarray(spacing, dtype=np.float64)
    reach = _reach(margins, spacing)
    if not inside.any() or not reach.any():
        return inside.copy()
    voxels = np.argwhere(inside)
    box = _box(voxels.min(axis=0) - reach[:, 1], voxels.max(axis=0) + reach[:, 0] + 1, inside.shape)
    sub = inside[box]
    if np.allclose(margins[:, 0], margins[:, 1]):
        grown = _dilate_ellipsoid(sub, spacing, margins[:, 0])
    else:
        grown = _dilate_octants(sub, spacing, margins, reach)
    out = np.zeros_like(inside)
    out[box] = grown
    return out


def _reach(margins: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``(3, 2)`` whole voxel steps the margins ``(3, 2)`` mm span along each array axis and side."""
    return np.floor(margins / np.asarray(spacing, dtype=np.float64)[:, None] * (1 + _TOLERANCE)).astype(int)


def _box(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices for the index box ``[lo, hi)`` clipped to ``shape``."""
    return tuple(slice(max(0, int(a)), min(n, int(b))) for a, b, n in zip(lo, hi, shape))


def _dilate_ellipsoid(inside: np.ndarray, spacing: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
    """Exact dilation by an axis-aligned ellipsoid: EDT in units of each axis' semi-axis."""
    # A step along an axis with a zero margin must cost more than the unit radius: sampling 2.
    sampling = np.where(semi_axes > 0, spacing / np.where(semi_axes > 0, semi_axes, 1.0), 2.0)
    distance = ndimage.distance_transform_edt(~inside, sampling=sampling)
    return distance <= 1.0 + _TOLERANCE


def _dilate_octants(inside: np.ndarray, spacing: np.ndarray, margins: np.ndarray,
                    reach: np.ndarray) -> np.ndarray:
    """Exact dilation by the eight-octant ellipsoid: separable min-plus passes of the normalised cost.

    ``cost(x) = min_p Σ_i c_i(x_i − p_i)`` with ``c_i(t) = (t · spacing_i / m_i(sign t))²`` separates
    into one 1-D minimisation per axis over the offsets ``t`` the margin can reach.
    """
    cost = np.where(inside, 0.0, np.inf)
    for axis in range(3):
        passed = cost.copy()
        for side in (0, 1):  # side 0: the voxel lies t steps towards increasing index from p
            for t in range(1, reach[axis, side] + 1):
                ahead, behind = _offset_views(axis, t)
                dst, src = (ahead, behind) if side == 0 else (behind, ahead)
                step = (t * spacing[axis] / margins[axis, side]) ** 2
                np.minimum(passed[dst], cost[src] + step, out=passed[dst])
        cost = passed
    return cost <= (1.0 + _TOLERANCE) ** 2


def _offset_views(axis: int, t: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index tuples pairing each voxel (first) with the voxel ``t`` steps behind it along ``axis``."""
    ahead, behind = [slice(None)] * 3, [slice(None)] * 3
    ahead[axis], behind[axis] = slice(t, None), slice(None, -t)
    return tuple(ahead), tuple(behind)


