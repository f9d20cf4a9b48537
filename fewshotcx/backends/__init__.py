"""Backend registry: ``create_backend("universeg" | "sam" | "universeg+sam" | "sam2" | "atlas" | "universeg+atlas", ...)``."""

from __future__ import annotations

from typing import Optional, Union

import torch

from .base import Backend, VolumeBackend

BACKENDS = ("universeg", "sam", "universeg+sam", "sam2", "atlas", "universeg+atlas")
#: Environment variable that overrides the default support strategy for a whole site or run (workers
#: included); the only override.
STRATEGY_ENV = "FEWSHOTCX_DEFAULT_STRATEGY"


def default_strategy() -> str:
    """The support strategy when none is given: ``$FEWSHOTCX_DEFAULT_STRATEGY`` if set, else ``"auto"``
    (support registered onto each query, retrieval where registration fails its check), which finds
    the query's anatomy in the support whatever the scans cover; ``"position"`` assumes they cover the
    same range (docs/cross_patient.md, benchmarks/ct_cross_patient.py)."""
    import os

    from ..pipeline.support import check_strategy

    return check_strategy(os.environ.get(STRATEGY_ENV) or "auto")


def create_backend(
    name: str,
    weights="default",
    model: Optional[torch.nn.Module] = None,
    device: torch.device = torch.device("cpu"),
    context: Optional[int] = None,
    support_size: Optional[int] = None,
    ensemble: int = 1,
    slice_size: Optional[int] = None,
    **options,
) -> Union[Backend, VolumeBackend]:
    """Instantiate a backend by name; ``options`` are backend-specific keyword arguments.

    ``"universeg+sam"`` takes the UniverSeg arguments as usual; options prefixed ``sam_`` go to the SAM
    refiner (``sam_model=`` a ``Sam``, ``sam_weights=`` a checkpoint spec, ``sam_preprocess=``, ...),
    and ``refine_threshold=`` (default 0.5) sets where UniverSeg's map becomes a SAM box.

    ``"atlas"`` (multi-atlas registration, :mod:`fewshotcx.backends.atlas`) takes ``fusion=``,
    ``registration=`` and registration options; the model arguments must keep their defaults.
    ``"universeg+atlas"`` takes the UniverSeg arguments (``strategy`` ``"auto"`` (default) or
    ``"registered"``, ``registration=``), ``prior_weight=`` (in-context share of the fused probability) and
    ``prior_sigma_mm=`` (blur of the atlas prior).
    """
    common = dict(model=model, weights=weights, device=device, support_size=support_size,
                  ensemble=ensemble, slice_size=slice_size, context=context)
    try:
        return _create(name, common, options)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise  # a bug, not a user's typo
        raise ValueError(f"backend {name!r}: {err}".replace("__init__() ", "")) from None


def _create(name: str, common: dict, options: dict) -> Union[Backend, VolumeBackend]:
    if name == "universeg":
        from .universeg import UniverSegBackend

        return UniverSegBackend(**common, **options)
    if name == "sam":
        from .sam import SamBackend

        return SamBackend(**common, **options)
    if name == "universeg+sam":
        from .refined import RefinedBackend
        from .sam import SamBackend
        from .universeg import UniverSegBackend

        sam_options = {key[4:]: options.pop(key) for key in list(options) if key.startswith("sam_")}
        refiner = SamBackend(device=common["device"], **{"tune_steps": 0, **sam_options})
        threshold = options.pop("refine_threshold", 0.5)
        coarse = UniverSegBackend(**common, **{"strategy": "position", **options})  # slab-only (RefinedBackend)
        return RefinedBackend(coarse, refiner, threshold)
    if name == "sam2":
        from .sam2 import Sam2Backend

        return Sam2Backend(**common, **options)
    if name == "universeg+atlas":
        from .universeg import UniverSegBackend
        from .universeg_atlas import UniverSegAtlasBackend

        prior = {key: options.pop(key) for key in ("prior_weight", "prior_sigma_mm") if key in options}
        return UniverSegAtlasBackend(UniverSegBackend(**common, **{"strategy": "auto", **options}), **prior)
    if name == "atlas":
        from .atlas import AtlasBackend

        defaults = dict(model=None, weights="default", support_size=None, ensemble=1, slice_size=None, context=None)
        used = [key for key, value in defaults.items() if common[key] != value]
        if used:
            raise ValueError(f"backend 'atlas' has no model: it does not take {', '.join(used)}")
        return AtlasBackend(device=common["device"], **options)
    raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")


__all__ = ["Backend", "BACKENDS", "STRATEGY_ENV", "create_backend", "default_strategy"]
