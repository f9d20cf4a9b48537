"""UniverSeg backend: many query slabs per forward pass, one support set shared per group.

Query slabs are split into groups of ``group_size`` neighbouring slices (by slice index, so the
groups and their seeded support draws are the same however the volume is chunked). Each group gets
its own support set (position-matched to the group's centre, or random), and the whole group
goes through :meth:`UniverSeg.forward_shared`, which computes the support-only part of the first
block once per support set and every target-only half-convolution once per target. ``ensemble=K``
repeats this with K independently drawn support sets and averages the probabilities. Multi-class
support runs one-vs-rest, one pass per class, and returns one probability channel per class.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import nullcontext
from typing import ContextManager, Optional

import torch
from einops import rearrange

from ..pipeline.intensity import minmax_per_slice
from ..models.universeg import UniverSeg
from ..pipeline.slicing import Framing, SliceGeometry, relative_position
from ..io.volume import Volume
from ..pipeline.query_support import (DEFAULT_REGISTRATION, QuerySupport, SlabSettings, prepare_query_support,
                                     similarity_to_pools)
from ..pipeline.support import (
    BAGGING_KEY, QUERY_AWARE, Strategy, SupportPool, SupportVolumes, check_strategy, derived_generator,
    select_support,
)
from ..models.weights import load_universeg
from . import default_strategy

#: Support size when neither the caller nor the checkpoint says: UniverSeg v1 was trained with
#: support sets of up to 64, and 16 is near the knee of its published support-size curve at a quarter
#: of the cost. A checkpoint may record its own measured default as ``extra["support_size"]`` (the
#: bundled one: 8, the best in docs/benchmarks.md).
DEFAULT_SUPPORT_SIZE = 16


class UniverSegBackend:
    """In-context segmentation with a :class:`~fewshotcx.models.UniverSeg` network.

    Args:
        model: a ready network (one from :func:`~fewshotcx.models.weights.load_universeg` brings its
            checkpoint's framing: slice size, pixel size, context distance); else ``weights`` is resolved.
        weights: ``"default"`` (bundled), ``"official"`` or a checkpoint path.
        device: torch device.
        support_size: ``S`` support slabs per query group.
        ensemble: ``K`` independent support sets averaged.
        strategy: ``"position"``, ``"random"``, ``"retrieval"``, ``"registered"`` or ``"auto"`` (see
            :mod:`fewshotcx.pipeline.support`); the last three need the query, which
            :meth:`query_context` provides (the :class:`~fewshotcx.Segmenter` calls it). ``None`` =
            :func:`~fewshotcx.backends.default_strategy` (``"auto"``).
        registration: transform of ``"registered"``/``"auto"``: ``"rigid"``, ``"affine"`` or ``"deformable"``.
        group_size: neighbouring query slices sharing one support set.
        precision: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        slice_size: override the model's native size (must be divisible by 8).
        pixel_mm: in-plane pixel size in mm of physical framing (slices resampled around the body,
            never stretched to the field of view); ``None`` = the checkpoint's (``pixel_mm`` in its
            metadata; checkpoints without it, e.g. the official v1, fit the field of view: ``"pad"``).
        context_mm: distance of the 2.5D neighbours in mm; ``None`` = the checkpoint's, else adjacent slices.
        check_coverage: under ``"position"``, compare each query with the support first and warn when
            they cover different anatomy (:func:`~fewshotcx.pipeline.query_support.check_coverage`);
            retrieval always warns about query slices the support does not cover.
        support_fraction: each query draws its support from a random fraction of the pool (seeded by
            the prediction's seed; bagging for uncertainty draws); 1 = the whole pool.
        support_chunk: passed to ``forward_shared`` to bound memory over the support axis.
        channels_last: passed to ``forward_shared``: channels-last feature layout (same outputs; faster
            on CPU, see docs/performance.md).
    """

    name = "universeg"

    def __init__(
        self,
        model: Optional[UniverSeg] = None,
        weights: str = "default",
        device: torch.device = torch.device("cpu"),
        support_size: Optional[int] = None,
        ensemble: int = 1,
        strategy: Optional[Strategy] = None,
        group_size: int = 8,
        precision: str = "auto",
        slice_size: Optional[int] = None,
        context: Optional[int] = None,
        support_chunk: Optional[int] = None,
        channels_last: bool = True,
        registration: str = DEFAULT_REGISTRATION,
        pixel_mm: Optional[float] = None,
        context_mm: Optional[float] = None,
        check_coverage: bool = True,
        support_fraction: float = 1.0,
    ) -> None:
        net, meta = ((model, dict(getattr(model, "framing", {}))) if model is not None
                     else load_universeg(weights, return_metadata=True))
        self.model = net.to(device).eval()
        self.device = torch.device(device)
        in_channels = self.model.in_channels
        if in_channels % 2 != 1:
            raise ValueError(f"UniverSeg model has {in_channels} target channels; a 2.5D model needs 2k+1")
        self.context = (in_channels - 1) // 2
        if context is not None and context != self.context:
            raise ValueError(f"these weights expect context={self.context} ({in_channels} input channels), "
                             f"not context={context}")
        self.slice_size = int(slice_size or meta.get("slice_size", 128))
        if self.slice_size % 8:
            raise ValueError(f"UniverSeg needs a slice size divisible by 8, got {self.slice_size}")
        self.pixel_mm = pixel_mm if pixel_mm is not None else meta.get("pixel_mm")
        self.context_mm = context_mm if context_mm is not None else meta.get("context_mm")
        if any(v is not None and v <= 0 for v in (self.pixel_mm, self.context_mm)):
            raise ValueError("pixel_mm and context_mm must be positive")
        #: ``"physical"`` when a pixel size is known, else the field-of-view fit of older checkpoints.
        self.resize_mode = "physical" if self.pixel_mm else "pad"
        self.support_size = int(support_size or meta.get("support_size", DEFAULT_SUPPORT_SIZE))
        if self.support_size < 1 or ensemble < 1 or group_size < 1:
            raise ValueError("support_size, ensemble and group_size must be at least 1")
        self.ensemble = int(ensemble)
        self.strategy = check_strategy(strategy or default_strategy())
        if registration not in ("rigid", "affine", "deformable"):
            raise ValueError(f"registration must be 'rigid', 'affine' or 'deformable', got {registration!r}")
        self.registration = registration
        self.check_coverage = bool(check_coverage)
        if not 0.0 < support_fraction <= 1.0:
            raise ValueError(f"support_fraction must be in (0, 1], got {support_fraction}")
        self.support_fraction = float(support_fraction)
        self.group_size = int(group_size)
        self.precision = precision
        self.support_chunk = support_chunk
        self.channels_last = bool(channels_last)
        self.pools: dict[int, SupportPool] = {}

    # ------------------------------------------------------------------ protocol
    def fit(self, pools: dict[int, SupportPool], generator: torch.Generator) -> None:
        """Store the pools (UniverSeg conditions on the support at inference; nothing is trained).
        Rebinds ``self.pools``: a shallow copy of the backend keeps its own fit."""
        self.pools = {axis: pool.to(self.device) for axis, pool in pools.items()}

    def query_context(self, support: SupportVolumes, query: Volume, normalised: torch.Tensor,
                      generator: torch.Generator) -> ContextManager["UniverSegQuery"]:
        """A context manager yielding a :class:`UniverSegQuery`: the slab backend for this one ``query``.

        For ``"retrieval"``/``"registered"``/``"auto"`` its support is prepared for the query
        (retrieval similarity, or pools registered onto its grid: :mod:`fewshotcx.pipeline.query_support`);
        for ``"position"``/``"random"`` it uses the fitted pools. Either way the per-query state
        (pools, similarity, cached support features) lives in the yielded object, never in the
        backend, so several threads may predict different queries with one backend at once.

        Args:
            support: the fitted support volumes (canonical).
            query: the query, canonical, original intensities.
            normalised: ``(X, Y, Z)`` the query as normalised for the backend.
        """
        settings = SlabSettings(Framing.of(self), self.group_size, self.device)
        if self.strategy == "position" and self.check_coverage:  # warns when the scans cover different anatomy
            similarity_to_pools(self.pools, normalised.to(self.device), query.spacing, settings, "position")
        if self.strategy not in QUERY_AWARE:
            prepared = QuerySupport(self.pools, self.strategy)
        else:
            prepared = prepare_query_support(self.strategy, self.pools, support, query, normalised.to(self.device),
                                             settings, self.registration)
        if self.support_fraction < 1.0:  # bagging (uncertainty draws), on whatever support the query got
            prepared = prepared.bagged(self.support_fraction,
                                       derived_generator(generator.initial_seed(), BAGGING_KEY))
        return nullcontext(UniverSegQuery(self, prepared.pools, prepared))

    def bagged(self, fraction: float) -> "UniverSegBackend":
        """A shallow copy whose queries draw their support from a random ``fraction`` of it
        (:attr:`support_fraction`); ``self`` is unchanged."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        clone = copy.copy(self)
        clone.support_fraction = float(fraction)
        return clone

    def bytes_per_slab(self) -> int:
        return self._bytes_per_slab(self.pools)

    def _bytes_per_slab(self, pools: dict[int, SupportPool]) -> int:
        width = max(self.model.widths)
        s = min(self.support_size, max((len(p) for p in pools.values()), default=self.support_size))
        if self.support_chunk:
            s = min(s, self.support_chunk)
        # ~4 live (S, width, s, s) float tensors at full resolution, +1/3 for the coarser levels.
        return int(4 * 4 * s * width * self.slice_size ** 2 * 4 / 3)

    def predict_slices(self, slabs: torch.Tensor, geometry: SliceGeometry, generator: torch.Generator) -> torch.Tensor:
        """``(N, 2k+1, s, s)`` query slabs → ``(N, L, s, s)`` probabilities (see :class:`Backend`), on
        the fitted pools (``"position"``/``"random"``; the query-aware strategies need
        :meth:`query_context`). Support features are cached within this call only."""
        return UniverSegQuery(self, self.pools, None).predict_slices(slabs, geometry, generator)

    def draw_support(self, pool: SupportPool, geometry: SliceGeometry, group: int, member: int,
                     generator: torch.Generator, query: Optional[QuerySupport] = None) -> torch.Tensor:
        """``(S,)`` pool indices of the support set shared by query group ``group`` (slices
        ``group·G … group·G+G−1`` along the axis) for ensemble member ``member``.

        The draw is matched to the group's centre (position) or to the whole group's look (retrieval,
        prepared per query by :meth:`query_context` and passed as ``query``) and seeded only by the
        generator's seed, the axis, the group and the member
        (:func:`~fewshotcx.pipeline.support.derived_generator`), so predictions depend neither on how
        the volume is chunked (memory budget) nor on the device.
        """
        strategy, similarity = self.strategy, None
        if query is not None:
            strategy = query.strategy
            similarity = query.similarity.get(geometry.axis)
            similarity = None if similarity is None else similarity[group:group + 1]
        elif strategy in QUERY_AWARE:
            raise RuntimeError(f"strategy {strategy!r} needs the query volume: predict through fx.Segmenter "
                               "(or inside UniverSegBackend.query_context)")
        start = group * self.group_size
        last = min(start + self.group_size - 1, geometry.depth - 1)
        position = torch.tensor([relative_position((start + last) / 2, geometry.depth)], device=self.device)
        draw = derived_generator(generator.initial_seed(), geometry.axis, group, member)
        return select_support(pool, position, self.support_size, strategy, draw, similarity=similarity)[0]

    def _autocast(self):
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if dtype is None:
            raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
        return torch.autocast(self.device.type, dtype=dtype)


class UniverSegQuery:
    """The :class:`UniverSegBackend` as seen by one query's prediction: a slab
    :class:`~fewshotcx.backends.base.Backend` with its own support pools, per-query support
    (``query``: retrieval similarity or registered pools, ``None`` for position/random) and support
    feature cache. Made by :meth:`UniverSegBackend.query_context`; nothing here is shared with other
    queries or written back to the backend.

    Attributes:
        backend: the fitted backend (model, settings), read only.
        pools: plane axis → support pool used for this query.
        query: the prepared per-query support, or ``None``.
    """

    def __init__(self, backend: UniverSegBackend, pools: dict[int, SupportPool],
                 query: Optional[QuerySupport]) -> None:
        self.backend, self.pools, self.query = backend, pools, query
        self.name, self.slice_size, self.context = backend.name, backend.slice_size, backend.context
        self.device, self.resize_mode = backend.device, backend.resize_mode
        self.pixel_mm, self.context_mm = backend.pixel_mm, backend.context_mm
        self._features: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def bytes_per_slab(self) -> int:
        return self.backend._bytes_per_slab(self.pools)

    def draw_support(self, pool: SupportPool, geometry: SliceGeometry, group: int, member: int,
                     generator: torch.Generator) -> torch.Tensor:
        """``(S,)`` pool indices for one query group (:meth:`UniverSegBackend.draw_support`)."""
        return self.backend.draw_support(pool, geometry, group, member, generator, self.query)

    @torch.inference_mode()
    def predict_slices(self, slabs: torch.Tensor, geometry: SliceGeometry, generator: torch.Generator) -> torch.Tensor:
        """``(N, 2k+1, s, s)`` query slabs → ``(N, L, s, s)`` probabilities (see :class:`Backend`)."""
        b = self.backend
        pool = self.pools.get(geometry.axis)
        if pool is None:
            raise RuntimeError("fit() the backend before predicting")
        targets = minmax_per_slice(slabs.to(b.device, torch.float32))
        support_images = minmax_per_slice(pool.images)
        n, num_classes = targets.shape[0], pool.labels.shape[1]
        groups = geometry.indices.to(b.device) // b.group_size  # (N,) global group of each slab
        probs = torch.zeros(n, num_classes, *targets.shape[-2:], device=b.device)
        with b._autocast():
            for member in range(b.ensemble):
                for g in groups.unique().tolist():  # one shared support set per group of neighbouring slices
                    members = groups == g
                    sup_idx = self.draw_support(pool, geometry, g, member, generator)
                    for c in range(num_classes):
                        images = support_images[sup_idx]
                        labels = rearrange(pool.labels[sup_idx, c], "s h w -> s 1 h w")
                        logits = b.model.forward_shared(
                            targets[members], images, labels,
                            support_chunk=b.support_chunk, channels_last=b.channels_last,
                            support_features=self._support_features((geometry.axis, tuple(sup_idx.tolist()), c),
                                                                    images, labels, b.ensemble * num_classes),
                        )  # (n_g, 1, s, s)
                        probs[members, c] += torch.sigmoid(logits[:, 0].float())
        return probs / b.ensemble

    def _support_features(self, key: tuple, images: torch.Tensor, labels: torch.Tensor, keep: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`UniverSeg.encode_support` of one support set, cached for this query: a query group
        split over several chunks (the CPU memory budget holds one slab) encodes its support once.

        ``key`` names the support set (axis, pool indices, class) in this object's own pools; the
        first block's weight versions are added, so in-place weight updates invalidate it. The
        ``keep`` most recent sets stay (one group's worth: ensemble members × classes).
        """
        model = self.backend.model
        block = model.enc_blocks[0]
        key = (*key, *(p._version for p in (block.cross.cross_conv.weight, block.cross.cross_conv.bias,
                                             block.support.vmapped.conv.weight, block.support.vmapped.conv.bias)))
        if key in self._features:
            self._features.move_to_end(key)
        else:
            self._features[key] = model.encode_support(images, labels, self.backend.channels_last)
            while len(self._features) > keep:
                self._features.popitem(last=False)
        return self._features[key]
