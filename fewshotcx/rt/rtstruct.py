"""RTSTRUCT in/out (re-exported as ``fx.rt.read_rtstruct`` / ``fx.rt.write_rtstruct``).

:func:`read_rtstruct` rasterises closed planar contours on the referenced image series with the
even-odd rule (a contour inside another on the same slice is a hole); :func:`write_rtstruct` draws
the 0.5 iso-contours of each mask slice (marching squares, via ``contourpy``), outer boundaries and
holes as separate contours, in patient (LPS) millimetres through the series geometry.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from nibabel import orientations as ornt
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from ..io.dicom import DicomSeries, deidentify_dataset, ds_string, scan_series, write_dataset
from ..io.grid import PathLike, Volume, VolumeError, binary_mask

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # (retired) SOP class planning systems expect in the study reference
#: Patient and study attributes copied from the image series with ``keep_patient_identity``.
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                     "IssuerOfPatientID", "OtherPatientIDs")
_COLOURS = ((255, 0, 0), (0, 160, 255), (0, 200, 0), (255, 200, 0), (200, 0, 255), (0, 220, 200),
            (255, 120, 0), (150, 150, 255))


def read_rtstruct(rtstruct_path: PathLike, series_dir: PathLike,
                  names: Optional[Collection[str]] = None) -> dict[str, Volume]:
    """Rasterise every ROI of an RTSTRUCT on its referenced image series.

    Closed planar contours are assigned to the nearest slice and filled with the even-odd rule across
    all contours of the ROI on that slice, so inner contours are holes (voxel centres decide). Contours
    that cannot be filled (another geometric type, or a slice outside the series) are skipped with
    one warning per ROI that counts them.

    Args:
        rtstruct_path: the RT Structure Set file.
        series_dir: folder holding the referenced image series (the series UID named in the RTSTRUCT
            is used when present).
        names: rasterise only the ROIs with these exact names (default: all).
    Returns:
        ``{ROI name: uint8 Volume}`` on the series' grid in closest-canonical RAS, i.e. aligned with
        ``load_volume(series_dir)``; ``save_volume`` writes them in the series' own layout.
    Raises:
        VolumeError: not an RTSTRUCT, series or frame of reference mismatch, contours not parallel to
            the image slices.
    """
    ds = read_structure_set(rtstruct_path)
    series = scan_series(series_dir, _referenced_series_uid(ds))
    frame = str(series.headers[0].get("FrameOfReferenceUID", ""))
    rois = {int(r.ROINumber): (str(r.ROIName), str(r.get("ReferencedFrameOfReferenceUID", frame)))
            for r in ds.StructureSetROISequence}
    inverse = np.linalg.inv(series.affine_lps)
    masks: dict[str, Volume] = {}
    for roi in ds.get("ROIContourSequence", []):
        name, roi_frame = rois.get(int(roi.ReferencedROINumber), (f"ROI {roi.ReferencedROINumber}", frame))
        if names is not None and name not in names:
            continue
        if roi_frame != frame:
            raise VolumeError(f"ROI {name!r} is in frame of reference {roi_frame}, the series in {frame}")
        inside = np.zeros(series.shape, dtype=bool)
        skipped: Counter[str] = Counter()
        for contour in roi.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", "no type"))
            if kind != "CLOSED_PLANAR":
                skipped[kind] += 1
                continue
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            ijk = points @ inverse[:3, :3].T + inverse[:3, 3]
            if np.ptp(ijk[:, 2]) > 0.5:
                raise VolumeError(f"ROI {name!r} has a contour that is not parallel to the image slices")
            k = int(np.round(ijk[:, 2].mean()))
            if 0 <= k < series.shape[2]:
                inside[:, :, k] ^= _polygon_mask(ijk[:, :2], series.shape[:2])
            else:
                skipped["outside the series"] += 1
        if skipped:
            warnings.warn(f"{rtstruct_path}: ROI {name!r}: skipped " + ", ".join(
                f"{n} contour{'s' if n > 1 else ''} {_why(kind)}" for kind, n in sorted(skipped.items())), stacklevel=2)
        key = name if name not in masks else f"{name}_{roi.ReferencedROINumber}"
        masks[key] = Volume(inside.astype(np.uint8), series.affine, label=True).canonical()
    return masks


def read_structure_set(rtstruct_path: PathLike) -> Dataset:
    """The RT Structure Set dataset of a file (contours as DICOM values, not rasterised).

    Raises:
        VolumeError: not readable as DICOM, or not an RT Structure Set.
    """
    try:
        ds = pydicom.dcmread(rtstruct_path)
    except (InvalidDicomError, OSError) as exc:
        raise VolumeError(f"cannot read {rtstruct_path} as DICOM: {exc}") from None
    if ds.get("Modality") != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise VolumeError(f"{rtstruct_path} is not an RT Structure Set (Modality {ds.get('Modality')!r})")
    return ds


def _why(kind: str) -> str:
    return kind if kind == "outside the series" else f"of type {kind} (only CLOSED_PLANAR is filled)"


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
                   series_uid: Optional[str] = None,
                   roi_types: Optional[Mapping[str, str]] = None,
                   colours: Optional[Mapping[str, Sequence[int]]] = None) -> Path:
    """Write masks as an RT Structure Set referencing a DICOM image series.

    Each mask slice is contoured at the 0.5 level (marching squares on voxel centres), so reading the
    file back with the even-odd rule restores the voxels; holes are separate contours.

    Args:
        masks: ``{ROI name: mask Volume}``; each mask must lie on the series' grid in any voxel
            layout (e.g. as read by ``load_volume`` or predicted on ``load_volume(series_dir)``).
        series_dir: folder holding the image series the contours are drawn on.
        out_path: the ``.dcm`` file to write (atomically).
        keep_patient_identity: copy the patient and study attributes (:data:`IDENTITY_KEYWORDS`:
            names, IDs, birth date, sex, study date/time/ID, accession number, referring physician)
            from the series, so that a planning system files the structures with the patient and
            study of the CT. Otherwise the file is de-identified
            (:func:`fewshotcx.io.dicom.deidentify_dataset`: PS3.15 Basic Profile with the Retain UIDs
            Option; the ROI names given here are kept), which matches a series de-identified the same way.
        series_uid: which series to reference when the folder holds several.
        roi_types: ``RTROIInterpretedType`` per ROI name (default: GTV/CTV/PTV from the name prefix,
            else empty).
        colours: ``ROIDisplayColor`` (RGB 0-255) per ROI name (default: a fixed palette).
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
    contours = {name: _mask_contours(on_series_grid(mask, series, name)) for name, mask in masks.items()}
    ds = _structure_set(series, contours, roi_types or {}, colours or {})
    source = series.headers[0]
    if keep_patient_identity:
        for keyword in IDENTITY_KEYWORDS:
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)
        ds.PatientIdentityRemoved = "NO"
    else:
        ds = deidentify_dataset(ds, retain=("ROIName",))  # ROI names are the caller's, not the patient's
    return write_dataset(ds, out_path, overwrite=overwrite)


