"""RTSTRUCT in/out (re-exported as ``fx.rt.read_rtstruct`` / ``fx.rt.write_rtstruct``).

:func:`read_rtstruct` rasterises closed planar contours on the referenced image series by the rule
of :mod:`fewshotcx.rt.raster` (a contour inside another on the same plane is a hole, other contours
are unioned); :func:`write_rtstruct` draws
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
from nibabel import orientations as ornt
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..io.dicom import DicomSeries, deidentify_dataset, ds_string, scan_series, write_dataset
from ..compat import warn_renamed
from ..io.grid import PathLike, Volume, VolumeError, binary_mask
from .raster import rasterise
from .structure_set import contour_points, number, read_structure_set, referenced_series, roi_table, sequence

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # (retired) SOP class planning systems expect in the study reference
#: Patient and study attributes copied from the image series unless ``deidentify``.
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                     "IssuerOfPatientID", "OtherPatientIDs")
_COLOURS = ((255, 0, 0), (0, 160, 255), (0, 200, 0), (255, 200, 0), (200, 0, 255), (0, 220, 200),
            (255, 120, 0), (150, 150, 255))


def read_rtstruct(rtstruct_path: PathLike, series_dir: PathLike,
                  names: Optional[Collection[str]] = None) -> dict[str, Volume]:
    """Rasterise every ROI of an RTSTRUCT on its referenced image series.

    Closed planar contours are filled as :mod:`fewshotcx.rt.raster` describes: each on its nearest
    slice, holes only for a contour inside another of the same plane, everything else unioned (voxel
    centres decide). Warnings, one per ROI: contours off the slice planes (how
    far), contours that cannot be filled (another geometric type, fewer than 3 points, a slice outside
    the series). ROIs without an ROI Contour item are left out with a warning, unless named.

    Args:
        rtstruct_path: the RT Structure Set file.
        series_dir: folder holding the referenced image series (the series UID named in the RTSTRUCT
            is used when present).
        names: rasterise only the ROIs with these exact names (default: all).
    Returns:
        ``{ROI name: uint8 Volume}`` on the series' grid in closest-canonical RAS, i.e. aligned with
        ``load_volume(series_dir)``; ``save_volume`` writes them in the series' own layout.
    Raises:
        VolumeError: not a readable RTSTRUCT, series or frame of reference mismatch, a named ROI
            without an ROI Contour item, malformed ContourData, contours not parallel to the image
            slices (one line naming the file and the ROI).
    """
    ds = read_structure_set(rtstruct_path)
    file = Path(rtstruct_path).name
    series = scan_series(series_dir, referenced_series(ds)[0])
    check_not_sheared(series, file)
    frame = str(series.headers[0].get("FrameOfReferenceUID", ""))
    rois = roi_table(ds, file, frame)
    items = sequence(ds, "ROIContourSequence", file)
    _check_contour_items(rois, {number(item, "ReferencedROINumber", file) for item in items}, names, file)
    masks: dict[str, Volume] = {}
    for item in items:
        roi = number(item, "ReferencedROINumber", file)
        name, roi_frame = rois.get(roi, (f"ROI {roi}", frame))
        if names is not None and name not in names:
            continue
        if roi_frame != frame:
            raise VolumeError(f"{file}: ROI {name!r} is in frame of reference {roi_frame}, the series in {frame}")
        inside = _read_roi(item, f"{file}: ROI {name!r}", series)
        masks[name if name not in masks else f"{name}_{roi}"] = Volume(inside.astype(np.uint8), series.affine,
                                                                        label=True).canonical()
    return masks


def _check_contour_items(rois: Mapping[int, tuple[str, str]], referenced: Collection[int],
                         names: Optional[Collection[str]], file: str) -> None:
    """Refuse a named ROI without an ROI Contour item; warn about the others when all are read."""
    missing = [name for roi, (name, _) in rois.items() if roi not in referenced]
    for name in missing:
        if names is not None and name in names:
            raise VolumeError(f"{file}: ROI {name!r} has no ROI Contour item (no contours to read)")
    if missing and names is None:
        warnings.warn(f"{file}: ROI{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                      "without an ROI Contour item (no contours) left out", stacklevel=3)


def _read_roi(item: Dataset, where: str, series: DicomSeries) -> np.ndarray:
    """``(X, Y, Z)`` bool voxels of one ROI Contour item (``where``: file and ROI, for messages)."""
    inverse = np.linalg.inv(series.affine_lps)
    polygons: list[np.ndarray] = []
    skipped: Counter[str] = Counter()
    for index, contour in enumerate(sequence(item, "ContourSequence", where), start=1):
        kind = str(contour.get("ContourGeometricType", "no type"))
        if kind != "CLOSED_PLANAR":
            skipped[f"of type {kind} (only CLOSED_PLANAR is filled)"] += 1
            continue
        points = contour_points(contour, f"{where}: contour {index}")
        ijk = points @ inverse[:3, :3].T + inverse[:3, 3]
        if len(ijk) < 3:
            skipped["with fewer than 3 points"] += 1
        elif not np.isfinite(ijk).all():
            skipped["outside the series"] += 1
        elif np.ptp(ijk[:, 2]) > 0.5:
            raise VolumeError(f"{where}: contour {index} is not parallel to the image slices")
        else:
            polygons.append(ijk)
    raster = rasterise(polygons, series.shape)
    skipped["outside the series"] += raster.outside
    if raster.off_plane:
        spacing = float(np.linalg.norm(series.affine[:3, 2]))
        warnings.warn(f"{where}: {raster.off_plane} of {len(polygons)} contours lie off the image slice planes "
                      f"(up to {raster.max_offset * spacing:.2f} mm, slice spacing {spacing:g} mm); each is "
                      "filled on its nearest slice", stacklevel=3)
    if +skipped:
        warnings.warn(f"{where}: skipped " + ", ".join(f"{n} contour{'s' if n > 1 else ''} {why}"
                                                       for why, n in sorted((+skipped).items())), stacklevel=3)
    return raster.inside


def write_rtstruct(masks: Mapping[str, Volume], series_dir: PathLike, out_path: PathLike,
                   overwrite: bool = False, deidentify: bool = False,
                   series_uid: Optional[str] = None,
                   roi_types: Optional[Mapping[str, str]] = None,
                   colours: Optional[Mapping[str, Sequence[int]]] = None,
                   keep_patient_identity: Optional[bool] = None) -> Path:
    """Write masks as an RT Structure Set referencing a DICOM image series.

    Each mask slice is contoured at the 0.5 level (marching squares on voxel centres), so reading the
    file back (:func:`read_rtstruct`) restores the voxels; holes are separate contours.

    Args:
        masks: ``{ROI name: mask Volume}``; each mask must lie on the series' grid in any voxel
            layout (e.g. as read by ``load_volume`` or predicted on ``load_volume(series_dir)``).
        series_dir: folder holding the image series the contours are drawn on.
        out_path: the ``.dcm`` file to write (atomically).
        deidentify: ``False`` (the default, as for :func:`~fewshotcx.rt.write_structures`): the
            patient and study attributes (:data:`IDENTITY_KEYWORDS`: names, IDs, birth date, sex,
            study date/time/ID, accession number, referring physician) are copied from the series,
            so that a planning system files the structures with the patient and study of the CT.
            ``True``: the file is de-identified (:func:`fewshotcx.io.dicom.deidentify_dataset`:
            PS3.15 Basic Profile with the Retain UIDs Option; the ROI names given here are kept),
            which matches a series de-identified the same way.
        series_uid: which series to reference when the folder holds several.
        roi_types: ``RTROIInterpretedType`` per ROI name (default: GTV/CTV/PTV from the name prefix,
            else empty).
        colours: ``ROIDisplayColor`` (RGB 0-255) per ROI name (default: a fixed palette).
        keep_patient_identity: deprecated spelling of ``deidentify=not keep_patient_identity``.
    Raises:
        FileExistsError: ``out_path`` exists and ``overwrite`` is False.
        ValueError: no masks, or an ROI name DICOM cannot hold. VolumeError: a mask off the grid.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if keep_patient_identity is not None:
        warn_renamed("write_rtstruct(keep_patient_identity=)", "deidentify= (the default now keeps the identity)")
        deidentify = not keep_patient_identity
    if not masks:
        raise ValueError("write_rtstruct needs at least one mask")
    for name in masks:
        if not name.strip() or len(name) > 64 or "\\" in name:
            raise ValueError(f"ROI name {name!r} must be 1-64 characters without a backslash")
    series = scan_series(series_dir, series_uid)
    check_not_sheared(series, out_path.name)
    contours = {name: _mask_contours(on_series_grid(mask, series, name)) for name, mask in masks.items()}
    ds = _structure_set(series, contours, roi_types or {}, colours or {})
    source = series.headers[0]
    if not deidentify:
        for keyword in IDENTITY_KEYWORDS:
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)
        ds.PatientIdentityRemoved = "NO"
    else:
        ds = deidentify_dataset(ds, retain=("ROIName",))  # ROI names are the caller's, not the patient's
    return write_dataset(ds, out_path, overwrite=overwrite)


