"""Are the default model's probabilities calibrated, and does the review score find the bad slices?

Tasks (real data, :mod:`review_tasks`): cross-subject brain structures (Colin27 ↔ MNI152, 2 mm,
the whole other brain as support) and same-volume tasks (a structure drawn on 3 evenly spaced
slices of its own volume, ends included, the rest predicted: ``Segmenter.fit(..., slices=)``).
For each task, with the bundled default model:

* ``ece_before``: expected calibration error of ``predict_proba`` over the review region (voxels
  within 3 in-plane voxels of the reference or of the contour, on slices the support did not label);
  ``ece_after``: the same with the temperature that :func:`fewshotcx.evaluation.calibration.fit_temperature`
  fitted on the **support alone** (held-out folds of the support; the query's reference is never used);
  ``ece_volume_*``: the same over every voxel of those slices.
* per-slice review scores from ``fx.review.review`` (k independent support draws): for every slice
  where the reference or the reviewed contour has foreground, its Dice and its score. The pooled
  AUROC of the score for finding slices with Dice < 0.7 is printed and written as ``calibration_auroc.csv``
  (``expected_dice``: the review score, 1 − expected Dice; ``uncertainty``: summed voxel entropy).

    python benchmarks/calibration.py --quick
    python benchmarks/calibration.py --out benchmarks/results
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
    add_output_options, apply_output_options, machine_info, ModelSpec, print_provenance, print_table, read_csv,
    write_csv,
)
from review_tasks import cross_tasks, slice_tasks  # noqa: E402
from fewshotcx import review as fx_review  # noqa: E402
from fewshotcx.evaluation.calibration import (  # noqa: E402
    apply_temperature, auroc, expected_calibration_error, fit_temperature, review_region,
)
from fewshotcx.evaluation.metrics import per_slice_dice  # noqa: E402
from fewshotcx.viz import spread_slices  # noqa: E402

DICE_LEVEL = 0.7


def run_task(name: str, seg, query, reference: np.ndarray, labelled: Sequence[int], draws: int) -> tuple[dict, list]:
    """One task: the calibration row and the per-slice rows."""
    start = time.perf_counter()
    prob = seg.predict_proba(query).canonical().array
    temperature = fit_temperature(seg)
    keep = np.ones(reference.shape[2], dtype=bool)
    keep[list(labelled)] = False
    region = review_region(reference, prob) & keep[None, None, :]
    everything = np.broadcast_to(keep[None, None, :], reference.shape)
    scaled = apply_temperature(prob, temperature)
    row = {"task": name, "labelled_slices": len(labelled), "temperature": round(temperature, 3),
           "ece_before": round(expected_calibration_error(prob[region], reference[region]), 4),
           "ece_after": round(expected_calibration_error(scaled[region], reference[region]), 4),
           "ece_volume_before": round(expected_calibration_error(prob[everything], reference[everything]), 5),
           "ece_volume_after": round(expected_calibration_error(scaled[everything], reference[everything]), 5),
           "region_voxels": int(region.sum())}
    rev = fx_review.review(seg, query, draws=draws)
    dice = per_slice_dice(rev.labels > 0, reference, axis=2)
    shows = (reference.any(axis=(0, 1)) | rev.labels.any(axis=(0, 1))) & keep
    calibrated = fx_review.slice_scores(apply_temperature(rev.probability, temperature), rev.labels, rev.classes)
    slices = [{"task": name, "z": int(z), "dice": round(float(dice[z]), 4), "bad": bool(dice[z] < DICE_LEVEL),
               "expected_dice": round(float(rev.scores[z]), 4), "expected_dice_calibrated": round(float(calibrated[z]), 4),
               "uncertainty": round(float(rev.uncertainty[..., z].sum()), 3)} for z in np.flatnonzero(shows)]
    row["slices_scored"], row["bad_slices"] = len(slices), sum(r["bad"] for r in slices)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row, slices


SCORES = ("expected_dice", "expected_dice_calibrated", "uncertainty")


def report(rows: Sequence[dict], slices: Sequence[dict], out_dir: Path, tag: str) -> list[dict]:
    """Print the tables; write ``<tag>.csv`` (per task), ``<tag>_slices.csv`` and ``<tag>_auroc.csv``."""
    write_csv(rows, out_dir / f"{tag}.csv")
    write_csv(slices, out_dir / f"{tag}_slices.csv")
    print_table(rows)
    summary = []
    for task in ["pooled", *dict.fromkeys(r["task"] for r in slices)]:
        mine = [r for r in slices if task == "pooled" or r["task"] == task]
        bad = np.array([r["bad"] for r in mine])
        summary.append({"task": task, "slices": len(mine), "bad": int(bad.sum()),
                        **{f"auroc_{s}": round(auroc(np.array([r[s] for r in mine]), bad), 3) for s in SCORES}})
    ece = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("ece_before", "ece_after")}
    summary.append({"task": "mean ECE (before, after)", "slices": "", "bad": "",
                    "auroc_expected_dice": ece["ece_before"], "auroc_expected_dice_calibrated": ece["ece_after"],
                    "auroc_uncertainty": ""})
    print(f"\nAUROC for slices with Dice < {DICE_LEVEL} (score: higher = worse):")
    print_table(summary)
    write_csv(summary, out_dir / f"{tag}_auroc.csv")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two tasks of each kind, 3 draws")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--only", choices=["cross", "same"], default=None,
                        help="only the cross-subject or only the same-volume tasks (tag gets the suffix)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    tag = ("calibration_quick" if args.quick else "calibration") + (f"_{args.only}" if args.only else "")
    if apply_output_options(args, lambda rows, out, plots, t: None, tag):  # --from-csv: per-task CSVs to merge
        report([r for p in args.from_csv for r in read_csv(p)],
               [r for p in args.from_csv for r in read_csv(p.with_name(p.stem + "_slices.csv"))], args.out, tag)
        return
    start = time.perf_counter()
    print(f"machine: {machine_info()}")
    model = ModelSpec(args.weights, device=args.device)
    print(f"model: {model.describe()}")
    draws = 3 if args.quick else args.draws
    rows, slices = [], []
    cross = [] if args.only == "same" else cross_tasks(args.quick)
    same = [] if args.only == "cross" else slice_tasks(args.quick)
    print_provenance([t.query for t in cross] + [t.case for t in same])
    for task in cross:
        seg = model.segmenter(modality=task.modality).fit([task.support.image], [task.support_label()])
        row, s = run_task(task.name, seg, task.query.image, task.reference().array, (), draws)
        rows.append({"kind": "cross-subject", **row})
        slices += s
        print(f"  {task.name}: {row}", flush=True)
        report(rows, slices, args.out, tag)  # after every task: a partial run still leaves its CSVs
    for task in same:
        reference = task.reference()
        labelled = spread_slices(reference.array > 0, 3, ends=True)
        seg = model.segmenter(modality=task.modality).fit([task.case.image], [reference], slices=[labelled])
        row, s = run_task(f"{task.name} (3 slices)", seg, task.case.image, reference.array, labelled, draws)
        rows.append({"kind": "same-volume", **row})
        slices += s
        print(f"  {task.name}: {row}", flush=True)
        report(rows, slices, args.out, tag)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
