"""benchmarks/interactive_dev.py: the development-set summary (per-step means, worst step, drops) and
its variants (the current refinement against each earlier choice it replaced)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from interactive_dev import VARIANTS, summarise  # noqa: E402

from fewshotcx.interactive import Settings  # noqa: E402


def _rows(variant: str, structure: str, dice: list[float]) -> list[dict]:
    return [{"variant": variant, "modality": "MR", "start": "blank", "structure": structure, "step": s, "dice": d}
            for s, d in enumerate(dice)]


def test_the_summary_gives_per_step_means_the_worst_step_and_the_drops():
    rows = _rows("current", "a", [0.5, 0.6, 0.5, 0.7, 0.7, 0.8]) + _rows("current", "b", [0.3, 0.3, 0.4, 0.4, 0.2, 0.4])
    (summary,) = summarise(rows)
    assert summary["structures"] == 2 and summary["step0_dice"] == 0.4 and summary["step5_dice"] == 0.6
    assert summary["worst_mean_step"] == -0.1  # step 3 → 4: (0.7 + 0.2) / 2 − (0.7 + 0.4) / 2
    assert summary["drops"] == 2  # a: 0.6 → 0.5; b: 0.4 → 0.2 (each more than 0.05)


def test_each_variant_differs_from_the_current_constants_in_one_constant():
    assert VARIANTS["current"] == Settings()
    changed = {name: [f for f in Settings.__dataclass_fields__ if getattr(v, f) != getattr(Settings(), f)]
               for name, v in VARIANTS.items()}
    assert changed == {"current": [], "no-hold": ["hold"], "radius-0.9": ["radius"], "two-way": ["one_way"]}
    assert np.isinf(VARIANTS["no-hold"].hold) and VARIANTS["radius-0.9"].radius == 0.9
    assert VARIANTS["current"].one_way and not VARIANTS["two-way"].one_way
