"""Reading and writing volumes: NIfTI, NRRD and DICOM series in, NIfTI out.

:func:`load_volume` returns a :class:`~fewshotcx.io.grid.Volume` in the *closest canonical RAS*
layout and remembers the file's geometry; :func:`save_volume` undoes the permutation and writes the
*original* affine and header, so an unchanged volume round-trips bit for bit. The volume types are
defined in :mod:`fewshotcx.io.grid` and re-exported here.
"""

from __future__ import annotations

import bz2
import gzip
import os
from pathlib import Path
from typing import IO, Optional, Union

import nibabel as nib
import numpy as np

from .atomic import atomic_output
from .dicom import read_dicom_series
from .grid import (PathLike, SourceGeometry, Volume, VolumeError, binary_mask, check_geometry, check_pair,
                   label_dtype, reorient_array)
from .limits import ReadLimits

__all__ = ["NRRD_SPACES", "PathLike", "ReadLimits", "SourceGeometry", "Volume", "VolumeError", "binary_mask",
           "check_pair", "label_dtype", "load_volume", "reorient_array", "save_volume"]

_IDENTIFYING_NIFTI_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")


#: NRRD ``space`` values fewshotcx reads → the sign flips from that space to RAS.
NRRD_SPACES = {"left-posterior-superior": (-1, -1, 1), "right-anterior-superior": (1, 1, 1),
               "left-anterior-superior": (-1, 1, 1)}


def load_volume(path: Union[PathLike, Volume], label: bool = False, canonical: bool = True,
                nrrd_space: Optional[str] = None, limits: Optional[ReadLimits] = None) -> Volume:
    """Read a volume from NIfTI (``.nii``/``.nii.gz``), NRRD (``.nrrd``/``.seg.nrrd``) or a DICOM
    series directory, returned in closest-canonical RAS unless ``canonical=False``.

    Args:
        path: file or directory; a :class:`Volume` is passed through (canonicalised if asked).
        label: read as an integer label map (values must be whole, non-negative numbers).
        nrrd_space: the world space of an NRRD file that has no ``space`` field (one of
            :data:`NRRD_SPACES`); without it such a file is refused rather than assumed LPS.
        limits: read ``path`` as untrusted input (:class:`~fewshotcx.io.limits.ReadLimits`): no file
            it names is read outside ``limits.root``, and sizes are checked before decoding.
            ``None`` (local files): detached NRRD data and NIfTI ``.hdr``/``.img`` pairs are followed.
    Raises:
        VolumeError: unreadable file, not 3D (4D images are refused rather than guessed at),
            non-integer label values, an NRRD without ``space`` and no ``nrrd_space``, absurd
            geometry (:func:`~fewshotcx.io.grid.check_geometry`, always checked) or, with ``limits``,
            input beyond them.
    """
    if isinstance(path, Volume):
        vol = Volume(path.array, path.affine, label or path.label, path.source)
        return vol.canonical() if canonical else vol
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"no such file or directory: {p}")
    name = p.name.lower()
    if p.is_dir():
        vol = read_dicom_series(p, label=label, limits=limits)
    elif name.endswith(".nrrd") or name.endswith(".nhdr"):
        vol = _read_nrrd(p, label, nrrd_space, limits)
    else:
        vol = _read_nifti(p, label, limits)
    return vol.canonical() if canonical else vol


#: The only NIfTI files read as untrusted input: single files (no ``.hdr`` naming an ``.img``).
_SINGLE_FILE_NIFTI = (".nii", ".nii.gz")


def _read_nifti(path: Path, label: bool, limits: Optional[ReadLimits] = None) -> Volume:
    if limits is not None:
        if not path.name.lower().endswith(_SINGLE_FILE_NIFTI):
            raise VolumeError(f"{path}: only single-file NIfTI (.nii, .nii.gz) is read from untrusted input")
        if path.name.lower().endswith(".gz"):
            limits.check_gzip_length(path, str(path))
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt input
        raise VolumeError(f"cannot read {path} as NIfTI: {_short(exc)}") from None
    if limits is not None:
        limits.check_size(img.shape, img.get_data_dtype().itemsize, str(path))
    check_geometry(img.affine, str(path))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise VolumeError(f"cannot read {path} as NIfTI: {_short(exc)}") from None
    data = _squeeze_to_3d(data, path)
    if not label:
        data = np.asarray(data, dtype=np.float32)
    header = img.header.copy() if isinstance(img.header, nib.Nifti1Header) else None
    vol = Volume(data, img.affine, label)
    vol.source = SourceGeometry(vol.shape, vol.affine.copy(), header, str(path))
    return vol


