"""The public entry point: few labelled volumes in, a contour on the query's exact grid out.

Everything between loading and writing happens in the closest-canonical RAS layout of each volume
(:meth:`Volume.canonical`): normalisation, slicing, the backend, reassembly, thresholding and
post-processing. A result is reoriented exactly once, at the end, onto the query's own layout.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .backends import Backend, create_backend
from .backends.base import Fitted
from .compat import renamed_keywords
from .evaluation import uncertainty
from .io.grid import AxialSlices, canonical_axial_slices
from .io.volume import PathLike, Volume, VolumeError, load_volume, reorient_array
from .pipeline.inference import default_memory_budget, resolve_device
from .pipeline.intensity import Modality
from .pipeline.postprocess import keep_drawn
from .pipeline.slicing import AxisLike, plane_axes
from .pipeline.support import SupportPool, SupportVolumes
from .predictor import Predictor, Query, adopt, condition, support_volumes

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

    State: :meth:`fit` stores one immutable value, :attr:`fitted` (a
    :class:`~fewshotcx.backends.base.Fitted`); every prediction reads it once, at its start, through
    :attr:`predictor`, so any number of threads may predict at once, and a :meth:`fit` meanwhile
    rebinds :attr:`fitted` without touching the predictions already running. :meth:`complete`,
    :meth:`predict_uncertainty` and :meth:`predict_samples` derive their own values and leave
    :attr:`fitted` as it is.
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
        else:
            self.backend = adopt(backend)
        self.seed = int(seed)
        self.modality: Modality = modality
        self.window = window
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.postprocess = tuple(postprocess)
        self.memory_budget = int(memory_budget or default_memory_budget(self.device))
        self.progress = progress
        #: The backend conditioned on the support of the last :meth:`fit` (``None`` before it).
        self.fitted: Optional[Fitted] = None

    # ------------------------------------------------------------------ fit
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
            slices: per volume, the slices that are labelled, ``array[:, :, k]`` of that image *as
                given* (a file's own order, a :class:`Volume`'s own array: docs/geometry.md, "Slice
                indices"; changed in 0.4.0, canonical indices before); ``None`` = every slice is
                labelled (empty slices are then true negatives). Only supported with a single plane
                axis, since other planes would cross unlabelled slices.
        Returns:
            ``self``.
        """
        if isinstance(images, (str, Volume)) or isinstance(labels, (str, Volume)):
            raise VolumeError("images and labels must be lists (one entry per support volume)")
        if len(images) != len(labels) or not images:
            raise VolumeError(f"got {len(images)} support images but {len(labels)} labels")
        own = [load_volume(v, canonical=False) for v in images]
        if slices is not None and len(slices) != len(images):
            raise VolumeError("slices must give one entry (or None) per support volume")
        if slices is not None:
            slices = [None if ks is None else _canonical_slices(v, ks, path) for v, ks, path in zip(own, slices, images)]
        support = support_volumes([v.canonical() for v in own], [load_volume(v, label=True) for v in labels],
                                  slices, self.modality, self.window, self.seed, self.axes)
        self.fitted = condition(self.backend, support, self.axes, self._generator(), self.device)
        return self

    def add(self, image: VolumeLike, label: VolumeLike, slices: Optional[Sequence[int]] = None) -> "Segmenter":
        """Add one labelled volume to the support, e.g. a contour a clinician has just accepted, so
        that the next prediction conditions on it too: a site's library grows patient by patient.

        The same as :meth:`fit` on the current support plus this volume (appended last), except that
        the registrations of the current support volumes onto queries already seen (strategies
        ``"registered"``/``"auto"``) are kept when the intensity decision does not change. Before any
        fit, the same as ``fit([image], [label])``.

        Args:
            image: the new support image (path or :class:`Volume`).
            label: its label map on the same grid.
            slices: its labelled slices, ``array[:, :, k]`` of ``image`` as given; ``None`` = all.
        Returns:
            ``self``.
        Raises:
            VolumeError: as :meth:`fit` (grids, empty labels, ``slices`` with other planes).
        """
        if self.fitted is None:
            return self.fit([image], [label], None if slices is None else [slices])
        old = self.fitted.support
        own = load_volume(image, canonical=False)
        chosen = None if slices is None else _canonical_slices(own, slices, image)
        every = None if old.slices is None and chosen is None else [*(old.slices or (None,) * len(old.images)), chosen]
        support = support_volumes([*old.images, own.canonical()], [*old.labels, load_volume(label, label=True)],
                                  every, self.modality, self.window, self.seed, self.axes)
        if support.modality == old.modality:  # same normalised support: its registrations still hold
            support = replace(support, registrations=old.registrations)
        self.fitted = condition(self.backend, support, self.axes, self._generator(), self.device)
        return self

    @property
    def predictor(self) -> Predictor:
        """The fitted model as an immutable :class:`~fewshotcx.predictor.Predictor` (the current
        :attr:`fitted` value with this segmenter's settings): what every prediction runs on."""
        return Predictor(self.backend, self.fitted, tuple(self.axes), self.seed, self.device, self.memory_budget,
                         self.threshold, self.postprocess, self.modality, self.window, self.progress)

    @property
    def support(self) -> Optional[SupportVolumes]:
        """The fitted support volumes (canonical), ``None`` before :meth:`fit`."""
        return None if self.fitted is None else self.fitted.support

    @property
    def pools(self) -> Mapping[int, SupportPool]:
        """Read-only view of the fitted slab pools, plane axis → pool (empty for volume backends)."""
        return MappingProxyType({}) if self.fitted is None else self.fitted.pools

    @property
    def classes(self) -> tuple[int, ...]:
        """Label values the segmenter predicts (from the support)."""
        if self.fitted is None:
            raise RuntimeError("call fit() first")
        return self.fitted.classes

    # ------------------------------------------------------------------ predict
    def predict_proba(self, query: VolumeLike) -> Union[Volume, dict[int, Volume]]:
        """Foreground probability on the query's grid.

        Returns:
            a float32 :class:`Volume` in ``[0, 1]`` for a single structure; for several structures a
            ``dict`` label value → Volume. Either lies on the query's exact grid and affine and keeps
            its source, so :func:`save_volume` writes it in the query file's orientation.
        """
        predictor = self.predictor
        prepared = predictor.query(query)
        probs = predictor.probabilities(prepared)
        maps = {c: _on_query(prepared, probs[i], label=False) for i, c in enumerate(predictor.classes)}
        return next(iter(maps.values())) if len(maps) == 1 else maps

    def predict(self, query: VolumeLike) -> Volume:
        """Label map on the query's grid, post-processed.

        Returns:
            a label :class:`Volume` (0 = background, else the support's label values, in the smallest
            unsigned dtype that holds them) on the query's exact grid and affine. A structure with
            no voxel in it comes with a warning naming it (never a silently empty mask).
        """
        predictor = self.predictor
        prepared = predictor.query(query)
        probs = predictor.probabilities(prepared)
        labels = predictor.labels(probs)
        warn_if_empty(labels, predictor.classes, probs)
        return _on_query(prepared, labels, label=True)

    def complete(self, image: VolumeLike, drawn: VolumeLike, slices: Sequence[int]) -> Volume:
        """Finish a contour drawn on a few axial slices of the same volume (the planning-system
        workflow that shape-based interpolation serves today).

        Fits on the drawn slices, predicts the volume, keeps every drawn slice exactly as drawn, and
        restricts each structure to its drawn extent (from the first to the last drawn slice that
        contains it): draw the structure's end slices, as for interpolation. ``postprocess`` applies.
        A backend with a ``complete_volume`` method (``"sam2"``: video propagation from the drawn
        slices) is asked for the probabilities instead of fit + predict.
        Pure: the drawn slices condition a local value (:meth:`Predictor.refit
        <fewshotcx.predictor.Predictor.refit>` with ``own_scan``: query-aware strategies match by
        position there); :attr:`fitted` is left as it is.

        Args:
            image: the volume being contoured (a path is read in the file's own layout).
            drawn: label map on ``image``'s grid; only ``slices`` are read.
            slices: drawn slices (empty ones are negatives), ``array[:, :, k]`` of ``image`` *as
                given*: for a file, its own stored slice order (the same numbers as ``fewshotcx
                complete --slices`` and :class:`~fewshotcx.session.ContourSession`), for a
                :class:`Volume`, its own array. That axis must run superior–inferior
                (docs/geometry.md, "Slice indices").
        Returns:
            label map on ``image``'s grid.
        """
        original = load_volume(image, canonical=False)
        canonical, labels = original.canonical(), load_volume(drawn, label=True)
        if not canonical.same_grid(labels, atol=1e-3 * max(1.0, max(canonical.spacing))):
            raise VolumeError(f"drawn: the drawn mask {labels.shape} is not on the image's grid {canonical.shape}")
        drawn_slices = sorted(set(canonical_axial_slices(original.affine, original.shape, slices, _name(image))))
        support = support_volumes([canonical], [labels], [drawn_slices], self.modality, self.window, self.seed,
                                  self.axes)
        predictor = self.predictor.refit(support, own_scan=True)
        if hasattr(self.backend, "complete_volume"):  # e.g. SAM 2: propagate the drawn slices themselves
            probs = self.backend.complete_volume(canonical, labels, drawn_slices, predictor.classes, torch.as_tensor(
                support.normalised[0], device=self.device)).clamp(0, 1).float().cpu().numpy()
        else:
            probs = predictor.probabilities(predictor.query(canonical))
        result = predictor.labels(probs)
        keep_drawn(result, labels.array, drawn_slices, predictor.classes)
        return original.with_array(reorient_array(result, canonical.affine, original.affine), label=True)

    def _generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed``: the same draws on every device."""
        return torch.Generator(device="cpu").manual_seed(self.seed)

    # ------------------------------------------------------------------ internal API
    # What session.py, server/ and benchmarks use besides the public methods: a change inside the
    # Segmenter keeps these signatures (docs/architecture.md).
    def canonical_probabilities(self, query: VolumeLike, generator: Optional[torch.Generator] = None
                                ) -> tuple[Volume, Volume, np.ndarray]:
        """The query as given, its canonical form, and ``(L, X, Y, Z)`` float32 probabilities in
        ``[0, 1]`` on the canonical grid (``L`` = :attr:`classes`), before thresholding.

        Args:
            generator: seeds this prediction with its ``initial_seed()``; ``None`` = :attr:`seed`.
        """
        predictor = self.predictor
        if generator is not None:
            predictor = replace(predictor, seed=generator.initial_seed())
        prepared = predictor.query(query)
        return prepared.original, prepared.canonical, predictor.probabilities(prepared)

    def labels_from(self, probs: np.ndarray) -> np.ndarray:
        """``(L, X, Y, Z)`` canonical probabilities → ``(X, Y, Z)`` canonical label map, thresholded and
        post-processed exactly as :meth:`predict` does."""
        return self.predictor.labels(probs)

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with ``seed`` (the same draws on every device)."""
        return self._generator()

    @property
    def support_pools(self) -> Mapping[int, SupportPool]:
        """Read-only view of the fitted slab pools (the same as :attr:`pools`)."""
        return self.pools

    # ------------------------------------------------------------------ uncertainty (fewshotcx.evaluation.uncertainty)
    @renamed_keywords(k="draws")
    def predict_uncertainty(self, query: VolumeLike, draws: int = uncertainty.DEFAULT_DRAWS,
                            measure: str = "entropy", fraction: float = uncertainty.DEFAULT_FRACTION) -> Volume:
        """Per-voxel uncertainty on the query's grid: float32 ≥ 0 (``"entropy"``: bits in ``[0, 1]``).

        From ``draws`` independent draws (``k=`` before 0.4.0, deprecated; the CLI's ``--draws``), each on
        a random ``fraction`` of the support with its own seed
        (:meth:`Predictor.draw <fewshotcx.predictor.Predictor.draw>`), × the plane axes; 0 where every
        draw says exactly the same 0/1. See :mod:`fewshotcx.evaluation.uncertainty`. A draw's support
        sets are ``fraction`` of the usual size, so it costs about ``fraction`` of an inference; the
        support is registered onto the query once for all of them (docs/review.md measures what the
        defaults cost against one ``predict`` on real CT).
        """
        predictor = self.predictor
        prepared = predictor.query(query)
        samples = uncertainty.canonical_samples(predictor, prepared, draws, fraction)
        return _on_query(prepared, uncertainty.uncertainty_map(samples, measure), label=False)

    @renamed_keywords(k="draws")
    def predict_samples(self, query: VolumeLike, draws: int = uncertainty.DEFAULT_DRAWS,
                        fraction: float = uncertainty.DEFAULT_FRACTION) -> list[Volume]:
        """``draws`` plausible label maps on the query's grid, one per independent support draw (planes
        averaged within a draw; ``k=`` before 0.4.0, deprecated)."""
        predictor = self.predictor
        prepared = predictor.query(query)
        return [_on_query(prepared, labels, label=True)
                for labels in uncertainty.sample_labels(predictor, prepared, draws, fraction)]


