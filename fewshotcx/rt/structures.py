"""Named structures: previous plans (CT series + RTSTRUCT) in, named label maps and RTSTRUCTs out.

A :class:`StructureSet` is an image, a label map on its grid and the structure names: value ``i``
(1-based) of the label map is ``names[i - 1]``. It is what :func:`read_structures` makes from a
previous plan and what :meth:`fewshotcx.Segmenter.fit` takes (``images=[s.image]``,
``labels=[s.labels]``); a prediction from such a support has the same values, so
:func:`write_structures` and :func:`save_labels` name them.

Name sidecar
------------
:func:`save_labels` writes ``X.nii.gz`` and, beside it, ``X.structures.json``::

    {"format": "fewshotcx-structures/1",
     "structures": [{"value": 1, "name": "Lung_L", "tg263": "Lung_L", "type": "ORGAN",
                     "colour": [100, 150, 255]}, ...]}

``value`` is the voxel value, ``name`` the structure name as requested, ``tg263`` its TG-263 primary
name when known (else null), ``type`` its ``RTROIInterpretedType``, ``colour`` RGB 0-255.
:func:`load_labels` reads both back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import pydicom

from ..io.atomic import atomic_output
from ..io.dicom import deidentify_dataset, read_dicom_series, scan_series, write_dataset
from ..io.grid import PathLike, Volume, VolumeError
from .rtstruct import read_rtstruct, write_rtstruct
from .structure_set import read_structure_set, referenced_series, roi_table
from ..io.volume import load_volume, save_volume
from .names import check_names, default_names, display_colour, interpreted_type, match_structure, tg263_name

if TYPE_CHECKING:
    from .templates import Template

SIDECAR_FORMAT = "fewshotcx-structures/1"


@dataclass(frozen=True)
class StructureSet:
    """An image with named structures.

    Attributes:
        image: the image Volume (closest-canonical RAS, float32 ``(X, Y, Z)``).
        labels: uint8 label map on the image's grid; value ``i`` is ``names[i - 1]``, 0 background.
        names: structure names, as requested.
        rois: the ROI name each structure was read from (same order; equal to ``names`` when written).
    """

    image: Volume
    labels: Volume
    names: tuple[str, ...]
    rois: tuple[str, ...]

    def masks(self) -> dict[str, Volume]:
        """``{name: uint8 mask Volume}`` on the image's grid."""
        return {name: self.labels.with_array((self.labels.array == i).astype(np.uint8), label=True)
                for i, name in enumerate(self.names, start=1)}


def rtstruct_rois(rtstruct: PathLike) -> tuple[pydicom.Dataset, list[str]]:
    """The RTSTRUCT dataset (without contours read into arrays) and its ROI names in file order.

    Raises:
        VolumeError: not readable as DICOM, or not an RT Structure Set.
    """
    ds = read_structure_set(rtstruct)
    return ds, [name for name, _ in roi_table(ds, Path(rtstruct).name).values()]


