"""Slab inference over a whole volume, and the working-memory budget it runs under.

Shared by the :class:`~fewshotcx.Segmenter` and the hybrid backends (``"universeg+atlas"``), so it
lives below both: a slab backend is driven over every plane axis in chunks that fit the budget, and
the slabs are reassembled onto the canonical grid.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, Union

import torch
from tqdm.auto import tqdm

from .slicing import Framing, SliceGeometry, extract_slabs, iter_chunks, reassemble


class SlabModel(Protocol):
    """What :func:`slab_probabilities` needs of a slab backend (:class:`fewshotcx.backends.base.Backend`,
    one layer up, satisfies it): its framing attributes (:meth:`Framing.of`) and these two methods,
    called with the backend's fitted value, which this layer passes through without reading."""

    def bytes_per_slab(self, fitted: Any = None) -> int: ...

    def predict_slices(self, fitted: Any, slabs: torch.Tensor, geometry: SliceGeometry,
                       generator: torch.Generator) -> torch.Tensor: ...

#: Working-memory budget for one chunk of query slabs through the model. On CPU, small chunks are
#: faster (cache locality): about one v1 slab at 128² per call measured 1.6x faster than 1 GiB chunks
#: (docs/performance.md); GPUs want large batches.
DEFAULT_MEMORY_BUDGET = {"cpu": 128 << 20, "cuda": 8 << 30}


def default_memory_budget(device: torch.device) -> int:
    """Bytes per chunk of query slabs on ``device`` (:data:`DEFAULT_MEMORY_BUDGET`, 128 MiB otherwise)."""
    return DEFAULT_MEMORY_BUDGET.get(device.type, 128 << 20)


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    return dev


def slab_probabilities(
    backend: SlabModel,
    fitted: Any,
    normalised: torch.Tensor,
    spacing: Sequence[float],
    axes: Sequence[int],
    generator: torch.Generator,
    memory_budget: int,
    progress: bool = False,
) -> torch.Tensor:
    """Run a slab backend with a fitted value over a whole canonical volume and reassemble, averaging
    the plane axes.

    Args:
        fitted: the backend's fitted value for this query (``backend.for_query(...)`` for a query-aware
            backend).
        normalised: ``(X, Y, Z)`` float32 in ``[0, 1]`` on the backend's device.
        spacing: voxel size in mm (sets the in-plane aspect of the slabs).
        axes: plane axes (2 = axial).
        memory_budget: bytes per chunk of query slabs.
    Returns:
        ``(L, X, Y, Z)`` float32 probabilities in ``[0, 1]`` on the same grid.
    """
    total = None
    framing = Framing.of(backend)
    for axis in axes:
        geometry = framing.geometry(tuple(normalised.shape), spacing, axis, device=normalised.device,
                                    centre=framing.centre(normalised, axis))
        chunks = list(iter_chunks(geometry, backend.bytes_per_slab(fitted), memory_budget))
        outputs = []
        for start, stop in tqdm(chunks, desc=f"slices (axis {axis})", disable=not progress or len(chunks) < 2,
                                leave=False):
            part = geometry.subset(start, stop)
            outputs.append(backend.predict_slices(fitted, extract_slabs(normalised, part), part, generator))
        probs = reassemble(torch.cat(outputs), geometry)  # (L, X, Y, Z)
        total = probs if total is None else total + probs
    return (total / len(axes)).clamp_(0, 1)
