"""Shared-support forward of UniverSeg: ``N`` targets, one support set, by split cross-conv weights.

``conv(cat(t, s_j)) = W_t * t + W_s * s_j + b``: the target half once per target (not ``S`` times),
the first block's support half once per support set, decoder concatenations never built, and the
support axis optionally processed in chunks to bound memory. Used by
:meth:`~fewshotcx.models.universeg.UniverSeg.forward_shared`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import einops
import torch
import torch.nn.functional as F
from torch import Tensor

from .universeg_layers import NEGATIVE_SLOPE, CrossBlock, _down, _per_item, _up


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
