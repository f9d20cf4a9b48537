"""The fitted model as a value: condition a backend on a support, predict with the result.

A :class:`Predictor` is everything one prediction reads (the backend, its :class:`Fitted` value, the
plane axes, the seed, thresholding and post-processing) and nothing else: it is immutable, and
:meth:`Predictor.probabilities` is a pure function of ``(predictor, query)``. The
:class:`~fewshotcx.Segmenter` keeps its settings and its latest fit and hands out a ``Predictor``
per call (:attr:`~fewshotcx.Segmenter.predictor`); ``complete``, uncertainty draws and calibration
folds derive their own values from it (:meth:`Predictor.refit`, :meth:`Predictor.draw`) and never
change the one they came from. Everything here lies below :mod:`fewshotcx.evaluation`, which receives
predictors and never names the Segmenter (docs/architecture.md).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
import torch

from .backends.base import Backend, Fitted, QueryAwareBackend, VolumeBackend
from .io.volume import PathLike, Volume, VolumeError, label_dtype, load_volume
from .pipeline.inference import slab_probabilities
from .pipeline.intensity import decide_modality, looks_like_ct, normalize
from .pipeline.postprocess import postprocess
from .pipeline.slicing import Framing, relative_position
from .pipeline.support import (BAGGING_KEY, SupportPool, SupportVolumes, build_pool, check_support, derived_generator,
                               subsample_pool, support_classes)
from .progress import show_progress

VolumeLike = Union[Volume, PathLike]
#: A slab backend, a volume backend, or a hybrid (:mod:`fewshotcx.backends.base`).
AnyBackend = Union[Backend, VolumeBackend]


def support_volumes(images: Sequence[Volume], labels: Sequence[Volume], slices: Optional[Sequence], modality: str,
                    window: Optional[tuple[float, float]], seed: int, axes: Sequence[int]) -> SupportVolumes:
    """Checked, normalised support: one intensity decision (``modality`` ``"auto"``/``"ct"``/``"mr"``)
    for every volume.

    Args:
        slices: per volume, its labelled axial indices (``None`` = all); needs ``axes == [2]``.
    Raises:
        VolumeError: mismatched pairs, empty labels, ``slices`` with other planes.
    """
    check_support(images, labels)
    if slices is not None and list(axes) != [2]:
        raise VolumeError("slices= (partially labelled volumes) needs axis='axial'")
    if slices is not None and len(slices) != len(images):
        raise VolumeError("slices must give one entry (or None) per support volume")
    chosen = None if slices is None else tuple(None if z is None else tuple(int(k) for k in z) for z in slices)
    decided = decide_modality([v.array for v in images], modality)
    return SupportVolumes(images=tuple(images), labels=tuple(labels),
                          normalised=tuple(normalize(v.array, decided, window) for v in images),
                          slices=chosen, classes=support_classes(labels, chosen), modality=decided, seed=seed)


def condition(backend: AnyBackend, support: SupportVolumes, axes: Sequence[int], generator: torch.Generator,
              device: torch.device, own_scan: bool = False) -> Fitted:
    """``backend`` conditioned on ``support``: slab pools cut along ``axes`` under the backend's framing
    (slab backends), then ``backend.condition``. The backend is left as it was."""
    pools = {}
    if isinstance(backend, Backend):
        framing = Framing.of(backend)
        pools = {axis: build_pool(support.normalised, support.labels, axis, framing, support.slices, support.classes,
                                  device=device) for axis in axes}
    return backend.condition(support, generator, pools=pools, own_scan=own_scan)


@dataclass(frozen=True)
class Query:
    """One query ready to predict: as given, in canonical (closest RAS) layout, and ``normalised``
    ``(X, Y, Z)`` float32 in ``[0, 1]`` on the predictor's device."""

    original: Volume
    canonical: Volume
    normalised: torch.Tensor


