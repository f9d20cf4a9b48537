"""The Segmenter's internal API (what evaluation/, session.py and server/ use instead of private members)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshotcx import Segmenter, Volume


class DrawBackend:
    """Probabilities drawn from the generator, scaled by the pool's mean label: the output depends on
    both the draws and the pool a backend was fitted on."""

    name, slice_size, context, resize_mode = "draw", 16, 0, "stretch"
    device = torch.device("cpu")

    def fit(self, pools, generator):
        self.pools = pools

    def predict_slices(self, slabs, geometry, generator):
        scale = self.pools[geometry.axis].labels.float().mean()
        return scale * torch.rand(slabs.shape[0], 1, 16, 16, generator=generator)

    def bytes_per_slab(self):
        return 1 << 20


def fitted() -> tuple[Segmenter, Volume]:
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(size=(16, 16, 8)).astype(np.float32), np.eye(4))
    label = np.zeros((16, 16, 8), np.uint8)
    label[:10] = 1
    seg = Segmenter(backend=DrawBackend(), modality="mr", progress=False, seed=3, threshold=0.3)
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


def test_copy_with_refits_a_copy_and_leaves_the_original():
    seg, image = fitted()
    before = seg.predict_proba(image).array
    pool = seg.pools[2]
    half = type(pool)(pool.images[:4], pool.labels[:4] * 0, pool.positions[:4], pool.volume_ids[:4], pool.classes,
                      pool.axis)
    clone = seg.copy_with(seed=5, axes=[2], pools={2: half})
    assert clone.backend is not seg.backend and clone.backend.pools[2] is not pool and clone.seed == 5
    assert clone.canonical_probabilities(image)[2].max() == 0  # an all-empty pool scales every draw to 0
    assert seg.backend.pools[2] is pool and np.array_equal(seg.predict_proba(image).array, before)
    assert seg.copy_with().backend is seg.backend and seg.copy_with(own_backend=True).backend is not seg.backend
