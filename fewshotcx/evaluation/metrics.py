"""Segmentation metrics in millimetres: overlap, surface distances, volumes.

Every metric takes ``(prediction, reference)``, in that order (as MONAI's ``(y_pred, y)``): masks of
the same shape, 2D ``(X, Y)`` or 3D ``(X, Y, Z)``, as numpy arrays (bool, integer, or whole-valued
float) or :class:`~fewshotcx.io.grid.Volume` objects. (``pred=``/``gt=`` still work for one release,
with a DeprecationWarning.)

* **Binarisation.** A voxel is foreground when it is nonzero, or, with ``label=k``, when it equals ``k``
  (use this for multi-label maps; :func:`evaluate_labels` loops over labels). Fractional values are
  refused: threshold probabilities first.
* **Spacing.** ``spacing`` is the voxel size in mm per array axis. When omitted it is taken from the
  ``Volume`` inputs, otherwise 1.0 per axis (distances are then in voxels). An explicit ``spacing``
  wins over a volume's. Two ``Volume`` inputs must lie on the same grid (:class:`VolumeError` if not).
* **Surfaces.** The surface of a mask is its boundary voxels: foreground voxels with a background
  face-neighbour (6-connectivity in 3D, 4 in 2D; outside the array counts as background), i.e.
  ``mask XOR binary_erosion(mask)``. The distance from a voxel to the other mask's surface is the
  Euclidean distance, in mm, between voxel centres (``scipy.ndimage.distance_transform_edt`` with
  ``sampling=spacing``). This is MONAI's definition (``get_mask_edges`` + ``get_surface_distance``).
* **HD95** follows MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger of the two
  directed 95th percentiles, ``max(P95(d(pred→gt)), P95(d(gt→pred)))`` (linear interpolation between
  order statistics), not the percentile of the pooled distances.
* **Empty masks** never produce NaN or infinity for the distance metrics (MONAI returns NaN/inf, which
  a ``nanmean`` silently drops). See :data:`EMPTY_CONVENTIONS` and ``docs/metrics.md``; the penalty
  for exactly one empty mask is the diagonal of the whole grid in mm, a finite worst case no real
  error can exceed, so means stay meaningful. :func:`evaluate` reports ``pred_empty``/``gt_empty``
  so such cases can be filtered.

All work happens inside the joint bounding box of both masks (plus one voxel), so large grids with
small structures are cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ..compat import renamed_keywords
from ..io.volume import Volume, VolumeError

MaskLike = Union[np.ndarray, Volume]
Spacing = Optional[Sequence[float]]

EMPTY_CONVENTIONS = {
    # metric: (both empty, exactly one empty)
    "dice": (1.0, 0.0),
    "iou": (1.0, 0.0),
    "surface_dice": (1.0, 0.0),
    "hd95": (0.0, "grid diagonal (mm)"),
    "hd": (0.0, "grid diagonal (mm)"),
    "assd": (0.0, "grid diagonal (mm)"),
}
"""Values returned when one or both masks are empty (also tabulated in ``docs/metrics.md``)."""


class VolumeDifference(NamedTuple):
    """Signed volume error ``pred - gt``.

    ``ml``: in millilitres. ``relative``: divided by the gt volume (0.0 when both are empty,
    ``+inf`` when only gt is empty, -1.0 when only pred is empty).
    """

    ml: float
    relative: float


@dataclass(frozen=True)
class _Pair:
    """Binary pred/gt cropped to their joint bounding box (+1 voxel), with the full grid's geometry."""

    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, ...]
    grid_shape: tuple[int, ...]
    n_pred: int
    n_gt: int
    sheared: str = ""  #: why distances would be wrong (a sheared grid), else ""

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres (3D grids)."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def diagonal_mm(self) -> float:
        """Length of the whole grid's diagonal in mm: the penalty distance for one empty mask."""
        return float(np.linalg.norm(np.asarray(self.grid_shape) * np.asarray(self.spacing)))


@dataclass(frozen=True)
class _SurfaceDistances:
    """Distances (mm) from each boundary voxel of one mask to the other mask's surface."""

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray

    @property
    def pooled(self) -> np.ndarray:
        return np.concatenate([self.pred_to_gt, self.gt_to_pred])


# ---------------------------------------------------------------------- input handling
def _unwrap(x: MaskLike) -> np.ndarray:
    return x.array if isinstance(x, Volume) else np.asarray(x)


