"""Self-supervised training labels for unlabelled CT: supervoxels and Hounsfield-defined anatomy.

SSL-ALPNet (Ouyang et al., ECCV 2020) trains few-shot segmentation without manual labels by treating
each supervoxel of an unlabelled scan as a "structure": support and query are different slices of the
same scan, and the network learns to carry a region from one slice to its neighbours. This module is
the 3D, scipy-only version of that idea for the ``"ssl-ct"`` training source (``--data ssl-ct``):

* :func:`supervoxels` over-segments the body of a CT into 3D regions: a watershed
  (:func:`scipy.ndimage.watershed_ift`) from a jittered grid of seeds (``cell_mm`` apart, seeded) on the
  smoothed HU gradient plus a distance-to-seed term, each region then cut along the seeds' Voronoi
  cells so that none outgrows one cell. Every body voxel gets a region; air outside the body (and
  the detached table) gets none.
* :func:`pseudo_labelled_volumes` keeps ``count`` of those regions (seeded choice among those large
  enough to give episodes) as one :class:`~fewshotcx.training.tasks.LabelledVolume` whose group is
  the scan alone (a supervoxel means nothing in another patient), plus a second one carrying the
  scan's Hounsfield anatomy (:func:`~fewshotcx.datasets.ct_anatomy.hu_anatomy`: lungs, bone, fat, soft
  tissue), shared by every scan of the source so those tasks pair patients.
* :func:`unlabelled_ct_volumes` loads the unlabelled CTs of the development data (:data:`UNLABELLED_CTS`,
  the abdominal CRLM pair in ``../shared/data``) and returns both volumes of each.

Memory is a few arrays of the scan's size (the loader first resamples to :data:`SSL_SPACING_MM`).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage

from ..datasets.cases import shared_data_dir
from ..datasets.sources import DatasetError
from ..datasets.ct_anatomy import body_mask, hu_anatomy
from ..datasets.resample import resample_to_spacing
from ..io.volume import Volume, load_volume
from .tasks import LabelledVolume

#: The unlabelled CTs the ``ssl-ct`` source trains on (ids as benchmarks/roles.py declares them): the
#: two contrast abdominal CTs of Colorectal-Liver-Metastases (TCIA, CC BY 4.0). benchmarks/roles.py
#: declares them calibration volumes that training may also use; tests/test_data_roles.py checks that
#: none of them is a report or selection volume.
UNLABELLED_CTS: tuple[str, ...] = ("mirp/CRLM-CT-1004", "mirp/CRLM-CT-1006")
#: The source's dataset name (training balances datasets) and the group of its Hounsfield tasks.
SSL_DATASET = "ssl-ct"
#: In-plane voxel size (mm) the loader resamples to before computing supervoxels (slices stay native).
SSL_SPACING_MM = 2.0
CT_LICENCE = "CC BY 4.0 (Colorectal-Liver-Metastases collection, The Cancer Imaging Archive; copied from oncoray/mirp test data)"


def supervoxels(ct: Volume, cell_mm: float = 40.0, seed: int = 0, compactness: float = 1.0) -> np.ndarray:
    """Compact 3D supervoxels tiling the body of a CT (module docstring).

    Args:
        ct: ``(X, Y, Z)`` CT in Hounsfield units.
        cell_mm: seed spacing in mm along every axis (about the supervoxels' diameter).
        seed: the seed grid's random offset and jitter; the same seed gives the same result.
        compactness: weight of the distance to the nearest seed against the HU gradient (0: a pure
            gradient watershed, irregular; larger: closer to a Voronoi tiling of the seeds).
    Returns:
        ``(X, Y, Z)`` int32: 0 outside the body, ``1..n`` on it (each body voxel in exactly one region,
        no region larger than its seed's Voronoi cell).
    """
    hu = np.asarray(ct.array, dtype=np.float32)
    body = body_mask(hu)
    if not body.any():
        return np.zeros(hu.shape, dtype=np.int32)
    spacing = np.asarray(ct.spacing, dtype=float)
    seeds = _grid_seeds(body, spacing, cell_mm, seed)
    smooth = ndimage.gaussian_filter(np.clip(hu, -200.0, 300.0), sigma=tuple(1.5 / spacing))
    gradient = ndimage.gaussian_gradient_magnitude(smooth, sigma=tuple(1.0 / spacing))
    gradient /= max(float(np.percentile(gradient[body], 99)), 1e-6)
    distance, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
    distance /= cell_mm
    cells = seeds[tuple(nearest)]  # the Voronoi cell of each voxel's nearest seed
    del nearest
    elevation = np.clip(np.minimum(gradient, 1.0) + compactness * distance, 0.0, 2.0 + compactness)
    elevation = (elevation / (2.0 + compactness) * 65534).astype(np.uint16)
    elevation[~body] = 65535  # no path from outside is cheaper than one through the body
    markers = seeds.copy()
    markers[~body] = -1  # outside the body: a background region, dropped below
    labels = ndimage.watershed_ift(elevation, markers, structure=ndimage.generate_binary_structure(3, 1))
    # A region the watershed flooded beyond its seed's cell (flat HU) is cut along the cells' borders.
    keys = np.where(body, labels.astype(np.int64) * (int(seeds.max()) + 1) + cells, 0)
    _, regions = np.unique(keys, return_inverse=True)
    return regions.reshape(hu.shape).astype(np.int32)


def _grid_seeds(body: np.ndarray, spacing: np.ndarray, cell_mm: float, seed: int) -> np.ndarray:
    """``(X, Y, Z)`` int32 markers ``1..n`` at a randomly offset, jittered grid of points inside ``body``."""
    rng = np.random.default_rng(seed)
    step = np.maximum(cell_mm / spacing, 1.0)  # voxels between seeds, per axis
    axes = [np.arange(rng.uniform(0, s), n, s) for s, n in zip(step, body.shape)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    points = points + rng.uniform(-0.25, 0.25, points.shape) * step
    points = np.clip(np.round(points), 0, np.asarray(body.shape) - 1).astype(np.int64)
    points = np.unique(points, axis=0)
    points = points[body[tuple(points.T)]]
    if len(points) == 0:  # a body smaller than one cell: one region
        inside = np.argwhere(body)
        points = inside[len(inside) // 2][None]
    markers = np.zeros(body.shape, dtype=np.int32)
    markers[tuple(points.T)] = np.arange(1, len(points) + 1, dtype=np.int32)
    return markers


def select_supervoxels(regions: np.ndarray, count: int, seed: int = 0, min_extent: int = 5,
                       min_voxels: int = 500) -> np.ndarray:
    """``count`` of ``regions``' supervoxels (a seeded choice), relabelled ``1..count``.

    Only regions spanning at least ``min_extent`` slices along every axis and ``min_voxels`` voxels
    qualify: an episode needs query slices and other slices for support within one region.

    Args:
        regions: ``(X, Y, Z)`` int label map (:func:`supervoxels`).
    Returns:
        ``(X, Y, Z)`` uint16: 0 except on the chosen regions (fewer than ``count`` if fewer qualify).
    """
    boxes = ndimage.find_objects(regions)
    sizes = np.bincount(regions.ravel(), minlength=len(boxes) + 1)
    eligible = [v for v, box in enumerate(boxes, start=1) if box is not None and sizes[v] >= min_voxels
                and min(s.stop - s.start for s in box) >= min_extent]
    chosen = np.random.default_rng(seed).permutation(np.asarray(eligible, dtype=np.int64))[:count]
    lookup = np.zeros(len(boxes) + 1, dtype=np.uint16)
    lookup[np.sort(chosen)] = np.arange(1, len(chosen) + 1, dtype=np.uint16)
    return lookup[regions]


def pseudo_labelled_volumes(ct: Volume, name: str, count: int = 16, cell_mm: float = 40.0, seed: int = 0,
                            licence: str = "") -> list[LabelledVolume]:
    """An unlabelled CT as self-supervised training volumes (module docstring).

    Args:
        ct: ``(X, Y, Z)`` CT in Hounsfield units (made canonical here).
        name: the scan's id (e.g. ``"mirp/CRLM-CT-1004"``); the supervoxel volume is ``"<name> supervoxels"``.
        count: supervoxels kept (each is one structure, ``"supervoxel <i>"``).
    Returns:
        ``[hounsfield, supervoxel]`` volumes on the canonical grid: ``name`` with the HU anatomy
        (group and dataset :data:`SSL_DATASET`) and ``"<name> supervoxels"`` (group of its own); the
        supervoxel one is left out if no region qualifies, the HU one if the scan shows no body.
    """
    ct = ct.canonical()
    out = []
    anatomy, names = hu_anatomy(ct)
    if names:
        out.append(LabelledVolume(name, ct, ct.with_array(anatomy, label=True), names, SSL_DATASET, SSL_DATASET,
                                  licence=licence))
    chosen = select_supervoxels(supervoxels(ct, cell_mm, seed), count, seed)
    values = [int(v) for v in np.unique(chosen) if v]
    if values:
        out.append(LabelledVolume(f"{name} supervoxels", ct, ct.with_array(chosen, label=True),
                                  {v: f"supervoxel {v}" for v in values}, f"supervoxels {name}", SSL_DATASET,
                                  licence=licence))
    return out


def _read_shared_ct(name: str) -> Volume:
    """A CT of :data:`UNLABELLED_CTS` from the development data, resampled in-plane to :data:`SSL_SPACING_MM`.

    Raises:
        DatasetError: the development data are absent (one line).
    """
    root = shared_data_dir()
    folder = None if root is None else root / "mirp" / "ct_images_seg" / name.split("/", 1)[1] / "image"
    if folder is None or not folder.is_dir():
        raise DatasetError(f"the ssl-ct source needs {name}, development data in ../shared/data "
                           "(or $FEWSHOTCX_SHARED_DATA); it is not distributed with fewshotcx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identifying-data warnings: nothing is written from this series
        ct = load_volume(folder)
    return resample_to_spacing(ct, (SSL_SPACING_MM, SSL_SPACING_MM, ct.spacing[2]))


def unlabelled_ct_volumes(exclude: Sequence[str] = (), names: Sequence[str] = UNLABELLED_CTS, seed: int = 0,
                          count: int = 16, read: Optional[Callable[[str], Volume]] = None) -> list[LabelledVolume]:
    """The ``ssl-ct`` training source: :func:`pseudo_labelled_volumes` of each unlabelled CT.

    Args:
        exclude: volume ids never to load (the run's report and held-out volumes); a derived name
            (``"<id> supervoxels"``) is matched by its id.
        names: which of :data:`UNLABELLED_CTS` to load; any other name is refused.
        read: ``name → Volume`` (default: the development data, :func:`_read_shared_ct`).
    Raises:
        ValueError: a name outside :data:`UNLABELLED_CTS` (nothing undeclared is trained on).
        DatasetError: the development data are absent.
    """
    undeclared = [n for n in names if n not in UNLABELLED_CTS]
    if undeclared:
        raise ValueError(f"{undeclared[0]!r} is not an unlabelled CT the ssl-ct source may train on "
                         f"(declared: {', '.join(UNLABELLED_CTS)})")
    excluded = {e.split(" ", 1)[0] for e in exclude}
    read = read or _read_shared_ct
    return [v for n in names if n not in excluded
            for v in pseudo_labelled_volumes(read(n), n, count=count, seed=seed, licence=CT_LICENCE)]


__all__ = ["SSL_DATASET", "UNLABELLED_CTS", "pseudo_labelled_volumes", "select_supervoxels", "supervoxels",
           "unlabelled_ct_volumes"]
