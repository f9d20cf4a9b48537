"""SimpleITK ↔ :class:`~fewshotcx.Volume` conversion (exact, also for oblique affines).

SimpleITK images are LPS with arrays ``(Z, Y, X)``; volumes are RAS with arrays ``(X, Y, Z)``.
:func:`to_sitk` and :func:`from_sitk` are each other's inverse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..io.volume import Volume, VolumeError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: RAS ↔ LPS: negate the first two world axes.
FLIP = np.diag([-1.0, -1.0, 1.0])


class RegistrationError(VolumeError):
    """A registration that failed or that the quality gate refused; the message names the volume."""


def load_sitk():
    """The SimpleITK module (a core dependency), imported on first use: ``import fewshotcx`` does not load it."""
    import SimpleITK as sitk

    return sitk


def to_sitk(volume: Volume, dtype=np.float32) -> "sitk.Image":
    """A SimpleITK image (LPS, ``(Z, Y, X)`` storage) with exactly ``volume``'s voxels and geometry.

    The image's index ``(i, j, k)`` is the volume's array index ``[i, j, k]``; spacing, direction and
    origin are taken from the RAS affine and flipped to LPS, so physical points agree with
    ``FLIP @ (affine @ (i, j, k, 1))``.
    """
    sitk = load_sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.astype(dtype, copy=False).transpose(2, 1, 0)))
    linear = FLIP @ volume.affine[:3, :3]
    spacing = np.sqrt((linear ** 2).sum(axis=0))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (linear / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in FLIP @ volume.affine[:3, 3]))
    return image


def sitk_affine(image: "sitk.Image") -> np.ndarray:
    """The ``(4, 4)`` RAS voxel → world matrix of a SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = FLIP @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = FLIP @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def from_sitk(image: "sitk.Image", label: bool = False) -> Volume:
    """The inverse of :func:`to_sitk`: a :class:`Volume` with array ``(X, Y, Z)`` and a RAS affine."""
    sitk = load_sitk()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(array), sitk_affine(image), label=label)


def mask_image(mask: np.ndarray, like: "sitk.Image") -> "sitk.Image":
    """A uint8 SimpleITK image of a ``(Z, Y, X)`` bool ``mask`` on ``like``'s grid."""
    sitk = load_sitk()
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(like)
    return image
