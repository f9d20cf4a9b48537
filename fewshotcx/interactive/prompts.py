"""Interactions on a 3D image (box, click, scribble): checked in the image's own voxel order, kept in
the canonical one.

Voxel triples ``(i, j, k)`` index ``array[i, j, k]`` of the image *as given* (docs/geometry.md,
"Slice indices"); :func:`box`, :func:`point` and :func:`scribble` check them against the image's own
``(X, Y, Z)`` shape and return a :class:`Prompt` in canonical voxels (what the refinement computes
on). Every refusal is one ``ValueError`` line, raised before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..io.grid import AxialSlices

#: A scribble holds at most this many voxels (a whole-volume "scribble" is a label map: ``draw`` it).
MAX_SCRIBBLE_VOXELS = 1 << 20


@dataclass(frozen=True)
class Prompt:
    """One interaction in canonical voxels.

    Attributes:
        kind: ``"box"``, ``"point"`` or ``"scribble"``.
        label: the structure's label value (≥ 1).
        positive: the voxels belong to the structure (``False``: they do not; a box is positive).
        voxels: ``(N, 3)`` int32 canonical voxel indices: a box's two inclusive corners ``lo``, ``hi``
            (``lo <= hi``), a point's one voxel, a scribble's voxels.
    """

    kind: str
    label: int
    positive: bool
    voxels: np.ndarray

    @property
    def seeds(self) -> np.ndarray:
        """``(N, 3)`` voxels that must end on this prompt's side (none for a box)."""
        return self.voxels[:0] if self.kind == "box" else self.voxels

    @property
    def record(self) -> dict:
        """What a session file keeps besides the voxels (JSON)."""
        return {"kind": self.kind, "label": self.label, "positive": self.positive, "voxels": len(self.voxels)}


def check_label(label: object, declared: Optional[Sequence[int]]) -> int:
    """``label`` as an int ≥ 1, one of ``declared`` when the session's classes are known."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or int(label) < 1:
        raise ValueError(f"label must be a positive integer label value, got {label!r}")
    if declared is not None and int(label) not in declared:
        raise ValueError(f"label {int(label)} is not one of this session's classes {tuple(declared)}")
    return int(label)


def _flag(positive: object) -> bool:
    if not isinstance(positive, (bool, np.bool_)):
        raise ValueError(f"positive must be True or False, got {positive!r}")
    return bool(positive)


def _voxel(ijk: object, slices: AxialSlices, what: str) -> np.ndarray:
    """``ijk`` as an own voxel inside the image (3 integers), as an int64 array."""
    try:
        values = np.asarray(ijk)
        ok = values.shape == (3,) and (np.issubdtype(values.dtype, np.integer) or values.dtype == object and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what} must be 3 integer voxel indices (i, j, k), got {ijk!r}")
    values = values.astype(np.int64)
    if np.any(values < 0) or np.any(values >= slices.shape):
        raise ValueError(f"{what} {tuple(int(v) for v in values)} is outside the image of shape {slices.shape}")
    return values


def box(lo: object, hi: object, label: int, slices: AxialSlices) -> Prompt:
    """A box with inclusive own corners ``lo``, ``hi`` (``lo[2] == hi[2]``: a 2D box on slice ``k``)."""
    lo_v, hi_v = _voxel(lo, slices, "box corner lo"), _voxel(hi, slices, "box corner hi")
    if np.any(lo_v > hi_v):
        raise ValueError(f"box: lo {tuple(lo_v.tolist())} must be <= hi {tuple(hi_v.tolist())} on every axis")
    corners = slices.voxels_to_canonical(np.stack([lo_v, hi_v])).astype(np.int32)
    return Prompt("box", label, True, np.sort(corners, axis=0))


def point(ijk: object, positive: object, label: int, slices: AxialSlices) -> Prompt:
    """A click on own voxel ``ijk``."""
    voxel = _voxel(ijk, slices, "point")
    return Prompt("point", label, _flag(positive), slices.voxels_to_canonical(voxel[None]).astype(np.int32))


def scribble(mask: object, positive: object, label: int, slices: AxialSlices) -> Prompt:
    """A scribble: ``mask`` a boolean array of the image's own ``(X, Y, Z)`` shape, not empty."""
    positive = _flag(positive)
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise ValueError(f"a scribble is a boolean numpy array of the image's shape {slices.shape}, got "
                         f"{type(mask).__name__}{'' if not isinstance(mask, np.ndarray) else ' of ' + str(mask.dtype)}")
    if mask.shape != slices.shape:
        raise ValueError(f"a scribble has the image's shape {slices.shape}, got {mask.shape}")
    voxels = np.argwhere(slices.volume_to_canonical(mask)).astype(np.int32)
    if not len(voxels):
        raise ValueError("the scribble is empty (no True voxel)")
    if len(voxels) > MAX_SCRIBBLE_VOXELS:
        raise ValueError(f"a scribble holds at most {MAX_SCRIBBLE_VOXELS} voxels, got {len(voxels)}; draw() a slice instead")
    return Prompt("scribble", label, positive, voxels)
