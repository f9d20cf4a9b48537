"""The contracts between :class:`~fewshotcx.Segmenter` and a model.

* :class:`Backend` sees only 2D slabs: the segmenter has already normalised intensities, cut the
  support pools and the query slabs (:mod:`fewshotcx.pipeline.slicing`), and will reassemble whatever
  the backend returns.
* :class:`VolumeBackend` sees whole canonical volumes (multi-atlas registration, video propagation):
  it returns probabilities on the query's canonical grid, and the segmenter does the rest
  (thresholding, post-processing, one reorientation to the query's own layout).

A backend may implement both (a hybrid); the segmenter then calls both ``fit`` methods and
``predict_volume``, which may use :func:`fewshotcx.pipeline.inference.slab_probabilities` for its slab part.
Backends keep fitted state in attributes that ``fit``/``fit_volumes`` *rebind* (never mutate shared
objects in place): :meth:`fewshotcx.Segmenter.complete` relies on that to leave an earlier fit intact.
"""

from __future__ import annotations

from typing import ContextManager, Protocol, runtime_checkable

import torch

from ..pipeline.slicing import SliceGeometry
from ..io.volume import Volume
from ..pipeline.support import SupportPool, SupportVolumes


@runtime_checkable
class Backend(Protocol):
    """What a segmentation backend provides.

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

    def fit(self, pools: dict[int, SupportPool], generator: torch.Generator) -> None:
        """Condition (UniverSeg: store; SAM: tune prompts) on labelled support pools, one per plane axis."""
        ...

    def predict_slices(self, slabs: torch.Tensor, geometry: SliceGeometry, generator: torch.Generator) -> torch.Tensor:
        """Foreground probabilities for query slabs.

        Args:
            slabs: ``(N, 2k+1, s, s)`` float in ``[0, 1]`` (volume-normalised), on ``device``.
            geometry: where the slabs come from (axis, relative ``positions``), for position-aware support.
        Returns:
            ``(N, L, s, s)`` float32 probabilities in ``[0, 1]``, one channel per foreground class of the
            fitted pools, in the order of ``SupportPool.classes``.
        """
        ...

    def bytes_per_slab(self) -> int:
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

    def fit_volumes(self, support: SupportVolumes, generator: torch.Generator) -> None:
        """Condition on the canonical support volumes (register atlases, encode memory frames, ...)."""
        ...

    def predict_volume(self, query: Volume, normalised: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Foreground probabilities for one query.

        Args:
            query: the query in canonical (closest RAS) layout, original intensities.
            normalised: ``(X, Y, Z)`` float32 in ``[0, 1]`` on ``device``: the query normalised as the
                support was (:attr:`SupportVolumes.modality`).
        Returns:
            ``(L, X, Y, Z)`` float32 probabilities in ``[0, 1]`` on the query's canonical grid, one
            channel per class of :attr:`SupportVolumes.classes`.
        """
        ...


@runtime_checkable
class QueryAwareBackend(Protocol):
    """A slab :class:`Backend` whose support depends on the query (retrieval, registered support).

    The segmenter runs the slab path for a query inside ``query_context(...)``. The context manager
    yields a :class:`Backend` for that one query (its own pools, per-query support and caches) and
    the segmenter predicts through it; the backend itself must not store per-query state, since
    several threads may predict different queries with one fitted backend at once.
    """

    def query_context(self, support: SupportVolumes, query: Volume, normalised: torch.Tensor,
                      generator: torch.Generator) -> ContextManager:
        """Prepare the support for ``query`` (canonical; ``normalised`` ``(X, Y, Z)`` on the device) and
        yield the slab backend that predicts it."""
        ...
