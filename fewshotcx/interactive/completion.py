"""The drawn-slice completion behind :class:`~fewshotcx.session.ContourSession`: each undrawn slice
predicted from its local support (the ``neighbours`` nearest drawn slices on each side), cached per
support, and :meth:`~DrawnCompletion.suggest`'s ranking of where to draw next (the session's module
docstring describes both).

A mixin: it reads the session's ``image`` (canonical), ``slices``, ``segmenter``, ``neighbours``,
``modality``, ``_drawn`` (canonical ``z`` → ``(mask, version)``), ``classes`` and ``declared``, and
keeps its cache in ``_cache``, ``_slabs``, ``_centre``, ``_label_slabs``, ``predicted_slices`` and
``cache_limit`` (set by the session's ``__init__``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..io.volume import VolumeError, label_dtype
from ..pipeline.intensity import normalize
from ..pipeline.postprocess import keep_drawn, postprocess
from ..pipeline.slicing import Framing, extract_slabs, from_model_square, relative_position
from ..pipeline.support import SupportPool

Key = tuple  # (support: ((z, version), ...), classes, leave_out)


class DrawnCompletion:
    """Completion of a structure from drawn axial slices (mixin of ``ContourSession``)."""

    @property
    def completes_slices(self) -> bool:
        """Whether the session's backend can predict slices from the drawn ones (a slab backend such
        as ``"universeg"``): :meth:`suggest`, :meth:`expected_errors` and an unfitted session's
        result need it; a fitted volume backend (``"atlas"``) only gives the starting contour."""
        return hasattr(self.segmenter.backend, "predict_slices")

    @property
    def _backend_name(self) -> str:
        return getattr(self.segmenter.backend, "name", type(self.segmenter.backend).__name__)

    def suggest(self, n: int = 1) -> list[int]:
        """Up to ``n`` undrawn slices (the image's own indices), best first, where drawing by hand would
        fix the most."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        credit = self._credit(self.expected_errors())
        return sorted(credit, key=lambda k: (-credit[k], k))[:n]

    def expected_errors(self) -> dict[int, float]:
        """Expected wrong voxels ``Σ |result − p|`` of each candidate slice (the image's own index →
        errors): undrawn slices inside the drawn range and the slice just beyond each end, ``p`` from
        leave-one-out support draws."""
        drawn = sorted(self._drawn)
        candidates = self._inside() + [z for z in (drawn[0] - 1, drawn[-1] + 1) if 0 <= z < self.depth]
        classes = self.classes
        mean = self._probabilities(candidates, samples=True)
        labels = self._canonical_result(self._probabilities(self._inside()))
        out = {}
        for z in candidates:
            one_hot = np.stack([labels[..., z] == c for c in classes]).astype(np.float32)
            out[self.slices.to_own(z)] = float(np.abs(one_hot - mean[z]).sum())
        return out

    def _credit(self, errors: dict[int, float]) -> dict[int, float]:
        """Each candidate ``c``'s share of the expected errors it would fix: a slice ``z`` at distance
        ``d(z)`` from its nearest drawn slice is credited ``e(z) · (d(z) − |z − c|) / d(z)`` when
        drawing ``c`` brings it closer (``c`` itself: all of ``e(c)``). Own or canonical indices alike:
        the distances are the same."""
        drawn = np.asarray(self.drawn)
        nearest = {z: int(np.abs(drawn - z).min()) for z in errors}
        return {c: sum(e * max(0, nearest[z] - abs(z - c)) / nearest[z] for z, e in errors.items())
                for c in errors}

    def _inside(self) -> list[int]:
        """Undrawn canonical slices between the first and the last drawn slice."""
        drawn = sorted(self._drawn)
        if not drawn:
            raise VolumeError("no slice drawn yet: draw one first")
        return [z for z in range(drawn[0], drawn[-1] + 1) if z not in self._drawn]

    def _canonical_result(self, probs: dict[int, np.ndarray]) -> np.ndarray:
        """Threshold the predicted slices, post-process, keep the drawn slices and extents."""
        classes = self.classes
        values = np.asarray(classes, dtype=np.int64)
        out = np.zeros(self.image.shape, dtype=label_dtype(int(max(values.max(), max(self.declared or (0,))))))
        for z, p in probs.items():
            out[..., z] = np.where(p.max(axis=0) > self.segmenter.threshold, values[p.argmax(axis=0)], 0)
        drawn = np.zeros(self.image.shape, dtype=out.dtype)  # drawn values are among the labels: they fit
        for z, (mask, _) in self._drawn.items():
            drawn[..., z] = mask
        done = sorted(self._drawn)
        out[..., done] = drawn[..., done]
        ops = tuple(op for op in self.segmenter.postprocess if op != "support_extent")
        if ops:
            out = postprocess(out, ops)
        return keep_drawn(out, drawn, done, classes)

    # ------------------------------------------------------------------ prediction with a cache
    def _support(self, z: int) -> tuple[int, ...]:
        """The ``neighbours`` nearest drawn (canonical) slices below and above canonical ``z``."""
        drawn = sorted(self._drawn)
        below = [d for d in drawn if d < z][-self.neighbours:]
        above = [d for d in drawn if d > z][:self.neighbours]
        return tuple(below + above)

    def _probabilities(self, slices: Sequence[int], samples: bool = False) -> dict[int, np.ndarray]:
        """``z -> (L, X, Y)`` probabilities from the local support (``samples``: the mean over the full
        support and each leave-one-out subset of it), computed only where not cached."""
        if not self.completes_slices:
            raise ValueError(f"completing or suggesting slices from the drawn ones needs a slab backend (e.g. "
                             f"'universeg'); this session's is {self._backend_name!r}")
        classes = self.classes
        wanted: dict[Key, list[int]] = {}
        keys = {}
        for z in slices:
            support = self._support(z)
            versions = tuple((d, self._drawn[d][1]) for d in support)
            leave = [None] + (list(range(len(support))) if samples and len(support) > 1 else [])
            keys[z] = [(versions, classes, drop) for drop in leave]
            for key in keys[z]:
                if (z,) + key not in self._cache:
                    wanted.setdefault(key, []).append(z)
        for key, zs in wanted.items():
            for z, prob in zip(zs, self._predict(key, zs)):
                self._cache[(z,) + key] = prob
        out = {z: np.mean([self._cache[(z,) + key] for key in keys[z]], axis=0) for z in slices}
        self._trim_cache()
        return out

    def _predict(self, key: Key, slices: list[int]) -> np.ndarray:
        """Condition the backend on the key's drawn slices (a local :class:`Fitted` value, ``own_scan``)
        and predict ``slices`` with it: ``(N, L, X, Y)`` float32."""
        versions, classes, drop = key
        support = [d for i, (d, _) in enumerate(versions) if i != drop]
        backend = self.segmenter.backend
        slabs = self._query_slabs()
        pool = SupportPool(
            images=slabs[support], labels=torch.stack([self._label_slab(d, classes) for d in support]),
            positions=relative_position(torch.tensor(support, dtype=torch.float32), self.depth).to(slabs.device),
            volume_ids=torch.zeros(len(support), dtype=torch.long, device=slabs.device), classes=classes, axis=2)
        generator = self.segmenter.generator()
        fitted = backend.condition(None, generator, pools={2: pool}, own_scan=True)
        geometry = self._geometry(self.image.shape, indices=slices, device=slabs.device)
        probs = backend.predict_slices(fitted, slabs[slices], geometry, generator)  # (N, L, s, s)
        self.predicted_slices += len(slices)
        return from_model_square(probs.float(), geometry).clamp(0, 1).cpu().numpy()  # not in place: may be an inference tensor

    def _query_slabs(self) -> torch.Tensor:
        """``(Z, 2k+1, s, s)`` slabs of every axial slice of the normalised image (computed once)."""
        if self._slabs is None:
            backend, device = self.segmenter.backend, self.segmenter.device
            normalised = torch.as_tensor(normalize(self.image.array, self.modality, self.segmenter.window), device=device)
            self._centre = Framing.of(backend).centre(normalised, 2)
            self._slabs = extract_slabs(normalised, self._geometry(self.image.shape, device=device))
        return self._slabs

    def _geometry(self, shape, indices=None, device=None, context=None):
        """Axial slab geometry of this image (or a one-slice label stack of its in-plane size) under the
        backend's framing, centred where the image's slabs are (:meth:`_query_slabs` sets the centre)."""
        framing = Framing.of(self.segmenter.backend)
        if framing.mode == "physical" and self._centre is None:
            self._query_slabs()  # sets the centre
        return framing.geometry(shape, self.image.spacing, 2, indices, device or self.segmenter.device,
                                self._centre, context)

    def _label_slab(self, z: int, classes: tuple[int, ...]) -> torch.Tensor:
        """``(L, s, s)`` one-hot label slab of drawn slice ``z`` (cached per drawing)."""
        mask, version = self._drawn[z]
        key = (z, version, classes)
        if key not in self._label_slabs:
            device = self.segmenter.device
            one_hot = torch.as_tensor(np.stack([mask == c for c in classes])[..., None], dtype=torch.float32,
                                      device=device)  # (L, X, Y, 1)
            geometry = self._geometry(one_hot.shape[1:], device=device, context=0)
            self._label_slabs[key] = extract_slabs(one_hot, geometry)[0].clamp_(0.0, 1.0)
        return self._label_slabs[key]

    def _trim_cache(self) -> None:
        """Drop the oldest slice predictions beyond :attr:`cache_limit` (default ``8 × depth``)."""
        limit = self.cache_limit if self.cache_limit is not None else 8 * self.depth
        while len(self._cache) > limit:
            self._cache.pop(next(iter(self._cache)))
