"""Overlay figures: image, reference contour and prediction on a few axial slices (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .pipeline.intensity import normalize
from .io.volume import Volume


def spread_slices(mask: np.ndarray, count: int, ends: bool = False) -> list[int]:
    """``count`` axial indices evenly spread over the ``(X, Y, Z)`` mask's z-extent, its first and last
    slice included (``ends=True``: what drawing for interpolation or ``Segmenter.complete`` needs) or
    excluded (for display); fewer when indices coincide. An empty mask gives the middle slice."""
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    if z.size == 0:
        return [mask.shape[2] // 2]
    points = np.linspace(z[0], z[-1], count) if ends else np.linspace(z[0], z[-1], count + 2)[1:-1]
    return sorted({int(round(q)) for q in points})


def radiological(axial: np.ndarray) -> np.ndarray:
    """Canonical RAS axial slice ``(x, y)`` → picture rows/columns with anterior at the top and the
    patient's right (+x) on the left of the picture: the radiological view, the one display
    convention of every picture fewshotcx makes (figures, review pages, server previews, the viewer)."""
    return axial.T[::-1, ::-1]


def save_overlay(
    image: Volume,
    prediction: Volume,
    path: Path,
    reference: Optional[Volume] = None,
    slices: Optional[Sequence[int]] = None,
    title: str = "",
    modality: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Write a PNG with one row per axial slice: image | reference (green) | prediction (red).

    All volumes must share ``image``'s (canonical) grid. Slices are shown in radiological convention
    (patient right on the left of the picture, anterior at the top). An existing ``path`` is
    replaced only with ``overwrite`` (:func:`save_figure`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = normalize(image.array, modality)
    mask_for_rows = reference.array if reference is not None else prediction.array
    rows = list(slices) if slices is not None else spread_slices(mask_for_rows > 0, 3)
    panels = [("image", None), ("reference", reference), ("prediction", prediction)]
    if reference is None:
        panels.pop(1)
    aspect = image.spacing[1] / image.spacing[0]
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(3 * len(panels), 3 * len(rows)), squeeze=False)
    for r, z in enumerate(rows):
        for c, (name, vol) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(radiological(shown[:, :, z]), cmap="gray", aspect=aspect, interpolation="nearest")
            if vol is not None:
                mask = radiological(vol.array[:, :, z] > 0)
                ax.contour(mask, levels=[0.5], colors="lime" if name == "reference" else "red", linewidths=1.2)
            ax.set_title(f"{name} (z={z})", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, overwrite)


def save_figure(fig, path: Path, overwrite: bool = False) -> Path:
    """Write a matplotlib figure atomically (format from the suffix) and close it.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (nothing is written).
    """
    import matplotlib.pyplot as plt

    from .io.atomic import atomic_output

    path = Path(path)
    try:
        with atomic_output(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, dpi=90, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
