"""Atomic file output: a file is either written whole or not at all, and never replaced by accident."""

from __future__ import annotations

import os
import re
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: ``/proc/self/status``).

    Elsewhere it falls back to the ``os.umask`` round trip (set, then restore) under a lock; that
    briefly changes the process-wide mask, so files created meanwhile by *other* code could get it.
    """
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"^Umask:\s*([0-7]+)$", f.read(), re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
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
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