@dataclass(frozen=True)
class Predictor:
    """A fitted backend and how to predict with it (see the module docstring).

    Attributes:
        backend: the slab and/or volume backend (holds the model and its settings, no fitted state).
        fitted: the backend's :class:`Fitted` value (``None`` before a fit).
        axes: plane axes averaged by the slab path.
        seed: seeds every draw of a prediction (a fresh CPU generator per prediction).
        fraction: bagging of an uncertainty draw: the share of the support each query draws from.
        modality, window: the intensity settings (``modality`` ``"auto"`` warns on a query that looks
            unlike the support).
        threshold, postprocess: how probabilities become labels (:meth:`labels`).
    """

    backend: AnyBackend
    fitted: Optional[Fitted]
    axes: tuple[int, ...]
    seed: int
    device: torch.device
    memory_budget: int
    threshold: float = 0.5
    postprocess: tuple[str, ...] = ()
    modality: str = "auto"
    window: Optional[tuple[float, float]] = None
    progress: bool = False
    fraction: float = 1.0

    @property
    def conditioned(self) -> Fitted:
        """:attr:`fitted`, or a RuntimeError saying to fit first."""
        if self.fitted is None:
            raise RuntimeError("call fit() with labelled support volumes before predicting")
        return self.fitted

    @property
    def classes(self) -> tuple[int, ...]:
        """Label values predicted, in channel order."""
        return self.conditioned.classes

    def generator(self, seed: Optional[int] = None) -> torch.Generator:
        """A fresh CPU generator seeded with ``seed`` (default :attr:`seed`): the same draws on every device."""
        return torch.Generator(device="cpu").manual_seed(self.seed if seed is None else int(seed))

    # ------------------------------------------------------------------ derived values
    def refit(self, support: SupportVolumes, axes: Optional[Sequence[int]] = None, own_scan: bool = False
              ) -> "Predictor":
        """A predictor conditioned on ``support`` (on ``axes``, default the same), seeded as this one."""
        axes = tuple(self.axes if axes is None else axes)
        fitted = condition(self.backend, support, axes, self.generator(), self.device, own_scan)
        return replace(self, fitted=fitted, axes=axes, fraction=1.0)

    def draw(self, seed: int, fraction: float = 1.0) -> "Predictor":
        """An independent draw: its own ``seed`` and a random ``fraction`` of the support.

        A backend that prepares support per query (UniverSeg, ``universeg+atlas``) bags whatever support
        each query gets (registered support included, sharing this value's registrations); any other
        slab backend is conditioned again, with the draw's seed, on a random ``fraction`` of each pool
        (``derived_generator(seed, BAGGING_KEY)``); a volume backend without a support to bag gets the seed.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        fitted, backend = self.conditioned, self.backend
        if isinstance(backend, (QueryAwareBackend, VolumeBackend)) or not fitted.pools:
            return replace(self, seed=int(seed), fraction=float(fraction))
        bagging = derived_generator(seed, BAGGING_KEY)
        pools = {axis: subsample_pool(pool, fraction, bagging) for axis, pool in fitted.pools.items()}
        return replace(self, seed=int(seed), fitted=backend.condition(fitted.support, self.generator(seed),
                                                                      pools=pools, own_scan=fitted.own_scan))

    # ------------------------------------------------------------------ prediction
    def query(self, volume: VolumeLike) -> Query:
        """Read ``volume`` (a path is read in its own layout), reorient it to canonical and normalise it
        as the support was."""
        support = self.conditioned.support
        original = volume if isinstance(volume, Volume) else load_volume(volume)
        canonical = original.canonical()
        looks = support.modality if self.modality != "auto" else "ct" if looks_like_ct(canonical.array) else "mr"
        if looks != support.modality:
            warnings.warn(f"the query looks like {looks.upper()} but the support was normalised as "
                          f"{support.modality.upper()}; the query is normalised the same way as the support "
                          "(pass modality='ct' or 'mr' to decide)", stacklevel=4)
        normalised = normalize(canonical.array, support.modality, self.window)
        return Query(original, canonical, torch.as_tensor(normalised, device=self.device))

    def probabilities(self, query: Query, axes: Optional[Sequence[int]] = None) -> np.ndarray:
        """``(L, X, Y, Z)`` float32 probabilities in ``[0, 1]`` on the query's canonical grid (``L`` =
        :attr:`classes`), before thresholding; ``axes`` overrides the plane axes of the slab path."""
        fitted, generator, backend = self.conditioned, self.generator(), self.backend
        if isinstance(backend, VolumeBackend):
            probs = backend.predict_volume(fitted, query.canonical, query.normalised, generator, fraction=self.fraction)
        else:
            if isinstance(backend, QueryAwareBackend):  # per-query support, local to this prediction
                fitted = backend.for_query(fitted, query.canonical, query.normalised, generator, self.fraction)
            probs = slab_probabilities(backend, fitted, query.normalised, query.canonical.spacing,
                                       self.axes if axes is None else axes, generator, self.memory_budget,
                                       show_progress(self.progress))
        return probs.clamp(0, 1).float().cpu().numpy()

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """``(L, X, Y, Z)`` canonical probabilities → ``(X, Y, Z)`` canonical label map: argmax over the
        structures above :attr:`threshold`, then :attr:`postprocess`."""
        values = np.asarray(self.classes, dtype=np.int64)
        fg = probs.max(axis=0) > self.threshold
        labels = np.where(fg, values[probs.argmax(axis=0)], 0).astype(label_dtype(int(values.max())))
        if self.postprocess:
            support = self.conditioned.support
            labels = postprocess(labels, self.postprocess, foreground_extent(support.labels, support.slices))
        return labels


class HasPredictor(Protocol):
    """Anything that hands out its fitted model as a :class:`Predictor` (the :class:`~fewshotcx.Segmenter`)."""

    @property
    def predictor(self) -> Predictor: ...


def as_predictor(model: "Predictor | HasPredictor") -> Predictor:
    """``model`` itself if it is a :class:`Predictor`, else its ``predictor`` (read once: one immutable
    value, whatever the model does meanwhile)."""
    return model if isinstance(model, Predictor) else model.predictor


def foreground_extent(labels: Sequence[Volume], slices: Optional[Sequence] = None) -> tuple[float, float]:
    """Relative axial range ``(lo, hi)`` in ``[0, 1]`` covered by labelled foreground across the support
    (only the labelled ``slices`` count when given: unlabelled slices must not leak into predictions)."""
    lo, hi = 1.0, 0.0
    for i, lab in enumerate(labels):
        z = np.nonzero(lab.array.any(axis=(0, 1)))[0]
        if slices is not None and slices[i] is not None:
            z = np.intersect1d(z, np.asarray(slices[i], dtype=int))
        if z.size == 0:
            continue
        depth = lab.shape[2]
        lo, hi = min(lo, relative_position(z.min(), depth)), max(hi, relative_position(z.max(), depth))
    return lo, hi


# ---------------------------------------------------------------------- backends of the 0.3 protocol
def adopt(backend: Any) -> AnyBackend:
    """``backend`` if it conditions into a value (``condition``), else an adapter around a backend of the
    0.3 protocol (``fit``/``fit_volumes`` storing state on itself; deprecated, with a warning): each
    conditioning fits a shallow copy, which becomes the :class:`Fitted` value's ``state``."""
    if hasattr(backend, "condition"):
        return backend
    if not (hasattr(backend, "fit") or hasattr(backend, "fit_volumes")):
        raise ValueError(f"backend must be a name or a Backend/VolumeBackend object, got {type(backend).__name__}")
    warnings.warn(f"{type(backend).__name__} implements the 0.3 backend protocol (fit + predict without a fitted "
                  "value), deprecated: implement condition(support, generator, pools, own_scan) -> Fitted "
                  "(docs/howto-custom-model.md)", DeprecationWarning, stacklevel=3)
    return LegacyVolumeBackend(backend) if hasattr(backend, "predict_volume") else LegacySlabBackend(backend)


