"""The CPU fast path: channels-last features, the first block's support work shared across targets and
reused across calls (UniverSeg.encode_support, cached per support set by the backend). Outputs must
equal the plain network; tolerance 1e-5 (float32 summation order only)."""

from __future__ import annotations

import numpy as np
import torch

from fewshotcx import Segmenter, Volume
from fewshotcx.models import UniverSeg

from conftest import UNREGISTERED, blob_volume


def _model(seed: int = 0) -> UniverSeg:
    torch.manual_seed(seed)
    model = UniverSeg((8, 8, 8, 8), (8, 8, 8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_encode_support_reused_across_calls_equals_the_plain_network():
    model = _model()
    g = torch.Generator().manual_seed(3)
    targets, images = torch.rand(5, 1, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g)
    labels = (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float()
    with torch.inference_mode():
        plain = model(targets, images.expand(5, -1, -1, -1, -1), labels.expand(5, -1, -1, -1, -1))
        for channels_last in (True, False):
            features = model.encode_support(images, labels, channels_last)
            parts = [model.forward_shared(targets[i:i + 2], images, labels, support_chunk=3,
                                          channels_last=channels_last, support_features=features)
                     for i in range(0, 5, 2)]  # three calls share one encoding
            torch.testing.assert_close(torch.cat(parts), plain, atol=1e-5, rtol=1e-5)


@UNREGISTERED
def test_backend_encodes_each_support_set_once_and_sees_weight_updates():
    image, label = blob_volume(shape=(24, 20, 12))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image, label = Volume(image, affine), Volume(label, affine, label=True)
    model = _model()
    calls = []
    encode = model.encode_support
    model.encode_support = lambda *a, **k: calls.append(1) or encode(*a, **k)  # count encodings
    seg = Segmenter(model=model, slice_size=16, support_size=3, group_size=4, ensemble=2, memory_budget=1,
                    progress=False).fit([image], [label])
    first = seg.predict_proba(image).array
    groups = -(-image.shape[2] // 4)
    assert len(calls) == groups * 2  # one per (group, ensemble member), though every slab is its own call
    with torch.no_grad():  # an in-place weight update must not reuse stale support features
        model.enc_blocks[0].support.vmapped.conv.weight.mul_(1.5)
    updated = seg.predict_proba(image).array
    fresh = Segmenter(model=model, slice_size=16, support_size=3, group_size=4, ensemble=2, memory_budget=1 << 40,
                      progress=False).fit([image], [label]).predict_proba(image).array
    assert not np.allclose(updated, first, atol=1e-4)
    np.testing.assert_allclose(updated, fresh, atol=1e-5)
