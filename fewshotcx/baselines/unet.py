"""The supervised few-shot baseline: a small 2D U-Net trained from scratch on the support slices.

An in-context model has to beat the obvious alternative: train an ordinary segmentation network on
the very slices that would have been its support set. :func:`train_unet_2d` fits a small U-Net
(16 base channels, 3 resolution levels by default) to ``M`` labelled slabs with light augmentation;
:class:`UNetBackend` makes it a backend of :class:`fewshotcx.Segmenter`, so it predicts through the
Segmenter's own path (canonical RAS, volume-level intensity normalisation, the same 2.5D slabs,
aspect-preserving resize/pad to ``s × s``, exact reassembly onto the query's grid) and the two are
compared on identical inputs.

Augmentation: small random affine + elastic warps and intensity changes (gamma, contrast,
brightness, noise, blur) from :mod:`fewshotcx.training.augment`. Flips are off by default because they break
laterality (a flipped *left* hippocampus looks like a right one) and anatomical asymmetry; pass
``flips=True`` for structures where that does not matter.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..backends.base import Fitted, LegacyCalls, slab_call
from ..training.augment import AugmentConfig, flip_rotate, intensity_augment, random_warp
from ..pipeline.intensity import minmax_per_slice
from ..pipeline.slicing import SliceGeometry
from ..pipeline.support import SupportPool, SupportVolumes
from ..training.loop import episode_loss

#: Light example-level augmentation: mild warps and intensity changes, no task-level remapping.
LIGHT_AUGMENT = AugmentConfig(p_flip=0.0, p_rot90=0.0, p_invert=0.0, p_remap=0.0, p_edges=0.0,
                              max_rotation_deg=10.0, max_scale=0.08, max_shift=0.04, elastic=0.02)


class DoubleConv(nn.Sequential):
    """Two (3×3 conv → BatchNorm → LeakyReLU) layers: ``(N, C_in, H, W)`` → ``(N, C_out, H, W)``.

    BatchNorm rather than GroupNorm: it trains as well at batch 8 and is about twice as fast on CPU.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.01),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.01),
        )