def check_not_sheared(series: DicomSeries, where: str) -> None:
    """Refuse (one-line VolumeError) a series whose slices are stacked obliquely to their plane (gantry
    tilt): planning systems and other readers place such contours differently."""
    axes = series.affine_lps[:3, :3]
    normal, step = np.cross(axes[:, 0], axes[:, 1]), axes[:, 2]
    tilt = float(np.degrees(np.arcsin(min(1.0, np.linalg.norm(np.cross(normal / np.linalg.norm(normal),
                                                                        step / np.linalg.norm(step)))))))
    if tilt > 0.06:  # sin(0.06 deg) ~ 1e-3, the tolerance of scan_series
        raise VolumeError(f"{where}: series {series.series_uid} is sheared (slices stacked {tilt:.1f} degrees off "
                          "their normal, gantry tilt); resample it onto an orthogonal grid first")


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
    for roi_number, (name, polygons) in enumerate(contours.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = roi_number, frame, name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = roi_number
        item.ROIDisplayColor = [int(c) for c in colours.get(name, _COLOURS[(roi_number - 1) % len(_COLOURS)])]
        if polygons:  # Type 3: an empty structure has no ContourSequence rather than an empty one
            item.ContourSequence = [_contour(k, polygon, series, sop_class) for k, polygon in polygons]
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = roi_number, roi_number
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
