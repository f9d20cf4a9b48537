"""fewshotcx: few-shot, in-context segmentation of 3D medical images.

Public API::

    import fewshotcx as fx
    vol = fx.load_volume("ct.nii.gz")
    seg = fx.Segmenter(backend="universeg").fit(images=[...], labels=[...])
    fx.save_volume(seg.predict(vol), "pred.nii.gz")

Submodules ``fx.metrics``, ``fx.models``, ``fx.rt``, ``fx.dicom``, ``fx.datasets``, ``fx.training``,
``fx.weights``, ``fx.sam`` and ``fx.baselines``
are imported on first use.
"""

from importlib import import_module

from .segmenter import Segmenter
from .volume import Volume, VolumeError, load_volume, save_volume

__version__ = "0.1.0"

_SUBMODULES = ("metrics", "models", "rt", "dicom", "sam", "datasets", "training", "weights", "baselines")

__all__ = ["Segmenter", "Volume", "VolumeError", "load_volume", "save_volume", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'fewshotcx' has no attribute {name!r}")
