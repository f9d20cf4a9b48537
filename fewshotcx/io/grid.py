"""Volumes that carry their geometry: array, affine, spacing and the way back to the file.

Conventions
-----------
* ``Volume.array`` is indexed ``(X, Y, Z)``; ``Volume.affine`` maps voxel indices to world
  millimetres in RAS+ (the NIfTI convention: +x towards the patient's Right, +y Anterior,
  +z Superior): ``world = affine @ (i, j, k, 1)``.
* :meth:`Volume.canonical` gives the *closest canonical RAS* layout: axis 0 increases towards
  Right, axis 1 towards Anterior, axis 2 towards Superior (for oblique affines, the closest such
  permutation). "Axial" slices are therefore ``array[:, :, z]``.
* Reorientation is a pure permutation/flip of voxels (no resampling), so it is exactly invertible.
  A volume read from a file remembers its :class:`SourceGeometry`, the way back to that file's layout.

Reading and writing files is :mod:`fewshotcx.io.volume`'s job; this module reads no file format, so
every reader (NIfTI, NRRD, DICOM) can build on it without import cycles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Optional, Union

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

PathLike = Union[str, os.PathLike]


class VolumeError(ValueError):
    """A volume (or a pair of volumes) that fewshotcx cannot use; the message says why in one line."""


@dataclass(frozen=True)
class SourceGeometry:
    """How a canonical array maps back to the array and header it was read from.

    The way back is a permutation/flip derived from the two affines, so it is exact. ``header`` (NIfTI only) is reused on save so
    that qform/sform codes, units and intent survive.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: Optional[nib.Nifti1Header] = None
    path: Optional[str] = None


