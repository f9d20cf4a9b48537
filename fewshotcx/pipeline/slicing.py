"""Batched 2.5D slab extraction and its inverse, as pure tensor operations on any device.

A *slab* is a slice plus ``k`` neighbours on each side: ``(2k+1, s, s)``. Extraction gathers all
requested slabs with one advanced-indexing op (edge slices repeat the first/last slice, i.e.
replication padding), resizes them in one ``F.interpolate`` call and pads them to the square model
size. :class:`SliceGeometry` records everything :func:`reassemble` needs to put ``(N, C, s, s)`` model
outputs back on the volume grid.

Resizing convention (aspect-preserving pad)
-------------------------------------------
The in-plane slice of ``h × w`` voxels with spacing ``(dh, dw)`` mm covers ``h·dh × w·dw`` mm. It is
resampled so that this *physical* rectangle fits the ``s × s`` model square with its longer side
filling it, then zero-padded symmetrically on the shorter side. Anatomy therefore keeps its true
shape whatever the voxel aspect (a sagittal slice of a 10 mm-thick CT is not squashed), and the
model never sees stretched structures. ``resize_mode="stretch"`` instead resizes the slice straight
to ``s × s`` (MedSAM's preprocessing); both are inverted exactly by :func:`reassemble`. Resampling is bilinear with ``align_corners=False`` both
ways, so a resize followed by its inverse is as close to identity as interpolation allows and is
exactly the identity when no resize is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
AxisLike = Union[str, int]


def axis_index(axis: AxisLike) -> int:
    """``'sagittal'|'coronal'|'axial'`` (or 0/1/2) → array axis of a canonical RAS ``(X, Y, Z)`` volume."""
    if isinstance(axis, str):
        if axis not in AXES:
            raise ValueError(f"unknown axis '{axis}': expected one of {', '.join(AXES)} or 'all'")
        return AXES[axis]
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return int(axis)


def plane_axes(axis: AxisLike) -> list[int]:
    """Array axes for ``axis``; ``'all'`` gives all three planes (multi-planar fusion)."""
    return [0, 1, 2] if axis == "all" else [axis_index(axis)]


def relative_position(index, depth: int):
    """Relative position of slice ``index`` along an axis of ``depth`` slices: ``index / (depth - 1)``,
    so the first slice is 0 and the last is 1 (0 when ``depth == 1``). The one convention fewshotcx
    uses wherever slices of different volumes are matched by position (support selection, support
    extent, label fusion). Works on ints, NumPy arrays and tensors."""
    return index / max(depth - 1, 1)


def nearest_slice(position, depth: int) -> np.ndarray:
    """Index of the slice of a ``depth``-slice axis nearest relative ``position`` (inverse of
    :func:`relative_position`), for scalars or arrays."""
    return np.clip(np.rint(np.asarray(position, dtype=np.float64) * max(depth - 1, 1)), 0, depth - 1).astype(np.int64)


@dataclass(frozen=True)
class SliceGeometry:
    """How ``N`` slabs of size ``s × s`` were cut from a ``(X, Y, Z)`` volume.

    Attributes:
        axis: array axis the slabs are perpendicular to.
        volume_shape: ``(X, Y, Z)`` of the source volume.
        indices: ``(N,)`` slice index of each slab's centre along ``axis`` (int64, on the volume's device).
        context: neighbours on each side (slab depth ``2k+1``).
        size: model slice size ``s``.
        resized: ``(h', w')`` size of the resampled slice content inside the square.
        offset: ``(top, left)`` zero padding before the content.
    """

    axis: int
    volume_shape: tuple[int, int, int]
    indices: torch.Tensor
    context: int
    size: int
    resized: tuple[int, int]
    offset: tuple[int, int]

    @property
    def num_slices(self) -> int:
        return int(self.indices.numel())

    @property
    def depth(self) -> int:
        """Number of slices along ``axis`` in the volume."""
        return self.volume_shape[self.axis]

    @property
    def in_plane(self) -> tuple[int, int]:
        """``(h, w)`` voxel size of one slice before resizing (the two remaining axes, in order)."""
        h, w = (n for i, n in enumerate(self.volume_shape) if i != self.axis)
        return h, w

    @property
    def positions(self) -> torch.Tensor:
        """``(N,)`` relative position of each slab along the axis, in ``[0, 1]``."""
        return relative_position(self.indices.float(), self.depth)

    def subset(self, start: int, stop: int) -> "SliceGeometry":
        """Geometry of slabs ``start:stop`` (for chunked processing)."""
        return SliceGeometry(self.axis, self.volume_shape, self.indices[start:stop], self.context,
                             self.size, self.resized, self.offset)


def make_geometry(
    volume_shape: Sequence[int],
    spacing: Sequence[float],
    axis: AxisLike,
    size: int,
    context: int = 0,
    indices: Union[Sequence[int], torch.Tensor, None] = None,
    device: Union[str, torch.device] = "cpu",
    resize_mode: str = "pad",
) -> SliceGeometry:
    """Plan slabs along ``axis`` for a volume of ``volume_shape`` with voxel ``spacing`` (mm).

    Args:
        indices: centre slice indices; ``None`` = every slice along the axis.
        resize_mode: ``"pad"`` (aspect-preserving, physical mm) or ``"stretch"`` (straight to s × s).
    """
    ax = axis_index(axis)
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if size < 1:
        raise ValueError(f"slice size must be positive, got {size}")
    shape = tuple(int(n) for n in volume_shape)
    if len(shape) != 3:
        raise ValueError(f"volume_shape must have 3 entries, got {shape}")
    depth = shape[ax]
    if indices is None:
        idx = torch.arange(depth, device=device)
    else:
        idx = torch.as_tensor(indices, dtype=torch.long, device=device).reshape(-1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= depth):
            raise ValueError(f"slice indices must lie in [0, {depth - 1}] along axis {ax}")
    if resize_mode == "stretch":
        return SliceGeometry(ax, shape, idx, int(context), int(size), (int(size), int(size)), (0, 0))
    if resize_mode != "pad":
        raise ValueError(f"resize_mode must be 'pad' or 'stretch', got {resize_mode!r}")
    (h, w), (dh, dw) = _in_plane(shape, ax), _in_plane(tuple(float(s) for s in spacing), ax)
    extent_h, extent_w = h * dh, w * dw
    scale = size / max(extent_h, extent_w)
    rh = max(1, min(size, round(extent_h * scale)))
    rw = max(1, min(size, round(extent_w * scale)))
    offset = ((size - rh) // 2, (size - rw) // 2)
    return SliceGeometry(ax, shape, idx, int(context), int(size), (rh, rw), offset)


def _in_plane(values: tuple, axis: int) -> tuple:
    return tuple(v for i, v in enumerate(values) if i != axis)


def extract_slabs(volume: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Cut the slabs planned by ``geometry`` out of ``volume``.

    Args:
        volume: ``(X, Y, Z)`` (or ``(C, X, Y, Z)``, channels stacked before the slab depth) tensor
            on any device.
    Returns:
        ``(N, 2k+1, s, s)`` (or ``(N, C·(2k+1), s, s)``) slabs; edge neighbours replicate the border
        slice; padding outside the resized content is 0.
    """
    if volume.dim() == 3:
        volume = volume.unsqueeze(0)
    if tuple(volume.shape[1:]) != geometry.volume_shape:
        raise ValueError(f"volume shape {tuple(volume.shape[1:])} does not match the geometry "
                         f"{geometry.volume_shape}")
    k = geometry.context
    stack = volume.movedim(geometry.axis + 1, 1)  # (C, D, h, w)
    depth = stack.shape[1]
    window = torch.arange(-k, k + 1, device=volume.device)
    neighbours = (geometry.indices.to(volume.device)[:, None] + window[None, :]).clamp_(0, depth - 1)
    slabs = stack[:, neighbours]  # (C, N, 2k+1, h, w)
    slabs = rearrange(slabs, "c n k h w -> n (c k) h w")
    return _to_model_square(slabs, geometry)


