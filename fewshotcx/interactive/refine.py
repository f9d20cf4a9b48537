"""One interaction's effect on a label map: a random walker with a prior on a region of interest.

Pure functions on canonical arrays. For prompt ``new`` of structure ``label`` (the structure's earlier
prompts, ``new`` last, in ``prompts``):

1. **Region**: a box → the box (a 3D box grown to hold the structure's positive seeds) plus a
   margin (none across a 2D box's slice); a click or scribble → its voxels ± :attr:`Settings.reach_mm`,
   inside the structure's 3D box if it has one. The region is downsampled in-plane by an integer
   factor until it holds at most :attr:`Settings.budget` voxels.
2. **Fixed voxels** (hard seeds): the structure's clicks and scribbles (1 or 0), other structures and
   what its box excludes (0: outside a 3D box; outside a 2D box on its slice), drawn slices (as
   drawn), the region's faces inside the image (the current result, so nothing changes across them);
   after a negative click or scribble, the contour away from it and deep enough inside (:func:`_held`).
3. **Prior** ``p`` (a logistic of a sum of log-odds): an intensity model (the log ratio of the
   foreground and background histograms of the smoothed intensities in the region); after a box,
   the automatic contour's probability (a fitted segmenter) or else an ellipsoid inscribed in the
   box; after a click or scribble, the current result, overridden near the new seeds by a push to
   their side (:func:`_click_logit`).
4. **Random walker** (:mod:`~fewshotcx.interactive.walker`) → probability, upsampled (linear) to the
   region and thresholded at 0.5; 26-connected pieces that touch neither a positive seed nor the
   previous contour are dropped (after a box with no seed: all but the largest). After a click or
   scribble, only the pieces of the change that hold one of its voxels are kept (:func:`_local`), and
   (:attr:`Settings.one_way`) a positive one only adds to the contour, a negative one only removes.
   After a box, the structure is cleared wherever the box excludes it, in the whole image.

Intensities are in HU; any other modality is first scaled by :func:`in_units` (the session does it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .prompts import Prompt
from .walker import random_walk


@dataclass(frozen=True)
class Settings:
    """The method's constants, tuned on STS_001's GTV and LUNG1-001's GTV-1 and spinal cord (the
    measurements: docs/contouring.md, "Boxes, clicks and scribbles"); :data:`MR_SPAN`,
    :func:`_local`, :func:`_held` (``hold``, ``hold_depth``), ``radius`` (0.9 before) and ``one_way``
    (two-way before) were chosen on the brain atlases' amygdalae and pallida, checked on those four
    CT structures (``benchmarks/interactive_dev.py``, docs/interactive.md)."""

    margin_mm: float = 6.0      # region beyond a box
    reach_mm: float = 30.0      # region around a click or scribble (half-size)
    budget: int = 160_000       # voxels of the downsampled region, at most
    beta: float = 8.0           # edge sharpness: w = exp(-beta (dI / sigma)^2)
    sigma: float = 100.0        # intensity unit of the edges (HU on CT)
    strength: float = 0.3       # lambda: weight of the prior against the edges
    intensity: float = 1.0      # weight of the histogram log-ratio (clipped to ±3)
    shape: float = 2.0          # weight of the box's ellipsoid, log-odds at its centre
    radius: float = 1.0         # where the ellipsoid's log-odds are 0 (1: the inscribed ellipsoid)
    automatic: float = 1.0      # weight of the automatic contour's log-odds
    trust: float = 2.0          # log-odds of the current result far from a new seed
    click: float = 2.0          # log-odds of a click's push to its side, near it
    min_mm: float = 3.0         # a click's reach, at least
    spread: float = 2.5         # a click's reach along the contour, in units of its depth
    depth: float = 2.0          # a click's push across the contour, in units of its depth
    local_mm: float = 20.0      # a click's reach when nothing is on its side nearby
    hold: float = 2.5           # a negative click keeps the contour farther than hold·ρ from it ...
    hold_depth: float = 0.5     # ... and at least hold_depth·ρ inside it (ρ: the click's own depth)
    one_way: bool = True        # a positive click or scribble only adds to the contour, a negative only removes


#: Non-CT intensities are scaled so that their 1st to 99th percentiles span this many units: the
#: constants above are in HU, and an MR's arbitrary scale (0–117 on Colin27, 20–7430 on MNI152) would
#: otherwise make every edge vanish or every voxel an edge.
MR_SPAN = 1000.0


def in_units(image: np.ndarray, modality: str) -> np.ndarray:
    """``image`` (float32) in the units :class:`Settings` assumes: HU for ``"ct"``, as is; any other
    modality scaled so its 1st to 99th percentiles span :data:`MR_SPAN` (unchanged if they are equal)."""
    image = image.astype(np.float32)
    if modality == "ct":
        return image
    low, high = np.percentile(image, [1, 99])
    return image * np.float32(MR_SPAN / (high - low)) if high > low else image


@dataclass(frozen=True)
class Region:
    """A box of canonical voxels ``lo..hi`` (inclusive) downsampled in-plane by ``factor``."""

    lo: np.ndarray
    hi: np.ndarray
    factor: int

    @property
    def slices(self) -> tuple[slice, ...]:
        """The region as index slices of the full-resolution canonical ``(X, Y, Z)`` array."""
        return tuple(slice(int(a), int(b) + 1) for a, b in zip(self.lo, self.hi))


def _region(new: Prompt, box: Optional[np.ndarray], shape: Sequence[int], spacing: Sequence[float],
            settings: Settings) -> Region:
    size = np.asarray(shape) - 1
    margin = np.ceil(settings.margin_mm / np.asarray(spacing)).astype(int)
    if box is not None and _flat(box):
        margin[2] = 0
    if new.kind == "box":
        lo, hi = box[0] - margin, box[1] + margin
    else:
        reach = np.ceil(settings.reach_mm / np.asarray(spacing)).astype(int)
        lo, hi = new.voxels.min(axis=0) - reach, new.voxels.max(axis=0) + reach
        if box is not None and not _flat(box):
            lo, hi = np.maximum(lo, box[0] - margin), np.minimum(hi, box[1] + margin)
    lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
    extent = hi - lo + 1
    factor = 1
    while np.prod(np.ceil(extent[:2] / factor)) * extent[2] > settings.budget:
        factor += 1
    return Region(lo, hi, factor)


def _flat(box: np.ndarray) -> bool:
    """Whether ``box`` (``(2, 3)`` corners) is a 2D box: one axial slice."""
    return bool(box[0][2] == box[1][2])


def _outside(box: np.ndarray, lo: Sequence[int], shape: Sequence[int], factor: int = 1) -> np.ndarray:
    """``shape`` bool: the voxels of a grid (canonical voxel ``lo`` at its origin, ``factor``-fold
    in-plane blocks) that ``box`` excludes: outside it, or for a 2D box, outside it on its slice."""
    axes = []
    for a in range(3):
        step = factor if a < 2 else 1
        centres = lo[a] + np.arange(shape[a]) * step + (step - 1) / 2
        axes.append((centres >= box[0][a] - 0.5) & (centres <= box[1][a] + 0.5))
    inside = axes[0][:, None, None] & axes[1][None, :, None]
    if _flat(box):
        return ~inside & axes[2][None, None, :]
    return ~(inside & axes[2][None, None, :])


def _down(array: np.ndarray, factor: int) -> np.ndarray:
    """In-plane block means (edge-padded to whole blocks), float32."""
    array = array.astype(np.float32)
    if factor == 1:
        return array
    pad = [(0, -n % factor) for n in array.shape[:2]] + [(0, 0)]
    x, y, z = np.pad(array, pad, mode="edge").shape
    return np.pad(array, pad, mode="edge").reshape(x // factor, factor, y // factor, factor, z).mean(axis=(1, 3))


def _up(array: np.ndarray, factor: int, shape: Sequence[int]) -> np.ndarray:
    """Back to the region's ``shape`` (linear interpolation between block centres)."""
    if factor == 1:
        return array
    up = ndimage.zoom(array, (factor, factor, 1), order=1, mode="nearest", grid_mode=True)
    return up[:shape[0], :shape[1], :shape[2]]


