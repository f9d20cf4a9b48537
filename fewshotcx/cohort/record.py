"""The run record that makes a cohort resumable: ``<out>/.fewshotcx-run.json``.

For each finished patient it keeps a *key* (a hash of everything the output depends on: the
support volumes' contents, the segmenter options, the fewshotcx version, the scan's and the
reference's path, size and modification time) and the size and modification time of each output
file as written. A rerun skips a patient whose key is unchanged and whose outputs are still the
files it wrote; any output the record does not vouch for (a user's file, or one edited since) is
never replaced without ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..io.atomic import atomic_output
from ..io.volume import Volume

RECORD_NAME = ".fewshotcx-run.json"
_FORMAT = 1


def file_state(path: Path) -> Optional[list[int]]:
    """``[size, mtime_ns]`` of a file, None if it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def input_state(path: Optional[Path]) -> Any:
    """What identifies an input without reading it: path plus size and mtime (for a folder, those of
    every file in it)."""
    if path is None:
        return None
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return [str(path.resolve()), [[str(p.relative_to(path)), *file_state(p)] for p in files]]
    return [str(path.resolve()), file_state(path)]


def volumes_digest(volumes: Sequence[Volume]) -> str:
    """SHA-256 over the voxel values and affines of ``volumes`` (the support, as loaded)."""
    digest = hashlib.sha256()
    for vol in volumes:
        digest.update(str((vol.array.dtype, vol.shape, vol.label)).encode())
        digest.update(np.ascontiguousarray(vol.array).tobytes())
        digest.update(np.ascontiguousarray(vol.affine).tobytes())
    return digest.hexdigest()


def options_fingerprint(options: Mapping[str, Any]) -> str:
    """A stable text for segmenter options: plain values as JSON, a network by its weights, a weights
    file by its size and mtime, any other object by its pickled bytes (so it can only err towards
    redoing work)."""
    return json.dumps({k: _plain(k, v) for k, v in sorted(options.items())}, sort_keys=True)


def _plain(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        if key == "weights" and isinstance(value, str) and Path(value).is_file():
            return [value, file_state(Path(value))]
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(key, v) for v in value]
    if isinstance(value, os.PathLike):
        return _plain(key, str(value))
    if isinstance(value, torch.nn.Module):
        digest = hashlib.sha256(type(value).__qualname__.encode())
        for name, tensor in sorted(value.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return f"module:{digest.hexdigest()}"
    import pickle

    try:
        return f"{type(value).__qualname__}:{hashlib.sha256(pickle.dumps(value)).hexdigest()}"
    except Exception:  # noqa: BLE001 - unpicklable here: a fresh id every run, so never skipped wrongly
        return f"{type(value).__qualname__}:{id(value)}"


def digest(*parts: Any) -> str:
    """SHA-256 of the JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class RunRecord:
    """The record of one output folder; :meth:`save` writes it atomically."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / RECORD_NAME
        self.patients: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{self.path} is not a fewshotcx run record ({exc}); move it away or "
                                 "remove it to start afresh") from None
            if data.get("format") == _FORMAT:
                self.patients = dict(data.get("patients", {}))

    @property
    def exists(self) -> bool:
        """Whether an earlier run wrote a record here."""
        return self.path.is_file()

    def is_done(self, pid: str, key: str, out_dir: Path) -> bool:
        """Whether ``pid`` finished with this ``key`` and its outputs are untouched."""
        entry = self.patients.get(pid)
        return bool(entry) and entry["key"] == key and self._untouched(entry, out_dir)

    def owns(self, pid: str, name: str, out_dir: Path) -> bool:
        """Whether output ``name`` is the file an earlier run wrote for ``pid`` (unchanged since)."""
        entry = self.patients.get(pid)
        return bool(entry) and name in entry["outputs"] and file_state(out_dir / name) == entry["outputs"][name]

    def row(self, pid: str) -> dict[str, Any]:
        """The results row recorded for ``pid``."""
        return dict(self.patients[pid]["row"])

    def add(self, pid: str, key: str, out_dir: Path, names: Sequence[str], row: Mapping[str, Any]) -> None:
        """Record ``pid`` as finished with ``key``, its outputs ``names`` and results ``row``."""
        outputs = {name: file_state(out_dir / name) for name in names}
        self.patients[pid] = {"key": key, "outputs": outputs, "row": dict(row)}

    def save(self) -> None:
        with atomic_output(self.path, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"format": _FORMAT, "patients": self.patients}, indent=1))

    @staticmethod
    def _untouched(entry: Mapping[str, Any], out_dir: Path) -> bool:
        return all(file_state(out_dir / name) == state for name, state in entry["outputs"].items())
