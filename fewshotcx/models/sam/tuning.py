"""Prompt tuning: fit :class:`~fewshotcx.models.sam.prompts.LearnedPrompts` to the support with Dice + BCE.

The image encoder is frozen and never runs here: the loop works on cached support embeddings, so a
step costs one decoder forward/backward pass on a minibatch of support slices. The loss is computed
at the decoder's low resolution (``4h × 4w``, 256² for real SAM) against area-averaged soft labels.
Each minibatch may be rolled by a random whole number of embedding cells (embeddings and labels
together), so the dense prompt learns what the structure looks like rather than where the support
had it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .prompts import LearnedPrompts


def dice_bce_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean BCE plus ``1 −`` soft Dice per class over the batch (then averaged over classes).

    Args:
        logits, targets: ``(B, L, h, w)``; targets are soft labels in ``[0, 1]``.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    probs = torch.sigmoid(logits)
    intersection = (probs * targets).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + targets.sum(dim=(0, 2, 3))
    dice = (2 * intersection + smooth) / (total + smooth)
    return bce + (1 - dice).mean()


def tune_prompts(
    prompts: LearnedPrompts,
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    positions: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    lr: float = 1e-2,
    batch_size: int = 8,
    decoder_lr: Optional[float] = None,
    max_shift: int = 0,
) -> list[float]:
    """Optimise the prompts (and the decoder if ``decoder_lr`` is given) with Adam.

    The logit scale and bias learn at ``10 × lr``: a decoder's logit range can be far from
    confident (a random tiny decoder's needs a scale in the hundreds).

    Args:
        embeddings: ``(M, C, h, w)`` cached support embeddings.
        targets: ``(M, L, 4h, 4w)`` support labels at the decoder's resolution.
        positions: ``(M,)`` relative positions of the support slices.
        steps: optimisation steps, each on ``batch_size`` slices drawn without replacement.
        generator: seeds the minibatch draws and shifts.
        max_shift: roll each minibatch by up to this many embedding cells (see :func:`shift`).
    Returns:
        the loss of every step.
    """
    groups = [{"params": prompts.prompt_parameters(), "lr": lr},
              {"params": prompts.calibration_parameters(), "lr": 10 * lr}]
    if decoder_lr is not None:
        groups.append({"params": list(prompts.decoder.parameters()), "lr": decoder_lr})
    optimiser = torch.optim.Adam(groups)
    m = embeddings.shape[0]
    losses = []
    prompts.train()
    for _ in range(steps):
        batch = torch.randperm(m, generator=generator, device=generator.device)[:batch_size].to(embeddings.device)
        emb, tgt = shift(embeddings[batch], targets[batch], max_shift, generator)
        loss = dice_bce_loss(prompts.logits(emb, positions[batch]), tgt)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    prompts.eval()
    return losses


def shift(embeddings: torch.Tensor, targets: torch.Tensor, max_shift: int, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll embeddings ``(B, C, h, w)`` and targets ``(B, L, 4h, 4w)`` by one random whole-cell offset."""
    if max_shift <= 0:
        return embeddings, targets
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator, device=generator.device)).tolist()
    ratio = targets.shape[-1] // embeddings.shape[-1]
    return (torch.roll(embeddings, (dy, dx), dims=(2, 3)),
            torch.roll(targets, (dy * ratio, dx * ratio), dims=(2, 3)))
