"""Refine another backend's coarse probabilities with SAM: box + mask prompts per slice and class.

For each slab and class, the coarse map (e.g. UniverSeg's probabilities resampled onto SAM's slab
frame) gives SAM two prompts at once: the bounding box of its ``> threshold`` region and the map
itself as a mask prompt (logits at the decoder's ``4h × 4w`` mask-input size). Slices where the coarse
map is empty stay empty: SAM is never asked to invent a structure.
"""

from __future__ import annotations

from typing import Protocol

import torch
from einops import rearrange, repeat
from segment_anything.modeling import Sam

from .decoding import decode
from .prompts import mask_boxes
from .transforms import mask_logits, upsample_logits

class SamRefiner(Protocol):
    """What refinement needs from a SAM backend (:class:`fewshotcx.backends.sam.SamBackend` has it)."""

    sam: Sam
    device: torch.device
    slice_size: int
    decode_batch: int

    def embed(self, slabs: torch.Tensor) -> torch.Tensor:
        """``(N, 2k+1, s, s)`` slabs in ``[0, 1]`` → ``(N, C, h, w)`` image embeddings."""
        ...


@torch.inference_mode()
def refine_with_sam(sam_backend: SamRefiner, probs: torch.Tensor, slabs: torch.Tensor,
                    threshold: float = 0.5) -> torch.Tensor:
    """Refined probabilities from coarse ones.

    Args:
        sam_backend: supplies the model, preprocessing and embedding cache (no ``fit`` needed).
        probs: ``(N, L, s, s)`` coarse probabilities on the same slabs (``s`` = ``sam_backend.slice_size``).
        slabs: ``(N, 2k+1, s, s)`` slabs in ``[0, 1]`` cut with ``sam_backend.resize_mode`` and ``context``.
        threshold: where the coarse map counts as foreground for the box.
    Returns:
        ``(N, L, s, s)`` float32 probabilities; 0 wherever the coarse map had no foreground.
    """
    n, num_classes, s = probs.shape[0], probs.shape[1], sam_backend.slice_size
    if probs.shape[-2:] != (s, s) or slabs.shape[0] != n:
        raise ValueError(f"expected ({slabs.shape[0]}, L, {s}, {s}) probabilities for {slabs.shape[0]} slabs, "
                         f"got {tuple(probs.shape)}")
    sam = sam_backend.sam
    device = sam_backend.device
    rows = rearrange(probs.to(device).float(), "n l h w -> (n l) 1 h w")
    boxes, present = mask_boxes(rows[:, 0] > threshold)
    embeddings = sam_backend.embed(slabs)
    out = []
    step = sam_backend.decode_batch
    for i in range(0, rows.shape[0], step):
        part = slice(i, i + step)
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[part],
                                           masks=mask_logits(rows[part], sam.prompt_encoder.mask_input_size))
        image_rows = repeat(embeddings, "n c h w -> (n l) c h w", l=num_classes)[part]
        logits, _ = decode(sam.mask_decoder, sam.prompt_encoder.get_dense_pe(), image_rows, sparse, dense)
        out.append(logits)
    refined = torch.sigmoid(upsample_logits(rearrange(torch.cat(out), "(n l) h w -> n l h w", l=num_classes), s))
    return refined * rearrange(present, "(n l) -> n l 1 1", l=num_classes).float()
