"""Dice against the number of labelled slices in the same volume: model, interpolation, combined.

A user contours a structure on a few axial slices of a volume and wants the rest. For n = 1, 2, 3,
5, 8 labelled slices spread evenly over the structure's axial extent, three labelling protocols:

* ``ends``: n slices from the structure's first to its last slice, both included (the workflow of
  :meth:`fewshotcx.Segmenter.complete` and of interpolation in planning systems; n >= 2);
* ``inside``: n slices strictly inside the extent (nobody marks where the structure stops);
* ``inside+bounds``: the same plus the two empty slices just beyond the ends (negative examples).

and three ways to fill the volume:

* ``model``: the default UniverSeg checkpoint with those slices as its whole support
  (``Segmenter.fit(..., slices=[labelled])``, default settings).
* ``interpolation``: shape-based (signed-distance) interpolation between the labelled slices
  (:func:`fewshotcx.baselines.interpolate_slices`); nothing outside the labelled range.
* ``combined``: inside the labelled range, the average of the model's probability and a soft
  version of the interpolation (``sigmoid(-d / τ)``, ``d`` the in-plane signed distance in mm to the
  interpolated contour, ``τ`` one in-plane voxel); outside the range, the model alone. The
  interpolation keeps the user's shapes between the slices, the model corrects it where the anatomy
  between them differs and is the only one that extends beyond the outermost labelled slices.

Every method keeps the user's contours on the labelled slices. Post-processing variants are scored
on the same probabilities: none; largest 3D component; ``drawn_extent``, which erases everything
outside the range of labelled slices that show the structure (what ``Segmenter.complete`` does);
and the Segmenter's ``support_extent`` (that range ± 5 % of the axis) then the largest component.
Scores: 3D Dice / HD95 / surface Dice on the whole volume, and ``dice_unlabelled`` / ``slice_dice``
on the unlabelled slices only (the part a method actually predicts). Only volumes and structures the
default model never trained on are used (read from the checkpoint's training config).

    python benchmarks/labelled_slices.py --quick
    python benchmarks/labelled_slices.py --weights default --out benchmarks/results --plots docs/img
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    POSTPROCESSING, add_output_options, apply_output_options, brain_cases, data_role, machine_info,
    ModelSpec, paired_difference, plot_lines, print_provenance, print_table, pyradiomics_case, score,
    SliceTask, summarise, threshold, write_csv,
)
from fewshotcx import datasets  # noqa: E402
from fewshotcx.baselines.interpolation import interpolate_slices  # noqa: E402
from fewshotcx.evaluation.metrics import dice  # noqa: E402
from fewshotcx.pipeline.postprocess import restrict_extent  # noqa: E402
from fewshotcx.pipeline.slicing import relative_position  # noqa: E402
from fewshotcx.viz import spread_slices  # noqa: E402

COUNTS = (1, 2, 3, 5, 8)
PROTOCOLS = ("ends", "inside", "inside+bounds")  # also the order of the plots' panels
#: Post-processing variants (module docstring); ``drawn_extent`` is handled by :func:`run_task`.
VARIANTS = {**POSTPROCESSING, "drawn_extent": (),
            "support_extent+largest_component": ("support_extent", "largest_component")}


def soft_mask(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Per axial slice, ``sigmoid(-d / τ)`` of the in-plane signed distance ``d`` (mm, negative inside)
    to the mask's contour, ``τ`` = mean in-plane voxel size; 0 on empty slices. ``(X, Y, Z)`` float32."""
    sampling = tuple(float(s) for s in spacing[:2])
    tau = float(np.mean(sampling))
    out = np.zeros(mask.shape, dtype=np.float32)
    for z in np.flatnonzero(mask.any(axis=(0, 1))):
        inside = mask[..., z] > 0
        signed = ndimage.distance_transform_edt(~inside, sampling=sampling) - \
            ndimage.distance_transform_edt(inside, sampling=sampling)
        out[..., z] = 1.0 / (1.0 + np.exp(signed / tau))
    return out


def combine(model_prob: np.ndarray, interpolated: np.ndarray, labelled: Sequence[int],
            spacing: Sequence[float]) -> np.ndarray:
    """The ``combined`` probability (module docstring): mean of the model and the soft interpolation
    inside the labelled range, the model alone outside it."""
    lo, hi = min(labelled), max(labelled) + 1
    out = model_prob.astype(np.float32).copy()
    out[..., lo:hi] = 0.5 * (model_prob[..., lo:hi] + soft_mask(interpolated[..., lo:hi], spacing))
    return out


