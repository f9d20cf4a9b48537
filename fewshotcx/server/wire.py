"""The server's byte formats, shared by :mod:`fewshotcx.server` and the torch-free client.

A slice travels as raw ``uint8`` label values of the image's own slice ``array[:, :, k]``, ``(X, Y)``
of the file as stored (docs/geometry.md, "Slice indices"; changed in 0.4.0, the canonical slice
before), with ``x`` varying fastest (NIfTI / NiiVue voxel order), ``X·Y`` bytes. The viewer's whole
drawing (``GET /sessions/{id}/drawing``) is the canonical volume that ``/image`` shows, ``X·Y·Z``
bytes in the same order. Nothing here imports torch, fastapi or pickle.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

import nibabel as nib
import numpy as np

#: Largest label value a slice can carry on the wire (``uint8``).
MAX_WIRE_LABEL = 255


def encode_mask(mask: np.ndarray) -> bytes:
    """``(X, Y)`` (or ``(X, Y, Z)``) integer label values → ``uint8`` bytes, x fastest.

    Raises:
        ValueError: values that are not whole numbers in ``[0, 255]``.
    """
    array = np.asarray(mask)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.size and (not np.all(np.isfinite(array)) or np.any(array != np.round(array))
                       or array.min() < 0 or array.max() > MAX_WIRE_LABEL):
        raise ValueError(f"mask values must be whole numbers in [0, {MAX_WIRE_LABEL}]")
    return np.asarray(array, dtype=np.uint8).tobytes(order="F")


def decode_mask(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """Bytes from :func:`encode_mask` → an ``int64`` array of ``shape``.

    Raises:
        ValueError: the byte count is not ``prod(shape)``.
    """
    shape = tuple(int(n) for n in shape)
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"mask has {len(data)} bytes; a {'x'.join(map(str, shape))} slice needs {expected} "
                         "(uint8, x fastest)")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape, order="F").astype(np.int64)


def nifti_bytes(array: np.ndarray, affine: np.ndarray, compress: bool = True) -> bytes:
    """A NIfTI-1 file (gzipped unless ``compress=False``) holding ``array`` with ``affine``, in memory."""
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=1) if compress else raw


def zip_directory(directory: Path) -> bytes:
    """Every file under ``directory`` (e.g. a DICOM series) as a zip archive in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


def safe_extract(archive_path: Path, target: Path, max_bytes: int, max_members: int = 4096) -> None:
    """Extract a zip archive into ``target``, refusing absolute or ``..`` member names, links, more
    than ``max_members`` members and archives that unpack to more than ``max_bytes``.

    The size is checked twice: the sizes the archive declares, before anything is written, and the
    bytes actually written, while extracting (a declared size can lie).

    Raises:
        ValueError: not a zip archive, an unsafe member, too many members or too large once unpacked.
    """
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError):
        raise ValueError("the upload is not a valid zip archive") from None
    too_large = f"the zip archive unpacks to more than the limit of {max_bytes} bytes"
    with archive:
        members = archive.infolist()
        if len(members) > max_members:
            raise ValueError(f"the zip archive holds more than {max_members} members")
        if sum(m.file_size for m in members) > max_bytes:
            raise ValueError(too_large)
        for member in members:
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or (member.external_attr >> 28) == 0o12:
                raise ValueError(f"unsafe member in the zip archive: {member.filename!r}")
        written = 0
        try:
            for member in members:
                written += _extract_member(archive, member, target, max_bytes - written)
        except _TooLarge:
            raise ValueError(too_large) from None
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise ValueError(f"corrupt zip archive ({' '.join(str(exc).split())})") from None


class _TooLarge(Exception):
    """A zip member wrote more bytes than the archive had left of its limit."""


def _extract_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Write one (already checked) member under ``target``; the bytes written, at most ``budget``."""
    path = target.joinpath(*PurePosixPath(member.filename).parts)
    if member.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(member) as source, open(path, "wb") as out:
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > budget:
                raise _TooLarge
            out.write(chunk)
    return written
