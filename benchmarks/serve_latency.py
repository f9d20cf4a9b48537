"""Per-draw latency of a contouring session served over HTTP, against the in-process session.

A simulated user contours one structure slice by slice: each *draw* is ``draw(z, reference slice)``
followed by ``result()`` (what a viewer asks for after each stroke), on the structure's slices in
bisection order (its first and last slice, then the middle of the widest gap, ...), up to ``--draws``
(fewer when the structure spans fewer slices). A short untimed warm-up comes first. The in-process
session runs in a worker thread, as the server's request handlers do: torch's CPU threading differs
between the main thread and others, which on a busy machine changes the timings more than HTTP does.
Modes: ``in-process`` (:class:`fewshotcx.ContourSession`), ``server`` (one
:class:`fewshotcx.client.RemoteSession` on a loopback ``fewshotcx serve`` app) and ``server-concurrent``
(``--clients`` sessions drawing at the same time; the shared model runs one request at a time).

``serve_latency.csv``: ``mode, clients, draws, p50_s, p95_s, mean_s, task, machine``;
``serve_latency_draws.csv``: every draw's seconds.

    python benchmarks/serve_latency.py --quick
    python benchmarks/serve_latency.py --out benchmarks/results --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ModelSpec, SliceTask, add_output_options, apply_output_options, machine_info, print_table, write_csv  # noqa: E402
from fewshotcx import ContourSession, Volume  # noqa: E402
from fewshotcx.client import RemoteSession  # noqa: E402
from fewshotcx.server import SessionStore, background_server  # noqa: E402


def bisection_order(first: int, last: int, n: int) -> list[int]:
    """``first``, ``last``, then repeatedly the middle of the widest gap between chosen slices."""
    order = [first] if first == last else [first, last]
    while len(order) < min(n, last - first + 1):
        chosen = sorted(order)
        gaps = [(b - a, a, b) for a, b in zip(chosen, chosen[1:]) if b - a > 1]
        _, a, b = max(gaps, key=lambda g: (g[0], -g[1]))  # widest, leftmost on ties
        order.append((a + b) // 2)
    return order[:n]


def contour(session, reference: np.ndarray, slices: Sequence[int]) -> list[float]:
    """Seconds of each ``draw`` + ``result()`` step."""
    seconds = []
    for z in slices:
        start = time.perf_counter()
        session.draw(z, reference[..., z])
        session.result()
        seconds.append(time.perf_counter() - start)
    return seconds


def summary(mode: str, clients: int, seconds: Sequence[float], task: str) -> dict:
    values = np.asarray(seconds)
    return {"mode": mode, "clients": clients, "draws": len(values), "p50_s": round(float(np.percentile(values, 50)), 4),
            "p95_s": round(float(np.percentile(values, 95)), 4), "mean_s": round(float(values.mean()), 4),
            "task": task, "machine": machine_info()}


def run(image: Volume, reference: np.ndarray, task: str, model: ModelSpec, draws: int, clients: int,
        modality: str) -> tuple[list[dict], list[dict]]:
    """Summary rows and per-draw rows for the three modes."""
    zs = np.flatnonzero(reference.any(axis=(0, 1)))
    slices = bisection_order(int(zs[0]), int(zs[-1]), draws)
    per_draw: dict[str, list[float]] = {}
    with ThreadPoolExecutor(1) as pool:  # a worker thread, like the server's request handlers
        local = lambda: ContourSession(image, model.segmenter(modality=modality))  # noqa: E731
        pool.submit(contour, local(), reference, slices[:3]).result()  # warm-up, not timed
        per_draw["in-process"] = pool.submit(contour, local(), reference, slices).result()
    store = SessionStore(model.segmenter(modality=modality), max_sessions=clients + 1)
    with background_server(store) as url:
        per_draw["server"] = contour(RemoteSession(url, image), reference, slices)
        sessions = [RemoteSession(url, image) for _ in range(clients)]
        with ThreadPoolExecutor(clients) as pool:
            runs = list(pool.map(lambda s: contour(s, reference, slices), sessions))
        per_draw["server-concurrent"] = [s for r in runs for s in r]
    rows = [summary(mode, clients if mode == "server-concurrent" else 1, seconds, task)
            for mode, seconds in per_draw.items()]
    draws_rows = [{"mode": mode, "step": i % len(slices), "z": slices[i % len(slices)], "seconds": round(s, 4)}
                  for mode, seconds in per_draw.items() for i, s in enumerate(seconds)]
    return rows, draws_rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic volume, 6 draws, 2 clients")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    add_output_options(parser)
    args = parser.parse_args(argv)
    if apply_output_options(args, lambda rows, out, plots, tag: print_table(rows), "serve_latency"):
        return 0
    model = ModelSpec()
    if args.quick:
        from common import synthetic_case

        image, label, _ = synthetic_case(shape=(64, 64, 24))
        task, modality, draws, clients = "synthetic", "mr", 6, 2
    else:
        from review_tasks import slice_tasks

        slice_task: SliceTask = slice_tasks(quick=True)[0]  # MNI152 left thalamus at 2 mm
        image, label = slice_task.case.image, slice_task.reference()
        task, modality, draws, clients = slice_task.name, slice_task.modality, args.draws, args.clients
    reference = label.canonical().array.astype(np.int64)
    rows, draw_rows = run(image.canonical(), reference, task, model, draws, clients, modality)
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "serve_latency.csv")
    write_csv(draw_rows, args.out / "serve_latency_draws.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
