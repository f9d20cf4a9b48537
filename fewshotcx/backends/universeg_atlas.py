"""``backend="universeg+atlas"``: in-context segmentation on registered support, fused with the atlas prior.

Two views of the same registered support volumes:

* **in-context**: UniverSeg with the ``"registered"`` support strategy: every support volume is
  registered onto the query, resampled onto its grid, and each query slab is conditioned on the
  support slabs at its own anatomical position (:mod:`fewshotcx.pipeline.query_support`);
* **atlas prior**: the registered label maps fused (:class:`~fewshotcx.backends.atlas.AtlasBackend`:
  majority / STAPLE / locally weighted).

The result is the linear opinion pool ``w · p_in_context + (1 − w) · p_atlas`` (:func:`fuse`), per
voxel and class, with ``w = prior_weight`` chosen on held-apart structures (docs/cross_patient.md).
The two views fail differently: the atlas is smooth and shaped like the *support's* anatomy (it
misses where the two subjects differ after an affine fit); in-context follows the query's image
but can leak onto look-alike tissue; averaging keeps what both agree on.

The backend is a hybrid (:mod:`fewshotcx.backends.base`): the segmenter calls ``fit`` (slab pools,
for UniverSeg) and ``fit_volumes`` (for the atlas), then ``predict_volume``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..io.volume import Volume
from ..pipeline.slicing import SliceGeometry
from ..pipeline.support import SupportPool, SupportVolumes
from .universeg import UniverSegBackend

#: Weight of the in-context probabilities against the atlas prior (measured: docs/cross_patient.md).
DEFAULT_PRIOR_WEIGHT = 0.5


def fuse(in_context: torch.Tensor, prior: torch.Tensor, weight: float = DEFAULT_PRIOR_WEIGHT) -> torch.Tensor:
    """Linear opinion pool ``weight · in_context + (1 − weight) · prior``.

    Args:
        in_context, prior: ``(L, X, Y, Z)`` probabilities in ``[0, 1]`` on the same grid.
    Returns:
        ``(L, X, Y, Z)`` float32 in ``[0, 1]``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"prior_weight must be in [0, 1], got {weight}")
    return (weight * in_context.float() + (1.0 - weight) * prior.to(in_context.device).float()).clamp_(0, 1)


class UniverSegAtlasBackend:
    """UniverSeg on registered support, fused with a multi-atlas prior.

    Args:
        universeg: the in-context backend; its strategy must be ``"registered"`` or ``"auto"``.
        atlas: a fitted-per-``fit_volumes`` atlas backend (``predict_volume`` → ``(L, X, Y, Z)``).
        prior_weight: ``w`` of :func:`fuse` (1 = in-context only, 0 = atlas only).
        memory_budget: bytes per chunk of query slabs; ``None`` = the segmenter's default for the device.
    """

    name = "universeg+atlas"
    resize_mode = "pad"

    def __init__(self, universeg: UniverSegBackend, atlas, prior_weight: float = DEFAULT_PRIOR_WEIGHT,
                 memory_budget: Optional[int] = None) -> None:
        if universeg.strategy not in ("registered", "auto"):
            raise ValueError(f"universeg+atlas conditions on registered support: strategy must be 'registered' or "
                             f"'auto', got {universeg.strategy!r}")
        fuse(torch.zeros(1), torch.zeros(1), prior_weight)  # validates the weight
        self.universeg, self.atlas, self.prior_weight = universeg, atlas, float(prior_weight)
        self.slice_size, self.context, self.device = universeg.slice_size, universeg.context, universeg.device
        self.memory_budget = memory_budget
        self.support: Optional[SupportVolumes] = None

    # ------------------------------------------------------------------ Backend (slab) side
    def fit(self, pools: dict[int, SupportPool], generator: torch.Generator) -> None:
        self.universeg.fit(pools, generator)

    def predict_slices(self, slabs: torch.Tensor, geometry: SliceGeometry, generator: torch.Generator) -> torch.Tensor:
        """In-context probabilities only (used inside :meth:`predict_volume`'s query context)."""
        return self.universeg.predict_slices(slabs, geometry, generator)

    def bytes_per_slab(self) -> int:
        return self.universeg.bytes_per_slab()

    # ------------------------------------------------------------------ VolumeBackend side
    def fit_volumes(self, support: SupportVolumes, generator: torch.Generator) -> None:
        self.atlas.fit_volumes(support, generator)
        self.support = support

    def predict_volume(self, query: Volume, normalised: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(L, X, Y, Z)`` fused probabilities on the query's canonical grid."""
        in_context, prior = self.predict_parts(query, normalised, generator)
        return fuse(in_context, prior, self.prior_weight)

    def predict_parts(self, query: Volume, normalised: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(in-context, atlas prior)`` probabilities, each ``(L, X, Y, Z)``, before fusion."""
        from ..segmenter import DEFAULT_MEMORY_BUDGET, slab_probabilities

        if self.support is None:
            raise RuntimeError("fit() the backend before predicting")
        prior = self.atlas.predict_volume(query, normalised, generator)
        budget = self.memory_budget or DEFAULT_MEMORY_BUDGET.get(self.device.type, 128 << 20)
        with self.universeg.query_context(self.support, query, normalised, generator):
            in_context = slab_probabilities(self.universeg, normalised.to(self.device), query.spacing,
                                            sorted(self.universeg.pools), generator, budget)
        return in_context, prior
