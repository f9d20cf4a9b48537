"""benchmarks/throughput.py runs end to end (tiny settings: speed is not asserted, only that it works)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import throughput  # noqa: E402


def test_side_by_side_and_batch_sweep_run():
    row = throughput.run(support_size=2, depth=4, repeats=1)
    assert row["slices"] == 4
    # the speed-up is the ratio of the two measured rates (a sign or inversion error shows here)
    assert row["speedup"] == pytest.approx(row["ours_slices_per_s"] / row["plain_slices_per_s"], rel=0.02, abs=0.01)
    rows = throughput.batch_sweep([1, 2], support_size=2, depth=4)
    assert [r["batch"] for r in rows] == [1, 2] and all(r["slices_per_s"] > 0 for r in rows)
