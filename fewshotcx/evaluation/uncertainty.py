"""Per-voxel uncertainty from independent support draws × plane axes.

A fitted :class:`~fewshotcx.Segmenter` is re-run ``k`` times, each time on a different random half
of its support pool (bagging: a support pool of a few drawn slices is where an in-context model's
answer depends most on what it was shown) with a different seed (the backend's own stochasticity:
which support slices are drawn per query group, ensemble members). Every plane axis of the segmenter
gives its own sample, so ``axis="all"`` yields ``k × 3`` samples. All of it happens in canonical
space; the public methods on the Segmenter reorient once at the output.

Uncertainty of a voxel:

* ``"entropy"`` (default): binary entropy (bits, in ``[0, 1]``) of the mean foreground probability
  over the samples, the largest over structures. It counts both the samples' disagreement and their
  own soft probabilities; it is 0 where every sample says exactly 0 or exactly 1.
* ``"std"``: standard deviation of the foreground probability over the samples (disagreement only),
  the largest over structures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import torch

from ..backends import Backend
from ..io.volume import Volume
from ..pipeline.support import BAGGING_KEY, derived_generator, subsample_pool

if TYPE_CHECKING:
    from ..segmenter import Segmenter, VolumeLike

Measure = Literal["entropy", "std"]
#: Key mixed into the seed of draw ``i`` so draws never reuse the segmenter's own support draws.
_DRAW_KEY = 0x5EED


def draw_segmenter(seg: "Segmenter", draw: int, fraction: float = 0.5) -> "Segmenter":
    """A shallow copy of ``seg`` for independent draw ``draw``: its own seed and, for slab backends, a
    random ``fraction`` of the support. A backend that bags per query (a ``bagged(fraction)`` copy:
    UniverSeg and universeg+atlas) takes the fraction of whatever support each query gets, registered
    support included, and shares the fitted support's registrations with ``seg``; any other slab
    backend is refitted on a random ``fraction`` of each pool. ``seg`` itself is untouched (backends rebind their fitted state, see
    :mod:`fewshotcx.backends.base`)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    seed = derived_generator(seg.seed, _DRAW_KEY, draw).initial_seed()
    if hasattr(seg.backend, "bagged"):
        clone = seg.copy_with(seed=seed)
        clone.backend = seg.backend.bagged(fraction)
        return clone
    if isinstance(seg.backend, Backend) and seg.support_pools:
        generator = derived_generator(seed, BAGGING_KEY)
        pools = {axis: subsample_pool(pool, fraction, generator) for axis, pool in seg.support_pools.items()}
        return seg.copy_with(seed=seed, pools=pools)
    return seg.copy_with(seed=seed)


def canonical_samples(seg: "Segmenter", query: "VolumeLike", k: int = 8, fraction: float = 0.5
                      ) -> tuple[Volume, Volume, list[np.ndarray]]:
    """The query as given, its canonical form, and ``k × len(seg.axes)`` probability samples, each
    ``(L, X, Y, Z)`` float32 on the canonical grid (one per draw and plane axis)."""
    if k < 1:
        raise ValueError(f"k (number of draws) must be at least 1, got {k}")
    samples = []
    original = canonical = None
    for draw in range(k):
        clone = draw_segmenter(seg, draw, fraction)
        for axis in seg.axes:
            clone.axes = [axis]
            original, canonical, probs = clone.canonical_probabilities(query if original is None else original)
            samples.append(probs)
    return original, canonical, samples


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


def predict_uncertainty(seg: "Segmenter", query: "VolumeLike", k: int = 8, measure: Measure = "entropy",
                        fraction: float = 0.5) -> Volume:
    """Float32 uncertainty (≥ 0) on the query's grid; see :meth:`fewshotcx.Segmenter.predict_uncertainty`."""
    from ..io.volume import reorient_array

    original, canonical, samples = canonical_samples(seg, query, k, fraction)
    u = uncertainty_map(samples, measure)
    return original.with_array(reorient_array(u, canonical.affine, original.affine), label=False)


def predict_samples(seg: "Segmenter", query: "VolumeLike", k: int = 8, fraction: float = 0.5) -> list[Volume]:
    """``k`` label maps on the query's grid, one per independent draw (planes averaged within a draw)."""
    from ..io.volume import reorient_array

    original, canonical, samples = canonical_samples(seg, query, k, fraction)
    planes = len(seg.axes)
    out = []
    for draw in range(k):
        probs = np.mean(samples[draw * planes:(draw + 1) * planes], axis=0)
        labels = seg.labels_from(probs)
        out.append(original.with_array(reorient_array(labels, canonical.affine, original.affine), label=True))
    return out
