"""UniverSeg network: official v1 layout, stored reference logits, shared-support path, 2.5D inflation.

``tests/data/universeg_tiny_reference.pt`` is written by ``tests/data/make_universeg_reference.py``
(seeded tiny models with perturbed weights, seeded inputs, logits of the plain pairwise ``forward``).
It is produced by *this repository's own* forward, so the tests using it are regression checks: they
catch any change of the network's outputs, not a disagreement with the official UniverSeg code.
Parity with the official implementation (JJGO/UniverSeg) was established once, when the network was
written (commit 3c9aeca, "parity 0.0 in fp64"): the official v1 model and ours, loaded with the same
state dict (official key layout, ``strict=True``), gave identical float64 logits. The official code is
not a dependency, so that comparison is not rerun here; the key layout and shapes it relied on are
checked by ``test_v1_default_has_the_official_state_dict_layout``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewshotcx.models import UniverSeg, inflate_to_context

REFERENCE = Path(__file__).parent / "data" / "universeg_tiny_reference.pt"
TINY = dict(encoder_blocks=(8, 8, 8, 8), decoder_blocks=(8, 8, 8))


def tiny_model(in_channels: int = 1, seed: int = 0) -> UniverSeg:
    """Tiny UniverSeg with every parameter (biases included) perturbed away from its init."""
    torch.manual_seed(seed)
    model = UniverSeg(**TINY, in_channels=in_channels).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def shared_inputs(n: int, s: int, channels: int, size: int = 16, seed: int = 1):
    """``targets (N, C, H, W)``, ``support_images (S, C, H, W)``, ``support_labels (S, 1, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, size, size, generator=g), torch.rand(s, channels, size, size, generator=g),
            (torch.rand(s, 1, size, size, generator=g) > 0.5).float())


def repeated(n: int, support_images, support_labels):
    """The shared support repeated per target: ``(N, S, C, H, W)``, ``(N, S, 1, H, W)``."""
    return support_images.expand(n, -1, -1, -1, -1), support_labels.expand(n, -1, -1, -1, -1)


def official_v1_shapes() -> dict[str, tuple[int, ...]]:
    """The 44 key names and shapes of ``universeg_v1_nf64_ss64_STA.pt`` (DESIGN.md)."""
    cross_in = {"enc_blocks.0": 3, "enc_blocks.1": 128, "enc_blocks.2": 128, "enc_blocks.3": 128,
                "dec_blocks.0": 256, "dec_blocks.1": 256, "dec_blocks.2": 256}
    shapes = {}
    for block, channels in cross_in.items():
        shapes[f"{block}.cross.cross_conv.weight"] = (64, channels, 3, 3)
        shapes[f"{block}.cross.cross_conv.bias"] = (64,)
        for side in ("target", "support"):
            shapes[f"{block}.{side}.vmapped.conv.weight"] = (64, 64, 3, 3)
            shapes[f"{block}.{side}.vmapped.conv.bias"] = (64,)
    shapes["out_conv.conv.weight"] = (1, 64, 1, 1)
    shapes["out_conv.conv.bias"] = (1,)
    return shapes


def test_v1_default_has_the_official_state_dict_layout():
    model = UniverSeg()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == official_v1_shapes()
    assert len(shapes) == 44
    assert sum(p.numel() for p in model.parameters()) == 1_182_785
    assert model.config == {"encoder_blocks": [64] * 4, "decoder_blocks": [64] * 3, "in_channels": 1}


