"""Radiotherapy contour metrics: surface Dice from surface areas, added path length, per-structure tables.

Surface Dice from areas
-----------------------
:func:`surface_dice_area` follows Nikolov et al. 2021 (*Clinically applicable segmentation of head and
neck anatomy for radiotherapy*, the ``surface-distance`` package; MONAI's
``compute_surface_dice(use_subvoxels=True)`` is the same definition). The surface is made of surface
elements ("surfels") on the grid of voxel corners: each 2×2×2 neighbourhood of voxels whose
occupancy is neither all in nor all out carries the area of the marching-cubes surface through it
(a 256-entry table computed for the grid's spacing). A surfel's distance to the other surface is the
Euclidean distance (mm) to the nearest surfel of the other mask. Then::

    SD_τ = (Σ area_P[d_P→R ≤ τ] + Σ area_R[d_R→P ≤ τ]) / (Σ area_P + Σ area_R)

so anisotropic voxels and oblique surfaces weigh by their true area, not by voxel counts.

Added path length
-----------------
:func:`added_path_length` follows Vaassen et al. 2020 (*Evaluation of measures for assessing
time-saving of automatic organ-at-risk segmentation in radiotherapy*, phiRO 13:1-6): on every axial
slice, the reference's contour pixels (reference pixels with a 4-neighbour outside it) that are farther
than ``tolerance`` mm (in-plane) from the prediction's contour pixels are the path a clinician must
add; APL is their number times the mean in-plane pixel size, summed over slices. A slice the
prediction misses adds the whole reference contour; APL 0 means nothing to redraw.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Optional

import numpy as np
from scipy import ndimage

from ..compat import renamed_keywords, warn_renamed
from ..evaluation import metrics
from ..io.grid import Volume, VolumeError
from .names import key, tg263_name

#: Row status in :func:`evaluate_structures` tables.
STATUSES = ("ok", "missing_in_prediction", "missing_in_reference", "empty_prediction", "empty_reference",
            "both_empty")


@lru_cache(maxsize=16)
def _area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """``(256,)`` surface area (mm²) inside one 2×2×2 neighbourhood for each occupancy code."""
    from skimage.measure import marching_cubes, mesh_surface_area

    table = np.zeros(256)
    bits = np.array([[[1 << (4 * i + 2 * j + k) for k in range(2)] for j in range(2)] for i in range(2)])
    for code in range(1, 255):
        # a configuration and its complement bound the same surface; build it from the side with fewer
        # voxels inside so that ambiguous faces separate the corners (the classic table's choice)
        inside = code if bin(code).count("1") <= 4 else 255 - code
        cube = ((inside & bits) > 0).astype(np.float64)
        vertices, faces, _, _ = marching_cubes(cube, level=0.5, spacing=spacing, method="lorensen")
        table[code] = mesh_surface_area(vertices, faces)
    return table


def _surfels(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(codes grid (X+1, Y+1, Z+1) int, area per corner in mm²)`` of a boolean 3D mask."""
    padded = np.pad(mask, 1).astype(np.int32)
    shape = tuple(n + 1 for n in mask.shape)
    code = np.zeros(shape, dtype=np.int32)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                code |= padded[i:i + shape[0], j:j + shape[1], k:k + shape[2]] << (4 * i + 2 * j + k)
    return code, _area_table(spacing)[code]


@renamed_keywords(pred="prediction", ref="reference")
def surface_dice_area(prediction: Volume, reference: Volume, tolerance: float = 2.0) -> float:
    """Surface Dice at ``tolerance`` mm from surfel areas (see the module docstring), in [0, 1].

    Both empty: 1.0; exactly one empty: 0.0. Inputs: masks on the same grid ``(X, Y, Z)``.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 mm, got {tolerance}")
    p, r, spacing = _pair(prediction, reference)
    if not p.any() or not r.any():
        return float(p.any() == r.any())
    box = _box(p | r)
    p, r = p[box], r[box]
    _, area_p = _surfels(p, spacing)
    _, area_r = _surfels(r, spacing)
    border_p, border_r = area_p > 0, area_r > 0
    to_r = ndimage.distance_transform_edt(~border_r, sampling=spacing)[border_p]
    to_p = ndimage.distance_transform_edt(~border_p, sampling=spacing)[border_r]
    within = area_p[border_p][to_r <= tolerance].sum() + area_r[border_r][to_p <= tolerance].sum()
    return float(min(1.0, within / (area_p.sum() + area_r.sum())))  # rounding of the two sums


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask grown by one voxel (clipped to the array)."""
    found = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in found)


def _pair(pred: Volume, ref: Volume) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    if not pred.same_grid(ref):
        raise VolumeError(f"prediction and reference are on different grids (shapes {pred.shape} and {ref.shape})")
    return pred.array != 0, ref.array != 0, tuple(float(s) for s in ref.spacing)


