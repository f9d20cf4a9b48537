"""Interactive contouring: draw a few axial slices, let the model finish, ask where to draw next.

``ContourSession`` keeps the slices a user has drawn on one image and completes the structure with :meth:`fewshotcx.Segmenter.complete` semantics
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

Slice indices (changed in 0.4.0: they were canonical before) are the image's own: slice ``k`` is
``array[:, :, k]`` of the file as nibabel and SimpleITK index it (of a :class:`Volume`, its array as
given), the same numbers as :meth:`Segmenter.complete <fewshotcx.Segmenter.complete>` and ``fewshotcx
complete --slices``; the image's third axis must run superior–inferior (docs/geometry.md, "Slice
indices"). Inside, the session works on the canonical array (:class:`~fewshotcx.io.grid.AxialSlices`).

Label values: pass ``classes=(1, 2, …)`` to declare the structures; otherwise the values of the first
draw that shows any structure are the session's values. A draw with any other value is refused.

:meth:`suggest` ranks the slices where drawing would fix the most: for each undrawn slice inside the
drawn range and each slice just beyond its ends, the *expected number of wrong voxels* of the
current result, ``Σ |result − p|``, with ``p`` the mean probability over leave-one-out draws of the
local support (so disagreement between draws counts); a candidate is credited with its own expected
errors plus the share of other slices' errors that drawing it would fix, taken as the fraction by
which it shortens their distance to the nearest drawn slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .compat import CallableTuple, renamed_keywords, warn_renamed
from .io.grid import AxialSlices
from .io.session_file import read_session_file, write_session_file
from .io.undo import HISTORY_BYTES, HISTORY_STEPS, UndoHistory
from .io.volume import PathLike, Volume, VolumeError, label_dtype, load_volume, reorient_array
from .pipeline.intensity import decide_modality, normalize
from .pipeline.postprocess import keep_drawn, postprocess
from .pipeline.slicing import Framing, extract_slabs, from_model_square, relative_position
from .pipeline.support import SupportPool
from .segmenter import Segmenter

Key = tuple  # (support: ((z, version), ...), classes, leave_out)

class Classes(CallableTuple):
    """:attr:`ContourSession.classes` (a method before 0.4.0)."""

    old = "ContourSession.classes"


class ContourSession:
    """Draw → result → suggest → draw …, with undo, on one image.

    Args:
        image: the volume being contoured (path or :class:`Volume`), its third array axis
            superior–inferior: slice ``k`` is its own ``array[:, :, k]`` (module docstring).
        segmenter: an (unfitted is fine) slab-backend :class:`Segmenter` whose backend, threshold and
            ``postprocess`` are used; default ``Segmenter()`` (bundled UniverSeg, CPU/auto device).
        classes: the label values that may be drawn (``None``: fixed by the first non-empty draw);
            ``labels=`` before 0.4.0 (deprecated).
        neighbours: drawn slices on each side of an undrawn slice that form its support.
        modality: intensity normalisation (``"auto"``, ``"ct"``, ``"mr"``).
    Raises:
        VolumeError: the image's third array axis is not superior–inferior.
    """

    @renamed_keywords(labels="classes")
    def __init__(self, image: Union[Volume, PathLike], segmenter: Optional[Segmenter] = None,
                 classes: Optional[Sequence[int]] = None, neighbours: int = 1, modality: str = "auto") -> None:
        #: The image in its own layout (what slice indices count along) and canonical (what is computed on).
        self.original = image if isinstance(image, Volume) else load_volume(image, canonical=False)
        self.image = self.original.canonical()
        self.slices = AxialSlices.of(self.original.affine, self.original.shape,
                                     "the image" if isinstance(image, Volume) else str(image))
        self.segmenter = segmenter if segmenter is not None else Segmenter(progress=False)
        if not hasattr(self.segmenter.backend, "predict_slices"):
            raise ValueError("ContourSession needs a slab backend (e.g. 'universeg')")
        if neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {neighbours}")
        self.neighbours = int(neighbours)
        #: The label values that may be drawn (``classes=``, or those of the first non-empty draw).
        self.declared = None if classes is None else tuple(sorted(self._check_values(classes)))
        self.modality = decide_modality([self.image.array], modality if modality != "auto" else self.segmenter.modality)
        self._drawn: dict[int, tuple[np.ndarray, int]] = {}  # canonical z -> (read-only canonical mask; version)
        self._history = UndoHistory()  # per step: canonical z -> its mask before, (version, declared)
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
    def labels(self) -> Optional[tuple[int, ...]]:
        """Deprecated name of :attr:`declared`."""
        warn_renamed("ContourSession.labels", "ContourSession.declared")
        return self.declared

    @property
    def drawn(self) -> list[int]:
        """Drawn slices (the image's own indices), ascending."""
        return sorted(self.slices.to_own(z) for z in self._drawn)

    def drawn_mask(self, k: int) -> np.ndarray:
        """A copy of drawn slice ``k``: the image's own ``(X, Y)`` plane ``array[:, :, k]`` (int64).

        Raises:
            ValueError: ``k`` is out of range or not drawn.
        """
        z = self.slices.to_canonical(k)
        if z not in self._drawn:
            raise ValueError(f"slice {k} is not drawn (drawn: {self.drawn})")
        return self.slices.plane_to_own(self._drawn[z][0]).astype(np.int64)

    def draw(self, k: int, mask) -> None:
        """Record slice ``k`` (the image's own index) as drawn: ``mask`` is its own ``(X, Y)`` plane
        ``array[:, :, k]`` of label values (0 = background; an all-zero mask says "nothing here").
        Replaces an earlier drawing of ``k``.

        Raises:
            ValueError: bad index, shape or values (the session is left unchanged).
        """
        z = self.slices.to_canonical(k)
        try:
            self._record(z, self.slices.plane_to_canonical(mask))
        except ValueError as exc:
            raise ValueError(f"mask for slice {k}: {exc}") from None

    def _record(self, z: int, array: np.ndarray) -> None:
        """Store canonical slice ``z``'s canonical ``(X, Y)`` mask ``array`` (checked here)."""
        if array.shape != self.image.shape[:2]:
            raise ValueError(f"a canonical slice has shape {self.image.shape[:2]}, got {array.shape}")
        if array.dtype == bool:
            array = array.astype(np.int64)
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError("the mask must hold integer label values")
        values = self._check_values(np.unique(array))
        declared = self.declared
        new = values - {0} - set(declared or ())
        if declared is not None and new:
            raise ValueError(f"label value(s) {sorted(new)} not declared for this session (classes={declared}); "
                             "declare every structure with ContourSession(..., classes=...)")
        self._push(z)
        if declared is None and values - {0}:
            self.declared = tuple(sorted(values - {0}))
        self._version += 1
        stored = array.astype(label_dtype(max(values, default=0)))  # a copy; uint8 for labels up to 255
        stored.flags.writeable = False
        self._drawn[z] = (stored, self._version)

    def erase(self, k: int) -> None:
        """Forget the drawing of slice ``k`` (the image's own index)."""
        z = self.slices.to_canonical(k)
        if z not in self._drawn:
            raise ValueError(f"slice {k} is not drawn (drawn: {self.drawn})")
        self._push(z)
        del self._drawn[z]

    def undo(self) -> None:
        """Revert the last ``draw`` or ``erase``.

        The history keeps, per step, only the slice that step changed (zlib-compressed, in its smallest
        dtype): at most :attr:`history_limit` steps (default :data:`~fewshotcx.io.undo.HISTORY_STEPS`)
        and :attr:`history_bytes` compressed bytes (default ``HISTORY_BYTES``), the oldest dropped first.

        Raises:
            ValueError: nothing (left) to undo.
        """
        step = self._history.pop()
        mask, (version, self.declared) = step.array(), step.state
        if mask is None:
            self._drawn.pop(step.key, None)
        else:
            self._drawn[step.key] = (mask, version)

    def _push(self, z: int) -> None:
        """Remember canonical slice ``z`` as it is now, before it changes."""
        mask, version = self._drawn.get(z, (None, 0))
        self._history.push(z, mask, (version, self.declared), self.history_limit, self.history_bytes)

    @staticmethod
    def _check_values(values) -> set[int]:
        out = {int(v) for v in np.asarray(list(values)).ravel()}
        if any(v < 0 for v in out):
            raise ValueError(f"label values must be non-negative integers, got {sorted(out)}")
        return out

    # ------------------------------------------------------------------ result
    @property
    def classes(self) -> Classes:
        """Label values present on the drawn slices (a property since 0.4.0, like
        :attr:`Segmenter.classes <fewshotcx.Segmenter.classes>`).

        Raises:
            VolumeError: no drawn slice shows a structure yet.
        """
        present = set()
        for mask, _ in self._drawn.values():
            present.update(int(v) for v in np.unique(mask) if v)
        if not present:
            raise VolumeError("no drawn slice shows a structure yet: draw one first")
        return Classes(sorted(present))

    def result(self) -> Volume:
        """The label map on the image's grid (in its original layout): drawn slices exactly as drawn,
        the rest predicted within each structure's drawn extent."""
        labels = self._canonical_result(self._probabilities(self._inside()))
        return self.original.with_array(reorient_array(labels, self.image.affine, self.original.affine), label=True)

    def suggest(self, n: int = 1) -> list[int]:
        """Up to ``n`` undrawn slices (the image's own indices), best first, where drawing by hand would
        fix the most."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        credit = self._credit(self.expected_errors())
        return sorted(credit, key=lambda k: (-credit[k], k))[:n]

    def expected_errors(self) -> dict[int, float]:
        """Expected wrong voxels ``Σ |result − p|`` of each candidate slice (the image's own index →
        errors): undrawn slices inside the drawn range and the slice just beyond each end, ``p`` from
        leave-one-out support draws."""
        drawn = sorted(self._drawn)
        candidates = self._inside() + [z for z in (drawn[0] - 1, drawn[-1] + 1) if 0 <= z < self.depth]
        classes = self.classes
        mean = self._probabilities(candidates, samples=True)
        labels = self._canonical_result(self._probabilities(self._inside()))
        out = {}
        for z in candidates:
            one_hot = np.stack([labels[..., z] == c for c in classes]).astype(np.float32)
            out[self.slices.to_own(z)] = float(np.abs(one_hot - mean[z]).sum())
        return out

    def _credit(self, errors: dict[int, float]) -> dict[int, float]:
        """Each candidate ``c``'s share of the expected errors it would fix: a slice ``z`` at distance
        ``d(z)`` from its nearest drawn slice is credited ``e(z) · (d(z) − |z − c|) / d(z)`` when
        drawing ``c`` brings it closer (``c`` itself: all of ``e(c)``). Own or canonical indices alike:
        the distances are the same."""
        drawn = np.asarray(self.drawn)
        nearest = {z: int(np.abs(drawn - z).min()) for z in errors}
        return {c: sum(e * max(0, nearest[z] - abs(z - c)) / nearest[z] for z, e in errors.items())
                for c in errors}

    def _inside(self) -> list[int]:
        """Undrawn canonical slices between the first and the last drawn slice."""
        drawn = sorted(self._drawn)
        if not drawn:
            raise VolumeError("no slice drawn yet: draw one first")
        return [z for z in range(drawn[0], drawn[-1] + 1) if z not in self._drawn]

    def _canonical_result(self, probs: dict[int, np.ndarray]) -> np.ndarray:
        """Threshold the predicted slices, post-process, keep the drawn slices and extents."""
        classes = self.classes
        values = np.asarray(classes, dtype=np.int64)
        out = np.zeros(self.image.shape, dtype=label_dtype(int(max(values.max(), max(self.declared or (0,))))))
        for z, p in probs.items():
            out[..., z] = np.where(p.max(axis=0) > self.segmenter.threshold, values[p.argmax(axis=0)], 0)
        drawn = np.zeros(self.image.shape, dtype=out.dtype)  # drawn values are among the labels: they fit
        for z, (mask, _) in self._drawn.items():
            drawn[..., z] = mask
        done = sorted(self._drawn)
        out[..., done] = drawn[..., done]
        ops = tuple(op for op in self.segmenter.postprocess if op != "support_extent")
        if ops:
            out = postprocess(out, ops)
        return keep_drawn(out, drawn, done, classes)

    # ------------------------------------------------------------------ prediction with a cache
    def _support(self, z: int) -> tuple[int, ...]:
        """The ``neighbours`` nearest drawn (canonical) slices below and above canonical ``z``."""
        drawn = sorted(self._drawn)
        below = [d for d in drawn if d < z][-self.neighbours:]
        above = [d for d in drawn if d > z][:self.neighbours]
        return tuple(below + above)

    def _probabilities(self, slices: Sequence[int], samples: bool = False) -> dict[int, np.ndarray]:
        """``z -> (L, X, Y)`` probabilities from the local support (``samples``: the mean over the full
        support and each leave-one-out subset of it), computed only where not cached."""
        classes = self.classes
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
        """Write the drawn slices (the image's own indices and planes), the declared label values and
        the image in its own layout (``.npz``, no pickle: :mod:`fewshotcx.io.session_file`) atomically.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        meta = {"classes": None if self.declared is None else list(self.declared), "neighbours": self.neighbours,
                "modality": self.modality}
        drawn = self.drawn
        return write_session_file(path, meta, drawn, [self.drawn_mask(k) for k in drawn], self.original, overwrite)

    @classmethod
    def load(cls, path: PathLike, image: Union[Volume, PathLike, None] = None,
             segmenter: Optional[Segmenter] = None) -> "ContourSession":
        """A session from :meth:`save`'s file; ``image`` (optional) must be on the saved grid (in any
        layout: slices are then counted in ``image``'s own order) and is used instead of the stored
        copy (it keeps its file header for writing). A version-1 file (before 0.4.0: canonical slice
        indices) is converted."""
        meta, stored, drawn = read_session_file(path)
        if image is not None:
            image = image if isinstance(image, Volume) else load_volume(image, canonical=False)
            if not image.canonical().same_grid(stored.canonical()):
                raise VolumeError(f"{path} was drawn on another grid than the image given")
        session = cls(image if image is not None else stored, segmenter, classes=meta["classes"],
                      neighbours=meta["neighbours"], modality=meta["modality"])
        for z, mask in drawn:
            session._record(z, mask)
        session._history.clear()
        return session
