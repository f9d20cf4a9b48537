"""The SAM backend end to end through fx.Segmenter, on a tiny random Sam and synthetic volumes.

No real SAM checkpoint exists on the test machine: the tiny model has random weights, so these tests
check that the machinery learns from the support and generalises to another volume, not SAM quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewshotcx as fx
from fewshotcx.evaluation.metrics import dice
from fewshotcx.models.sam import tiny_sam

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def ellipsoid(shape, centre, axes, seed) -> tuple[fx.Volume, np.ndarray]:
    """A bright ellipsoid on a textured background (with empty slices above and below it)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    label = ((((grid - centre) / axes) ** 2).sum(-1) <= 1).astype(np.uint8)
    image = 0.3 + 0.1 * rng.normal(size=shape) + 0.1 * np.sin(grid[..., 0] / 2 + grid[..., 1] / 3) + 0.4 * label
    return fx.Volume(np.clip(image, 0, 1).astype(np.float32), AFFINE), label


@pytest.fixture(scope="module")
def data():
    support, support_label = ellipsoid((24, 24, 12), (12, 11, 6), (7, 6, 3.5), seed=0)
    query, query_label = ellipsoid((26, 22, 12), (10, 12, 5), (6, 5, 3), seed=1)
    return support, fx.Volume(support_label, AFFINE, label=True), query, query_label


def _segmenter(model, **options) -> fx.Segmenter:
    return fx.Segmenter(backend="sam", model=model, device="cpu", progress=False, **options)


class EncoderCounter:
    """Counts images through a Sam's image encoder with a forward hook."""

    def __init__(self, model) -> None:
        self.images = 0
        self.handle = model.image_encoder.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.images += inputs[0].shape[0]


@pytest.fixture(scope="module")
def tuned(data):
    """Prompts tuned on the support volume. A random tiny decoder carries no pretrained "segment the
    prompted thing" knowledge to steer, so here the prompts are tuned together with the decoder."""
    support, support_label, _, _ = data
    seg = _segmenter(tiny_sam(seed=0), tune_steps=200, tune_decoder=True, decoder_lr=1e-3)
    return seg.fit([support], [support_label])


def test_prompt_tuning_generalises_to_another_volume_and_beats_untuned(data, tuned):
    support, support_label, query, query_label = data
    untuned = _segmenter(tiny_sam(seed=0), tune_steps=0).fit([support], [support_label])
    tuned_dice = dice(tuned.predict(query).array, query_label)
    untuned_dice = dice(untuned.predict(query).array, query_label)
    assert tuned_dice >= 0.7
    assert tuned_dice > untuned_dice + 0.2
    losses = tuned.fitted.state[2].losses
    assert len(losses) == 200 and np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])


def test_prompts_alone_learn_the_support_with_a_frozen_decoder(data):
    support, support_label, query, query_label = data
    tiny = tiny_sam(seed=0)
    decoder_before = {k: v.clone() for k, v in tiny.mask_decoder.state_dict().items()}
    seg = _segmenter(tiny, tune_steps=150).fit([support], [support_label])
    losses = seg.fitted.state[2].losses
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    assert dice(seg.predict(support).array, support_label.array) > 0.6
    for key, value in seg.fitted.state[2].source.decoder.state_dict().items():
        assert torch.equal(value, decoder_before[key])  # frozen decoder: only the prompts moved
    for key, value in tiny.mask_decoder.state_dict().items():
        assert torch.equal(value, decoder_before[key])  # the caller's model is never modified


def test_embedding_cache_makes_repeated_prediction_encoder_free(data):
    support, support_label, query, _ = data
    tiny = tiny_sam(seed=0)
    counter = EncoderCounter(tiny)
    seg = _segmenter(tiny, tune_steps=30).fit([support], [support_label])
    assert counter.images == support.shape[2]  # every support slab once; tuning steps reuse the cache
    seg.predict_proba(query)
    first = counter.images - support.shape[2]
    assert first == query.shape[2]
    before = counter.images
    again = seg.predict_proba(query)
    second = counter.images - before
    assert first >= 10 and second == 0  # ≥ 10× fewer encoder passes (none at all) the second time
    counter.handle.remove()
    # cached embeddings give what the encoder gives: compare with a segmenter that caches nothing
    uncached = _segmenter(tiny, tune_steps=30, cache_bytes=0).fit([support], [support_label])
    assert np.allclose(again.array, uncached.predict_proba(query).array, atol=1e-5)


def test_disk_cache_is_reused_by_a_new_backend(data, tmp_path):
    support, support_label, query, _ = data
    tiny = tiny_sam(seed=0)
    first = _segmenter(tiny, tune_steps=0, cache_dir=tmp_path).fit([support], [support_label])
    expected = first.predict_proba(query).array
    assert len(list(tmp_path.glob("*.pt"))) == support.shape[2] + query.shape[2]
    counter = EncoderCounter(tiny)
    second = _segmenter(tiny, tune_steps=0, cache_dir=tmp_path).fit([support], [support_label])
    assert np.allclose(second.predict_proba(query).array, expected, atol=1e-6)  # read back, not just found
    assert counter.images == 0
    counter.handle.remove()


@pytest.mark.parametrize("seed", [0, 1])
def test_empty_query_slices_come_out_empty(data, tuned, seed):
    support, support_label, query, query_label = data
    seg = tuned if seed == 0 else _segmenter(tiny_sam(seed=seed), tune_steps=200, tune_decoder=True,
                                             decoder_lr=1e-3).fit([support], [support_label])
    assert seg.fitted.state[2].thresholds.item() > 0  # the support has empty slices to calibrate on
    probs = seg.predict_proba(query).array
    empty = query_label.sum(axis=(0, 1)) == 0
    assert empty.sum() >= 4
    assert probs[..., empty].max() == 0  # judged empty: zeroed, not merely low
    assert probs[..., ~empty].max() > 0.5
    blank = fx.Volume(np.full(query.shape, 0.3, np.float32), AFFINE)  # background only
    assert (seg.predict(blank).array > 0).sum() == 0


def test_support_size_caps_the_encoded_support(data):
    support, support_label, _, _ = data
    seg = _segmenter(tiny_sam(seed=0), tune_steps=3, support_size=5).fit([support], [support_label])
    assert seg.backend.encoder.encoded == 5


def test_multiclass_support_gives_one_channel_per_class(data):
    support, support_label, query, _ = data
    two = support_label.array.copy()
    two[:, :, :6][two[:, :, :6] == 1] = 2
    labels = fx.Volume(two, AFFINE, label=True)
    seg = _segmenter(tiny_sam(seed=0), tune_steps=5).fit([support], [labels])
    probs = seg.predict_proba(query)
    assert sorted(probs) == [1, 2] and probs[1].shape == query.shape
    assert seg.fitted.state[2].source.sparse.shape[:2] == (2, 4)