def on_series_grid(mask: Volume, series: DicomSeries, name: str, binary: bool = True) -> np.ndarray:
    """The mask as a bool array (its values with ``binary=False``) in the series' own ``(X, Y, Z)``
    layout, or a VolumeError."""
    transform = ornt.ornt_transform(ornt.io_orientation(mask.affine), ornt.io_orientation(series.affine))
    array = ornt.apply_orientation(binary_mask(mask) if binary else mask.array, transform)
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


def _structure_set(series: DicomSeries, contours: Mapping[str, list[tuple[int, np.ndarray]]],
                   roi_types: Mapping[str, str], colours: Mapping[str, Sequence[int]]) -> Dataset:
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
    ds.FrameOfReferenceUID = frame
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = "fewshotcx"
    now = datetime.now()
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    images = [_image_ref(sop_class, uid) for uid in series.sop_instance_uids]
    ref_series = Dataset()
    ref_series.SeriesInstanceUID, ref_series.ContourImageSequence = series.series_uid, images
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = _DETACHED_STUDY_MANAGEMENT
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
        item.ROIDisplayColor = [int(c) for c in colours.get(name, _COLOURS[(number - 1) % len(_COLOURS)])]
        if polygons:  # Type 3: an empty structure has no ContourSequence rather than an empty one
            item.ContourSequence = [_contour(k, polygon, series, sop_class) for k, polygon in polygons]
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = roi_types.get(name, _interpreted_type(name))
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
