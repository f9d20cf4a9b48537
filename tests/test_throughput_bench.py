"""benchmarks/throughput.py runs end to end (tiny settings: speed is not asserted, only that it works
and that ours and the plain slice loop compute the same logits)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import throughput  # noqa: E402


def test_side_by_side_same_logits_and_conv_peak():
    rows, summary = throughput.run(support_size=2, depth=4, repeats=1, peak_repeats=1, peak_batch=1)
    assert [r["method"] for r in rows] == ["ours", "plain"] and all(r["seconds"] > 0 for r in rows)
    assert float(summary["max_abs_logit_diff"]) < 1e-4  # the fast path reproduces the plain network
    # ours skips work: fewer convolution FLOPs than the plain loop, and the plain count is v1's per-pair cost
    assert 0 < summary["ours_conv_gflop"] < summary["plain_conv_gflop"]
    assert summary["conv_peak_gflops"] > 0 and 0 < summary["ours_peak_share"]
    assert summary["threads"] >= 1 and summary["machine"]


def test_plain_flop_count_matches_the_v1_layer_count():
    """Multiply-adds per extra (target, support) pair of the plain network at 128², from the layer
    shapes: 4.56 G (docs/performance.md)."""
    one, three = throughput.plain_conv_flops(_zero_calls(support=1)), throughput.plain_conv_flops(_zero_calls(support=3))
    assert (three - one) / 2 / 2 / 1e9 == pytest.approx(4.56, rel=0.01)


def _zero_calls(support: int):
    """One recorded call: a single 128² target slice and ``support`` support slices."""
    t = torch.zeros(1, 1, 128, 128)
    s = torch.zeros(support, 1, 128, 128)
    return [(t, s, s, None)]


def test_batch_sweep_runs():
    rows = throughput.batch_sweep([1, 2], support_size=2, depth=4)
    assert [r["batch"] for r in rows] == [1, 2] and all(r["slices_per_s"] > 0 for r in rows)



def test_model_memory_measures_each_path():
    """benchmarks/model_memory.py's measurement at toy sizes (in process; the script runs one process per row)."""
    import model_memory

    for mode, channels_last in (("plain", False), ("shared", True), ("shared", False)):
        result = model_memory.measure(mode, 1, support=3, size=16, queries=2, channels_last=channels_last)
        assert result["seconds"] > 0 and result["peak_mib"] >= 0 and result["threads"] >= 1
