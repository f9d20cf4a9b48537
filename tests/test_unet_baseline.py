"""The from-scratch 2D U-Net baseline: it learns, and predicts on the query's own grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, blob_volume
from fewshotcx import Segmenter, Volume
from fewshotcx.evaluation.metrics import dice
from fewshotcx.models import UniverSeg
from fewshotcx.baselines.unet import UNet2d, UNetBackend, train_unet_2d, unet_predict_slabs


def _disc_slices(count: int = 6, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Textured images with a bright disc of random centre/radius, and the disc masks: (M, 1, s, s)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for _ in range(count):
        cy, cx, r = rng.uniform(10, size - 10), rng.uniform(10, size - 10), rng.uniform(4, 8)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        images.append(0.3 + 0.4 * mask + rng.normal(0, 0.05, mask.shape) + 0.1 * np.sin(xx / 3.0))
        labels.append(mask)
    to = lambda a: torch.as_tensor(np.stack(a)[:, None], dtype=torch.float32)  # noqa: E731
    return to(images).clamp(0, 1), to(labels)


def _dice(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Dice over the stack of slices: (M, 1, s, s) probabilities vs masks."""
    return dice((probs[:, 0] > 0.5).numpy(), labels[:, 0].numpy() > 0.5)


def test_unet_overfits_its_training_slices():
    images, labels = _disc_slices()
    model = train_unet_2d(images, labels, steps=50, seed=0, base_channels=8, augment=False, batch_size=6)
    probs = unet_predict_slabs(model, images)
    assert probs.shape == labels.shape
    assert _dice(probs, labels) > 0.9


def test_untrained_unet_does_not_score_like_a_trained_one():
    # The Dice > 0.9 above comes from training, not from the images being trivially thresholded.
    images, labels = _disc_slices()
    model = train_unet_2d(images, labels, steps=1, seed=0, base_channels=8, augment=False, lr=1e-6)
    probs = unet_predict_slabs(model, images)
    assert _dice(probs, labels) < 0.9


def test_training_is_seeded_and_augmentation_runs():
    images, labels = _disc_slices(count=3)
    a = train_unet_2d(images, labels, steps=2, seed=4, base_channels=4, flips=True)
    b = train_unet_2d(images, labels, steps=2, seed=4, base_channels=4, flips=True)
    c = train_unet_2d(images, labels, steps=2, seed=5, base_channels=4, flips=True)
    same = [torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())]
    assert all(same)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("orientation", ["LPS", "PIR"])
def test_predicts_on_the_query_grid_through_the_segmenter(orientation):
    affine = ORIENTATIONS[orientation]
    image, label = blob_volume(shape=(24, 20, 12), seed=1)
    seg = Segmenter(backend=UNetBackend(slice_size=32, context=1, steps=2, seed=0, base_channels=4), device="cpu",
                    progress=False)
    seg.fit([Volume(image, affine)], [Volume(label, affine, label=True)])
    (net,) = seg.fitted.state[2]
    assert (net.slice_size, net.context) == (32, 1)
    query = Volume(blob_volume(shape=(24, 20, 12), seed=2)[0], affine)
    prob = seg.predict_proba(query)
    assert prob.shape == query.shape and prob.same_grid(query) and not prob.label
    assert prob.array.dtype == np.float32 and 0.0 <= prob.array.min() and prob.array.max() <= 1.0


def test_adopted_network_predicts_through_the_segmenter():
    image, label = blob_volume(shape=(24, 20, 12), seed=1)
    volume, labels = Volume(image, np.eye(4)), Volume(label, np.eye(4), label=True)
    images, masks = _disc_slices(count=6, size=32)
    net = train_unet_2d(images.repeat(1, 3, 1, 1), masks, steps=2, seed=0, base_channels=4)
    seg = Segmenter(backend=UNetBackend(model=net), device="cpu", progress=False).fit([volume], [labels])
    assert seg.fitted.state[2] == (net,)
    prob = seg.predict_proba(volume)
    assert prob.same_grid(volume) and prob.array.dtype == np.float32
    two = Volume(np.where(label > 0, 1 + (np.arange(24)[:, None, None] > 12), 0), np.eye(4), label=True)
    with pytest.raises(ValueError, match="one structure"):
        Segmenter(backend=UNetBackend(model=net), device="cpu", progress=False).fit([volume], [two])


def test_bad_inputs_give_clear_errors():
    images, labels = _disc_slices(count=2)
    with pytest.raises(ValueError, match="same"):
        train_unet_2d(images, labels[:1], steps=1)
    with pytest.raises(ValueError, match=r"\(M, 1, s, s\)"):
        train_unet_2d(images, labels.repeat(1, 2, 1, 1), steps=1)
    with pytest.raises(ValueError, match="2k\\+1"):
        train_unet_2d(images.repeat(1, 2, 1, 1), labels, steps=1)
    with pytest.raises(ValueError, match="divisible"):
        UNet2d(1, 4, 3)(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match="slice_size"):
        UNetBackend(model=UNet2d(1, 4, 3))
    with pytest.raises(RuntimeError, match="fit"):
        UNetBackend(slice_size=32).predict_slices(torch.zeros(1, 3, 32, 32), None, torch.Generator())
