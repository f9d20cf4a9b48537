"""Every CUDA and autocast path, on a GPU (``cuda`` marker: skipped without CUDA, see conftest.py).

``scripts/gpu_check.sh`` runs these. Tolerances: fp32 comparisons disable TF32 (cuDNN would
otherwise round convolution inputs to 10-bit mantissas) and allow 1e-4 of the logit scale
(different summation orders); bf16 / fp16 autocast are compared with fp32 on CPU at 5 % of the
logit scale (bf16 keeps 8 mantissa bits, fp16 10; the error adds up over 7 blocks); probabilities
from a whole Segmenter at 2e-3 (fp32) and 0.05 (bf16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewshotcx as fx
from fewshotcx.models import UniverSeg
from fewshotcx.models.sam import tiny_sam
from fewshotcx.training.loop import TrainConfig, train

from conftest import blob_volume

pytestmark = pytest.mark.cuda

TINY = dict(encoder_blocks=(8, 8, 8, 8), decoder_blocks=(8, 8, 8))
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture
def no_tf32():
    """fp32 really fp32 on the GPU for the duration of a test."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(in_channels: int = 1) -> UniverSeg:
    torch.manual_seed(0)
    model = UniverSeg(**TINY, in_channels=in_channels).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(n=3, s=5, c=1, size=32):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, c, size, size, generator=g), torch.rand(s, c, size, size, generator=g),
            (torch.rand(s, 1, size, size, generator=g) > 0.5).float())


def _pair():
    image, label = blob_volume(shape=(32, 32, 12))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    return fx.Volume(image, affine), fx.Volume(label, affine, label=True)


@pytest.mark.parametrize("channels_last", [True, False])
def test_forward_shared_fp32_cuda_equals_cpu(no_tf32, channels_last):
    model = _model(3)
    targets, images, labels = _inputs(c=3)
    with torch.inference_mode():
        cpu = model.forward_shared(targets, images, labels, channels_last=channels_last)
        gpu = model.cuda().forward_shared(targets.cuda(), images.cuda(), labels.cuda(), channels_last=channels_last)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4 * cpu.abs().max().item(), rtol=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_universeg_autocast_on_cuda_close_to_fp32(precision):
    model = _model()
    targets, images, labels = _inputs()
    with torch.inference_mode():
        exact = model.forward_shared(targets, images, labels)
        model.cuda()
        with torch.autocast("cuda", dtype=AUTOCAST[precision]):
            shared = model.forward_shared(targets.cuda(), images.cuda(), labels.cuda(), support_chunk=2)
            plain = model(targets.cuda(), images.cuda().expand(3, -1, -1, -1, -1),
                          labels.cuda().expand(3, -1, -1, -1, -1))
    assert shared.dtype == plain.dtype == AUTOCAST[precision]
    scale = exact.abs().max().item()
    torch.testing.assert_close(shared.float().cpu(), exact, atol=0.05 * scale, rtol=0)
    torch.testing.assert_close(plain.float().cpu(), exact, atol=0.05 * scale, rtol=0)


@pytest.mark.parametrize("precision, atol", [("fp32", 2e-3), ("bf16", 0.05)])
def test_segmenter_on_cuda_matches_cpu_whole_pool(no_tf32, precision, atol):
    """Support = the whole pool (no random draw): only the arithmetic differs between devices."""
    image, label = _pair()
    probs = {}
    for device in ("cpu", "cuda"):
        seg = fx.Segmenter(model=_model(), device=device, slice_size=32, support_size=64, progress=False,
                           precision=precision if device == "cuda" else "fp32")
        probs[device] = seg.fit([image], [label]).predict_proba(image).array
    np.testing.assert_allclose(probs["cuda"], probs["cpu"], atol=atol, rtol=0)


def test_segmenter_same_seed_same_prediction_on_cpu_and_cuda(no_tf32):
    """A random support draw (support smaller than the pool) must not depend on the device."""
    image, label = _pair()
    masks = {}
    for device in ("cpu", "cuda"):
        seg = fx.Segmenter(model=_model(), device=device, slice_size=32, support_size=3, strategy="random",
                           seed=7, progress=False, precision="fp32")
        masks[device] = seg.fit([image], [label]).predict_proba(image).array
    np.testing.assert_allclose(masks["cuda"], masks["cpu"], atol=2e-3, rtol=0)


def test_sam_backend_on_cuda_matches_cpu(no_tf32):
    image, label = _pair()
    probs = {}
    for device in ("cpu", "cuda"):
        seg = fx.Segmenter(backend="sam", model=tiny_sam(seed=0), device=device, tune_steps=3, progress=False,
                           precision="fp32")
        probs[device] = seg.fit([image], [label]).predict_proba(image).array
    assert probs["cuda"].shape == image.shape
    np.testing.assert_allclose(probs["cuda"], probs["cpu"], atol=5e-3, rtol=0)


def test_sam_backend_bf16_on_cuda_runs_and_stays_close():
    image, label = _pair()
    fp32 = fx.Segmenter(backend="sam", model=tiny_sam(seed=0), device="cuda", tune_steps=0, progress=False,
                        precision="fp32").fit([image], [label]).predict_proba(image).array
    bf16 = fx.Segmenter(backend="sam", model=tiny_sam(seed=0), device="cuda", tune_steps=0, progress=False,
                        precision="bf16").fit([image], [label]).predict_proba(image).array
    assert np.isfinite(bf16).all()
    np.testing.assert_allclose(bf16, fp32, atol=0.05, rtol=0)


def test_training_step_with_amp_on_cuda(tmp_path):
    """Two bf16-autocast training steps on the GPU, then the checkpoint loads and predicts on CPU."""
    config = TrainConfig(data=["synthetic"], steps=2, width=8, size=32, context=1, support_size=(2, 3), queries=2,
                         episodes_per_step=1, synthetic_families=2, synthetic_val_families=1, val_every=2,
                         val_max_tasks=2, val_episodes=1, checkpoint_every=2, device="cuda",
                         out=str(tmp_path / "run.pt"), progress=False)
    path = train(config)
    model = fx.models.weights.load_universeg(str(path))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    image, label = _pair()
    prob = fx.Segmenter(model=model, device="cpu", slice_size=32, progress=False).fit([image], [label]).predict_proba(image)
    assert np.isfinite(prob.array).all()
