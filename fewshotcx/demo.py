"""``fewshotcx demo``: the library's main job on real, package-shipped data.

Every task uses the bundled model's *report set* (docs/model_card.md): volumes and structures that
neither its training, nor its validation, nor any choice of a default ever saw. Each is compared
with the tool planning systems offer today:

1. *Few drawn slices, same patient* (``Segmenter.complete``) — a lung lesion on CT (pyradiomics lung2)
   and the left thalamus on MR (MNI152) are drawn on three axial slices (the two end slices and the
   middle one); the model contours the slices in between. Baseline: shape-based (signed-distance)
   interpolation between the same drawn slices. Both are scored by Dice on the undrawn slices only.
2. *Another subject* — the left thalamus labelled on one brain (Colin27 + AAL) is segmented on a
   different brain (MNI152 + Harvard-Oxford). Baseline: label fusion, i.e. copying the support's mask
   at the same relative position. Both brains are already in MNI space, so this baseline is an atlas
   with a perfect affine registration: a hard one to beat.

Outputs under ``--out``: per task the prediction NIfTI (in the query file's orientation), a PNG
overlay (image | reference | prediction) and ``results.csv``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import datasets
from .baselines.interpolation import interpolate_slices, label_fusion
from .evaluation.metrics import dice
from .segmenter import Segmenter
from .viz import save_overlay, spread_slices
from .io.tables import write_csv
from .io.volume import save_volume


@dataclass(frozen=True)
class DemoTask:
    name: str
    load: Callable[[], tuple[datasets.Case, datasets.Case]]  # (support case, query case)
    structure: str
    labelled_slices: int  # >0: few-slice task on the query itself; 0: cross-subject
    baseline: str


def _lung_lesion() -> tuple[datasets.Case, datasets.Case]:
    case = datasets.pyradiomics_cases(["lung2"])[0]
    return case, case


def _mni() -> tuple[datasets.Case, datasets.Case]:
    case = datasets.mni152_harvard_oxford(downsample=2.0)
    return case, case


def _brains() -> tuple[datasets.Case, datasets.Case]:
    colin, mni = datasets.colin27_aal(downsample=2.0), datasets.mni152_harvard_oxford(downsample=2.0)
    return datasets.structure_pair(colin, mni, ["left hippocampus", "right hippocampus", "left thalamus",
                                                "right thalamus", "left putamen", "right putamen"])


TASKS = (
    DemoTask("ct-lesion-few-slices", _lung_lesion, "lesion", 3, "shape-based interpolation"),
    DemoTask("mr-thalamus-few-slices", _mni, "left thalamus", 3, "shape-based interpolation"),
    DemoTask("mr-thalamus-cross-subject", _brains, "left thalamus", 0, "label fusion (atlas, MNI space)"),
)


def undrawn_dice(prediction: np.ndarray, reference: np.ndarray, drawn: Sequence[int]) -> float:
    """Dice on the axial slices the user did not draw (the part a completion method predicts; drawn
    slices are copied and would inflate a whole-volume Dice). NaN when no undrawn slice shows the
    structure: there is nothing to predict, and such a task must not enter a mean."""
    undrawn = np.ones(reference.shape[2], dtype=bool)
    undrawn[list(drawn)] = False
    if not reference[..., undrawn].any():
        return float("nan")
    return dice(prediction[..., undrawn], reference[..., undrawn])


def run_task(task: DemoTask, out_dir: Path, weights: str, device: str, overwrite: bool = False, **options) -> dict:
    """One demo task end to end; ``options`` go to the :class:`Segmenter` (e.g. ``precision="bf16"``).
    Its outputs (:func:`task_outputs`) are replaced only with ``overwrite``."""
    start = time.perf_counter()
    support_case, query_case = task.load()
    support_label = datasets.select_structures(support_case, [task.structure]).labels  # 0/1 mask
    reference = datasets.select_structures(query_case, [task.structure]).labels
    modality = query_case.modality.lower() or "auto"
    if task.labelled_slices:
        drawn = spread_slices(reference.array > 0, task.labelled_slices, ends=True)
        seg = Segmenter(weights=weights, device=device, modality=modality, progress=False, **options)
        prediction = seg.complete(query_case.image, reference, drawn)  # reads only the drawn slices
        baseline = interpolate_slices(reference.array, drawn, spacing=reference.spacing)
        detail = f"{len(drawn)} drawn slices {drawn} of {reference.shape[2]}, {query_case.name}"
        scores = (undrawn_dice(prediction.array, reference.array, drawn),
                  undrawn_dice(baseline, reference.array, drawn), "undrawn slices")
    else:
        seg = Segmenter(weights=weights, device=device, modality=modality, progress=False, **options)
        prediction = seg.fit([support_case.image], [support_label]).predict(query_case.image)
        baseline = label_fusion(reference.shape, [support_label.array])
        detail = f"support: {support_case.name}; query: {query_case.name}"
        scores = (dice(prediction.array, reference.array), dice(baseline, reference.array), "whole volume")
    prediction_path, overlay_path = task_outputs(task, out_dir)
    prediction_path.parent.mkdir(parents=True, exist_ok=True)
    save_volume(prediction, prediction_path, overwrite=overwrite)
    save_overlay(query_case.image, prediction, overlay_path, reference=reference, overwrite=overwrite,
                 title=f"{task.structure}: {detail}", modality=query_case.modality.lower() or "auto")
    return {"task": task.name, "structure": task.structure, "setting": detail,
            "scored_on": scores[2], "dice_model": round(scores[0], 3),
            "baseline": task.baseline, "dice_baseline": round(scores[1], 3),
            "seconds": round(time.perf_counter() - start, 1), "licence": query_case.licence}


def task_outputs(task: DemoTask, out_dir: Path) -> tuple[Path, Path]:
    """The files one task writes: ``<out>/<task>/prediction.nii.gz`` and ``overlay.png``."""
    return out_dir / task.name / "prediction.nii.gz", out_dir / task.name / "overlay.png"


def run_demo(out_dir: Path, device: str = "auto", weights: str = "default", overwrite: bool = False) -> list[dict]:
    """Run every demo task, print a table, write ``results.csv``; returns the rows.

    Raises:
        FileExistsError: an output of an earlier run is in ``out_dir`` and ``overwrite`` is False
            (checked before anything runs).
    """
    from .models.weights import describe

    out_dir = Path(out_dir)
    existing = [p for t in TASKS for p in task_outputs(t, out_dir) if p.exists()]
    existing += [out_dir / "results.csv"] if (out_dir / "results.csv").exists() else []
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists (an earlier demo run?); pass --overwrite to replace the demo's "
                              "outputs, or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"fewshotcx demo — model: {describe(weights, 'universeg')}")
    rows = [run_task(task, out_dir, weights, device, overwrite) for task in TASKS]
    print(f"\n{'task':27s} {'structure':14s} {'Dice model':>10s} {'Dice baseline':>13s}  {'scored on':15s} baseline")
    for r in rows:
        print(f"{r['task']:27s} {r['structure']:14s} {r['dice_model']:10.3f} {r['dice_baseline']:13.3f}  "
              f"{r['scored_on']:15s} {r['baseline']} ({r['setting']}; {r['seconds']} s)")
    write_csv(rows, out_dir / "results.csv", overwrite=overwrite)
    print(f"\nwrote {out_dir}/<task>/prediction.nii.gz, overlay.png and {out_dir}/results.csv")
    print("data licences: " + "; ".join(sorted({r['licence'] for r in rows})))
    return rows