def _binarise(array: np.ndarray, label: Optional[int], name: str) -> np.ndarray:
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.integer)
            or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} has unsupported dtype {array.dtype}; pass a bool or integer mask")
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise ValueError(f"{name} has non-integer or NaN values; threshold probabilities before computing metrics")
    return array != 0 if label is None else array == label


def _resolve_spacing(pred: MaskLike, gt: MaskLike, spacing: Spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        vol = pred if isinstance(pred, Volume) else gt if isinstance(gt, Volume) else None
        spacing = vol.spacing if vol is not None else (1.0,) * ndim
    spacing = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=np.float64)))
    if len(spacing) != ndim:
        raise ValueError(f"spacing has {len(spacing)} values but the masks are {ndim}D")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return spacing


def _masks(pred: MaskLike, gt: MaskLike, label: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Full-size boolean masks after input checks (shape, dimensionality, same grid for volumes)."""
    if isinstance(pred, Volume) and isinstance(gt, Volume) and not pred.same_grid(gt):
        raise VolumeError(f"pred and gt are on different grids (shapes {pred.shape} and {gt.shape}, "
                          "or affines differ); resample one onto the other first")
    p, g = _unwrap(pred), _unwrap(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} does not match gt shape {g.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"expected 2D or 3D masks, got {p.ndim}D arrays of shape {p.shape}")
    return _binarise(p, label, "pred"), _binarise(g, label, "gt")


def _pair(pred: MaskLike, gt: MaskLike, spacing: Spacing, label: Optional[int]) -> _Pair:
    p, g = _masks(pred, gt, label)
    box = _bounding_box(p | g, margin=1)
    p, g, shape = p[box], g[box], tuple(p.shape)
    sheared = _shear(pred, gt) if spacing is None else ""
    spacing = _resolve_spacing(pred, gt, spacing, len(shape))
    return _Pair(p, g, spacing, shape, int(np.count_nonzero(p)), int(np.count_nonzero(g)), sheared)


def _shear(pred: MaskLike, gt: MaskLike) -> str:
    """A reason when a Volume input's voxel axes are not orthogonal (gantry tilt: a sheared affine)."""
    vol = pred if isinstance(pred, Volume) else gt if isinstance(gt, Volume) else None
    if vol is None:
        return ""
    axes = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    cosines = np.abs(axes.T @ axes - np.eye(3)).max()
    if cosines <= 1e-3:
        return ""
    return (f"the grid is sheared (voxel axes {np.degrees(np.arcsin(min(1.0, cosines))):.1f} degrees off orthogonal, "
            "e.g. a gantry-tilted series): surface distances assume orthogonal axes; resample it onto an "
            "orthogonal grid first (or pass spacing= to accept the approximation)")


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``'s foreground, grown by ``margin`` (empty box if none)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return tuple(slice(0, 0) for _ in range(mask.ndim))
        box.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + margin + 1))
    return tuple(box)


# ---------------------------------------------------------------------- core computations
def _boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face-connected background neighbour (array border = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(pair: _Pair) -> _SurfaceDistances:
    """Both directed surface-distance sets; requires both masks non-empty and an orthogonal grid."""
    if pair.sheared:
        raise VolumeError(pair.sheared)
    surf_pred, surf_gt = _boundary(pair.pred), _boundary(pair.gt)
    to_gt = ndimage.distance_transform_edt(~surf_gt, sampling=pair.spacing)
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=pair.spacing)
    return _SurfaceDistances(pred_to_gt=to_gt[surf_pred], gt_to_pred=to_pred[surf_gt])


def _dice(pair: _Pair) -> float:
    total = pair.n_pred + pair.n_gt
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pair.pred & pair.gt)) / total


def _iou(pair: _Pair) -> float:
    union = int(np.count_nonzero(pair.pred | pair.gt))
    return 1.0 if union == 0 else int(np.count_nonzero(pair.pred & pair.gt)) / union


def _empty_distance(pair: _Pair) -> Optional[float]:
    """The distance convention when a mask is empty (0.0 or the grid diagonal); None if neither is."""
    if pair.n_pred and pair.n_gt:
        return None
    return 0.0 if pair.n_pred == pair.n_gt else pair.diagonal_mm


