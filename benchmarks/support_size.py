"""Dice against support size, cross-subject: in-context UniverSeg versus the baselines.

A structure labelled on one subject (the support volume) is segmented on another (the query):
Colin27 + AAL ↔ MNI152 + Harvard-Oxford brain structures at 2 mm (different brains and atlases,
both directions), and pyradiomics lesions (brain1 → brain2, lung1 → lung2; the reverse directions
would query volumes the default model was trained on). Every query is scored in 3D (Dice, HD95,
surface Dice at 2 mm) and per axial slice (mean 2D Dice over the reference's slices).

The *support pool* is every axial slab of the support volume (empty slabs are true negatives).
*Support size* S means:

* ``universeg-position`` / ``universeg-random``: the Segmenter draws S slabs from the whole pool for
  each group of 8 neighbouring query slices (position-matched or random, :mod:`fewshotcx.pipeline.support`),
  so across the volume it sees many more than S distinct slabs. ``ensemble`` K = 3 averages three
  independent draws.
* ``universeg-same-slices`` and ``unet-scratch``: S slabs are drawn once from the pool (the
  ``"random"`` strategy's draw: about 3/4 showing the structure, 1/4 empty) and those S labelled
  slabs are *all* the method gets: UniverSeg uses them as its whole support
  (``fit(slices=...)``); a 2D U-Net (:mod:`fewshotcx.baselines.unet`) is trained from scratch on
  them. This is the like-for-like comparison of in-context inference with supervised training.
* ``label-fusion``: the support's mask at the same relative position (no registration), using the
  whole support volume; it does not depend on S (a flat line in the plot).

Each measurement is repeated for ``draws`` seeds. Post-processing variants (none, largest 3D
component) are scored on the same probability map.

    python benchmarks/support_size.py --quick
    python benchmarks/support_size.py --weights default --out benchmarks/results --plots docs/img
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    POSTPROCESSING, add_output_options, apply_output_options, brain_cross_tasks, CrossTask, data_role,
    lesion_cross_tasks, machine_info, ModelSpec, paired_difference, plot_lines, print_provenance,
    print_table, score, summarise, threshold, write_csv,
)
from fewshotcx import Segmenter, Volume  # noqa: E402
from fewshotcx.backends.universeg import DEFAULT_SUPPORT_SIZE  # noqa: E402
from fewshotcx.baselines.interpolation import label_fusion  # noqa: E402
from fewshotcx.pipeline.support import SupportPool, select_support  # noqa: E402
from fewshotcx.baselines.unet import UNetBackend, train_unet_2d  # noqa: E402

FULL_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class SweepConfig:
    """What to sweep. ``*_sizes = None`` means every size in ``sizes``: ``random_sizes`` for the random
    strategy, ``ensemble_sizes`` for ensembles > 1, ``fixed_sizes`` for the two fixed-slice methods
    (``universeg-same-slices``, ``unet-scratch``)."""

    sizes: Sequence[int] = FULL_SIZES
    draws: int = 3
    strategies: Sequence[str] = ("position", "random")
    random_sizes: Optional[Sequence[int]] = None
    ensembles: Sequence[int] = (1, 3)
    ensemble_sizes: Optional[Sequence[int]] = None
    same_slices: bool = True
    unet_steps: int = 100
    fixed_sizes: Optional[Sequence[int]] = None
    label_fusion: bool = True
    postprocessing: dict = field(default_factory=lambda: dict(POSTPROCESSING))


def _family(task: CrossTask) -> str:
    return "lesion" if task.structure == "lesion" else "brain"


def _draw_slices(pool: SupportPool, size: int, draw: int) -> torch.Tensor:
    """S pool indices drawn once with the ``"random"`` strategy (same composition as UniverSeg's)."""
    generator = torch.Generator().manual_seed(10_000 + draw)
    return select_support(pool, torch.tensor([0.5]), size, "random", generator)[0].sort().values


def _slice_indices(pool: SupportPool, items: torch.Tensor, depth: int) -> list[int]:
    """Axial indices of pool items (a single support volume, positions ``index / (depth - 1)``)."""
    return sorted(int(round(float(p) * (depth - 1))) for p in pool.positions[items])


class _Recorder:
    """Scores probability maps of one task under every post-processing variant into rows."""

    def __init__(self, task: CrossTask, config: SweepConfig, role: str) -> None:
        self.task, self.config, self.rows = task, config, []
        self.reference = task.reference()
        self.base = {"family": _family(task), "task": task.name, "structure": task.structure,
                     "support_subject": task.support.name, "subject": task.query.name, "data_role": role}

    def add(self, prob: Volume, seconds: float, **fields: Any) -> None:
        for name, ops in self.config.postprocessing.items():
            self.rows.append({**self.base, **fields, "postprocess": name,
                              **score(threshold(prob, ops), self.reference), "seconds": round(seconds, 2)})

    def add_mask(self, mask: np.ndarray, seconds: float, **fields: Any) -> None:
        self.add(self.reference.with_array(mask.astype(np.float32), label=False), seconds, **fields)


def _universeg(model: ModelSpec, task: CrossTask, label: Volume, slices: Optional[list[int]] = None,
               **options: Any) -> tuple[Volume, float]:
    start = time.perf_counter()
    seg = model.segmenter(modality=task.modality, **options)
    seg.fit([task.support.image], [label], slices=None if slices is None else [slices])
    return seg.predict_proba(task.query.image), time.perf_counter() - start


def run_task(task: CrossTask, model: ModelSpec, config: SweepConfig, role: str = "unknown") -> list[dict]:
    """Every method, support size and draw on one task; returns tidy rows."""
    rec = _Recorder(task, config, role)
    label = task.support_label()
    depth = label.shape[2]
    pool = model.segmenter(modality=task.modality).fit([task.support.image], [label]).pools[2]
    sizes = [s for s in config.sizes if s <= len(pool)]
    skipped = [s for s in config.sizes if s > len(pool)]
    if skipped:
        print(f"  {task.name}: support pool has {len(pool)} slabs; skipping S = {skipped}")
    if config.label_fusion:
        start = time.perf_counter()
        fused = label_fusion(rec.reference.shape, [label.array])
        rec.add_mask(fused, time.perf_counter() - start, method="label-fusion", strategy="", ensemble=1,
                     support_size=len(pool), draw=0)
    for size in sizes:
        for draw in range(config.draws):
            for strategy in config.strategies:
                if strategy == "random" and config.random_sizes is not None and size not in config.random_sizes:
                    continue
                for k in config.ensembles:
                    if k > 1 and config.ensemble_sizes is not None and size not in config.ensemble_sizes:
                        continue
                    prob, secs = _universeg(model, task, label, support_size=size, ensemble=k, seed=draw,
                                            strategy=strategy)
                    rec.add(prob, secs, method=f"universeg-{strategy}", strategy=strategy, ensemble=k,
                            support_size=size, draw=draw)
            if config.fixed_sizes is not None and size not in config.fixed_sizes:
                continue
            items = _draw_slices(pool, size, draw)
            if config.same_slices:
                prob, secs = _universeg(model, task, label, _slice_indices(pool, items, depth), support_size=size,
                                        seed=draw)
                rec.add(prob, secs, method="universeg-same-slices", strategy="fixed", ensemble=1,
                        support_size=size, draw=draw)
            if config.unet_steps > 0:
                start = time.perf_counter()
                net = train_unet_2d(pool.images[items], pool.labels[items, :1], steps=config.unet_steps, seed=draw)
                seg = Segmenter(backend=UNetBackend(model=net), modality=task.modality, progress=False)
                prob = seg.fit([task.support.image], [label]).predict_proba(task.query.image)
                rec.add(prob, time.perf_counter() - start, method="unet-scratch", strategy="fixed", ensemble=1,
                        support_size=size, draw=draw)
        print(f"  {task.name}: S = {size} done")
    return rec.rows


def _line(row: dict) -> str:
    return row["method"] + (f" ×{row['ensemble']}" if int(row["ensemble"]) > 1 else "")


def evidence(rows: Sequence[dict]) -> list[dict]:
    """Paired comparisons behind the Segmenter defaults, per task family: strategy, ensemble and
    post-processing matched on (task, support size, draw); each support size against the benchmarks'
    protocol (position strategy, no ensemble: benchmarks/common.py) matched on (task, draw)."""
    match = ["task", "support_size", "draw"]
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        universeg = [r for r in rows if r["family"] == family and r["method"].startswith("universeg-")
                     and r["strategy"] in ("position", "random")]
        plain = [r for r in universeg if r["postprocess"] == "none"]
        position = [r for r in universeg if r["strategy"] == "position" and r["ensemble"] == 1]
        found = [paired_difference([r for r in plain if r["ensemble"] == 1], "strategy", "random", "position", match),
                 paired_difference([r for r in plain if r["strategy"] == "position"], "ensemble", 1, 3, match)]
        default = [r for r in plain if r["strategy"] == "position" and r["ensemble"] == 1]
        found += [paired_difference(default, "support_size", DEFAULT_SUPPORT_SIZE, size, ["task", "draw"])
                  for size in sorted({r["support_size"] for r in default} - {DEFAULT_SUPPORT_SIZE})]
        for name in POSTPROCESSING:
            if name != "none":
                found += [{**paired_difference(position, "postprocess", "none", name, match, value), "value": value}
                          for value in ("dice", "hd95")]
        out += [{"family": family, **c} for c in found]
    return out


def run(tasks: Sequence[CrossTask], model: ModelSpec, config: SweepConfig, out_dir: Path,
        plot_dir: Optional[Path] = None, tag: str = "support_size") -> list[dict]:
    """Run the sweep on ``tasks``; write ``<out_dir>/<tag>.csv``, ``<tag>_evidence.csv`` and one
    ``<plot_dir>/<tag>_<family>.png`` per task family. Returns the rows."""
    print(f"machine: {machine_info()}")
    print(f"model: {model.describe()}")
    print_provenance([c for t in tasks for c in (t.support, t.query)])
    roles = model.roles()
    rows: list[dict] = []
    for task in tasks:
        role = data_role(task.query, task.structure, roles) if not model.in_memory else "unknown"
        print(f"task {task.name} (data role: {role})")
        rows += run_task(task, model, config, role)
    report(rows, out_dir, plot_dir, tag)
    return rows


def report(rows: Sequence[dict], out_dir: Path, plot_dir: Optional[Path] = None, tag: str = "support_size") -> None:
    """Write ``<tag>.csv``, ``<tag>_evidence.csv`` and ``<tag>_<family>.png`` (one panel per task plus
    their mean), and print the summary tables."""
    out_dir, plot_dir = Path(out_dir), Path(plot_dir or out_dir)
    write_csv(rows, out_dir / f"{tag}.csv")
    plain = [{**r, "line": _line(r)} for r in rows if r["postprocess"] == "none"]
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in plain if r["family"] == family]
        draws = len({r["draw"] for r in mine})
        plot_lines(mine, "support_size", "dice", "line", plot_dir / f"{tag}_{family}.png", log2_x=True,
                   flat=("label-fusion",), xlabel="support size S (slabs)", ylabel="3D Dice (mean ± sd over draws)",
                   panel="task", title=f"{family}: cross-subject 3D Dice vs support size ({draws} draws)")
        print(f"\n{family}: 3D Dice by method and support size (no post-processing)")
        print_table(summarise(mine, ["task", "line", "support_size"]))
    comparisons = evidence(rows)
    print("\ndefault-settings evidence (paired; mean_diff = b - a):")
    columns = ("family", "compare", "value", "pairs", "mean_a", "mean_b", "mean_diff", "b_higher", "a_higher")
    print_table([{k: c.get(k, "") for k in columns} for c in comparisons])
    write_csv(comparisons, out_dir / f"{tag}_evidence.csv")


