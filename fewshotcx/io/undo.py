"""A bounded undo history of 2D arrays: each step keeps one array as it was (zlib-compressed, in its
own dtype) with a key and any small state, and the oldest steps go first beyond a step count or a
byte total (what :class:`~fewshotcx.session.ContourSession` uses for ``undo``)."""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Hashable, Optional

import numpy as np

#: Default bounds: steps kept, and their compressed bytes at most.
HISTORY_STEPS, HISTORY_BYTES = 100, 16 << 20


@dataclass(frozen=True)
class Step:
    """One step: ``key``'s array as it was (``packed`` is ``None`` for "none", else its zlib-compressed
    bytes in ``dtype`` and ``shape``, x fastest) and ``state``, anything else to restore."""

    key: Hashable
    packed: Optional[bytes]
    dtype: np.dtype
    shape: tuple[int, ...]
    state: Any

    def array(self) -> Optional[np.ndarray]:
        """The array as it was (read-only), ``None`` if there was none."""
        if self.packed is None:
            return None
        return np.frombuffer(zlib.decompress(self.packed), dtype=self.dtype).reshape(self.shape, order="F")


class UndoHistory:
    """Steps, the newest last."""

    def __init__(self) -> None:
        self._steps: deque[Step] = deque()

    def push(self, key: Hashable, array: Optional[np.ndarray], state: Any, steps: int = HISTORY_STEPS,
             max_bytes: int = HISTORY_BYTES) -> None:
        """Remember ``array`` (``None``: there was none) under ``key``, with ``state``; then keep at most
        ``steps`` steps and ``max_bytes`` compressed bytes (the oldest dropped first)."""
        packed = None if array is None else zlib.compress(array.tobytes(order="F"), 1)
        dtype, shape = (np.dtype(np.uint8), ()) if array is None else (array.dtype, array.shape)
        self._steps.append(Step(key, packed, dtype, shape, state))
        total = sum(len(step.packed or b"") for step in self._steps)
        while self._steps and (len(self._steps) > steps or total > max_bytes):
            total -= len(self._steps.popleft().packed or b"")

    def pop(self) -> Step:
        """The newest step, removed.

        Raises:
            ValueError: nothing (left) to undo.
        """
        if not self._steps:
            raise ValueError("nothing to undo")
        return self._steps.pop()

    def clear(self) -> None:
        self._steps.clear()
