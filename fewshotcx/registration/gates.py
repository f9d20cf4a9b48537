"""The quality gate every registration passes through, and the measures it reads.

After registration, on the fixed (query) working grid, within the part of it that the moving scan's
field of view covers:

* ``body_dice``: Dice of the two body masks (:func:`body_mask`);
* ``overlap``: overlapping body volume / the smaller body volume (a slab fully inside the other scan
  scores ~1, scans that barely touch ~0);
* ``ncc``: normalised cross-correlation of the normalised intensities over the union of the bodies;
* ``nmi``: normalised mutual information ``(H(F) + H(M)) / H(F, M)`` (1 = independent, 2 = one
  determines the other) over the same voxels, 32 bins;
* ``margin``: ``ncc`` minus the best ``ncc`` of the same mapping perturbed in the two ways a
  registration goes wrong without the bodies disagreeing: mirrored left-right about the query's body
  centre, and moved ``SHIFT_MM`` up or down (the wrong slab). A right registration is a local
  optimum, so it beats its perturbations (``margin > 0``); a flipped or slipped one is beaten by them.

The thresholds (:data:`MIN_BODY_DICE`, :data:`MIN_OVERLAP`, :data:`MIN_NCC`, :data:`MIN_MARGIN`) are
fitted on calibration data only (``benchmarks/registration_gates.py``, its ``fit_thresholds``, and
``benchmarks/results/registration_gates.csv``; ``docs/registration.md`` has the table): cross-patient
abdominal and sarcoma CT/MR pairs, synthetic deformations of calibration scans, two brain atlases, and
deliberately broken registrations of each. Per measure: the worst good registration (label transfer
Dice >= 0.6) less one step, rounded down. On those rows no broken registration passes and no good one
is refused; ``tests/test_registration_gates.py`` re-checks both, and that the values here are the fit.
The report pair (LUNG1-001 ↔ CTChest4) only checks them afterwards
(``benchmarks/results/registration_gates_heldout.csv``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Mapping, Optional

import numpy as np
from scipy import ndimage

from .convert import load_sitk, mask_image

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: Minimum Dice of the two body masks after registration, within the overlapping field of view.
MIN_BODY_DICE = 0.75
#: Minimum overlapping body volume as a fraction of the smaller body.
MIN_OVERLAP = 0.85
#: Minimum normalised cross-correlation of normalised intensities over the bodies.
MIN_NCC = 0.40
#: Minimum lead of ``ncc`` over the mirrored and the ``SHIFT_MM``-shifted mappings.
MIN_MARGIN = 0.03
#: Superior-inferior shift (mm) of the perturbed mappings that ``margin`` compares against.
SHIFT_MM = 20.0
#: Bins per axis of the joint histogram behind ``nmi``.
NMI_BINS = 32

#: The measures the gate reads, with the lowest value it accepts.
THRESHOLDS: dict[str, float] = {"body_dice": MIN_BODY_DICE, "overlap": MIN_OVERLAP, "ncc": MIN_NCC,
                                "margin": MIN_MARGIN}


def accepts(measures: Mapping[str, float], thresholds: Optional[Mapping[str, float]] = None) -> bool:
    """Whether measures (a :class:`Quality` as a mapping, or a row of the calibration CSV) pass the gate
    (``thresholds``: other thresholds than :data:`THRESHOLDS`, for comparisons); a missing or NaN
    measure fails."""
    limits = THRESHOLDS if thresholds is None else thresholds
    return all(float(measures.get(name, math.nan)) >= low for name, low in limits.items())


@dataclass(frozen=True)
class Quality:
    """What the gate measured (see the module docstring); ``nan`` = not measured (older saved files)."""

    body_dice: float
    ncc: float
    overlap: float
    nmi: float = math.nan
    margin: float = math.nan

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @property
    def ok(self) -> bool:
        return accepts(self.as_dict())

    def describe(self) -> str:
        values = self.as_dict()
        return ", ".join(f"{name.replace('_', ' ')} {values[name]:.2f} (min {low})" for name, low in THRESHOLDS.items())


def body_mask(image: "sitk.Image") -> np.ndarray:
    """``(Z, Y, X)`` bool body mask of a normalised image: Otsu threshold, largest 3D component,
    holes filled slice by slice (lungs and bowel gas are inside the body). Empty for a blank image."""
    sitk = load_sitk()
    array = sitk.GetArrayViewFromImage(image)
    if float(array.max()) - float(array.min()) < 1e-6:
        return np.zeros(array.shape, dtype=bool)
    otsu = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1)).astype(bool)
    components, count = ndimage.label(otsu)
    if count == 0:
        return otsu
    sizes = np.bincount(components.ravel())[1:]
    mask = components == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def centroid(mask: np.ndarray, image: "sitk.Image") -> np.ndarray:
    """Physical (LPS) centroid of a ``(Z, Y, X)`` mask on ``image``'s grid."""
    zyx = np.argwhere(mask).mean(axis=0)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))