def _read_nrrd(path: Path, label: bool, nrrd_space: Optional[str] = None,
               limits: Optional[ReadLimits] = None) -> Volume:
    import nrrd

    try:
        with open(path, "rb") as fh:
            header = nrrd.read_header(fh)
            affine = _nrrd_affine(header, path, nrrd_space)
            if limits is None:
                data = nrrd.read_data(header, fh, str(path))
            else:
                data = _read_untrusted_nrrd_data(header, fh, path, limits)
    except VolumeError:
        raise
    except Exception as exc:
        raise VolumeError(f"cannot read {path} as NRRD: {_short(exc)}") from None
    data = _squeeze_to_3d(np.asarray(data), path)
    vol = Volume(data if label else data.astype(np.float32), affine, label)
    vol.source = SourceGeometry(vol.shape, affine.copy(), None, str(path))
    return vol


def _nrrd_affine(header: dict, path: Path, nrrd_space: Optional[str]) -> np.ndarray:
    """The RAS voxel-to-world matrix of an NRRD header (checked by :func:`check_geometry`)."""
    directions = np.asarray(header.get("space directions"), dtype=np.float64)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if directions.shape != (3, 3) or not np.all(np.isfinite(directions)):
        raise VolumeError(f"{path}: NRRD lacks a 3x3 'space directions' field")
    if "space" not in header and nrrd_space is None:
        raise VolumeError(f"{path}: NRRD has no 'space' field, so its orientation is unknown; pass "
                          f"nrrd_space= (one of {', '.join(NRRD_SPACES)}) if you know it")
    space = str(header.get("space", nrrd_space)).lower()
    flip = NRRD_SPACES.get(space)
    if flip is None:
        raise VolumeError(f"{path}: unsupported NRRD space '{space}' (expected one of {', '.join(NRRD_SPACES)})")
    if origin.shape != (3,):
        raise VolumeError(f"{path}: NRRD 'space origin' is not a 3-vector")
    affine = np.eye(4)
    affine[:3, :3] = np.diag(flip) @ directions.T  # columns = world step per voxel index
    affine[:3, 3] = np.asarray(flip) * origin
    check_geometry(affine, str(path))
    return affine


#: NRRD ``type`` names → numpy scalar types (the NRRD specification's aliases; ``block`` is not read).
_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t"), np.int8),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), np.uint8),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), np.int16),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), np.uint16),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), np.int32),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), np.uint32),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t"), np.int64),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
                    np.uint64),
    "float": np.float32, "double": np.float64,
}
_TEXT_ENCODINGS = ("ascii", "text", "txt")
_MAX_SKIPPED_LINE = 1 << 16


def _read_untrusted_nrrd_data(header: dict, fh: IO[bytes], path: Path, limits: ReadLimits) -> np.ndarray:
    """The ``(X, Y, Z, ...)`` data of an untrusted NRRD: size checked against ``limits`` from the
    header before decoding, decompressed only up to the declared size, and a ``data file`` read only
    when it resolves inside ``limits.root`` (never named in a message)."""
    what = str(path)
    sizes = [int(n) for n in header["sizes"]]
    dtype = _nrrd_dtype(header, what)
    limits.check_size(sizes, dtype.itemsize, what)
    named = header.get("data file", header.get("datafile"))
    if named is None:
        return _nrrd_payload(header, fh, dtype, sizes, what, limits)
    target = limits.inside(path.parent / str(named))
    if target is None:
        raise VolumeError(f"{what}: the NRRD header names a separate data file, which is read only when it "
                          "lies inside the folder this reader may use (never for uploads)")
    with open(target, "rb") as data_fh:
        return _nrrd_payload(header, data_fh, dtype, sizes, what, limits)


def _nrrd_dtype(header: dict, what: str) -> np.dtype:
    scalar = _NRRD_TYPES.get(str(header["type"]).lower())
    if scalar is None:
        raise VolumeError(f"{what}: unsupported NRRD type {header['type']!r}")
    dtype = np.dtype(scalar)
    if dtype.itemsize == 1 or str(header["encoding"]).lower() in _TEXT_ENCODINGS:
        return dtype
    endian = {"little": "<", "big": ">"}.get(str(header.get("endian", "")).lower())
    if endian is None:
        raise VolumeError(f"{what}: NRRD 'endian' must be 'little' or 'big' for multi-byte data")
    return dtype.newbyteorder(endian)