def _canonical_slices(volume: Volume, slices: Sequence[int], image: VolumeLike) -> list[int]:
    """``slices`` of ``volume`` as given (its own third axis) → canonical axial indices."""
    axial = AxialSlices.of(volume.affine, volume.shape, _name(image))
    return [axial.to_canonical(k) for k in slices]


def _name(image: VolumeLike) -> str:
    """How messages name an image: its path, or "the image" for a :class:`Volume`."""
    return "the image" if isinstance(image, Volume) else str(image)


def _on_query(query: Query, array: np.ndarray, label: bool) -> Volume:
    """A canonical ``(X, Y, Z)`` array as a Volume on the query's own grid and layout."""
    return query.original.with_array(reorient_array(array, query.canonical.affine, query.original.affine), label=label)


def warn_if_empty(labels: np.ndarray, classes: Sequence[int], probs: np.ndarray) -> None:
    """Warn for each structure of ``classes`` that ``labels`` does not contain, with its highest
    probability (how far from the threshold the model was)."""
    for i, value in enumerate(classes):
        if not (labels == value).any():
            warnings.warn(f"structure {value}: no voxel predicted (highest probability {float(probs[i].max()):.2f}); "
                          "the support may not show this anatomy, or the query may not contain it",
                          stacklevel=3)