def log_ratio(image: np.ndarray, foreground: np.ndarray, background: np.ndarray, bins: int = 64) -> np.ndarray:
    """``log(h_fg(I) / h_bg(I))`` per voxel, clipped to ±3: normalised, smoothed histograms of the
    intensities of the ``foreground`` and ``background`` voxels (0 where either is empty)."""
    if not foreground.any() or not background.any():
        return np.zeros(image.shape, np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    edges = np.linspace(lo, hi + 1e-3, bins + 1)
    index = np.clip(np.digitize(image, edges) - 1, 0, bins - 1)
    h = [ndimage.gaussian_filter1d(np.bincount(index[m], minlength=bins).astype(float), 1.5) + 0.5
         for m in (foreground, background)]
    ratio = np.log(h[0] / h[0].sum()) - np.log(h[1] / h[1].sum())
    return np.clip(ratio, -3, 3)[index].astype(np.float32)


def _ellipsoid(box: np.ndarray, region: Region, shape: Sequence[int]) -> np.ndarray:
    """``1 − r²`` on the region's (downsampled) grid, ``r`` the normalised radius of the ellipsoid
    inscribed in ``box`` (1 on it, 0 at its centre)."""
    axes = []
    for a in range(3):
        step = region.factor if a < 2 else 1
        coords = region.lo[a] + (np.arange(shape[a]) + 0.5) * step - 0.5
        centre, half = (box[0][a] + box[1][a]) / 2, (box[1][a] - box[0][a] + 1) / 2
        axes.append(((coords - centre) / half) ** 2)
    return 1 - (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])


