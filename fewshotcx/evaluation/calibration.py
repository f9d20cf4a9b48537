"""Is a probability of 0.8 right 80 % of the time? Reliability measures and a support-fitted temperature.

* :func:`expected_calibration_error`: the usual binned ECE over voxels.
* :func:`fit_temperature`: one temperature ``T`` for a fitted segmenter, from its **own support**
  only (never a query's reference): the support is split into folds (leave-one-volume-out with
  several support volumes; otherwise the labelled axial slices in two interleaved folds), each fold
  is predicted by the same model conditioned on the rest (:meth:`Predictor.refit
  <fewshotcx.predictor.Predictor.refit>`: a new value; the fitted one is untouched), and ``T`` minimises the negative
  log-likelihood of those held-out labels under ``sigmoid(logit(p) / T)``.
* :func:`review_region`: the voxels worth scoring (near the structure or the prediction), since
  calibration over a whole volume is dominated by far-away background that every model gets right.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..pipeline.support import SupportVolumes
from ..predictor import HasPredictor, Predictor, as_predictor, support_volumes

#: Temperatures searched by :func:`fit_temperature` (log-spaced, 0.25 … 8).
TEMPERATURES = np.geomspace(0.25, 8.0, 41)
_EPS = 1e-6


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` elementwise (``T > 1`` softens, ``T < 1`` sharpens), float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return (1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature))).astype(np.float32)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Binned ECE: ``Σ_b (n_b / n) |mean(y_b) − mean(p_b)|`` over ``bins`` equal-width bins of ``p``."""
    p, y = np.asarray(probs, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if p.size == 0:
        raise ValueError("no voxels to measure calibration on")
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, y, bins) - np.bincount(which, p, bins))
    return float(gap.sum() / count.sum())


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=bool)
    return float(-(np.log(p[y]).sum() + np.log(1 - p[~y]).sum()) / max(p.size, 1))


def review_region(reference: np.ndarray, probs: np.ndarray, margin: int = 3) -> np.ndarray:
    """Boolean ``(X, Y, Z)``: voxels within ``margin`` in-plane voxels of the reference or of ``p ≥ 0.5``."""
    core = (np.asarray(reference) > 0) | (np.asarray(probs) >= 0.5)
    return ndimage.binary_dilation(core, np.ones((2 * margin + 1, 2 * margin + 1, 1), bool)) if core.any() else core


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for finding ``positives`` (ties count half); NaN when
    either class is missing."""
    s, pos = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.arange(1, values.size + 1)
    _, inverse = np.unique(values, return_inverse=True)
    return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]


def support_folds(support: SupportVolumes) -> list[tuple[list[int], Optional[list], int, list[int]]]:
    """Held-out folds of a fitted support: ``(train volumes, train slices or None, held-out volume,
    held-out axial slices)``."""
    n = len(support.labels)
    if n > 1:
        return [([j for j in range(n) if j != i], None if support.slices is None else
                 [support.slices[j] for j in range(n) if j != i], i,
                 list(range(support.labels[i].shape[2])) if support.slices is None or support.slices[i] is None
                 else list(support.slices[i])) for i in range(n)]
    labelled = (list(range(support.labels[0].shape[2])) if support.slices is None or support.slices[0] is None
                else sorted(support.slices[0]))
    if len(labelled) < 2:
        raise ValueError("fitting a temperature needs at least two labelled slices or two support volumes")
    halves = [labelled[0::2], labelled[1::2]]
    return [([0], [halves[1 - h]], 0, halves[h]) for h in (0, 1)]


def fit_temperature(model: "Predictor | HasPredictor", temperatures: Sequence[float] = TEMPERATURES) -> float:
    """The temperature that best explains the support's held-out labels (module docstring).

    Args:
        model: a fitted :class:`~fewshotcx.Segmenter` (left exactly as fitted) or its
            :class:`~fewshotcx.predictor.Predictor`.
    """
    predictor = as_predictor(model)
    support = predictor.conditioned.support
    probs, labels = [], []
    for train, slices, held, held_slices in support_folds(support):
        axes = [2] if slices is not None and any(s is not None for s in slices) else predictor.axes
        try:
            fold = predictor.refit(support_volumes([support.images[j] for j in train],
                                                   [support.labels[j] for j in train], slices, predictor.modality,
                                                   predictor.window, predictor.seed, axes), axes)
        except Exception as exc:  # a fold without foreground cannot be fitted: skip it
            if "empty" not in str(exc):
                raise
            continue
        p = fold.probabilities(fold.query(support.images[held]))
        reference = support.labels[held].array
        for i, value in enumerate(predictor.classes):
            y, q = reference[..., held_slices] == value, p[i][..., held_slices]
            region = review_region(y, q)
            probs.append(q[region])
            labels.append(y[region])
    if not probs:
        return 1.0
    p, y = np.concatenate(probs), np.concatenate(labels)
    losses = [negative_log_likelihood(apply_temperature(p, t), y) for t in temperatures]
    return float(temperatures[int(np.argmin(losses))])
