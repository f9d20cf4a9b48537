"""Registering one scan to another with SimpleITK: rigid → affine → optionally a demons field.

``register(moving, fixed)`` finds where each point of ``fixed`` (the query) lies in ``moving`` (a
labelled support scan). The scans' world coordinates may be unrelated (different patients, scanners,
origins) and one may cover only an axial slab of the other: the start is found by aligning body
centroids in-plane and an exhaustive search over the superior-inferior offset, at low resolution.

Intensities are normalised as the segmenter does (CT soft-tissue window, MR 0.5–99.5 percentiles),
both scans block-averaged towards a ``working_spacing`` grid (3 mm default, by whole factors: an
anti-aliased downsampling), then Mattes mutual information with seeded random sampling,
multi-resolution (shrink 4, 2, 1), rigid (Euler) → affine, then for ``mode="deformable"`` a dense
displacement field by SimpleITK's fast symmetric-forces demons (intensities are normalised the same
way for both scans, which demons assumes). A B-spline stage with Mattes MI was measured at 70–130 s
for one 3-mm chest CT, demons at ~5 s with the same check values, hence demons. SimpleITK runs
single-threaded by default so a seed gives bit-identical results; the thread count is set on each
registration object, never process-wide, so concurrent registrations (two threads predicting two
queries) cannot change each other's. Every result goes through the
quality gate (:mod:`fewshotcx.registration.gates`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Literal, Optional, Sequence, Union

import numpy as np

from ..io.intensity import looks_like_ct, normalize
from ..io.volume import Volume
from .convert import RegistrationError, load_sitk, mask_image, to_sitk
from .gates import Quality, assess, body_mask, centroid
from .result import Registration

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

Mode = Literal["rigid", "affine", "deformable"]
MODES = ("rigid", "affine", "deformable")


def _modality(moving: Volume, fixed: Volume, modality: str) -> str:
    if modality != "auto":
        return modality
    return "ct" if looks_like_ct(moving.array) and looks_like_ct(fixed.array) else "mr"


def _working_image(volume: Volume, modality: str, spacing: float) -> "sitk.Image":
    """Normalised intensities in ``[0, 1]``, block-averaged by whole factors to voxels of ``spacing/2`` to
    ``spacing`` mm along each axis (finer axes only; coarser ones are kept)."""
    sitk = load_sitk()
    image = to_sitk(volume.with_array(normalize(volume.array, modality), label=False))
    factors = [max(1, int(spacing // old)) for old in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _si_extent(mask: np.ndarray, image: "sitk.Image") -> tuple[float, float]:
    """Physical superior-inferior (LPS z) range of the mask's voxels."""
    points = np.argwhere(mask)[:, ::-1].astype(np.float64)  # (N, 3) x, y, z indices
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    z = (direction @ (points * np.asarray(image.GetSpacing())).T)[2] + image.GetOrigin()[2]
    return float(z.min()), float(z.max())


