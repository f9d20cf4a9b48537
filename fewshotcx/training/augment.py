"""In-context augmentations of whole episodes, batched on the tensors' device.

Two levels, as in the UniverSeg paper:

* **Task-level** (:func:`task_augment`): one random transform for every example of an episode
  (support and queries alike), so the episode stays a consistent task but becomes a *new* task:
  flips / 90° rotations, intensity inversion, a random intensity remapping (the image is binned into
  intensity classes, a pseudo label map, and every class gets a new random intensity: label-map
  synthesis of a new appearance), boundary-only labels (Sobel edges of the mask).
* **Example-level** (:func:`example_augment`): an independent random transform per example, for
  variability *within* a task: small affine + elastic warps (applied identically to image and label),
  gamma, contrast / brightness, Gaussian noise and blur (image only).

Images are ``(N, C, H, W)`` in ``[0, 1]`` (``C = 2k+1`` slab channels move together), labels
``(N, 1, H, W)`` soft masks. Random draws come from a :class:`torch.Generator` on the tensors'
device, so an augmented run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (``p_*``) and magnitudes of the augmentations (set a probability to 0 to disable)."""

    # task level
    p_flip: float = 0.5
    p_rot90: float = 0.5
    p_invert: float = 0.2
    p_remap: float = 0.15
    remap_bins: int = 6
    p_edges: float = 0.05
    # example level
    p_warp: float = 0.5
    max_rotation_deg: float = 15.0
    max_scale: float = 0.12
    max_shift: float = 0.06
    elastic: float = 0.03
    p_gamma: float = 0.5
    max_log_gamma: float = 0.4
    p_contrast: float = 0.5
    max_contrast: float = 0.25
    max_brightness: float = 0.1
    p_noise: float = 0.3
    max_noise: float = 0.05
    p_blur: float = 0.2
    max_blur_sigma: float = 1.0


def _uniform(n: int, generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def _coin(p: float, generator: torch.Generator) -> bool:
    return bool(torch.rand((), generator=generator, device=generator.device) < p)


# ------------------------------------------------------------------------------------- task level
def flip_rotate(x: Tensor, flip_h: bool, flip_w: bool, quarter_turns: int) -> Tensor:
    """Flip the last two axes and rotate by ``quarter_turns`` × 90°: ``(N, C, H, W)`` (H = W) → same shape."""
    dims = [d for d, on in ((-2, flip_h), (-1, flip_w)) if on]
    if dims:
        x = x.flip(dims)
    return torch.rot90(x, quarter_turns, dims=(-2, -1)) if quarter_turns % 4 else x


def remap_intensities(images: Tensor, generator: torch.Generator, bins: int) -> Tensor:
    """One random intensity curve for all images: ``bins`` quantile classes, each with a new random
    intensity, linearly interpolated inside (so textures within a class survive)."""
    knots = _uniform(bins + 1, generator).to(images.device)  # new intensity at each class boundary
    position = images.clamp(0.0, 1.0) * bins
    low = position.floor().clamp_(max=bins - 1).long()
    frac = position - low
    return knots[low] * (1 - frac) + knots[low + 1] * frac


def edge_labels(labels: Tensor) -> Tensor:
    """Soft boundary of each mask: Sobel gradient magnitude, scaled to ``[0, 1]``: ``(N, 1, H, W)``."""
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=labels.device)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)  # (2, 1, 3, 3)
    grad = F.conv2d(F.pad(labels, (1, 1, 1, 1), mode="replicate"), kernels)
    return (grad.pow(2).sum(dim=1, keepdim=True).sqrt() / 2.0).clamp_(0.0, 1.0)


def task_augment(images: Tensor, labels: Tensor, generator: torch.Generator,
                 config: AugmentConfig = AugmentConfig()) -> tuple[Tensor, Tensor]:
    """The same random transform on every example of an episode.

    Args:
        images: ``(N, C, H, W)`` (support and queries together); labels: ``(N, 1, H, W)``.
    Returns:
        augmented ``images``, ``labels`` (same shapes).
    """
    flip_h, flip_w = _coin(config.p_flip, generator), _coin(config.p_flip, generator)
    turns = int(torch.randint(1, 4, (), generator=generator, device=generator.device)) if _coin(config.p_rot90, generator) else 0
    if images.shape[-1] != images.shape[-2]:
        turns = 0
    images, labels = flip_rotate(images, flip_h, flip_w, turns), flip_rotate(labels, flip_h, flip_w, turns)
    if _coin(config.p_invert, generator):
        images = 1.0 - images
    if _coin(config.p_remap, generator):
        images = remap_intensities(images, generator, config.remap_bins)
    if _coin(config.p_edges, generator):
        labels = edge_labels(labels)
    return images, labels


