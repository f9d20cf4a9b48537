"""Backend registry: ``create_backend("universeg" | "sam", ...)``."""

from __future__ import annotations

from typing import Optional

import torch

from .base import Backend

BACKENDS = ("universeg", "sam")


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
) -> Backend:
    """Instantiate a backend by name; ``options`` are backend-specific keyword arguments."""
    common = dict(model=model, weights=weights, device=device, support_size=support_size,
                  ensemble=ensemble, slice_size=slice_size, context=context)
    if name == "universeg":
        from .universeg import UniverSegBackend

        return UniverSegBackend(**common, **options)
    if name == "sam":
        from .sam import SamBackend

        return SamBackend(**common, **options)
    raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")


__all__ = ["Backend", "BACKENDS", "create_backend"]
