"""Baselines that in-context segmentation is compared against (``fx.baselines``).

* :func:`interpolate_slices` — shape-based interpolation between drawn slices (what planning systems do);
* :func:`label_fusion` — atlas label fusion without registration;
* :mod:`fewshotcx.baselines.unet` — a small 2D U-Net trained from scratch on the support.
"""

from .interpolation import interpolate_slices, label_fusion

__all__ = ["interpolate_slices", "label_fusion"]