# ---------------------------------------------------------------------------------- example level
def random_warp(images: Tensor, labels: Tensor, generator: torch.Generator,
                config: AugmentConfig = AugmentConfig()) -> tuple[Tensor, Tensor]:
    """A random affine (rotation, scale, shift) + smooth elastic warp per example, the same sampling
    grid for the image and its label (bilinear, zeros outside).

    Args:
        images: ``(N, C, H, W)``; labels: ``(N, 1, H, W)``.
    """
    n, _, h, w = images.shape
    device = images.device
    angle = _uniform(n, generator, -1.0, 1.0) * math.radians(config.max_rotation_deg)
    scale = torch.exp(_uniform(n, generator, -1.0, 1.0) * config.max_scale)
    shift = _uniform(2 * n, generator, -1.0, 1.0).view(n, 2) * 2 * config.max_shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), [n, 1, h, w], align_corners=False)  # (N, H, W, 2)
    if config.elastic > 0:
        coarse = torch.randn(n, 2, 5, 5, generator=generator, device=generator.device).to(device, images.dtype)
        displacement = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        grid = grid + config.elastic * rearrange(displacement, "n two h w -> n h w two")
    both = torch.cat([images, labels], dim=1)
    warped = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped[:, : images.shape[1]], warped[:, images.shape[1]:].clamp_(0.0, 1.0)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per example: ``(N, C, H, W)``, ``sigma (N,)``."""
    n, c, h, w = images.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x[None] / sigma[:, None].clamp_min(1e-3).to(images.dtype)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    flat = rearrange(images, "n c h w -> 1 (n c) h w")
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c)
    return rearrange(flat, "1 (n c) h w -> n c h w", n=n)


def _per_example(p: float, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``(N, 1, 1, 1)`` bool: which examples get an augmentation applied with probability ``p``."""
    return (_uniform(n, generator) < p).to(device).view(n, 1, 1, 1)


def intensity_augment(images: Tensor, generator: torch.Generator, config: AugmentConfig = AugmentConfig()) -> Tensor:
    """Per example, each with its probability: gamma, contrast/brightness, Gaussian noise, blur."""
    n, device = images.shape[0], images.device
    view = (n, 1, 1, 1)
    gamma = torch.exp(_uniform(n, generator, -1.0, 1.0) * config.max_log_gamma).to(device).view(view)
    images = torch.where(_per_example(config.p_gamma, n, generator, device), images.clamp(0, 1) ** gamma, images)
    contrast = (1 + _uniform(n, generator, -1.0, 1.0) * config.max_contrast).to(device).view(view)
    brightness = (_uniform(n, generator, -1.0, 1.0) * config.max_brightness).to(device).view(view)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = torch.where(_per_example(config.p_contrast, n, generator, device),
                         (images - mean) * contrast + mean + brightness, images)
    sigma_noise = (_uniform(n, generator) * config.max_noise).to(device).view(view)
    noise = torch.randn(images.shape, generator=generator, device=generator.device).to(device, images.dtype)
    images = torch.where(_per_example(config.p_noise, n, generator, device), images + sigma_noise * noise, images)
    blur = _per_example(config.p_blur, n, generator, device)
    sigma_blur = _uniform(n, generator, 0.3, max(config.max_blur_sigma, 0.3)).to(device)
    return torch.where(blur, gaussian_blur(images, sigma_blur), images) if config.p_blur > 0 else images


def example_augment(images: Tensor, labels: Tensor, generator: torch.Generator,
                    config: AugmentConfig = AugmentConfig()) -> tuple[Tensor, Tensor]:
    """Independent transforms per example: warps (with probability ``p_warp``) then intensity changes."""
    if config.p_warp > 0:
        chosen = torch.nonzero(_uniform(images.shape[0], generator) < config.p_warp).flatten().to(images.device)
        if chosen.numel():
            warped_images, warped_labels = random_warp(images[chosen], labels[chosen], generator, config)
            images, labels = images.index_copy(0, chosen, warped_images), labels.index_copy(0, chosen, warped_labels)
    return intensity_augment(images, generator, config), labels


def augment_episode(query_images: Tensor, query_labels: Tensor, support_images: Tensor, support_labels: Tensor,
                    generator: torch.Generator, config: AugmentConfig = AugmentConfig()
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Task-level then example-level augmentation of one episode (queries ``(Q, ...)``, support ``(S, ...)``).

    Returns:
        ``query_images, query_labels, support_images, support_labels`` with unchanged shapes.
    """
    q = query_images.shape[0]
    images = torch.cat([query_images, support_images])
    labels = torch.cat([query_labels, support_labels])
    images, labels = task_augment(images, labels, generator, config)
    images, labels = example_augment(images, labels, generator, config)
    return images[:q], labels[:q], images[q:], labels[q:]
