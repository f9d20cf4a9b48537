"""Radiotherapy structures: exact millimetre margins, structure algebra and RTSTRUCT in/out.

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

RTSTRUCT
--------
:func:`read_rtstruct` rasterises closed planar contours on the referenced image series with the
even-odd rule (a contour inside another on the same slice is a hole); :func:`write_rtstruct` draws
the 0.5 iso-contours of each mask slice (marching squares, via ``contourpy``), outer boundaries and
holes as separate contours, in patient (LPS) millimetres through the series geometry.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pydicom
from nibabel import orientations as ornt
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from scipy import ndimage

from .dicom import DicomSeries, deidentify_dataset, ds_string, scan_series, write_dataset
from .volume import PathLike, Volume, VolumeError

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
    inside = _binary(mask)
    margins = _array_margins(mask.affine, _world_margins(margin_mm))
    return mask.with_array(_dilate(inside, mask.spacing, margins).astype(np.uint8), label=True)


def shrink_margin(mask: Volume, margin_mm: MarginSpec) -> Volume:
    """Erode a mask by an exact margin in mm: the surface facing each direction moves inwards by it.

    A voxel stays iff every grid point of ``E`` placed on it (see :func:`expand_margin`) is inside the
    mask, so ``expand_margin(shrink_margin(m, s), s) ⊆ m``. Voxels outside the grid count as inside.
    """
    inside = _binary(mask)
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
    return a.with_array((_binary(a) & ~_binary(b)).astype(np.uint8), label=True)


def _combine(volumes: Sequence[Volume], op: np.ufunc, what: str) -> Volume:
    if not volumes:
        raise ValueError(f"{what} needs at least one mask")
    _check_same_grid(volumes, what)
    return volumes[0].with_array(op.reduce([_binary(v) for v in volumes]).astype(np.uint8), label=True)


def _check_same_grid(volumes: Sequence[Volume], what: str) -> None:
    first = volumes[0]
    atol = 1e-3 * max(1.0, *first.spacing)
    for n, other in enumerate(volumes[1:], start=2):
        if other.shape != first.shape or not np.allclose(other.affine, first.affine, atol=atol):
            raise VolumeError(f"{what}: mask {n} is not on the grid of mask 1 (shape {other.shape} vs "
                              f"{first.shape} or different affine); resample it first")


def _binary(volume: Volume) -> np.ndarray:
    array = volume.array
    if not volume.label and not np.isin(array, (0, 1)).all():
        raise VolumeError("expected a binary mask (0/1 values); threshold probability maps first")
    return array != 0


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


# ---------------------------------------------------------------------------- RTSTRUCT
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # what planning systems expect in the study reference
_COLOURS = ((255, 0, 0), (0, 160, 255), (0, 200, 0), (255, 200, 0), (200, 0, 255), (0, 220, 200),
            (255, 120, 0), (150, 150, 255))


def read_rtstruct(rtstruct_path: PathLike, series_dir: PathLike) -> dict[str, Volume]:
    """Rasterise every ROI of an RTSTRUCT on its referenced image series.

    Closed planar contours are assigned to the nearest slice and filled with the even-odd rule across
    all contours of the ROI on that slice, so inner contours are holes (voxel centres decide).

    Args:
        rtstruct_path: the RT Structure Set file.
        series_dir: folder holding the referenced image series (the series UID named in the RTSTRUCT
            is used when present).
    Returns:
        ``{ROI name: uint8 Volume}`` on the series' grid in closest-canonical RAS, i.e. aligned with
        ``load_volume(series_dir)``; ``save_volume`` writes them in the series' own layout.
    Raises:
        VolumeError: not an RTSTRUCT, series or frame of reference mismatch, contours not parallel to
            the image slices.
    """
    try:
        ds = pydicom.dcmread(rtstruct_path)
    except (InvalidDicomError, OSError) as exc:
        raise VolumeError(f"cannot read {rtstruct_path} as DICOM: {exc}") from None
    if ds.get("Modality") != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise VolumeError(f"{rtstruct_path} is not an RT Structure Set (Modality {ds.get('Modality')!r})")
    series = scan_series(series_dir, _referenced_series_uid(ds))
    frame = str(series.headers[0].get("FrameOfReferenceUID", ""))
    names = {int(r.ROINumber): (str(r.ROIName), str(r.get("ReferencedFrameOfReferenceUID", frame)))
             for r in ds.StructureSetROISequence}
    inverse = np.linalg.inv(series.affine_lps)
    masks: dict[str, Volume] = {}
    for roi in ds.get("ROIContourSequence", []):
        name, roi_frame = names.get(int(roi.ReferencedROINumber), (f"ROI {roi.ReferencedROINumber}", frame))
        if roi_frame != frame:
            raise VolumeError(f"ROI {name!r} is in frame of reference {roi_frame}, the series in {frame}")
        inside = np.zeros(series.shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType") != "CLOSED_PLANAR":
                continue
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            ijk = points @ inverse[:3, :3].T + inverse[:3, 3]
            if np.ptp(ijk[:, 2]) > 0.5:
                raise VolumeError(f"ROI {name!r} has a contour that is not parallel to the image slices")
            k = int(np.round(ijk[:, 2].mean()))
            if 0 <= k < series.shape[2]:
                inside[:, :, k] ^= _polygon_mask(ijk[:, :2], series.shape[:2])
        key = name if name not in masks else f"{name}_{roi.ReferencedROINumber}"
        masks[key] = Volume(inside.astype(np.uint8), series.affine, label=True).canonical()
    return masks


def _referenced_series_uid(ds: Dataset) -> Optional[str]:
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                return str(series.SeriesInstanceUID)
    return None


def _polygon_mask(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(X, Y)`` bool: voxel centres inside the closed polygon ``vertices`` ``(N, 2)`` in (i, j) units."""
    from matplotlib.path import Path as PolygonPath

    out = np.zeros(shape, dtype=bool)
    lo = np.maximum(np.ceil(vertices.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.floor(vertices.max(axis=0)).astype(int), np.asarray(shape) - 1)
    if len(vertices) < 3 or np.any(hi < lo):
        return out
    i, j = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    inside = PolygonPath(vertices).contains_points(np.column_stack([i.ravel(), j.ravel()]))
    out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1] = inside.reshape(i.shape)
    return out


