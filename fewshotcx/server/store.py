"""Server-side sessions: one image + its :class:`~fewshotcx.session.ContourSession` each, sharing one
segmenter (one model in memory), with a session count limit and idle expiry.

Locks: every operation on a session holds that session's lock, and nothing else: sessions share the
segmenter's backend (model and settings) but no mutable state (each conditions its own immutable
:class:`~fewshotcx.backends.base.Fitted` values on its drawn slices), so several sessions run the model
at once. A store that learns (``fewshotcx serve --learn``) adds each accepted contour to the shared
segmenter's support under its own lock; a session keeps the model it was opened with
(:attr:`ContourSession.model <fewshotcx.session.ContourSession.model>`), so learning changes the first
pass of sessions opened later, never an open one's result. Learned contours live in memory only.
"""

from __future__ import annotations

import math
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from ..io.limits import DEFAULT_MAX_DECODED_BYTES, ReadLimits
from ..io.volume import Volume, VolumeError, load_volume
from ..segmenter import Segmenter
from ..session import ContourSession
from .wire import safe_extract

#: File names an upload may have (a ``.zip`` holds a DICOM series).
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".zip")


class SessionLimitError(RuntimeError):
    """The server already holds ``max_sessions`` sessions."""


class LearnLimitError(RuntimeError):
    """The shared model already holds ``max_support`` support volumes: nothing more is learned."""


class UnknownSession(KeyError):
    """No session with this id (never opened, closed, or expired)."""

    def __str__(self) -> str:
        return f"no session {self.args[0]!r} (closed or expired)"


@dataclass
class Entry:
    """One server session.

    Attributes:
        session: the contouring state.
        folder: private working folder (the upload, an unpacked DICOM series), removed on close.
        dicom_dir: the DICOM series folder when the image is DICOM (enables RTSTRUCT export).
    """

    id: str
    session: ContourSession
    folder: Path
    name: str
    dicom_dir: Optional[Path]
    last_used: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    window: Optional[tuple[float, float]] = None  # preview grey window, computed on first use


