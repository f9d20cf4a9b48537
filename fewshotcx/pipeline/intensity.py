"""Intensity normalisation to ``[0, 1]``: CT windowing, MR percentile scaling, per-slice min-max.

Non-finite voxels (NaN, ±inf) are never propagated: NaN becomes the volume's minimum finite value
(background), +inf the maximum, -inf the minimum, before any scaling. A volume with no finite voxel
is an error.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from ..io.intensity import (  # noqa: F401  (re-exported: the pipeline's intensity API)
    MR_PERCENTILES, SOFT_TISSUE_WINDOW, Modality, clean_nonfinite, ct_window, looks_like_ct, normalize,
    percentile_scale,
)


def minmax_per_slice(slabs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rescale each slab to ``[0, 1]`` jointly over its channels and pixels, as UniverSeg expects.

    Args:
        slabs: ``(N, C, H, W)``.
    Returns:
        ``(N, C, H, W)``; constant slabs become all zeros.
    """
    flat = slabs.flatten(1)
    lo = flat.amin(dim=1).view(-1, 1, 1, 1)
    hi = flat.amax(dim=1).view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span > eps, (slabs - lo) / span.clamp_min(eps), torch.zeros_like(slabs))



def decide_modality(images: Sequence[np.ndarray], modality: Modality) -> str:
    """One intensity decision for a set of volumes: ``"ct"`` or ``"mr"``.

    ``"auto"`` takes the majority of :func:`looks_like_ct` over all of ``images`` (a tie goes to CT),
    so a tightly cropped CT without air is not MR-normalised while its neighbours are CT-windowed; it
    warns when the volumes disagree.
    """
    if modality != "auto":
        if modality not in ("ct", "mr"):
            raise ValueError(f"modality must be 'auto', 'ct' or 'mr', got {modality!r}")
        return modality
    votes = [looks_like_ct(a) for a in images]
    decided = "ct" if 2 * sum(votes) >= len(votes) else "mr"
    if 0 < sum(votes) < len(votes):
        warnings.warn(f"modality='auto': {sum(votes)} of {len(votes)} support volumes look like CT; all are "
                      f"normalised as {decided.upper()} (pass modality='ct' or 'mr' to decide)", stacklevel=3)
    return decided
