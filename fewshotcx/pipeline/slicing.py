"""Batched 2.5D slab extraction and its inverse, as pure tensor operations on any device.

A *slab* is a slice plus ``k`` neighbours on each side: ``(2k+1, s, s)``. Extraction gathers all
requested slabs with one advanced-indexing op (edge slices repeat the first/last slice, i.e.
replication padding), resizes them in one ``F.interpolate`` call and pads them to the square model
size. :class:`SliceGeometry` records everything :func:`reassemble` needs to put ``(N, C, s, s)`` model
outputs back on the volume grid.

Framing: how a slice reaches the model square
---------------------------------------------
``"physical"`` (UniverSeg's default with the bundled checkpoint): the slice is resampled to a fixed
pixel size in mm (a property of the checkpoint, :class:`Framing` ``pixel_mm``), placed so that a
chosen in-plane centre (the body's, :func:`body_centre`) lands on the square's centre, then cropped or
zero-padded to ``s × s``. The same organ therefore has the same size in pixels in every scan, whatever
its field of view or voxel size, and sits at a comparable place; neighbouring 2.5D slices are taken at
a fixed distance in mm (``context_mm``, linear interpolation between slices). Nothing is stretched.

``"pad"`` (aspect-preserving fit): the in-plane slice of ``h × w`` voxels with spacing ``(dh, dw)`` mm covers ``h·dh × w·dw`` mm. It is
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
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
#: How slices reach the model square (module docstring).
FRAMINGS = ("pad", "stretch", "physical")
#: :func:`body_centre` counts voxels above this normalised intensity as body (CT soft-tissue window:
#: about -120 HU, so fat and tissue count, air and lung do not; MR: 5 % of the 99.5th percentile).
BODY_THRESHOLD = 0.1
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
        resized: ``(h', w')`` size of the resampled slice content.
        offset: ``(top, left)`` position of the content's first pixel in the square: padding before
            it when positive, cropping when negative (physical framing of a large field of view).
        step: distance between 2.5D neighbours in slices (``context_mm / spacing``; 1 = adjacent
            slices; fractional steps interpolate linearly between slices).
    """

    axis: int
    volume_shape: tuple[int, int, int]
    indices: torch.Tensor
    context: int
    size: int
    resized: tuple[int, int]
    offset: tuple[int, int]
    step: float = 1.0

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
                             self.size, self.resized, self.offset, self.step)


