"""Per-voxel uncertainty from independent support draws × plane axes.

A fitted :class:`~fewshotcx.predictor.Predictor` (what :attr:`fewshotcx.Segmenter.predictor` hands
out) is run ``k`` times as independent draws (:meth:`~fewshotcx.predictor.Predictor.draw`), each on a
different random ``fraction`` of its support, by default half: the pool and each query group's
support set (bagging: a support of a few drawn slices is where an
in-context model's answer depends most on what it was shown) with a different seed (the backend's own
stochasticity: which support slices are drawn per query group, ensemble members). Every draw is a new
value derived from the fitted one, which stays as it is; all draws of one query share its support's
registrations. Every plane axis gives its own sample, so ``axis="all"`` yields ``k × 3`` samples. All
of it happens in canonical space; :class:`~fewshotcx.Segmenter` reorients once at the output.

Uncertainty of a voxel:

* ``"entropy"`` (default): binary entropy (bits, in ``[0, 1]``) of the mean foreground probability
  over the samples, the largest over structures. It counts both the samples' disagreement and their
  own soft probabilities; it is 0 where every sample says exactly 0 or exactly 1.
* ``"std"``: standard deviation of the foreground probability over the samples (disagreement only),
  the largest over structures.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from ..pipeline.support import derived_generator
from ..predictor import Predictor, Query

Measure = Literal["entropy", "std"]
#: Draws and the share of the support each draw uses, chosen on the selection set by
#: ``benchmarks/uncertainty_draws.py`` (the cheapest setting whose error-finding AUROC is within 0.02 of
#: 8 draws on the whole support; ``results/uncertainty_draws_summary.csv``).
DEFAULT_DRAWS = 4
DEFAULT_FRACTION = 0.5
#: Key mixed into the seed of draw ``i`` so draws never reuse the segmenter's own support draws.
_DRAW_KEY = 0x5EED


def draw_seed(seed: int, draw: int) -> int:
    """The seed of independent draw ``draw`` of a predictor seeded with ``seed``."""
    return derived_generator(seed, _DRAW_KEY, draw).initial_seed()


def canonical_samples(predictor: Predictor, query: Query, k: int = DEFAULT_DRAWS,
                      fraction: float = DEFAULT_FRACTION) -> list[np.ndarray]:
    """``k × len(predictor.axes)`` probability samples of ``query``, each ``(L, X, Y, Z)`` float32 on its
    canonical grid: draw by draw, one per plane axis."""
    if k < 1:
        raise ValueError(f"k (number of draws) must be at least 1, got {k}")
    samples = []
    for draw in range(k):
        drawn = predictor.draw(draw_seed(predictor.seed, draw), fraction)
        samples.extend(drawn.probabilities(query, axes=[axis]) for axis in predictor.axes)
    return samples


def sample_labels(predictor: Predictor, query: Query, k: int = DEFAULT_DRAWS,
                  fraction: float = DEFAULT_FRACTION) -> list[np.ndarray]:
    """``k`` canonical ``(X, Y, Z)`` label maps, one per independent draw (planes averaged within a draw),
    thresholded and post-processed by ``predictor``."""
    samples = canonical_samples(predictor, query, k, fraction)
    planes = len(predictor.axes)
    return [predictor.labels(np.mean(samples[draw * planes:(draw + 1) * planes], axis=0)) for draw in range(k)]


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(``p``), elementwise; exactly 0 at p = 0 and p = 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h, nan=0.0).astype(np.float32)


def uncertainty_map(samples: Sequence[np.ndarray], measure: Measure = "entropy") -> np.ndarray:
    """Per-voxel uncertainty from probability samples.

    Args:
        samples: ``K`` arrays ``(L, X, Y, Z)`` (or ``(L, …)`` of any shape) in ``[0, 1]``.
        measure: ``"entropy"`` or ``"std"`` (module docstring).
    Returns:
        ``(X, Y, Z)`` float32 ≥ 0, the largest over the ``L`` structures.
    """
    stack = np.stack([np.asarray(s, dtype=np.float32) for s in samples])  # (K, L, ...)
    if measure == "entropy":
        per_class = binary_entropy(stack.mean(axis=0))
    elif measure == "std":
        per_class = stack.std(axis=0)
    else:
        raise ValueError(f"measure must be 'entropy' or 'std', got {measure!r}")
    return per_class.max(axis=0).astype(np.float32)
