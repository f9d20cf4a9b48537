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

from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Optional

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
from .base import Fitted, LegacyCalls, slab_call

#: Support size when neither the caller nor the checkpoint says: UniverSeg v1 was trained with
#: support sets of up to 64, and 16 is near the knee of its published support-size curve at a quarter
#: of the cost. A checkpoint may record its own measured default as ``extra["support_size"]`` (the
#: bundled one: 8, the best in docs/benchmarks.md).
DEFAULT_SUPPORT_SIZE = 16


class UniverSegBackend(LegacyCalls):
    """In-context segmentation with a :class:`~fewshotcx.models.UniverSeg` network.

    Args:
        model: a ready network (one from :func:`~fewshotcx.models.weights.load_universeg` brings its
            checkpoint's framing: slice size, pixel size, context distance); else ``weights`` is resolved.
        weights: ``"default"`` (bundled), ``"official"`` or a checkpoint path.
        device: torch device.
        support_size: ``S`` support slabs per query group.
        ensemble: ``K`` independent support sets averaged.
        strategy: ``"position"``, ``"random"``, ``"retrieval"``, ``"registered"`` or ``"auto"`` (see
            :mod:`fewshotcx.pipeline.support`); the last three need the query: :meth:`for_query`
            prepares a fitted value for it (:mod:`fewshotcx.predictor` calls it). ``None`` =
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
        self.group_size = int(group_size)
        self.precision = precision
        self.support_chunk = support_chunk
        self.channels_last = bool(channels_last)

    # ------------------------------------------------------------------ protocol
    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """The pools on this backend's device, as a :class:`Fitted` (UniverSeg conditions on the support
        at inference; nothing is trained)."""
        return Fitted(support, {axis: pool.to(self.device) for axis, pool in pools.items()}, None, own_scan)

    def strategy_for(self, fitted: Fitted) -> str:
        """The strategy that draws ``fitted``'s support: ``"position"`` for the query-aware ones when the
        support is the predicted scan's own drawn slices (same anatomy, same slices)."""
        return "position" if fitted.own_scan and self.strategy in QUERY_AWARE else self.strategy

    def for_query(self, fitted: Fitted, query: Volume, normalised: torch.Tensor, generator: torch.Generator,
                  fraction: float = 1.0) -> Fitted:
        """``fitted`` prepared for one ``query``: a new value whose pools and state (a :class:`QueryState`)
        belong to this query alone.

        For ``"retrieval"``/``"registered"``/``"auto"`` its support is prepared for the query
        (retrieval similarity, or pools registered onto its grid, once per support volume and query:
        :mod:`fewshotcx.pipeline.query_support`); for ``"position"``/``"random"`` it keeps the fitted pools.
        With ``fraction < 1`` (an uncertainty draw) each pool is then cut to a random ``fraction`` of its
        slabs, drawn from ``derived_generator(generator seed, BAGGING_KEY)``, and each query group gets
        ``fraction`` of the support set size (at least 1): a draw costs about ``fraction`` of a prediction,
        since UniverSeg's cost grows linearly with ``S`` (``benchmarks/uncertainty_draws.py``).

        Args:
            query: the query, canonical, original intensities.
            normalised: ``(X, Y, Z)`` the query as normalised for the backend.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        settings = SlabSettings(Framing.of(self), self.group_size, self.device)
        strategy, pools = self.strategy_for(fitted), dict(fitted.pools)
        if strategy == "position" and self.check_coverage and not fitted.own_scan:  # warns on different anatomy
            similarity_to_pools(pools, normalised.to(self.device), query.spacing, settings, "position")
        if strategy not in QUERY_AWARE:
            prepared = QuerySupport(pools, strategy)
        else:
            prepared = prepare_query_support(strategy, pools, fitted.support, query, normalised.to(self.device),
                                             settings, self.registration)
        size = None
        if fraction < 1.0:  # bagging (uncertainty draws), on whatever support the query got
            prepared = prepared.bagged(fraction, derived_generator(generator.initial_seed(), BAGGING_KEY))
            size = max(1, round(self.support_size * fraction))
        return replace(fitted, pools=prepared.pools, state=QueryState(prepared, support_size=size))

    def bytes_per_slab(self, fitted: Optional[Fitted] = None) -> int:
        """Working memory of one query slab with ``fitted``'s pools (a full support set without it)."""
        pools = fitted.pools if fitted is not None else {}
        width = max(self.model.widths)
        s = min(self.support_size, max((len(p) for p in pools.values()), default=self.support_size))
        if self.support_chunk:
            s = min(s, self.support_chunk)
        # ~4 live (S, width, s, s) float tensors at full resolution, +1/3 for the coarser levels.
        return int(4 * 4 * s * width * self.slice_size ** 2 * 4 / 3)

    @torch.inference_mode()
    def predict_slices(self, fitted: Fitted, slabs: torch.Tensor, geometry: SliceGeometry,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(N, 2k+1, s, s)`` query slabs → ``(N, L, s, s)`` probabilities (see
        :class:`~fewshotcx.backends.base.Backend`), on ``fitted``'s pools (the query-aware strategies need
        the value :meth:`for_query` made). Support features are memoised in a per-query value's
        :class:`QueryState`, else within this call only."""
        fitted, slabs, geometry, generator = slab_call(self, fitted, slabs, geometry, generator)
        pool = fitted.pools.get(geometry.axis)
        if pool is None:
            raise RuntimeError("condition the backend on a support before predicting")
        features = fitted.state.features if isinstance(fitted.state, QueryState) else SupportFeatures()
        targets = minmax_per_slice(slabs.to(self.device, torch.float32))
        support_images = minmax_per_slice(pool.images)
        n, num_classes = targets.shape[0], pool.labels.shape[1]
        groups = geometry.indices.to(self.device) // self.group_size  # (N,) global group of each slab
        probs = torch.zeros(n, num_classes, *targets.shape[-2:], device=self.device)
        with self._autocast():
            for member in range(self.ensemble):
                for g in groups.unique().tolist():  # one shared support set per group of neighbouring slices
                    members = groups == g
                    sup_idx = self.draw_support(fitted, geometry, g, member, generator)
                    for c in range(num_classes):
                        images = support_images[sup_idx]
                        labels = rearrange(pool.labels[sup_idx, c], "s h w -> s 1 h w")
                        encoded = features.encode(self, (geometry.axis, tuple(sup_idx.tolist()), c), images, labels,
                                                  self.ensemble * num_classes)
                        logits = self.model.forward_shared(
                            targets[members], images, labels, support_chunk=self.support_chunk,
                            channels_last=self.channels_last, support_features=encoded,
                        )  # (n_g, 1, s, s)
                        probs[members, c] += torch.sigmoid(logits[:, 0].float())
        return probs / self.ensemble

    def draw_support(self, fitted: Fitted, geometry: SliceGeometry, group: int, member: int,
                     generator: torch.Generator) -> torch.Tensor:
        """``(S,)`` indices into ``fitted.pools[geometry.axis]`` of the support set shared by query group
        ``group`` (slices ``group·G … group·G+G−1`` along the axis) for ensemble member ``member``.

        The draw is matched to the group's centre (position) or to the whole group's look (retrieval,
        prepared per query by :meth:`for_query`) and seeded only by the generator's seed, the axis, the
        group and the member (:func:`~fewshotcx.pipeline.support.derived_generator`), so predictions
        depend neither on how the volume is chunked (memory budget) nor on the device.
        """
        strategy, similarity, size = self.strategy_for(fitted), None, self.support_size
        if isinstance(fitted.state, QueryState):
            strategy, size = fitted.state.query.strategy, fitted.state.support_size or size
            similarity = fitted.state.query.similarity.get(geometry.axis)
            similarity = None if similarity is None else similarity[group:group + 1]
        elif strategy in QUERY_AWARE:
            raise RuntimeError(f"strategy {strategy!r} needs the query volume: predict through fx.Segmenter "
                               "(or with the value UniverSegBackend.for_query returns)")
        start = group * self.group_size
        last = min(start + self.group_size - 1, geometry.depth - 1)
        position = torch.tensor([relative_position((start + last) / 2, geometry.depth)], device=self.device)
        draw = derived_generator(generator.initial_seed(), geometry.axis, group, member)
        pool = fitted.pools[geometry.axis]
        return select_support(pool, position, size, strategy, draw, similarity=similarity)[0]

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


class SupportFeatures:
    """Memo of :meth:`UniverSeg.encode_support` for one query's prediction: a query group split over
    several chunks (the CPU memory budget holds one slab) encodes its support once. The ``keep`` most
    recent support sets stay (one group's worth: ensemble members × classes)."""

    def __init__(self) -> None:
        self._features: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._features)

    def encode(self, backend: UniverSegBackend, key: tuple, images: torch.Tensor, labels: torch.Tensor, keep: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoded support set ``key`` (axis, pool indices, class) of ``images`` ``(S, 2k+1, s, s)`` and
        ``labels`` ``(S, 1, s, s)``; the first block's weight versions join the key, so in-place weight
        updates invalidate it."""
        model = backend.model
        block = model.enc_blocks[0]
        key = (*key, *(p._version for p in (block.cross.cross_conv.weight, block.cross.cross_conv.bias,
                                             block.support.vmapped.conv.weight, block.support.vmapped.conv.bias)))
        if key in self._features:
            self._features.move_to_end(key)
        else:
            self._features[key] = model.encode_support(images, labels, backend.channels_last)
            while len(self._features) > keep:
                self._features.popitem(last=False)
        return self._features[key]


@dataclass(frozen=True)
class QueryState:
    """UniverSeg's state in a per-query :class:`~fewshotcx.backends.base.Fitted` (:meth:`UniverSegBackend.for_query`).

    Attributes:
        query: the support prepared for the query (retrieval similarity, registered pools, bagging).
        support_size: ``S`` of this query's support sets (an uncertainty draw's share), ``None``: the
            backend's :attr:`~UniverSegBackend.support_size`.
        features: the support-feature memo of this one prediction (never compared).
    """

    query: QuerySupport
    support_size: Optional[int] = None
    features: SupportFeatures = field(default_factory=SupportFeatures, compare=False, repr=False)
