"""Atomic file output: a file is either written whole or not at all, and never replaced by accident."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: Union[str, os.PathLike], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extensions) to write to; on success it is renamed
    onto ``path`` with the usual permissions (``0666 & ~umask``), on any failure it is removed.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (checked before anything is written).
        FileNotFoundError: the output directory does not exist.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {path.parent}")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
