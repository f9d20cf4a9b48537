"""A slice as a PNG for thin viewers: the image windowed to grey, the drawn slice in red and,
optionally, the completed result in green, blended on top.

Display convention: the radiological view of every picture fewshotcx makes
(:func:`fewshotcx.viz.radiological`): anterior at the top, the patient's right on the left of the
picture, as the browser viewer shows it too.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np

from ..viz import radiological

#: Overlay colours (RGB, 0–1) and their opacity.
DRAWN_RGB, RESULT_RGB, ALPHA = (1.0, 0.2, 0.2), (0.2, 1.0, 0.2), 0.5


def window_range(volume: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentile of the volume: a default window for any modality."""
    lo, hi = np.percentile(volume, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def to_display(plane: np.ndarray) -> np.ndarray:
    """``(X, Y)`` → ``(rows, columns)`` for display (:func:`~fewshotcx.viz.radiological`)."""
    return radiological(np.asarray(plane))


def slice_png(plane: np.ndarray, window: tuple[float, float], drawn: Optional[np.ndarray] = None,
              result: Optional[np.ndarray] = None) -> bytes:
    """PNG bytes of one ``(X, Y)`` slice with ``drawn`` (red) and ``result`` (green) ``(X, Y)``
    label slices blended where non-zero."""
    import matplotlib.image as mpimg

    lo, hi = window
    grey = np.clip((to_display(plane).astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for labels, colour in ((result, RESULT_RGB), (drawn, DRAWN_RGB)):
        if labels is not None:
            inside = to_display(labels) > 0
            rgb[inside] = (1 - ALPHA) * rgb[inside] + ALPHA * np.asarray(colour)
    buffer = io.BytesIO()
    mpimg.imsave(buffer, rgb, format="png")
    return buffer.getvalue()
