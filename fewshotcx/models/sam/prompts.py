"""Where SAM's prompts come from: learned per-class prompts, or prompts derived from the support.

Both sources map cached image embeddings ``(N, C, h, w)`` and relative slice positions ``(N,)`` to
low-resolution mask logits ``(N, L, 4h, 4w)``, one channel per class:

* :class:`LearnedPrompts` — ``K`` sparse tokens ``(K, C)`` and a dense embedding ``(C, h, w)`` per
  class that bypass the prompt encoder (``C = 256``, ``h = w = 64`` for real SAM), optionally a small
  position embedding added to the dense prompt, decoded with SAM's mask decoder (a private copy, so
  it may be tuned too). Initialised from SAM's own encoding of the support's mean foreground box and
  centroid and its "no mask" dense embedding, i.e. *before tuning* it is a box + point prompt.
* :class:`SupportPrompts` — no training (PerSAM-style): a target feature per class and query
  position (cosine-normalised embeddings averaged over the support's foreground, weighting support
  slices by closeness in relative position), its similarity map on the query embedding, and a
  positive point at the most similar and a negative point at the least similar location.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import nn

from .decoding import decode
from .transforms import resize_masks


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding boxes of binary masks.

    Args:
        masks: ``(B, H, W)`` bool.
    Returns:
        ``(boxes (B, 4) float xyxy in pixels, present (B,) bool)``; empty masks get a zero box.
    """
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (B, H), (B, W)
    present = rows.any(dim=1)

    def extent(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(hit.shape[1], device=hit.device, dtype=torch.float32)
        lo = torch.where(hit, index, torch.full_like(index, math.inf)).amin(dim=1)
        hi = torch.where(hit, index, torch.full_like(index, -math.inf)).amax(dim=1)
        return lo, hi

    (y0, y1), (x0, x1) = extent(rows), extent(cols)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where(present[:, None], boxes, torch.zeros_like(boxes)), present


def initial_tokens(prompt_encoder: PromptEncoder, labels: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Sparse tokens ``(L, K, C)``: SAM's encoding of [centroid point, box corner, box corner, padding…].

    The box and centroid are the means over the support slices where the class is present (the
    whole image if it is on none).

    Args:
        labels: ``(M, L, s, s)`` soft support labels at the encoder's input size.
    """
    tokens = []
    for cls in range(labels.shape[1]):
        masks = labels[:, cls] > 0.5
        boxes, present = mask_boxes(masks)
        h, w = masks.shape[1:]
        if present.any():
            masks, boxes = masks[present], boxes[present]
        else:  # the class is on none of these slices: start from the whole image
            masks = torch.ones(1, h, w, dtype=torch.bool, device=labels.device)
            boxes = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]], device=labels.device)
        weights = masks.float()
        grid_y, grid_x = torch.meshgrid(torch.arange(h, device=labels.device, dtype=torch.float32),
                                        torch.arange(w, device=labels.device, dtype=torch.float32), indexing="ij")
        area = weights.sum(dim=(1, 2))
        centroid = torch.stack([(weights * grid_x).sum(dim=(1, 2)),
                                (weights * grid_y).sum(dim=(1, 2))], dim=1) / area[:, None]
        point = centroid.mean(dim=0).view(1, 1, 2)
        box = boxes.mean(dim=0).view(1, 4)
        sparse, _ = prompt_encoder(points=(point, torch.ones(1, 1, device=labels.device)), boxes=box, masks=None)
        padding = prompt_encoder.not_a_point_embed.weight.expand(max(num_tokens - sparse.shape[1], 0), -1)
        tokens.append(torch.cat([sparse[0], padding])[:num_tokens])
    return torch.stack(tokens)


def fourier_features(positions: torch.Tensor, frequencies: int) -> torch.Tensor:
    """``(N,)`` positions in ``[0, 1]`` → ``(N, 2F)`` ``[sin(π f p), cos(π f p)]`` for ``f = 1..F``."""
    angles = math.pi * positions.float()[:, None] * torch.arange(1, frequencies + 1, device=positions.device)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class LearnedPrompts(nn.Module):
    """Per-class learnable sparse + dense prompts decoded with a (private) SAM mask decoder.

    Args:
        decoder: the mask decoder to use (its parameters are trained only if the caller optimises them).
        image_pe: ``(1, C, h, w)`` dense positional encoding.
        sparse: ``(L, K, C)`` initial sparse tokens.
        dense: ``(L, C, h, w)`` initial dense prompt embeddings.
        position_frequencies: ``F > 0`` adds ``Linear(fourier(p))`` (zero-initialised) to the dense
            prompt, so the prompt can change smoothly along the axis; ``0`` disables it.

    A per-class logit scale and bias (initially 1 and 0) follow the decoder: a frozen decoder's
    logit range is fixed by its weights, and the empty-slice calibration needs confident outputs.
    """

    def __init__(self, decoder: MaskDecoder, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                 position_frequencies: int = 2) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer("image_pe", image_pe.detach().clone())
        self.sparse = nn.Parameter(sparse.detach().clone())
        self.dense = nn.Parameter(dense.detach().clone())
        self.log_scale = nn.Parameter(torch.zeros(sparse.shape[0], device=sparse.device))
        self.bias = nn.Parameter(torch.zeros(sparse.shape[0], device=sparse.device))
        self.position_frequencies = int(position_frequencies)
        self.position: Optional[nn.Linear] = None
        if self.position_frequencies > 0:
            self.position = nn.Linear(2 * self.position_frequencies, dense.shape[0] * dense.shape[1])
            nn.init.zeros_(self.position.weight)
            nn.init.zeros_(self.position.bias)

    @property
    def num_classes(self) -> int:
        return int(self.sparse.shape[0])

    def prompt_parameters(self) -> list[nn.Parameter]:
        """The prompt embeddings: sparse tokens, dense prompt and the position embedding."""
        extra = list(self.position.parameters()) if self.position is not None else []
        return [self.sparse, self.dense, *extra]

    def calibration_parameters(self) -> list[nn.Parameter]:
        """The per-class logit scale and bias."""
        return [self.log_scale, self.bias]

    def logits(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` embeddings, ``(N,)`` positions → ``(N, L, 4h, 4w)`` mask logits."""
        n, num_classes = embeddings.shape[0], self.num_classes
        dense = repeat(self.dense, "l c h w -> n l c h w", n=n)
        if self.position is not None:
            offset = self.position(fourier_features(positions.to(embeddings.device), self.position_frequencies))
            dense = dense + rearrange(offset, "n (l c) -> n l c 1 1", l=num_classes)
        masks, _ = decode(self.decoder, self.image_pe,
                          repeat(embeddings, "n c h w -> (n l) c h w", l=num_classes),
                          repeat(self.sparse, "l k c -> (n l) k c", n=n),
                          rearrange(dense, "n l c h w -> (n l) c h w"))
        masks = rearrange(masks, "(n l) h w -> n l h w", l=num_classes)
        return masks * self.log_scale.exp()[:, None, None] + self.bias[:, None, None]


class SupportPrompts:
    """Training-free point prompts from the support (PerSAM-style), matched by relative position.

    Args:
        prompt_encoder, decoder: SAM's modules.
        embeddings: ``(M, C, h, w)`` support image embeddings.
        labels: ``(M, L, s, s)`` support labels.
        positions: ``(M,)`` support relative positions.
        tau: position-weighting temperature: support slice ``m`` weighs ``exp(-|p - p_m| / tau)``.
    """

    def __init__(self, prompt_encoder: PromptEncoder, decoder: MaskDecoder, embeddings: torch.Tensor,
                 labels: torch.Tensor, positions: torch.Tensor, tau: float = 0.1) -> None:
        self.prompt_encoder = prompt_encoder
        self.decoder = decoder
        self.image_pe = prompt_encoder.get_dense_pe()
        weights = resize_masks(labels, embeddings.shape[-2:])  # (M, L, h, w)
        self.features = torch.einsum("mlhw,mchw->mlc", weights, F.normalize(embeddings, dim=1))  # (M, L, C)
        self.areas = weights.sum(dim=(2, 3))  # (M, L)
        self.positions = positions.float()
        self.tau = float(tau)

    @property
    def num_classes(self) -> int:
        return int(self.features.shape[1])

    def targets(self, positions: torch.Tensor) -> torch.Tensor:
        """``(N,)`` query positions → ``(N, L, C)`` unit target features."""
        weights = torch.exp(-(positions.float()[:, None] - self.positions[None, :]).abs() / self.tau)  # (N, M)
        summed = torch.einsum("nm,mlc->nlc", weights, self.features)
        return F.normalize(summed, dim=2)

    def points(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``(N·L, 2, 2)`` (x, y) input-frame coordinates of the positive and negative point of each row."""
        similarity = torch.einsum("nlc,nchw->nlhw", self.targets(positions.to(embeddings.device)),
                                  F.normalize(embeddings, dim=1))
        h, w = similarity.shape[-2:]
        flat = rearrange(similarity, "n l h w -> (n l) (h w)")
        index = torch.stack([flat.argmax(dim=1), flat.argmin(dim=1)], dim=1)  # (B, 2)
        size_h, size_w = self.prompt_encoder.input_image_size
        # Centre of the embedding cell, minus the 0.5 pixel shift the prompt encoder adds back.
        x = (index % w + 0.5) * (size_w / w) - 0.5
        y = torch.div(index, w, rounding_mode="floor").add(0.5) * (size_h / h) - 0.5
        return torch.stack([x, y], dim=2).float()

    def logits(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` embeddings, ``(N,)`` positions → ``(N, L, 4h, 4w)`` mask logits."""
        num_classes = self.num_classes
        coords = self.points(embeddings, positions)
        labels = coords.new_tensor([1.0, 0.0]).expand(coords.shape[0], 2)
        sparse, dense = self.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        masks, _ = decode(self.decoder, self.image_pe, repeat(embeddings, "n c h w -> (n l) c h w", l=num_classes),
                          sparse, dense, multimask=True)
        return rearrange(masks, "(n l) h w -> n l h w", l=num_classes)
