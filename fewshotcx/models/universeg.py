"""UniverSeg (Butoi, Gonzalez Ortiz et al., ICCV 2023): in-context segmentation network.

State-dict compatible with the official v1 checkpoint ``universeg_v1_nf64_ss64_STA.pt``: with the
defaults, :class:`UniverSeg` has the 44 official keys (``enc_blocks.{i}.cross.cross_conv.*``,
``enc_blocks.{i}.target.vmapped.conv.*``, ``enc_blocks.{i}.support.vmapped.conv.*``, the same for
``dec_blocks.{j}``, ``out_conv.conv.*``) and 1,182,785 parameters.

Network: every CrossBlock convolves each (target, support_j) pair with one 3×3 conv over
``cat(target, support_j)`` (target channels first, no nonlinearity), averages the pair outputs over
``j`` for the new target and keeps each pair output as the new ``support_j``; both then get their
own 3×3 conv + LeakyReLU(0.01). Encoder blocks are separated by 2×2 max-pooling; decoder blocks take
``cat(bilinear ×2 upsampling (align_corners=True), skip)`` on both sides; a final 1×1 conv gives
one logit channel. The support input is ``cat(image, label)``.

Two equivalent ways to run it:

* :meth:`UniverSeg.forward` — the plain pairwise computation, one support set per target.
* :meth:`UniverSeg.forward_shared` — one support set shared by ``N`` targets, using
  ``conv(cat(t, s_j)) = W_t * t + W_s * s_j + b``: the target half once per target (not ``S``
  times), the first block's support half once per support set, decoder concatenations never built,
  and the support axis optionally processed in chunks to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import einops
import torch
from torch import Tensor, nn

from .universeg_layers import NEGATIVE_SLOPE, ConvAct, CrossBlock, CrossConv, PerItem, _down, _per_item, _up  # noqa: F401
from .universeg_shared import (
    _decoder_input, _first_block, _first_support, _pooled_input, _shared_block, _target_only_block,
)

V1_ENCODER_BLOCKS = (64, 64, 64, 64)
V1_DECODER_BLOCKS = (64, 64, 64)

_ENC0_CROSS_WEIGHT = "enc_blocks.0.cross.cross_conv.weight"


class UniverSeg(nn.Module):
    """UniverSeg network; the defaults are the official v1 architecture.

    Args:
        encoder_blocks: feature width of each encoder CrossBlock (v1: ``(64, 64, 64, 64)``).
        decoder_blocks: feature width of each decoder CrossBlock, one fewer than the encoder
            (v1: ``(64, 64, 64)``).
        in_channels: target image channels ``C`` (1 for v1; ``2k+1`` for a 2.5D model with ``k``
            neighbour slices each side, centre slice at index ``k``). Support images have ``C``
            channels too and the support label adds one.

    Spatial sizes must be divisible by ``2 ** (len(encoder_blocks) - 1)`` (8 for v1).
    """

    def __init__(
        self,
        encoder_blocks: Sequence[int] = V1_ENCODER_BLOCKS,
        decoder_blocks: Sequence[int] = V1_DECODER_BLOCKS,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        encoder_blocks, decoder_blocks = tuple(map(int, encoder_blocks)), tuple(map(int, decoder_blocks))
        if len(encoder_blocks) < 2 or min(encoder_blocks) < 1:
            raise ValueError(f"encoder_blocks needs at least 2 positive widths, got {encoder_blocks}")
        if len(decoder_blocks) != len(encoder_blocks) - 1 or min(decoder_blocks) < 1:
            raise ValueError(f"decoder_blocks needs {len(encoder_blocks) - 1} positive widths (one fewer than "
                             f"encoder_blocks), got {decoder_blocks}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        self.encoder_blocks, self.decoder_blocks, self.in_channels = encoder_blocks, decoder_blocks, int(in_channels)

        self.enc_blocks = nn.ModuleList()
        target_ch, support_ch = self.in_channels, self.in_channels + 1
        for width in encoder_blocks:
            self.enc_blocks.append(CrossBlock(target_ch, support_ch, width))
            target_ch = support_ch = width
        self.dec_blocks = nn.ModuleList()
        for width, skip_ch in zip(decoder_blocks, encoder_blocks[-2::-1]):
            self.dec_blocks.append(CrossBlock(target_ch + skip_ch, target_ch + skip_ch, width))
            target_ch = width
        self.out_conv = ConvAct(target_ch, 1, kernel_size=1, activation=False)

    @property
    def config(self) -> dict:
        """Constructor arguments as plain Python types (what :func:`fewshotcx.models.weights.save_checkpoint` stores)."""
        return {"encoder_blocks": list(self.encoder_blocks), "decoder_blocks": list(self.decoder_blocks),
                "in_channels": self.in_channels}

    @property
    def widths(self) -> tuple[int, ...]:
        """Feature widths of all CrossBlocks, encoder then decoder."""
        return self.encoder_blocks + self.decoder_blocks

    def _check(self, target: Tensor, support_images: Tensor, support_labels: Tensor, shared: bool) -> None:
        """One-line ValueError for inputs of the wrong shape."""
        lead = 0 if shared else 1  # leading (B,) axis of the support tensors
        if target.ndim != 4 or support_images.ndim != 4 + lead or support_labels.ndim != 4 + lead:
            raise ValueError(f"expected target (N, C, H, W) and support {'(S, ' if shared else '(B, S, '}C, H, W), "
                             f"got {tuple(target.shape)}, {tuple(support_images.shape)}, {tuple(support_labels.shape)}")
        c, (h, w) = self.in_channels, target.shape[-2:]
        if target.shape[1] != c or support_images.shape[-3] != c or support_labels.shape[-3] != 1:
            raise ValueError(f"expected {c} target/support image channel(s) and 1 label channel, got target "
                             f"{tuple(target.shape)}, support images {tuple(support_images.shape)}, "
                             f"labels {tuple(support_labels.shape)}")
        if support_images.shape[:lead + 1] != support_labels.shape[:lead + 1] or support_images.shape[lead] < 1:
            raise ValueError(f"support images {tuple(support_images.shape)} and labels {tuple(support_labels.shape)} "
                             "need the same, non-empty, support axis")
        if not shared and support_images.shape[0] != target.shape[0]:
            raise ValueError(f"batch sizes differ: target {target.shape[0]}, support {support_images.shape[0]}")
        if support_images.shape[-2:] != (h, w) or support_labels.shape[-2:] != (h, w):
            raise ValueError(f"support is {tuple(support_images.shape[-2:])}, target is {(h, w)}: sizes must match")
        factor = 2 ** (len(self.enc_blocks) - 1)
        if h % factor or w % factor:
            raise ValueError(f"image size {(h, w)} must be divisible by {factor}")

    def forward(self, target: Tensor, support_images: Tensor, support_labels: Tensor) -> Tensor:
        """Plain pairwise UniverSeg (official semantics), one support set per target.

        Args:
            target: ``(B, C, H, W)`` images in [0, 1].
            support_images: ``(B, S, C, H, W)``.
            support_labels: ``(B, S, 1, H, W)`` in [0, 1].

        Returns:
            logits ``(B, 1, H, W)``.
        """
        self._check(target, support_images, support_labels, shared=False)
        t = einops.rearrange(target, "b c h w -> b 1 c h w")
        s = torch.cat([support_images, support_labels], dim=2)  # (B, S, C+1, H, W)
        skips = []
        for i, block in enumerate(self.enc_blocks):
            t, s = block(t, s)  # (B, 1, F, h, w), (B, S, F, h, w)
            if i < len(self.enc_blocks) - 1:
                skips.append((t, s))
                t, s = _per_item(_down, t), _per_item(_down, s)
        for i, block in enumerate(self.dec_blocks):
            t_skip, s_skip = skips.pop()
            t = torch.cat([_per_item(_up, t), t_skip], dim=2)  # (B, 1, F+Fs, h, w)
            s = torch.cat([_per_item(_up, s), s_skip], dim=2)  # (B, S, F+Fs, h, w)
            t, s = block(t, s, with_support=i < len(self.dec_blocks) - 1)  # last support output is unused
        return self.out_conv(einops.rearrange(t, "b 1 c h w -> b c h w"))

    def encode_support(self, support_images: Tensor, support_labels: Tensor, channels_last: bool = True
                       ) -> tuple[Tensor, Tensor]:
        """The support-only work of :meth:`forward_shared`'s first block, to reuse across calls that
        share the support set (e.g. query slices processed in several chunks).

        Args:
            support_images: ``(S, C, H, W)``; support_labels: ``(S, 1, H, W)``.

        Returns:
            ``(sum over the support of the cross conv's support half + bias (F, H, W), the support conv
            applied to each (S, F, H, W))``: pass it as ``forward_shared(..., support_features=...)``.
        """
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        support = torch.cat([support_images, support_labels], dim=1).contiguous(memory_format=memory_format)
        return _first_support(self.enc_blocks[0], support, self.in_channels)  # later features inherit its layout

    def forward_shared(
        self,
        targets: Tensor,
        support_images: Tensor,
        support_labels: Tensor,
        support_chunk: int | None = None,
        channels_last: bool = True,
        support_features: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """UniverSeg for ``N`` targets sharing one support set; equals :meth:`forward` with the support repeated.

        Uses ``conv(cat(t, s_j)) = W_t * t + W_s * s_j + b``: each target half is computed once per
        target, the first block's support half once for all ``N`` targets, and decoder inputs
        ``cat(up, skip)`` are convolved piecewise, never concatenated. In the last decoder block,
        whose support output is unused, the support inputs are averaged before the (linear) cross
        conv, so that full-resolution block costs one conv per target instead of one per pair. Memory is dominated by the
        stored support features, ``N * S * F * H * W`` at full resolution, plus what one chunk needs.

        Args:
            targets: ``(N, C, H, W)``.
            support_images: ``(S, C, H, W)``.
            support_labels: ``(S, 1, H, W)``.
            support_chunk: process at most this many support items at a time (``None``: all ``S``).
            channels_last: run the features in channels-last layout (same values; convolutions, pooling
                and the support sums are 1.3-1.7x faster on CPU, see docs/performance.md).
            support_features: :meth:`encode_support` of this support set (same ``channels_last``),
                to reuse the first block's support-only work across calls; ``None``: computed here.

        Returns:
            logits ``(N, 1, H, W)``.
        """
        self._check(targets, support_images, support_labels, shared=True)
        num_support = support_images.shape[0]
        if support_chunk is not None and (isinstance(support_chunk, bool) or int(support_chunk) < 1):
            raise ValueError(f"support_chunk must be a positive integer or None, got {support_chunk!r}")
        chunk = num_support if support_chunk is None else min(int(support_chunk), num_support)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        block_args = dict(num_support=num_support, chunk=chunk, memory_format=memory_format)

        if support_features is None:
            support_features = self.encode_support(support_images, support_labels, channels_last)
        elif support_features[1].shape[0] != num_support:
            raise ValueError(f"support_features are for {support_features[1].shape[0]} support items, got {num_support}")
        t, s = _first_block(self.enc_blocks[0], targets, support_features, **block_args)  # (N, F, H, W), (N, S, F, H, W)
        skips = []
        for block in self.enc_blocks[1:]:
            skips.append((t, s))
            t, s = _shared_block(block, [_down(t)], partial(_pooled_input, s), **block_args)
        for i, block in enumerate(self.dec_blocks):
            t_skip, s_skip = skips.pop()
            target_parts, support_parts = [_up(t), t_skip], partial(_decoder_input, s, s_skip)
            if i < len(self.dec_blocks) - 1:
                t, s = _shared_block(block, target_parts, support_parts, **block_args)
            else:  # only the target output is used: average the support first (exact, S x cheaper)
                t = _target_only_block(block, target_parts, support_parts, **block_args)
        return self.out_conv(t)


def inflate_to_context(state_dict: dict[str, Tensor], context: int) -> dict[str, Tensor]:
    """Turn a 1-channel UniverSeg state dict into one for ``2k+1`` target / ``2k+2`` support channels.

    The old first-block weights go on the centre slice (index ``k``) of the target and of the support
    image, the label weights stay on the label channel, and every other slice gets zeros, so the
    inflated model gives identical outputs for any input whose centre channel equals the
    1-channel input (until fine-tuning moves the zeros). Returns a new dict; the input is unchanged.
    """
    if isinstance(context, bool) or int(context) != context or context < 0:
        raise ValueError(f"context must be a non-negative integer, got {context!r}")
    weight = state_dict.get(_ENC0_CROSS_WEIGHT)
    if weight is None or weight.ndim != 4 or weight.shape[1] != 3:
        shape = None if weight is None else tuple(weight.shape)
        raise ValueError(f"expected a 1-channel UniverSeg state dict ({_ENC0_CROSS_WEIGHT} of shape (F, 3, 3, 3)), "
                         f"got {shape}")
    k, channels = int(context), 2 * int(context) + 1
    # Input channels: [target slices 0..2k, support image slices 0..2k, support label].
    inflated = weight.new_zeros((weight.shape[0], 2 * channels + 1, *weight.shape[2:]))
    inflated[:, k] = weight[:, 0]
    inflated[:, channels + k] = weight[:, 1]
    inflated[:, 2 * channels] = weight[:, 2]
    return {**state_dict, _ENC0_CROSS_WEIGHT: inflated}
