"""Multi-atlas segmentation: register every support scan to the query, warp its labels, fuse them.

This is how radiotherapy departments contour with a few labelled patients today (deformable
registration + label fusion), offered through the same :class:`~fewshotcx.Segmenter` API::

    seg = fx.Segmenter(backend="atlas", fusion="staple", registration="deformable")
    seg.fit(images=[ct1, ct2, ct3], labels=[lab1, lab2, lab3]).predict(query)

Fusion (per foreground class ``c``, at each query voxel, among the atlases whose field of view and
labelled slices cover it — an atlas that does not see a voxel does not vote there):

* ``"majority"``: vote fraction ``#{a : L_a = c} / #{a}``;
* ``"staple"``: SimpleITK's STAPLE (Warfield et al. 2004), one class against the rest, returning
  each voxel's posterior probability of ``c``; voxels no atlas covers get 0;
* ``"weighted"``: locally weighted voting: atlas ``a`` weighs ``exp(-(D_a - min_b D_b) / h)`` with
  ``D_a`` the Gaussian-smoothed (``sigma`` voxels) squared difference between the warped atlas image
  and the query (normalised intensities) and ``h`` = ``temperature``; the probability is the
  weighted vote fraction.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import NamedTuple, Optional

import numpy as np
import torch
from scipy import ndimage

from ..io.volume import Volume
from ..pipeline.support import SupportVolumes
from ..registration import MODES, Registration, RegistrationError, coverage, register, warp

FUSIONS = ("majority", "staple", "weighted")


class RegisteredAtlas(NamedTuple):
    """One support volume brought onto the query's grid.

    Attributes:
        image: the support's normalised image (``[0, 1]``), warped; 0 outside its field of view.
        labels: its label map, warped (nearest neighbour).
        registration: query → support mapping and its quality check.
        known: ``(X, Y, Z)`` bool, the query voxels this atlas covers with labelled slices.
    """

    image: Volume
    labels: Volume
    registration: Registration
    known: np.ndarray


class AtlasBackend:
    """The ``"atlas"`` :class:`~fewshotcx.backends.base.VolumeBackend`.

    Args:
        fusion: ``"majority"``, ``"staple"`` or ``"weighted"`` (see the module docstring).
        registration: ``"rigid"``, ``"affine"`` or ``"deformable"``.
        device: where the returned probabilities live (registration itself runs on the CPU).
        skip_failed: drop support volumes whose registration fails or is refused (with a warning)
            instead of raising; an error is still raised when none is left.
        sigma: smoothing (voxels) of the squared difference for ``"weighted"``.
        temperature: ``h`` of ``"weighted"``, in squared normalised-intensity units.
        **register_options: passed to :func:`fewshotcx.registration.register` (``working_spacing``,
            ``iterations``, ``threads``, ...).
    """

    name = "atlas"

    def __init__(self, fusion: str = "majority", registration: str = "deformable",
                 device: torch.device = torch.device("cpu"), skip_failed: bool = False,
                 sigma: float = 2.0, temperature: float = 0.01, **register_options) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if registration not in MODES:
            raise ValueError(f"registration must be one of {', '.join(MODES)}, got {registration!r}")
        unknown = set(register_options) - {"working_spacing", "sampling", "iterations", "demons_iterations",
                                           "smoothness", "threads"}
        if unknown:
            raise ValueError(f"backend 'atlas' does not take {', '.join(sorted(unknown))}")
        self.fusion, self.registration = fusion, registration
        self.device = torch.device(device)
        self.skip_failed = bool(skip_failed)
        self.sigma, self.temperature = float(sigma), float(temperature)
        self.register_options = register_options
        self.support: Optional[SupportVolumes] = None
        self._cache: dict[tuple[int, str, int], RegisteredAtlas] = {}

    def fit_volumes(self, support: SupportVolumes, generator: torch.Generator) -> None:
        """Store the support (registration waits for a query)."""
        self.support = support
        self._cache = {}

    def registered_support(self, query: Volume, seed: int = 0) -> list[RegisteredAtlas]:
        """Every support volume registered to ``query`` (canonical) and warped onto its grid.

        Cached per (support index, query fingerprint, seed) within this backend, so
        ``predict_proba`` then ``predict`` (or a hybrid) register once.

        Raises:
            RegistrationError: a registration failed or was refused (naming the support volume), or
                with ``skip_failed``, all of them did.
        """
        if self.support is None:
            raise RuntimeError("call fit_volumes() first")
        key = _fingerprint(query)
        atlases, failures = [], []
        for index in range(len(self.support.images)):
            entry = self._cache.get((index, key, seed))
            if entry is None:
                try:
                    entry = self._register(index, query, seed)
                except RegistrationError as err:
                    if not self.skip_failed:
                        raise
                    warnings.warn(f"skipping {err}", stacklevel=2)
                    failures.append(str(err))
                    continue
                self._cache = {**self._cache, (index, key, seed): entry}
            atlases.append(entry)
        if not atlases:
            raise RegistrationError(f"no support volume could be registered to the query: {failures[0]}")
        return atlases

    def _register(self, index: int, query: Volume, seed: int) -> RegisteredAtlas:
        support = self.support
        image, labels = support.images[index], support.labels[index]
        path = image.source.path if image.source is not None else None
        name = f"support volume {index}" + (f" ({path})" if path else "")
        reg = register(image, query, mode=self.registration, seed=seed, modality=support.modality, name=name,
                       **self.register_options)
        labelled = np.ones(image.shape, dtype=np.uint8)
        if support.slices is not None and support.slices[index] is not None:
            labelled[:] = 0
            labelled[:, :, list(support.slices[index])] = 1
        return RegisteredAtlas(
            image=warp(image.with_array(support.normalised[index], label=False), reg, query, default=0.0),
            labels=warp(labels, reg, query, label=True),
            registration=reg,
            known=coverage(image.with_array(labelled, label=True), reg, query),
        )

    def predict_volume(self, query: Volume, normalised: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(L, X, Y, Z)`` fused probabilities on the query's canonical grid."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        atlases = self.registered_support(query, seed)
        known = np.stack([a.known for a in atlases])  # (A, X, Y, Z)
        labels = np.stack([a.labels.array for a in atlases])
        if self.fusion == "weighted":
            target = normalised.detach().float().cpu().numpy()
            weights = self._local_weights(np.stack([a.image.array for a in atlases]), target, known)
        else:
            weights = known.astype(np.float32)
        probs = [self._fuse(labels == c, weights, known) for c in self.support.classes]
        return torch.as_tensor(np.stack(probs), dtype=torch.float32, device=self.device)

    def _fuse(self, votes: np.ndarray, weights: np.ndarray, known: np.ndarray) -> np.ndarray:
        """One class: ``votes`` ``(A, X, Y, Z)`` bool → ``(X, Y, Z)`` probability."""
        if self.fusion == "staple":
            return _staple(votes, known)
        total = weights.sum(axis=0)
        return np.divide((weights * votes).sum(axis=0), total, out=np.zeros(total.shape, np.float32), where=total > 0)

    def _local_weights(self, images: np.ndarray, target: np.ndarray, known: np.ndarray) -> np.ndarray:
        """``(A, X, Y, Z)`` per-voxel weights of each atlas from local intensity agreement."""
        distance = np.stack([ndimage.gaussian_filter((image - target) ** 2, self.sigma) for image in images])
        distance = np.where(known, distance, np.inf)
        best = distance.min(axis=0, initial=np.inf)
        best = np.where(np.isfinite(best), best, 0.0)
        return np.exp(-(distance - best) / self.temperature).astype(np.float32)


def _staple(votes: np.ndarray, known: np.ndarray) -> np.ndarray:
    """STAPLE posterior of one class from ``(A, X, Y, Z)`` binary votes (SimpleITK)."""
    import SimpleITK as sitk

    if not votes.any():
        return np.zeros(votes.shape[1:], dtype=np.float32)
    images = [sitk.GetImageFromArray(v.astype(np.uint8)) for v in votes]
    staple = sitk.STAPLEImageFilter()
    staple.SetForegroundValue(1)
    posterior = sitk.GetArrayFromImage(staple.Execute(images)).astype(np.float32)
    return np.where(known.any(axis=0), np.nan_to_num(posterior), 0.0).astype(np.float32)


def _fingerprint(volume: Volume) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(volume.array).tobytes())
    digest.update(np.ascontiguousarray(volume.affine).tobytes())
    return digest.hexdigest()
