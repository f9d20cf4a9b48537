"""Interactive contouring: draw a few axial slices, let the model finish, ask where to draw next.

``ContourSession`` keeps the slices a user has drawn on one image (axial slices of the canonical,
closest-RAS array) and completes the structure with :meth:`fewshotcx.Segmenter.complete` semantics
and through the same path (the drawn slices are the support of a :class:`~fewshotcx.backends.base.Fitted`
value, ``own_scan``, and the backend predicts slabs with it; nothing is shared or mutated between sessions):
drawn slices are kept exactly, each structure is restricted to its drawn extent, ``postprocess``
applies. It differs from ``complete`` in one way that makes it interactive: each undrawn slice is
predicted from a *local* support, the ``neighbours`` nearest drawn slices on each side of it (default
1: the two drawn slices around it, as for interpolation). A new drawn slice then changes only the
slices whose local support it joins (with one neighbour: the gap it splits), and everything else (the
normalised image, the query slabs, the drawn slices' label slabs, every per-slice prediction whose
support did not change) is cached, so a further ``draw`` + ``result()`` costs a fraction of the
first (``benchmarks/active_contouring.py`` measures the ratio).

Label values: pass ``labels=(1, 2, …)`` to declare the structures; otherwise the values of the first
draw that shows any structure are the session's values. A draw with any other value is refused.

:meth:`suggest` ranks the slices where drawing would fix the most: for each undrawn slice inside the
drawn range and each slice just beyond its ends, the *expected number of wrong voxels* of the
current result, ``Σ |result − p|``, with ``p`` the mean probability over leave-one-out draws of the
local support (so disagreement between draws counts); a candidate is credited with its own expected
errors plus the share of other slices' errors that drawing it would fix, taken as the fraction by
which it shortens their distance to the nearest drawn slice.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .io.atomic import atomic_output
from .io.volume import PathLike, Volume, VolumeError, label_dtype, load_volume, reorient_array
from .pipeline.intensity import decide_modality, normalize
from .pipeline.postprocess import keep_drawn, postprocess
from .pipeline.slicing import Framing, extract_slabs, from_model_square, relative_position
from .pipeline.support import SupportPool
from .segmenter import Segmenter

_FORMAT = "fewshotcx-contour-session"
_VERSION = 1
Key = tuple  # (support: ((z, version), ...), classes, leave_out)

#: Default bounds of a session's undo history (:attr:`ContourSession.history_limit`, ``history_bytes``).
HISTORY_STEPS, HISTORY_BYTES = 100, 16 << 20


@dataclass(frozen=True)
class _Step:
    """One undo step: slice ``z`` as it was before a draw or erase (``packed`` is ``None`` when it was
    not drawn, else its mask's zlib-compressed bytes in ``dtype``, x fastest) and the label values then."""

    z: int
    packed: Optional[bytes]
    dtype: np.dtype
    version: int
    labels: Optional[tuple[int, ...]]


class ContourSession:
    """Draw → result → suggest → draw …, with undo, on one image.

    Args:
        image: the volume being contoured (path or :class:`Volume`).
        segmenter: an (unfitted is fine) slab-backend :class:`Segmenter` whose backend, threshold and
            ``postprocess`` are used; default ``Segmenter()`` (bundled UniverSeg, CPU/auto device).
        labels: the label values that may be drawn (``None``: fixed by the first non-empty draw).
        neighbours: drawn slices on each side of an undrawn slice that form its support.
        modality: intensity normalisation (``"auto"``, ``"ct"``, ``"mr"``).
    """

    def __init__(self, image: Union[Volume, PathLike], segmenter: Optional[Segmenter] = None,
                 labels: Optional[Sequence[int]] = None, neighbours: int = 1, modality: str = "auto") -> None:
        self.original = image if isinstance(image, Volume) else load_volume(image)
        self.image = self.original.canonical()
        self.segmenter = segmenter if segmenter is not None else Segmenter(progress=False)
        if not hasattr(self.segmenter.backend, "predict_slices"):
            raise ValueError("ContourSession needs a slab backend (e.g. 'universeg')")
        if neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {neighbours}")
        self.neighbours = int(neighbours)
        self.labels = None if labels is None else tuple(sorted(self._check_values(labels)))
        self.modality = decide_modality([self.image.array], modality if modality != "auto" else self.segmenter.modality)
        self._drawn: dict[int, tuple[np.ndarray, int]] = {}  # z -> (read-only (X, Y) mask, smallest dtype; version)
        self._history: deque[_Step] = deque()
        self.history_limit = HISTORY_STEPS  # undo steps kept (the oldest dropped first)
        self.history_bytes = HISTORY_BYTES  # and their compressed bytes, at most
        self._version = 0
        self._cache: dict[Key, np.ndarray] = {}  # -> (L, X, Y) probabilities of one slice
        self._slabs: Optional[torch.Tensor] = None
        self._centre: Optional[tuple[float, float]] = None  # in-plane framing centre (set with the slabs)
        self._label_slabs: dict[tuple[int, int, tuple], torch.Tensor] = {}
        self.predicted_slices = 0  # slices run through the model so far (cost counter)
        self.cache_limit: Optional[int] = None  # cached slice predictions kept; None = 8 × depth

    # ------------------------------------------------------------------ drawing
    @property
    def depth(self) -> int:
        return self.image.shape[2]

    @property
    def drawn(self) -> list[int]:
        """Drawn axial slices (canonical indices), ascending."""
        return sorted(self._drawn)

    def drawn_mask(self, z: int) -> np.ndarray:
        """A copy of the drawn ``(X, Y)`` slice ``z`` (int64)."""
        return self._drawn[self._index(z)][0].astype(np.int64)

    def draw(self, z: int, mask) -> None:
        """Record slice ``z`` (axial, canonical array) as drawn: ``mask`` is ``(X, Y)`` label values
        (0 = background; an all-zero mask says "nothing here"). Replaces an earlier drawing of ``z``.

        Raises:
            ValueError: bad index, shape or values (the session is left unchanged).
        """
        z = self._index(z)
        array = np.asarray(mask)
        if array.shape != self.image.shape[:2]:
            raise ValueError(f"mask for slice {z} has shape {array.shape}; the canonical axial slice is "
                             f"{self.image.shape[:2]}")
        if array.dtype == bool:
            array = array.astype(np.int64)
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError(f"mask for slice {z} must hold integer label values")
        values = self._check_values(np.unique(array))
        labels = self.labels
        new = values - {0} - set(labels or ())
        if labels is not None and new:
            raise ValueError(f"label value(s) {sorted(new)} not declared for this session (labels={labels}); "
                             "declare every structure with ContourSession(..., labels=...)")
        self._push(z)
        if labels is None and values - {0}:
            self.labels = tuple(sorted(values - {0}))
        self._version += 1
        stored = array.astype(label_dtype(max(values, default=0)))  # a copy; uint8 for labels up to 255
        stored.flags.writeable = False
        self._drawn[z] = (stored, self._version)

    def erase(self, z: int) -> None:
        """Forget the drawing of slice ``z``."""
        z = self._index(z)
        if z not in self._drawn:
            raise ValueError(f"slice {z} is not drawn (drawn: {self.drawn})")
        self._push(z)
        del self._drawn[z]

    def undo(self) -> None:
        """Revert the last ``draw`` or ``erase``.

        The history keeps, per step, only the slice that step changed (zlib-compressed, in its smallest
        dtype): at most :attr:`history_limit` steps (default :data:`HISTORY_STEPS`) and
        :attr:`history_bytes` compressed bytes (default :data:`HISTORY_BYTES`), the oldest dropped first.

        Raises:
            ValueError: nothing (left) to undo.
        """
        if not self._history:
            raise ValueError("nothing to undo")
        step = self._history.pop()
        if step.packed is None:
            self._drawn.pop(step.z, None)
        else:
            mask = np.frombuffer(zlib.decompress(step.packed), dtype=step.dtype)
            self._drawn[step.z] = (mask.reshape(self.image.shape[:2], order="F"), step.version)
        self.labels = step.labels

    def _push(self, z: int) -> None:
        """Remember slice ``z`` as it is now, before it changes, within the history's bounds."""
        mask, version = self._drawn.get(z, (None, 0))
        packed = None if mask is None else zlib.compress(mask.tobytes(order="F"), 1)
        dtype = np.dtype(np.uint8) if mask is None else mask.dtype
        self._history.append(_Step(z, packed, dtype, version, self.labels))
        total = sum(len(step.packed or b"") for step in self._history)
        while self._history and (len(self._history) > self.history_limit or total > self.history_bytes):
            total -= len(self._history.popleft().packed or b"")

    def _index(self, z) -> int:
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= int(z) < self.depth:
            raise ValueError(f"slice index must be an integer in [0, {self.depth - 1}], got {z!r}")
        return int(z)

    @staticmethod
    def _check_values(values) -> set[int]:
        out = {int(v) for v in np.asarray(list(values)).ravel()}
        if any(v < 0 for v in out):
            raise ValueError(f"label values must be non-negative integers, got {sorted(out)}")
        return out

    # ------------------------------------------------------------------ result
    def classes(self) -> tuple[int, ...]:
        """Label values present on the drawn slices."""
        present = set()
        for mask, _ in self._drawn.values():
            present.update(int(v) for v in np.unique(mask) if v)
        if not present:
            raise VolumeError("no drawn slice shows a structure yet: draw one first")
        return tuple(sorted(present))

    def result(self) -> Volume:
        """The label map on the image's grid (in its original layout): drawn slices exactly as drawn,
        the rest predicted within each structure's drawn extent."""
        labels = self._canonical_result(self._probabilities(self._inside()))
        return self.original.with_array(reorient_array(labels, self.image.affine, self.original.affine), label=True)

    def suggest(self, n: int = 1) -> list[int]:
        """Up to ``n`` undrawn slices, best first, where drawing by hand would fix the most."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        scores = self.expected_errors()
        credit = self._credit(scores)
        order = sorted(credit, key=lambda z: (-credit[z], z))
        return order[:n]

    def expected_errors(self) -> dict[int, float]:
        """Expected wrong voxels ``Σ |result − p|`` of each candidate slice (undrawn slices inside the
        drawn range, and the slice just beyond each end), ``p`` from leave-one-out support draws."""
        drawn = self.drawn
        candidates = self._inside() + [z for z in (drawn[0] - 1, drawn[-1] + 1) if 0 <= z < self.depth]
        classes = self.classes()
        mean = self._probabilities(candidates, samples=True)
        labels = self._canonical_result(self._probabilities(self._inside()))
        out = {}
        for z in candidates:
            one_hot = np.stack([labels[..., z] == c for c in classes]).astype(np.float32)
            out[z] = float(np.abs(one_hot - mean[z]).sum())
        return out

    def _credit(self, errors: dict[int, float]) -> dict[int, float]:
        """Each candidate ``c``'s share of the expected errors it would fix: a slice ``z`` at distance
        ``d(z)`` from its nearest drawn slice is credited ``e(z) · (d(z) − |z − c|) / d(z)`` when
        drawing ``c`` brings it closer (``c`` itself: all of ``e(c)``)."""
        drawn = np.asarray(self.drawn)
        nearest = {z: int(np.abs(drawn - z).min()) for z in errors}
        return {c: sum(e * max(0, nearest[z] - abs(z - c)) / nearest[z] for z, e in errors.items())
                for c in errors}

    def _inside(self) -> list[int]:
        """Undrawn slices between the first and the last drawn slice."""
        drawn = self.drawn
        if not drawn:
            raise VolumeError("no slice drawn yet: draw one first")
        return [z for z in range(drawn[0], drawn[-1] + 1) if z not in self._drawn]

    def _canonical_result(self, probs: dict[int, np.ndarray]) -> np.ndarray:
        """Threshold the predicted slices, post-process, keep the drawn slices and extents."""
        classes = self.classes()
        values = np.asarray(classes, dtype=np.int64)
        out = np.zeros(self.image.shape, dtype=label_dtype(int(max(values.max(), max(self.labels or (0,))))))
        for z, p in probs.items():
            out[..., z] = np.where(p.max(axis=0) > self.segmenter.threshold, values[p.argmax(axis=0)], 0)
        drawn = np.zeros(self.image.shape, dtype=out.dtype)  # drawn values are among the labels: they fit
        for z, (mask, _) in self._drawn.items():
            drawn[..., z] = mask
        out[..., self.drawn] = drawn[..., self.drawn]
        ops = tuple(op for op in self.segmenter.postprocess if op != "support_extent")
        if ops:
            out = postprocess(out, ops)
        return keep_drawn(out, drawn, self.drawn, classes)

    # ------------------------------------------------------------------ prediction with a cache
    def _support(self, z: int) -> tuple[int, ...]:
        """The ``neighbours`` nearest drawn slices below and above ``z``."""
        drawn = self.drawn
        below = [d for d in drawn if d < z][-self.neighbours:]
        above = [d for d in drawn if d > z][:self.neighbours]
        return tuple(below + above)

    def _probabilities(self, slices: Sequence[int], samples: bool = False) -> dict[int, np.ndarray]:
        """``z -> (L, X, Y)`` probabilities from the local support (``samples``: the mean over the full
        support and each leave-one-out subset of it), computed only where not cached."""
        classes = self.classes()
        wanted: dict[Key, list[int]] = {}
        keys = {}
        for z in slices:
            support = self._support(z)
            versions = tuple((d, self._drawn[d][1]) for d in support)
            leave = [None] + (list(range(len(support))) if samples and len(support) > 1 else [])
            keys[z] = [(versions, classes, drop) for drop in leave]
            for key in keys[z]:
                if (z,) + key not in self._cache:
                    wanted.setdefault(key, []).append(z)
        for key, zs in wanted.items():
            for z, prob in zip(zs, self._predict(key, zs)):
                self._cache[(z,) + key] = prob
        out = {z: np.mean([self._cache[(z,) + key] for key in keys[z]], axis=0) for z in slices}
        self._trim_cache()
        return out

    def _predict(self, key: Key, slices: list[int]) -> np.ndarray:
        """Condition the backend on the key's drawn slices (a local :class:`Fitted` value, ``own_scan``)
        and predict ``slices`` with it: ``(N, L, X, Y)`` float32."""
        versions, classes, drop = key
        support = [d for i, (d, _) in enumerate(versions) if i != drop]
        backend = self.segmenter.backend
        slabs = self._query_slabs()
        pool = SupportPool(
            images=slabs[support], labels=torch.stack([self._label_slab(d, classes) for d in support]),
            positions=relative_position(torch.tensor(support, dtype=torch.float32), self.depth).to(slabs.device),
            volume_ids=torch.zeros(len(support), dtype=torch.long, device=slabs.device), classes=classes, axis=2)
        generator = self.segmenter.generator()
        fitted = backend.condition(None, generator, pools={2: pool}, own_scan=True)
        geometry = self._geometry(self.image.shape, indices=slices, device=slabs.device)
        probs = backend.predict_slices(fitted, slabs[slices], geometry, generator)  # (N, L, s, s)
        self.predicted_slices += len(slices)
        return from_model_square(probs.float(), geometry).clamp(0, 1).cpu().numpy()  # not in place: may be an inference tensor

    def _query_slabs(self) -> torch.Tensor:
        """``(Z, 2k+1, s, s)`` slabs of every axial slice of the normalised image (computed once)."""
        if self._slabs is None:
            backend, device = self.segmenter.backend, self.segmenter.device
            normalised = torch.as_tensor(normalize(self.image.array, self.modality, self.segmenter.window), device=device)
            self._centre = Framing.of(backend).centre(normalised, 2)
            self._slabs = extract_slabs(normalised, self._geometry(self.image.shape, device=device))
        return self._slabs

    def _geometry(self, shape, indices=None, device=None, context=None):
        """Axial slab geometry of this image (or a one-slice label stack of its in-plane size) under the
        backend's framing, centred where the image's slabs are (:meth:`_query_slabs` sets the centre)."""
        framing = Framing.of(self.segmenter.backend)
        if framing.mode == "physical" and self._centre is None:
            self._query_slabs()  # sets the centre
        return framing.geometry(shape, self.image.spacing, 2, indices, device or self.segmenter.device,
                                self._centre, context)

    def _label_slab(self, z: int, classes: tuple[int, ...]) -> torch.Tensor:
        """``(L, s, s)`` one-hot label slab of drawn slice ``z`` (cached per drawing)."""
        mask, version = self._drawn[z]
        key = (z, version, classes)
        if key not in self._label_slabs:
            device = self.segmenter.device
            one_hot = torch.as_tensor(np.stack([mask == c for c in classes])[..., None], dtype=torch.float32,
                                      device=device)  # (L, X, Y, 1)
            geometry = self._geometry(one_hot.shape[1:], device=device, context=0)
            self._label_slabs[key] = extract_slabs(one_hot, geometry)[0].clamp_(0.0, 1.0)
        return self._label_slabs[key]

    def _trim_cache(self) -> None:
        """Drop the oldest slice predictions beyond :attr:`cache_limit` (default ``8 × depth``)."""
        limit = self.cache_limit if self.cache_limit is not None else 8 * self.depth
        while len(self._cache) > limit:
            self._cache.pop(next(iter(self._cache)))

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike, overwrite: bool = False) -> Path:
        """Write the drawn slices, the label values and the image (``.npz``, no pickle) atomically.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"session files end in .npz: {path}")
        drawn = self.drawn
        meta = {"format": _FORMAT, "version": _VERSION, "labels": None if self.labels is None else list(self.labels),
                "neighbours": self.neighbours, "modality": self.modality, "slices": drawn}
        masks = np.stack([self.drawn_mask(z) for z in drawn]) if drawn else np.zeros((0,) + self.image.shape[:2], np.int64)
        with atomic_output(path, overwrite=overwrite) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, meta=np.array(json.dumps(meta)), masks=masks,
                                    image=self.original.array, affine=self.original.affine)
        return path

    @classmethod
    def load(cls, path: PathLike, image: Union[Volume, PathLike, None] = None,
             segmenter: Optional[Segmenter] = None) -> "ContourSession":
        """A session from :meth:`save`'s file; ``image`` (optional) must be on the saved grid and is
        used instead of the stored copy (it keeps its file header for writing)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                masks, array, affine = data["masks"], data["image"], data["affine"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a fewshotcx contour session file ({exc})") from None
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ValueError(f"{path} is not a version-{_VERSION} fewshotcx contour session file")
        stored = Volume(array, affine)
        if image is not None:
            image = image if isinstance(image, Volume) else load_volume(image)
            if not image.same_grid(stored):
                raise VolumeError(f"{path} was drawn on another grid than the image given")
        session = cls(image if image is not None else stored, segmenter, labels=meta["labels"],
                      neighbours=meta["neighbours"], modality=meta["modality"])
        for z, mask in zip(meta["slices"], masks):
            session.draw(int(z), mask)
        session._history.clear()
        return session
