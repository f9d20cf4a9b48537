"""The Segmenter's internal API and its fitted value (what evaluation/, session.py and server/ use)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fewshotcx import Segmenter, Volume
from fewshotcx.backends.base import Fitted
from fewshotcx.predictor import Predictor


class DrawBackend:
    """Probabilities drawn from the generator, scaled by the pool's mean label: the output depends on
    both the draws and the pool a backend was conditioned on."""

    name, slice_size, context, resize_mode = "draw", 16, 0, "stretch"
    device = torch.device("cpu")

    def condition(self, support, generator, pools={}, own_scan=False):
        return Fitted(support, pools, None, own_scan)

    def predict_slices(self, fitted, slabs, geometry, generator):
        scale = fitted.pools[geometry.axis].labels.float().mean()
        return scale * torch.rand(slabs.shape[0], 1, 16, 16, generator=generator)

    def bytes_per_slab(self, fitted=None):
        return 1 << 20


class OldDrawBackend:
    """:class:`DrawBackend` in the 0.3 protocol: state stored on the backend by ``fit``."""

    name, slice_size, context, resize_mode = "draw", 16, 0, "stretch"
    device = torch.device("cpu")

    def fit(self, pools, generator):
        self.pools = pools

    def predict_slices(self, slabs, geometry, generator):
        scale = self.pools[geometry.axis].labels.float().mean()
        return scale * torch.rand(slabs.shape[0], 1, 16, 16, generator=generator)

    def bytes_per_slab(self):
        return 1 << 20


def fitted(backend=None) -> tuple[Segmenter, Volume]:
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(size=(16, 16, 8)).astype(np.float32), np.eye(4))
    label = np.zeros((16, 16, 8), np.uint8)
    label[:10] = 1
    seg = Segmenter(backend=backend or DrawBackend(), modality="mr", progress=False, seed=3, threshold=0.3)
    return seg.fit([image], [Volume(label, np.eye(4), label=True)]), image


def test_canonical_probabilities_and_labels_from_match_predict():
    seg, image = fitted()
    original, canonical, probs = seg.canonical_probabilities(image)
    assert original is image and probs.shape == (1, 16, 16, 8) and probs.dtype == np.float32
    assert np.array_equal(seg.labels_from(probs), seg.predict(image).array)
    _, _, same = seg.canonical_probabilities(image, seg.generator())
    _, _, other = seg.canonical_probabilities(image, torch.Generator().manual_seed(99))
    assert np.array_equal(same, probs) and not np.array_equal(other, probs)


def test_generator_is_fresh_and_seeded():
    seg, _ = fitted()
    assert torch.equal(torch.rand(4, generator=seg.generator()), torch.rand(4, generator=seg.generator()))
    assert seg.generator().initial_seed() == 3


def test_support_pools_is_a_read_only_view():
    seg, _ = fitted()
    assert set(seg.support_pools) == {2} and seg.support_pools[2] is seg.pools[2]
    with pytest.raises(TypeError):
        seg.support_pools[0] = seg.pools[2]  # type: ignore[index]


def test_the_fitted_value_is_frozen_and_fit_rebinds_it():
    seg, image = fitted()
    value = seg.fitted
    assert isinstance(value, Fitted) and seg.pools is value.pools
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.state = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.pools[2].images = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        value.pools[0] = value.pools[2]  # type: ignore[index]
    seg.fit([image], [Volume(np.ones(image.shape, np.uint8), np.eye(4), label=True)])
    assert seg.fitted is not value and value.pools[2].labels.mean() < 1  # the old value is as it was


def test_draws_and_refits_are_new_values_and_leave_the_predictor():
    seg, image = fitted()
    predictor = seg.predictor
    before = seg.predict_proba(image).array
    pool = seg.pools[2]
    empty = dataclasses.replace(pool, labels=pool.labels * 0)
    support = dataclasses.replace(seg.support, labels=tuple(v.with_array(v.array * 0) for v in seg.support.labels))
    other = predictor.refit(support)
    assert isinstance(other, Predictor) and other.fitted is not predictor.fitted
    draw = predictor.draw(seed=5, fraction=0.5)
    assert draw.seed == 5 and len(draw.fitted.pools[2]) == len(pool) // 2 and draw.fitted is not seg.fitted
    assert dataclasses.replace(predictor, fitted=Fitted(None, {2: empty})).probabilities(
        predictor.query(image)).max() == 0  # an all-empty pool scales every draw to 0
    assert seg.fitted is predictor.fitted and seg.pools[2] is pool
    assert np.array_equal(seg.predict_proba(image).array, before)


def test_a_backend_of_the_old_protocol_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="0.3 backend protocol"):
        old, image = fitted(OldDrawBackend())
    new, _ = fitted()
    assert np.array_equal(old.predict_proba(image).array, new.predict_proba(image).array)
    assert np.array_equal(old.predict_uncertainty(image, draws=2).array, new.predict_uncertainty(image, draws=2).array)
    assert not hasattr(old.backend.inner, "pools")  # fitting conditions a copy
