"""Limits for reading untrusted volumes (server uploads, files under ``--data-root``).

A :class:`ReadLimits` passed to :func:`~fewshotcx.io.volume.load_volume` means "this input is not
trusted": the readers then

* never follow a reference to another file (an NRRD ``data file``, a NIfTI ``.hdr``/``.img`` pair,
  a symlink in a DICOM folder) unless it resolves, symlinks followed, to a regular file inside
  :attr:`ReadLimits.root`;
* refuse a volume whose *declared* size (header dimensions × bytes per voxel) exceeds
  :attr:`ReadLimits.max_decoded_bytes` before decoding anything, and decompress with a cap rather
  than trusting the declared size;
* refuse a DICOM folder (or zip archive) with more than :attr:`ReadLimits.max_files` files.

Messages never name a referenced file or its size, only the file that was opened.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .grid import VolumeError

__all__ = ["DEFAULT_MAX_DECODED_BYTES", "DEFAULT_MAX_FILES", "ReadLimits", "decoded_bytes"]

#: Default decoded-size limit: 1 GiB (a 512×512×1000 CT as float32 is 1 GiB).
DEFAULT_MAX_DECODED_BYTES = 1 << 30
#: Default number of files a DICOM folder or zip archive may hold.
DEFAULT_MAX_FILES = 4096
_CHUNK = 1 << 20


def decoded_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes a volume of ``shape`` takes once decoded: the larger of the stored array
    (``itemsize`` bytes per voxel) and the ``float32`` array the readers return."""
    voxels = 1
    for n in shape:
        voxels *= max(int(n), 0)
    return voxels * max(int(itemsize), 4)


@dataclass(frozen=True)
class ReadLimits:
    """How far a reader may trust its input (see the module docstring).

    Attributes:
        max_decoded_bytes: largest decoded volume (:func:`decoded_bytes`), also the cap on
            decompressed bytes and on an unpacked zip archive.
        root: the folder referenced files may lie in (after resolving symlinks); ``None``: no file
            named by another is read, and a DICOM folder's files must lie inside that folder.
        max_files: most files in a DICOM folder or zip archive.
    """

    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    root: Optional[Path] = None
    max_files: int = DEFAULT_MAX_FILES

    def __post_init__(self) -> None:
        if int(self.max_decoded_bytes) < 1 or int(self.max_files) < 1:
            raise ValueError("ReadLimits: max_decoded_bytes and max_files must be positive")
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root).resolve())

    def check_size(self, shape: Sequence[int], itemsize: int, what: str) -> None:
        """Refuse a declared volume larger than :attr:`max_decoded_bytes` once decoded.

        Raises:
            VolumeError: too large, naming ``what`` and the limit.
        """
        size = decoded_bytes(shape, itemsize)
        if size > self.max_decoded_bytes:
            raise VolumeError(f"{what}: the declared image size ({'x'.join(str(int(n)) for n in shape)} voxels, "
                              f"{size} bytes decoded) exceeds the limit of {self.max_decoded_bytes} bytes")

    def inside(self, path: Path) -> Optional[Path]:
        """``path`` resolved (symlinks followed) if that is a regular file inside :attr:`root`, else
        ``None``; open the returned path, not ``path``, so a later symlink swap cannot redirect it."""
        if self.root is None:
            return None
        target = Path(os.path.realpath(path))
        return target if self.root in target.parents and target.is_file() else None

    def check_gzip_length(self, path: Path, what: str) -> None:
        """Decompress the gzip file ``path`` without keeping it, refusing more than
        :attr:`max_decoded_bytes` of output (so later readers read a bounded stream).

        Raises:
            VolumeError: it decompresses to more than the limit, or is not valid gzip.
        """
        total = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(_CHUNK):
                    total += len(chunk)
                    if total > self.max_decoded_bytes:
                        raise VolumeError(f"{what}: decompresses to more than the limit of "
                                          f"{self.max_decoded_bytes} bytes")
        except (OSError, EOFError) as exc:
            raise VolumeError(f"{what}: corrupt gzip data ({exc})") from None