def _to_model_square(slices: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """``(N, C, h, w)`` → ``(N, C, s, s)``: aspect-preserving resize, then symmetric zero pad."""
    rh, rw = geometry.resized
    if slices.shape[-2:] != (rh, rw):
        dtype = slices.dtype
        slices = F.interpolate(slices.float(), size=(rh, rw), mode="bilinear", align_corners=False,
                               antialias=rh < slices.shape[-2] or rw < slices.shape[-1]).to(dtype)
    top, left = geometry.offset
    s = geometry.size
    return F.pad(slices, (left, s - rw - left, top, s - rh - top))


def from_model_square(slices: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Inverse of the resize/pad: ``(N, C, s, s)`` → ``(N, C, h, w)`` on the slice's voxel grid."""
    top, left = geometry.offset
    rh, rw = geometry.resized
    content = slices[..., top:top + rh, left:left + rw]
    h, w = geometry.in_plane
    if (rh, rw) == (h, w):
        return content
    return F.interpolate(content.float(), size=(h, w), mode="bilinear", align_corners=False).to(slices.dtype)


def reassemble(slices: torch.Tensor, geometry: SliceGeometry, fill: float = 0.0) -> torch.Tensor:
    """Put per-slab outputs back on the volume grid.

    Args:
        slices: ``(N, C, s, s)`` logits or probabilities, one per slab of ``geometry``.
        fill: value for slices along the axis that ``geometry`` did not include.
    Returns:
        ``(C, X, Y, Z)`` tensor on the volume's voxel grid (same device and dtype as ``slices``).
    """
    if slices.dim() != 4 or slices.shape[0] != geometry.num_slices:
        raise ValueError(f"expected ({geometry.num_slices}, C, {geometry.size}, {geometry.size}) "
                         f"outputs, got {tuple(slices.shape)}")
    planes = from_model_square(slices, geometry)  # (N, C, h, w)
    c = planes.shape[1]
    h, w = geometry.in_plane
    out = slices.new_full((c, geometry.depth, h, w), fill)
    out[:, geometry.indices.to(slices.device)] = rearrange(planes, "n c h w -> c n h w")
    return out.movedim(1, geometry.axis + 1)


def iter_chunks(geometry: SliceGeometry, bytes_per_slab: int, budget_bytes: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` ranges of slabs whose working memory fits ``budget_bytes``.

    ``bytes_per_slab`` is the caller's estimate of the memory one slab needs through the model.
    """
    per_chunk = max(1, int(budget_bytes // max(bytes_per_slab, 1)))
    for start in range(0, geometry.num_slices, per_chunk):
        yield start, min(start + per_chunk, geometry.num_slices)
