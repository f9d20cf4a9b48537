"""Batched mask decoding: many images, one prompt each, in one call of SAM's unmodified mask decoder.

``MaskDecoder.predict_masks`` expands a *single* image embedding to the number of prompt rows
(``repeat_interleave``) and then adds the dense prompt embedding. Passing a zero image embedding of
batch 1 and folding each row's own image embedding into its dense prompt gives, exactly, the
decoder's computation for row ``i`` with image ``i`` (``0 + (e_i + d_i)`` = ``e_i + d_i`` in floating
point as well), so ``B`` different images decode in one batched call without forking the package.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder


def decode(
    decoder: MaskDecoder,
    image_pe: torch.Tensor,
    embeddings: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per row, each row with its own image.

    Args:
        decoder: ``Sam.mask_decoder``.
        image_pe: ``(1, C, h, w)`` dense positional encoding (``prompt_encoder.get_dense_pe()``).
        embeddings: ``(B, C, h, w)`` image embedding of each row.
        sparse: ``(B, K, C)`` sparse prompt tokens of each row.
        dense: ``(B, C, h, w)`` dense prompt embedding of each row.
        multimask: decode SAM's three multimask outputs and keep the one with the highest predicted
            IoU (SAM's recommendation for ambiguous point prompts); else the single-mask output.
    Returns:
        ``(logits (B, 4h, 4w), iou (B,))`` low-resolution mask logits and predicted IoU.
    """
    if not (embeddings.shape[0] == sparse.shape[0] == dense.shape[0]):
        raise ValueError(f"one prompt row per image expected, got {embeddings.shape[0]} images, "
                         f"{sparse.shape[0]} sparse and {dense.shape[0]} dense prompts")
    zero = embeddings.new_zeros((1, *embeddings.shape[1:]))
    masks, iou = decoder(image_embeddings=zero, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                         dense_prompt_embeddings=embeddings + dense, multimask_output=multimask)
    best = iou.argmax(dim=1)  # (B,)
    rows = torch.arange(masks.shape[0], device=masks.device)
    return masks[rows, best], iou[rows, best]
