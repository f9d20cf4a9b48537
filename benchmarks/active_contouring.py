"""Which slice to draw next: suggested slices against evenly spaced ones and against interpolation.

A simulated user contours a structure on its own volume (:mod:`review_tasks`: brain structures at
2 mm, a lung lesion, the chest CT's right lung) by copying the reference onto chosen axial slices:

* ``suggest``: a :class:`fewshotcx.ContourSession` (bundled default model) starts from the
  structure's first and last slice; each round the user draws the slice ``suggest()`` proposes;
* ``even``: n slices evenly spaced from the first to the last slice (``fewshotcx.viz.spread_slices``),
  completed by a ContourSession;
* ``interpolation``: the same evenly spaced slices filled by shape-based interpolation
  (``fx.baselines.interpolate_slices``); ``interpolation+suggest``: interpolation of the suggested slices.

Scores: Dice on the undrawn slices after n = 2…10 drawn slices, and the number of drawn slices
needed to reach Dice 0.85 on them (``active_contouring_summary.csv``; ``> max`` when never reached).

Session cost (``active_contouring_cost.csv``): replaying the suggested slices one by one, the
seconds and model slices of each cached ``draw`` + ``result()``, against a fresh session's first
``result()`` and ``Segmenter.complete`` on the same drawn slices; ``ratio`` = cached / fresh.

    python benchmarks/active_contouring.py --quick
    python benchmarks/active_contouring.py --out benchmarks/results --plots docs/img
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_output_options, apply_output_options, machine_info, ModelSpec, plot_lines, print_provenance, print_table,
    read_csv, SliceTask, write_csv,
)
from review_tasks import slice_tasks  # noqa: E402
from fewshotcx import ContourSession, Volume  # noqa: E402
from fewshotcx.baselines.interpolation import interpolate_slices  # noqa: E402
from fewshotcx.evaluation.metrics import dice  # noqa: E402
from fewshotcx.viz import spread_slices  # noqa: E402

TARGET = 0.85


def undrawn_dice(mask: np.ndarray, reference: np.ndarray, drawn: Sequence[int]) -> float:
    keep = np.ones(reference.shape[2], dtype=bool)
    keep[list(drawn)] = False
    return round(dice(mask[..., keep] > 0, reference[..., keep] > 0), 4)


def session_result(task: SliceTask, model: ModelSpec, reference: Volume, drawn: Sequence[int]) -> np.ndarray:
    session = ContourSession(task.case.image, model.segmenter(modality=task.modality))
    for z in drawn:
        session.draw(z, reference.array[..., z])
    return session.result().array


def run_task(task: SliceTask, model: ModelSpec, max_slices: int) -> tuple[list[dict], list[dict]]:
    """Dice rows for every strategy and n, and the session-cost rows, for one task."""
    reference = task.reference()  # the case is canonical: its array is the canonical array
    ref = reference.array
    z = np.flatnonzero(ref.any(axis=(0, 1)))
    limit = min(max_slices, z.size)
    rows = []

    def add(strategy: str, drawn: Sequence[int], mask: np.ndarray) -> None:
        rows.append({"task": task.name, "strategy": strategy, "drawn_slices": len(drawn),
                     "drawn": " ".join(map(str, sorted(drawn))), "extent_slices": int(z.size),
                     "dice_undrawn": undrawn_dice(mask, ref, drawn)})

    session = ContourSession(task.case.image, model.segmenter(modality=task.modality))
    order = [int(z[0]), int(z[-1])]
    for k in order:
        session.draw(k, ref[..., k])
    while True:
        add("suggest", order, session.result().array)
        add("interpolation+suggest", order, interpolate_slices(ref, order, spacing=reference.spacing))
        if len(order) >= limit:
            break
        nxt = session.suggest(1)[0]
        session.draw(nxt, ref[..., nxt])
        order.append(nxt)
    for n in range(2, limit + 1):
        even = spread_slices(ref > 0, n, ends=True)
        if len(even) < n:
            continue
        add("even", even, session_result(task, model, reference, even))
        add("interpolation", even, interpolate_slices(ref, even, spacing=reference.spacing))
    return rows, session_cost(task, model, reference, order)


#: Steps of the suggested order replayed for the session-cost measurement (each needs a fresh session).
COST_STEPS = 4


def session_cost(task: SliceTask, model: ModelSpec, reference: Volume, order: Sequence[int]) -> list[dict]:
    """Cached draw + result() against a fresh session and (at the first step) Segmenter.complete on
    the same slices, for the first :data:`COST_STEPS` drawn slices after the two ends."""
    ref = reference.array
    cached = ContourSession(task.case.image, model.segmenter(modality=task.modality))
    rows = []
    for i, k in enumerate(order[:COST_STEPS + 2]):
        before = cached.predicted_slices
        start = time.perf_counter()
        cached.draw(k, ref[..., k])
        if i == 0:
            continue
        result = cached.result().array
        t_cached = time.perf_counter() - start
        fresh = ContourSession(task.case.image, model.segmenter(modality=task.modality))
        start = time.perf_counter()
        for j in order[:i + 1]:
            fresh.draw(j, ref[..., j])
        same = np.array_equal(fresh.result().array, result)
        t_fresh = time.perf_counter() - start
        t_complete = complete_seconds(task, model, reference, order[:i + 1]) if i == 1 else ""
        rows.append({"task": task.name, "drawn_slices": i + 1, "first": i == 1, "identical": same,
                     "seconds_cached": round(t_cached, 3), "seconds_fresh": round(t_fresh, 3),
                     "seconds_complete": t_complete, "slices_cached": cached.predicted_slices - before,
                     "slices_fresh": fresh.predicted_slices,
                     "ratio": round(t_cached / max(t_fresh, 1e-9), 3)})
    return rows


def complete_seconds(task: SliceTask, model: ModelSpec, reference: Volume, drawn: Sequence[int]) -> float:
    """Seconds of ``Segmenter.complete`` (whole volume, every drawn slice as support) on ``drawn``."""
    labels = np.zeros(reference.shape, dtype=reference.array.dtype)
    labels[..., list(drawn)] = reference.array[..., list(drawn)]
    start = time.perf_counter()
    model.segmenter(modality=task.modality).complete(task.case.image, reference.with_array(labels), list(drawn))
    return round(time.perf_counter() - start, 3)


def slices_to_reach(rows: Sequence[dict], task: str, strategy: str, max_slices: int):
    reached = [r["drawn_slices"] for r in rows if r["task"] == task and r["strategy"] == strategy
               and r["dice_undrawn"] >= TARGET]
    return min(reached) if reached else f">{max_slices}"


def report(rows: Sequence[dict], cost: Sequence[dict], out_dir: Path, plot_dir: Path, tag: str,
           max_slices: int) -> list[dict]:
    write_csv(rows, out_dir / f"{tag}.csv")
    write_csv(cost, out_dir / f"{tag}_cost.csv")
    summary = []
    for task in dict.fromkeys(r["task"] for r in rows):
        reach = {s: slices_to_reach(rows, task, s, max_slices) for s in ("suggest", "even", "interpolation")}
        numeric = all(isinstance(v, int) for v in (reach["suggest"], reach["even"]))
        summary.append({"task": task, **{f"slices_to_{TARGET}_{s}": v for s, v in reach.items()},
                        "suggest_over_even": round(reach["suggest"] / reach["even"], 3) if numeric else "",
                        "target_met": numeric and reach["suggest"] <= 0.75 * reach["even"]})
    write_csv(summary, out_dir / f"{tag}_summary.csv")
    print(f"\nslices needed for Dice {TARGET} on the undrawn slices (target: suggest <= 0.75 x even):")
    print_table(summary)
    later = [c for c in cost if not c["first"]]
    if later:
        print(f"\nsession cost: cached draw+result() / fresh result(), median over {len(later)} steps: "
              f"{np.median([c['ratio'] for c in later]):.3f} (seconds), "
              f"{np.median([c['slices_cached'] / max(c['slices_fresh'], 1) for c in later]):.3f} (model slices); "
              f"cached results identical to fresh ones: {all(c['identical'] for c in cost)}")
    plot_lines(rows, "drawn_slices", "dice_undrawn", "strategy", Path(plot_dir) / f"{tag}.png", panel="task",
               xlabel="drawn slices", ylabel="Dice on the undrawn slices",
               title="which slice to draw next: suggested vs evenly spaced vs interpolation")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two tasks, up to 5 drawn slices")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-slices", type=int, default=10)
    add_output_options(parser)
    args = parser.parse_args(argv)
    tag = "active_contouring_quick" if args.quick else "active_contouring"
    max_slices = 5 if args.quick else args.max_slices
    plots = args.plots or args.out
    if apply_output_options(args, lambda rows, out, p, t: None, tag):
        report(read_csv(args.out / f"{tag}.csv"), read_csv(args.out / f"{tag}_cost.csv"), args.out, plots, tag,
               max_slices)
        return
    start = time.perf_counter()
    print(f"machine: {machine_info()}")
    model = ModelSpec(args.weights, device=args.device)
    print(f"model: {model.describe()}")
    tasks = slice_tasks(args.quick)
    print_provenance([t.case for t in tasks])
    rows, cost = [], []
    for task in tasks:
        r, c = run_task(task, model, max_slices)
        rows += r
        cost += c
        print(f"  {task.name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
        report(rows, cost, args.out, plots, tag, max_slices)  # after every task: a partial run leaves its CSVs
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
