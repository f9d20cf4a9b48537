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

    Without ``overwrite`` the finished file is published with a hard link, which fails if ``path``
    exists at that moment: a file that appeared while this one was being written (another process,
    another worker) is never replaced. Where the file system has no hard links the existence check
    is repeated just before the rename (a much smaller window).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (checked before anything is
            written, and again, atomically, when the result is published).
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
        if overwrite:
            os.replace(tmp, path)
        else:
            publish_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish_new(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` to ``path`` only if ``path`` does not exist (no-replace rename).

    Raises:
        FileExistsError: ``path`` exists (``tmp`` is left for the caller to remove).
    """
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    except FileExistsError:
        raise FileExistsError(f"{path} exists (it appeared while this file was being written); "
                              "pass overwrite=True (CLI: --overwrite) to replace it") from None
    except OSError:  # no hard links here (some network/FUSE/FAT file systems)
        if path.exists():
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it") from None
        os.replace(tmp, path)
        return
    tmp.unlink()
