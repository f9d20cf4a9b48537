"""Received files, grouped into series, in a private temporary folder.

Each file is written under a name the node makes up (never one taken from the file), in a folder per
series batch. A batch is *complete* when every association that sent to it has been released and
no file has come for :data:`SETTLE_SECONDS`, or when no file has come for the node's idle time
(a sender that keeps its association open); complete batches go to the worker's queue. An aborted
association discards its batches. A batch that met a problem (a file too large, not CT, unreadable,
too many files) still goes to the queue so that the worker logs it, but is never contoured.
"""

from __future__ import annotations

import itertools
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Callable, Optional

import pydicom
from pydicom.errors import InvalidDicomError

from .config import NodeConfig

#: Seconds a released series waits for more files (a sender opening one association per image).
SETTLE_SECONDS = 1.0
#: DIMSE statuses of a refused C-STORE.
OUT_OF_RESOURCES, NOT_CT, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass
class Batch:
    """One series being received (or received) from one calling AE."""

    series_uid: str
    calling: str
    folder: Path
    started: float
    last: float
    files: int = 0
    problem: Optional[str] = None
    open_associations: set = field(default_factory=set)


class Inbox:
    """Stores received files and hands complete series to ``queue`` (see the module docstring).

    Args:
        root: the node's private temporary folder.
        config: limits and idle time.
        queue: where complete :class:`Batch` objects go.
        log: one-line messages (refused files are logged once per batch).
    """

    def __init__(self, root: Path, config: NodeConfig, queue: Queue, log: Callable[[str], None]) -> None:
        self.root, self.config, self.queue, self.log = root, config, queue, log
        self._batches: dict[str, Batch] = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._refused: dict[int, str] = {}  # association id → why a file of it was refused

    def store(self, association: object, calling: str, encoded: bytes) -> int:
        """Keep one received data set (``encoded``: a DICOM file with its meta header); the C-STORE status."""
        if len(encoded) > self.config.max_file_bytes:
            return self._refuse(association, calling,
                                f"a file of {len(encoded)} bytes exceeds {self.config.max_file_bytes}", OUT_OF_RESOURCES)
        staging = self.root / f"incoming-{next(self._numbers)}.dcm"
        staging.write_bytes(encoded)
        try:
            header = pydicom.dcmread(staging, stop_before_pixels=True,
                                     specific_tags=["SeriesInstanceUID", "Modality"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            staging.unlink()
            return self._refuse(association, calling, "a file that is not readable DICOM", CANNOT_UNDERSTAND)
        series, modality = str(header.get("SeriesInstanceUID", "")), str(header.get("Modality", ""))
        if not _UID.fullmatch(series) or len(series) > 64:
            staging.unlink()
            return self._refuse(association, calling, "a file without a valid SeriesInstanceUID", NOT_CT)
        with self._lock:
            batch = self._batch(association, calling, series)
            if modality != "CT":
                batch.problem = batch.problem or f"a {modality or 'non-CT'} image (only CT is contoured)"
            elif batch.files >= self.config.max_series_files:
                batch.problem = batch.problem or f"more than {self.config.max_series_files} files"
            if batch.problem is not None:
                staging.unlink()
                return NOT_CT if modality != "CT" else OUT_OF_RESOURCES
            batch.files += 1
            staging.rename(batch.folder / f"image-{batch.files:05d}.dcm")
        return 0x0000

    def _batch(self, association: object, calling: str, series: str) -> Batch:
        """The open batch of ``series`` from ``calling``, made if needed (call with the lock held)."""
        name = f"{calling}\\{series}"
        batch = self._batches.get(name)
        if batch is None:
            folder = self.root / f"series-{next(self._numbers)}"
            folder.mkdir()
            now = time.monotonic()
            batch = self._batches[name] = Batch(series, calling, folder, now, now)
        batch.last = time.monotonic()
        batch.open_associations.add(id(association))
        batch.problem = batch.problem or self._refused.get(id(association))
        return batch

    def _refuse(self, association: object, calling: str, why: str, status: int) -> int:
        """Refuse a file: every series of this association is marked (never contoured, since it lacks a
        file); logged once per association. Returns ``status``."""
        with self._lock:
            first = id(association) not in self._refused
            self._refused.setdefault(id(association), why)
            for batch in self._batches.values():
                if id(association) in batch.open_associations:
                    batch.problem = batch.problem or why
        if first:
            self.log(f"refused from {calling}: {why}; nothing is sent for its series")
        return status

    def release(self, association: object) -> None:
        """The association ended normally: its series complete once they settle (:meth:`sweep`)."""
        with self._lock:
            self._refused.pop(id(association), None)
            for batch in self._batches.values():
                batch.open_associations.discard(id(association))

    def abort(self, association: object) -> None:
        """The association was aborted: its series are discarded (logged), nothing is contoured."""
        with self._lock:
            self._refused.pop(id(association), None)
            gone = [(name, b) for name, b in self._batches.items() if id(association) in b.open_associations]
            for name, _ in gone:
                del self._batches[name]
        for _, batch in gone:
            self.log(f"series {batch.series_uid} from {batch.calling}: association aborted after {batch.files} "
                         "images; discarded, nothing sent")
            shutil.rmtree(batch.folder, ignore_errors=True)

    def sweep(self, now: Optional[float] = None) -> None:
        """Queue every complete series (released and settled, or idle)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            done = [name for name, b in self._batches.items() if (
                now - b.last >= self.config.idle_seconds
                or (not b.open_associations and now - b.last >= min(SETTLE_SECONDS, self.config.idle_seconds)))]
            ready = [self._batches.pop(name) for name in done]
        for batch in ready:
            self.queue.put(batch)
