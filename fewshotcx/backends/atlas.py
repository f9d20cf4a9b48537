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

import warnings
from types import MappingProxyType
from typing import Mapping, Optional

import numpy as np
import torch
from scipy import ndimage

from ..io.volume import Volume
from ..pipeline.support import SupportPool, SupportVolumes
from ..registration import MODES, RegisteredVolume, RegistrationError, register_support, vote_share
from ..registration.cache import DEFAULT_CACHE_BYTES, RegistrationCache
from .base import Fitted

FUSIONS = ("majority", "staple", "weighted")


#: Back-compatible name: one support volume registered onto the query.
RegisteredAtlas = RegisteredVolume
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
        cache_bytes: most bytes of registered support kept between calls by one fitted value (LRU; a
            cohort worker's memory stays bounded however many patients it segments).
        **register_options: passed to :func:`fewshotcx.registration.register` (``working_spacing``,
            ``iterations``, ``threads``, ...).
    """

    name = "atlas"

    def __init__(self, fusion: str = "majority", registration: str = "deformable",
                 device: torch.device = torch.device("cpu"), skip_failed: bool = False,
                 sigma: float = 2.0, temperature: float = 0.01, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 **register_options) -> None:
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
        self.cache_bytes = int(cache_bytes)

    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """The support and a fresh registration memo (``state``, a :class:`RegistrationCache` of
        ``cache_bytes``); registration waits for a query."""
        return Fitted(support, {}, RegistrationCache(self.cache_bytes), own_scan)

    def registered_support(self, fitted: Fitted, query: Volume, seed: int = 0) -> list[RegisteredVolume]:
        """Every support volume of ``fitted`` registered to ``query`` (canonical) and warped onto its
        grid (:func:`fewshotcx.registration.register_support`).

        Memoised (LRU, ``cache_bytes``) per (support index, query fingerprint, seed, mode) in ``fitted``'s
        registration cache, so ``predict_proba`` then ``predict`` (or every uncertainty draw) register once.

        Raises:
            RegistrationError: a registration failed or was refused (naming the support volume), or
                with ``skip_failed``, all of them did.
        """
        if not isinstance(fitted.state, RegistrationCache):
            raise RuntimeError("condition the backend on a support first")
        support = fitted.support
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            aligned = register_support(support.images, support.labels, support.normalised, query,
                                       self.registration, seed, support.modality, support.slices,
                                       strict=not self.skip_failed, who="backend 'atlas'", cache=fitted.state,
                                       **self.register_options)
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if not aligned:
            raise RegistrationError(f"no support volume could be registered to the query: {caught[0].message}")
        return [aligned[i] for i in sorted(aligned)]

    def predict_volume(self, fitted: Fitted, query: Volume, normalised: torch.Tensor, generator: torch.Generator,
                       fraction: float = 1.0) -> torch.Tensor:
        """``(L, X, Y, Z)`` fused probabilities on the query's canonical grid (every atlas votes:
        ``fraction`` is not used)."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        atlases = self.registered_support(fitted, query, seed)
        classes = fitted.support.classes
        known = np.stack([a.known for a in atlases])  # (A, X, Y, Z)
        labels = [a.labels.array for a in atlases]
        if self.fusion == "staple":
            stacked = np.stack(labels)
            probs = np.stack([_staple(stacked == c, known) for c in classes])
        else:
            weights = known.astype(np.float32)
            if self.fusion == "weighted":
                target = normalised.detach().float().cpu().numpy()
                weights = self._local_weights(np.stack([a.image for a in atlases]), target, known)
            probs = vote_share(labels, classes, weights)
        return torch.as_tensor(probs, dtype=torch.float32, device=self.device)

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