def _keep_labelled(mask: np.ndarray, reference: np.ndarray, labelled: Sequence[int]) -> np.ndarray:
    out = mask.copy()
    out[..., list(labelled)] = reference[..., list(labelled)]
    return out


def bounding_slices(mask: np.ndarray) -> list[int]:
    """The empty axial slices just below and above the mask's extent (those inside the volume)."""
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    return [int(i) for i in (z[0] - 1, z[-1] + 1) if 0 <= i < mask.shape[2]]


def _probabilities(task: SliceTask, model: ModelSpec, reference, labelled: list[int]) -> dict[str, tuple]:
    """``method -> (probability array, seconds)`` for one set of labelled slices."""
    ref = reference.array
    start = time.perf_counter()
    interpolated = interpolate_slices(ref, labelled, spacing=reference.spacing)
    t_interp = time.perf_counter() - start
    start = time.perf_counter()
    seg = model.segmenter(modality=task.modality).fit([task.case.image], [reference], slices=[labelled])
    model_prob = seg.predict_proba(task.case.image).array
    t_model = time.perf_counter() - start
    return {"interpolation": (interpolated.astype(np.float32), t_interp),
            "model": (model_prob, t_model),
            "combined": (combine(model_prob, interpolated, labelled, reference.spacing), t_model + t_interp)}


def run_task(task: SliceTask, model: ModelSpec, counts: Sequence[int], role: str,
             protocols: Sequence[str] = PROTOCOLS, postprocessing: dict = VARIANTS) -> list[dict]:
    """All methods for each number of labelled slices (and each protocol) on one task; tidy rows."""
    reference = task.reference()
    ref = reference.array
    extent_slices = int(ref.any(axis=(0, 1)).sum())
    rows, seen = [], set()
    depth = ref.shape[2]
    for count in counts:
        for protocol in protocols:
            if protocol == "ends" and count < 2:
                continue
            labelled = spread_slices(ref > 0, count, ends=protocol == "ends")
            if protocol == "inside+bounds":
                labelled = sorted(labelled + bounding_slices(ref))
            if (protocol, tuple(labelled)) in seen:
                print(f"  {task.name}: n = {count} gives the same slices as a smaller n ({protocol}); skipped")
                continue
            seen.add((protocol, tuple(labelled)))
            keep = np.ones(depth, dtype=bool)
            keep[labelled] = False
            shown = [k for k in labelled if ref[..., k].any()]
            drawn_range = (relative_position(min(shown), depth), relative_position(max(shown), depth))
            # Dice on the slices the user did not draw; NaN when none of them shows the structure
            # (nothing to predict: such a task is left out of every mean, never counted as a perfect 1).
            for method, (prob, seconds) in _probabilities(task, model, reference, labelled).items():
                for name, ops in postprocessing.items():
                    mask = threshold(reference.with_array(prob, label=False), ops, extent=drawn_range)
                    if name == "drawn_extent":
                        mask = restrict_extent(mask, drawn_range, margin=0.0).astype(np.uint8)
                    mask = _keep_labelled(mask, ref, labelled)
                    rows.append({"task": task.name, "structure": task.structure, "subject": task.case.name,
                                 "data_role": role, "protocol": protocol, "method": method, "postprocess": name,
                                 "labelled_slices": len(shown), "labelled": " ".join(map(str, labelled)),
                                 "extent_slices": extent_slices, **score(mask, reference, labelled),
                                 "dice_unlabelled": (round(dice(mask[..., keep], ref[..., keep]), 4)
                                                     if ref[..., keep].any() else float("nan")),
                                 "seconds": round(seconds, 2)})
        print(f"  {task.name}: n = {count} done")
    return rows


def run(tasks: Sequence[SliceTask], model: ModelSpec, counts: Sequence[int], out_dir: Path,
        plot_dir: Optional[Path] = None, tag: str = "labelled_slices", unseen_only: bool = True,
        protocols: Sequence[str] = PROTOCOLS) -> list[dict]:
    """Run every task; write ``<out_dir>/<tag>.csv``, ``<tag>_vs_interpolation.csv`` (paired over n,
    per task and protocol) and ``<plot_dir>/<tag>.png``; return the rows."""
    print(f"machine: {machine_info()}")
    print(f"model: {model.describe()}")
    roles = model.roles()
    chosen = []
    for task in tasks:
        role = data_role(task.case, task.structure, roles) if not model.in_memory else "unknown"
        if unseen_only and role == "trained":
            print(f"skipping {task.name}: the model was trained on this volume and structure")
            continue
        chosen.append((task, role))
    print_provenance([t.case for t, _ in chosen])
    rows: list[dict] = []
    for task, role in chosen:
        print(f"task {task.name} (data role: {role})")
        rows += run_task(task, model, counts, role, protocols)
    if not rows:
        raise SystemExit("no task left to run (none is held out from the model's training)")
    report(rows, out_dir, plot_dir, tag)
    return rows


