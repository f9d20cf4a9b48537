"""The interactive-segmentation protocol of the CVPR 2025 challenge "Foundation Models for Interactive
3D Biomedical Image Segmentation" (Ma et al.; evaluation script ``CVPR25_iter_eval.py`` of
github.com/JunMa11/CVPR-MedSegFMCompetition), as small pure functions on ``(X, Y, Z)`` masks.

One structure is segmented in six steps: step 0 is a **box** (:func:`box_from_reference`), steps 1–5
are **clicks** simulated from the current prediction (:func:`next_click`). After every step the
prediction is scored (:func:`step_scores`: Dice and NSD at 2 mm) and the run is summarised by the
area under the score curve of the five click steps (:func:`click_auc`) and the final scores.

Definitions (and where they differ from the challenge script; ``benchmarks/interactive_protocol.py``
and ``docs/interactive.md`` use them as written here):

* **Box** — the reference's bounding box, inclusive voxel corners ``lo``, ``hi`` (``kind="bounding"``).
  The challenge gives the *middle slice's* 2D box (``z_mid`` = the axial index of the median
  foreground voxel) over the whole axial extent ``z_min..z_max``, widened by a random 0–5 px /256 of
  the width; ``kind="challenge"`` returns that box without the random widening.
* **Click** — the error ``prediction != reference`` is split into 26-connected regions; in the
  *largest* (most voxels; equal sizes: the one met first in C order, as ``np.argmax`` of the
  challenge's ``bincount``) the click goes to the voxel farthest from the region's outside: the
  maximum of its Euclidean distance transform, the array's outside counting as outside the region.
  The distance is in mm (``spacing``); the challenge script measures it in voxels (``spacing=None``
  reproduces that). Ties of the maximum: ``tie="challenge"`` picks one uniformly with
  ``numpy.random.RandomState(42)`` among the tied voxels in C order (the challenge's
  ``np.random.seed(42)``; deterministic), ``tie="first"`` the first in C order. The click is
  **positive** when the voxel belongs to the reference (missed: a false-negative region) and
  **negative** otherwise (spill: a false-positive region).
* **Perfect prediction** — no error voxel: :func:`next_click` returns ``None`` and no click is
  placed; the challenge then runs the model again with unchanged prompts, so a harness keeps the
  step and scores the (unchanged) prediction again.
* **Empty reference** — the protocol needs a structure: :func:`box_from_reference` raises
  ``ValueError``; :func:`next_click` still works (every error voxel is a spill: negative clicks).
* **Scores** — Dice and NSD (normalised surface Dice, :func:`fewshotcx.metrics.surface_dice`, 2 mm:
  boundary voxels as MONAI counts them; the challenge uses DeepMind's surfel-area-weighted version,
  which gives slightly different values). The challenge sets NSD to 0 when Dice ≤ 0.2
  (``nsd_dice_gate``); :func:`step_scores` does the same in ``nsd`` and keeps the ungated value in
  ``nsd_ungated``.
* **AUC** — :func:`click_auc`: the trapezoid rule with unit spacing over the scores after clicks
  1..5 (the box step is left out, as in the challenge, whose box is optional): ``sum((v[i] +
  v[i+1]) / 2 for i in 0..3)``, at most 4.0 for five scores in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ..io.volume import Volume
from .metrics import dice, surface_dice

MaskLike = Union[np.ndarray, Volume]

#: Clicks after the box (steps 1..5).
CLICKS = 5
#: NSD tolerance (mm).
NSD_TOLERANCE_MM = 2.0
#: Dice at or below which the challenge sets NSD to 0.
NSD_DICE_GATE = 0.2
#: The seed of the challenge's tie-break among equally distant voxels.
TIE_SEED = 42


@dataclass(frozen=True)
class Click:
    """A simulated click: ``ijk`` (a voxel of the array), ``positive`` (add: the voxel was missed) or
    negative (remove: spill), its distance to the error region's outside (``distance``, mm or voxels)
    and the size of the error region it was placed in (``region_voxels``)."""

    ijk: tuple[int, int, int]
    positive: bool
    distance: float
    region_voxels: int


def _mask(x: MaskLike, name: str) -> np.ndarray:
    array = x.array if isinstance(x, Volume) else np.asarray(x)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D mask (X, Y, Z), got shape {array.shape}")
    return array != 0


def box_from_reference(reference: MaskLike, kind: str = "bounding") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The box prompt of a reference mask: inclusive voxel corners ``(lo, hi)``.

    Args:
        reference: ``(X, Y, Z)`` mask (nonzero = structure), axis 2 axial.
        kind: ``"bounding"`` (the 3D bounding box) or ``"challenge"`` (the middle axial slice's 2D box,
            over the structure's axial extent; module docstring).
    Raises:
        ValueError: the reference is empty, or ``kind`` is unknown.
    """
    ref = _mask(reference, "reference")
    if not ref.any():
        raise ValueError("the reference is empty: there is no box to draw")
    if kind not in ("bounding", "challenge"):
        raise ValueError(f"kind must be 'bounding' or 'challenge', got {kind!r}")
    axes = [np.flatnonzero(ref.any(axis=tuple(a for a in range(3) if a != i))) for i in range(3)]
    lo, hi = [int(a[0]) for a in axes], [int(a[-1]) for a in axes]
    if kind == "challenge":
        z = np.sort(np.nonzero(ref)[2])
        middle = ref[:, :, int(z[len(z) // 2])]
        for i in range(2):
            present = np.flatnonzero(middle.any(axis=1 - i))
            lo[i], hi[i] = int(present[0]), int(present[-1])
    return tuple(lo), tuple(hi)


def box_mask(shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """A boolean array of ``shape`` that is True inside the inclusive box ``lo..hi`` (the box filled)."""
    out = np.zeros(tuple(shape), dtype=bool)
    out[tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))] = True
    return out


def largest_error_region(prediction: MaskLike, reference: MaskLike) -> np.ndarray:
    """The largest 26-connected region of ``prediction != reference`` (bool, the inputs' shape; all
    False when the prediction is perfect). Equal sizes: the region met first in C order."""
    pred, ref = _mask(prediction, "prediction"), _mask(reference, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    error = pred != ref
    if not error.any():
        return error
    regions, count = ndimage.label(error, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    return regions == int(np.argmax(sizes))


def _distance_inside(region: np.ndarray, spacing: Optional[Sequence[float]]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The EDT of ``region`` within its bounding box padded by one outside voxel (exact: every voxel
    outside the box is outside the region; the array's outside counts as outside). Returns the
    distances on the box and the box's slices."""
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    crop = np.pad(region[box], 1)
    distance = ndimage.distance_transform_edt(crop, sampling=None if spacing is None else tuple(float(s) for s in spacing))
    return distance[1:-1, 1:-1, 1:-1], box


def next_click(prediction: MaskLike, reference: MaskLike, spacing: Optional[Sequence[float]] = "auto",
               tie: str = "challenge") -> Optional[Click]:
    """The protocol's next click for ``prediction`` against ``reference`` (module docstring).

    Args:
        prediction, reference: ``(X, Y, Z)`` masks (nonzero = structure) or Volumes, same shape.
        spacing: voxel size (mm) per array axis for the distance transform; ``"auto"`` = the
            Volume's spacing (a plain array: voxel units); ``None`` = voxel units (the challenge script).
        tie: ``"challenge"`` (seeded uniform choice among the tied maxima) or ``"first"`` (C order).
    Returns:
        The :class:`Click`, or ``None`` when the prediction equals the reference (no click).
    """
    if tie not in ("challenge", "first"):
        raise ValueError(f"tie must be 'challenge' or 'first', got {tie!r}")
    if isinstance(spacing, str):
        if spacing != "auto":
            raise ValueError(f"spacing must be 'auto', None or 3 numbers, got {spacing!r}")
        volume = prediction if isinstance(prediction, Volume) else reference if isinstance(reference, Volume) else None
        spacing = None if volume is None else volume.spacing
    if spacing is not None and (len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing)):
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing}")
    region = largest_error_region(prediction, reference)
    if not region.any():
        return None
    distance, box = _distance_inside(region, spacing)
    tied = np.argwhere(distance == distance.max())  # C order, like the challenge's argwhere
    pick = tied[np.random.RandomState(TIE_SEED).choice(len(tied))] if tie == "challenge" else tied[0]
    ijk = tuple(int(p + b.start) for p, b in zip(pick, box))
    return Click(ijk, bool(_mask(reference, "reference")[ijk]), float(distance.max()), int(region.sum()))


def step_scores(prediction: MaskLike, reference: MaskLike, spacing: Optional[Sequence[float]] = None,
                tolerance: float = NSD_TOLERANCE_MM, nsd_dice_gate: Optional[float] = NSD_DICE_GATE) -> dict[str, float]:
    """``dice``, ``nsd`` (surface Dice at ``tolerance`` mm, 0 when Dice ≤ ``nsd_dice_gate`` as in the
    challenge; ``None`` = no gate) and ``nsd_ungated`` of one step's prediction. Empty masks follow
    :data:`fewshotcx.evaluation.metrics.EMPTY_CONVENTIONS` (both empty: 1.0; one empty: 0.0)."""
    pred, ref = _mask(prediction, "prediction"), _mask(reference, "reference")
    if spacing is None:
        volume = prediction if isinstance(prediction, Volume) else reference if isinstance(reference, Volume) else None
        spacing = None if volume is None else volume.spacing
    d = float(dice(pred, ref))
    nsd = float(surface_dice(pred, ref, spacing=spacing, tolerance=tolerance))
    gated = 0.0 if nsd_dice_gate is not None and d <= nsd_dice_gate else nsd
    return {"dice": d, "nsd": gated, "nsd_ungated": nsd}


def click_auc(values: Sequence[float], clicks: int = CLICKS) -> float:
    """Area under the score curve of the ``clicks`` click steps: the trapezoid rule, unit spacing,
    over the last ``clicks`` values (``values`` may start with the box step, which is left out).
    For the challenge's five clicks the maximum is 4.0 (``scipy.integrate.cumulative_trapezoid(v[-5:],
    np.arange(5))[-1]`` in its script).

    Raises:
        ValueError: fewer than ``clicks`` values, ``clicks < 2``, or a value that is not finite.
    """
    if clicks < 2:
        raise ValueError(f"an area needs at least 2 click steps, got clicks={clicks}")
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < clicks:
        raise ValueError(f"need the scores of {clicks} click steps, got {v.size} values")
    v = v[-clicks:]
    if not np.all(np.isfinite(v)):
        raise ValueError(f"scores must be finite, got {v.tolist()}")
    return float(((v[:-1] + v[1:]) / 2.0).sum())


def evenly_spaced_slices(reference: MaskLike, n: int, axis: int = 2) -> list[int]:
    """``n`` slice indices along ``axis`` spread evenly over the reference's extent, both ends
    included (``n == 1``: the middle slice); fewer when the extent has fewer slices. For the
    interpolation baseline at the same number of interactions.

    Raises:
        ValueError: the reference is empty or ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    ref = _mask(reference, "reference")
    present = np.flatnonzero(ref.any(axis=tuple(a for a in range(3) if a != axis % 3)))
    if present.size == 0:
        raise ValueError("the reference is empty: there are no slices to draw")
    lo, hi = int(present[0]), int(present[-1])
    if n == 1:
        return [(lo + hi) // 2]
    return sorted({int(round(x)) for x in np.linspace(lo, hi, n)})
