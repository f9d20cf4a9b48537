"""Support pools of labelled 2D examples, and how support sets are drawn from them.

A pool holds every labelled slab of the support volumes along one plane axis, with its relative
position along that axis. Drawing a support set for a query slab is then a tensor operation:

* ``"random"`` — uniform among the pool (the UniverSeg paper's protocol), with a chosen fraction of
  empty (negative) slices so the model sees "nothing here" examples;
* ``"position"`` — slices whose relative position along the axis is nearest the query's, drawn
  without replacement with probability ``exp(-|Δp| / tau)`` (Gumbel top-k). In 3D anatomy the slice
  at the same height in another patient is the most informative example, and near the ends of an
  organ the nearest slices are naturally the empty ones. It assumes every scan covers the same
  anatomy from its first to its last slice;
* ``"retrieval"`` — the slabs most similar to the query's (:func:`slab_features`), for scans that
  cover different ranges; needs the query, so the backend computes the similarity at predict time
  (:mod:`fewshotcx.pipeline.query_support`);
* ``"registered"`` — support volumes registered and resampled onto the query's grid, then drawn by
  ``"position"`` on that grid, where relative position *is* anatomical position
  (:mod:`fewshotcx.pipeline.query_support`); ``"auto"`` = registered, or retrieval where
  registration fails its quality check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .slicing import Framing, extract_slabs
from ..io.volume import Volume, VolumeError, check_pair
from ..registration.cache import RegistrationCache

Strategy = Literal["position", "random", "retrieval", "registered", "auto"]
#: Every support strategy, in the order the CLI lists them.
STRATEGIES: tuple[str, ...] = ("position", "random", "retrieval", "registered", "auto")
#: Strategies that need the query volume before drawing (the backend prepares them per query).
QUERY_AWARE: tuple[str, ...] = ("retrieval", "registered", "auto")
#: Side of the thumbnail that :func:`slab_features` compares.
FEATURE_SIZE = 16


def check_strategy(strategy: str) -> str:
    """``strategy`` if it is one of :data:`STRATEGIES`, else a one-line ValueError naming the choices."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown support strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    return strategy


@dataclass(frozen=True)
class SupportPool:
    """Labelled slabs along one axis (a value: never changed in place once built).

    Attributes:
        images: ``(M, 2k+1, s, s)`` float32, volume-normalised intensities.
        labels: ``(M, L, s, s)`` float32 in ``[0, 1]``, one channel per foreground class (soft at
            resampled edges).
        positions: ``(M,)`` relative position along the axis in ``[0, 1]``.
        volume_ids: ``(M,)`` index of the support volume each slab came from.
        classes: the label values, in channel order.
        axis: array axis of the slabs.
    """

    images: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    volume_ids: torch.Tensor
    classes: tuple[int, ...]
    axis: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def has_foreground(self) -> torch.Tensor:
        """``(M, L)`` bool: whether class ``l`` is present on slab ``m``."""
        return self.labels.flatten(2).amax(dim=2) > 0.5

    def to(self, device: torch.device) -> "SupportPool":
        return SupportPool(self.images.to(device), self.labels.to(device), self.positions.to(device),
                           self.volume_ids.to(device), self.classes, self.axis)


#: Key of a draw's bagging generator, ``derived_generator(draw seed, BAGGING_KEY)``: which part of the
#: support an uncertainty draw keeps (:func:`bag_indices`).
BAGGING_KEY = 0x5EED


