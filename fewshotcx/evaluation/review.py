"""Where to look: per-slice and per-structure review scores, flags, and a review figure (``fx.review``).

A clinician reviews an automatic contour slice by slice. From the mean foreground probability ``p``
over independent draws (:mod:`fewshotcx.evaluation.uncertainty`) and the contour ``m`` thresholded
from it, the **expected Dice** of a structure on an axial slice is ``2 Σ p·m / (Σ p + Σ m)``: the
Dice the contour would score if the reference were drawn from ``p`` voxel by voxel. It is low where
draws disagree and where the model itself is unsure, and it is in Dice units, so ``flag_below=0.7``
flags the slices expected to score below 0.7. A slice's score is ``1 −`` the lowest expected Dice of
its structures (0 = nothing to check). Slices are axial indices of the canonical (RAS) volume.

    rev = fx.review.review(seg, "patient.nii.gz")
    rev.flagged            # slices to check, worst first
    rev.structures         # per label value: expected 3D Dice, mean uncertainty
    fx.review.save_figure(rev, "review.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..compat import renamed_keywords
from ..io.volume import Volume
from ..predictor import HasPredictor, Predictor, VolumeLike, as_predictor
from .uncertainty import DEFAULT_DRAWS, DEFAULT_FRACTION, Measure, canonical_samples, uncertainty_map

#: Voxel mass (Σ p + Σ m) below which a structure counts as absent on a slice (expected Dice 1).
_ABSENT_MASS = 0.5


def expected_dice(probs: np.ndarray, labels: np.ndarray, classes: Sequence[int], axis: tuple = (0, 1)) -> np.ndarray:
    """Expected Dice of each structure, reduced over ``axis``.

    Args:
        probs: ``(L, X, Y, Z)`` mean foreground probabilities.
        labels: ``(X, Y, Z)`` label map (values ``classes``).
        axis: voxel axes of ``(X, Y, Z)`` to sum over: ``(0, 1)`` = per axial slice, ``(0, 1, 2)`` = whole volume.
    Returns:
        ``(L, …)`` in ``[0, 1]`` (``(L, Z)`` per slice); 1 where a structure is absent from both.
    """
    out = []
    for i, value in enumerate(classes):
        p, m = probs[i].astype(np.float64), (labels == value)
        overlap, mass = (p * m).sum(axis=axis), p.sum(axis=axis) + m.sum(axis=axis)
        out.append(np.where(mass < _ABSENT_MASS, 1.0, 2 * overlap / np.maximum(mass, 1e-12)))
    return np.stack(out)


def slice_scores(probs: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``(Z,)`` review score per axial slice: ``1 −`` the lowest expected Dice of its structures."""
    return 1.0 - expected_dice(probs, labels, classes).min(axis=0)


@dataclass
class Review:
    """What :func:`review` found, on the canonical grid of the query.

    Attributes:
        image: the query, canonical.
        probability: ``(L, X, Y, Z)`` mean foreground probability over the samples.
        labels: ``(X, Y, Z)`` the segmenter's label map from ``probability``.
        uncertainty: ``(X, Y, Z)`` per-voxel uncertainty.
        scores: ``(Z,)`` per-slice review score (:func:`slice_scores`).
        classes: label values, in ``probability``'s channel order.
        flag_below: expected-Dice level under which a slice is flagged.
    """

    image: Volume
    probability: np.ndarray
    labels: np.ndarray
    uncertainty: np.ndarray
    scores: np.ndarray
    classes: tuple[int, ...]
    flag_below: float = 0.7

    @property
    def flagged(self) -> list[int]:
        """Axial slices whose expected Dice is below ``flag_below``, worst first."""
        bad = np.flatnonzero(self.scores > 1.0 - self.flag_below)
        return [int(z) for z in bad[np.argsort(-self.scores[bad], kind="stable")]]

    @property
    def structures(self) -> dict[int, dict[str, float]]:
        """Per label value: ``expected_dice`` (3D) and ``mean_uncertainty`` over its contour's voxels."""
        whole = expected_dice(self.probability, self.labels, self.classes, axis=(0, 1, 2))
        out = {}
        for i, value in enumerate(self.classes):
            inside = self.labels == value
            out[value] = {"expected_dice": round(float(whole[i]), 4),
                          "mean_uncertainty": round(float(self.uncertainty[inside].mean()) if inside.any() else 0.0, 4)}
        return out


