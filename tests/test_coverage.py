"""Coverage checks: no silently empty mask; warnings when support and query cover different anatomy;
their thresholds are the fit of the calibration table (benchmarks/results/retrieval_coverage.csv)."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fewshotcx as fx
from fewshotcx.models import UniverSeg
from fewshotcx.pipeline import query_support
from fewshotcx.pipeline.query_support import MIN_SIMILARITY, CoverageWarning, check_coverage
from fewshotcx.pipeline.support import SupportPool

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _coverage_rows(name: str) -> list[dict[str, str]]:
    with open(BENCHMARKS / "results" / name, newline="") as f:
        return list(csv.DictReader(f))


def test_coverage_thresholds_are_the_fit_of_the_calibration_table():
    sys.path.insert(0, str(BENCHMARKS))
    import retrieval_coverage

    fitted = retrieval_coverage.fit_coverage(_coverage_rows("retrieval_coverage.csv"))
    assert fitted == {"MIN_SIMILARITY": query_support.MIN_SIMILARITY,
                      "MAX_POSITION_GAP": query_support.MAX_POSITION_GAP}
    assert {r["data_role"] for r in _coverage_rows("retrieval_coverage_heldout.csv")} == {"report"}


def test_coverage_fit_lies_halfway_between_what_it_separates():
    sys.path.insert(0, str(BENCHMARKS))
    import retrieval_coverage

    def row(pair: str, kind: str, similarity: float, distance: float, gap: float) -> dict:
        return {"pair": pair, "kind": kind, "best_similarity": similarity, "position_distance": distance,
                "position_gap": gap}

    rows = [row("a", "full", 0.9, 0.0, 0.02), row("a", "full", 0.3, 0.5, 0.04),  # far match: not "covered"
            row("b", "cropped", 0.8, 0.4, 0.25), row("c", "other anatomy", 0.4, 0.2, 0.1)]
    assert retrieval_coverage.fit_coverage(rows) == {"MIN_SIMILARITY": 0.65, "MAX_POSITION_GAP": 0.14}


def _pool(positions) -> SupportPool:
    m = len(positions)
    return SupportPool(torch.zeros(m, 1, 8, 8), torch.zeros(m, 1, 8, 8), torch.tensor(positions, dtype=torch.float32),
                       torch.zeros(m, dtype=torch.long), (1,), 2)


def test_query_slices_unlike_any_support_slice_are_named_in_a_coverage_warning():
    pool = _pool([0.0, 0.5, 1.0])
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.3, 0.2, MIN_SIMILARITY - 0.1]])  # group 2: no match
    with pytest.warns(CoverageWarning) as caught:
        check_coverage(similarity, pool, depth=20, group_size=8, strategy="retrieval")
    (warning,) = [w.message for w in caught]
    assert warning.slices == tuple(range(16, 20)) and warning.axis == 2 and "16-19" in str(warning)


def test_position_matching_across_different_coverage_is_warned_against():
    pool = _pool([0.0, 0.5, 1.0])
    aligned = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.1], [0.0, 0.1, 0.9]])  # group g matches position g/2
    shifted = torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.1, 0.9], [0.0, 0.1, 0.9]])  # the query is the support's top half
    noise = torch.tensor([[0.36, 0.38, 0.35], [0.37, 0.35, 0.39], [0.38, 0.36, 0.37]])  # nothing stands out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_coverage(aligned, pool, depth=24, group_size=8, strategy="position")
        check_coverage(shifted, pool, depth=24, group_size=8, strategy="retrieval")  # retrieval copes: no warning
        check_coverage(noise, pool, depth=24, group_size=8, strategy="position")  # no evidence either way
    with pytest.warns(UserWarning, match="cover different anatomy"):
        check_coverage(shifted, pool, depth=24, group_size=8, strategy="position")


def _tiny_segmenter(**options) -> fx.Segmenter:
    torch.manual_seed(0)
    model = UniverSeg((4,) * 4, (4,) * 3, in_channels=3).eval()
    return fx.Segmenter(model=model, slice_size=32, progress=False, support_size=4, **options)


def test_an_empty_prediction_comes_with_a_warning_naming_the_structure():
    image = np.random.default_rng(0).normal(size=(24, 24, 10)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[8:14, 8:14, 3:6] = 3
    seg = _tiny_segmenter(threshold=0.999).fit([fx.Volume(image, AFFINE)], [fx.Volume(label, AFFINE, label=True)])
    with pytest.warns(UserWarning, match="structure 3: no voxel predicted"):
        mask = seg.predict(fx.Volume(image, AFFINE))
    assert not mask.array.any()


def test_physical_framing_runs_end_to_end_and_lands_on_the_query_grid():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(40, 30, 8)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[15:25, 10:20, 2:6] = 1
    seg = _tiny_segmenter(pixel_mm=3.0, context_mm=4.0).fit([fx.Volume(image, AFFINE)],
                                                            [fx.Volume(label, AFFINE, label=True)])
    assert seg.backend.resize_mode == "physical"
    query = fx.Volume(image[::-1].copy(), np.diag([-2.0, 2.0, 3.0, 1.0]) @ np.eye(4))  # stored flipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob = seg.predict_proba(query)
    assert prob.shape == query.shape and np.allclose(prob.affine, query.affine) and np.isfinite(prob.array).all()


def test_a_loaded_checkpoint_brings_its_physical_framing_to_a_segmenter(tmp_path):
    from fewshotcx.models.weights import load_universeg, save_checkpoint

    torch.manual_seed(0)
    model = UniverSeg((4,) * 4, (4,) * 3, in_channels=3)
    path = save_checkpoint(model, tmp_path / "m.pt", model.config, {"slice_size": 32, "context": 1, "pixel_mm": 3.0,
                                                                    "context_mm": 4.0})
    for seg in (fx.Segmenter(model=load_universeg(path), progress=False), fx.Segmenter(weights=str(path), progress=False)):
        backend = seg.backend
        assert (backend.resize_mode, backend.pixel_mm, backend.context_mm, backend.slice_size) == ("physical", 3.0, 4.0, 32)
    assert fx.Segmenter(model=model, progress=False).backend.resize_mode == "pad"  # a bare network: no framing known
