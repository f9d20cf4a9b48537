"""The public entry point: few labelled volumes in, a contour on the query's exact grid out.

Everything between loading and writing happens in the closest-canonical RAS layout of each volume
(:meth:`Volume.canonical`): normalisation, slicing, the backend, reassembly, thresholding and
post-processing. A result is reoriented exactly once, at the end, onto the query's own layout.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .backends import Backend, VolumeBackend, create_backend
from .backends.base import QueryAwareBackend
from .locks import ReadWriteLock, reads, writes
from .progress import show_progress
from .io.grid import canonical_axial_slices
from .io.volume import PathLike, Volume, VolumeError, label_dtype, load_volume, reorient_array
from .pipeline.inference import DEFAULT_MEMORY_BUDGET, default_memory_budget, resolve_device, slab_probabilities  # noqa: F401
from .pipeline.intensity import Modality, decide_modality, looks_like_ct, normalize
from .pipeline.postprocess import keep_drawn, postprocess
from .pipeline.slicing import AxisLike, Framing, plane_axes, relative_position
from .pipeline.support import QUERY_AWARE, SupportPool, SupportVolumes, build_pool, check_support, support_classes

VolumeLike = Union[Volume, PathLike]


class Segmenter:
    """Few-shot, in-context 3D segmentation with a UniverSeg or SAM backend.

    Example::

        seg = fx.Segmenter(backend="universeg", weights="default")
        seg.fit(images=["p1_ct.nii.gz", "p2_ct.nii.gz"], labels=["p1_gtv.nii.gz", "p2_gtv.nii.gz"])
        mask = seg.predict("p3_ct.nii.gz")       # Volume on p3's grid
        fx.save_volume(mask, "p3_gtv.nii.gz")    # in p3's original orientation and affine

    Args:
        backend: ``"universeg"``, ``"sam"``, or any object implementing
            :class:`~fewshotcx.backends.base.Backend` (then ``weights``/``model``/... are not used).
        weights: ``"default"`` (bundled checkpoint), ``"official"`` (the backend's published checkpoint)
            or a path.
        model: an ``nn.Module`` to use instead of ``weights`` (e.g. a tiny network in tests).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        axis: ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"all"`` (average of the three planes).
        context: neighbour slices each side (2.5D); ``None`` = what the weights expect.
        support_size: support examples per query; ``None`` = the backend's default.
        ensemble: independently drawn support sets whose probabilities are averaged.
        slice_size: model input size; ``None`` = the weights' native size.
        seed: makes support sampling (and so every prediction) reproducible.
        modality: ``"auto"``, ``"ct"`` or ``"mr"`` intensity normalisation; ``window=(level, width)``
            for CT.
        threshold: probability above which :meth:`predict` marks a voxel.
        postprocess: 3D clean-up applied by :meth:`predict`: any of ``"largest_component"``,
            ``"fill_holes"``, ``"support_extent"`` (see :mod:`fewshotcx.pipeline.postprocess`).
        memory_budget: bytes of working memory per chunk of query slabs (default 128 MiB on CPU, 8 GiB
            on CUDA).
        progress: show a progress bar on long volumes (only when stderr is a terminal).
        **backend_options: passed to the backend (e.g. ``strategy=``, default ``"auto"``: support registered
            onto each query, retrieval where registration fails its check; ``tune_steps=`` for SAM).

    Threads: one fitted Segmenter may predict from several threads at once; :meth:`fit` and
    :meth:`complete` wait for running predictions and hold new ones until they are done
    (:class:`~fewshotcx.locks.ReadWriteLock`).
    """

    def __init__(
        self,
        backend: Union[str, Backend] = "universeg",
        weights: Union[str, PathLike] = "default",
        model: Optional[torch.nn.Module] = None,
        device: Union[str, torch.device] = "auto",
        axis: AxisLike = "axial",
        context: Optional[int] = None,
        support_size: Optional[int] = None,
        ensemble: int = 1,
        slice_size: Optional[int] = None,
        seed: int = 0,
        modality: Modality = "auto",
        window: Optional[tuple[float, float]] = None,
        threshold: float = 0.5,
        postprocess: Sequence[str] = (),
        memory_budget: Optional[int] = None,
        progress: bool = True,
        **backend_options: Any,
    ) -> None:
        self.device = resolve_device(device)
        self.axes = plane_axes(axis)
        if isinstance(backend, str):
            self.backend = create_backend(
                backend, weights=weights, model=model, device=self.device, context=context,
                support_size=support_size, ensemble=ensemble, slice_size=slice_size, **backend_options,
            )
        elif isinstance(backend, (Backend, VolumeBackend)):
            self.backend = backend
        else:
            raise ValueError(f"backend must be a name or a Backend/VolumeBackend object, got {type(backend).__name__}")
        self.seed = int(seed)
        self.modality: Modality = modality
        self.window = window
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.postprocess = tuple(postprocess)
        self.memory_budget = int(memory_budget or default_memory_budget(self.device))
        self.progress = progress
        self.pools: dict[int, SupportPool] = {}
        self.support: Optional[SupportVolumes] = None
        self._support_extent: Optional[tuple[float, float]] = None
        self._lock = ReadWriteLock()

    # ------------------------------------------------------------------ fit
    @writes
    def fit(
        self,
        images: Sequence[VolumeLike],
        labels: Sequence[VolumeLike],
        slices: Optional[Sequence[Optional[Sequence[int]]]] = None,
    ) -> "Segmenter":
        """Use labelled volumes as the support.

        Args:
            images: support images (paths or :class:`Volume`).
            labels: label maps on the same grids (0 = background; several values = several structures).
            slices: per volume, the axial indices (of the canonical array) that are labelled; ``None``
                = every slice is labelled (empty slices are then true negatives). Only supported with a
                single plane axis, since other planes would cross unlabelled slices.
        Returns:
            ``self``.
        """
        if isinstance(images, (str, Volume)) or isinstance(labels, (str, Volume)):
            raise VolumeError("images and labels must be lists (one entry per support volume)")
        if len(images) != len(labels) or not images:
            raise VolumeError(f"got {len(images)} support images but {len(labels)} labels")
        vols = [load_volume(v) for v in images]
        labs = [load_volume(v, label=True) for v in labels]
        check_support(vols, labs)
        if slices is not None and self.axes != [2]:
            raise VolumeError("slices= (partially labelled volumes) needs axis='axial'")
        if slices is not None and len(slices) != len(vols):
            raise VolumeError("slices must give one entry (or None) per support volume")
        chosen = None if slices is None else tuple(None if z is None else tuple(int(k) for k in z) for z in slices)
        modality = decide_modality([v.array for v in vols], self.modality)
        support = SupportVolumes(
            images=tuple(vols), labels=tuple(labs),
            normalised=tuple(normalize(v.array, modality, self.window) for v in vols),
            slices=chosen, classes=support_classes(labs, chosen), modality=modality, seed=self.seed,
        )
        generator = self._generator()
        pools = {}
        if isinstance(self.backend, Backend):
            b = self.backend
            pools = {axis: build_pool(support.normalised, labs, axis, Framing.of(b), chosen, support.classes,
                                      device=self.device) for axis in self.axes}
            self.backend.fit(pools, generator)
        if isinstance(self.backend, VolumeBackend):
            self.backend.fit_volumes(support, generator)
        self.pools, self.support = pools, support
        self._support_extent = _foreground_extent(labs, chosen)
        return self

    @property
    def classes(self) -> tuple[int, ...]:
        """Label values the segmenter predicts (from the support)."""
        if self.support is None:
            raise RuntimeError("call fit() first")
        return self.support.classes

    # ------------------------------------------------------------------ predict
    @reads
    def predict_proba(self, query: VolumeLike) -> Union[Volume, dict[int, Volume]]:
        """Foreground probability on the query's grid.

        Returns:
            a float32 :class:`Volume` in ``[0, 1]`` for a single structure; for several structures a
            ``dict`` label value → Volume. Either lies on the query's exact grid and affine and keeps
            its source, so :func:`save_volume` writes it in the query file's orientation.
        """
        original, canonical, probs = self._canonical_probabilities(query)
        maps = {c: original.with_array(reorient_array(probs[i], canonical.affine, original.affine), label=False)
                for i, c in enumerate(self.classes)}
        return next(iter(maps.values())) if len(maps) == 1 else maps

    @reads
    def predict(self, query: VolumeLike) -> Volume:
        """Label map on the query's grid, post-processed.

        Returns:
            a label :class:`Volume` (0 = background, else the support's label values, in the smallest
            unsigned dtype that holds them) on the query's exact grid and affine. A structure with
            no voxel in it comes with a warning naming it (never a silently empty mask).
        """
        original, canonical, probs = self._canonical_probabilities(query)
        labels = self._labels(probs)
        warn_if_empty(labels, self.classes, probs)
        return original.with_array(reorient_array(labels, canonical.affine, original.affine), label=True)

    @writes
    def complete(self, image: VolumeLike, drawn: VolumeLike, slices: Sequence[int]) -> Volume:
        """Finish a contour drawn on a few axial slices of the same volume (the planning-system
        workflow that shape-based interpolation serves today).

        Fits on the drawn slices, predicts the volume, keeps every drawn slice exactly as drawn, and
        restricts each structure to its drawn extent (from the first to the last drawn slice that
        contains it): draw the structure's end slices, as for interpolation. ``postprocess`` applies.
        A backend with a ``complete_volume`` method (``"sam2"``: video propagation from the drawn
        slices) is asked for the probabilities instead of fit + predict.
        Pure: an earlier :meth:`fit` (support, pools, backend state) is left exactly as it was.

        Args:
            image: the volume being contoured (a path is read in the file's own layout).
            drawn: label map on ``image``'s grid; only ``slices`` are read.
            slices: drawn slices (empty ones are negatives), counted along the third array axis of
                ``image`` *as given*: for a file, its own stored slice order (what a viewer shows;
                the same numbers as ``fewshotcx complete --slices``), for a :class:`Volume`, its
                ``array[:, :, k]``. That axis must run superior–inferior
                (:func:`~fewshotcx.io.grid.canonical_axial_slices`).
        Returns:
            label map on ``image``'s grid.
        """
        original = load_volume(image, canonical=False)
        canonical, labels = original.canonical(), load_volume(drawn, label=True)
        if not canonical.same_grid(labels, atol=1e-3 * max(1.0, max(canonical.spacing))):
            raise VolumeError(f"drawn: the drawn mask {labels.shape} is not on the image's grid {canonical.shape}")
        what = "the image" if isinstance(image, Volume) else str(image)
        drawn_slices = sorted(set(canonical_axial_slices(original.affine, original.shape, slices, what)))
        saved = (self.pools, self.support, self._support_extent, copy.copy(self.backend.__dict__))
        try:
            if getattr(self.backend, "strategy", None) in QUERY_AWARE:
                self.backend.strategy = "position"  # the support is this very volume: same anatomy, same slices
            if getattr(self.backend, "check_coverage", False):
                self.backend.check_coverage = False  # a few drawn slices of the same scan: nothing to check
            self.fit([canonical], [labels], slices=[drawn_slices])
            if hasattr(self.backend, "complete_volume"):  # e.g. SAM 2: propagate the drawn slices themselves
                probs = self.backend.complete_volume(canonical, labels, drawn_slices, self.classes, torch.as_tensor(
                    self.support.normalised[0], device=self.device)).clamp(0, 1).float().cpu().numpy()
            else:
                _, _, probs = self._canonical_probabilities(canonical)
            result = self._labels(probs)
            classes = self.classes
        finally:
            self.pools, self.support, self._support_extent, state = saved
            self.backend.__dict__.clear()
            self.backend.__dict__.update(state)
        keep_drawn(result, labels.array, drawn_slices, classes)
        return original.with_array(reorient_array(result, canonical.affine, original.affine), label=True)

    # ------------------------------------------------------------------ canonical-space internals
    def _canonical_probabilities(self, query: VolumeLike, generator: Optional[torch.Generator] = None
                                 ) -> tuple[Volume, Volume, np.ndarray]:
        """The query as given, its canonical form, and ``(L, X, Y, Z)`` probabilities on the canonical grid."""
        if self.support is None:
            raise RuntimeError("call fit() with labelled support volumes before predicting")
        original = query if isinstance(query, Volume) else load_volume(query)
        canonical = original.canonical()
        self._check_query_modality(canonical.array)
        normalised = torch.as_tensor(normalize(canonical.array, self.support.modality, self.window), device=self.device)
        generator = self._generator() if generator is None else generator
        if isinstance(self.backend, VolumeBackend):
            probs = self.backend.predict_volume(canonical, normalised, generator)
        else:
            aware = isinstance(self.backend, QueryAwareBackend)
            with (self.backend.query_context(self.support, canonical, normalised, generator) if aware
                  else contextlib.nullcontext()) as for_query:  # per-query state stays local to this call
                backend = self.backend if for_query is None else for_query
                probs = slab_probabilities(backend, normalised, canonical.spacing, self.axes, generator,
                                           self.memory_budget, show_progress(self.progress))
        return original, canonical, probs.clamp(0, 1).float().cpu().numpy()

    def _labels(self, probs: np.ndarray) -> np.ndarray:
        """``(L, X, Y, Z)`` canonical probabilities → post-processed canonical label map."""
        values = np.asarray(self.classes, dtype=np.int64)
        fg = probs.max(axis=0) > self.threshold
        labels = np.where(fg, values[probs.argmax(axis=0)], 0).astype(label_dtype(int(values.max())))
        if self.postprocess:
            labels = postprocess(labels, self.postprocess, self._support_extent)
        return labels

    def _check_query_modality(self, array: np.ndarray) -> None:
        if self.modality != "auto":
            return
        looks = "ct" if looks_like_ct(array) else "mr"
        if looks != self.support.modality:
            warnings.warn(f"the query looks like {looks.upper()} but the support was normalised as "
                          f"{self.support.modality.upper()}; the query is normalised the same way as the support "
                          "(pass modality='ct' or 'mr' to decide)", stacklevel=3)

    def _generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed``: the same draws on every device."""
        return torch.Generator(device="cpu").manual_seed(self.seed)

    # ------------------------------------------------------------------ internal API
    # What evaluation/, session.py and server/ use instead of the private members above: a change
    # inside the Segmenter keeps these signatures (docs/architecture.md).
    def canonical_probabilities(self, query: VolumeLike, generator: Optional[torch.Generator] = None
                                ) -> tuple[Volume, Volume, np.ndarray]:
        """The query as given, its canonical form, and ``(L, X, Y, Z)`` float32 probabilities in
        ``[0, 1]`` on the canonical grid (``L`` = :attr:`classes`), before thresholding.

        Args:
            generator: the draws of this prediction; ``None`` = :meth:`generator` (the ``seed``'s).
        """
        return self._canonical_probabilities(query, generator)

    def labels_from(self, probs: np.ndarray) -> np.ndarray:
        """``(L, X, Y, Z)`` canonical probabilities → ``(X, Y, Z)`` canonical label map, thresholded and
        post-processed exactly as :meth:`predict` does."""
        return self._labels(probs)

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with ``seed`` (the same draws on every device)."""
        return self._generator()

    @property
    def support_pools(self) -> Mapping[int, SupportPool]:
        """Read-only view of the fitted slab pools, plane axis → pool (empty for volume backends)."""
        return MappingProxyType(self.pools)

    def copy_with(self, *, seed: Optional[int] = None, axes: Optional[Sequence[int]] = None,
                  pools: Optional[Mapping[int, SupportPool]] = None, own_backend: bool = False) -> "Segmenter":
        """A shallow copy for one independent draw or fold; ``self`` is left exactly as it is.

        Args:
            seed: the copy's seed (its :meth:`generator`).
            axes: the copy's plane axes.
            pools: the copy gets a copy of the backend fitted on these slab pools (backends rebind
                their fitted state, :mod:`fewshotcx.backends.base`).
            own_backend: give the copy its own shallow copy of the backend even without ``pools``
                (e.g. before calling :meth:`fit` on the copy).
        """
        clone = copy.copy(self)
        if seed is not None:
            clone.seed = int(seed)
        if axes is not None:
            clone.axes = list(axes)
        if pools is not None or own_backend:
            clone.backend = copy.copy(self.backend)
        if pools is not None:
            clone.pools = dict(pools)
            clone.backend.fit(clone.pools, clone.generator())
        return clone

    # ------------------------------------------------------------------ uncertainty (fewshotcx.evaluation.uncertainty)
    def predict_uncertainty(self, query: VolumeLike, k: int = 8, measure: str = "entropy",
                            fraction: float = 0.5) -> Volume:
        """Per-voxel uncertainty on the query's grid: float32 ≥ 0 (``"entropy"``: bits in ``[0, 1]``).

        From ``k`` independent draws (each on a random ``fraction`` of the support pool, with its own
        seed) × the plane axes; 0 where every draw says exactly the same 0/1. See
        :mod:`fewshotcx.evaluation.uncertainty`. Costs ``k`` predictions.
        """
        from .evaluation.uncertainty import predict_uncertainty

        return predict_uncertainty(self, query, k, measure, fraction)  # type: ignore[arg-type]

    def predict_samples(self, query: VolumeLike, k: int = 8, fraction: float = 0.5) -> list[Volume]:
        """``k`` plausible label maps on the query's grid, one per independent support draw."""
        from .evaluation.uncertainty import predict_samples

        return predict_samples(self, query, k, fraction)


def warn_if_empty(labels: np.ndarray, classes: Sequence[int], probs: np.ndarray) -> None:
    """Warn for each structure of ``classes`` that ``labels`` does not contain, with its highest
    probability (how far from the threshold the model was)."""
    for i, value in enumerate(classes):
        if not (labels == value).any():
            warnings.warn(f"structure {value}: no voxel predicted (highest probability {float(probs[i].max()):.2f}); "
                          "the support may not show this anatomy, or the query may not contain it",
                          stacklevel=3)


def _foreground_extent(labels: Sequence[Volume], slices=None) -> tuple[float, float]:
    """Relative axial range ``(lo, hi)`` in ``[0, 1]`` covered by labelled foreground across the support
    (only the labelled ``slices`` count when given: unlabelled slices must not leak into predictions)."""
    lo, hi = 1.0, 0.0
    for i, lab in enumerate(labels):
        z = np.nonzero(lab.array.any(axis=(0, 1)))[0]
        if slices is not None and slices[i] is not None:
            z = np.intersect1d(z, np.asarray(slices[i], dtype=int))
        if z.size == 0:
            continue
        depth = lab.shape[2]
        lo, hi = min(lo, relative_position(z.min(), depth)), max(hi, relative_position(z.max(), depth))
    return lo, hi
