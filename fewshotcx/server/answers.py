"""What the session routes answer: a session's state as JSON (:func:`session_info`) and a contour as
a file (:func:`export`), for ``/result`` and ``/accept`` alike."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from fastapi.responses import Response

from ..io.volume import Volume, save_volume
from ..rt.names import default_name
from ..rt.rtstruct import write_rtstruct
from .guard import HTTPError
from .store import Entry
from .wire import nifti_bytes

OCTETS = "application/octet-stream"
#: ``?format=`` values of the routes that return a contour.
FORMATS = ("nifti", "canonical", "rtstruct")


def session_info(entry: Entry) -> dict:
    """A session's state: ``shape`` (the image's own), ``drawn`` (own indices), ``prompts`` (boxes,
    clicks and scribbles so far), ``fitted`` (whether the result starts from the server's fitted model,
    ``fewshotcx serve --support``), ``completes_slices`` (whether drawn slices can be completed and a
    slice suggested: ``False`` for ``serve --backend atlas``), ``classes`` (declared label values;
    ``labels``, its deprecated name, too), ``dicom``; and for the viewer, which shows the canonical
    image, ``canonical_shape`` and ``axes``: per own array axis, ``[canonical axis, ±1]`` (``-1``:
    reversed), so own slice ``k`` is canonical slice ``k`` or ``Z-1-k``
    (:class:`~fewshotcx.io.grid.AxialSlices`)."""
    s = entry.session
    declared = None if s.declared is None else list(s.declared)
    return {"session_id": entry.id, "name": entry.name, "shape": list(s.original.shape), "drawn": s.drawn,
            "prompts": len(s.prompts), "fitted": s.segmenter.fitted is not None,
            "completes_slices": s.completes_slices,
            "classes": declared, "labels": declared, "dicom": entry.dicom_dir is not None,
            "canonical_shape": list(s.image.shape), "axes": s.slices.orientation.tolist()}


def has_result(entry: Entry) -> bool:
    """Whether the session has a result to show yet: a fitted model, a drawn slice or a prompt."""
    s = entry.session
    return s.segmenter.fitted is not None or bool(s.drawn) or bool(s.prompts)


def check_format(entry: Entry, format: str) -> None:
    """Refuse a ``?format=`` that is not one of :data:`FORMATS`, or ``rtstruct`` for a non-DICOM image.

    Raises:
        HTTPError: 400.
    """
    if format not in FORMATS:
        raise HTTPError(400, f"format must be nifti, canonical or rtstruct, got {format!r}")
    if format == "rtstruct" and entry.dicom_dir is None:
        raise HTTPError(400, "RTSTRUCT export needs a DICOM image; this session's image is not DICOM")


def export(entry: Entry, volume: Volume, format: str) -> Response:
    """The contour as NIfTI (its own layout or canonical) or an RTSTRUCT file's bytes."""
    if format == "canonical":
        canonical = volume.canonical()
        return Response(nifti_bytes(canonical.array.astype(np.uint8), canonical.affine), media_type=OCTETS)
    with tempfile.TemporaryDirectory(dir=entry.folder) as tmp:
        if format == "nifti":
            out = save_volume(volume, Path(tmp) / "result.nii.gz")
        else:
            masks = {default_name(v): volume.with_array((volume.array == v).astype(np.uint8), label=True)
                     for v in np.unique(volume.array) if v}
            if not masks:
                raise ValueError("the result is empty: nothing to write as RTSTRUCT")
            out = write_rtstruct(masks, entry.dicom_dir, Path(tmp) / "result.dcm")
        return Response(out.read_bytes(), media_type=OCTETS)
