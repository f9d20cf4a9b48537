"""Reading and writing volumes: NIfTI, NRRD and DICOM series in, NIfTI out.

:func:`load_volume` returns a :class:`~fewshotcx.io.grid.Volume` in the *closest canonical RAS*
layout and remembers the file's geometry; :func:`save_volume` undoes the permutation and writes the
*original* affine and header, so an unchanged volume round-trips bit for bit. The volume types are
defined in :mod:`fewshotcx.io.grid` and re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import nibabel as nib
import numpy as np

from .atomic import atomic_output
from .dicom import read_dicom_series
from .grid import (PathLike, SourceGeometry, Volume, VolumeError, binary_mask, check_pair, label_dtype,
                   reorient_array)

__all__ = ["NRRD_SPACES", "PathLike", "SourceGeometry", "Volume", "VolumeError", "binary_mask", "check_pair",
           "label_dtype", "load_volume", "reorient_array", "save_volume"]

_IDENTIFYING_NIFTI_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")


#: NRRD ``space`` values fewshotcx reads → the sign flips from that space to RAS.
NRRD_SPACES = {"left-posterior-superior": (-1, -1, 1), "right-anterior-superior": (1, 1, 1),
               "left-anterior-superior": (-1, 1, 1)}


def load_volume(path: Union[PathLike, Volume], label: bool = False, canonical: bool = True,
                nrrd_space: Optional[str] = None) -> Volume:
    """Read a volume from NIfTI (``.nii``/``.nii.gz``), NRRD (``.nrrd``/``.seg.nrrd``) or a DICOM
    series directory, returned in closest-canonical RAS unless ``canonical=False``.

    Args:
        path: file or directory; a :class:`Volume` is passed through (canonicalised if asked).
        label: read as an integer label map (values must be whole, non-negative numbers).
        nrrd_space: the world space of an NRRD file that has no ``space`` field (one of
            :data:`NRRD_SPACES`); without it such a file is refused rather than assumed LPS.
    Raises:
        VolumeError: unreadable file, not 3D (4D images are refused rather than guessed at),
            non-integer label values, or an NRRD without ``space`` and no ``nrrd_space``.
    """
    if isinstance(path, Volume):
        vol = Volume(path.array, path.affine, label or path.label, path.source)
        return vol.canonical() if canonical else vol
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"no such file or directory: {p}")
    name = p.name.lower()
    if p.is_dir():
        vol = read_dicom_series(p, label=label)
    elif name.endswith(".nrrd") or name.endswith(".nhdr"):
        vol = _read_nrrd(p, label, nrrd_space)
    else:
        vol = _read_nifti(p, label)
    return vol.canonical() if canonical else vol


def _read_nifti(path: Path, label: bool) -> Volume:
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt input
        raise VolumeError(f"cannot read {path} as NIfTI: {_short(exc)}") from None
    data = _squeeze_to_3d(data, path)
    if not label:
        data = np.asarray(data, dtype=np.float32)
    header = img.header.copy() if isinstance(img.header, nib.Nifti1Header) else None
    vol = Volume(data, img.affine, label)
    vol.source = SourceGeometry(vol.shape, vol.affine.copy(), header, str(path))
    return vol


def _read_nrrd(path: Path, label: bool, nrrd_space: Optional[str] = None) -> Volume:
    try:
        import nrrd

        data, header = nrrd.read(str(path))
    except Exception as exc:
        raise VolumeError(f"cannot read {path} as NRRD: {_short(exc)}") from None
    data = _squeeze_to_3d(np.asarray(data), path)
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
    affine = np.eye(4)
    affine[:3, :3] = np.diag(flip) @ directions.T  # columns = world step per voxel index
    affine[:3, 3] = np.asarray(flip) * origin
    vol = Volume(data if label else data.astype(np.float32), affine, label)
    vol.source = SourceGeometry(vol.shape, affine.copy(), None, str(path))
    return vol


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
