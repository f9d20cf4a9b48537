"""Baselines that in-context segmentation is compared against (``fx.baselines``).

* :func:`interpolate_slices` — shape-based interpolation between drawn slices (what planning systems do);
* :func:`label_fusion` — atlas label fusion without registration;
* :mod:`fewshotcx.baselines.unet` — a small 2D U-Net trained from scratch on the support;
* :mod:`fewshotcx.baselines.nnunet` — nnU-Net v2 (export, train, predict through nnU-Net itself);
* :mod:`fewshotcx.baselines.totalsegmentator` — TotalSegmentator, run here or scored from its outputs;
* :mod:`fewshotcx.baselines.compare` — every method side by side (``fewshotcx compare``).

``fx.baselines.unet``, ``.nnunet``, ``.totalsegmentator`` and ``.compare`` are imported on first use, so
importing ``fx.baselines`` imports neither torch-heavy code nor optional packages.
"""

from importlib import import_module

from .interpolation import interpolate_slices, label_fusion

_LAZY = ("unet", "nnunet", "totalsegmentator", "compare")

__all__ = ["interpolate_slices", "label_fusion", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'fewshotcx.baselines' has no attribute {name!r}")
