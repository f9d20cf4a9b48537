"""benchmarks/interaction_latency.py: the abdominal pseudo-structure lies where the liver does (the
patient's right, the scan's superior half, canonical RAS), the 3 mm resampling, and the per-scan summary."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from interaction_latency import right_upper_soft_tissue, summarise, thinner_slices  # noqa: E402

from fewshotcx import Volume  # noqa: E402


def test_the_pseudo_structure_is_the_largest_soft_tissue_piece_on_the_patients_right_and_above():
    x, y, z = np.meshgrid(np.arange(64), np.arange(48), np.arange(16), indexing="ij")
    hu = np.full(x.shape, -1000.0, np.float32)
    body = ((x - 32) / 30.0) ** 2 + ((y - 24) / 22.0) ** 2 <= 1
    hu[body] = -100.0  # fat
    organ = lambda cx, r: ((x - cx) / r) ** 2 + ((y - 24) / r) ** 2 <= 1  # noqa: E731
    hu[organ(46, 9) & (z >= 8)] = 60.0   # large, right (larger x), superior: the one
    hu[organ(48, 4) & (z < 8)] = 60.0    # right but inferior
    hu[organ(18, 10)] = 60.0             # larger, but on the patient's left
    found = right_upper_soft_tissue(Volume(hu, np.diag([1.0, 1.0, 5.0, 1.0])))
    assert found[46, 24, 12] and not found[18, 24, 12].any() and not found[..., :8].any()


def test_the_summary_gives_each_scan_its_median_and_worst_seconds():
    rows = [{"scan": s, "shape": "4x4x4", "spacing_mm": "1x1x1", "seconds": t, "load": 1.0}
            for s, t in (("a", 0.1), ("a", 0.5), ("a", 0.2), ("b", 2.0))]
    summary = {r["scan"]: r for r in summarise(rows)}
    assert summary["a"]["median_seconds"] == 0.2 and summary["a"]["max_seconds"] == 0.5
    assert summary["b"]["interactions"] == 1 and summary["b"]["median_seconds"] == 2.0


def test_thinner_slices_keep_world_positions_and_interpolate_linearly_along_z():
    affine = np.array([[0.8, 0, 0, -10.0], [0, 0.8, 0, 5.0], [0, 0, 5.0, -100.0], [0, 0, 0, 1]])
    ramp = np.broadcast_to(np.arange(41, dtype=np.float32) * 10, (6, 5, 41)).copy()  # 2 HU per mm along z
    thin = thinner_slices(Volume(ramp, affine), 3.0)
    assert thin.shape == (6, 5, 67) and np.allclose(thin.spacing, (0.8, 0.8, 3.0))
    assert np.allclose(thin.affine[:3, 3], affine[:3, 3])  # the first slice stays where it was
    world_z = thin.affine[2, 3] + thin.affine[2, 2] * np.arange(67)
    assert np.allclose(thin.array[2, 2], (world_z + 100.0) * 2, atol=1e-3)  # the ramp, sampled at 3 mm
