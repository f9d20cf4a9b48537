"""Writing DICOM: a volume as an image series (CT or MR), and any dataset as a Part 10 file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .atomic import atomic_output
from .deid import deidentify_dataset
from .grid import PathLike, Volume, VolumeError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def ds_string(value: float) -> str:
    """A decimal-string (DS) rendering of ``value`` within DICOM's 16 characters (1 nm resolution)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    if len(text) > 16:
        raise VolumeError(f"coordinate {value} mm is too large for a DICOM decimal string")
    return text


def write_dicom_series(volume: Volume, directory: PathLike, overwrite: bool = False, modality: str = "auto",
                       burned_in_annotation: bool = False) -> list[Path]:
    """Write ``volume`` as a de-identified CT or MR Image Storage series, one file per slice.

    ``modality``: ``"ct"`` (CT Image Storage, values in HU: ``RescaleType = HU``), ``"mr"`` (MR Image
    Storage, no Hounsfield claim) or ``"auto"`` (:func:`~fewshotcx.io.intensity.looks_like_ct`).
    ``burned_in_annotation``: whether the voxels show burned-in text (e.g. converted from a
    screenshot); written as ``BurnedInAnnotation``, and such a series is not marked de-identified
    (``PatientIdentityRemoved = NO``), since de-identification does not touch pixels.

    Slices run along the third array axis of the volume's source layout (:meth:`Volume.to_source`);
    the first two axes must be orthogonal. Values are stored as 16-bit integers with a rescale
    intercept (and a slope when the range exceeds 65535 or values are fractional, which is lossy).

    Returns:
        The written files in slice order.
    Raises:
        FileExistsError: ``directory`` holds files and ``overwrite`` is False.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} is not empty; pass overwrite=True to write into it")
    directory.mkdir(parents=True, exist_ok=True)
    vol = volume.to_source()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    d_col, d_row = np.linalg.norm(lps[:3, :2], axis=0)
    row, col = lps[:3, 0] / d_col, lps[:3, 1] / d_row
    if abs(row @ col) > 1e-4:
        raise VolumeError("the first two voxel axes are not orthogonal; DICOM slices need orthogonal rows/columns")
    values = vol.array.astype(np.float64)
    intercept = float(np.floor(values.min()))
    span = float(values.max()) - intercept
    integral = np.allclose(values, np.round(values))
    slope = 1.0 if integral and span <= 65535 else max(span, 1e-12) / 65535
    if modality == "auto":
        from .intensity import looks_like_ct  # noqa: PLC0415

        modality = "ct" if looks_like_ct(vol.array) else "mr"
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'auto', 'ct' or 'mr', got {modality!r}")
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    written = []
    for k in range(vol.shape[2]):
        ds = _image_slice(vol.shape, row, col, (d_row, d_col), float(np.linalg.norm(lps[:3, 2])), modality)
        ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [ds_string(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.RescaleIntercept, ds.RescaleSlope = ds_string(intercept), ds_string(slope)
        stored = np.round((values[:, :, k].T - intercept) / slope)
        ds.PixelData = np.ascontiguousarray(np.clip(stored, 0, 65535).astype("<u2")).tobytes()
        written.append(write_dataset(deidentify_dataset(ds), directory / f"slice_{k:04d}.dcm", overwrite=True))
    return written


def _image_slice(shape: tuple[int, int, int], row: np.ndarray, col: np.ndarray,
                 pixel_spacing: tuple[float, float], thickness: float, modality: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE if modality == "ct" else MR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Manufacturer, ds.SeriesNumber = modality.upper(), "fewshotcx", 1
    # Value 3: CT's enumerated AXIAL (a tomographic image, whatever the plane); MR's is free, OTHER says nothing.
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "ct" else "OTHER"]
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator",
                "AcquisitionNumber", "Laterality", "PatientPosition"):  # Type 2/2C, unknown: present and empty
        setattr(ds, key, "")
    ds.ImageOrientationPatient = [ds_string(v) for v in (*row, *col)]
    ds.PixelSpacing = [ds_string(v) for v in pixel_spacing]
    ds.SliceThickness = ds_string(thickness)
    ds.Rows, ds.Columns = shape[1], shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleType = "HU" if modality == "ct" else "US"  # US: unspecified (MR intensities are not HU)
    if modality == "mr":  # Type 2 attributes of the MR Image Module, unknown here
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", ""
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "", "", ""
    else:
        ds.KVP = ""
    return ds


def write_dataset(ds: Dataset, path: PathLike, overwrite: bool = False) -> Path:
    """Save ``ds`` as a DICOM Part 10 file (explicit VR little endian), atomically.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    with atomic_output(path, overwrite) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return Path(path)