@pytest.mark.parametrize("case", ["v1_layout", "context_1"])
def test_forward_and_forward_shared_reproduce_the_stored_reference(case):
    """Regression check against the stored logits of our own forward (see the module docstring)."""
    ref = torch.load(REFERENCE, map_location="cpu", weights_only=True)[case]
    model = UniverSeg(**ref["config"]).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    labels = ref["support_labels"].float()
    with torch.no_grad():
        logits = model(ref["target"], ref["support_images"], labels)
        torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=1e-5)
        for chunk in (None, 1):
            shared = torch.cat([
                model.forward_shared(ref["target"][b:b + 1], ref["support_images"][b], labels[b], support_chunk=chunk)
                for b in range(ref["target"].shape[0])
            ])
            torch.testing.assert_close(shared, ref["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(
    "n, s, chunk, channels",
    [(1, 1, None, 1), (3, 4, None, 1), (3, 4, 1, 1), (2, 5, 2, 1), (2, 5, 64, 1), (2, 5, 3, 3), (4, 3, 2, 3)],
)
def test_forward_shared_equals_forward(n, s, chunk, channels, channels_last):
    model = tiny_model(channels)
    targets, images, labels = shared_inputs(n, s, channels)
    with torch.no_grad():
        expected = model(targets, *repeated(n, images, labels))
        got = model.forward_shared(targets, images, labels, support_chunk=chunk, channels_last=channels_last)
    assert got.shape == (n, 1, 16, 16)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_forward_shared_under_inference_mode_and_bf16_autocast():
    model = tiny_model(3)
    targets, images, labels = shared_inputs(3, 4, 3)
    with torch.inference_mode():
        exact = model(targets, *repeated(3, images, labels))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(targets, *repeated(3, images, labels))
            shared = model.forward_shared(targets, images, labels, support_chunk=3)
    assert shared.dtype == plain.dtype == torch.bfloat16
    scale = exact.abs().max().item()
    torch.testing.assert_close(shared.float(), plain.float(), atol=0.05 * scale, rtol=0)
    torch.testing.assert_close(shared.float(), exact, atol=0.05 * scale, rtol=0)


def test_forward_shared_gradients_equal_forward_gradients():
    model = tiny_model(1)
    targets, images, labels = shared_inputs(2, 3, 1)
    model(targets, *repeated(2, images, labels)).square().sum().backward()
    expected = {k: p.grad for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.forward_shared(targets, images, labels, support_chunk=2).square().sum().backward()
    got = {k: p.grad for k, p in model.named_parameters()}
    # The last block's support conv feeds nothing, in both paths.
    unused = {k for k, g in expected.items() if g is None}
    assert unused == {k for k, g in got.items() if g is None} == {
        "dec_blocks.2.support.vmapped.conv.weight", "dec_blocks.2.support.vmapped.conv.bias"}
    for name in expected.keys() - unused:
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("context", [1, 2])
def test_inflate_to_context_keeps_outputs_for_centre_channel_inputs(context):
    small = tiny_model(1)
    original = {k: v.clone() for k, v in small.state_dict().items()}
    big = UniverSeg(**TINY, in_channels=2 * context + 1).eval()
    big.load_state_dict(inflate_to_context(small.state_dict(), context), strict=True)
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in original.items())  # input untouched

    target, images, labels = shared_inputs(2, 3, 2 * context + 1, seed=5)  # neighbours: unrelated noise
    images, labels = repeated(2, images, labels)
    centre = slice(context, context + 1)
    with torch.no_grad():
        expected = small(target[:, centre], images[:, :, centre], labels)
        torch.testing.assert_close(big(target, images, labels), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(big.forward_shared(target, images[0], labels[0]), expected, atol=1e-5, rtol=1e-5)


def test_inflate_to_context_rejects_bad_input():
    with pytest.raises(ValueError, match="1-channel"):
        inflate_to_context(UniverSeg(**TINY, in_channels=3).state_dict(), 1)
    with pytest.raises(ValueError, match="non-negative"):
        inflate_to_context(UniverSeg(**TINY).state_dict(), -1)
    assert inflate_to_context(UniverSeg(**TINY).state_dict(), 0)["enc_blocks.0.cross.cross_conv.weight"].shape[1] == 3


def test_bad_inputs_and_arguments_raise_value_errors():
    model = tiny_model(1)
    targets, images, labels = shared_inputs(2, 3, 1)
    bad_calls = [
        lambda: model.forward_shared(targets, images, labels, support_chunk=0),
        lambda: model.forward_shared(targets[..., :12, :12], images[..., :12, :12], labels[..., :12, :12]),
        lambda: model.forward_shared(torch.rand(2, 3, 16, 16), images, labels),  # 3 channels for a 1-channel model
        lambda: model.forward_shared(targets, images, labels[:2]),  # S differs
        lambda: model.forward_shared(targets, images[:0], labels[:0]),  # empty support
        lambda: model(targets, *repeated(1, images, labels)),  # batch sizes differ
        lambda: model(targets, images, labels),  # shared-shaped support given to forward
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError, match="decoder_blocks"):
        UniverSeg((8, 8, 8), (8, 8, 8))
    with pytest.raises(ValueError, match="in_channels"):
        UniverSeg(in_channels=0)
