"""``backend="universeg+sam"``: UniverSeg finds the structure, SAM draws its boundary at full resolution.

The segmenter cuts slabs at SAM's size (e.g. 1024², aspect-preserving pad). UniverSeg sees the same
square frame downsampled to its own size (both use the centred aspect-preserving pad, so the frames
coincide), and its probabilities, upsampled back, become SAM's box + mask prompts
(:func:`fewshotcx.models.sam.refine.refine_with_sam`). Slices UniverSeg leaves empty stay empty.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

from ..models.sam.refine import refine_with_sam
from ..pipeline.slicing import SliceGeometry
from ..pipeline.support import QUERY_AWARE, SupportPool, SupportVolumes
from .base import Fitted, LegacyCalls, slab_call
from .sam import SamBackend
from .universeg import UniverSegBackend


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, C, s, s)`` → ``(N, C, size, size)``, bilinear (antialiased when shrinking)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < x.shape[-1])


class RefinedBackend(LegacyCalls):
    """UniverSeg coarse probabilities refined by SAM.

    Args:
        coarse: a UniverSeg backend (any context ``k_u``) drawing its support per slab: strategy
            ``"position"`` or ``"random"`` (the query-aware ones need a query context this backend lacks).
        refiner: a SAM backend in ``"pad"`` resize mode with context ``k_s >= k_u``.
        threshold: coarse probability above which a slice's structure gets a SAM box.
    """

    name = "universeg+sam"
    resize_mode = "pad"

    def __init__(self, coarse: UniverSegBackend, refiner: SamBackend, threshold: float = 0.5) -> None:
        if refiner.resize_mode != "pad":
            raise ValueError("universeg+sam needs SAM preprocessing ('sam'), not MedSAM's stretched slices")
        if refiner.context < coarse.context:
            raise ValueError(f"SAM context {refiner.context} is smaller than UniverSeg's {coarse.context}")
        if coarse.strategy in QUERY_AWARE:
            raise ValueError(f"universeg+sam draws support per slab: strategy must be 'position' or 'random', "
                             f"got {coarse.strategy!r}")
        self.coarse, self.refiner, self.threshold = coarse, refiner, float(threshold)
        self.slice_size, self.context, self.device = refiner.slice_size, refiner.context, refiner.device

    def _coarse_view(self, slabs: torch.Tensor) -> torch.Tensor:
        """``(N, 2k_s+1, s, s)`` → ``(N, 2k_u+1, s_u, s_u)``: the centre channels UniverSeg expects, downsampled."""
        k, ku = self.context, self.coarse.context
        return _resize(slabs[:, k - ku:k + ku + 1], self.coarse.slice_size)

    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """UniverSeg conditions on downsampled pools (its :class:`Fitted` is this value's ``state``); SAM
        needs no fitting to refine."""
        coarse = self.coarse.condition(support, generator, {
            axis: SupportPool(self._coarse_view(p.images), _resize(p.labels, self.coarse.slice_size), p.positions,
                              p.volume_ids, p.classes, p.axis) for axis, p in pools.items()}, own_scan)
        return Fitted(support, pools, coarse, own_scan)

    def predict_slices(self, fitted: Fitted, slabs: torch.Tensor, geometry: SliceGeometry,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(N, 2k+1, s, s)`` → ``(N, L, s, s)`` refined probabilities."""
        fitted, slabs, geometry, generator = slab_call(self, fitted, slabs, geometry, generator)
        coarse = self.coarse.predict_slices(fitted.state, self._coarse_view(slabs), geometry, generator)
        return refine_with_sam(self.refiner, _resize(coarse, self.slice_size), slabs, self.threshold)

    def bytes_per_slab(self, fitted: Optional[Fitted] = None) -> int:
        return (self.coarse.bytes_per_slab(None if fitted is None else fitted.state)
                + self.refiner.bytes_per_slab())