def _contour_2d(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask with a 4-neighbour outside it (the image border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)


@renamed_keywords(pred="prediction", ref="reference")
def added_path_length(prediction: Volume, reference: Volume, tolerance: float = 0.0) -> float:
    """Added path length in mm (Vaassen et al. 2020, module docstring) over the axial slices.

    ``prediction`` and ``reference`` are masks on the same grid in closest-canonical RAS (axis 2 is axial).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 mm, got {tolerance}")
    p, r, spacing = _pair(prediction, reference)
    in_plane = spacing[:2]
    pixel = float(np.mean(in_plane))
    added = 0
    for z in np.flatnonzero(r.any(axis=(0, 1))):
        ref_contour = _contour_2d(r[:, :, z])
        pred_contour = _contour_2d(p[:, :, z])
        if not pred_contour.any():
            added += int(ref_contour.sum())
            continue
        distance = ndimage.distance_transform_edt(~pred_contour, sampling=in_plane)
        added += int(np.count_nonzero(distance[ref_contour] > tolerance + 1e-9))
    return added * pixel


def volume_cc(mask: Volume) -> float:
    """Volume of a mask in cm³ (voxel count × voxel volume)."""
    return float(np.count_nonzero(mask.array) * np.prod(mask.spacing) / 1000.0)


def _identity(name: str) -> str:
    return tg263_name(name) or key(name)


def evaluate_structures(*old_order: Mapping[str, Volume], prediction: Optional[Mapping[str, Volume]] = None,
                        reference: Optional[Mapping[str, Volume]] = None, tolerance: float = 2.0,
                        apl_tolerance: float = 0.0) -> list[dict]:
    """One row per structure: overlap, distances, surface Dice, APL and volumes.

    Call it as ``evaluate_structures(prediction=..., reference=...)`` (``{name: mask Volume}`` each).
    The old positional form ``evaluate_structures(reference, prediction)`` still works for one release,
    with a DeprecationWarning (every other metric takes ``(prediction, reference)``, so the two maps
    are now named rather than ordered).

    Structures pair up by name (case, spaces, underscores and TG-263 synonyms ignored). A structure on
    one side only gets status ``missing_in_prediction``/``missing_in_reference`` and no metric values;
    an empty mask on one side ``empty_prediction``/``empty_reference`` with Dice 0 and no distances
    (never a number that averages in as if it were a contour).

    Returns:
        rows with ``structure`` (the reference name, else the prediction's), ``prediction_name``,
        ``status``, ``dice``, ``hd95`` (mm), ``assd`` (mm), ``surface_dice_<τ>mm``, ``apl`` (mm),
        ``volume_reference_cc``, ``volume_prediction_cc``; missing values are None.
    Raises:
        TypeError: the maps are missing, or given both ways.
    """
    if old_order:
        if len(old_order) != 2 or prediction is not None or reference is not None:
            raise TypeError("evaluate_structures() takes prediction= and reference= (keywords only)")
        warn_renamed("evaluate_structures(reference, prediction)", "evaluate_structures(prediction=..., reference=...)")
        reference, prediction = old_order
    if prediction is None or reference is None:
        raise TypeError("evaluate_structures() needs both prediction= and reference=")
    column = f"surface_dice_{tolerance:g}mm"
    predicted = {_identity(name): name for name in prediction}
    rows, used = [], set()
    for name, ref in reference.items():
        match = predicted.get(_identity(name))
        used.add(match)
        rows.append(_row(name, match, ref, None if match is None else prediction[match], column, tolerance,
                         apl_tolerance))
    for name, pred in prediction.items():
        if name not in used:
            rows.append(_row(name, name, None, pred, column, tolerance, apl_tolerance))
    return rows


def _row(name: str, pred_name: Optional[str], ref: Optional[Volume], pred: Optional[Volume], column: str,
         tolerance: float, apl_tolerance: float) -> dict:
    row = {"structure": name, "prediction_name": pred_name, "status": "ok", "dice": None, "hd95": None,
           "assd": None, column: None, "apl": None,
           "volume_reference_cc": None if ref is None else round(volume_cc(ref), 3),
           "volume_prediction_cc": None if pred is None else round(volume_cc(pred), 3)}
    if ref is None or pred is None:
        row["status"] = "missing_in_reference" if ref is None else "missing_in_prediction"
        return row
    ref_any, pred_any = bool(ref.array.any()), bool(pred.array.any())
    if not (ref_any and pred_any):
        row["status"] = "both_empty" if not (ref_any or pred_any) else (
            "empty_prediction" if ref_any else "empty_reference")
        row["dice"] = None if row["status"] == "both_empty" else 0.0
        return row
    row.update(dice=metrics.dice(pred, ref), hd95=metrics.hd95(pred, ref), assd=metrics.assd(pred, ref),
               apl=added_path_length(pred, ref, apl_tolerance))
    row[column] = surface_dice_area(pred, ref, tolerance)
    return row