def _nrrd_payload(header: dict, fh: IO[bytes], dtype: np.dtype, sizes: list[int], what: str,
                  limits: ReadLimits) -> np.ndarray:
    """Read exactly ``prod(sizes)`` values from ``fh`` (positioned after the header)."""
    encoding = str(header["encoding"]).lower()
    line_skip = int(header.get("line skip", header.get("lineskip", 0)))
    byte_skip = int(header.get("byte skip", header.get("byteskip", 0)))
    count = int(np.prod(sizes, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if line_skip < 0 or byte_skip < -1 or (byte_skip == -1 and encoding != "raw"):
        raise VolumeError(f"{what}: unsupported NRRD line skip / byte skip for this input")
    for _ in range(line_skip):
        fh.readline(_MAX_SKIPPED_LINE)
    if encoding in _TEXT_ENCODINGS:
        data = np.fromfile(fh, dtype, count=count, sep=" ")
    elif encoding == "raw":
        fh.seek(-nbytes if byte_skip == -1 else byte_skip, os.SEEK_END if byte_skip == -1 else os.SEEK_CUR)
        data = _read_exactly(fh, nbytes, what).view(dtype)
    elif encoding in ("gzip", "gz", "bzip2", "bz2"):
        if byte_skip + nbytes > limits.max_decoded_bytes:
            raise VolumeError(f"{what}: NRRD byte skip plus data exceed the limit of {limits.max_decoded_bytes} bytes")
        stream = gzip.GzipFile(fileobj=fh) if encoding.startswith("gz") else bz2.BZ2File(fh)
        with stream:
            _read_exactly(stream, byte_skip, what)
            data = _read_exactly(stream, nbytes, what).view(dtype)
    else:
        raise VolumeError(f"{what}: unsupported NRRD encoding {header['encoding']!r}")
    if data.size != count:
        raise VolumeError(f"{what}: the NRRD data is shorter than its header declares")
    return data.reshape(sizes, order="F")


def _read_exactly(stream: IO[bytes], nbytes: int, what: str) -> np.ndarray:
    """The next ``nbytes`` bytes of ``stream`` as a ``uint8`` array.

    Raises:
        VolumeError: the stream ends first.
    """
    buffer = np.empty(nbytes, dtype=np.uint8)
    view, got = memoryview(buffer), 0
    while got < nbytes:
        n = stream.readinto(view[got:])
        if not n:
            raise VolumeError(f"{what}: the NRRD data is shorter than its header declares")
        got += n
    return buffer


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)} "
                          "(split 4D series into 3D volumes first)")
    return data


def save_volume(
    volume: Volume,
    path: PathLike,
    overwrite: bool = False,
    keep_identifiers: bool = False,
    dtype: Optional[np.dtype] = None,
) -> Path:
    """Write ``volume`` to NIfTI in the layout and affine of its source.

    The write is atomic (a temporary file in the target directory, then a rename), so a failure never
    leaves a partial file. Identifying free-text header fields (``descrip``, ``aux_file``, ``db_name``,
    ``intent_name``) are cleared unless ``keep_identifiers=True``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: the output directory does not exist.
    """
    path = Path(path)
    if path.exists() and not overwrite:  # fail before any work
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out = volume.to_source()
    header = volume.source.header.copy() if volume.source is not None and volume.source.header is not None else None
    array = out.array
    if dtype is not None:
        array = array.astype(dtype)
    elif out.label:
        array = array.astype(label_dtype(int(array.max(initial=0))))
    img = nib.Nifti1Image(array, out.affine, header=header)
    if header is not None:
        img.set_qform(out.affine, code=int(header["qform_code"]) or 1)
        img.set_sform(out.affine, code=int(header["sform_code"]) or 1)
    else:
        img.set_qform(out.affine, code=1)
        img.set_sform(out.affine, code=1)
    img.header.set_data_dtype(array.dtype)
    if out.label or dtype is not None:
        img.header["scl_slope"] = np.nan
        img.header["scl_inter"] = np.nan
    if not keep_identifiers:
        for key in _IDENTIFYING_NIFTI_FIELDS:
            img.header[key] = b""
    with atomic_output(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