class SessionStore:
    """Sessions by id.

    Args:
        segmenter: the shared segmenter every session uses (a slab backend, or any backend once fitted:
            :class:`~fewshotcx.session.ContourSession`'s rule).
        max_sessions: sessions held at once; creating one more is refused.
        idle_seconds: a session unused this long is closed at the next store access.
        max_upload_bytes: upload size limit (bytes received).
        max_image_bytes: decoded image size limit (declared voxels × max(bytes per voxel, 4), checked
            before decoding; also bounds decompression and an unpacked zip), see
            :class:`~fewshotcx.io.limits.ReadLimits`.
        clock: monotonic seconds (injectable for tests).
        learns: :meth:`learn` is allowed (accepted contours become the shared model's support).
        max_support: support volumes the shared model may hold; learning one more is refused.
    """

    def __init__(self, segmenter: Segmenter, max_sessions: int = 8, idle_seconds: float = 3600.0,
                 max_upload_bytes: int = 512 << 20, clock: Callable[[], float] = time.monotonic,
                 max_image_bytes: int = DEFAULT_MAX_DECODED_BYTES, learns: bool = False,
                 max_support: int = 16) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        if max_support < 1:
            raise ValueError(f"max_support must be at least 1, got {max_support}")
        if not math.isfinite(max_image_bytes) or max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be a positive number of bytes, got {max_image_bytes}")
        self.segmenter = segmenter
        self.max_sessions = int(max_sessions)
        self.idle_seconds = float(idle_seconds)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_image_bytes = int(max_image_bytes)
        self.clock = clock
        self.learns = bool(learns)
        self.max_support = int(max_support)
        self._learning = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._opening = 0  # sessions being loaded: they hold a place under max_sessions
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="fewshotcx-serve-"))
        # removed at interpreter exit even if close_all() is never called (a signal is handled by the app)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._root), True)

    @property
    def root(self) -> Path:
        """The store's private folder (every session's folder is inside it)."""
        return self._root

    # ------------------------------------------------------------------ lifecycle
    def new_folder(self) -> Path:
        """A fresh private folder for an upload (give it to :meth:`create` or remove it)."""
        return Path(tempfile.mkdtemp(dir=self._root))

    def create(self, folder: Path, source: Path, name: str, classes: Optional[Sequence[int]] = None,
               root: Optional[Path] = None) -> Entry:
        """Open a session on ``source`` (a volume file, a DICOM folder, or a ``.zip`` of one in
        ``folder``); ``folder`` is owned by the session from now on (removed on failure too).
        ``classes``: the label values that may be drawn (``ContourSession(classes=)``). The image is
        kept in its own layout: slice indices are its own (docs/geometry.md, "Slice indices").

        The image is read as untrusted input (:class:`~fewshotcx.io.limits.ReadLimits` with
        ``max_image_bytes``): a file it names (NRRD ``data file``) is read only inside ``root``
        (``--data-root``; ``None``, for uploads: never), a DICOM folder's files only inside ``root`` (or
        the folder itself). A place under ``max_sessions`` is held while it loads.

        Raises:
            SessionLimitError: ``max_sessions`` reached. ValueError / VolumeError: unreadable image.
        """
        try:
            self.expire()
            self._reserve()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            dicom_dir, image = self._load(folder, source, name, root)
            session = ContourSession(image, self.segmenter, classes=classes)
        except BaseException:
            with self._lock:
                self._opening -= 1
            shutil.rmtree(folder, ignore_errors=True)
            raise
        entry = Entry(secrets.token_urlsafe(12), session, folder, name, dicom_dir, self.clock())
        with self._lock:
            self._opening -= 1
            self._entries[entry.id] = entry
        return entry

    def learn(self, image: Volume, contour: Volume) -> int:
        """Add an accepted ``contour`` (a label map on ``image``'s grid) to the shared segmenter's
        support (:meth:`Segmenter.add <fewshotcx.Segmenter.add>`); returns the support volumes it now
        holds. Sessions opened from now on start from the new model; open ones keep theirs.

        Raises:
            PermissionError: this store does not learn (``learns=False``).
            ValueError: the contour is empty. LearnLimitError: ``max_support`` volumes already held.
        """
        if not self.learns:
            raise PermissionError("this server does not learn from accepted contours (start it with --learn)")
        if not contour.array.any():
            raise ValueError("the accepted contour is empty: nothing to learn")
        with self._learning:
            held = 0 if self.segmenter.support is None else len(self.segmenter.support.images)
            if held >= self.max_support:
                raise LearnLimitError(f"the server's model holds its maximum of {self.max_support} support volumes: "
                                      "nothing was learned (restart it with a larger --max-support)")
            self.segmenter.add(image, contour)
            return held + 1

    def _reserve(self) -> None:
        """Hold a place for a session about to load.

        Raises:
            SessionLimitError: every place is taken (held or loading).
        """
        with self._lock:
            if len(self._entries) + self._opening >= self.max_sessions:
                raise SessionLimitError(f"the server holds its maximum of {self.max_sessions} sessions; "
                                        "close one (DELETE /sessions/ID) or wait for idle ones to expire")
            self._opening += 1

    def _load(self, folder: Path, source: Path, name: str, root: Optional[Path]) -> tuple[Optional[Path], Volume]:
        """``(DICOM folder or None, image)`` read from ``source`` within the store's limits; messages
        name ``name``, never the server's folders."""
        limits = ReadLimits(self.max_image_bytes, root)
        dicom_dir = None
        if source.is_file() and source.name.lower().endswith(".zip"):
            dicom_dir = folder / "dicom"
            dicom_dir.mkdir()
            safe_extract(source, dicom_dir, self.max_image_bytes, limits.max_files)
            if source.parent == folder:  # an upload; a zip under --data-root is the user's: kept
                source.unlink()
            source, limits = dicom_dir, ReadLimits(self.max_image_bytes)  # its files: inside dicom_dir
        elif source.is_dir():
            dicom_dir = source
        elif not source.name.lower().endswith(UPLOAD_SUFFIXES[:3]):
            raise ValueError(f"{name!r}: expected a NIfTI (.nii, .nii.gz) or NRRD (.nrrd) file, or a .zip "
                             "of a DICOM series")
        try:
            return dicom_dir, load_volume(source, canonical=False, limits=limits)
        except VolumeError as exc:  # name the upload, not the server's private folder
            raise VolumeError(str(exc).replace(str(source), name)) from None

    def close(self, session_id: str) -> None:
        """Forget a session and remove its folder.

        Raises:
            UnknownSession: no such session.
        """
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            raise UnknownSession(session_id)
        with entry.lock:
            shutil.rmtree(entry.folder, ignore_errors=True)

    def close_all(self) -> None:
        """Close every session and remove the store's folder."""
        for session_id in list(self._entries):
            try:
                self.close(session_id)
            except UnknownSession:
                pass
        shutil.rmtree(self._root, ignore_errors=True)

    def expire(self) -> list[str]:
        """Close sessions idle for longer than ``idle_seconds``; their ids."""
        now = self.clock()
        with self._lock:
            stale = [sid for sid, e in self._entries.items() if now - e.last_used > self.idle_seconds]
        for sid in stale:
            try:
                self.close(sid)
            except UnknownSession:
                pass
        return stale

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ use
    @contextmanager
    def use(self, session_id: str) -> Iterator[Entry]:
        """Hold session ``session_id`` for one operation.

        Raises:
            UnknownSession: no such session (or it expired).
        """
        self.expire()
        with self._lock:
            entry = self._entries.get(session_id)
        if entry is None:
            raise UnknownSession(session_id)
        with entry.lock:
            if session_id not in self._entries:  # closed while we waited
                raise UnknownSession(session_id)
            entry.last_used = self.clock()
            yield entry
            entry.last_used = self.clock()


def resolve_under(root: Optional[Path], relative: str) -> Path:
    """``relative`` inside ``root`` (symlinks resolved), never outside it and never ``root`` itself
    (so an empty path does not scan the whole root).

    Raises:
        PermissionError: no root configured, or the path leaves it. ValueError: the path names the
            root itself. VolumeError: it does not exist.
    """
    if root is None:
        raise PermissionError("this server has no --data-root: upload the image instead")
    base = root.resolve()
    path = (base / relative).resolve()
    if path == base:
        raise ValueError("give ?path= a file or DICOM folder under --data-root, not the root itself")
    if base not in path.parents:
        raise PermissionError(f"{relative!r} is outside the server's --data-root")
    if not path.exists():
        raise VolumeError(f"no such file or directory under --data-root: {relative!r}")
    return path
