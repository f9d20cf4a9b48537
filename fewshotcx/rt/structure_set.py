"""Reading an RT Structure Set file defensively: every attribute the readers use is checked here, so a
corrupt or unusual file is a one-line :class:`~fewshotcx.io.grid.VolumeError` naming the file (and the
ROI where there is one), never a ``KeyError``/``AttributeError`` from deep inside pydicom."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..io.grid import PathLike, VolumeError


def read_structure_set(rtstruct_path: PathLike) -> Dataset:
    """The RT Structure Set dataset of a file, every element decoded (contours as DICOM values).

    Raises:
        VolumeError: not readable as DICOM (missing, truncated, corrupt), or not an RT Structure Set.
    """
    name = Path(rtstruct_path).name
    try:
        ds = pydicom.dcmread(rtstruct_path)
        ds.walk(lambda *_: None)  # decode every element now, so that a corrupt value fails here
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt bytes; all mean the same
        if isinstance(exc, OSError) and exc.strerror:  # missing, unreadable: the system's own words
            raise VolumeError(f"cannot read {name}: {exc.strerror}") from None
        detail = " ".join(str(exc).split("Traceback")[0].split())[:200]  # pydicom may append a trace
        raise VolumeError(f"{name} is not a readable DICOM file ({type(exc).__name__}: {detail})") from None
    if ds.get("Modality") != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise VolumeError(f"{name} is not an RT Structure Set (Modality {ds.get('Modality')!r})")
    sequence(ds, "StructureSetROISequence", name)
    return ds


def sequence(item: Dataset, keyword: str, where: str) -> list[Dataset]:
    """The items of the sequence ``keyword`` of ``item`` (``[]`` when absent).

    Raises:
        VolumeError: the attribute is there but not a sequence of items (``where`` starts the message).
    """
    value = item.get(keyword)
    if value is None:
        return []
    if not isinstance(value, Sequence) or not all(isinstance(x, Dataset) for x in value):
        raise VolumeError(f"{where}: {keyword} is not a DICOM sequence")
    return list(value)


def number(item: Dataset, keyword: str, where: str) -> int:
    """The integer attribute ``keyword`` of ``item``; a VolumeError when absent or not an integer."""
    value = item.get(keyword)
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise VolumeError(f"{where}: {keyword} is {value!r}, not a number") from None


def text(item: Dataset, keyword: str, where: str) -> str:
    """The text attribute ``keyword`` of ``item``; a VolumeError when absent."""
    value = item.get(keyword)
    if value is None or isinstance(value, (Sequence, bytes)):
        raise VolumeError(f"{where}: an item has no {keyword}")
    return str(value)


def roi_table(ds: Dataset, where: str, frame: str = "") -> dict[int, tuple[str, str]]:
    """``{ROINumber: (ROIName, frame of reference UID)}`` of a structure set in file order (``frame``
    where an ROI names none)."""
    return {number(r, "ROINumber", where): (text(r, "ROIName", where),
                                            str(r.get("ReferencedFrameOfReferenceUID") or frame))
            for r in sequence(ds, "StructureSetROISequence", where)}


def referenced_series(ds: Dataset) -> tuple[Optional[str], Optional[str]]:
    """``(SeriesInstanceUID, FrameOfReferenceUID)`` an RTSTRUCT dataset refers to (None where absent)."""
    where = "the RTSTRUCT's referenced frame of reference"
    for frame in sequence(ds, "ReferencedFrameOfReferenceSequence", where):
        frame_uid = str(frame.get("FrameOfReferenceUID") or "") or None
        for study in sequence(frame, "RTReferencedStudySequence", where):
            for series in sequence(study, "RTReferencedSeriesSequence", where):
                return str(series.get("SeriesInstanceUID") or "") or None, frame_uid
        return None, frame_uid
    return None, None


def contour_points(contour: Dataset, where: str) -> np.ndarray:
    """``(N, 3)`` float64 ``ContourData`` of a contour item, in patient millimetres.

    Raises:
        VolumeError: ContourData absent or empty, not numbers, a count not a multiple of 3, or a NaN
            or infinite coordinate (``where``, naming file, ROI and contour, starts the message).
    """
    value = contour.get("ContourData")
    try:
        values = np.asarray([] if value is None else value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise VolumeError(f"{where}: ContourData is not a list of numbers") from None
    if values.size == 0:
        raise VolumeError(f"{where}: ContourData is empty")
    if values.size % 3:
        raise VolumeError(f"{where}: ContourData holds {values.size} values, not a multiple of 3 (x, y, z per point)")
    if not np.isfinite(values).all():
        raise VolumeError(f"{where}: ContourData holds a NaN or infinite coordinate")
    return values.reshape(-1, 3)
