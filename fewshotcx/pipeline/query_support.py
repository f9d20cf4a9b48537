"""Support prepared for one query: the strategies that need to see the query before drawing.

* ``"retrieval"``: every query slab is described by :func:`~fewshotcx.pipeline.support.slab_features`
  and each group of neighbouring query slices gets the ``(1, M)`` row of its similarity to the pool.
* ``"registered"``: every support volume is registered to the query (:mod:`fewshotcx.registration`)
  and its normalised image and labels are resampled onto the query's grid; the pools are rebuilt
  there (only slices the warped support covers), so drawing by relative position on that grid is
  drawing at the same anatomy. A failed registration is an error naming the support volume.
* ``"auto"``: registered with the volumes that pass the quality check (a warning names each one
  that fails); retrieval on the original pools when none passes.

The result, :class:`QuerySupport`, is what a backend uses instead of its fitted pools while it
predicts that one query (:meth:`fewshotcx.backends.universeg.UniverSegBackend.for_query`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch

from ..io.volume import Volume, VolumeError
from ..registration import register_support as register_volumes, volume_name, vote_share
from .slicing import Framing, extract_slabs
from .support import (
    QUERY_AWARE, SupportPool, SupportVolumes, bag_indices, build_pool, group_features, pool_subset,
    retrieval_similarity, slab_features,
)

#: Registration transform used by ``"registered"``/``"auto"`` unless the backend is told otherwise.
#: Deformable (affine, then demons), as the atlas backend. Chosen after benchmarks/ct_cross_patient.py's
#: run on the report pair (issue #33); the calibration pairs registered both ways agree
#: (benchmarks/results/registration_gates.csv: deformable label transfer beats affine on each).
DEFAULT_REGISTRATION = "deformable"
#: A warped support slice joins the pool when it covers at least this share of the best-covered slice.
MIN_COVERAGE = 0.5
#: Query slabs described per batch (bounds memory on long volumes).
_FEATURE_BATCH = 64
#: Best retrieval similarity (Pearson correlation of slab thumbnails) below which a group of query
#: slices has no counterpart in the support. Fitted on calibration data only
#: (benchmarks/retrieval_coverage.py, ``fit_coverage``: halfway between the most similar group of a
#: brain MR against abdominal CT support, 0.70, and the least similar group of a same-coverage CT pair
#: that found its own anatomy, 0.62 (sarcoma CT); the two overlap, so neither side is cleanly
#: separated). Held out, on LUNG1-001 ↔ CTChest4: covered groups 0.72–0.85, a brain MR at most 0.47.
MIN_SIMILARITY = 0.65
#: Mean gap between a query group's best retrieval similarity and its best similarity among the
#: support slabs at its own relative position (± :data:`POSITION_WINDOW`) above which position
#: matching is warned against. Fitted like :data:`MIN_SIMILARITY`: halfway between the largest gap of
#: a same-coverage calibration pair (0.052, sarcoma CT) and the smallest of a query cut to 60 % (0.051,
#: sarcoma CT: a thigh looks alike along its length); abdominal CT pairs gave 0.01–0.02 against
#: 0.11–0.30. Held out, on LUNG1-001 ↔ CTChest4: 0.05–0.07 same coverage (so position warns there
#: too), 0.21–0.27 cropped. Only a warning: no prediction depends on it.
MAX_POSITION_GAP = 0.05
#: Relative-position window that position matching draws from (its temperature is 0.05).
POSITION_WINDOW = 0.05


class CoverageWarning(UserWarning):
    """Query slices that look like nothing in the support: their prediction has no support to rest on.

    Attributes:
        axis: plane axis of the slices.
        slices: their indices along ``axis`` (canonical array): the slices to review.
    """

    def __init__(self, message: str, axis: int, slices: Sequence[int]) -> None:
        super().__init__(message)
        self.axis, self.slices = int(axis), tuple(int(z) for z in slices)


def check_coverage(similarity: torch.Tensor, pool: SupportPool, depth: int, group_size: int, strategy: str) -> None:
    """Warn where the query's anatomy lies outside the support's (:class:`CoverageWarning`, naming the
    slices; retrieval, which draws by this similarity) and, for ``"position"``, when the best matches
    sit at other relative positions than the query's own (support and query cover different ranges:
    position matching draws the wrong anatomy).

    Args:
        similarity: ``(G, M)`` query-group × pool similarity (:func:`retrieval_similarity`).
        depth: query slices along the pool's axis; ``group_size``: slices per group.
    """
    best = similarity.amax(dim=1)
    outside = (best < MIN_SIMILARITY).cpu()
    if outside.any() and strategy != "position":
        slices = [z for g in outside.nonzero().flatten().tolist()
                  for z in range(g * group_size, min((g + 1) * group_size, depth))]
        warnings.warn(CoverageWarning(
            f"{len(slices)} of {depth} query slices along axis {pool.axis} look like nothing in the support "
            f"(best retrieval similarity below {MIN_SIMILARITY}): the support does not cover that anatomy, so "
            f"their prediction (often empty) has nothing to rest on; review slices {_ranges(slices)}",
            pool.axis, slices), stacklevel=5)
    if strategy != "position":
        return
    gap = float(position_gap(similarity, pool, depth, group_size).mean())
    if gap > MAX_POSITION_GAP:
        warnings.warn(f"support and query seem to cover different anatomy (the support slices most like the query "
                      f"lie elsewhere than at the same relative height: similarity {gap:.2f} higher on average, axis "
                      f"{pool.axis}): strategy='position' matches slices by relative height; pass strategy='auto' or "
                      "'retrieval'", stacklevel=5)


def position_gap(similarity: torch.Tensor, pool: SupportPool, depth: int, group_size: int) -> torch.Tensor:
    """``(G,)``: each query group's best similarity minus its best among the pool slabs nearest its own
    relative position (within :data:`POSITION_WINDOW` of the nearest), i.e. what position matching
    gives away."""
    groups = similarity.shape[0]
    centres = (torch.arange(groups, dtype=torch.float32) * group_size + (group_size - 1) / 2).clamp(max=depth - 1)
    own = (centres / max(depth - 1, 1)).to(similarity.device)
    distance = (pool.positions.to(similarity.device)[None, :] - own[:, None]).abs()  # (G, M)
    near = distance <= distance.amin(dim=1, keepdim=True) + POSITION_WINDOW  # what position matching draws from
    at_own = torch.where(near, similarity, torch.full_like(similarity, -1.0)).amax(dim=1)
    return (similarity.amax(dim=1) - at_own).cpu()


def _ranges(slices: Sequence[int]) -> str:
    """``[0, 1, 2, 7, 8]`` → ``"0-2, 7-8"``."""
    runs, start = [], None
    for i, z in enumerate(slices):
        if start is None:
            start = z
        if i + 1 == len(slices) or slices[i + 1] != z + 1:
            runs.append(f"{start}-{z}" if z != start else f"{start}")
            start = None
    return ", ".join(runs)


def similarity_to_pools(pools: dict[int, SupportPool], normalised: torch.Tensor, spacing: Sequence[float],
                        settings: SlabSettings, strategy: str) -> dict[int, torch.Tensor]:
    """Per axis, the ``(G, M)`` similarity of each group of query slices to the pool, after
    :func:`check_coverage` has warned about what the support does not cover."""
    out = {}
    for axis, pool in pools.items():
        out[axis] = retrieval_similarity(query_descriptors(normalised, spacing, axis, settings), pool)
        check_coverage(out[axis], pool, normalised.shape[axis], settings.group_size, strategy)
    return out


@dataclass
class QuerySupport:
    """What one query's support draw uses.

    Attributes:
        pools: per plane axis, the pool to draw from (the fitted one, or one on the query's grid).
        strategy: the draw :func:`~fewshotcx.pipeline.support.select_support` makes (``"position"`` on
            registered pools, ``"retrieval"``, or the fitted strategy).
        similarity: per axis, ``(G, M)`` similarity of each query group to the pool (retrieval only).
        registered: indices of the support volumes that were registered onto the query.
        labels: their label maps resampled onto the query's grid (same order as ``registered``).
        coverage: their ``(X, Y, Z)`` 0/1 coverage of the query's grid (same order).
    """

    pools: dict[int, SupportPool]
    strategy: str
    similarity: dict[int, torch.Tensor] = field(default_factory=dict)
    registered: tuple[int, ...] = ()
    labels: tuple[Volume, ...] = ()
    coverage: tuple[np.ndarray, ...] = ()

    def bagged(self, fraction: float, generator: torch.Generator) -> "QuerySupport":
        """This support with each pool cut to a random ``fraction`` of its slabs (at least one;
        :func:`~fewshotcx.pipeline.support.bag_indices`), retrieval similarities cut to match."""
        keep = {axis: bag_indices(len(pool), fraction, generator).to(pool.images.device)
                for axis, pool in self.pools.items()}
        return replace(self, pools={axis: pool_subset(pool, keep[axis]) for axis, pool in self.pools.items()},
                       similarity={axis: s[:, keep[axis].to(s.device)] for axis, s in self.similarity.items()})

    def vote_share(self, classes: Sequence[int], sigma_mm: float = 0.0) -> Optional[torch.Tensor]:
        """``(L, X, Y, Z)`` float32: among the registered label maps that cover each voxel, the share that
        give it class ``classes[l]`` (:func:`fewshotcx.registration.vote_share`, the atlas backend's
        majority vote), Gaussian-smoothed by ``sigma_mm`` (registration is uncertain by a few mm);
        ``None`` when nothing was registered."""
        if not self.labels:
            return None
        share = vote_share([lab.array for lab in self.labels], classes, self.coverage or None, sigma_mm,
                           self.labels[0].spacing)
        return torch.as_tensor(share)


@dataclass(frozen=True)
class SlabSettings:
    """How the backend cuts slabs (``framing``) and groups query slices (``group_size``)."""

    framing: Framing
    group_size: int
    device: torch.device


def support_name(support: SupportVolumes, index: int) -> str:
    """``"support volume 2 (p2_ct.nii.gz)"``: how errors and warnings name a support volume
    (:func:`fewshotcx.registration.volume_name`)."""
    return volume_name(index, support.images[index])


def prepare_query_support(
    strategy: str,
    pools: dict[int, SupportPool],
    support: SupportVolumes,
    query: Volume,
    normalised: torch.Tensor,
    settings: SlabSettings,
    registration: str = DEFAULT_REGISTRATION,
) -> QuerySupport:
    """The support for one query under ``strategy`` (see the module docstring).

    Args:
        pools: the fitted pools, per plane axis (their axes are the ones predicted).
        support: the fitted support volumes (canonical).
        query: the query, canonical, original intensities.
        normalised: ``(X, Y, Z)`` the query as the backend sees it, on ``settings.device``.
        registration: ``"rigid"``, ``"affine"`` or ``"deformable"``.
    Raises:
        fewshotcx.registration.RegistrationError: ``"registered"`` and a support volume fails to register.
        VolumeError: ``"registered"`` with partially labelled support (``slices=``).
    """
    if strategy not in QUERY_AWARE:
        return QuerySupport(pools, strategy)
    if strategy in ("registered", "auto"):
        aligned = register_support(support, query, registration, strict=strategy == "registered")
        if aligned:
            images, labels, covered = zip(*(aligned[i] for i in sorted(aligned)))
            registered_pools = {axis: _pool_on_query(images, labels, covered, axis, support.classes, settings)
                                for axis in pools}
            return QuerySupport(registered_pools, "position", registered=tuple(sorted(aligned)), labels=labels,
                                coverage=covered)
        warnings.warn("strategy='auto': no support volume registered to the query; support is drawn by "
                      "retrieval instead", stacklevel=4)
    similarity = similarity_to_pools(pools, normalised, query.spacing, settings, "retrieval")
    return QuerySupport(pools, "retrieval", similarity)


def query_descriptors(normalised: torch.Tensor, spacing: Sequence[float], axis: int,
                      settings: SlabSettings) -> torch.Tensor:
    """``(G, D)`` retrieval descriptor of each group of ``settings.group_size`` query slices along ``axis``."""
    framing = settings.framing
    geometry = framing.geometry(tuple(normalised.shape), spacing, axis, device=normalised.device,
                                centre=framing.centre(normalised, axis))
    features = torch.cat([slab_features(extract_slabs(normalised, geometry.subset(start, start + _FEATURE_BATCH)))
                          for start in range(0, geometry.num_slices, _FEATURE_BATCH)])
    groups = math.ceil(geometry.depth / settings.group_size)
    return group_features(features, geometry.indices, settings.group_size, groups)


def register_support(
    support: SupportVolumes, query: Volume, mode: str, strict: bool,
) -> dict[int, tuple[np.ndarray, Volume, np.ndarray]]:
    """Register each support volume to ``query`` and resample it onto the query's grid, once per
    (support volume, query, mode): seeded by :attr:`SupportVolumes.seed` and memoised in
    :attr:`SupportVolumes.registrations`, so every draw and prediction of one query reuse it.

    Args:
        strict: raise on the first failure (``"registered"``); else warn and leave that volume out.
    Returns:
        support index → (normalised image ``(X, Y, Z)`` float32, label Volume, coverage ``(X, Y, Z)``
        float32 0/1: the query voxels inside the support's field of view), all on the query's grid;
        volumes that failed are missing.
    """
    if support.slices is not None and any(z is not None for z in support.slices):
        message = ("needs fully labelled support volumes: slices= marks unlabelled slices, which resampling "
                   "would mix with labelled ones")
        if strict:
            raise VolumeError(f"strategy 'registered' {message}")
        warnings.warn(f"strategy='auto': registration {message}; using retrieval", stacklevel=4)
        return {}
    aligned = register_volumes(support.images, support.labels, support.normalised, query, mode, support.seed,
                               support.modality, strict=strict, who="strategy='registered'" if strict else
                               "strategy='auto'", cache=support.registrations)
    return {i: (entry.image, entry.labels, entry.known.astype(np.float32)) for i, entry in aligned.items()}


def _pool_on_query(images: Sequence[np.ndarray], labels: Sequence[Volume], coverage: Sequence[np.ndarray],
                   axis: int, classes: tuple[int, ...], settings: SlabSettings) -> SupportPool:
    """The pool of the warped supports along ``axis``, keeping the slices they cover."""
    covered = []
    for cover in coverage:
        per_slice = cover.mean(axis=tuple(a for a in range(3) if a != axis))
        covered.append(np.flatnonzero(per_slice >= MIN_COVERAGE * max(float(per_slice.max()), 1e-6)).tolist())
    return build_pool(images, labels, axis, settings.framing, covered, classes, device=settings.device)


__all__ = ["CoverageWarning", "DEFAULT_REGISTRATION", "MAX_POSITION_GAP", "MIN_SIMILARITY", "QuerySupport",
           "SlabSettings", "check_coverage", "position_gap", "prepare_query_support", "query_descriptors",
           "register_support",
           "similarity_to_pools", "support_name"]
