"""The founding comparison: UniverSeg, SAM, nnU-Net v2, a 2D U-Net, label fusion, interpolation and
TotalSegmentator on the same few labelled patients.

For every case of a cohort as query, ``n = 1, 2, …`` of the other cases (as many as the cohort allows)
are the labelled patients; every method in ``--methods`` segments the query with them (one
:class:`fewshotcx.baselines.compare.Run`, the same code as ``fewshotcx compare``), scored per structure
with Dice, HD95 and surface Dice at 2 mm, with training and inference seconds.

Cohorts (real data): ``brain`` = Colin27 + AAL and MNI152 + Harvard-Oxford at ``--spacing`` mm, cropped to
an axial slab, the structures both atlases name (``--structures``); ``lung`` = pyradiomics lung1 and
lung2 (one lesion each) resampled to ``--spacing`` mm. Two cases per cohort allow ``n = 1`` only.

Budgets are stated in the CSV's ``budget`` column: nnU-Net trained for minutes on a CPU is not nnU-Net
trained for a day (1000 epochs × 250 iterations on a GPU).

    nice -n 10 python benchmarks/seed_comparison.py            # writes benchmarks/results/seed_comparison.csv
                                                               # and docs/img/seed_comparison.png
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import brain_cases, machine_info, plot_lines, print_table, summarise, write_csv  # noqa: E402
from fewshotcx import datasets  # noqa: E402
from fewshotcx.baselines.compare import METHODS, Options, Run, check_methods, compare  # noqa: E402

DEFAULT_METHODS = ("universeg", "sam", "atlas", "nnunet", "unet", "label-fusion", "interpolation", "totalsegmentator")
DEFAULT_STRUCTURES = ("left hippocampus", "right thalamus", "left caudate")


def cohort(name: str, spacing: float, structures: Sequence[str]) -> list[datasets.Case]:
    """The real-data cases of cohort ``name`` (see the module docstring)."""
    if name == "brain":
        pair = brain_cases(spacing)
        return [datasets.select_structures(case, structures) for case in pair]
    if name == "lung":
        cases = datasets.pyradiomics_cases(["lung1", "lung2"])
        out = []
        for case in cases:
            image = datasets.resample_to_spacing(case.image, spacing)
            out.append(replace(case, image=image, labels=datasets.labels_onto_grid(case.labels, image)))
        return out
    raise ValueError(f"unknown cohort {name!r}: expected brain or lung")


def runs(cases: Sequence[datasets.Case], max_support: int) -> list[Run]:
    """Every query with every ``n``-subset of the other cases as support, ``n = 1 … max_support``."""
    out = []
    for q, query in enumerate(cases):
        others = [c for i, c in enumerate(cases) if i != q]
        for n in range(1, min(max_support, len(others)) + 1):
            for support in combinations(others, n):
                out.append(Run([c.image for c in support], [c.labels for c in support], [query.image],
                               [query.labels], [query.name.replace("/", "_")],
                               dict(query.structures)))
    return out


def run_benchmark(cohorts: dict[str, list[datasets.Case]], methods: Sequence[str], options: Options,
                  max_support: int = 4, extra: Optional[dict] = None, partial: Optional[Path] = None) -> list[dict]:
    """Tidy rows (one per cohort × n × query × method × structure) for ``methods`` on every run, each with
    the ``extra`` columns; with ``partial``, the rows so far are written there after every run."""
    rows = []
    for name, cases in cohorts.items():
        for run in runs(cases, max_support):
            print(f"{name}: query {run.query_ids[0]}, n = {run.n_support}")
            rows += [{"cohort": name, **row, **(extra or {})} for row in compare(run, methods, options)]
            if partial is not None:
                write_csv(rows, partial)
    return rows


def report(rows: list[dict], csv_path: Path, plot_path: Path) -> None:
    write_csv(rows, csv_path)
    scored = [r for r in rows if r.get("status") == "ok" and r.get("dice") is not None]
    if scored:
        print_table(summarise(scored, ["cohort", "method", "n_support"], "dice"))
        plot_lines(scored, "n_support", "dice", "method", plot_path, title="Few labelled patients: Dice per method",
                   xlabel="labelled patients (n)", ylabel="Dice", panel="cohort")
    for row in rows:
        if row.get("status") == "skipped":
            print(f"skipped {row['method']} ({row['cohort']}): {row['note']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohorts", default="brain,lung")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"from {', '.join(METHODS)}")
    parser.add_argument("--structures", default=",".join(DEFAULT_STRUCTURES), help="brain structures")
    parser.add_argument("--spacing", type=float, default=3.0, help="mm (the benchmark runs on small volumes)")
    parser.add_argument("--max-support", type=int, default=4)
    parser.add_argument("--weights", default="default", help="UniverSeg weights")
    parser.add_argument("--sam-weights", default=None)
    parser.add_argument("--totalseg-masks", default=None)
    parser.add_argument("--unet-steps", type=int, default=100)
    parser.add_argument("--unet-slice-size", type=int, default=64)
    parser.add_argument("--nnunet-configuration", default="3d_fullres")
    parser.add_argument("--nnunet-epochs", type=int, default=2)
    parser.add_argument("--nnunet-iterations", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/results/seed_comparison.csv"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/seed_comparison.png"))
    args = parser.parse_args(argv)
    methods = check_methods([m for m in args.methods.split(",") if m])
    options = Options(weights=args.weights, sam_weights=args.sam_weights, device=args.device,
                      unet_steps=args.unet_steps, unet_slice_size=args.unet_slice_size,
                      nnunet_configuration=args.nnunet_configuration, nnunet_epochs=args.nnunet_epochs,
                      nnunet_iterations=args.nnunet_iterations, totalseg_masks=args.totalseg_masks)
    structures = [s for s in args.structures.split(",") if s]
    cohorts = {name: cohort(name, args.spacing, structures) for name in args.cohorts.split(",") if name}
    machine = machine_info()
    print(machine)
    for cases in cohorts.values():
        for case in cases:
            print(f"  {case.name}: {case.image.shape} at {args.spacing} mm; {case.source}; {case.licence}")
    start = time.perf_counter()
    rows = run_benchmark(cohorts, methods, options, args.max_support, {"machine": machine}, args.csv)
    print(f"total {time.perf_counter() - start:.0f} s")
    report(rows, args.csv, args.plot)


if __name__ == "__main__":
    main()