def make_geometry(
    volume_shape: Sequence[int],
    spacing: Sequence[float],
    axis: AxisLike,
    size: int,
    context: int = 0,
    indices: Union[Sequence[int], torch.Tensor, None] = None,
    device: Union[str, torch.device] = "cpu",
    resize_mode: str = "pad",
    pixel_mm: Optional[float] = None,
    centre: Optional[Sequence[float]] = None,
    context_mm: Optional[float] = None,
) -> SliceGeometry:
    """Plan slabs along ``axis`` for a volume of ``volume_shape`` with voxel ``spacing`` (mm).

    Args:
        indices: centre slice indices; ``None`` = every slice along the axis.
        resize_mode: ``"physical"`` (fixed ``pixel_mm``, centred on ``centre``), ``"pad"``
            (aspect-preserving fit of the field of view) or ``"stretch"`` (straight to s × s).
        pixel_mm: in-plane pixel size of the model square, for ``"physical"``.
        centre: ``(h, w)`` in-plane voxel coordinates (the two axes other than ``axis``, in order)
            placed at the square's centre, for ``"physical"``; ``None`` = the slice's centre.
        context_mm: distance between 2.5D neighbours in mm; ``None`` = adjacent slices.
    """
    ax = axis_index(axis)
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if size < 1:
        raise ValueError(f"slice size must be positive, got {size}")
    shape = tuple(int(n) for n in volume_shape)
    if len(shape) != 3:
        raise ValueError(f"volume_shape must have 3 entries, got {shape}")
    if resize_mode not in FRAMINGS:
        raise ValueError(f"resize_mode must be one of {', '.join(FRAMINGS)}, got {resize_mode!r}")
    depth = shape[ax]
    if indices is None:
        idx = torch.arange(depth, device=device)
    else:
        idx = torch.as_tensor(indices, dtype=torch.long, device=device).reshape(-1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= depth):
            raise ValueError(f"slice indices must lie in [0, {depth - 1}] along axis {ax}")
    spacing = tuple(float(v) for v in spacing)
    if context_mm is not None and context_mm <= 0:
        raise ValueError(f"context_mm must be positive, got {context_mm}")
    step = 1.0 if context_mm is None else float(context_mm) / spacing[ax]
    (h, w), (dh, dw) = _in_plane(shape, ax), _in_plane(spacing, ax)
    if resize_mode == "stretch":
        return SliceGeometry(ax, shape, idx, int(context), int(size), (int(size), int(size)), (0, 0), step)
    if resize_mode == "physical":
        if pixel_mm is None or pixel_mm <= 0:
            raise ValueError(f"physical framing needs a positive pixel_mm, got {pixel_mm}")
        rh, rw = max(1, round(h * dh / pixel_mm)), max(1, round(w * dw / pixel_mm))
        ch, cw = centre if centre is not None else ((h - 1) / 2, (w - 1) / 2)
        # align_corners=False: voxel c's centre lies at (c + 0.5) · r / n - 0.5 in the resized slice.
        top = round((size - 1) / 2 - ((float(ch) + 0.5) * rh / h - 0.5))
        left = round((size - 1) / 2 - ((float(cw) + 0.5) * rw / w - 0.5))
        return SliceGeometry(ax, shape, idx, int(context), int(size), (rh, rw), (top, left), step)
    extent_h, extent_w = h * dh, w * dw
    scale = size / max(extent_h, extent_w)
    rh = max(1, min(size, round(extent_h * scale)))
    rw = max(1, min(size, round(extent_w * scale)))
    offset = ((size - rh) // 2, (size - rw) // 2)
    return SliceGeometry(ax, shape, idx, int(context), int(size), (rh, rw), offset, step)


def _in_plane(values: tuple, axis: int) -> tuple:
    return tuple(v for i, v in enumerate(values) if i != axis)


@dataclass(frozen=True)
class Framing:
    """Everything that decides how a backend's slabs are cut, in one value.

    Attributes:
        size: model square side ``s``.
        context: 2.5D neighbours ``k`` on each side.
        mode: one of :data:`FRAMINGS`.
        pixel_mm: in-plane pixel size for ``"physical"``.
        context_mm: neighbour distance in mm (``None`` = adjacent slices).
    """

    size: int
    context: int = 0
    mode: str = "pad"
    pixel_mm: Optional[float] = None
    context_mm: Optional[float] = None

    @classmethod
    def of(cls, backend) -> "Framing":
        """The framing of a backend (``slice_size``, ``context``, ``resize_mode`` and, where it has
        them, ``pixel_mm`` / ``context_mm``)."""
        return cls(int(backend.slice_size), int(backend.context), backend.resize_mode,
                   getattr(backend, "pixel_mm", None), getattr(backend, "context_mm", None))

    def centre(self, volume: Union[np.ndarray, torch.Tensor], axis: int) -> Optional[tuple[float, float]]:
        """The in-plane centre slabs of ``volume`` (normalised, ``(X, Y, Z)``) are framed on:
        :func:`body_centre` under physical framing, else ``None`` (unused)."""
        return body_centre(volume, axis) if self.mode == "physical" else None

    def geometry(self, volume_shape: Sequence[int], spacing: Sequence[float], axis: AxisLike,
                 indices: Union[Sequence[int], torch.Tensor, None] = None,
                 device: Union[str, torch.device] = "cpu", centre: Optional[Sequence[float]] = None,
                 context: Optional[int] = None) -> SliceGeometry:
        """:func:`make_geometry` with this framing (``context`` overrides, e.g. 0 for label slabs)."""
        return make_geometry(volume_shape, spacing, axis, self.size, self.context if context is None else context,
                             indices, device, self.mode, self.pixel_mm, centre, self.context_mm)


def body_centre(volume: Union[np.ndarray, torch.Tensor], axis: int, threshold: float = BODY_THRESHOLD
                ) -> tuple[float, float]:
    """In-plane voxel coordinates ``(h, w)`` of the body's centre, one for the whole volume.

    The body is the largest connected region above ``threshold`` (normalised intensities in
    ``[0, 1]``; the scanner table and other detached objects drop out), with holes filled slice by
    slice (lungs, bowel gas); its centre of mass, projected along ``axis``. Computed on a grid
    subsampled to at most ~64 voxels per side (a centre needs no more). A volume with no voxel above
    ``threshold`` gives the geometric centre.
    """
    from scipy import ndimage

    array = volume.detach().float().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    strides = tuple(max(1, n // 64) for n in array.shape)
    small = array[::strides[0], ::strides[1], ::strides[2]] > threshold
    in_plane = [a for a in range(3) if a != axis]
    if not small.any():
        return tuple((array.shape[a] - 1) / 2 for a in in_plane)
    regions, count = ndimage.label(small)
    if count > 1:
        sizes = np.bincount(regions.ravel())
        sizes[0] = 0
        small = regions == int(sizes.argmax())
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in np.moveaxis(small, axis, 0)])
    com = ndimage.center_of_mass(filled)  # (axis, h, w) on the subsampled grid
    return tuple(float(com[i + 1]) * strides[a] + (strides[a] - 1) / 2 for i, a in enumerate(in_plane))


def extract_slabs(volume: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Cut the slabs planned by ``geometry`` out of ``volume``.

    Args:
        volume: ``(X, Y, Z)`` (or ``(C, X, Y, Z)``, channels stacked before the slab depth) tensor
            on any device.
    Returns:
        ``(N, 2k+1, s, s)`` (or ``(N, C·(2k+1), s, s)``) slabs; neighbours lie ``geometry.step``
        slices apart (linear interpolation between slices for fractional steps); beyond the volume's
        ends they replicate the border slice; outside the resampled content the square is 0.
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
    centres = geometry.indices.to(volume.device)[:, None]
    if geometry.step == 1.0 or k == 0:
        slabs = stack[:, (centres + window[None, :]).clamp_(0, depth - 1)]  # (C, N, 2k+1, h, w)
    else:
        where = (centres + window[None, :] * geometry.step).clamp_(0, depth - 1)  # (N, 2k+1) fractional
        below = where.floor().long()
        above = (below + 1).clamp_(max=depth - 1)
        weight = (where - below).to(stack.dtype if stack.is_floating_point() else torch.float32)[..., None, None]
        slabs = stack[:, below] * (1 - weight) + stack[:, above] * weight
    slabs = rearrange(slabs, "c n k h w -> n (c k) h w")
    return _to_model_square(slabs, geometry)


def _to_model_square(slices: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """``(N, C, h, w)`` → ``(N, C, s, s)``: resize, then place at ``offset`` (zero pad / crop)."""
    rh, rw = geometry.resized
    if slices.shape[-2:] != (rh, rw):
        dtype = slices.dtype
        slices = F.interpolate(slices.float(), size=(rh, rw), mode="bilinear", align_corners=False,
                               antialias=rh < slices.shape[-2] or rw < slices.shape[-1]).to(dtype)
    return _place(slices, geometry.offset, (geometry.size, geometry.size))


def _place(content: torch.Tensor, offset: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Put ``(..., h, w)`` ``content`` into a zero canvas of ``shape`` with its first pixel at
    ``offset`` (negative offsets crop); one ``F.pad`` with signed widths."""
    (top, left), (h, w) = offset, content.shape[-2:]
    return F.pad(content, (left, shape[1] - w - left, top, shape[0] - h - top))


def from_model_square(slices: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Inverse of the resize/placement: ``(N, C, s, s)`` → ``(N, C, h, w)`` on the slice's voxel grid
    (0 where the square did not reach, under a cropping physical framing)."""
    top, left = geometry.offset
    rh, rw = geometry.resized
    content = _place(slices, (-top, -left), (rh, rw))
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
