"""UniverSeg building blocks: :class:`CrossConv`, :class:`CrossBlock` and the per-item helpers.

The plain pairwise layers of :class:`~fewshotcx.models.universeg.UniverSeg` (official v1 layout:
their attribute names make the state-dict keys); imported from there.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEGATIVE_SLOPE = 0.01


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