QUICK = SweepConfig(sizes=(1, 4, 16), draws=2, ensemble_sizes=(4,), unet_steps=100)


def _pair(text: str) -> tuple[str, str]:
    support, sep, query = text.partition(":")
    if not (sep and support and query):
        raise SystemExit(f"--lesions expects SUPPORT:QUERY pairs such as brain1:brain2, got {text!r}")
    return support, query


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one brain structure, one lesion, S in 1/4/16, 2 draws")
    parser.add_argument("--weights", default="default", help="UniverSeg checkpoint: default, official or a path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--structures", nargs="+", default=["left hippocampus", "left thalamus"],
                        help="brain structures (Colin27/AAL and MNI152/Harvard-Oxford names)")
    parser.add_argument("--directions", choices=("both", "forward", "alternate"), default="both",
                        help="brain tasks: both directions per structure, Colin27 -> MNI152 only, or alternating")
    parser.add_argument("--lesions", nargs="*", default=["brain1:brain2", "lung1:lung2"],
                        help="pyradiomics lesion tasks SUPPORT:QUERY")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--random-sizes", type=int, nargs="*", default=None, help="sizes for the random strategy")
    parser.add_argument("--ensemble-sizes", type=int, nargs="*", default=None, help="sizes for ensemble 3")
    parser.add_argument("--fixed-sizes", type=int, nargs="*", default=None,
                        help="sizes for universeg-same-slices and unet-scratch")
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--no-same-slices", action="store_true")
    add_output_options(parser)
    args = parser.parse_args(argv)
    tag = "support_size_quick" if args.quick else "support_size"
    if apply_output_options(args, report, tag):
        return

    names = ("sizes", "draws", "random_sizes", "ensemble_sizes", "fixed_sizes", "unet_steps")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    config = replace(QUICK if args.quick else SweepConfig(), **overrides)
    config.same_slices = config.same_slices and not args.no_same_slices
    structures = args.structures[:1] if args.quick else args.structures
    lesions = [_pair(p) for p in (args.lesions[:1] if args.quick else args.lesions)]
    tasks = brain_cross_tasks(structures, "forward" if args.quick else args.directions)
    tasks += lesion_cross_tasks(lesions)
    start = time.perf_counter()
    run(tasks, ModelSpec(args.weights, device=args.device), config, args.out, args.plots, tag)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