class LegacySlabBackend:
    """A 0.3 slab backend behind the :class:`Backend` protocol (see :func:`adopt`); other attributes
    are the wrapped backend's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        fitted = copy.copy(self.inner)
        if pools:
            fitted.fit(dict(pools), generator)
        if hasattr(fitted, "fit_volumes"):
            fitted.fit_volumes(support, generator)
        return Fitted(support, pools, fitted, own_scan)

    def predict_slices(self, fitted: Fitted, slabs: torch.Tensor, geometry: Any, generator: torch.Generator
                       ) -> torch.Tensor:
        return fitted.state.predict_slices(slabs, geometry, generator)

    def bytes_per_slab(self, fitted: Optional[Fitted] = None) -> int:
        return (self.inner if fitted is None else fitted.state).bytes_per_slab()


class LegacyVolumeBackend(LegacySlabBackend):
    """A 0.3 volume (or hybrid) backend behind the :class:`VolumeBackend` protocol (see :func:`adopt`)."""

    predict_slices = property(lambda self: self.inner.predict_slices)  # present exactly when the inner has it

    def predict_volume(self, fitted: Fitted, query: Volume, normalised: torch.Tensor, generator: torch.Generator,
                       fraction: float = 1.0) -> torch.Tensor:
        return fitted.state.predict_volume(query, normalised, generator)
