"""DICOM image series: geometry and reading into a :class:`Volume`.

Geometry
--------
Slices are sorted by the projection of ``ImagePositionPatient`` on the slice normal
``n = row × col`` (the two ``ImageOrientationPatient`` direction cosines), never by file name or
``InstanceNumber``. Voxel ``(i, j, k)`` is column ``i``, row ``j`` of the ``k``-th slice, so
``array[:, :, k]`` is the ``k``-th slice transposed and the patient (LPS) affine has columns
``row · ΔC``, ``col · ΔR`` and the slice step, with ``PixelSpacing = (ΔR, ΔC)``. The RAS affine of the
returned :class:`Volume` flips the signs of the x and y rows.

De-identification (:mod:`fewshotcx.io.deid`) and writing (:mod:`fewshotcx.io.dicom_write`) are
re-exported here, so ``fx.dicom`` offers all three.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from .deid import (COMPOUND_ACTIONS, DEIDENTIFICATION_METHOD, DUMMY_VALUES, deidentify_dataset, dummy_value,
                   has_identifiers, profile_action)
from .dicom_write import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, ds_string, write_dataset, write_dicom_series
from .grid import PathLike, SourceGeometry, Volume, VolumeError, check_geometry
from .limits import ReadLimits

__all__ = ["CT_IMAGE_STORAGE", "COMPOUND_ACTIONS", "DEIDENTIFICATION_METHOD", "DUMMY_VALUES", "DicomSeries",
           "IDENTIFIERS_WARNING", "IdentifyingDataWarning", "MR_IMAGE_STORAGE", "deidentify_dataset", "ds_string",
           "dummy_value", "has_identifiers", "profile_action", "read_dicom_series", "scan_series", "write_dataset",
           "write_dicom_series"]

IDENTIFIERS_WARNING = ("the DICOM series carries identifying attributes (patient, staff or institution); "
                       "they are not copied into the volume, but the source files stay identifiable")


#: Transfer syntax whose whole data set is deflated (pydicom inflates it in memory, unbounded).
_DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"


class IdentifyingDataWarning(UserWarning):
    """Input files carry identifying DICOM attributes (shown once per call site)."""


@dataclass(frozen=True)
class DicomSeries:
    """One image series, slices sorted along the slice normal.

    Attributes:
        files: slice files in array order (``k = 0 … Z-1``).
        headers: their datasets without pixel data, same order.
        affine_lps: ``(4, 4)`` voxel ``(i, j, k)`` → patient LPS mm (DICOM's frame).
        shape: ``(X, Y, Z)`` = ``(Columns, Rows, slices)``.
    """

    files: tuple[Path, ...]
    headers: tuple[Dataset, ...]
    affine_lps: np.ndarray
    shape: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` voxel → RAS mm (the :class:`Volume` convention)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    @property
    def series_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(str(h.SOPInstanceUID) for h in self.headers)


# ---------------------------------------------------------------------------- reading
def scan_series(directory: PathLike, series_uid: Optional[str] = None,
                limits: Optional[ReadLimits] = None) -> DicomSeries:
    """Find an image series in ``directory`` (recursively) and work out its geometry.

    Args:
        directory: folder of DICOM files; non-DICOM files and non-image objects (RTSTRUCT, …) are skipped.
        series_uid: ``SeriesInstanceUID`` to read; default: the series with the most slices.
        limits: untrusted input: at most ``limits.max_files`` files, each resolving (symlinks
            followed) inside ``limits.root`` (``None``: inside ``directory``), and no deflate-compressed
            data sets.
    Raises:
        VolumeError: no image series, unknown ``series_uid``, inconsistent slices, duplicate positions
            or non-uniform slice spacing (missing slices); with ``limits``, input beyond them.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VolumeError(f"not a directory: {directory}")
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in _series_files(directory, limits):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                                 "Columns")):
            groups[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    if not groups:
        raise VolumeError(f"{directory}: no DICOM image slices with position/orientation found "
                          "(enhanced multi-frame objects are not supported)")
    if series_uid is None:
        series_uid = max(sorted(groups), key=lambda uid: len(groups[uid]))
        if len(groups) > 1:
            warnings.warn(f"{directory} holds {len(groups)} image series; reading the largest "
                          f"({series_uid}, {len(groups[series_uid])} slices); pass series_uid to choose",
                          stacklevel=2)
    elif series_uid not in groups:
        raise VolumeError(f"{directory}: no image series with SeriesInstanceUID {series_uid} "
                          f"(found {', '.join(sorted(groups))})")
    return _series_geometry(groups[series_uid], directory)


def _series_files(directory: Path, limits: Optional[ReadLimits]) -> list[Path]:
    """The files under ``directory``, sorted; with ``limits``, checked against them (see :func:`scan_series`)."""
    files = (p for p in directory.rglob("*") if p.is_file())
    if limits is None:
        return sorted(files)
    found = sorted(islice(files, limits.max_files + 1))
    if len(found) > limits.max_files:
        raise VolumeError(f"{directory}: the DICOM folder holds more than {limits.max_files} files")
    bound = limits if limits.root is not None else replace(limits, root=directory)
    for path in found:
        if bound.inside(path) is None:
            raise VolumeError(f"{directory}: {path.relative_to(directory)} is a link to a file outside the "
                              "folder this reader may use")
        if _is_deflated(path):
            raise VolumeError(f"{directory}: {path.relative_to(directory)} is a deflate-compressed DICOM data "
                              "set, which is not read from untrusted input")
    return found


def _is_deflated(path: Path) -> bool:
    """Whether ``path`` is a DICOM file whose whole data set is deflated (inflated in memory by pydicom)."""
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return False
    return meta.get("TransferSyntaxUID") == _DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN


def _series_geometry(slices: list[tuple[Path, Dataset]], directory: Path) -> DicomSeries:
    first = slices[0][1]
    for path, ds in slices:
        for key in ("ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if not np.allclose(np.asarray(ds.get(key), float), np.asarray(first.get(key), float), atol=1e-4):
                raise VolumeError(f"{directory}: {path.name} has a different {key} from the rest of the series")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f"{path}: multi-frame images are not supported")
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise VolumeError(f"{directory}: ImageOrientationPatient is not two orthogonal unit vectors")
    normal = np.cross(row, col)
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    step = _slice_step(positions, normal, first, directory)
    d_row, d_col = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * d_col, col * d_row, step, positions[0]
    return DicomSeries(
        files=tuple(slices[i][0] for i in order),
        headers=tuple(slices[i][1] for i in order),
        affine_lps=affine,
        shape=(int(first.Columns), int(first.Rows), len(slices)),
    )


def _slice_step(positions: np.ndarray, normal: np.ndarray, first: Dataset, directory: Path) -> np.ndarray:
    """The ``(3,)`` patient-space step between consecutive slices (uniform, else an error)."""
    if len(positions) == 1:
        thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        return normal * thickness
    gaps = np.diff(positions @ normal)
    if gaps.min() < 1e-3:
        raise VolumeError(f"{directory}: two slices share a position (several acquisitions or echoes in "
                          "one series?); pass series_uid or split the series")
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    tolerance = max(1e-3, 0.01 * float(np.linalg.norm(step)))
    if np.linalg.norm(positions - expected, axis=1).max() > tolerance:
        raise VolumeError(f"{directory}: slice positions are not uniformly spaced (gaps from {gaps.min():.3f} "
                          f"to {gaps.max():.3f} mm): missing slices or mixed series")
    if np.linalg.norm(np.cross(step / np.linalg.norm(step), normal)) > 1e-3:
        warnings.warn(f"{directory}: slices are stacked obliquely to their plane (gantry tilt); "
                      "the volume has a sheared affine", stacklevel=4)
    return step


def read_dicom_series(directory: PathLike, label: bool = False, deidentify: bool = True,
                      series_uid: Optional[str] = None, limits: Optional[ReadLimits] = None) -> Volume:
    """Read a DICOM image series into a :class:`Volume` (float32, or integers with ``label=True``).

    Pixel values go through pydicom's :func:`~pydicom.pixels.apply_modality_lut` (rescale slope and
    intercept, or a Modality LUT Sequence), so CT is in HU. The volume
    is in the series' own layout (``load_volume`` canonicalises it) and carries no DICOM attributes.

    Args:
        directory: folder holding the series (see :func:`scan_series`).
        deidentify: warn (:class:`IdentifyingDataWarning`, once per call site) when the files carry
            identifying attributes; ``False`` for knowingly identifiable work (no warning).
        series_uid: which series to read when the folder holds several (default: the largest).
        limits: untrusted input (see :func:`scan_series`); the declared size (Columns × Rows × slices ×
            bytes per pixel) is also checked against ``limits.max_decoded_bytes`` before decoding.
    Raises:
        VolumeError: see :func:`scan_series`; absurd geometry (:func:`~fewshotcx.io.grid.check_geometry`);
            undecodable pixel data.
    """
    series = scan_series(directory, series_uid, limits)
    check_geometry(series.affine, str(directory))
    if limits is not None:
        limits.check_size(series.shape, max(_pixel_bytes(ds) for ds in series.headers), str(directory))
    if deidentify and has_identifiers(series.headers[0]):
        warnings.warn(IDENTIFIERS_WARNING, IdentifyingDataWarning, stacklevel=2)
    array = np.empty(series.shape, dtype=np.float32)
    for k, path in enumerate(series.files):
        ds = pydicom.dcmread(path)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # decoders raise many types for unsupported transfer syntaxes
            raise VolumeError(f"{path}: cannot decode pixel data ({ds.file_meta.get('TransferSyntaxUID')}): "
                              f"{exc}") from None
        array[:, :, k] = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64).T
    vol = Volume(array, series.affine, label=label)
    vol.source = SourceGeometry(vol.shape, vol.affine.copy(), None, str(directory))
    return vol


def _pixel_bytes(ds: Dataset) -> int:
    """Declared bytes per pixel of one slice (samples × bits allocated, rounded up to bytes)."""
    bits = int(ds.get("BitsAllocated", 16) or 16)
    return int(ds.get("SamplesPerPixel", 1) or 1) * -(-bits // 8)