def _empty_overlap(pair: _Pair) -> Optional[float]:
    """The overlap-score convention when a mask is empty (1.0 or 0.0); None if neither is."""
    if pair.n_pred and pair.n_gt:
        return None
    return 1.0 if pair.n_pred == pair.n_gt else 0.0


def _distance_metric(pair: _Pair, reduce: Callable[[_SurfaceDistances], float]) -> float:
    """``reduce`` applied to the surface distances, or the empty-mask convention."""
    empty = _empty_distance(pair)
    return empty if empty is not None else float(reduce(_surface_distances(pair)))


def _check_percentile(percentile: float) -> float:
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    return float(percentile)


def _hausdorff(d: _SurfaceDistances, percentile: float) -> float:
    return float(max(np.percentile(d.pred_to_gt, percentile), np.percentile(d.gt_to_pred, percentile)))


def _assd(d: _SurfaceDistances) -> float:
    return float(d.pooled.mean())


def _check_tolerance(tolerance: float) -> float:
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite distance >= 0 mm, got {tolerance}")
    return float(tolerance)


def _surface_dice(d: _SurfaceDistances, tolerance: float) -> float:
    return float(np.mean(d.pooled <= tolerance))


def _volume_difference(pair: _Pair) -> VolumeDifference:
    if len(pair.grid_shape) != 3:
        raise ValueError("volume difference needs 3D masks")
    diff = (pair.n_pred - pair.n_gt) * pair.voxel_ml
    if pair.n_gt == 0:
        relative = 0.0 if pair.n_pred == 0 else float("inf")
    else:
        relative = (pair.n_pred - pair.n_gt) / pair.n_gt
    return VolumeDifference(diff, float(relative))


# ---------------------------------------------------------------------- public metrics
@renamed_keywords(pred="prediction", gt="reference")
def dice(prediction: MaskLike, reference: MaskLike, label: Optional[int] = None) -> float:
    """Dice coefficient ``2|P∩G| / (|P|+|G|)`` in [0, 1]; 1.0 when both masks are empty."""
    return _dice(_pair(prediction, reference, None, label))


@renamed_keywords(pred="prediction", gt="reference")
def iou(prediction: MaskLike, reference: MaskLike, label: Optional[int] = None) -> float:
    """Intersection over union (Jaccard) ``|P∩G| / |P∪G|`` in [0, 1]; 1.0 when both are empty."""
    return _iou(_pair(prediction, reference, None, label))


@renamed_keywords(pred="prediction", gt="reference")
def hausdorff_distance(
    prediction: MaskLike, reference: MaskLike, spacing: Spacing = None, percentile: float = 100.0,
    label: Optional[int] = None,
) -> float:
    """Symmetric (percentile) Hausdorff distance in mm: ``max(Pq(d(pred→gt)), Pq(d(gt→pred)))``.

    ``percentile=100`` is the classic Hausdorff distance. Empty masks: 0.0 if both are empty, the
    grid diagonal in mm if exactly one is.
    """
    q = _check_percentile(percentile)
    return _distance_metric(_pair(prediction, reference, spacing, label), lambda d: _hausdorff(d, q))


@renamed_keywords(pred="prediction", gt="reference")
def hd95(prediction: MaskLike, reference: MaskLike, spacing: Spacing = None, label: Optional[int] = None) -> float:
    """95th-percentile Hausdorff distance in mm, MONAI's convention: the larger directed P95.

    Empty masks: 0.0 if both are empty; the grid diagonal in mm if exactly one is (a finite worst case).
    """
    return hausdorff_distance(prediction, reference, spacing, 95.0, label)


@renamed_keywords(pred="prediction", gt="reference")
def assd(prediction: MaskLike, reference: MaskLike, spacing: Spacing = None, label: Optional[int] = None) -> float:
    """Average symmetric surface distance in mm: the mean of both directed distance sets pooled
    (MONAI's ``compute_average_surface_distance(symmetric=True)``).

    Empty masks: 0.0 if both are empty; the grid diagonal in mm if exactly one is.
    """
    return _distance_metric(_pair(prediction, reference, spacing, label), _assd)


