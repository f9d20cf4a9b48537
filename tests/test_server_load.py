"""Load: concurrent sessions on one served model draw and complete without error, each ending with
exactly its own local result; and the latency benchmark's draw order."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from servekit import SHAPE, disc, serving, tiny_segmenter, write_image  # noqa: E402

from fewshotcx import ContourSession  # noqa: E402
from fewshotcx.client import RemoteSession  # noqa: E402
from fewshotcx.server import SessionStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

XY = SHAPE[:2]


def _plan(client: int) -> list[tuple[int, np.ndarray]]:
    """20 draws per client: slices revisited with different discs (each client its own sizes)."""
    rng = np.random.default_rng(client)
    return [(int(z), disc((12 + int(rng.integers(-2, 3)), 10), 2 + int(rng.integers(0, 4)), XY))
            for z in rng.choice([1, 3, 5, 7, 9, 11], size=20)]


def test_four_concurrent_sessions_of_twenty_draws_each(tmp_path):
    path = write_image(tmp_path)
    store = SessionStore(tiny_segmenter(), max_sessions=4)

    def contour(client: int, url: str) -> tuple[np.ndarray, list[int]]:
        session = RemoteSession(url, path)
        for i, (z, mask) in enumerate(_plan(client)):
            session.draw(z, mask)
            if i % 5 == 4:
                session.result()  # the model runs while other sessions draw
        result = session.result().array
        suggestion = session.suggest(1)
        session.close()
        return result, suggestion

    with serving(store) as url:
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(lambda c: contour(c, url), range(4)))
        assert len(store) == 0
    for client, (result, suggestion) in enumerate(outcomes):
        local = ContourSession(path, tiny_segmenter())
        for z, mask in _plan(client):
            local.draw(z, mask)
        assert np.array_equal(result, local.result().array)
        assert suggestion == local.suggest(1)


def test_bisection_order_starts_at_the_ends_and_splits_the_widest_gap():
    from serve_latency import bisection_order

    assert bisection_order(10, 20, 5) == [10, 20, 15, 12, 17]
    assert bisection_order(3, 5, 10) == [3, 5, 4]
    assert bisection_order(7, 7, 3) == [7]


def test_latency_benchmark_rows_for_every_mode():
    import torch
    from common import ModelSpec
    from serve_latency import run

    from conftest import blob_volume
    from fewshotcx import Volume
    from fewshotcx.models import UniverSeg

    image, label = blob_volume(SHAPE, seed=2)
    torch.manual_seed(0)
    model = ModelSpec(model=UniverSeg((4, 4, 4, 4), (4, 4, 4), in_channels=1), slice_size=32, device="cpu")
    rows, draws = run(Volume(image, np.eye(4)), label.astype(np.int64), "blob", model, draws=3, clients=2, modality="mr")
    assert [(r["mode"], r["clients"], r["draws"]) for r in rows] == [
        ("in-process", 1, 3), ("server", 1, 3), ("server-concurrent", 2, 6)]
    assert all(0 < r["p50_s"] <= r["p95_s"] for r in rows)
    assert len(draws) == 12 and {d["z"] for d in draws} == {d["z"] for d in draws if d["mode"] == "server"}