def _overlay(transform, fixed, moving, moving_mask):
    """Moving's image, body mask and field of view resampled onto fixed through ``transform``."""
    sitk = load_sitk()
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    body = sitk.Resample(mask_image(moving_mask, moving), fixed, transform, sitk.sitkNearestNeighbor, 0)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    fov = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0)
    return warped, sitk.GetArrayFromImage(body).astype(bool), sitk.GetArrayFromImage(fov).astype(bool)


def _ncc(f: np.ndarray, m: np.ndarray) -> float:
    f, m = f - f.mean(), m - m.mean()
    denom = math.sqrt(float((f * f).sum() * (m * m).sum()))
    return float((f * m).sum() / denom) if denom > 0 else 0.0


def _nmi(f: np.ndarray, m: np.ndarray) -> float:
    joint, _, _ = np.histogram2d(f, m, bins=NMI_BINS, range=((0.0, 1.0), (0.0, 1.0)))
    p = joint / max(joint.sum(), 1.0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_joint = entropy(p.ravel())
    return (entropy(p.sum(axis=1)) + entropy(p.sum(axis=0))) / h_joint if h_joint > 0 else 1.0


def _similarity(transform, fixed, moving, fixed_mask, moving_mask) -> tuple[float, float, float, float]:
    """``(body_dice, overlap, ncc, nmi)`` of one mapping."""
    warped, warped_mask, fov = _overlay(transform, fixed, moving, moving_mask)
    a, b = fixed_mask & fov, warped_mask & fov
    both = int((a & b).sum())
    dice = 2.0 * both / max(int(a.sum()) + int(b.sum()), 1)
    voxel_f, voxel_m = np.prod(fixed.GetSpacing()), np.prod(moving.GetSpacing())
    smaller = min(fixed_mask.sum() * voxel_f, moving_mask.sum() * voxel_m)
    overlap = min(both * voxel_f / max(smaller, 1e-9), 1.0)
    region = a | b
    if region.sum() < 2:
        return float(dice), float(overlap), 0.0, 1.0
    sitk = load_sitk()
    f = sitk.GetArrayViewFromImage(fixed)[region].astype(np.float64)
    m = warped[region].astype(np.float64)
    return float(dice), float(overlap), _ncc(f, m), _nmi(f, m)


def perturbations(fixed: "sitk.Image", fixed_mask: np.ndarray) -> list["sitk.Transform"]:
    """Fixed → fixed maps that a registration is compared against: a left-right mirror about the body
    centre, and ``±SHIFT_MM`` superior-inferior shifts (LPS)."""
    sitk = load_sitk()
    mirror = sitk.AffineTransform(3)
    mirror.SetMatrix((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    mirror.SetCenter(tuple(float(c) for c in centroid(fixed_mask, fixed)))
    return [mirror, *(sitk.TranslationTransform(3, (0.0, 0.0, float(s))) for s in (SHIFT_MM, -SHIFT_MM))]


def assess(transform, fixed, moving, fixed_mask: np.ndarray, moving_mask: np.ndarray) -> Quality:
    """The gate's measures of ``transform`` (fixed → moving) on the working grids.

    Args:
        transform: the mapping to judge.
        fixed: the query's normalised working image.
        moving: the support's normalised working image.
        fixed_mask: ``(Z, Y, X)`` bool body mask of ``fixed`` (:func:`body_mask`).
        moving_mask: the same for ``moving``.
    """
    sitk = load_sitk()
    dice, overlap, ncc, nmi = _similarity(transform, fixed, moving, fixed_mask, moving_mask)
    rivals = [_similarity(sitk.CompositeTransform([transform, p]), fixed, moving, fixed_mask, moving_mask)[2]
              for p in perturbations(fixed, fixed_mask)] if fixed_mask.any() else [ncc]
    return Quality(body_dice=dice, ncc=ncc, overlap=overlap, nmi=nmi, margin=float(ncc - max(rivals)))
