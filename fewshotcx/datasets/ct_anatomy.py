"""Structures that Hounsfield units define on any CT, as automatic training labels.

Manual labels on CT are scarce here, but every CT already says where the body, the lungs, bone and
fat are: their densities are physical constants. :func:`hu_anatomy` turns a CT into a label map of
five disjoint structures, which training uses as extra in-context tasks on real images (never as
results: a number measured against these labels measures the thresholds, not the model).

* ``body``: the largest connected region above -500 HU, holes filled slice by slice (lungs,
  bowel gas and airways are inside the body); the scanner table, detached, drops out.
* ``left lung`` / ``right lung``: air (< -400 HU) inside the body, in components of at least 2 % of
  the body, split by the body's mid-sagittal plane (canonical RAS: larger x is the patient's right).
* ``bone``: above 250 HU inside the body (cortical and dense trabecular bone, calcifications).
* ``fat``: -190 to -30 HU inside the body (subcutaneous and visceral fat).
* ``soft tissue``: the rest of the body (muscle, organs, vessels, skin).

A volume's existing labels (a GTV, an organ) keep their voxels: anatomy fills only unlabelled ones.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from ..io.volume import Volume

#: Label value → name of the structures :func:`hu_anatomy` draws.
HU_STRUCTURES: dict[int, str] = {1: "body", 2: "left lung", 3: "right lung", 4: "bone", 5: "fat", 6: "soft tissue"}
BODY_HU, AIR_HU, BONE_HU, FAT_HU = -500.0, -400.0, 250.0, (-190.0, -30.0)
#: Smallest air component kept as lung, as a share of the body's voxels.
MIN_LUNG_SHARE = 0.02


def body_mask(hu: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` bool: the largest region above :data:`BODY_HU`, holes filled per axial slice."""
    regions, count = ndimage.label(hu > BODY_HU)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    body = regions == int(sizes.argmax())
    return np.stack([ndimage.binary_fill_holes(body[..., z]) for z in range(body.shape[2])], axis=-1)


def hu_anatomy(ct: Volume) -> tuple[np.ndarray, dict[int, str]]:
    """HU-defined structures of a canonical CT (module docstring).

    Returns:
        ``(labels, names)``: a ``(X, Y, Z)`` uint8 label map (values of :data:`HU_STRUCTURES`; 0 outside
        the body; ``body`` itself is not drawn, being the union of the others) and the names of the
        values present.
    """
    hu = ct.array
    body = body_mask(hu)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if not body.any():
        return labels, {}
    labels[body] = 6
    labels[body & (hu >= FAT_HU[0]) & (hu <= FAT_HU[1])] = 5
    labels[body & (hu > BONE_HU)] = 4
    air, count = ndimage.label(body & (hu < AIR_HU))
    if count:
        sizes = np.bincount(air.ravel())
        sizes[0] = 0
        lungs = np.isin(air, np.flatnonzero(sizes >= MIN_LUNG_SHARE * body.sum()))
        mid = ndimage.center_of_mass(body)[0]
        right = np.arange(hu.shape[0])[:, None, None] > mid  # RAS: x grows towards the patient's right
        labels[lungs & ~right] = 2
        labels[lungs & right] = 3
    present = set(np.unique(labels).tolist())
    return labels, {v: n for v, n in HU_STRUCTURES.items() if v in present}


def with_hu_anatomy(case):
    """A CT :class:`~fewshotcx.datasets.Case` whose label map also holds :func:`hu_anatomy`'s structures
    on its unlabelled voxels (new values after the case's own; existing labels win)."""
    canonical, labels = case.image.canonical(), case.labels.canonical()
    anatomy, names = hu_anatomy(canonical)
    base = max(case.structures, default=0)
    merged = labels.array.astype(np.int16)
    free = merged == 0
    merged[free & (anatomy > 0)] = anatomy[free & (anatomy > 0)] + base
    structures = {**case.structures, **{v + base: n for v, n in names.items()}}
    return replace(case, image=canonical, labels=labels.with_array(merged), structures=structures)


__all__ = ["HU_STRUCTURES", "body_mask", "hu_anatomy", "with_hu_anatomy"]
