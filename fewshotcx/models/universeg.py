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

from collections.abc import Callable, Sequence
from functools import partial

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

V1_ENCODER_BLOCKS = (64, 64, 64, 64)
V1_DECODER_BLOCKS = (64, 64, 64)
NEGATIVE_SLOPE = 0.01

_ENC0_CROSS_WEIGHT = "enc_blocks.0.cross.cross_conv.weight"


def _init_conv(conv: nn.Conv2d, nonlinearity: str) -> None:
    """Kaiming-normal weights for the following ``nonlinearity`` ("leaky_relu" or "linear"), zero bias."""
    nn.init.kaiming_normal_(conv.weight, nonlinearity=nonlinearity)
    nn.init.zeros_(conv.bias)


def _per_item(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply an image op to every item of a group: ``(B, S, C, H, W) -> (B, S, C', H', W')``."""
    out = fn(einops.rearrange(x, "b s c h w -> (b s) c h w"))  # (B*S, C', H', W')
    return einops.rearrange(out, "(b s) c h w -> b s c h w", b=x.shape[0])


def _down(x: Tensor) -> Tensor:
    """2×2 max-pooling: ``(M, C, H, W) -> (M, C, H/2, W/2)``."""
    return F.max_pool2d(x, kernel_size=2)


def _up(x: Tensor) -> Tensor:
    """Bilinear ×2 upsampling with ``align_corners=True``: ``(M, C, h, w) -> (M, C, 2h, 2w)``."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ConvAct(nn.Module):
    """'Same' k×k convolution, optionally followed by LeakyReLU(0.01): ``(M, Cin, H, W) -> (M, Cout, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, activation: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.activation = activation
        _init_conv(self.conv, "leaky_relu" if activation else "linear")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        # In place on the fresh conv output: safe for autograd (slope > 0) and saves one buffer.
        return F.leaky_relu(x, NEGATIVE_SLOPE, inplace=True) if self.activation else x


class PerItem(nn.Module):
    """Applies ``vmapped`` to every item of a group: ``(B, S, C, H, W) -> (B, S, C', H, W)``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.vmapped = module

    def forward(self, x: Tensor) -> Tensor:
        return _per_item(self.vmapped, x)


class CrossConv(nn.Module):
    """One 3×3 conv over ``cat(target, support_j)`` for every support item ``j`` (no nonlinearity)."""

    def __init__(self, target_channels: int, support_channels: int, out_channels: int) -> None:
        super().__init__()
        self.cross_conv = nn.Conv2d(target_channels + support_channels, out_channels, 3, padding=1)
        _init_conv(self.cross_conv, "linear")

    def forward(self, target: Tensor, support: Tensor) -> Tensor:
        """``target (B, 1, Ct, H, W)``, ``support (B, S, Cs, H, W)`` -> pair outputs ``(B, S, F, H, W)``."""
        s = support.shape[1]
        pairs = torch.cat([target.expand(-1, s, -1, -1, -1), support], dim=2)  # (B, S, Ct+Cs, H, W)
        return _per_item(self.cross_conv, pairs)


class CrossBlock(nn.Module):
    """CrossConv, mean over the support for the target, then a conv + LeakyReLU on each side."""

    def __init__(self, target_channels: int, support_channels: int, features: int) -> None:
        super().__init__()
        self.cross = CrossConv(target_channels, support_channels, features)
        self.target = PerItem(ConvAct(features, features))
        self.support = PerItem(ConvAct(features, features))

    def forward(self, target: Tensor, support: Tensor, with_support: bool = True) -> tuple[Tensor, Tensor | None]:
        """``target (B, 1, Ct, H, W)``, ``support (B, S, Cs, H, W)`` -> ``(B, 1, F, H, W)``, ``(B, S, F, H, W)``.

        ``with_support=False`` skips the support conv (its output is ``None``), e.g. in the last block.
        """
        pairs = self.cross(target, support)  # (B, S, F, H, W)
        new_target = self.target(pairs.mean(dim=1, keepdim=True))  # (B, 1, F, H, W)
        return new_target, (self.support(pairs) if with_support else None)


# ---------------------------------------------------------------- shared-support helpers
def _sum_items(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Sum over the support-item axis -4 in ``dtype``: ``(..., c, F, h, w) -> (..., F, h, w)``.

    With channels-last features (channel stride 1) the sum runs on the ``(..., c, h, w, F)`` view,
    which is contiguous: reducing the permuted layout directly is ~20x slower on CPU. The result keeps
    the input's layout.
    """
    if x.stride(-3) == 1 and x.shape[-3] > 1:
        return x.movedim(-3, -1).sum(dim=-4, dtype=dtype).movedim(-1, -3)
    return x.sum(dim=-4, dtype=dtype)


def _empty_items(like: Tensor, num_items: int, batch: int | None = None) -> Tensor:
    """Uninitialised ``(N, num_items, F, h, w)`` buffer for items shaped like ``like (N', c, F, h, w)``,
    in its layout; ``N = batch`` if given, else ``N'``."""
    n, _, f, h, w = like.shape
    n = n if batch is None else batch
    if like.stride(2) == 1 and f > 1:  # channels-last items: allocate (N, S, h, w, F) and view it as (N, S, F, h, w)
        return like.new_empty((n, num_items, h, w, f)).movedim(-1, 2)
    return like.new_empty((n, num_items, f, h, w))


def _pooled_input(previous: Tensor, items: slice) -> list[Tensor]:
    """Later encoder blocks: the previous block's support, pooled: ``[(N, c, F, h, w)]``."""
    return [_per_item(_down, previous[:, items])]


def _decoder_input(previous: Tensor, skip: Tensor, items: slice) -> list[Tensor]:
    """Decoder blocks: the two halves of ``cat(up(previous), skip)``: ``[(N, c, F, h, w), (N, c, Fs, h, w)]``."""
    return [_per_item(_up, previous[:, items]), skip[:, items]]


def _collect(out: Tensor | None, new: Tensor, items: slice, num_support: int) -> Tensor:
    """One support chunk's new features ``new (N, c, F, h, w)`` placed at ``items`` of ``out (N, S, F, h, w)``
    (allocated on the first chunk; ``new`` itself when it holds the whole support)."""
    if new.shape[1] == num_support:
        return new
    if out is None:
        out = _empty_items(new, num_support)
    out[:, items] = new
    return out


def _first_support(block: CrossBlock, support: Tensor, target_channels: int) -> tuple[Tensor, Tensor]:
    """The support-only half of the first CrossBlock (see :func:`_first_block`).

    Args:
        support: ``(S, C+1, H, W)`` = cat(image, label); target_channels: ``C``.

    Returns:
        ``sum_j (W_s * s_j + b)`` ``(F, H, W)`` (at least float32) and ``C(W_s * s_j + b)`` ``(S, F, H, W)``.
    """
    cross, after = block.cross.cross_conv, block.support.vmapped.conv
    support_term = F.conv2d(support, cross.weight[:, target_channels:], cross.bias, padding=cross.padding[0])
    return _sum_items(support_term, torch.promote_types(support_term.dtype, torch.float32)), after(support_term)


def _first_block(
    block: CrossBlock,
    targets: Tensor,
    support_features: tuple[Tensor, Tensor],
    num_support: int,
    chunk: int,
    memory_format: torch.memory_format,
) -> tuple[Tensor, Tensor]:
    """The first CrossBlock, whose support input is the same for every target.

    Its support output is ``act(C(W_t * t + W_s * s_j + b))`` with ``C`` the support conv, and nothing
    nonlinear sits before ``act``, so ``C(W_t * t + W_s * s_j + b) = C(W_s * s_j + b) + C_w * (W_t * t)``
    (``C_w``: ``C`` without its bias; zero padding keeps this exact): the first term once per support
    item (:func:`_first_support`, reusable across calls), the second once per target, and only the sum
    and the activation per (target, support) pair.

    Args:
        targets: ``(N, C, H, W)``; support_features: :func:`_first_support`'s output; the rest as
            :func:`_shared_block`.

    Returns:
        target ``(N, F, H, W)`` and support ``(N, S, F, H, W)``.
    """
    cross, after = block.cross.cross_conv, block.support.vmapped.conv
    support_sum, support_after = support_features
    target_term = F.conv2d(targets, cross.weight[:, :targets.shape[1]], padding=cross.padding[0])  # W_t * t
    target_term = target_term.contiguous(memory_format=memory_format)  # (N, F, H, W)
    target_after = F.conv2d(target_term, after.weight, padding=after.padding[0])  # C_w * (W_t * t): (N, F, H, W)
    target_after = einops.rearrange(target_after, "n f h w -> n 1 f h w")
    support_out = None  # (N, S, F, H, W)
    for start in range(0, num_support, chunk):
        items = slice(start, min(start + chunk, num_support))
        support_part = einops.rearrange(support_after[items], "c f h w -> 1 c f h w")
        pairs = _empty_items(support_part, support_part.shape[1], batch=targets.shape[0])  # (N, c, F, H, W)
        pairs.copy_(support_part.expand_as(pairs)).add_(target_after)
        support_out = _collect(support_out, F.leaky_relu(pairs, NEGATIVE_SLOPE, inplace=True), items, num_support)
    mean = (support_sum / num_support).to(target_term.dtype) + target_term  # mean_j of the pairs: (N, F, H, W)
    return block.target.vmapped(mean), support_out


def _shared_block(
    block: CrossBlock,
    target_parts: list[Tensor],
    support_parts: Callable[[slice], list[Tensor]],
    num_support: int,
    chunk: int,
    memory_format: torch.memory_format,
) -> tuple[Tensor, Tensor]:
    """One CrossBlock for ``N`` targets sharing one support set, by split weights.

    Args:
        target_parts: the target input's channel groups, in order, each ``(N, c_k, h, w)``.
        support_parts: support items ``j`` -> their input's channel groups, in order, each
            ``(N, c, c_k, h, w)``.
        num_support: ``S``; the support axis is processed ``chunk`` items at a time.
        memory_format: layout of the features (a 1-channel input's conv output would otherwise fall
            back to NCHW, and adding it to channels-last pairs is slow).

    Returns:
        target ``(N, F, h, w)`` and support ``(N, S, F, h, w)``.
    """
    conv = block.cross.cross_conv
    padding = conv.padding[0]
    target_sizes = [part.shape[1] for part in target_parts]
    weights = torch.split(conv.weight, [*target_sizes, conv.in_channels - sum(target_sizes)], dim=1)
    target_weights, support_weight = weights[:-1], weights[-1]
    # W_t * t + b, once per target: (N, F, h, w); the bias rides on the first conv (keeps autocast dtypes).
    target_term = sum(
        F.conv2d(part, weight, conv.bias if k == 0 else None, padding=padding)
        for k, (part, weight) in enumerate(zip(target_parts, target_weights))
    ).contiguous(memory_format=memory_format)
    target_sum = None  # (N, F, h, w) running sum over j, at least float32 (bf16 under autocast)
    support_out = None  # (N, S, F, h, w)
    for start in range(0, num_support, chunk):
        items = slice(start, min(start + chunk, num_support))
        parts = support_parts(items)
        part_weights = torch.split(support_weight, [part.shape[2] for part in parts], dim=1)
        pairs = None  # W_s * s_j, summed over the input's channel groups: (N, c, F, h, w)
        for part, weight in zip(parts, part_weights):
            term = _per_item(partial(F.conv2d, weight=weight, padding=padding), part)
            pairs = term if pairs is None else pairs.add_(term)
        pairs = pairs.add_(einops.rearrange(target_term, "n f h w -> n 1 f h w"))  # + W_t * t + b: (N, c, F, h, w)
        chunk_sum = _sum_items(pairs, torch.promote_types(pairs.dtype, torch.float32))  # (N, F, h, w)
        target_sum = chunk_sum if target_sum is None else target_sum + chunk_sum
        support_out = _collect(support_out, block.support(pairs), items, num_support)  # support conv: (N, c, F, h, w)
        del pairs
    mean = (target_sum / num_support).to(target_term.dtype)  # (N, F, h, w)
    return block.target.vmapped(mean), support_out


def _target_only_block(
    block: CrossBlock,
    target_parts: list[Tensor],
    support_parts: Callable[[slice], list[Tensor]],
    num_support: int,
    chunk: int,
    memory_format: torch.memory_format,
) -> Tensor:
    """A CrossBlock whose support output is not needed (the last decoder block), at per-target cost.

    Nothing nonlinear sits between the cross conv and the mean over the support, so
    ``mean_j conv(cat(t, s_j)) = conv(cat(t, mean_j s_j))`` exactly: the support inputs are averaged
    first and the cross conv runs once per target instead of once per (target, support) pair.

    Args: as :func:`_shared_block`. Returns the new target ``(N, F, h, w)``.
    """
    sums: list[Tensor] | None = None  # per channel group: (N, c_k, h, w) or (c_k, h, w), float32 or wider
    for start in range(0, num_support, chunk):
        parts = support_parts(slice(start, min(start + chunk, num_support)))
        # the support-item axis is -4 in both layouts: (N, c, c_k, h, w) and (c, c_k, h, w)
        part_sums = [_sum_items(part, torch.promote_types(part.dtype, torch.float32)) for part in parts]
        sums = part_sums if sums is None else [a + b for a, b in zip(sums, part_sums)]
    n = target_parts[0].shape[0]
    dtype = target_parts[0].dtype
    means = [(total / num_support).to(dtype).expand(n, -1, -1, -1) for total in sums]  # each (N, c_k, h, w)
    conv = block.cross.cross_conv
    pair_mean = conv(torch.cat([*target_parts, *means], dim=1).contiguous(memory_format=memory_format))  # (N, F, h, w)
    return block.target.vmapped(pair_mean)


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