class UNet2d(nn.Module):
    """A small 2D U-Net: ``levels`` resolutions, channels doubling from ``base_channels``.

    Input ``(N, C, H, W)`` with ``H`` and ``W`` divisible by ``2 ** (levels - 1)``; output logits
    ``(N, 1, H, W)``. ``slice_size`` and ``context`` record the slab geometry the network was trained
    on (set by :func:`train_unet_2d`) so :class:`UNetBackend` can cut the same slabs.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 16, levels: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1 or levels < 2:
            raise ValueError(f"need in_channels >= 1, base_channels >= 1, levels >= 2; got {in_channels}, "
                             f"{base_channels}, {levels}")
        widths = [base_channels * 2 ** i for i in range(levels)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(DoubleConv(previous, width))
            previous = width
        self.decoders = nn.ModuleList(DoubleConv(wide + narrow, narrow)
                                      for wide, narrow in zip(widths[:0:-1], widths[-2::-1]))
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.in_channels, self.levels = in_channels, levels
        self.slice_size: Optional[int] = None
        self.context: int = (in_channels - 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        factor = 2 ** (self.levels - 1)
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"expected (N, {self.in_channels}, H, W) with H, W divisible by {factor}, "
                             f"got {tuple(x.shape)}")
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for decoder, skip in zip(self.decoders, skips[-2::-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = decoder(torch.cat([x, skip], dim=1))
        return self.head(x)


def _check_training_data(images: Tensor, labels: Tensor) -> None:
    if images.ndim != 4 or labels.ndim != 4 or labels.shape[1] != 1:
        raise ValueError(f"expected images (M, C, s, s) and labels (M, 1, s, s), got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    if images.shape[0] != labels.shape[0] or images.shape[0] < 1 or images.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} need the same, "
                         "non-zero, number of slices and the same size")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"slices must be square (s × s), got {tuple(images.shape[-2:])}")
    if images.shape[1] % 2 != 1:
        raise ValueError(f"images need 2k+1 slab channels, got {images.shape[1]}")


def _augment(images: Tensor, labels: Tensor, generator: torch.Generator, flips: bool) -> tuple[Tensor, Tensor]:
    """Warps + intensity changes per example (and, with ``flips``, one random flip per batch)."""
    if flips:
        flip_h, flip_w = (bool(torch.rand((), generator=generator) < 0.5) for _ in range(2))
        images, labels = flip_rotate(images, flip_h, flip_w, 0), flip_rotate(labels, flip_h, flip_w, 0)
    warp = torch.rand(images.shape[0], generator=generator) < 0.5
    if warp.any():
        chosen = torch.nonzero(warp).flatten().to(images.device)
        warped_images, warped_labels = random_warp(images[chosen], labels[chosen], generator, LIGHT_AUGMENT)
        images, labels = images.index_copy(0, chosen, warped_images), labels.index_copy(0, chosen, warped_labels)
    return intensity_augment(images, generator, LIGHT_AUGMENT).clamp_(0.0, 1.0), labels


def train_unet_2d(
    images: Tensor,
    labels: Tensor,
    steps: int = 300,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 8,
    lr: float = 3e-3,
    base_channels: int = 16,
    levels: int = 3,
    augment: bool = True,
    flips: bool = False,
) -> UNet2d:
    """Train a :class:`UNet2d` from scratch on ``M`` labelled slabs.

    Args:
        images: ``(M, C, s, s)`` slabs in ``[0, 1]`` (``C = 2k+1``; e.g. ``SupportPool.images``);
            each is min-max scaled per slab, as :func:`unet_predict_slabs` does.
        labels: ``(M, 1, s, s)`` soft masks in ``[0, 1]``.
        steps: optimisation steps (AdamW, cosine learning-rate decay, soft Dice + cross-entropy loss).
        seed: seeds the initialisation, batch sampling and augmentation.
        batch_size: slabs per step, drawn with replacement.
        augment: warps and intensity changes (see the module docstring); ``flips`` adds random flips.
    Returns:
        the trained network in eval mode, on ``device``, with ``slice_size`` and ``context`` set.
    """
    _check_training_data(images, labels)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet2d(images.shape[1], base_channels, levels)
    model.slice_size, model.context = int(images.shape[-1]), (int(images.shape[1]) - 1) // 2
    model.to(device).train()
    images, labels = images.to(device, torch.float32), labels.to(device, torch.float32).clamp(0.0, 1.0)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    for _ in range(steps):
        batch = torch.randint(images.shape[0], (batch_size,), generator=generator).to(device)
        x, y = images[batch], labels[batch]
        if augment:
            x, y = _augment(x, y, generator, flips)
        loss = episode_loss(model(minmax_per_slice(x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


@torch.inference_mode()
def unet_predict_slabs(model: UNet2d, slabs: Tensor, batch_size: int = 32) -> Tensor:
    """Foreground probabilities ``(N, 1, s, s)`` for ``(N, C, s, s)`` slabs in ``[0, 1]``."""
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(minmax_per_slice(slabs[i:i + batch_size].to(device, torch.float32))))
           for i in range(0, slabs.shape[0], batch_size)]
    return torch.cat(out) if out else slabs.new_zeros((0, 1, *slabs.shape[-2:]))


class UNetBackend(LegacyCalls):
    """The 2D U-Net as a :class:`~fewshotcx.backends.base.Backend`, so it predicts through
    :class:`fewshotcx.Segmenter`'s own path (normalisation, 2.5D slabs, chunking, reassembly onto the
    query's grid, post-processing)::

        seg = fx.Segmenter(backend=UNetBackend(steps=300)).fit(images, labels)
        mask = seg.predict(query)

    Args:
        model: an already trained :class:`UNet2d` (single structure); :meth:`condition` then only checks
            the support has one class. ``None``: :meth:`condition` trains one network per class
            (one-vs-rest) on the support pool of each plane axis with :func:`train_unet_2d`.
        slice_size, context: slab geometry when training (ignored with ``model``, which records its own).
        device: where the networks train and run.
        **train_options: passed to :func:`train_unet_2d` (``steps``, ``seed``, ``base_channels``, …).
    """

    name = "unet"
    resize_mode = "pad"

    def __init__(self, model: Optional[UNet2d] = None, slice_size: int = 128, context: int = 1,
                 device: Union[str, torch.device] = "cpu", **train_options) -> None:
        if model is not None and model.slice_size is None:
            raise ValueError("this UNet2d has no slice_size: train it with train_unet_2d or set model.slice_size")
        if model is not None and train_options:
            raise ValueError(f"training options {sorted(train_options)} make no sense with a trained model")
        self.model = model
        self.slice_size = int(model.slice_size if model is not None else slice_size)
        self.context = int(model.context if model is not None else context)
        self.device = torch.device(device)
        self.train_options = train_options

    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """Train (or, with ``model``, adopt) one network per foreground class for each plane axis: the
        value's ``state`` maps axis → tuple of networks."""
        if self.model is not None:
            if any(pool.labels.shape[1] != 1 for pool in pools.values()):
                raise ValueError("a trained UNet2d segments one structure; the support has several label values")
            networks = {axis: (self.model.to(self.device),) for axis in pools}
        else:
            networks = {axis: tuple(train_unet_2d(pool.images, pool.labels[:, c:c + 1], device=self.device,
                                                  **self.train_options) for c in range(pool.labels.shape[1]))
                        for axis, pool in pools.items()}
        return Fitted(support, pools, MappingProxyType(networks), own_scan)

    def predict_slices(self, fitted: Fitted, slabs: Tensor, geometry: SliceGeometry,
                       generator: Optional[torch.Generator] = None) -> Tensor:
        """``(N, 2k+1, s, s)`` slabs → ``(N, L, s, s)`` probabilities, one channel per class."""
        fitted, slabs, geometry, generator = slab_call(self, fitted, slabs, geometry, generator)
        return torch.cat([unet_predict_slabs(net, slabs) for net in fitted.state[geometry.axis]], dim=1)

    def bytes_per_slab(self, fitted: Optional[Fitted] = None) -> int:
        width = 16 if self.model is None else self.model.encoders[0][0].out_channels
        return int(6 * 4 * width * self.slice_size ** 2)
