"""The contracts between the fitted-model layer (:mod:`fewshotcx.predictor`) and a model.

Conditioning returns a value: ``fitted = backend.condition(support, generator, pools=...)`` is a
:class:`Fitted`, an immutable record of the support the backend was conditioned on and whatever the
backend derived from it (SAM's tuned prompts, SAM 2's frame index, an atlas's registration memo).
Prediction is a pure function of ``(fitted, query, generator)``: a backend keeps no fitted state,
so one backend serves any number of fitted values and threads at once.

* :class:`Backend` sees only 2D slabs: the caller has already normalised intensities, cut the
  support pools and the query slabs (:mod:`fewshotcx.pipeline.slicing`), and reassembles whatever
  :meth:`Backend.predict_slices` returns.
* :class:`VolumeBackend` sees whole canonical volumes (multi-atlas registration, video propagation)
  and returns probabilities on the query's canonical grid.
* :class:`QueryAwareBackend`: a slab backend whose support depends on the query (retrieval,
  registered support) derives a per-query :class:`Fitted` before predicting slabs.

A backend may be both a slab and a volume backend (a hybrid); it is then asked for ``predict_volume``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

import torch

from ..io.volume import Volume
from ..pipeline.slicing import SliceGeometry
from ..pipeline.support import SupportPool, SupportVolumes


@dataclass(frozen=True)
class Fitted:
    """A backend conditioned on a support: an immutable value.

    Attributes:
        support: the support as canonical volumes (``None`` for support cut straight into slabs, e.g. a
            :class:`~fewshotcx.session.ContourSession`'s drawn slices); its registration memo is shared
            by every prediction made with this value.
        pools: plane axis → labelled support slabs (a read-only mapping; empty for volume backends).
        state: what the backend derived from the support, itself immutable (``None`` for UniverSeg).
        own_scan: the support is drawn slices of the very scan being predicted (``complete``, sessions):
            query-aware strategies then match slices by position and coverage is not checked.
    """

    support: Optional[SupportVolumes]
    pools: Mapping[int, SupportPool] = field(default_factory=dict)
    state: Any = None
    own_scan: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", MappingProxyType(dict(self.pools)))

    @property
    def classes(self) -> tuple[int, ...]:
        """Label values, in channel order (the support's, else the pools')."""
        if self.support is not None:
            return self.support.classes
        for pool in self.pools.values():
            return pool.classes
        raise ValueError("a fitted value without support volumes or pools has no classes")


@runtime_checkable
class Backend(Protocol):
    """A slab segmentation backend.

    Attributes:
        name: registry name (``"universeg"``, ``"sam"``).
        slice_size: model square size ``s`` that slabs must be resized to.
        context: neighbours ``k`` each side that the model's input expects (slab depth ``2k+1``).
        device: where the model runs.
        resize_mode: how slices reach ``s × s``: ``"pad"`` (aspect-preserving) or ``"stretch"``.
    """

    name: str
    slice_size: int
    context: int
    device: torch.device
    resize_mode: str

    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """Condition on labelled support ``pools`` (one per plane axis; UniverSeg: keep them; SAM: tune
        prompts) and return the :class:`Fitted` value; the backend itself is left unchanged."""
        ...

    def predict_slices(self, fitted: Fitted, slabs: torch.Tensor, geometry: SliceGeometry,
                       generator: torch.Generator) -> torch.Tensor:
        """Foreground probabilities for query slabs.

        Args:
            fitted: what :meth:`condition` (or :meth:`QueryAwareBackend.for_query`) returned.
            slabs: ``(N, 2k+1, s, s)`` float in ``[0, 1]`` (volume-normalised), on ``device``.
            geometry: where the slabs come from (axis, relative ``positions``), for position-aware support.
        Returns:
            ``(N, L, s, s)`` float32 probabilities in ``[0, 1]``, one channel per class of ``fitted``.
        """
        ...

    def bytes_per_slab(self, fitted: Optional[Fitted] = None) -> int:
        """Estimated peak working memory for one query slab (used to chunk by a memory budget)."""
        ...


@runtime_checkable
class VolumeBackend(Protocol):
    """A backend that segments whole volumes.

    Attributes:
        name: registry name (``"atlas"``, ``"sam2"``, ...).
        device: where the model runs.
    """

    name: str
    device: torch.device

    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """Condition on the canonical support volumes (index frames, prepare a registration memo, ...)."""
        ...

    def predict_volume(self, fitted: Fitted, query: Volume, normalised: torch.Tensor, generator: torch.Generator,
                       fraction: float = 1.0) -> torch.Tensor:
        """Foreground probabilities for one query.

        Args:
            query: the query in canonical (closest RAS) layout, original intensities.
            normalised: ``(X, Y, Z)`` float32 in ``[0, 1]`` on ``device``: the query normalised as the
                support was (:attr:`SupportVolumes.modality`).
            fraction: bagging of an uncertainty draw: the share of the support this prediction may use
                (a backend without a support to bag, e.g. ``atlas``, ignores it).
        Returns:
            ``(L, X, Y, Z)`` float32 probabilities in ``[0, 1]`` on the query's canonical grid.
        """
        ...


@runtime_checkable
class QueryAwareBackend(Protocol):
    """A slab :class:`Backend` whose support depends on the query (retrieval, registered support).

    The caller asks it for the query's own fitted value and predicts that query's slabs with it; the
    per-query value (its pools, similarities, support-feature memo) lives only as long as that one
    prediction, so several threads may predict different queries with one fitted value at once.
    """

    def for_query(self, fitted: Fitted, query: Volume, normalised: torch.Tensor, generator: torch.Generator,
                  fraction: float = 1.0) -> Fitted:
        """``fitted`` prepared for ``query`` (canonical; ``normalised`` ``(X, Y, Z)`` on the device), each
        pool cut to a random ``fraction`` of its slabs (bagging, seeded by ``generator``'s seed) when
        ``fraction < 1``."""
        ...


def legacy_state(backend: Any, method: str) -> Fitted:
    """The :class:`Fitted` that a deprecated ``backend.fit(...)`` stored on ``backend`` (for the old
    call forms ``predict_slices(slabs, geometry, generator)`` and friends, kept for one release)."""
    fitted = getattr(backend, "_legacy_fitted", None)
    if fitted is None:
        raise RuntimeError(f"fit() the backend before {method}(), or pass a fitted value: "
                           f"{method}(backend.condition(...), ...)")
    return fitted


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and goes in the next release: use {new} (conditioning returns a value)",
                  DeprecationWarning, stacklevel=3)


class LegacyCalls:
    """The 0.3 call forms of a slab backend, kept for one release with a :class:`DeprecationWarning`:
    ``backend.fit(pools, generator)`` stores a :class:`Fitted` on the backend, which the old forms
    ``predict_slices(slabs, geometry, generator)`` and ``bytes_per_slab()`` then use."""

    def fit(self, pools: Mapping[int, SupportPool], generator: torch.Generator) -> None:
        """Deprecated: ``fitted = backend.condition(None, generator, pools=pools)``."""
        _deprecated("backend.fit(pools, generator)", "fitted = backend.condition(None, generator, pools=pools)")
        self._legacy_fitted = self.condition(None, generator, pools=pools)


def slab_call(backend: Any, fitted: Any, slabs: Any, geometry: Any, generator: Optional[torch.Generator]
              ) -> tuple[Fitted, torch.Tensor, SliceGeometry, torch.Generator]:
    """``(fitted, slabs, geometry, generator)`` of a ``predict_slices`` call, the deprecated form
    ``predict_slices(slabs, geometry, generator)`` (after ``fit``) included."""
    if isinstance(fitted, Fitted):
        return fitted, slabs, geometry, generator
    _deprecated("predict_slices(slabs, geometry, generator)", "predict_slices(fitted, slabs, geometry, generator)")
    return legacy_state(backend, "predict_slices"), fitted, slabs, geometry