#: Post-processing shown in the plots: what ``Segmenter.complete`` does, and the extent-free variant.
PLOTTED = ("drawn_extent", "support_extent+largest_component")


def report(rows: Sequence[dict], out_dir: Path, plot_dir: Optional[Path] = None, tag: str = "labelled_slices") -> None:
    """Write ``<tag>.csv``, ``<tag>_vs_interpolation.csv`` (per task, protocol and post-processing,
    paired over n) and ``<tag>_<post-processing>.png`` (one panel per protocol); print summaries."""
    out_dir, plot_dir = Path(out_dir), Path(plot_dir or out_dir)
    write_csv(rows, out_dir / f"{tag}.csv")
    tasks = len({r["task"] for r in rows})
    for name in PLOTTED:
        order = {p: i for i, p in enumerate(PROTOCOLS)}
        chosen = sorted((r for r in rows if r["postprocess"] == name), key=lambda r: order.get(r["protocol"], 99))
        if not chosen:
            continue
        png = plot_dir / f"{tag}_{name.replace('+', '-')}.png"
        plot_lines(chosen, "labelled_slices", "dice_unlabelled", "method", png,
                   xlabel="labelled slices showing the structure (n)",
                   ylabel="Dice on the unlabelled slices (mean ± sd over tasks)", panel="protocol", mean_panel=False,
                   title=f"same volume, n labelled slices; post-processing: {name} ({tasks} tasks)")
    for name in dict.fromkeys(r["postprocess"] for r in rows):
        print(f"\nDice on the unlabelled slices by protocol, method and n (post-processing: {name}):")
        print_table(summarise([r for r in rows if r["postprocess"] == name],
                              ["protocol", "method", "labelled_slices"], "dice_unlabelled"))
    comparisons = []
    for key in dict.fromkeys((r["task"], r["protocol"], r["postprocess"]) for r in rows):
        mine = [r for r in rows if (r["task"], r["protocol"], r["postprocess"]) == key]
        for other in ("model", "combined"):
            comparisons.append({"task": key[0], "protocol": key[1], "postprocess": key[2],
                                **paired_difference(mine, "method", "interpolation", other, ["labelled_slices"],
                                                    "dice_unlabelled")})
    print("\nmodel / combined vs interpolation (Dice on unlabelled slices, paired over n), "
          f"post-processing {PLOTTED[0]}:")
    print_table([{k: c.get(k, "") for k in ("task", "protocol", "compare", "pairs", "mean_a", "mean_b", "mean_diff",
                                            "b_higher", "a_higher")} for c in comparisons
                 if c["postprocess"] == PLOTTED[0]])
    write_csv(comparisons, out_dir / f"{tag}_vs_interpolation.csv")


def default_tasks(quick: bool) -> list[SliceTask]:
    """Held-out candidates: brain structures on both brains (2 mm), the pyradiomics lesions, chest CT
    structures (used only if the checkpoint held them out)."""
    colin, mni = brain_cases(2.0)
    if quick:
        return [SliceTask(colin, "left hippocampus"), SliceTask(pyradiomics_case("lung2"), "lesion")]
    brains = [SliceTask(case, s) for case in (colin, mni)
              for s in ("left hippocampus", "left thalamus")]
    lesions = [SliceTask(pyradiomics_case(name), "lesion") for name in ("brain2", "lung2")]
    chest = datasets.slicerio_chest()
    return brains + lesions + [SliceTask(chest, s) for s in ("right lung", "left lung", "thoracic vertebral column")]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one brain structure and one lesion, n in 1/3/5")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--counts", type=int, nargs="+", default=None)
    parser.add_argument("--include-seen", action="store_true", help="also run tasks the model trained on")
    add_output_options(parser)
    args = parser.parse_args(argv)
    tag = "labelled_slices_quick" if args.quick else "labelled_slices"
    if apply_output_options(args, report, tag):
        return
    counts = args.counts or ((1, 3, 5) if args.quick else COUNTS)
    start = time.perf_counter()
    run(default_tasks(args.quick), ModelSpec(args.weights, device=args.device), counts, args.out, args.plots, tag,
        unseen_only=not args.include_seen)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
