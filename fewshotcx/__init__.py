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

from .io import Volume, VolumeError, load_volume, save_volume
from .segmenter import Segmenter

__version__ = "0.1.0"

#: ``fx.<name>`` → the module it loads on first use.
_SUBMODULES = {
    "metrics": "evaluation.metrics",
    "models": "models",
    "weights": "models.weights",
    "rt": "rt",
    "dicom": "io.dicom",
    "registration": "registration",
    "sam": "sam",
    "datasets": "datasets",
    "training": "training",
    "baselines": "baselines",
}

__all__ = ["Segmenter", "Volume", "VolumeError", "load_volume", "save_volume", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = import_module(f".{_SUBMODULES[name]}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'fewshotcx' has no attribute {name!r}")
