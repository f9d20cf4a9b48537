"""SAM building blocks on a tiny random Sam (no real checkpoint exists on the test machine)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from fewshotcx.backends.base import Fitted
from fewshotcx.backends.sam import AxisState, SamBackend
from fewshotcx.models.sam import (
    EmbeddingCache, calibrate_threshold, decode, detect_variant, load_sam, mask_boxes, preprocess, refine_with_sam,
    suppress_empty, tiny_sam,
)
from fewshotcx.models.sam import models as sam_models
from fewshotcx.models.sam.tuning import shift
from fewshotcx.pipeline.slicing import extract_slabs, make_geometry, reassemble
from fewshotcx.models.weights import WeightsError


@pytest.fixture(scope="module")
def tiny():
    return tiny_sam(seed=0)


# ---------------------------------------------------------------- decoding
@pytest.mark.parametrize("multimask", [False, True])
def test_batched_decode_equals_per_slice_decode(tiny, multimask):
    g = torch.Generator().manual_seed(1)
    n, c, h = 5, 32, 16
    embeddings = torch.randn(n, c, h, h, generator=g)
    sparse = torch.randn(n, 3, c, generator=g)
    dense = torch.randn(n, c, h, h, generator=g)
    pe = tiny.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        batched, batched_iou = decode(tiny.mask_decoder, pe, embeddings, sparse, dense, multimask=multimask)
        for i in range(n):
            masks, iou = tiny.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=pe,
                                           sparse_prompt_embeddings=sparse[i:i + 1],
                                           dense_prompt_embeddings=dense[i:i + 1], multimask_output=multimask)
            best = int(iou[0].argmax())
            assert torch.allclose(batched[i], masks[0, best], atol=1e-5)
            assert torch.allclose(batched_iou[i], iou[0, best], atol=1e-5)
    assert batched.shape == (n, 4 * h, 4 * h)


def test_decode_rejects_mismatched_rows(tiny):
    pe = tiny.prompt_encoder.get_dense_pe()
    with pytest.raises(ValueError, match="one prompt row per image"):
        decode(tiny.mask_decoder, pe, torch.zeros(2, 32, 16, 16), torch.zeros(3, 1, 32), torch.zeros(2, 32, 16, 16))


# ---------------------------------------------------------------- preprocessing and geometry
def test_preprocess_modes_and_rgb_packing(tiny):
    slabs = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sam_in = preprocess(slabs, "sam", tiny.pixel_mean, tiny.pixel_std)
    assert torch.allclose(sam_in, (slabs * 255 - tiny.pixel_mean) / tiny.pixel_std)
    assert torch.equal(preprocess(slabs, "medsam", tiny.pixel_mean, tiny.pixel_std), slabs)
    single = preprocess(slabs[:, 1:2], "medsam", tiny.pixel_mean, tiny.pixel_std)
    assert torch.equal(single, slabs[:, 1:2].expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="1 or 3 slices"):
        preprocess(torch.rand(1, 5, 8, 8), "sam", tiny.pixel_mean, tiny.pixel_std)
    with pytest.raises(ValueError, match="preprocess must be"):
        preprocess(slabs, "imagenet", tiny.pixel_mean, tiny.pixel_std)


class PixelEncoder(nn.Module):
    """Oracle encoder: the green (centre-slice) channel, pixel-unshuffled into the embedding grid."""

    def __init__(self, img_size: int, patch: int, channels: int) -> None:
        super().__init__()
        self.img_size, self.patch, self.channels = img_size, patch, channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cells = F.pixel_unshuffle(images[:, 1:2], self.patch)
        return F.pad(cells, (0, 0, 0, 0, 0, self.channels - cells.shape[1]))


class OracleSource:
    """Oracle prompt source: logits whose sigmoid is the slab's own centre-slice intensity."""

    num_classes = 1

    def __init__(self, backend: SamBackend, patch: int) -> None:
        self.backend, self.patch = backend, patch

    def logits(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        values = F.pixel_shuffle(embeddings[:, :self.patch ** 2], self.patch)  # preprocessed G channel
        if self.backend.mode == "sam":
            values = (values * self.backend.sam.pixel_std[1] + self.backend.sam.pixel_mean[1]) / 255
        return torch.logit(values.clamp(1e-7, 1 - 1e-7))


def _oracle_backend(tiny, mode: str) -> SamBackend:
    model = Sam(PixelEncoder(64, 4, 32), tiny.prompt_encoder, tiny.mask_decoder)
    return SamBackend(model=model, preprocess=mode, tune_steps=0, calibrate_empty=False)


@pytest.mark.parametrize("mode,resize_mode", [("sam", "pad"), ("medsam", "stretch")])
@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("context", [0, 1])
def test_backend_geometry_inverts_exactly_through_reassemble(tiny, mode, resize_mode, axis, context):
    shape, spacing = (20, 13, 9), (0.8, 1.1, 3.0)
    g = torch.Generator().manual_seed(axis)
    volume = F.interpolate(torch.rand(1, 1, 5, 4, 3, generator=g), size=shape, mode="trilinear")[0, 0]
    backend = _oracle_backend(tiny, mode)
    assert backend.resize_mode == resize_mode
    geometry = make_geometry(shape, spacing, axis, backend.slice_size, context, resize_mode=backend.resize_mode)
    fitted = Fitted(None, {}, {geometry.axis: AxisState(OracleSource(backend, 4), torch.zeros(1))})
    slabs = extract_slabs(volume, geometry)
    out = backend.predict_slices(fitted, slabs, geometry, torch.Generator())
    assert out.shape == (geometry.num_slices, 1, 64, 64)
    expected = reassemble(slabs[:, context:context + 1], geometry)
    assert torch.allclose(reassemble(out, geometry), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["sam", "medsam"])
def test_backend_output_equals_input_mask_without_resampling(tiny, mode):
    # In-plane 64 × 32 at equal spacing: no resampling at all ("pad" pads 16 columns each side;
    # "stretch" resizes 32 → 64 columns and back), so a binary mask must come back as itself.
    shape = (64, 32, 6)
    mask = torch.zeros(shape)
    mask[20:40, 5:25, 1:5] = 1.0
    backend = _oracle_backend(tiny, mode)
    geometry = make_geometry(shape, (1.0, 1.0, 1.0), 2, 64, 1, resize_mode=backend.resize_mode)
    fitted = Fitted(None, {}, {2: AxisState(OracleSource(backend, 4), torch.zeros(1))})
    out = reassemble(backend.predict_slices(fitted, extract_slabs(mask, geometry), geometry, torch.Generator()),
                     geometry)[0]
    if mode == "sam":
        assert geometry.offset == (0, 16)
        assert torch.allclose(out, mask, atol=1e-5)
    else:
        assert torch.equal(out > 0.5, mask > 0.5)


# ---------------------------------------------------------------- tuning
def test_shift_rolls_embeddings_and_labels_together():
    embeddings = torch.zeros(1, 2, 8, 8)
    embeddings[0, :, 3, 5] = 1.0
    labels = torch.zeros(1, 1, 32, 32)
    labels[0, 0, 12:16, 20:24] = 1.0  # the same embedding cell at 4× resolution
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        emb, lab = shift(embeddings, labels, 2, g)
        y, x = (emb[0, 0] == 1).nonzero()[0].tolist()
        assert abs(y - 3) <= 2 and abs(x - 5) <= 2
        assert lab[0, 0, 4 * y:4 * y + 4, 4 * x:4 * x + 4].sum() == 16 and lab.sum() == 16
    assert shift(embeddings, labels, 0, g)[0] is embeddings


# ---------------------------------------------------------------- empty-slice calibration
def test_calibrated_threshold_separates_empty_from_present_slices():
    scores = torch.tensor([[1e-4], [2e-4], [5e-4], [0.02], [0.05], [0.1]])
    present = torch.tensor([[False], [False], [False], [True], [True], [True]])
    threshold = calibrate_threshold(scores, present)
    assert 5e-4 < threshold.item() < 0.02
    probs = torch.ones(6, 1, 4, 4)
    kept = suppress_empty(probs, scores, threshold)
    assert kept[:3].sum() == 0 and torch.equal(kept[3:], probs[3:])
    assert calibrate_threshold(scores, torch.ones_like(present)).item() == 0.0


def test_threshold_minimises_misclassified_slices():
    scores = torch.tensor([[0.001], [0.003], [0.002], [0.05], [0.004], [0.08]])
    present = torch.tensor([[False], [False], [True], [True], [False], [True]])
    t = calibrate_threshold(scores, present).item()
    errors = int(((scores[:, 0] >= t) & ~present[:, 0]).sum() + ((scores[:, 0] < t) & present[:, 0]).sum())
    assert errors == 1  # the best possible: 0.002 (present) lies below 0.003 and 0.004 (empty)


# ---------------------------------------------------------------- embedding cache
def test_cache_lru_respects_byte_budget_and_disk_mirror(tmp_path):
    cache = EmbeddingCache(max_bytes=2 * 4 * 16, directory=tmp_path)
    for i in range(3):
        cache.put(f"k{i}", torch.full((16,), float(i)))
    assert len(cache) == 2 and cache.nbytes == 2 * 4 * 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k0.pt", "k1.pt", "k2.pt"]
    fresh = EmbeddingCache(max_bytes=1 << 20, directory=tmp_path)
    assert torch.equal(fresh.get("k0", torch.device("cpu")), torch.zeros(16))
    assert fresh.get("missing", torch.device("cpu")) is None


def test_cache_keys_depend_on_pixels_mode_and_model(tiny):
    slabs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sam_mode = SamBackend(model=tiny, preprocess="sam", tune_steps=0)
    med_mode = SamBackend(model=tiny, preprocess="medsam", tune_steps=0)
    other = SamBackend(model=tiny_sam(seed=1), preprocess="sam", tune_steps=0)
    images = preprocess(slabs, "sam", tiny.pixel_mean, tiny.pixel_std)
    keys = sam_mode.encoder.keys(images)
    assert keys[0] != keys[1]
    assert keys[0] != med_mode.encoder.keys(images)[0]
    assert keys[0] != other.encoder.keys(images)[0]
    first = sam_mode.embed(slabs)
    assert sam_mode.encoder.encoded == 2
    assert torch.equal(sam_mode.embed(slabs), first) and sam_mode.encoder.encoded == 2


# ---------------------------------------------------------------- loading
def test_detect_variant_from_patch_embedding_width():
    for width, name in [(768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")]:
        assert detect_variant({"image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 1, 1)}) == name
    with pytest.raises(WeightsError, match="width 99"):
        detect_variant({"image_encoder.patch_embed.proj.weight": torch.zeros(99, 3, 1, 1)})
    with pytest.raises(WeightsError, match="not a SAM checkpoint"):
        detect_variant({"enc_blocks.0.cross.cross_conv.weight": torch.zeros(1)})


def test_default_weights_are_refused_with_guidance():
    with pytest.raises(ValueError, match="checkpoint.*model="):
        SamBackend(weights="default")


def test_official_weights_missing_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="sam_vit_b_01ec64.pth"):
        load_sam("official", download=False)


@pytest.fixture
def tiny_registry(monkeypatch):
    """Make the loader treat the tiny architecture (encoder width 32) as a registered variant."""
    monkeypatch.setitem(sam_models.VARIANTS, 32, "tiny")
    monkeypatch.setattr(sam_models, "sam_model_registry", {"tiny": lambda: tiny_sam(seed=5)})


def test_checkpoint_loads_strictly_and_picks_preprocessing(tiny, tmp_path, tiny_registry):
    path = tmp_path / "medsam_tiny.pth"
    torch.save(tiny.state_dict(), path)
    backend = SamBackend(weights=str(path), tune_steps=0)
    assert backend.mode == "medsam" and backend.resize_mode == "stretch"
    for key, value in tiny.state_dict().items():
        assert torch.equal(backend.sam.state_dict()[key], value)
    plain = tmp_path / "sam_tiny.pth"
    torch.save(tiny.state_dict(), plain)
    assert SamBackend(weights=str(plain), tune_steps=0).mode == "sam"
    broken = dict(tiny.state_dict())
    broken.pop("mask_decoder.iou_token.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="1 missing keys"):
        load_sam(str(tmp_path / "broken.pth"))


def test_backend_rejects_bad_options(tiny):
    with pytest.raises(ValueError, match="context must be 0 or 1"):
        SamBackend(model=tiny, context=2)
    with pytest.raises(ValueError, match="slice_size"):
        SamBackend(model=tiny, slice_size=128)
    with pytest.raises(ValueError, match="ensemble"):
        SamBackend(model=tiny, ensemble=3)
    with pytest.raises(ValueError, match="segment_anything Sam"):
        SamBackend(model=nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="fit"):
        geometry = make_geometry((64, 64, 1), (1, 1, 1), 2, 64, 1)
        SamBackend(model=tiny).predict_slices(torch.zeros(1, 3, 64, 64), geometry, torch.Generator())


# ---------------------------------------------------------------- refinement
def test_mask_boxes():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    boxes, present = mask_boxes(masks)
    assert present.tolist() == [True, False]
    assert boxes[0].tolist() == [3.0, 2.0, 6.0, 4.0] and boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_refine_with_sam_keeps_empty_slices_empty_and_follows_the_prompt(tiny):
    backend = SamBackend(model=tiny, tune_steps=0)
    slabs = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    coarse = torch.zeros(3, 2, 64, 64)
    coarse[0, 0, 10:30, 12:40] = 0.9
    coarse[1, 1, 30:60, 5:20] = 0.8
    coarse[2, 0, 30:60, 5:20] = 0.8
    refined = refine_with_sam(backend, coarse, slabs)
    assert refined.shape == coarse.shape and refined.dtype == torch.float32
    assert 0 <= refined.min() and refined.max() <= 1
    assert refined[0, 1].abs().sum() == 0 and refined[1, 0].abs().sum() == 0  # no coarse foreground → empty
    assert refined[0, 0].sum() > 0 and refined[1, 1].sum() > 0
    assert not torch.allclose(refined[0, 0], refined[2, 0])  # different prompts → different masks
    assert backend.encoder.encoded == 3
    with pytest.raises(ValueError, match="probabilities"):
        refine_with_sam(backend, coarse[:, :, :32, :32], slabs)
