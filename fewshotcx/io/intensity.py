"""Volume-level intensity normalisation to ``[0, 1]`` (NumPy only): CT windowing, MR percentile scaling.

Non-finite voxels (NaN, ±inf) are never propagated: NaN becomes the volume's minimum finite value
(background), +inf the maximum, -inf the minimum, before any scaling. A volume with no finite voxel
is an error. It sits low in the package (registration and the pipeline both use it);
:mod:`fewshotcx.pipeline.intensity` re-exports it.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

Modality = Literal["auto", "ct", "mr"]

#: Soft-tissue window (level 40 HU, width 400 HU): the pelvis/abdomen default for contouring.
SOFT_TISSUE_WINDOW = (40.0, 400.0)
MR_PERCENTILES = (0.5, 99.5)


def clean_nonfinite(array: np.ndarray) -> np.ndarray:
    """Replace NaN with the minimum finite value, +inf with the maximum, -inf with the minimum."""
    array = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if finite.all():
        return array
    if not finite.any():
        raise ValueError("image has no finite voxel values")
    lo, hi = float(array[finite].min()), float(array[finite].max())
    out = array.copy()
    out[np.isnan(out)] = lo
    out[np.isposinf(out)] = hi
    out[np.isneginf(out)] = lo
    return out


def looks_like_ct(array: np.ndarray) -> bool:
    """Heuristic CT detection from the intensity range in Hounsfield units.

    CT has air near -1000 HU: at least 1% of voxels ≤ -500 and a 1st percentile ≤ -700, with the 99th
    percentile below 4000 (MR scanner units are non-negative or arbitrary and rarely meet this).
    """
    a = clean_nonfinite(array)
    p1, p99 = np.percentile(a, [1, 99])
    return bool(p1 <= -700 and p99 < 4000 and np.mean(a <= -500) >= 0.01)


def ct_window(array: np.ndarray, level: float = SOFT_TISSUE_WINDOW[0], width: float = SOFT_TISSUE_WINDOW[1]) -> np.ndarray:
    """Clip ``[level - width/2, level + width/2]`` HU and scale to ``[0, 1]``."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo = level - width / 2
    return np.clip((clean_nonfinite(array) - lo) / width, 0.0, 1.0).astype(np.float32)


def percentile_scale(array: np.ndarray, low: float = MR_PERCENTILES[0], high: float = MR_PERCENTILES[1]) -> np.ndarray:
    """Scale so the ``low``/``high`` percentiles map to 0/1, clipping outside (MR and unknown modalities)."""
    a = clean_nonfinite(array)
    lo, hi = np.percentile(a, [low, high])
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def normalize(
    array: np.ndarray,
    modality: Modality = "auto",
    window: Optional[tuple[float, float]] = None,
) -> np.ndarray:
    """Volume-level normalisation to ``[0, 1]`` float32.

    Args:
        modality: ``"ct"`` windows (``window=(level, width)``, default soft tissue), ``"mr"`` scales by
            the 0.5–99.5 percentiles, ``"auto"`` picks CT when :func:`looks_like_ct` says so.
    """
    if modality not in ("auto", "ct", "mr"):
        raise ValueError(f"modality must be 'auto', 'ct' or 'mr', got {modality!r}")
    if window is not None and modality != "mr":
        return ct_window(array, *window)
    if modality == "ct" or (modality == "auto" and looks_like_ct(array)):
        return ct_window(array, *(window or SOFT_TISSUE_WINDOW))
    return percentile_scale(array)
