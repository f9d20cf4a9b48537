"""A session's interactions, oldest first, and the label maps they lead to.

The result after ``n`` interactions is a fold: start from the base label map (the automatic contour,
the drawn-slice completion, or empty) and apply :func:`~fewshotcx.interactive.refine.refine` once per
interaction, then put every click and scribble voxel on its side (later ones win). Each intermediate
map is remembered (zlib-compressed, bounded in count and bytes, the oldest dropped first) under the
base it started from and the interaction it ends with, so adding an interaction costs one refinement,
undoing one costs none, and a changed base (a draw) replays them all: the same inputs give the same
map, so ``undo`` restores the previous result exactly.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Callable, Hashable, Optional, Sequence

import numpy as np

from ..io.undo import HISTORY_BYTES
from ..io.volume import label_dtype
from .prompts import Prompt
from .refine import Settings, refine

#: Intermediate label maps remembered, at most (their compressed bytes: ``HISTORY_BYTES`` at most).
MEMO_STEPS = 32


class PromptLayer:
    """The interactions (:attr:`prompts`, oldest first) and a memo of the maps they lead to."""

    def __init__(self, settings: Settings = Settings()) -> None:
        self.settings = settings
        self.prompts: list[Prompt] = []
        self._ids: list[int] = []  # a fresh id per added prompt: a memo key names one exact prefix
        self._next = 0
        self._memo: OrderedDict[tuple, tuple[bytes, np.dtype, tuple]] = OrderedDict()
        self._hot: tuple = (None, None)  # the last map remembered or recalled, uncompressed: (key, array)
        self.refinements = 0  # refinements run so far (cost counter)

    def add(self, prompt: Prompt) -> None:
        """Append ``prompt`` (applied at the next :meth:`apply`), with a new identity for the memo."""
        self.prompts.append(prompt)
        self._ids.append(self._next)
        self._next += 1

    def pop(self) -> Prompt:
        """Remove and return the last prompt (undo); the results remembered for earlier ones stay."""
        self._ids.pop()
        return self.prompts.pop()

    def apply(self, image: np.ndarray, spacing: Sequence[float], base: Callable[[], np.ndarray], base_key: Hashable,
              prior: Callable[[int], Optional[np.ndarray]], drawn: dict[int, np.ndarray]) -> np.ndarray:
        """The ``(X, Y, Z)`` canonical label map after every prompt.

        Args:
            image: canonical intensities; ``spacing`` its voxel size (mm).
            base: the label map before any prompt (called only when no memo applies).
            base_key: identifies ``base``'s value (the memo is keyed by it).
            prior: label value → the automatic contour's ``(X, Y, Z)`` probability, or ``None``.
            drawn: canonical slice → drawn ``(X, Y)`` label plane (kept as drawn by every refinement).
        """
        done = len(self.prompts)
        while done and (base_key, self._ids[done - 1]) not in self._memo:
            done -= 1
        labels = self._recall((base_key, self._ids[done - 1])) if done else None
        if labels is None:
            labels = base()
        labels = labels.astype(label_dtype(max([int(labels.max())] + [p.label for p in self.prompts])))
        for n in range(done, len(self.prompts)):
            own = [p for p in self.prompts[:n + 1] if p.label == self.prompts[n].label]
            labels = enforce(refine(image, spacing, labels, own, prior(self.prompts[n].label), drawn, self.settings),
                             self.prompts[:n + 1])
            self.refinements += 1
            self._remember((base_key, self._ids[n]), labels)
        return labels

    def _recall(self, key: tuple) -> np.ndarray:
        self._memo.move_to_end(key)
        if self._hot[0] != key:
            packed, dtype, shape = self._memo[key]
            self._hot = (key, np.frombuffer(zlib.decompress(packed), dtype=dtype).reshape(shape))
        return self._hot[1].copy()

    def _remember(self, key: tuple, labels: np.ndarray) -> None:
        self._memo[key] = (zlib.compress(labels.tobytes(), 1), labels.dtype, labels.shape)
        self._hot = (key, labels.copy())
        while len(self._memo) > MEMO_STEPS or sum(len(v[0]) for v in self._memo.values()) > HISTORY_BYTES:
            self._memo.popitem(last=False)


def enforce(labels: np.ndarray, prompts: Sequence[Prompt]) -> np.ndarray:
    """Put every click and scribble voxel on its side, in order (a later prompt wins): positive →
    its label; negative → background where it holds that label. In place; returns ``labels``."""
    for prompt in prompts:
        v = prompt.seeds
        if not len(v):
            continue
        at = (v[:, 0], v[:, 1], v[:, 2])
        labels[at] = prompt.label if prompt.positive else np.where(labels[at] == prompt.label, 0, labels[at])
    return labels