def is_rtstruct(path: PathLike) -> bool:
    """Whether ``path`` is a file holding a DICOM RT Structure Set."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        return pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality") == "RTSTRUCT"
    except Exception:  # noqa: BLE001 - pydicom raises many types on corrupt bytes: none is a readable RTSTRUCT
        return False


def _check_same_series(rtstruct: PathLike, ds: pydicom.Dataset, series_dir: PathLike) -> str:
    """The series UID to read from ``series_dir``; a one-line VolumeError when the RTSTRUCT is on another."""
    series_uid, frame = referenced_series(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # several series: resolved below by the referenced UID
        try:
            found = scan_series(series_dir, series_uid)
        except VolumeError:
            found = scan_series(series_dir)
            raise VolumeError(f"{rtstruct} is drawn on series {series_uid}, but {series_dir} holds series "
                              f"{found.series_uid}: give the CT series the RTSTRUCT was drawn on") from None
    own_frame = str(found.headers[0].get("FrameOfReferenceUID", ""))
    if frame and own_frame and frame != own_frame:
        raise VolumeError(f"{rtstruct} is in frame of reference {frame}, {series_dir} in {own_frame}: "
                          "give the CT series the RTSTRUCT was drawn on")
    return found.series_uid


def read_structures(rtstruct: PathLike, series: PathLike, names: Sequence[str]) -> StructureSet:
    """A previous plan as support: the named ROIs of ``rtstruct`` as one label map on ``series``.

    ROIs are found by :func:`fewshotcx.rt.names.match_structure` (case, spaces, underscores and
    TG-263 synonyms: ``Lung_L`` finds ``Lung-Left``). Voxels inside several of the structures take the
    value of the one listed last (a warning counts them): list a GTV after the lung it lies in.

    Args:
        rtstruct: the RT Structure Set file.
        series: folder of the CT series the RTSTRUCT was drawn on.
        names: structures to read, in label-value order (``names[0]`` → 1).
    Returns:
        a :class:`StructureSet` (image and labels in closest-canonical RAS).
    Raises:
        ValueError: a name matching no ROI (the message lists the RTSTRUCT's ROI names) or several,
            two names for one ROI or one structure. VolumeError: not an RTSTRUCT, drawn on another
            series, or a requested ROI without any contour on the series.
    """
    names = check_names(names)
    ds, available = rtstruct_rois(rtstruct)
    rois = [match_structure(name, available, source=str(rtstruct)) for name in names]
    for i, roi in enumerate(rois):
        if roi in rois[:i]:
            raise ValueError(f"structures {names[rois.index(roi)]!r} and {names[i]!r} both match ROI {roi!r} "
                             f"of {rtstruct}")
    series_uid = _check_same_series(rtstruct, ds, series)
    masks = read_rtstruct(rtstruct, series, names=set(rois))
    image = read_dicom_series(series, series_uid=series_uid).canonical()
    array = np.zeros(image.shape, dtype=np.uint8)
    overlap = 0
    for value, (name, roi) in enumerate(zip(names, rois), start=1):
        mask = masks[roi].array.astype(bool)
        if not mask.any():
            raise VolumeError(f"ROI {roi!r} of {rtstruct} (for {name!r}) has no contour on series {series}")
        overlap += int(np.count_nonzero(mask & (array > 0)))
        array[mask] = value
    if overlap:
        warnings.warn(f"{rtstruct}: {overlap} voxels lie in several of {', '.join(names)}; each takes the "
                      "structure listed last", stacklevel=2)
    labels = image.with_array(array, label=True)
    return StructureSet(image=image, labels=labels, names=tuple(names), rois=tuple(rois))


def sidecar_path(path: PathLike) -> Path:
    """``X.nii.gz`` / ``X.nii`` / ``X.nrrd`` → ``X.structures.json`` beside it."""
    p = Path(path)
    stem = p.name
    for suffix in (".nii.gz", ".nii", ".seg.nrrd", ".nrrd"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return p.with_name(f"{stem}.structures.json")


def structure_entries(names: Sequence[str]) -> list[dict]:
    """The sidecar's ``structures`` list for ``names`` (values 1..N)."""
    return [{"value": i, "name": name, "tg263": tg263_name(name), "type": interpreted_type(name),
             "colour": list(display_colour(name, i - 1))} for i, name in enumerate(names, start=1)]


def save_labels(labels: Volume, names: Sequence[str], path: PathLike, overwrite: bool = False) -> Path:
    """Write a named label map and its ``.structures.json`` sidecar (both atomically).

    Raises:
        FileExistsError: either file exists and ``overwrite`` is False. ValueError: bad names, or
            label values above ``len(names)``.
    """
    names = check_names(names)
    sidecar = sidecar_path(path)
    if sidecar.exists() and not overwrite:
        raise FileExistsError(f"{sidecar} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if int(labels.array.max(initial=0)) > len(names):
        raise ValueError(f"the label map has value {int(labels.array.max())} but only {len(names)} names")
    out = save_volume(labels, path, overwrite=overwrite)
    with atomic_output(sidecar, overwrite) as tmp:
        Path(tmp).write_text(sidecar_text(names), encoding="utf-8")
    return out


def sidecar_text(names: Sequence[str]) -> str:
    """The ``.structures.json`` sidecar naming label values 1..N (JSON text, newline-terminated)."""
    return json.dumps({"format": SIDECAR_FORMAT, "structures": structure_entries(names)}, indent=1) + "\n"


def load_labels(path: PathLike) -> tuple[Volume, list[str]]:
    """A label map and its names: from the sidecar when there is one, else ``label_<value>``."""
    labels = load_volume(path, label=True)
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        values = [int(v) for v in np.unique(labels.array) if v]
        return labels, default_names(max(values, default=0))
    try:
        entries = json.loads(sidecar.read_text(encoding="utf-8"))["structures"]
        by_value = {int(e["value"]): str(e["name"]) for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{sidecar} is not a structure sidecar ({SIDECAR_FORMAT}): {exc}") from None
    if sorted(by_value) != list(range(1, len(by_value) + 1)):
        raise ValueError(f"{sidecar}: values must run 1..N, got {sorted(by_value)}")
    return labels, [by_value[v] for v in range(1, len(by_value) + 1)]


def support_from(image: PathLike, labels: PathLike, names: Sequence[str]) -> tuple[Volume, Volume]:
    """One support pair for :meth:`~fewshotcx.Segmenter.fit` with values ``1..len(names)`` in ``names`` order.

    Args:
        image: the CT series folder (or, with a label map, any volume).
        labels: an RTSTRUCT drawn on ``image`` (:func:`read_structures`), or a label map with a
            ``.structures.json`` sidecar whose names are matched like ROI names.
    Raises:
        ValueError: a label map without a sidecar, or a name it does not have.
    """
    if is_rtstruct(labels):
        found = read_structures(labels, image, names)
        return found.image, found.labels
    volume, own = load_labels(labels)
    if not sidecar_path(labels).is_file():
        raise ValueError(f"{labels}: naming structures needs an RTSTRUCT or a label map with a "
                         f"{sidecar_path(labels).name} sidecar")
    names = check_names(names)
    array = np.zeros(volume.shape, dtype=np.uint8)
    for value, name in enumerate(names, start=1):
        array[volume.array == own.index(match_structure(name, own, source=str(labels))) + 1] = value
    return load_volume(image), volume.with_array(array, label=True)


def structure_masks(path: PathLike, image: PathLike) -> dict[str, Volume]:
    """``{name: mask}`` of an RTSTRUCT (rasterised on the series ``image``) or a named label map.

    Raises:
        ValueError: an RTSTRUCT with two ROIs of the same name. VolumeError: unreadable input,
            RTSTRUCT on another series.
    """
    if is_rtstruct(path):
        ds, names = rtstruct_rois(path)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{path} has several ROIs named {', '.join(map(repr, twice))}")
        _check_same_series(path, ds, image)
        return read_rtstruct(path, image)
    labels, names = load_labels(path)
    return {name: labels.with_array((labels.array == i).astype(np.uint8), label=True)
            for i, name in enumerate(names, start=1)}


def write_structures(labels: Volume, names: Sequence[str], series: PathLike, out: PathLike,
                     overwrite: bool = False, deidentify: bool = False,
                     template: Optional["Template"] = None) -> Path:
    """A named label map on a DICOM series as an RTSTRUCT a planning system files with that CT.

    By default the RTSTRUCT is in the series' patient and study (PatientName/ID, birth date, sex,
    StudyInstanceUID, study date/ID, FrameOfReferenceUID copied from the CT). Each structure carries
    its name as given, ``RTROIInterpretedType`` and colour from :mod:`fewshotcx.rt.names`. A structure
    with no voxel is kept as an ROI without contours (with a warning).

    Args:
        labels: label map on the series' grid (any voxel layout), values ``1..len(names)``.
        names: structure names, value ``i`` → ``names[i - 1]``.
        series: the DICOM CT series folder (the query).
        out: the RTSTRUCT file to write.
        deidentify: PS3.15 Basic Profile with Retain UIDs instead of the CT's identity: the file then
            belongs with a copy of the series made by :func:`deidentify_series`.
        template: a :class:`~fewshotcx.rt.templates.Template`: ROIs in its order with its colours and
            interpreted types, and its derived structures (e.g. PTV = CTV + margin) whose source is named.
    Raises:
        FileExistsError, ValueError (names), VolumeError (labels off the series grid).
    """
    names = check_names(names)
    masks = {name: labels.with_array((labels.array == i).astype(np.uint8), label=True)
             for i, name in enumerate(names, start=1)}
    empty = [name for name, mask in masks.items() if not mask.array.any()]
    if empty:
        warnings.warn(f"no voxels for {', '.join(empty)}: written as ROIs without contours", stacklevel=2)
    entries = structure_entries(names)
    types, colours = {e["name"]: e["type"] for e in entries}, {e["name"]: e["colour"] for e in entries}
    if template is not None:
        masks = template.masks(labels, names)
        types.update(template.types())
        colours.update(template.colours())
    return write_rtstruct(masks, series, out, overwrite=overwrite, deidentify=deidentify,
                          roi_types=types, colours=colours)


def deidentify_series(series: PathLike, out_dir: PathLike, overwrite: bool = False) -> list[Path]:
    """A copy of a DICOM series de-identified exactly as :func:`write_structures` (``deidentify=True``)
    de-identifies its RTSTRUCT (PS3.15 Basic Profile, Retain UIDs), so the two still fit together.

    Raises:
        FileExistsError: ``out_dir`` holds files and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (CLI: --overwrite) to write into it")
    found = scan_series(series)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write_dataset(deidentify_dataset(pydicom.dcmread(path)), out_dir / f"slice_{k:04d}.dcm", overwrite=True)
            for k, path in enumerate(found.files)]