@dataclass
class Volume:
    """A 3D image or label map with its voxel-to-world geometry.

    Args:
        array: ``(X, Y, Z)`` voxel values. Images are stored as ``float32``; label maps (``label=True``)
            keep an integer dtype.
        affine: ``(4, 4)`` voxel index → RAS+ millimetre matrix.
        label: whether the volume is a label map (integer, nearest-neighbour semantics).
        source: set by :func:`load_volume`; lets :func:`save_volume` write the original layout back.

    Constructing a ``Volume`` never reorients: the array is kept as given. :func:`load_volume` returns
    canonical volumes; :meth:`canonical` converts any volume explicitly.
    """

    array: np.ndarray
    affine: np.ndarray
    label: bool = False
    source: Optional[SourceGeometry] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise VolumeError(f"expected a 3D volume, got an array of shape {tuple(array.shape)}")
        if min(array.shape) < 1:
            raise VolumeError(f"volume has an empty dimension: shape {tuple(array.shape)}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise VolumeError("affine must be a finite 4x4 matrix")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise VolumeError("affine is singular (zero voxel size or degenerate axes)")
        if self.label:
            array = _as_label_array(array)
        else:
            array = array.astype(np.float32, copy=False)
        self.array = array
        self.affine = affine

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(X, Y, Z)`` voxel counts."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (norms of the affine's columns)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore

    @property
    def orientation(self) -> str:
        """Axis codes of the array, e.g. ``'RAS'`` or ``'LPS'`` (closest for oblique affines)."""
        return "".join(ornt.aff2axcodes(self.affine))

    def same_grid(self, other: "Volume", atol: float = 1e-3) -> bool:
        """Whether ``other`` has the same shape and (within ``atol`` mm) the same affine."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def with_array(self, array: np.ndarray, label: Optional[bool] = None) -> "Volume":
        """A volume on this grid (same affine and source) holding ``array`` of shape ``self.shape``."""
        array = np.asarray(array)
        if tuple(array.shape) != self.shape:
            raise VolumeError(f"array shape {tuple(array.shape)} does not match grid {self.shape}")
        return replace(self, array=array, label=self.label if label is None else label)

    # ------------------------------------------------------------------ orientation
    def canonical(self) -> "Volume":
        """This volume reoriented (by permutation/flips only) to the closest canonical RAS layout.

        The returned volume's ``source`` records how to undo it, so :func:`save_volume` and
        :meth:`to_source` restore the original layout exactly.
        """
        transform = ornt.ornt_transform(ornt.io_orientation(self.affine), ornt.axcodes2ornt("RAS"))
        array = ornt.apply_orientation(self.array, transform)
        affine = self.affine @ ornt.inv_ornt_aff(transform, self.shape)
        source = self.source or SourceGeometry(self.shape, self.affine.copy())
        return Volume(np.ascontiguousarray(array), affine, self.label, source)

    def to_source(self) -> "Volume":
        """The array and affine as they were in the source (file or original arrays).

        Volumes without a recorded source are returned unchanged.
        """
        if self.source is None:
            return self
        src = self.source
        array = reorient_array(self.array, self.affine, src.affine)
        if tuple(array.shape) != tuple(src.shape):
            raise VolumeError(f"volume shape {self.shape} no longer matches its source grid {src.shape}")
        return Volume(np.ascontiguousarray(array), src.affine.copy(), self.label, None)


#: Voxel sizes (mm) a file may declare: a micrometre-scale micro-CT at one end, 10 m at the other.
MIN_VOXEL_MM, MAX_VOXEL_MM = 1e-4, 1e4
#: Largest distance (mm) of the first voxel from the world origin: 1 km.
MAX_ORIGIN_MM = 1e6


def check_geometry(affine: np.ndarray, what: str) -> None:
    """Refuse absurd file geometry before any pixel is decoded.

    A usable affine is finite, has voxel sizes (column norms) in ``[MIN_VOXEL_MM, MAX_VOXEL_MM]``,
    an origin within ``MAX_ORIGIN_MM`` of the world origin and axes that are not (nearly) parallel.

    Raises:
        VolumeError: the first failed condition, in one line naming ``what``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise VolumeError(f"{what}: the voxel-to-world matrix is not a finite 4x4 matrix")
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if spacing.min() < MIN_VOXEL_MM or spacing.max() > MAX_VOXEL_MM:
        raise VolumeError(f"{what}: voxel sizes {', '.join(f'{s:.3g}' for s in spacing)} mm are outside "
                          f"[{MIN_VOXEL_MM:g}, {MAX_VOXEL_MM:g}] mm")
    if np.abs(affine[:3, 3]).max() > MAX_ORIGIN_MM:
        raise VolumeError(f"{what}: the image origin is more than {MAX_ORIGIN_MM:g} mm from the world origin")
    if abs(np.linalg.det(affine[:3, :3] / spacing)) < 1e-3:
        raise VolumeError(f"{what}: the image axes are (nearly) parallel: singular voxel-to-world matrix")


def reorient_array(array: np.ndarray, from_affine: np.ndarray, to_affine: np.ndarray) -> np.ndarray:
    """Permute/flip ``array`` (``(..., X, Y, Z)``, leading axes kept) from the voxel layout of
    ``from_affine`` to that of ``to_affine`` (both describing the same grid in different layouts)."""
    transform = ornt.ornt_transform(ornt.io_orientation(from_affine), ornt.io_orientation(to_affine))
    lead = array.ndim - 3
    if lead == 0:
        return np.ascontiguousarray(ornt.apply_orientation(array, transform))
    moved = np.moveaxis(array, range(lead), range(-lead, 0))  # channels last for apply_orientation
    out = ornt.apply_orientation(moved, transform)
    return np.ascontiguousarray(np.moveaxis(out, range(-lead, 0), range(lead)))


def _as_label_array(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min(initial=0) < 0:
            raise VolumeError("label map has negative values")
        return array
    if not np.all(np.isfinite(array)):
        raise VolumeError("label map contains NaN or infinite values")
    rounded = np.rint(array)
    if not np.allclose(array, rounded, atol=1e-3):
        raise VolumeError("label map has non-integer values (is this an image rather than a label?)")
    if rounded.min() < 0:
        raise VolumeError("label map has negative values")
    return rounded.astype(np.int16 if rounded.max(initial=0) < 32768 else np.int32)


def label_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds label values ``0 … max_value`` (NIfTI stores all
    of uint8, uint16, uint32 and uint64), so no label value is ever narrowed or wrapped."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise VolumeError(f"label value {max_value} does not fit in 64 bits")


def binary_mask(volume: Volume) -> np.ndarray:
    """Boolean ``(X, Y, Z)`` foreground of a label map (any non-zero value) or of a 0/1 image.

    Raises:
        VolumeError: an image with values other than 0 and 1 (a probability map: threshold it first).
    """
    if not volume.label and not np.isin(volume.array, (0, 1)).all():
        raise VolumeError("expected a binary mask (0/1 values); threshold probability maps first")
    return volume.array != 0


def check_pair(image: Volume, label: Volume, what: str = "image/label") -> None:
    """Raise :class:`VolumeError` unless ``label`` lies on ``image``'s grid and is not empty."""
    if image.shape != label.shape:
        raise VolumeError(f"{what}: grids differ (shape {image.shape} vs {label.shape})")
    if not np.allclose(image.affine, label.affine, atol=1e-3 * max(1.0, max(image.spacing))):
        raise VolumeError(f"{what}: grids differ (affines do not match)")
    if not np.any(label.array):
        raise VolumeError(f"{what}: the label volume is empty (no foreground voxels)")


_AXIS_NAMES = ("left-right", "anterior-posterior", "superior-inferior")


@dataclass(frozen=True)
class AxialSlices:
    """A volume's *own* axial slices and its canonical array's: the one slice-index convention of
    fewshotcx (docs/geometry.md, "Slice indices").

    Slice ``k`` is ``array[:, :, k]`` of the volume as stored (a file as nibabel and SimpleITK index
    it; a :class:`Volume` built from arrays, its array as given), an ``(X, Y)`` plane of that array.
    Its third axis must run superior–inferior. Inside, fewshotcx works on the canonical (closest-RAS)
    array; this maps indices and planes between the two by permutation/flips only (exact).

    Attributes:
        orientation: ``(3, 2)`` nibabel orientation of the own array: per own axis, the canonical axis
            it becomes and ``±1`` (reversed when ``-1``).
        shape: the own ``(X, Y, Z)`` shape.
    """

    orientation: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, affine: np.ndarray, shape: tuple[int, ...], what: str = "the image") -> "AxialSlices":
        """The slices of a volume with ``affine`` and ``shape`` in its own layout (a :class:`Volume`:
        ``AxialSlices.of(v.affine, v.shape)``).

        Raises:
            VolumeError: its third array axis does not run superior–inferior.
        """
        orientation = ornt.io_orientation(np.asarray(affine)).astype(int)
        if orientation[2, 0] != 2:
            raise VolumeError(f"slices: the third array axis of {what} runs {_AXIS_NAMES[orientation[2, 0]]}, not "
                              "superior-inferior; reorient it so its slices are axial")
        return cls(orientation, tuple(int(n) for n in shape[:3]))  # type: ignore[arg-type]

    @property
    def depth(self) -> int:
        return int(self.shape[2])

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """The canonical array's ``(X, Y, Z)`` shape."""
        out = [0, 0, 0]
        for (to, _), n in zip(self.orientation, self.shape):
            out[to] = int(n)
        return tuple(out)  # type: ignore[return-value]

    def check(self, k: object) -> int:
        """``k`` as an int in ``[0, depth)``.

        Raises:
            VolumeError: not an integer in range.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < self.depth:
            raise VolumeError(f"slice index must be an integer in [0, {self.depth - 1}], got {k!r}")
        return int(k)

    def to_canonical(self, k: int) -> int:
        """Own slice index → canonical axial index (``Z-1-k`` for superior-first storage)."""
        k = self.check(k)
        return k if self.orientation[2, 1] > 0 else self.depth - 1 - k

    def to_own(self, z: int) -> int:
        """Canonical axial index → own slice index."""
        return self.to_canonical(z)  # reversing the axis is its own inverse

    def plane_to_canonical(self, plane: np.ndarray) -> np.ndarray:
        """An own ``(X, Y)`` plane (``array[:, :, k]``) → the canonical axial plane ``(X', Y')``.

        Raises:
            VolumeError: ``plane`` is not ``shape[:2]``.
        """
        plane = np.asarray(plane)
        if plane.shape != tuple(self.shape[:2]):
            raise VolumeError(f"a slice of this image has shape {tuple(self.shape[:2])} (its own array[:, :, k]), "
                              f"got {plane.shape}")
        return np.ascontiguousarray(ornt.apply_orientation(plane[..., None], self.orientation)[..., 0])

    def plane_to_own(self, plane: np.ndarray) -> np.ndarray:
        """A canonical axial plane → the own ``(X, Y)`` plane."""
        return np.ascontiguousarray(self.volume_to_own(np.asarray(plane)[..., None])[..., 0])

    def voxels_to_canonical(self, voxels: np.ndarray) -> np.ndarray:
        """``(N, 3)`` own voxels ``(i, j, k)`` (``array[i, j, k]``, in range) → canonical voxels."""
        voxels, out = np.asarray(voxels), np.empty(np.shape(voxels), np.int64)
        for axis, (target, sign) in enumerate(self.orientation):
            out[:, target] = voxels[:, axis] if sign > 0 else self.shape[axis] - 1 - voxels[:, axis]
        return out

    def voxels_to_own(self, voxels: np.ndarray) -> np.ndarray:
        """``(N, 3)`` canonical voxels → own voxels (the inverse of :meth:`voxels_to_canonical`)."""
        voxels, out = np.asarray(voxels), np.empty(np.shape(voxels), np.int64)
        for axis, (target, sign) in enumerate(self.orientation):
            out[:, axis] = voxels[:, target] if sign > 0 else self.shape[axis] - 1 - voxels[:, target]
        return out

    def volume_to_canonical(self, array: np.ndarray) -> np.ndarray:
        """An own ``(X, Y, Z)`` array (of :attr:`shape`, checked by the caller) → the canonical array."""
        return np.ascontiguousarray(ornt.apply_orientation(np.asarray(array), self.orientation))

    def volume_to_own(self, array: np.ndarray) -> np.ndarray:
        """A canonical ``(X, Y, Z)`` array → the own array (of :attr:`shape`; the inverse of
        :meth:`volume_to_canonical`)."""
        back = ornt.ornt_transform(ornt.axcodes2ornt("RAS"), self.orientation)
        return np.ascontiguousarray(ornt.apply_orientation(np.asarray(array), back))


def canonical_axial_slices(affine: np.ndarray, shape: tuple[int, ...], slices, what: str = "the image") -> list[int]:
    """Slice indices along a volume's *own* third array axis → axial indices of its canonical array
    (:class:`AxialSlices`, for ``Segmenter.fit``/``complete`` and ``fewshotcx complete --slices``).

    Raises:
        VolumeError: the third axis is not superior–inferior, or an index is outside ``[0, Z)``.
    """
    order = AxialSlices.of(affine, shape, what)
    values = [int(k) for k in slices]
    bad = [k for k in values if not 0 <= k < order.depth]
    if not values or bad:
        raise VolumeError(f"slices must be axial indices in [0, {order.depth - 1}] of {what}"
                          + (f", got {bad[0]}" if bad else ", got none"))
    return [order.to_canonical(k) for k in values]