def write_rtstruct(masks: Mapping[str, Volume], series_dir: PathLike, out_path: PathLike,
                   overwrite: bool = False, keep_patient_identity: bool = False,
                   series_uid: Optional[str] = None) -> Path:
    """Write masks as an RT Structure Set referencing a DICOM image series.

    Each mask slice is contoured at the 0.5 level (marching squares on voxel centres), so reading the
    file back with the even-odd rule restores the voxels; holes are separate contours.

    Args:
        masks: ``{ROI name: mask Volume}``; each mask must lie on the series' grid in any voxel
            layout (e.g. as read by ``load_volume`` or predicted on ``load_volume(series_dir)``).
        series_dir: folder holding the image series the contours are drawn on.
        out_path: the ``.dcm`` file to write (atomically).
        keep_patient_identity: copy PatientName and PatientID from the series (needed by planning
            systems to attach the structures to the patient); by default they are left empty and the
            file is de-identified (:func:`fewshotcx.dicom.deidentify_dataset`).
        series_uid: which series to reference when the folder holds several.
    Raises:
        FileExistsError: ``out_path`` exists and ``overwrite`` is False.
        ValueError: no masks, or an ROI name DICOM cannot hold. VolumeError: a mask off the grid.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if not masks:
        raise ValueError("write_rtstruct needs at least one mask")
    for name in masks:
        if not name.strip() or len(name) > 64 or "\\" in name:
            raise ValueError(f"ROI name {name!r} must be 1-64 characters without a backslash")
    series = scan_series(series_dir, series_uid)
    contours = {name: _mask_contours(_on_series_grid(mask, series, name)) for name, mask in masks.items()}
    ds = _structure_set(series, contours)
    source = series.headers[0]
    ds = deidentify_dataset(ds)
    if keep_patient_identity:
        ds.PatientName, ds.PatientID = source.get("PatientName", ""), source.get("PatientID", "")
        ds.PatientIdentityRemoved = "NO"
        del ds.DeidentificationMethod
    return write_dataset(ds, out_path, overwrite=overwrite)


def _on_series_grid(mask: Volume, series: DicomSeries, name: str) -> np.ndarray:
    """The mask as a bool array in the series' own ``(X, Y, Z)`` layout, or a VolumeError."""
    transform = ornt.ornt_transform(ornt.io_orientation(mask.affine), ornt.io_orientation(series.affine))
    array = ornt.apply_orientation(_binary(mask), transform)
    affine = mask.affine @ ornt.inv_ornt_aff(transform, mask.shape)
    atol = 1e-3 * max(1.0, *mask.spacing)
    if tuple(array.shape) != series.shape or not np.allclose(affine, series.affine, atol=atol):
        raise VolumeError(f"mask {name!r} is not on the grid of series {series.series_uid} "
                          f"(shape {mask.shape}); predict or resample it on that series")
    return array


