"""fewshotcx: few-shot, in-context segmentation of 3D medical images.

Public API::

    import fewshotcx as fx
    vol = fx.load_volume("ct.nii.gz")
    seg = fx.Segmenter(backend="universeg").fit(images=[...], labels=[...])
    fx.save_volume(seg.predict(vol), "pred.nii.gz")

Submodules ``fx.metrics``, ``fx.models``, ``fx.rt``, ``fx.dicom``, ``fx.datasets``, ``fx.training``,
``fx.weights``, ``fx.sam``, ``fx.baselines``, ``fx.cohort`` and ``fx.interactive``
are imported on first use.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .io import Volume, VolumeError, load_volume, save_volume

if TYPE_CHECKING:  # imported on first use (below), so that fewshotcx.io and fewshotcx.client need no torch
    from .client import RemoteSession
    from .segmenter import Segmenter
    from .session import ContourSession

__version__ = "0.4.0"  # 0.4: fitted state as a value, one default, one vocabulary (deprecated spellings kept for one release)

#: ``fx.<name>`` → the module it loads on first use.
_SUBMODULES = {
    "metrics": "evaluation.metrics",
    "models": "models",
    "weights": "models.weights",
    "rt": "rt",
    "dicom": "io.dicom",
    "registration": "registration",
    "sam": "models.sam",
    "datasets": "datasets",
    "training": "training",
    "baselines": "baselines",
    "cohort": "cohort",
    "interactive": "interactive",
    "review": "evaluation.review",
    "client": "client",
}

#: ``fx.<name>`` → ``(module, attribute)`` loaded on first use, so that torch-free parts
#: (``fewshotcx.io``, ``fewshotcx.client``) import without torch.
_LAZY = {
    "Segmenter": ("segmenter", "Segmenter"),
    "ContourSession": ("session", "ContourSession"),
    "RemoteSession": ("client", "RemoteSession"),
}

__all__ = ["ContourSession", "RemoteSession", "Segmenter", "Volume", "VolumeError", "load_volume", "save_volume", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = import_module(f".{_SUBMODULES[name]}", __name__)
        globals()[name] = module
        return module
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        value = getattr(import_module(f".{module_name}", __name__), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fewshotcx' has no attribute {name!r}")