def bag_indices(size: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` sorted indices of a random ``fraction`` of ``size`` items (at least one), drawn without
    replacement on the CPU from ``generator``."""
    keep = max(1, int(np.ceil(fraction * size)))
    return torch.randperm(size, generator=generator)[:keep].sort().values


def pool_subset(pool: SupportPool, index: torch.Tensor) -> SupportPool:
    """The slabs ``index`` ``(n,)`` of ``pool`` (on the pool's device)."""
    index = index.to(pool.images.device)
    return SupportPool(pool.images[index], pool.labels[index], pool.positions[index], pool.volume_ids[index],
                       pool.classes, pool.axis)


def subsample_pool(pool: SupportPool, fraction: float, generator: torch.Generator) -> SupportPool:
    """A random ``fraction`` of the pool's slabs (at least one), drawn without replacement."""
    return pool_subset(pool, bag_indices(len(pool), fraction, generator))


def build_pool(
    images: Sequence[np.ndarray],
    labels: Sequence[Volume],
    axis: int,
    framing: Framing,
    slices: Optional[Sequence[Optional[Sequence[int]]]] = None,
    classes: Optional[Sequence[int]] = None,
    device: torch.device = torch.device("cpu"),
) -> SupportPool:
    """Build the pool of labelled slabs along ``axis`` from normalised images and label volumes.

    Args:
        images: per volume, the normalised ``(X, Y, Z)`` image array on ``labels[i]``'s grid.
        labels: label volumes (canonical); ``labels[i].spacing`` sets the in-plane aspect.
        slices: per volume, the indices along ``axis`` that are labelled (``None`` = all slices;
            empty slices are then true negatives).
        classes: label values to model; default = all non-zero values on the labelled slices.
        framing: how slabs are cut (:class:`~fewshotcx.pipeline.slicing.Framing`); under physical
            framing each volume is centred on its own body.
    """
    if len(images) != len(labels) or not labels:
        raise VolumeError("support needs the same number (≥ 1) of images and labels")
    if slices is not None and len(slices) != len(labels):
        raise VolumeError("slices must give one entry (or None) per support volume")
    classes = support_classes(labels, slices, axis) if classes is None else tuple(classes)
    class_values = torch.tensor(list(classes), device=device)
    parts = []
    for vid, (image, lab) in enumerate(zip(images, labels)):
        chosen = None if slices is None else slices[vid]
        centre = framing.centre(image, axis)
        geometry = framing.geometry(lab.shape, lab.spacing, axis, chosen, device, centre)
        if geometry.num_slices == 0:
            continue
        image_t = torch.as_tensor(np.ascontiguousarray(image), device=device)
        label_t = torch.as_tensor(lab.array.astype(np.int64), device=device)
        one_hot = (label_t[None] == class_values.view(-1, 1, 1, 1)).float()  # (L, X, Y, Z)
        label_geometry = framing.geometry(lab.shape, lab.spacing, axis, chosen, device, centre, context=0)
        parts.append((
            extract_slabs(image_t, geometry),
            extract_slabs(one_hot, label_geometry).clamp_(0.0, 1.0),
            geometry.positions.to(device),
            torch.full((geometry.num_slices,), vid, dtype=torch.long, device=device),
        ))
    if not parts:
        raise VolumeError("no labelled slices in the support")
    imgs, labs, pos, vids = (torch.cat(list(t)) for t in zip(*parts))
    return SupportPool(imgs, labs, pos, vids, tuple(int(c) for c in classes), axis)


def support_classes(labels: Sequence[Volume], slices: Optional[Sequence[Optional[Sequence[int]]]] = None,
                    axis: int = 2) -> tuple[int, ...]:
    """Sorted non-zero label values present on the labelled slices (unlabelled slices must not leak).

    Raises:
        VolumeError: no labelled slice holds any foreground.
    """
    present: set[int] = set()
    for i, lab in enumerate(labels):
        chosen = None if slices is None else slices[i]
        seen = lab.array if chosen is None else np.take(lab.array, list(chosen), axis=axis)
        present.update(int(v) for v in np.unique(seen) if v != 0)
    if not present:
        raise VolumeError("support labels are all empty: nothing to segment")
    return tuple(sorted(present))


@dataclass(frozen=True)
class SupportVolumes:
    """The fitted support as whole canonical volumes, for backends that work on volumes rather than
    slabs (registration-based atlases, video propagation) and for support strategies that need it.

    Attributes:
        images: canonical image volumes with their original intensities (HU for CT).
        labels: canonical label maps on the same grids.
        normalised: per image, the ``(X, Y, Z)`` float32 array in ``[0, 1]`` that slab backends see.
        slices: per volume, the labelled axial indices, or ``None`` (= all slices labelled).
        classes: label values modelled, in channel order.
        modality: the one intensity decision (``"ct"`` or ``"mr"``) taken for support and queries.
        seed: seeds the registration of each support volume onto a query (the fit's seed), so every
            draw and every prediction of one query share one registration.
        registrations: the memo of those registrations (:class:`~fewshotcx.registration.RegistrationCache`),
            shared by everything that predicts with this support.
    """

    images: tuple[Volume, ...]
    labels: tuple[Volume, ...]
    normalised: tuple[np.ndarray, ...]
    slices: Optional[tuple[Optional[tuple[int, ...]], ...]]
    classes: tuple[int, ...]
    modality: str
    seed: int = 0
    registrations: RegistrationCache = field(default_factory=RegistrationCache, compare=False, repr=False)


def derived_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and integer ``keys`` through NumPy's ``SeedSequence``.

    Independent of the process (unlike Python's salted ``hash``) and of the device: draws are always
    made on the CPU and moved, so the same seed draws the same support on CPU and CUDA.
    """
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


def select_support(
    pool: SupportPool,
    query_positions: torch.Tensor,
    size: int,
    strategy: Strategy = "position",
    generator: Optional[torch.Generator] = None,
    tau: float = 0.05,
    negative_fraction: float = 0.25,
    similarity: Optional[torch.Tensor] = None,
    temperature: float = 0.01,
) -> torch.Tensor:
    """Draw one support set (without replacement) per query position.

    Args:
        query_positions: ``(G,)`` relative positions in ``[0, 1]`` (one per group of query slabs that
            will share a support set).
        size: support size ``S`` (capped at the pool size).
        strategy: ``"position"``, ``"random"`` or ``"retrieval"`` (``"registered"`` is ``"position"``
            on a pool resampled onto the query's grid, prepared by the backend).
        tau: position-matching temperature (relative-position units); smaller = stricter matching.
        negative_fraction: for ``"random"``, the share of empty slices drawn (if the pool has any);
            for ``"retrieval"``, the least share of empty slices (the most similar empty ones).
        similarity: ``(G, M)`` query-group × pool similarity, for ``"retrieval"``
            (:func:`retrieval_similarity`).
        temperature: retrieval temperature in similarity units: slabs within about ``temperature``
            of each other are drawn interchangeably (ensemble members differ), clearly less similar
            ones are not drawn.
    Returns:
        ``(G, S)`` long indices into the pool.
    """
    m = len(pool)
    s = min(int(size), m)
    if s < 1:
        raise ValueError("support size must be at least 1")
    g = query_positions.shape[0]
    device = pool.positions.device
    gumbel = _gumbel((g, m), generator, device)
    if strategy == "position":
        distance = (query_positions.to(device)[:, None] - pool.positions[None, :]).abs()  # (G, M)
        scores = -distance / tau + gumbel
    elif strategy == "random":
        positive = pool.has_foreground.any(dim=1)  # (M,)
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        want_neg = min(n_neg, round(s * negative_fraction)) if n_pos else s
        want_neg = max(want_neg, s - n_pos)
        # Rank positives and negatives separately, then take the top of each by the quota.
        pos_rank = _rank(torch.where(positive, gumbel, torch.full_like(gumbel, -torch.inf)))
        neg_rank = _rank(torch.where(~positive, gumbel, torch.full_like(gumbel, -torch.inf)))
        keep = (positive & (pos_rank < s - want_neg)) | (~positive & (neg_rank < want_neg))
        scores = torch.where(keep, gumbel, torch.full_like(gumbel, -torch.inf))
    elif strategy == "retrieval":
        if similarity is None or tuple(similarity.shape) != (g, m):
            raise ValueError(f"strategy 'retrieval' needs a ({g}, {m}) query-by-pool similarity")
        scores = similarity.to(device, torch.float32) / temperature + gumbel
        negative = ~pool.has_foreground.any(dim=1)  # (M,)
        want_neg = min(int(negative.sum()), round(s * negative_fraction))
        neg_rank = _rank(torch.where(negative, scores, torch.full_like(scores, -torch.inf)))
        scores = torch.where(negative & (neg_rank < want_neg), torch.full_like(scores, torch.inf), scores)
    else:
        check_strategy(strategy)
        raise ValueError(f"support strategy {strategy!r} needs the query: the backend prepares it per query")
    return scores.topk(s, dim=1).indices


def slab_features(slabs: torch.Tensor, size: int = FEATURE_SIZE) -> torch.Tensor:
    """Retrieval descriptors: each slab shrunk to ``size × size`` (area average over all its channels),
    centred and scaled to unit length, so a dot product is the Pearson correlation of two thumbnails.

    Why this measure: it compares anatomy by its coarse layout (where the bright and dark structures
    lie), is invariant to the scanner's intensity scale and offset (per-slab centring and scaling),
    costs one pooling per slab, and needs no model; the 2.5D channels make it see the neighbouring
    slices too.

    Args:
        slabs: ``(N, C, s, s)``.
    Returns:
        ``(N, C·size²)`` float32; constant slabs give zero vectors (similar to nothing).
    """
    small = F.adaptive_avg_pool2d(slabs.float(), size).flatten(1)
    small = small - small.mean(dim=1, keepdim=True)
    return small / small.norm(dim=1, keepdim=True).clamp_min(1e-6)


def group_features(features: torch.Tensor, indices: torch.Tensor, group_size: int, groups: int) -> torch.Tensor:
    """Mean descriptor of each group of ``group_size`` neighbouring slices, re-normalised.

    Args:
        features: ``(N, D)`` from :func:`slab_features`.
        indices: ``(N,)`` slice index of each slab along the axis.
        groups: number of groups ``G`` (``ceil(depth / group_size)``).
    Returns:
        ``(G, D)``.
    """
    total = torch.zeros(groups, features.shape[1], device=features.device)
    total.index_add_(0, (indices.to(features.device) // group_size).long(), features)
    return total / total.norm(dim=1, keepdim=True).clamp_min(1e-6)


def retrieval_similarity(query_features: torch.Tensor, pool: SupportPool) -> torch.Tensor:
    """``(G, M)`` cosine similarity of query descriptors ``(G, D)`` to every slab of ``pool``."""
    return query_features @ slab_features(pool.images).to(query_features.device).T


def _gumbel(shape: tuple[int, int], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=generator.device if generator is not None else "cpu")
    return (-torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))).to(device)


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row, 0 = largest."""
    order = scores.argsort(dim=1, descending=True)
    return order.argsort(dim=1)


def check_support(images: Sequence[Volume], labels: Sequence[Volume]) -> None:
    """Every image/label pair on one grid, every label non-empty; else a one-line VolumeError."""
    for i, (img, lab) in enumerate(zip(images, labels)):
        check_pair(img, lab, what=f"support pair {i + 1}")
