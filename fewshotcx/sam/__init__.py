"""Deprecated location of the SAM model code, kept so that ``fewshotcx.sam`` imports keep working.

The code lives in :mod:`fewshotcx.models.sam` (beside UniverSeg; ``fx.sam`` names it). Importing
``fewshotcx.sam`` or one of its submodules (``fewshotcx.sam.models``, ...) warns once and gives the
same module objects (none needs an optional package at import), so ``isinstance`` checks and monkeypatches agree across both names.
"""

import sys
import warnings
from importlib import import_module

warnings.warn("fewshotcx.sam moved to fewshotcx.models.sam (also reachable as fx.sam); the old import path "
              "will be removed in a future release", DeprecationWarning, stacklevel=2)

_SUBMODULES = ("calibration", "decoding", "embedding_cache", "models", "prompts", "refine", "sam2_models",
               "transforms", "tuning", "video")

_package = import_module("fewshotcx.models.sam")
globals().update({name: getattr(_package, name) for name in _package.__all__})
__all__ = list(_package.__all__)
for _name in _SUBMODULES:  # ``from fewshotcx.sam.models import ...`` finds these before searching files
    sys.modules[f"{__name__}.{_name}"] = import_module(f"fewshotcx.models.sam.{_name}")
