"""Volumes that carry their geometry: array, affine, spacing and the way back to the file.

Conventions
-----------
* ``Volume.array`` is indexed ``(X, Y, Z)``; ``Volume.affine`` maps voxel indices to world
  millimetres in RAS+ (the NIfTI convention: +x towards the patient's Right, +y Anterior,
  +z Superior): ``world = affine @ (i, j, k, 1)``.
* :func:`load_volume` returns the array in the *closest canonical RAS* layout: axis 0 increases
  towards Right, axis 1 towards Anterior, axis 2 towards Superior (for oblique affines, the closest
  such permutation). "Axial" slices are therefore ``array[:, :, z]``.
* Reorientation is a pure permutation/flip of voxels (no resampling), so it is exactly invertible.
  A loaded volume remembers its :class:`SourceGeometry`; :func:`save_volume` undoes the permutation
  and writes the *original* affine and header, so an unchanged volume round-trips bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from .atomic import atomic_output

PathLike = Union[str, os.PathLike]

_IDENTIFYING_NIFTI_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")


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


# ---------------------------------------------------------------------- I/O
#: NRRD ``space`` values fewshotcx reads → the sign flips from that space to RAS.
NRRD_SPACES = {"left-posterior-superior": (-1, -1, 1), "right-anterior-superior": (1, 1, 1),
               "left-anterior-superior": (-1, 1, 1)}


def load_volume(path: Union[PathLike, Volume], label: bool = False, canonical: bool = True,
                nrrd_space: Optional[str] = None) -> Volume:
    """Read a volume from NIfTI (``.nii``/``.nii.gz``), NRRD (``.nrrd``/``.seg.nrrd``) or a DICOM
    series directory, returned in closest-canonical RAS unless ``canonical=False``.

    Args:
        path: file or directory; a :class:`Volume` is passed through (canonicalised if asked).
        label: read as an integer label map (values must be whole, non-negative numbers).
        nrrd_space: the world space of an NRRD file that has no ``space`` field (one of
            :data:`NRRD_SPACES`); without it such a file is refused rather than assumed LPS.
    Raises:
        VolumeError: unreadable file, not 3D (4D images are refused rather than guessed at),
            non-integer label values, or an NRRD without ``space`` and no ``nrrd_space``.
    """
    if isinstance(path, Volume):
        vol = Volume(path.array, path.affine, label or path.label, path.source)
        return vol.canonical() if canonical else vol
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"no such file or directory: {p}")
    name = p.name.lower()
    if p.is_dir():
        from .dicom import read_dicom_series

        vol = read_dicom_series(p, label=label)
    elif name.endswith(".nrrd") or name.endswith(".nhdr"):
        vol = _read_nrrd(p, label, nrrd_space)
    else:
        vol = _read_nifti(p, label)
    return vol.canonical() if canonical else vol


def _read_nifti(path: Path, label: bool) -> Volume:
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt input
        raise VolumeError(f"cannot read {path} as NIfTI: {_short(exc)}") from None
    data = _squeeze_to_3d(data, path)
    if not label:
        data = np.asarray(data, dtype=np.float32)
    header = img.header.copy() if isinstance(img.header, nib.Nifti1Header) else None
    vol = Volume(data, img.affine, label)
    vol.source = SourceGeometry(vol.shape, vol.affine.copy(), header, str(path))
    return vol


def _read_nrrd(path: Path, label: bool, nrrd_space: Optional[str] = None) -> Volume:
    try:
        import nrrd

        data, header = nrrd.read(str(path))
    except Exception as exc:
        raise VolumeError(f"cannot read {path} as NRRD: {_short(exc)}") from None
    data = _squeeze_to_3d(np.asarray(data), path)
    directions = np.asarray(header.get("space directions"), dtype=np.float64)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if directions.shape != (3, 3) or not np.all(np.isfinite(directions)):
        raise VolumeError(f"{path}: NRRD lacks a 3x3 'space directions' field")
    if "space" not in header and nrrd_space is None:
        raise VolumeError(f"{path}: NRRD has no 'space' field, so its orientation is unknown; pass "
                          f"nrrd_space= (one of {', '.join(NRRD_SPACES)}) if you know it")
    space = str(header.get("space", nrrd_space)).lower()
    flip = NRRD_SPACES.get(space)
    if flip is None:
        raise VolumeError(f"{path}: unsupported NRRD space '{space}' (expected one of {', '.join(NRRD_SPACES)})")
    affine = np.eye(4)
    affine[:3, :3] = np.diag(flip) @ directions.T  # columns = world step per voxel index
    affine[:3, 3] = np.asarray(flip) * origin
    vol = Volume(data if label else data.astype(np.float32), affine, label)
    vol.source = SourceGeometry(vol.shape, affine.copy(), None, str(path))
    return vol


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)} "
                          "(split 4D series into 3D volumes first)")
    return data


def save_volume(
    volume: Volume,
    path: PathLike,
    overwrite: bool = False,
    keep_identifiers: bool = False,
    dtype: Optional[np.dtype] = None,
) -> Path:
    """Write ``volume`` to NIfTI in the layout and affine of its source.

    The write is atomic (a temporary file in the target directory, then a rename), so a failure never
    leaves a partial file. Identifying free-text header fields (``descrip``, ``aux_file``, ``db_name``,
    ``intent_name``) are cleared unless ``keep_identifiers=True``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: the output directory does not exist.
    """
    path = Path(path)
    if path.exists() and not overwrite:  # fail before any work
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out = volume.to_source()
    header = volume.source.header.copy() if volume.source is not None and volume.source.header is not None else None
    array = out.array
    if dtype is not None:
        array = array.astype(dtype)
    elif out.label:
        array = array.astype(label_dtype(int(array.max(initial=0))))
    img = nib.Nifti1Image(array, out.affine, header=header)
    if header is not None:
        img.set_qform(out.affine, code=int(header["qform_code"]) or 1)
        img.set_sform(out.affine, code=int(header["sform_code"]) or 1)
    else:
        img.set_qform(out.affine, code=1)
        img.set_sform(out.affine, code=1)
    img.header.set_data_dtype(array.dtype)
    if out.label or dtype is not None:
        img.header["scl_slope"] = np.nan
        img.header["scl_inter"] = np.nan
    if not keep_identifiers:
        for key in _IDENTIFYING_NIFTI_FIELDS:
            img.header[key] = b""
    with atomic_output(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
