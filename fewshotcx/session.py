"""Interactive contouring: draw a few axial slices, let the model finish, ask where to draw next;
or start from a fitted segmenter's contour and correct it with boxes, clicks and scribbles.

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

Boxes, clicks and scribbles (:meth:`ContourSession.add_box`, ``add_point``, ``add_scribble``) take
voxels ``(i, j, k)`` of the image's own ``array[i, j, k]`` and refine the current result in 3D
(:mod:`fewshotcx.interactive`: a random walker with a prior on a region around the interaction); the
starting result is the fitted segmenter's prediction when there is one. Every kind of step, drawn or
prompted, is one entry of one undo history.

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
from .interactive import prompts as kinds
from .interactive.completion import DrawnCompletion, Key
from .interactive.layer import PromptLayer
from .interactive.refine import Settings, in_units
from .io.grid import AxialSlices
from .io.session_file import read_session_file, write_session_file
from .io.undo import HISTORY_BYTES, HISTORY_STEPS, UndoHistory
from .io.volume import PathLike, Volume, VolumeError, label_dtype, load_volume, reorient_array
from .pipeline.intensity import decide_modality
from .predictor import Predictor
from .segmenter import Segmenter

PROMPT = "prompt"  # the undo-history key of an add_box / add_point / add_scribble step

class Classes(CallableTuple):
    """:attr:`ContourSession.classes` (a method before 0.4.0)."""

    old = "ContourSession.classes"


class ContourSession(DrawnCompletion):
    """Draw → result → suggest → draw …, boxes, clicks and scribbles, with undo, on one image.

    Args:
        image: the volume being contoured (path or :class:`Volume`), its third array axis
            superior–inferior: slice ``k`` is its own ``array[:, :, k]`` (module docstring).
        segmenter: the :class:`Segmenter` whose backend, threshold and ``postprocess`` are used;
            default ``Segmenter()`` (bundled UniverSeg, CPU/auto device). A *fitted* one (support
            from ``fit``/``add``; any backend, ``"atlas"`` included) gives the starting contour:
            :meth:`result` before any interaction is ``segmenter.predict(image)``; unfitted (a slab
            backend such as ``"universeg"`` then), the session starts empty and completes drawn
            slices in context (:attr:`completes_slices`). The session keeps the
            fitted model it started with (:attr:`model`): a later ``segmenter.add`` or ``fit`` changes
            the next session's first pass, never this one's.
        classes: the label values that may be drawn (``None``: the fitted segmenter's classes, else
            fixed by the first non-empty draw or prompt); ``labels=`` before 0.4.0 (deprecated).
        neighbours: drawn slices on each side of an undrawn slice that form its support.
        modality: intensity normalisation (``"auto"``, ``"ct"``, ``"mr"``).
        refinement: the constants of the box / click / scribble refinement
            (:class:`fewshotcx.interactive.Settings`; the defaults are the measured ones).
    Raises:
        VolumeError: the image's third array axis is not superior–inferior.
    """

    @renamed_keywords(labels="classes")
    def __init__(self, image: Union[Volume, PathLike], segmenter: Optional[Segmenter] = None,
                 classes: Optional[Sequence[int]] = None, neighbours: int = 1, modality: str = "auto",
                 refinement: Settings = Settings()) -> None:
        #: The image in its own layout (what slice indices count along) and canonical (what is computed on).
        self.original = image if isinstance(image, Volume) else load_volume(image, canonical=False)
        self.image = self.original.canonical()
        self.slices = AxialSlices.of(self.original.affine, self.original.shape,
                                     "the image" if isinstance(image, Volume) else str(image))
        self.segmenter = segmenter if segmenter is not None else Segmenter(progress=False)
        if not self.completes_slices and self.segmenter.fitted is None:
            raise ValueError(f"an unfitted ContourSession completes drawn slices in context, which backend "
                             f"{self._backend_name!r} cannot: use a slab backend "
                             f"(e.g. 'universeg'), or fit this segmenter to start from its contour")
        if neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {neighbours}")
        self.neighbours = int(neighbours)
        #: The label values that may be drawn (``classes=``, or those of the first non-empty draw).
        self.declared = None if classes is None else tuple(sorted(self._check_values(classes)))
        #: The fitted model this session started from (an immutable value), ``None`` when unfitted.
        self.model: Optional[Predictor] = self.segmenter.predictor if self.segmenter.fitted is not None else None
        if self.declared is None and self.model is not None:
            self.declared = tuple(self.model.classes)
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
        self._layer = PromptLayer(refinement)  # boxes, clicks, scribbles and the label maps they lead to
        self._units: Optional[np.ndarray] = None  # the image in the refinement's units (HU; MR scaled)
        self._automatic: Optional[tuple] = None  # (canonical labels, float16 probabilities) of the model

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
        """Revert the last ``draw``, ``erase``, ``add_box``, ``add_point`` or ``add_scribble``: the
        result is then exactly the previous one.

        The history keeps, per step, only the slice that step changed (zlib-compressed, in its smallest
        dtype) or that it added a prompt: at most :attr:`history_limit` steps (default
        :data:`~fewshotcx.io.undo.HISTORY_STEPS`) and :attr:`history_bytes` compressed bytes (default
        ``HISTORY_BYTES``), the oldest dropped first (the prompts themselves stay).

        Raises:
            ValueError: nothing (left) to undo.
        """
        step = self._history.pop()
        mask, (version, self.declared) = step.array(), step.state
        if step.key == PROMPT:
            self._layer.pop()
        elif mask is None:
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

    # ------------------------------------------------------------------ boxes, clicks, scribbles
    def add_box(self, lo: Sequence[int], hi: Sequence[int], label: int = 1) -> None:
        """The structure ``label`` lies inside the box with inclusive corner voxels ``lo`` and ``hi``
        (``(i, j, k)`` of the image's own ``array[i, j, k]``; a 2D box when ``lo[2] == hi[2]``): it is
        segmented in the box (nothing of it outside, unless a later positive click says so).

        Raises:
            ValueError: a corner outside the image, ``lo > hi`` on an axis, an unknown label (unchanged).
        """
        self._prompt(lambda label: kinds.box(lo, hi, label, self.slices), label)

    def add_point(self, ijk: Sequence[int], positive: bool = True, label: int = 1) -> None:
        """A click on voxel ``ijk`` (``(i, j, k)`` of the own ``array[i, j, k]``): it belongs to
        structure ``label`` (``positive``) or not. The contour changes around it in 3D and the voxel
        ends on the side asked for.

        Raises:
            ValueError: a voxel outside the image, ``positive`` not a bool, an unknown label (unchanged).
        """
        self._prompt(lambda label: kinds.point(ijk, positive, label, self.slices), label)

    def add_scribble(self, mask: np.ndarray, positive: bool = True, label: int = 1) -> None:
        """A scribble: ``mask`` is a boolean array of the image's own ``(X, Y, Z)`` shape whose voxels
        belong to structure ``label`` (``positive``) or not; as a click, for every voxel.

        Raises:
            ValueError: not a bool array of the image's shape, empty, an unknown label (unchanged).
        """
        self._prompt(lambda label: kinds.scribble(mask, positive, label, self.slices), label)

    def _prompt(self, make, label: object) -> None:
        """Check the label, build the prompt (both may refuse), then record it as one undo step."""
        prompt = make(kinds.check_label(label, self.declared))
        self._history.push(PROMPT, None, (0, self.declared), self.history_limit, self.history_bytes)
        if self.declared is None:
            self.declared = (prompt.label,)
        self._layer.add(prompt)

    @property
    def prompts(self) -> tuple[kinds.Prompt, ...]:
        """The boxes, clicks and scribbles so far, oldest first (canonical voxels)."""
        return tuple(self._layer.prompts)

    def accept(self) -> Volume:
        """The contour as it stands (:meth:`result`): labels on the image's grid, in its own layout,
        ready for ``segmenter.add(session.original, session.accept())`` (the next patient's first
        pass then conditions on it)."""
        return self.result()

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
        """The label map on the image's grid (in its original layout): the starting contour (the
        fitted segmenter's prediction, else the drawn slices completed within each structure's drawn
        extent, else empty) with drawn slices exactly as drawn, then refined by each box, click and
        scribble in turn (:mod:`fewshotcx.interactive`; clicked and scribbled voxels on their side).

        Raises:
            VolumeError: nothing to show yet (no fitted segmenter, no structure drawn, no prompt).
        """
        if self._layer.prompts:
            if self._units is None:  # the refinement's intensity units, computed once
                self._units = in_units(self.image.array, self.modality)
            labels = self._layer.apply(self._units, self.image.spacing, self._base, self._base_key(),
                                       self._prior, {z: mask for z, (mask, _) in self._drawn.items()})
        else:
            labels = self._base()
        return self.original.with_array(reorient_array(labels, self.image.affine, self.original.affine), label=True)

    def _base(self) -> np.ndarray:
        """The canonical label map before any prompt."""
        if self.model is not None:
            labels = self._automatic_contour()[0].copy()
            for z, (mask, _) in self._drawn.items():
                labels[..., z] = mask
            return labels
        if self._layer.prompts and not any(mask.any() for mask, _ in self._drawn.values()):
            return np.zeros(self.image.shape, label_dtype(max(self.declared or (0,))))
        return self._canonical_result(self._probabilities(self._inside()))

    def _base_key(self) -> tuple:
        """Identifies :meth:`_base`'s value: the drawn slices' versions (the model never changes)."""
        return tuple(sorted((z, v) for z, (_, v) in self._drawn.items()))

    def _automatic_contour(self) -> tuple:
        """``((X, Y, Z) canonical labels, (L, X, Y, Z) float16 probabilities)`` of :attr:`model` on
        this image, computed once."""
        if self._automatic is None:
            probs = self.model.probabilities(self.model.query(self.image))
            self._automatic = (self.model.labels(probs), probs.astype(np.float16))
        return self._automatic

    def _prior(self, label: int) -> Optional[np.ndarray]:
        """The automatic contour's ``(X, Y, Z)`` probability of ``label`` (``None``: not fitted, or not
        one of its classes)."""
        if self.model is None or label not in self.model.classes:
            return None
        return self._automatic_contour()[1][list(self.model.classes).index(label)]

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike, overwrite: bool = False) -> Path:
        """Write the drawn slices (the image's own indices and planes), the boxes, clicks and scribbles
        (the image's own voxels), the declared label values and the image in its own layout (``.npz``, no pickle: :mod:`fewshotcx.io.session_file`) atomically.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        meta = {"classes": None if self.declared is None else list(self.declared), "neighbours": self.neighbours,
                "modality": self.modality}
        drawn = self.drawn
        prompts = [(p.record, self.slices.voxels_to_own(p.voxels)) for p in self._layer.prompts]
        return write_session_file(path, meta, drawn, [self.drawn_mask(k) for k in drawn], self.original, overwrite,
                                  prompts)

    @classmethod
    def load(cls, path: PathLike, image: Union[Volume, PathLike, None] = None,
             segmenter: Optional[Segmenter] = None) -> "ContourSession":
        """A session from :meth:`save`'s file; ``image`` (optional) must be on the saved grid (in any
        layout: slices are then counted in ``image``'s own order) and is used instead of the stored
        copy (it keeps its file header for writing). Its result is the saved one (the interactions are
        replayed; the undo history starts empty). A version-1 file (before 0.4.0: canonical slice
        indices) is converted; a version-2 file has no interactions."""
        meta, stored, drawn, prompts = read_session_file(path)
        if image is not None:
            image = image if isinstance(image, Volume) else load_volume(image, canonical=False)
            if not image.canonical().same_grid(stored.canonical()):
                raise VolumeError(f"{path} was drawn on another grid than the image given")
        session = cls(image if image is not None else stored, segmenter, classes=meta["classes"],
                      neighbours=meta["neighbours"], modality=meta["modality"])
        for z, mask in drawn:
            session._record(z, mask)
        for record, voxels in prompts:
            voxels = np.sort(voxels, axis=0) if record["kind"] == "box" else voxels
            session._layer.add(kinds.Prompt(record["kind"], int(record["label"]), bool(record["positive"]),
                                            voxels.astype(np.int32)))
        session._history.clear()
        return session
