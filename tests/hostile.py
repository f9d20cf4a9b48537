"""Hostile input files for the untrusted-input tests: small files whose headers lie or overreach."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np


def nrrd_file(path: Path, sizes=(8, 8, 8), encoding: str = "raw", payload: bytes = b"", extra: str = "",
              spacing: float = 1.0) -> Path:
    """A uint8 NRRD whose header declares ``sizes``, followed by ``payload`` (already encoded)."""
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {' '.join(map(str, sizes))}\n"
              f"space directions: ({spacing},0,0) (0,{spacing},0) (0,0,{spacing})\n"
              f"space origin: (0,0,0)\nencoding: {encoding}\n{extra}\n")
    path.write_bytes(header.encode() + payload)
    return path


def nifti_gz(path: Path, shape, data: bytes, affine=None) -> Path:
    """A gzipped NIfTI-1 whose header declares ``shape`` (uint8) followed by ``data``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4) if affine is None else affine, code=1)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + data, compresslevel=9))
    return path
