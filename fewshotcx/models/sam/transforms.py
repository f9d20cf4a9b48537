"""Pixel-level conversions between fewshotcx slabs and SAM's image / mask frames.

Slabs arrive as ``(N, 2k+1, s, s)`` volume-normalised intensities in ``[0, 1]``, already resized to
the encoder's ``s = img_size`` square by :mod:`fewshotcx.pipeline.slicing` (``"pad"`` for SAM, ``"stretch"`` for
MedSAM), so no resizing happens here:

* 2.5D → RGB: ``k = 1`` puts slices ``z-1, z, z+1`` in the R, G, B channels; ``k = 0`` repeats the slice.
* ``"sam"`` preprocessing: ``×255`` then SAM's per-channel pixel mean/std (as ``Sam.preprocess``).
  ``"medsam"``: ``[0, 1]`` intensities as they are (MedSAM's training input).
* Masks: SAM's decoder predicts logits at ``4×`` the embedding grid (256² for real SAM); they are
  upsampled bilinearly (``align_corners=False``, as ``Sam.postprocess_masks``) to ``s × s``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Preprocessing mode → the slicing ``resize_mode`` it expects.
RESIZE_MODES = {"sam": "pad", "medsam": "stretch"}


def check_mode(mode: str) -> str:
    """Validate a preprocessing mode name."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"preprocess must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    return mode


def to_rgb(slabs: torch.Tensor) -> torch.Tensor:
    """``(N, 2k+1, s, s)`` with ``k ∈ {0, 1}`` → ``(N, 3, s, s)`` float32."""
    depth = slabs.shape[1]
    if depth == 1:
        return slabs.float().expand(-1, 3, -1, -1)
    if depth == 3:
        return slabs.float()
    raise ValueError(f"SAM takes 1 or 3 slices per slab (context 0 or 1), got {depth}")


def preprocess(slabs: torch.Tensor, mode: str, pixel_mean: torch.Tensor, pixel_std: torch.Tensor) -> torch.Tensor:
    """Slabs in ``[0, 1]`` → encoder input ``(N, 3, s, s)``.

    Args:
        slabs: ``(N, 2k+1, s, s)``.
        mode: ``"sam"`` or ``"medsam"`` (see the module docstring).
        pixel_mean, pixel_std: ``(3, 1, 1)`` SAM normalisation constants (``Sam.pixel_mean``/``pixel_std``).
    """
    rgb = to_rgb(slabs)
    if check_mode(mode) == "medsam":
        return rgb.clamp(0.0, 1.0)
    return (rgb * 255.0 - pixel_mean) / pixel_std


def upsample_logits(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Low-resolution mask logits ``(N, L, h, w)`` → ``(N, L, size, size)`` (SAM's postprocessing)."""
    if logits.shape[-2:] == (size, size):
        return logits
    return F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Soft masks ``(N, L, s, s)`` → ``(N, L, *size)`` by area averaging (labels for low-res losses/pooling)."""
    if masks.shape[-2:] == tuple(size):
        return masks.float()
    return F.adaptive_avg_pool2d(masks.float(), size)


def mask_logits(probs: torch.Tensor, size: tuple[int, int], eps: float = 1e-4) -> torch.Tensor:
    """Probabilities ``(N, 1, s, s)`` → logits at SAM's mask-prompt size ``(N, 1, *size)``."""
    return torch.logit(resize_masks(probs, size).clamp(eps, 1.0 - eps))
