"""Label fusion by (weighted) majority vote: the one definition the atlas backend and the registered
support's atlas prior (:class:`~fewshotcx.pipeline.query_support.QuerySupport`) share.

At each query voxel, among the atlases that see it (their field of view and labelled slices), the
probability of class ``c`` is ``Σ_a w_a [L_a = c] / Σ_a w_a``: with ``w_a = 1`` where atlas ``a`` sees the
voxel (0 elsewhere) it is the plain vote share; voxels no atlas sees get 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage


def weighted_share(votes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One class: ``votes`` ``(A, X, Y, Z)`` bool and ``weights`` ``(A, X, Y, Z)`` >= 0 → ``(X, Y, Z)``
    float32, the weighted share of atlases voting for it (0 where the weights sum to 0)."""
    total = weights.sum(axis=0)
    return np.divide((weights * votes).sum(axis=0), total, out=np.zeros(total.shape, np.float32),
                     where=total > 0).astype(np.float32)


def vote_share(labels: Sequence[np.ndarray], classes: Sequence[int], weights: Optional[Sequence[np.ndarray]] = None,
               sigma_mm: float = 0.0, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Majority-vote label fusion as a probability.

    Args:
        labels: ``A`` label maps ``(X, Y, Z)`` on one grid.
        classes: the label values, in output channel order.
        weights: per atlas ``(X, Y, Z)`` weights, e.g. 0/1 coverage; ``None`` = every atlas everywhere.
        sigma_mm: Gaussian blur of the result per channel (registration is uncertain by a few mm);
            ``spacing`` is the grid's voxel size in mm.
    Returns:
        ``(L, X, Y, Z)`` float32 in ``[0, 1]``.
    """
    stacked = np.stack([np.asarray(lab) for lab in labels])
    w = np.ones(stacked.shape, np.float32) if weights is None else np.stack([np.asarray(x, np.float32) for x in weights])
    share = np.stack([weighted_share(stacked == c, w) for c in classes])
    if sigma_mm > 0:
        share = ndimage.gaussian_filter(share, (0.0, *(sigma_mm / s for s in spacing)), mode="constant")
    return share.astype(np.float32)
