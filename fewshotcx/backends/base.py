"""The contract between :class:`~fewshotcx.Segmenter` and an in-context model.

A backend sees only 2D slabs: the segmenter has already normalised intensities, cut the support
pools and the query slabs (:mod:`fewshotcx.pipeline.slicing`), and will reassemble whatever the backend returns.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..pipeline.slicing import SliceGeometry
from ..pipeline.support import SupportPool


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
