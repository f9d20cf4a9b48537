"""How many uncertainty draws, each on what share of the support? Chosen on the selection set only.

``predict_uncertainty`` runs ``draws`` independent draws, each on a random ``fraction`` of the support
(the pool bagged to that share, and each query group's support set ``S`` cut to it, so a draw costs
about ``fraction`` of a prediction). This script measures, for every ``draws × fraction``, how well
the uncertainty map finds the errors of ``predict``'s contour, and what it costs:

* ``auroc_voxel``: AUROC of the per-voxel uncertainty for the voxels ``predict`` gets wrong, over the
  review region (within 3 in-plane voxels of the reference or the contour);
* ``auroc_slice``: AUROC of the slice's summed uncertainty for slices with Dice < 0.7 (slices where the
  reference or the contour has foreground);
* ``cost``: ``draws × fraction``, the draws' inference in predictions' worth (UniverSeg's cost grows
  linearly with the support set size; the registration is shared). Timings depend on the machine's
  load, so the end-to-end ratio to ``predict`` is measured on its own by ``uncertainty_cost.py``.

Tasks: selection data only (:mod:`roles`; STS_003 is the selection patient): support STS_001, query
STS_003, on CT the GTV (a manual contour) and the HU-defined bone, on MR T1 the GTV; default
``fx.Segmenter()`` (strategy ``auto``), seed 0. The report set is never used. Rule (:func:`choose`): the cheapest
configuration whose mean ``auroc_voxel`` is within ``TOLERANCE`` of the most expensive one (8 draws
on the whole support), ties to more draws.

    python benchmarks/uncertainty_draws.py --out benchmarks/results     # ~20 minutes on a 2-core CPU

Writes ``uncertainty_draws.csv`` (per task and configuration) and ``uncertainty_draws_summary.csv``
(means per configuration, the chosen one marked).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, print_table, sarcoma_selection_ready, write_csv  # noqa: E402
from fewshotcx import Segmenter, Volume, datasets  # noqa: E402
from fewshotcx.evaluation.calibration import auroc, review_region  # noqa: E402
from fewshotcx.evaluation.metrics import dice as dice_score, per_slice_dice  # noqa: E402
from fewshotcx.evaluation.uncertainty import draw_seed, uncertainty_map  # noqa: E402

DRAWS = (4, 6, 8)
FRACTIONS = (1.0, 0.5)
#: AUROC a cheaper configuration may lose against the most expensive one.
TOLERANCE = 0.02
DICE_LEVEL = 0.7
STRUCTURES = {"CT": ("GTV", "bone"), "MR_T1": ("GTV",)}
SUPPORT, QUERY = "STS_001", "STS_003"


def measure(seg: Segmenter, query: Volume, reference: np.ndarray, task: str,
            draws: Sequence[int] = DRAWS, fractions: Sequence[float] = FRACTIONS) -> list[dict]:
    """Rows for one task: every ``draws × fractions`` on one fitted ``seg`` and ``query``, whose canonical
    ``(X, Y, Z)`` label map (the fitted classes' values) is ``reference``. Draw ``i`` has the same seed
    under every fraction, so ``draws`` nests (the first 4 of 8 draws are the 4-draw configuration)."""
    predictor = seg.predictor
    prepared = predictor.query(query)
    probs = predictor.probabilities(prepared)
    labels = predictor.labels(probs)
    wrong = labels != reference
    region = review_region(reference > 0, probs.max(axis=0))
    dice = per_slice_dice(labels > 0, reference > 0, axis=2)
    shown = reference.any(axis=(0, 1)) | labels.any(axis=(0, 1))
    rows = []
    for fraction in fractions:
        start = time.perf_counter()
        samples = [predictor.draw(draw_seed(predictor.seed, i), fraction).probabilities(prepared)
                   for i in range(max(draws))]
        draw_s = (time.perf_counter() - start) / max(draws)
        for k in draws:
            uncertainty = uncertainty_map(samples[:k])
            per_slice = uncertainty.sum(axis=(0, 1))
            rows.append({"task": task, "draws": k, "fraction": fraction, "dice": round(dice_score(labels > 0, reference > 0), 4),
                         "auroc_voxel": round(auroc(uncertainty[region], wrong[region]), 4),
                         "auroc_slice": round(auroc(per_slice[shown], dice[shown] < DICE_LEVEL), 4),
                         "bad_slices": int((dice[shown] < DICE_LEVEL).sum()), "slices": int(shown.sum()),
                         "cost": k * fraction, "draw_s": round(draw_s, 2)})
    return rows


def choose(rows: Sequence[dict], tolerance: float = TOLERANCE) -> list[dict]:
    """Means per ``(draws, fraction)``; ``chosen`` marks the cheapest (lowest ``cost``) whose
    mean ``auroc_voxel`` is at least the most expensive configuration's minus ``tolerance`` (ties: more
    draws)."""
    configs = sorted({(r["draws"], r["fraction"]) for r in rows})
    summary = []
    for k, fraction in configs:
        mine = [r for r in rows if (r["draws"], r["fraction"]) == (k, fraction)]
        summary.append({"draws": k, "fraction": fraction, "tasks": len(mine), "cost": k * fraction,
                        **{c: round(float(np.nanmean([r[c] for r in mine])), 4) for c in ("auroc_voxel", "auroc_slice")}})
    reference = max(summary, key=lambda s: (s["cost"], s["draws"]))
    good = [s for s in summary if s["auroc_voxel"] >= reference["auroc_voxel"] - tolerance]
    best = min(good, key=lambda s: (s["cost"], -s["draws"]))
    return [{**s, "reference": s is reference, "chosen": s is best} for s in summary]


def selection_tasks() -> list[tuple[str, datasets.Case, datasets.Case]]:
    """(name, support, query): STS_001 → STS_003; CT: GTV and bone, MR T1: GTV."""
    tasks = []
    for modality, structures in STRUCTURES.items():
        cases = {c.name.split("/")[1][:7]: c for c in datasets.sts_cases([modality])}
        if modality == "CT":
            cases = {k: datasets.with_hu_anatomy(c) for k, c in cases.items()}
        cases = {k: datasets.select_structures(c, structures) for k, c in cases.items()}
        tasks.append((f"{SUPPORT}->{QUERY} {modality} {'+'.join(structures)}", cases[SUPPORT], cases[QUERY]))
    return tasks


def selection_volumes() -> list[str]:
    """Every volume this selection reads, as :mod:`roles` names them."""
    return [f"sts/{patient}_{modality}" for modality in STRUCTURES for patient in (SUPPORT, QUERY)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output/uncertainty_draws"))
    args = parser.parse_args(argv)
    if not sarcoma_selection_ready(STRUCTURES, selection_volumes()):
        return 2
    machine, rows = machine_info(), []
    for name, support, query in selection_tasks():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = Segmenter(progress=False, seed=0).fit([support.image], [support.labels])
            rows += measure(seg, query.image, query.labels.canonical().array, name)
        print_table([r for r in rows if r["task"] == name])
        write_csv([{**r, "data_role": "selection", "machine": machine} for r in rows], args.out / "uncertainty_draws.csv")
    summary = choose(rows)
    write_csv(summary, args.out / "uncertainty_draws_summary.csv")
    print(f"# uncertainty draws — {machine}")
    print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