def register(
    moving: Volume,
    fixed: Volume,
    mode: Mode = "affine",
    seed: int = 0,
    modality: str = "auto",
    working_spacing: float = 3.0,
    sampling: float = 0.1,
    iterations: int = 100,
    demons_iterations: int = 50,
    smoothness: float = 1.5,
    threads: int = 1,
    check: bool = True,
    name: Optional[str] = None,
) -> Registration:
    """Register ``moving`` (a labelled support scan) to ``fixed`` (the query).

    Args:
        moving: the scan to align (any orientation/spacing/origin; world coordinates may be unrelated
            to ``fixed``'s); usually canonical.
        fixed: the scan it is aligned to (the query).
        mode: ``"rigid"`` (6 parameters), ``"affine"`` (12, after rigid) or ``"deformable"`` (affine
            then a dense displacement field by symmetric-forces demons).
        seed: seeds the metric's random sampling: the same seed (and ``threads``) gives the same result.
        modality: ``"ct"``, ``"mr"`` or ``"auto"`` (CT when both look like CT).
        working_spacing: coarsest voxel size (mm) the scans are resampled to before registering.
        sampling: fraction of working voxels the metric samples per iteration.
        iterations: optimiser iterations per resolution level (rigid and affine stages).
        demons_iterations: iterations of the deformable (demons) stage.
        smoothness: Gaussian smoothing of the displacement field, in working voxels (larger = stiffer).
        threads: SimpleITK threads (results are reproducible for a fixed count).
        check: raise :class:`RegistrationError` when the quality check fails (else return with ``ok=False``).
        name: how error messages name ``moving`` (default: its source file, if known).
    Returns:
        a :class:`Registration` with the transform, the final metric and the check's values.
    Raises:
        RegistrationError: a blank image, the optimiser failing (e.g. no overlap left), or the check.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    label = name or _describe(moving)
    fixed_img, moving_img, fixed_mask, moving_mask = _prepare(moving, fixed, modality, working_spacing, label)
    method = partial(_method, seed=seed, threads=int(threads))
    try:
        transform = _initial(fixed_img, moving_img, fixed_mask, moving_mask, method(0.5, fixed_img))
        transform = _optimise("rigid", transform, fixed_img, moving_img, method(sampling, fixed_img), iterations)
        if mode != "rigid":
            transform = _optimise("affine", transform, fixed_img, moving_img, method(sampling, fixed_img), iterations)
        if mode == "deformable":
            transform = _demons(transform, fixed_img, moving_img, demons_iterations, smoothness, int(threads))
        metric = _metric(transform, fixed_img, moving_img, method(sampling, fixed_img))
    except RuntimeError as err:
        raise RegistrationError(f"registration of {label} failed: {_itk_reason(err)}") from None
    quality = assess(transform, fixed_img, moving_img, fixed_mask, moving_mask)
    result = Registration(transform, mode, float(metric), quality)
    if check and not result.ok:
        raise RegistrationError(f"registration of {label} refused by the quality check: {quality.describe()}")
    return result


def measure(transforms: Union["sitk.Transform", Sequence["sitk.Transform"]], moving: Volume, fixed: Volume,
            modality: str = "auto", working_spacing: float = 3.0) -> Union[Quality, list[Quality]]:
    """The gate's measures of any fixed → moving transform (e.g. one edited by hand, or a deliberately
    broken one in ``benchmarks/registration_gates.py``), prepared exactly as :func:`register` does.

    Args:
        transforms: one SimpleITK transform, or a list of them (the scans are prepared once).
    Returns:
        a :class:`~fewshotcx.registration.gates.Quality`, or a list of them for a list.
    """
    fixed_img, moving_img, fixed_mask, moving_mask = _prepare(moving, fixed, modality, working_spacing,
                                                              _describe(moving))
    if not isinstance(transforms, (list, tuple)):
        return assess(transforms, fixed_img, moving_img, fixed_mask, moving_mask)
    return [assess(t, fixed_img, moving_img, fixed_mask, moving_mask) for t in transforms]


def _prepare(moving: Volume, fixed: Volume, modality: str, spacing: float, label: str):
    """Working images and body masks of both scans; a RegistrationError when either is blank."""
    modality = _modality(moving, fixed, modality)
    fixed_img, moving_img = _working_image(fixed, modality, spacing), _working_image(moving, modality, spacing)
    fixed_mask, moving_mask = body_mask(fixed_img), body_mask(moving_img)
    for what, mask in (("the query", fixed_mask), (label, moving_mask)):
        if mask.sum() < 8:
            raise RegistrationError(f"cannot register {label}: {what} is blank (no body to align)")
    return fixed_img, moving_img, fixed_mask, moving_mask


def _describe(volume: Volume) -> str:
    path = volume.source.path if volume.source is not None else None
    return f"the moving volume ({path})" if path else "the moving volume"


def _itk_reason(err: RuntimeError) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "Description:" in line), lines[-1] if lines else "unknown error")
    return reason.replace("Description:", "").strip()


#: Fewest metric samples per evaluation at full working resolution (small scans are sampled densely).
MIN_SAMPLES = 200_000
#: Largest seed ITK's random sampling takes (an unsigned 32-bit integer; 0 would mean "the wall clock").
ITK_SEED_MAX = 2**32 - 1


def itk_seed(seed: int) -> int:
    """The sampling seed ITK gets for ``seed``, always in ``[1, ITK_SEED_MAX]``.

    ``seed + 1`` for ``0 <= seed < ITK_SEED_MAX`` (the mapping registrations have always used, so
    their results do not change); any other integer (negative, or a 63-bit seed derived for an
    uncertainty draw) is hashed with NumPy's ``SeedSequence`` (sign and magnitude both count, the same
    on every machine) and folded into the range.
    """
    seed = int(seed)
    if 0 <= seed < ITK_SEED_MAX:
        return seed + 1
    state = np.random.SeedSequence([abs(seed), int(seed < 0)]).generate_state(1, dtype=np.uint32)[0]
    return int(state) % ITK_SEED_MAX + 1


def _method(sampling: float, fixed: "sitk.Image", seed: int, threads: int) -> "sitk.ImageRegistrationMethod":
    """Mattes MI (32 bins), random sampling of ``sampling`` of fixed's voxels but at least
    :data:`MIN_SAMPLES` (measured on a 56×64×20 brain slab: 10% left 5-mm rigid errors, all voxels 0.1–0.6 mm),
    on ``threads`` threads and work units (the metric's sums depend on how the voxels are split)."""
    sitk = load_sitk()
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(threads)
    reg.SetNumberOfWorkUnits(threads)  # else ITK splits the metric by its process-wide default
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    fraction = min(1.0, max(float(sampling), MIN_SAMPLES / fixed.GetNumberOfPixels()))
    reg.SetMetricSamplingPercentage(fraction, itk_seed(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def _initial(fixed, moving, fixed_mask, moving_mask, reg: "sitk.ImageRegistrationMethod") -> "sitk.Transform":
    """Euler transform about the fixed body centroid: in-plane centroids aligned, and the
    superior-inferior offset chosen by an exhaustive metric search with ``reg`` (from :func:`_method`)
    at 4× shrink over every position where the shorter body lies within the longer one (plus a 25%
    margin of the shorter)."""
    sitk = load_sitk()
    centre_f, centre_m = centroid(fixed_mask, fixed), centroid(moving_mask, moving)
    lo_f, hi_f = _si_extent(fixed_mask, fixed)
    lo_m, hi_m = _si_extent(moving_mask, moving)
    len_f, len_m = hi_f - lo_f, hi_m - lo_m
    # z offset that puts the centres of the two SI extents together, then a search around it
    base = np.asarray(centre_m - centre_f)
    base[2] = (lo_m + hi_m) / 2 - (lo_f + hi_f) / 2
    half = abs(len_m - len_f) / 2 + 0.25 * min(len_f, len_m)
    step = 4.0 * max(fixed.GetSpacing()[2], moving.GetSpacing()[2], 4.0) / 2
    steps = int(math.ceil(half / step))
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in centre_f))
    transform.SetTranslation(tuple(float(t) for t in base))
    if steps == 0:
        return transform
    reg.SetOptimizerAsExhaustive([0, 0, 0, 0, 0, steps], stepLength=step)
    reg.SetOptimizerScales([1.0] * 6)
    reg.SetShrinkFactorsPerLevel([4])
    reg.SetSmoothingSigmasPerLevel([2.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetMetricFixedMask(mask_image(fixed_mask, fixed))
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return transform


def _optimise(stage: str, transform, fixed, moving, reg: "sitk.ImageRegistrationMethod",
              iterations: int) -> "sitk.Transform":
    """A rigid or affine stage with ``reg`` (from :func:`_method`) started from ``transform``
    (fixed → moving); returns the result."""
    sitk = load_sitk()
    levels = _levels(fixed, [4, 2, 1] if stage == "rigid" else [2, 1])  # affine refines the rigid pose
    reg.SetShrinkFactorsPerLevel(levels)
    reg.SetSmoothingSigmasPerLevel([level / 2 for level in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    if stage == "affine":
        affine = sitk.AffineTransform(3)
        affine.SetCenter(transform.GetCenter())
        affine.SetMatrix(transform.GetMatrix())
        affine.SetTranslation(transform.GetTranslation())
        transform = affine
    reg.SetInitialTransform(transform, inPlace=True)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=4.0, minStep=0.05, numberOfIterations=iterations,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.Execute(fixed, moving)
    return transform


def _levels(fixed: "sitk.Image", factors: list[int], smallest: int = 24) -> list[int]:
    """The shrink factors that leave at least ``smallest`` voxels along fixed's second-largest axis
    (always keeping full resolution): a 16-mm level on a small brain made identical images register
    1.4° apart."""
    size = sorted(fixed.GetSize())[1]
    return [f for f in factors if f == 1 or size / f >= smallest]


def _demons(transform, fixed, moving, iterations: int, sigma: float, threads: int) -> "sitk.Transform":
    """The deformable stage: symmetric-forces demons between ``fixed`` and ``moving`` already mapped
    by ``transform``; returns ``transform`` composed with the displacement field (fixed → moving).

    Voxels outside moving's field of view take fixed's own values there, so they exert no force.
    """
    sitk = load_sitk()
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1.0))
    outside = warped < 0
    warped[outside] = sitk.GetArrayViewFromImage(fixed)[outside]
    moved = sitk.GetImageFromArray(warped)
    moved.CopyInformation(fixed)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfThreads(threads)
    demons.SetNumberOfWorkUnits(threads)
    demons.SetNumberOfIterations(int(iterations))
    demons.SetStandardDeviations(float(sigma))
    field = demons.Execute(fixed, moved)
    return sitk.CompositeTransform([transform, sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))])


def _metric(transform, fixed, moving, reg: "sitk.ImageRegistrationMethod") -> float:
    """Mattes mutual information of the final mapping by ``reg`` (negative; lower = better)."""
    sitk = load_sitk()
    reg.SetMovingInitialTransform(transform)
    reg.SetInitialTransform(sitk.TranslationTransform(3))
    return float(reg.MetricEvaluate(fixed, moving))
