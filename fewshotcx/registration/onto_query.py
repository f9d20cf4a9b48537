"""Support scans registered onto a query: the one path that ``strategy="registered"``/``"auto"``
(:func:`fewshotcx.pipeline.query_support.register_support`), ``backend="atlas"`` and
``backend="universeg+atlas"`` all take.

Each support volume is registered to the query (:func:`~fewshotcx.registration.register`, gate
included), and its normalised image, its labels and what it covers are resampled onto the query's
exact grid. Failures are raised (``strict``) or warned about and left out, naming the volume the same
way everywhere (:func:`volume_name`).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import MutableMapping, Optional, Sequence

import numpy as np

from ..io.volume import Volume
from .convert import RegistrationError
from .register import register
from .result import Registration
from .warping import coverage, warp


@dataclass(frozen=True)
class RegisteredVolume:
    """One support volume brought onto the query's grid.

    Attributes:
        image: ``(X, Y, Z)`` float32, the support's normalised image (``[0, 1]``) warped; 0 outside it.
        labels: its label map, warped (nearest neighbour), on the query's grid.
        registration: query → support mapping and its gate measures.
        known: ``(X, Y, Z)`` bool, the query voxels this volume covers with labelled slices.
    """

    image: np.ndarray
    labels: Volume
    registration: Registration
    known: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held (what a cache of these costs)."""
        return int(self.image.nbytes + self.labels.array.nbytes + self.known.nbytes)


def volume_name(index: int, volume: Optional[Volume] = None) -> str:
    """``"support volume 2 (p2_ct.nii.gz)"`` for ``index`` 1 (0-based): how every message names a support
    volume."""
    source = volume.source if volume is not None else None
    path = getattr(source, "path", None) if source is not None else None
    return f"support volume {index + 1}" + (f" ({path})" if path else "")


def fingerprint(volume: Volume) -> str:
    """SHA-1 of a volume's voxels and affine (cache key of a query)."""
    digest = hashlib.sha1(np.ascontiguousarray(volume.array).tobytes())
    digest.update(np.ascontiguousarray(volume.affine).tobytes())
    return digest.hexdigest()


def register_onto(image: Volume, labels: Volume, normalised: np.ndarray, query: Volume, mode: str, seed: int,
                  modality: str = "auto", name: Optional[str] = None, slices: Optional[Sequence[int]] = None,
                  **options) -> RegisteredVolume:
    """Register one support volume to ``query`` (canonical) and resample it onto the query's grid.

    Args:
        image: the support scan (original intensities).
        labels: its label map on the same grid.
        normalised: ``(X, Y, Z)`` float32 the support image as the backends see it.
        slices: labelled axial indices of the support (``None`` = all).
        **options: passed to :func:`~fewshotcx.registration.register`.
    Raises:
        RegistrationError: the registration failed or the gate refused it (naming the volume).
    """
    reg = register(image, query, mode=mode, seed=seed, modality=modality, name=name, **options)
    labelled = np.ones(image.shape, dtype=np.uint8)
    if slices is not None:
        labelled[:] = 0
        labelled[:, :, list(slices)] = 1
    warped = warp(image.with_array(normalised, label=False), reg, query, default=0.0)
    return RegisteredVolume(image=warped.array.astype(np.float32), labels=warp(labels, reg, query, label=True),
                            registration=reg, known=coverage(image.with_array(labelled, label=True), reg, query))


def register_support(images: Sequence[Volume], labels: Sequence[Volume], normalised: Sequence[np.ndarray],
                     query: Volume, mode: str, seed: int, modality: str = "auto",
                     slices: Optional[Sequence[Optional[Sequence[int]]]] = None, strict: bool = True,
                     who: str = "registration", cache: Optional[MutableMapping] = None,
                     **options) -> dict[int, RegisteredVolume]:
    """Every support volume registered onto ``query`` (:func:`register_onto`).

    Args:
        strict: raise on the first failure; else warn (``"<who>: ...; it is left out"``) and leave it out.
        who: what the messages say is registering (``"strategy='auto'"``, ``"backend 'atlas'"``).
        cache: a mapping to reuse registrations from, keyed by ``(index, query fingerprint, seed, mode)``;
            new ones, and failures (as their :class:`RegistrationError`), are stored into it (the caller
            bounds it, e.g. :class:`~fewshotcx.registration.RegistrationCache`).
    Returns:
        support index → :class:`RegisteredVolume`; failed volumes are missing.
    Raises:
        RegistrationError: ``strict`` and a volume failed, naming it.
    """
    key = fingerprint(query) if cache is not None else None
    aligned: dict[int, RegisteredVolume] = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        entry = None if cache is None else cache.get((i, key, seed, mode))
        if entry is None:
            try:
                entry = register_onto(image, label, normalised[i], query, mode, seed, modality,
                                      name=volume_name(i, image), slices=None if slices is None else slices[i],
                                      **options)
            except RegistrationError as err:
                entry = err
            if cache is not None:
                cache[(i, key, seed, mode)] = entry  # a failure is remembered too: never tried twice
        if isinstance(entry, RegistrationError):
            if strict:
                raise RegistrationError(f"{who}: {entry}") from None
            warnings.warn(f"{who}: {entry}; it is left out", stacklevel=3)
            continue
        aligned[i] = entry
    return aligned
