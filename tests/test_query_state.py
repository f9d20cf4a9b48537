"""Per-query support state is local to one prediction (issue #23 item 1).

Two threads predicting two different queries with one fitted segmenter must get exactly the
sequential results, for every support strategy; ``complete``, ``ContourSession`` and uncertainty
draws derive values of their own and change neither the backend nor the segmenter's fitted value.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fewshotcx import ContourSession, Segmenter, Volume
from fewshotcx.models import UniverSeg
from fewshotcx.pipeline.slicing import SliceGeometry

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
STRATEGIES = ["position", "random", "retrieval", "registered", "auto"]


def _tiny(seed: int = 0) -> UniverSeg:
    torch.manual_seed(seed)
    return UniverSeg((8, 8, 8), (8, 8), in_channels=1)


def _head(seed: int, shape=(24, 24, 16), shift=(0.0, 0.0, 0.0), crop: int = 0) -> tuple[Volume, Volume]:
    """A small head-like volume ``(X, Y, Z)`` and a label of its inner structure; ``crop`` drops the
    first axial slices (the query then covers less anatomy than the support)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    centre = np.array([n / 2 for n in shape]) + np.asarray(shift)
    body = (((grid - centre) / np.array([9.0, 10.0, 7.0])) ** 2).sum(-1) <= 1
    inner = (((grid - centre - [2, -2, 1]) / np.array([3.0, 3.0, 3.0])) ** 2).sum(-1) <= 1
    image = 100.0 * body - 40.0 * inner + rng.normal(0, 3.0, shape) * body
    return (Volume(image[..., crop:].astype(np.float32), AFFINE),
            Volume(inner[..., crop:].astype(np.uint8), AFFINE, label=True))


def _segmenter(strategy: str) -> Segmenter:
    seg = Segmenter(model=_tiny(), slice_size=16, support_size=3, group_size=4, progress=False, device="cpu",
                    strategy=strategy, seed=3, memory_budget=1)  # one slab per chunk: many backend calls
    support = [_head(0), _head(1, shift=(1.0, 0.0, -1.0))]
    return seg.fit([s[0] for s in support], [s[1] for s in support])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_threads_two_queries_equal_sequential(strategy):
    seg = _segmenter(strategy)
    queries = [_head(5, crop=6)[0], _head(6, shift=(-2.0, 1.0, 2.0))[0]]
    expected = [seg.predict_proba(q).array for q in queries]
    assert not np.array_equal(expected[0][..., :4], expected[1][..., 6:10])  # the queries differ
    for _ in range(3):
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def work(i: int) -> None:
            try:
                barrier.wait()
                results[i] = seg.predict_proba(queries[i]).array
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i in range(2):
            np.testing.assert_array_equal(results[i], expected[i], err_msg=f"query {i} ({strategy})")


def _snapshot(seg: Segmenter) -> tuple:
    """The fitted value's identity and contents (every pool tensor, cloned) and the backend's attributes."""
    fitted = seg.fitted
    pools = {axis: [t.clone() for t in (p.images, p.labels, p.positions, p.volume_ids)] for axis, p in fitted.pools.items()}
    return fitted, pools, dict(vars(seg.backend))


def _unchanged(seg: Segmenter, snapshot: tuple) -> bool:
    fitted, pools, backend = snapshot
    same = seg.fitted is fitted and vars(seg.backend) == backend and fitted.pools.keys() == pools.keys()
    return same and all(torch.equal(a, b) for axis, p in fitted.pools.items()
                        for a, b in zip((p.images, p.labels, p.positions, p.volume_ids), pools[axis]))


@pytest.mark.parametrize("strategy", ["position", "retrieval"])
def test_complete_draws_and_concurrent_sessions_leave_the_fitted_value(strategy):
    seg = _segmenter(strategy)
    query, label = _head(5)
    snapshot = _snapshot(seg)
    seg.predict_uncertainty(query, draws=2, fraction=0.5)
    seg.predict_samples(query, draws=2)
    seg.complete(query, label, [4, 8, 12])
    assert _unchanged(seg, snapshot)
    errors: list[BaseException] = []

    def contour(z: int) -> None:
        try:
            session = ContourSession(query, seg)
            for drawn in (z, z + 6):
                session.draw(drawn, label.canonical().array[..., drawn])
            session.result()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=contour, args=(z,)) for z in (2, 4, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _unchanged(seg, snapshot)


def test_predictions_leave_the_fitted_backend_untouched():
    seg = _segmenter("retrieval")
    fitted = dict(vars(seg.backend))
    seg.predict_proba(_head(5, crop=6)[0])
    assert {k: v for k, v in vars(seg.backend).items()} == fitted


@pytest.mark.parametrize("fraction, size", [(1.0, 4), (0.5, 2), (0.1, 1)])
def test_an_uncertainty_draw_uses_its_fraction_of_the_support_set(fraction, size):
    seg = Segmenter(model=_tiny(), slice_size=16, support_size=4, group_size=4, progress=False, device="cpu",
                    strategy="position", seed=3)
    seg.fit([_head(0)[0]], [_head(0)[1]])
    predictor, query = seg.predictor, _head(5)[0]
    prepared = predictor.query(query)
    backend = predictor.backend
    fitted = backend.for_query(predictor.conditioned, prepared.canonical, prepared.normalised,
                               predictor.generator(), fraction)
    geometry = SliceGeometry(2, prepared.canonical.shape, torch.arange(4), 0, 16, (16, 16), (0, 0))
    drawn = backend.draw_support(fitted, geometry, 0, 0, predictor.generator())
    assert len(drawn) == size and len(set(drawn.tolist())) == size
