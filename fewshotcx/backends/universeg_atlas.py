"""``backend="universeg+atlas"``: in-context segmentation on registered support, fused with the atlas prior.

Every support volume is registered onto the query **once** (:mod:`fewshotcx.pipeline.query_support`),
and the registered volumes serve twice:

* **in-context**: UniverSeg with the ``"registered"`` support strategy: each query slab is
  conditioned on the support slabs at its own anatomical position on the query's grid;
* **atlas prior**: the registered label maps fused by majority vote, as a probability (the share of
  the atlases covering a voxel that give it the class: :func:`fewshotcx.registration.vote_share`, the
  same vote as ``backend="atlas"``), smoothed by ``prior_sigma_mm`` so that it expresses the
  registration's uncertainty at the boundary
  (:meth:`~fewshotcx.pipeline.query_support.QuerySupport.vote_share`).

The result is the linear opinion pool ``w · p_in_context + (1 − w) · p_atlas`` (:func:`fuse`) per
voxel and class, ``w = prior_weight``. The two views fail differently: the atlas is shaped like the
*support's* anatomy (it misses where the subjects differ after an affine fit); in-context follows
the query's image but can leak onto look-alike tissue. With equal weights, deep inside the atlas a
voxel stays unless in-context rules it out, far outside it cannot be added, and across the blurred
boundary in-context decides. Both defaults were set a priori, not tuned (docs/cross_patient.md).

With ``strategy="auto"`` (the default) a support volume that fails registration is left out (warning); when none
registers, the prior is missing and the result is the in-context (retrieval) prediction alone.

The backend is a hybrid (:mod:`fewshotcx.backends.base`): it is conditioned on slab pools and the
support volumes at once (its :class:`~fewshotcx.backends.base.Fitted` is UniverSeg's), and predicts
through ``predict_volume``.
"""

from __future__ import annotations

import warnings
from types import MappingProxyType
from typing import Mapping, Optional

import torch

from ..io.volume import Volume
from ..pipeline.inference import default_memory_budget, slab_probabilities
from ..pipeline.slicing import SliceGeometry
from ..pipeline.support import SupportPool, SupportVolumes
from .base import Fitted
from .universeg import UniverSegBackend

#: Weight of the in-context probabilities against the atlas prior (equal weights, set a priori).
DEFAULT_PRIOR_WEIGHT = 0.5
#: Gaussian blur (mm) of the atlas prior: about an affine fit's boundary error between two brains.
DEFAULT_PRIOR_SIGMA_MM = 2.0


def fuse(in_context: torch.Tensor, prior: torch.Tensor, weight: float = DEFAULT_PRIOR_WEIGHT) -> torch.Tensor:
    """Linear opinion pool ``weight · in_context + (1 − weight) · prior``.

    Args:
        in_context, prior: ``(L, X, Y, Z)`` probabilities in ``[0, 1]`` on the same grid.
    Returns:
        ``(L, X, Y, Z)`` float32 in ``[0, 1]``.
    """
    check_weight(weight)
    return (weight * in_context.float() + (1.0 - weight) * prior.to(in_context.device).float()).clamp_(0, 1)


def check_weight(weight: float) -> float:
    """``weight`` if in ``[0, 1]``, else a one-line ValueError naming ``prior_weight``."""
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"prior_weight must be in [0, 1], got {weight}")
    return float(weight)


class UniverSegAtlasBackend:
    """UniverSeg on registered support, fused with the registered atlases' majority vote.

    Args:
        universeg: the in-context backend; its strategy must be ``"registered"`` or ``"auto"``.
        prior_weight: ``w`` of :func:`fuse` (1 = in-context only, 0 = atlas only).
        prior_sigma_mm: Gaussian blur of the atlas prior in mm (0 = the hard vote share).
        memory_budget: bytes per chunk of query slabs; ``None`` = the segmenter's default for the device.
    """

    name = "universeg+atlas"
    def __init__(self, universeg: UniverSegBackend, prior_weight: float = DEFAULT_PRIOR_WEIGHT,
                 prior_sigma_mm: float = DEFAULT_PRIOR_SIGMA_MM, memory_budget: Optional[int] = None) -> None:
        if prior_sigma_mm < 0:
            raise ValueError(f"prior_sigma_mm must be >= 0, got {prior_sigma_mm}")
        self.prior_sigma_mm = float(prior_sigma_mm)
        if universeg.strategy not in ("registered", "auto"):
            raise ValueError(f"universeg+atlas conditions on registered support: strategy must be 'registered' or "
                             f"'auto', got {universeg.strategy!r}")
        self.universeg, self.prior_weight = universeg, check_weight(prior_weight)
        self.slice_size, self.context, self.device = universeg.slice_size, universeg.context, universeg.device
        self.resize_mode, self.pixel_mm, self.context_mm = universeg.resize_mode, universeg.pixel_mm, universeg.context_mm
        self.memory_budget = memory_budget

    # ------------------------------------------------------------------ Backend (slab) side
    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """UniverSeg's :class:`Fitted` (the pools and the support volumes; registration happens per query)."""
        return self.universeg.condition(support, generator, pools, own_scan)

    def predict_slices(self, fitted: Fitted, slabs: torch.Tensor, geometry: SliceGeometry,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """In-context probabilities only (with the value :meth:`UniverSegBackend.for_query` made)."""
        return self.universeg.predict_slices(fitted, slabs, geometry, generator)

    def bytes_per_slab(self, fitted: Optional[Fitted] = None) -> int:
        return self.universeg.bytes_per_slab(fitted)

    # ------------------------------------------------------------------ VolumeBackend side
    def predict_volume(self, fitted: Fitted, query: Volume, normalised: torch.Tensor, generator: torch.Generator,
                       fraction: float = 1.0) -> torch.Tensor:
        """``(L, X, Y, Z)`` fused probabilities on the query's canonical grid; with ``fraction < 1`` the
        in-context part bags the registered support (:meth:`UniverSegBackend.for_query`), the atlas
        prior keeps every volume. On the predicted scan's own drawn slices (``fitted.own_scan``) nothing
        is registered: the result is in-context only."""
        in_context, prior = self.predict_parts(fitted, query, normalised, generator, fraction)
        if fitted.own_scan:
            return in_context
        if prior is None:
            warnings.warn("universeg+atlas: no support volume registered to the query; the result is in-context "
                          "only", stacklevel=3)
            return in_context
        return fuse(in_context, prior, self.prior_weight)

    def predict_parts(self, fitted: Fitted, query: Volume, normalised: torch.Tensor, generator: torch.Generator,
                      fraction: float = 1.0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(in-context, atlas prior)`` probabilities, each ``(L, X, Y, Z)``, before fusion; the prior is
        ``None`` when no support volume registered (``strategy="auto"``)."""
        if fitted.support is None:
            raise RuntimeError("condition the backend on support volumes before predicting")
        budget = self.memory_budget or default_memory_budget(self.device)
        for_query = self.universeg.for_query(fitted, query, normalised, generator, fraction)
        in_context = slab_probabilities(self.universeg, for_query, normalised.to(self.device), query.spacing,
                                        sorted(for_query.pools), generator, budget)
        prior = for_query.state.query.vote_share(fitted.support.classes, self.prior_sigma_mm)
        return in_context, None if prior is None else prior.to(in_context.device)
