"""The public entry point: few labelled volumes in, a contour on the query's exact grid out."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends import Backend, create_backend
from .pipeline.intensity import Modality, normalize
from .pipeline.postprocess import postprocess
from .pipeline.slicing import AxisLike, extract_slabs, iter_chunks, make_geometry, plane_axes, reassemble
from .pipeline.support import SupportPool, build_pool, check_support
from .io.volume import PathLike, Volume, VolumeError, load_volume, reorient_array

VolumeLike = Union[Volume, PathLike]

#: Working-memory budget for one chunk of query slabs through the model. On CPU, small chunks are
#: faster (cache locality): about one v1 slab at 128² per call measured 1.6x faster than 1 GiB chunks
#: (docs/performance.md); GPUs want large batches.
DEFAULT_MEMORY_BUDGET = {"cpu": 128 << 20, "cuda": 8 << 30}


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    return dev


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
        progress: show a progress bar on long volumes.
        **backend_options: passed to the backend (e.g. ``strategy="random"``, ``tune_steps=`` for SAM).
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
        elif isinstance(backend, Backend):
            self.backend = backend
        else:
            raise ValueError(f"backend must be a name or a Backend object, got {type(backend).__name__}")
        self.seed = int(seed)
        self.modality: Modality = modality
        self.window = window
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.postprocess = tuple(postprocess)
        self.memory_budget = int(memory_budget or DEFAULT_MEMORY_BUDGET.get(self.device.type, 128 << 20))
        self.progress = progress
        self.pools: dict[int, SupportPool] = {}
        self._support_extent: Optional[tuple[float, float]] = None

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
        arrays = [normalize(v.array, self.modality, self.window) for v in vols]
        b = self.backend
        self.pools = {axis: build_pool(arrays, labs, axis, b.slice_size, b.context, slices, device=self.device,
                                       resize_mode=b.resize_mode) for axis in self.axes}
        self._support_extent = _foreground_extent(labs, slices)
        self.backend.fit(self.pools, self._generator())
        return self

    @property
    def classes(self) -> tuple[int, ...]:
        """Label values the segmenter predicts (from the support)."""
        if not self.pools:
            raise RuntimeError("call fit() first")
        return next(iter(self.pools.values())).classes

    # ------------------------------------------------------------------ predict
    def predict_proba(self, query: VolumeLike) -> Union[Volume, dict[int, Volume]]:
        """Foreground probability on the query's grid.

        Returns:
            a float32 :class:`Volume` in ``[0, 1]`` for a single structure; for several structures a
            ``dict`` label value → Volume. Either lies on the query's exact grid and affine and keeps
            its source, so :func:`save_volume` writes it in the query file's orientation.
        """
        query_vol, probs = self._predict_probabilities(query)
        maps = {c: query_vol.with_array(probs[i], label=False) for i, c in enumerate(self.classes)}
        return next(iter(maps.values())) if len(maps) == 1 else maps

    def predict(self, query: VolumeLike) -> Volume:
        """Label map (uint8 label values, 0 = background) on the query's grid, post-processed."""
        query_vol, probs = self._predict_probabilities(query)
        best = probs.argmax(axis=0)
        fg = probs.max(axis=0) > self.threshold
        values = np.asarray(self.classes, dtype=np.uint8)
        labels = np.where(fg, values[best], 0).astype(np.uint8)
        if self.postprocess:
            labels = postprocess(labels, self.postprocess, self._support_extent)
        return query_vol.with_array(labels, label=True)

    def complete(self, image: VolumeLike, drawn: VolumeLike, slices: Sequence[int]) -> Volume:
        """Finish a contour drawn on a few axial slices of the same volume (the planning-system
        workflow that shape-based interpolation serves today).

        Fits on the drawn slices, predicts the volume, keeps every drawn slice exactly as drawn, and
        restricts each structure to its drawn extent (from the first to the last drawn slice that
        contains it): draw the structure's end slices, as for interpolation. ``postprocess`` applies.

        Args:
            image: the volume being contoured.
            drawn: label map on ``image``'s grid; only ``slices`` are read.
            slices: axial indices (of the canonical array) that were drawn (empty ones are negatives).
        Returns:
            uint8 label map on ``image``'s grid.
        """
        original = image if isinstance(image, Volume) else load_volume(image)
        canonical, labels = original.canonical(), load_volume(drawn, label=True)
        drawn_slices = sorted({int(z) for z in slices})
        if not drawn_slices or min(drawn_slices) < 0 or max(drawn_slices) >= canonical.shape[2]:
            raise VolumeError(f"slices must be axial indices in [0, {canonical.shape[2] - 1}]")
        self.fit([canonical], [labels], slices=[drawn_slices])
        result = self.predict(canonical).array
        inside = np.zeros(canonical.shape[2], dtype=bool)
        for value in self.classes:
            z = [k for k in drawn_slices if np.any(labels.array[..., k] == value)]
            inside[:] = False
            inside[min(z):max(z) + 1] = True
            result[(result == value) & ~inside[None, None, :]] = 0
        result[..., drawn_slices] = labels.array[..., drawn_slices]
        return original.with_array(reorient_array(result, canonical.affine, original.affine), label=True)

    def _predict_probabilities(self, query: VolumeLike) -> tuple[Volume, np.ndarray]:
        """Canonical-grid inference; returns the query as given and ``(L, X, Y, Z)`` probabilities on it."""
        if not self.pools:
            raise RuntimeError("call fit() with labelled support volumes before predicting")
        original = query if isinstance(query, Volume) else load_volume(query)
        canonical = original.canonical()
        volume = torch.as_tensor(normalize(canonical.array, self.modality, self.window), device=self.device)
        generator = self._generator()
        total = None
        for axis in self.axes:
            geometry = make_geometry(canonical.shape, canonical.spacing, axis, self.backend.slice_size,
                                     self.backend.context, device=self.device, resize_mode=self.backend.resize_mode)
            outputs = []
            chunks = list(iter_chunks(geometry, self.backend.bytes_per_slab(), self.memory_budget))
            for start, stop in tqdm(chunks, desc=f"slices (axis {axis})", disable=not self.progress or len(chunks) < 2,
                                    leave=False):
                part = geometry.subset(start, stop)
                outputs.append(self.backend.predict_slices(extract_slabs(volume, part), part, generator))
            probs = reassemble(torch.cat(outputs), geometry)  # (L, X, Y, Z)
            total = probs if total is None else total + probs
        probs = (total / len(self.axes)).clamp_(0, 1).cpu().numpy()
        return original, reorient_array(probs, canonical.affine, original.affine)

    def _generator(self) -> torch.Generator:
        gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        gen.manual_seed(self.seed)
        return gen


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
        depth = max(lab.shape[2] - 1, 1)
        lo, hi = min(lo, z.min() / depth), max(hi, z.max() / depth)
    return lo, hi