def _mask_contours(inside: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``[(slice k, (N, 2) polygon in (i, j) voxel units)]``: 0.5 iso-contours of each ``inside[:, :, k]``."""
    import contourpy

    out = []
    for k in np.flatnonzero(inside.any(axis=(0, 1))):
        padded = np.pad(inside[:, :, k], 1).T.astype(np.float64)  # rows j, columns i; closed at borders
        generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
        for line in generator.lines(0.5):
            polygon = line[:-1] if np.allclose(line[0], line[-1]) else line
            out.append((int(k), _drop_collinear(polygon - 1.0)))
    return out


def _drop_collinear(polygon: np.ndarray) -> np.ndarray:
    """The closed polygon ``(N, 2)`` without vertices that lie on the segment of their neighbours."""
    before, after = polygon - np.roll(polygon, 1, axis=0), np.roll(polygon, -1, axis=0) - polygon
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return polygon[np.abs(turn) > 1e-9]


def _structure_set(series: DicomSeries, contours: Mapping[str, list[tuple[int, np.ndarray]]]) -> Dataset:
    """The RT Structure Set dataset (patient, study, RT series, structure set, ROI contour modules)."""
    source = series.headers[0]
    if "FrameOfReferenceUID" not in source or "StudyInstanceUID" not in source:
        raise VolumeError(f"series {series.series_uid} lacks FrameOfReferenceUID/StudyInstanceUID")
    frame, sop_class = str(source.FrameOfReferenceUID), str(source.SOPClassUID)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, generate_uid()
    ds.Modality, ds.Manufacturer = "RTSTRUCT", "fewshotcx"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = str(source.StudyInstanceUID), generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber", "OperatorsName"):
        setattr(ds, key, "")
    ds.StructureSetLabel = "fewshotcx"
    ds.StructureSetDate, ds.StructureSetTime = "", ""

    images = [_image_ref(sop_class, uid) for uid in series.sop_instance_uids]
    ref_series = Dataset()
    ref_series.SeriesInstanceUID, ref_series.ContourImageSequence = series.series_uid, images
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = _STUDY_COMPONENT_MANAGEMENT
    ref_study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    ref_study.RTReferencedSeriesSequence = [ref_series]
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID, ref_frame.RTReferencedStudySequence = frame, [ref_study]
    ds.ReferencedFrameOfReferenceSequence = [ref_frame]

    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, polygons) in enumerate(contours.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame, name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = list(_COLOURS[(number - 1) % len(_COLOURS)])
        item.ContourSequence = [_contour(k, polygon, series, sop_class) for k, polygon in polygons]
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = _interpreted_type(name)
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    return ds


def _image_ref(sop_class: str, sop_instance: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_instance
    return ref


def _contour(k: int, polygon: np.ndarray, series: DicomSeries, sop_class: str) -> Dataset:
    """One CLOSED_PLANAR contour on slice ``k``: ``polygon`` ``(N, 2)`` voxel (i, j) → LPS mm."""
    ijk = np.column_stack([polygon, np.full(len(polygon), float(k))])
    lps = ijk @ series.affine_lps[:3, :3].T + series.affine_lps[:3, 3]
    contour = Dataset()
    contour.ContourImageSequence = [_image_ref(sop_class, series.sop_instance_uids[k])]
    contour.ContourGeometricType = "CLOSED_PLANAR"
    contour.NumberOfContourPoints = len(lps)
    contour.ContourData = [ds_string(v) for v in lps.ravel()]
    return contour


def _interpreted_type(name: str) -> str:
    """``RTROIInterpretedType`` from a conventional name prefix (PTV/CTV/GTV), else empty (unknown)."""
    prefix = name.strip().upper()[:3]
    return prefix if prefix in ("PTV", "CTV", "GTV") else ""
