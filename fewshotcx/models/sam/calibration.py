"""Saying "empty": a per-class slice-level foreground threshold calibrated on the support.

SAM always draws *something* for a prompt, so on slices without the structure a prompt still yields
a small blob; summed over the many empty slices of a CT this collapses the 3D Dice. Each class gets a
threshold on the slice's *foreground score* (its soft predicted area, as a fraction of the model
square) chosen on the support slices, where the truth is known: the threshold that misclassifies
the fewest support slices (empty vs present), taken in the middle (geometric mean) of the gap
between the neighbouring scores, and of the range of equally good thresholds. At prediction, a
class whose score falls below its threshold is set to zero on that slice.
"""

from __future__ import annotations

import torch


def foreground_score(logits: torch.Tensor) -> torch.Tensor:
    """``(N, L, h, w)`` mask logits → ``(N, L)`` soft foreground area fraction in ``[0, 1]``."""
    return torch.sigmoid(logits.float()).mean(dim=(-2, -1))


def calibrate_threshold(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Per-class score thresholds from labelled slices.

    Args:
        scores: ``(M, L)`` foreground scores of the support slices.
        present: ``(M, L)`` bool, whether the class is really on the slice.
    Returns:
        ``(L,)`` thresholds (0 where no slice is empty: nothing to learn "empty" from).
    """
    thresholds = []
    for cls in range(scores.shape[1]):
        s, y = scores[:, cls].double(), present[:, cls]
        if y.all():
            thresholds.append(0.0)
            continue
        ordered = s.sort().values.clamp_min(1e-12)
        # Candidates: below every score, between each pair of neighbours (geometric mean), above all.
        candidates = torch.cat([ordered[:1] / 2, (ordered[:-1] * ordered[1:]).sqrt(), ordered[-1:] * 2])
        errors = ((s[None, :] >= candidates[:, None]) & ~y[None, :]).sum(1) \
            + ((s[None, :] < candidates[:, None]) & y[None, :]).sum(1)
        best = (errors == errors.min()).nonzero().flatten()
        low, high = candidates[best[0]], candidates[best[-1]]
        thresholds.append(float((low * high).sqrt()))
    return torch.tensor(thresholds, dtype=torch.float32, device=scores.device)


def suppress_empty(probs: torch.Tensor, scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Zero the classes judged absent: ``probs (N, L, s, s)``, ``scores (N, L)``, ``thresholds (L,)``."""
    keep = (scores >= thresholds.to(scores.device)[None, :]).to(probs.dtype)
    return probs * keep[:, :, None, None]