@renamed_keywords(pred="prediction", gt="reference")
def surface_dice(
    prediction: MaskLike, reference: MaskLike, spacing: Spacing = None, tolerance: float = 2.0,
    label: Optional[int] = None,
) -> float:
    """Normalised surface Dice at ``tolerance`` mm, in [0, 1].

    The fraction of boundary voxels of both masks that lie within ``tolerance`` of the other
    surface: ``(#{d(pred→gt) <= τ} + #{d(gt→pred) <= τ}) / (#pred boundary + #gt boundary)``
    (voxel counts, as MONAI's ``compute_surface_dice``; not area-weighted surfels). Empty masks:
    1.0 if both are empty, 0.0 if exactly one is.
    """
    tolerance = _check_tolerance(tolerance)
    pair = _pair(prediction, reference, spacing, label)
    empty = _empty_overlap(pair)
    return empty if empty is not None else _surface_dice(_surface_distances(pair), tolerance)


@renamed_keywords(pred="prediction", gt="reference")
def volume_difference(
    prediction: MaskLike, reference: MaskLike, spacing: Spacing = None, label: Optional[int] = None
) -> VolumeDifference:
    """Signed volume error ``prediction - reference`` of 3D masks: ``(ml, relative)``, see :class:`VolumeDifference`."""
    return _volume_difference(_pair(prediction, reference, spacing, label))


@renamed_keywords(pred="prediction", gt="reference")
def per_slice_dice(prediction: MaskLike, reference: MaskLike, axis: int = 2, label: Optional[int] = None) -> np.ndarray:
    """Dice of each slice along ``axis`` of 3D masks: ``(N,)`` float64, 1.0 where both slices are empty."""
    p, g = _masks(prediction, reference, label)
    if p.ndim != 3:
        raise ValueError("per_slice_dice needs 3D masks")
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    other = tuple(a for a in range(3) if a != axis % 3)
    inter = np.count_nonzero(p & g, axis=other)
    total = np.count_nonzero(p, axis=other) + np.count_nonzero(g, axis=other)
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


@renamed_keywords(pred="prediction", gt="reference")
def evaluate(
    prediction: MaskLike, reference: MaskLike, spacing: Spacing = None, tolerance: float = 2.0,
    label: Optional[int] = None,
) -> dict[str, Union[float, bool]]:
    """All metrics at once (surface distances are computed once).

    Returns:
        ``dice``, ``iou``, ``hd95``, ``hd`` (maximum), ``assd`` (mm), ``surface_dice`` (at
        ``tolerance`` mm), ``pred_empty``, ``gt_empty`` (bools: filter on these, because the
        distance values of empty cases are conventions, see :data:`EMPTY_CONVENTIONS`), and for 3D
        masks ``volume_pred_ml``, ``volume_gt_ml``, ``volume_diff_ml`` (prediction - reference) and
        ``volume_diff_rel``.
    """
    tolerance = _check_tolerance(tolerance)
    pair = _pair(prediction, reference, spacing, label)
    n_pred, n_gt = pair.n_pred, pair.n_gt
    result: dict[str, Union[float, bool]] = {"dice": _dice(pair), "iou": _iou(pair)}
    empty = _empty_distance(pair)
    if empty is None:
        d = _surface_distances(pair)
        result.update(hd95=_hausdorff(d, 95.0), hd=_hausdorff(d, 100.0), assd=_assd(d),
                      surface_dice=_surface_dice(d, tolerance))
    else:
        result.update(hd95=empty, hd=empty, assd=empty, surface_dice=_empty_overlap(pair))
    result.update(pred_empty=n_pred == 0, gt_empty=n_gt == 0)
    if len(pair.grid_shape) == 3:
        vd = _volume_difference(pair)
        result.update(volume_pred_ml=n_pred * pair.voxel_ml, volume_gt_ml=n_gt * pair.voxel_ml,
                      volume_diff_ml=vd.ml, volume_diff_rel=vd.relative)
    return result


@renamed_keywords(pred="prediction", gt="reference")
def evaluate_labels(
    prediction: MaskLike, reference: MaskLike, labels: Optional[Sequence[int]] = None, spacing: Spacing = None,
    tolerance: float = 2.0,
) -> dict[int, dict[str, Union[float, bool]]]:
    """:func:`evaluate` for each label of multi-label maps: ``{label: metrics}``.

    ``labels=None`` uses every nonzero value present in either map (pass them explicitly on very
    large grids to skip that scan).
    """
    if labels is None:
        values = np.union1d(np.unique(_unwrap(prediction)), np.unique(_unwrap(reference)))
        labels = [int(v) for v in values if v != 0]
    return {int(k): evaluate(prediction, reference, spacing, tolerance, label=int(k)) for k in labels}