@renamed_keywords(k="draws")
def review(model: "Predictor | HasPredictor", query: VolumeLike, draws: int = DEFAULT_DRAWS, flag_below: float = 0.7,
           measure: Measure = "entropy", fraction: float = DEFAULT_FRACTION) -> Review:
    """Run ``draws`` independent draws of a fitted model on ``query`` (``k=`` before 0.4.0, deprecated;
    the CLI's ``--draws``) and score every slice.

    Args:
        model: a fitted :class:`~fewshotcx.Segmenter` (its :attr:`~fewshotcx.Segmenter.predictor` is
            read once) or a :class:`~fewshotcx.predictor.Predictor`.
    """
    if not 0.0 < flag_below <= 1.0:
        raise ValueError(f"flag_below must be in (0, 1], got {flag_below}")
    predictor = as_predictor(model)
    prepared = predictor.query(query)
    samples = canonical_samples(predictor, prepared, draws, fraction)
    probs = np.mean(samples, axis=0)
    labels = predictor.labels(probs)
    return Review(prepared.canonical, probs, labels, uncertainty_map(samples, measure),
                  slice_scores(probs, labels, predictor.classes), tuple(predictor.classes), float(flag_below))


def save_figure(rev: Review, path, rows: int = 3, modality: str = "auto", overwrite: bool = False) -> Path:
    """PNG: the per-slice score along z (flag level dashed), then for the ``rows`` worst slices the
    image with the contour (red) and the uncertainty map (radiological convention). An existing
    ``path`` is replaced only with ``overwrite`` (``FileExistsError`` otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..pipeline.intensity import normalize
    from ..viz import radiological, save_figure as write_figure

    worst = rev.flagged[:rows] or [int(np.argmax(rev.scores))]
    shown = normalize(rev.image.array, modality)
    aspect = rev.image.spacing[1] / rev.image.spacing[0]
    fig = plt.figure(figsize=(7, 2.2 + 3 * len(worst)))
    grid = fig.add_gridspec(1 + len(worst), 2, height_ratios=[0.7] + [1.0] * len(worst))
    top = fig.add_subplot(grid[0, :])
    top.bar(np.arange(rev.scores.size), rev.scores, color=["C3" if z in worst else "C0" for z in range(rev.scores.size)])
    top.axhline(1.0 - rev.flag_below, ls="--", color="k", lw=0.8)
    top.set_xlabel("axial slice (canonical z)")
    top.set_ylabel("1 − expected Dice")
    top.set_title(f"{len(rev.flagged)} slices flagged (expected Dice < {rev.flag_below:g})", fontsize=9)
    for r, z in enumerate(worst, start=1):
        left, right = fig.add_subplot(grid[r, 0]), fig.add_subplot(grid[r, 1])
        for ax in (left, right):
            ax.imshow(radiological(shown[:, :, z]), cmap="gray", aspect=aspect, interpolation="nearest")
            ax.axis("off")
        if rev.labels[:, :, z].any():
            left.contour(radiological(rev.labels[:, :, z] > 0), levels=[0.5], colors="red", linewidths=1.2)
        heat = right.imshow(radiological(rev.uncertainty[:, :, z]), cmap="magma", alpha=0.7, vmin=0,
                            vmax=max(float(rev.uncertainty.max()), 1e-6), aspect=aspect, interpolation="nearest")
        left.set_title(f"z={z}: contour (score {rev.scores[z]:.2f})", fontsize=9)
        right.set_title(f"z={z}: uncertainty", fontsize=9)
        fig.colorbar(heat, ax=right, fraction=0.046)
    fig.tight_layout()
    return write_figure(fig, path, overwrite)