def _seed_grid(prompts: Sequence[Prompt], region: Region, shape: Sequence[int]) -> np.ndarray:
    """``shape`` int8 grid of the prompts' seeds in the (downsampled) region: 1, 0, or −1 (none); a
    later prompt's seed wins."""
    grid = np.full(shape, -1, np.int8)
    for prompt in prompts:
        v = prompt.seeds - region.lo
        inside = np.all((v >= 0) & (prompt.seeds <= region.hi), axis=1)
        v = v[inside] // np.array([region.factor, region.factor, 1])
        grid[v[:, 0], v[:, 1], v[:, 2]] = int(prompt.positive)
    return grid


def _faces(shape: Sequence[int], region: Region, volume: Sequence[int]) -> np.ndarray:
    """The region's faces that lie inside the image (not on its border), on the downsampled grid; none
    across an axis the region is less than three voxels thick on (a 2D box's slice is all face)."""
    face = np.zeros(shape, bool)
    for a in range(3):
        for end, at_border in ((0, region.lo[a] == 0), (-1, region.hi[a] == volume[a] - 1)):
            if not at_border and shape[a] > 2:
                face[tuple(end if b == a else slice(None) for b in range(3))] = True
    return face


def _keep(mask: np.ndarray, seeds: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The 26-connected pieces of ``mask`` that hold a positive seed or overlap ``previous`` (none of
    either: the largest piece)."""
    pieces, n = ndimage.label(mask, np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    anchor = (seeds == 1) | previous
    keep = np.unique(pieces[anchor & mask])
    keep = keep[keep > 0]
    if not len(keep):
        keep = [int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1]
    return np.isin(pieces, keep)


def _local(result: np.ndarray, previous: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``result`` changed from ``previous`` only in the 26-connected pieces of the change that hold one
    of the new prompt's ``seeds``: a click changes the contour around it, nothing disconnected from it."""
    pieces, _ = ndimage.label(result ^ previous, np.ones((3, 3, 3), bool))
    keep = np.unique(pieces[seeds])
    return np.where(np.isin(pieces, keep[keep > 0]), result, previous)


def _held(distance: np.ndarray, current: np.ndarray, step: Sequence[float], settings: Settings) -> np.ndarray:
    """What a negative click or scribble may not remove: the current contour's voxels farther than
    ``hold · ρ`` from it (``distance``: mm from its seeds, on the region's grid) and at least
    ``hold_depth · ρ`` inside the contour.

    The click sits at the deepest point of a spill, ``ρ`` inside the contour (its distance to the
    background, within ``min_mm .. local_mm``), so the spill is about ``ρ`` thick; what lies as deep
    and away from the click is the structure itself. Without this the walker, with no positive seed
    to hold it, could empty a small structure from one click in a spill beside it (on the atlases'
    amygdalae and pallida one click took 208 voxels to 12)."""
    if current.all():
        return np.zeros(current.shape, bool)
    rho = float(np.clip(distance[~current].min(), settings.min_mm, settings.local_mm))
    depth = ndimage.distance_transform_edt(current, sampling=step)  # inside the contour, from the background
    return current & (depth >= settings.hold_depth * rho) & (distance > settings.hold * rho)


def _click_logit(new: Prompt, seeds: np.ndarray, distance: np.ndarray, current: np.ndarray, intensities: np.ndarray,
                 step: Sequence[float], settings: Settings) -> np.ndarray:
    """Log-odds after a click or scribble (``seeds``: its voxels on the region's grid; ``distance``: mm
    from them).

    A click sits in the middle of an error region, about ``ρ`` from the current contour (``ρ``: the
    distance from the seeds to the nearest voxel already on their side, at least ``min_mm``), so the
    region is a layer about ``2ρ`` deep along the contour. Voxels within ``2ρ`` of the contour on the
    other side and within ``spread · ρ`` of the seeds, of intensity like the seeds', are pushed to the
    seeds' side (log-odds ``click``); elsewhere the current result holds (log-odds ``trust``). With
    nothing on their side within ``local_mm``, the error is an island: ``ρ = local_mm``, no layer."""
    side = current if new.positive else ~current
    rho = float(distance[side].min()) if side.any() else np.inf
    if rho <= settings.local_mm:  # next to the contour: a layer along it
        rho = max(rho, settings.min_mm)
        depth = ndimage.distance_transform_edt(~side, sampling=step)  # how far from the asked side
    else:  # an island of its own (nothing on its side nearby): a blob around it
        rho, depth = settings.local_mm, np.zeros(current.shape)
    across = 1 + np.exp((depth - settings.depth * rho) / rho * 4)  # falls off beyond depth·ρ from the contour
    near = np.exp(-0.5 * (distance / (settings.spread * rho)) ** 2) / across
    like = np.exp(-0.5 * ((intensities - intensities[seeds].mean()) / settings.sigma) ** 2)
    sign = 1.0 if new.positive else -1.0
    return settings.trust * (1 - near) * np.where(current, 1.0, -1.0) + settings.click * near * like * sign


def refine(image: np.ndarray, spacing: Sequence[float], labels: np.ndarray, prompts: Sequence[Prompt],
           prior: Optional[np.ndarray] = None, drawn: Optional[dict[int, np.ndarray]] = None,
           settings: Settings = Settings()) -> np.ndarray:
    """``labels`` after the last of ``prompts`` (all of one structure, oldest first; the earlier ones
    already applied): a new ``(X, Y, Z)`` label map, changed only inside the prompt's region.

    Args:
        image: ``(X, Y, Z)`` canonical intensities (HU for CT).
        spacing: canonical voxel size (mm).
        labels: ``(X, Y, Z)`` current label map (0 = background).
        prior: ``(X, Y, Z)`` the automatic contour's probability of this structure, if any.
        drawn: canonical slice ``z`` → its drawn ``(X, Y)`` label plane, kept as drawn.
    """
    new, label = prompts[-1], prompts[-1].label
    boxes = [p.voxels for p in prompts if p.kind == "box"]
    box = None if not boxes else boxes[-1].copy()
    positive = [p.seeds for p in prompts if p.positive and p.kind != "box"]
    if box is not None and positive and not _flat(box):  # a 3D box grows to hold every positive seed
        seeds = np.concatenate(positive)
        box = np.array([np.minimum(box[0], seeds.min(axis=0)), np.maximum(box[1], seeds.max(axis=0))])
    region = _region(new, box, labels.shape, spacing, settings)
    crop = region.slices
    full = labels[crop]
    mask = full == label
    small = lambda a: _down(a, region.factor)  # noqa: E731 - one-line helper
    intensities = small(ndimage.gaussian_filter(image[crop].astype(np.float32), (1, 1, 0.5)))
    grid, step = intensities.shape, (spacing[0] * region.factor, spacing[1] * region.factor, spacing[2])
    seeds = _seed_grid(prompts, region, grid)
    current = small(mask) > 0.5
    hard_zero = (small((full != 0) & ~mask) > 0.5) & (seeds < 0)
    if box is not None:
        hard_zero |= _outside(box, region.lo, grid, region.factor) & (seeds < 0)
    face = _faces(grid, region, labels.shape) & (seeds < 0) & ~hard_zero
    fixed = (seeds >= 0) | hard_zero | face
    values = np.where(seeds >= 0, seeds, np.where(face, current, 0)).astype(np.float32)
    for z, plane in (drawn or {}).items():
        if region.lo[2] <= z <= region.hi[2]:
            fixed[..., z - region.lo[2]] = True
            values[..., z - region.lo[2]] = small((plane[crop[0], crop[1]] == label)[..., None])[..., 0] > 0.5
    if new.kind == "box" and prior is not None:
        p = np.clip(small(prior[crop]), 1e-3, 1 - 1e-3)
        reference, logit = p > 0.5, settings.automatic * np.log(p / (1 - p))
    elif new.kind == "box":
        shape = _ellipsoid(box, region, grid)  # 1 - r^2: the core (r < 1/2) is the first foreground sample
        reference, logit = shape > 0.75, settings.shape * np.clip(shape - 1 + settings.radius ** 2, -1, 1)
    else:
        own = _seed_grid([new], region, grid) >= 0
        distance = ndimage.distance_transform_edt(~own, sampling=step)  # mm from the new seeds
        reference, logit = current, _click_logit(new, own, distance, current, intensities, step, settings)
        if not new.positive:  # the structure beyond the spill stays
            held = _held(distance, current, step, settings) & ~fixed
            fixed, values = fixed | held, np.where(held, np.float32(1), values)
    foreground = (reference & ~hard_zero | (seeds == 1)) & (seeds != 0)
    p = 1 / (1 + np.exp(-logit - settings.intensity * log_ratio(intensities, foreground, ~foreground)))
    x = random_walk(intensities, step, p, fixed, values, settings.beta, settings.sigma, settings.strength,
                    current.astype(np.float32))
    full_seeds = _seed_grid(prompts, Region(region.lo, region.hi, 1), full.shape)
    result = (_up(x, region.factor, full.shape) > 0.5) & ((full == 0) | mask)
    result = _keep((result | (full_seeds == 1)) & (full_seeds != 0), full_seeds, mask)
    if new.kind != "box":
        result = _local(result, mask, _seed_grid([new], Region(region.lo, region.hi, 1), full.shape) >= 0)
        if settings.one_way:
            result = result | mask if new.positive else result & mask
    out = labels.copy()
    out[crop] = np.where(result, label, np.where(mask, 0, full))
    if new.kind == "box":  # nothing of the structure outside its box (but its seeds: enforced after)
        out[(out == label) & _outside(box, (0, 0, 0), out.shape)] = 0
    return out
