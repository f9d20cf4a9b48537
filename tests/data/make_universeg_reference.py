"""Regenerate ``universeg_tiny_reference.pt``: seeded tiny UniverSeg models, inputs and plain-forward logits.

Run from the repository root: ``.venv/bin/python tests/data/make_universeg_reference.py``. Only
regenerate after an intended change of the network's outputs; ``tests/test_model_universeg.py``
checks that ``forward`` and ``forward_shared`` still reproduce the stored logits.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fewshotcx.models import UniverSeg

OUT = Path(__file__).with_name("universeg_tiny_reference.pt")

# name: (encoder widths, decoder widths, in_channels, B, S, size)
CASES = {
    "v1_layout": ((8, 8, 8, 8), (8, 8, 8), 1, 2, 3, 24),
    "context_1": ((4, 4, 4, 4), (4, 4, 4), 3, 2, 2, 16),
}


def make_case(seed: int, encoder, decoder, in_channels: int, b: int, s: int, size: int) -> dict:
    """A model with perturbed (non-zero bias) weights, inputs in [0, 1], binary labels and its logits."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UniverSeg(encoder, decoder, in_channels=in_channels).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    target = torch.rand(b, in_channels, size, size, generator=generator)
    support_images = torch.rand(b, s, in_channels, size, size, generator=generator)
    support_labels = (torch.rand(b, s, 1, size, size, generator=generator) > 0.5).float()
    with torch.no_grad():
        logits = model(target, support_images, support_labels)
    return {"config": model.config, "state_dict": model.state_dict(), "target": target,
            "support_images": support_images, "support_labels": support_labels.bool(),  # bool: smaller file
            "logits": logits}


def main() -> None:
    cases = {name: make_case(seed, *args) for seed, (name, args) in enumerate(CASES.items())}
    torch.save(cases, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
