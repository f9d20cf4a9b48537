"""Dice before and after fine-tuning the default model on a labelled volume of structures it never saw.

Transfer learning as a user would do it: the structures (by default the brain structures the default
checkpoint held out of training: left/right hippocampus and thalamus) are labelled on one subject;
the checkpoint is fine-tuned on that subject for a short CPU run
(:func:`fewshotcx.training.finetune`, axial slabs, support from other slices of the same volume),
then both checkpoints segment the structures on a *different* subject with the labelled subject as
support (the same Segmenter settings before and after). Experiments: fine-tune on Colin27 → test on
MNI152, and the reverse. Label fusion on the same pair is printed for reference. ``control`` rows
score a task unrelated to the fine-tuning data (a pyradiomics lesion) before and after, to show
what fine-tuning costs elsewhere (by default brain1 → brain2, whose query the checkpoint never saw).

    python benchmarks/finetune_benefit.py --quick
    python benchmarks/finetune_benefit.py --weights default --steps 150 --out benchmarks/results --plots docs/img
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    POSTPROCESSING, add_output_options, apply_output_options, brain_cases, CrossTask,
    lesion_cross_tasks, machine_info, ModelSpec, print_provenance, print_table, score, summarise,
    threshold, write_csv,
)
from fewshotcx import datasets  # noqa: E402
from fewshotcx.baselines.interpolation import label_fusion  # noqa: E402
from fewshotcx.training.loop import finetune  # noqa: E402

HELD_OUT_BRAIN = ("left hippocampus", "right hippocampus", "left thalamus", "right thalamus")


@dataclass(frozen=True)
class Experiment:
    """Fine-tune on ``train`` (its ``structures``), then score ``tasks`` and ``controls``."""

    name: str
    train: datasets.Case
    structures: Sequence[str]
    tasks: Sequence[CrossTask]
    controls: Sequence[CrossTask] = ()


def brain_experiments(structures: Sequence[str] = HELD_OUT_BRAIN, controls: Sequence[CrossTask] = (),
                      both_directions: bool = True) -> list[Experiment]:
    """Fine-tune on one brain, test on the other (both ways)."""
    colin, mni = brain_cases(2.0)
    pairs = [(colin, mni), (mni, colin)] if both_directions else [(colin, mni)]
    return [Experiment(f"finetune on {a.name.split('/')[-1]}", a, tuple(structures),
                       tuple(CrossTask(a, b, s) for s in structures), tuple(controls)) for a, b in pairs]


def _score_model(model: ModelSpec, task: CrossTask, seed: int) -> tuple[dict[str, dict], float]:
    start = time.perf_counter()
    seg = model.segmenter(modality=task.modality, seed=seed)
    prob = seg.fit([task.support.image], [task.support_label()]).predict_proba(task.query.image)
    seconds = time.perf_counter() - start
    reference = task.reference()
    return {name: score(threshold(prob, ops), reference) for name, ops in POSTPROCESSING.items()}, seconds


def run_experiment(experiment: Experiment, model: ModelSpec, steps: int, work_dir: Path, seed: int = 0,
                   **finetune_options) -> list[dict]:
    """Fine-tune, then score every task and control with the original and the fine-tuned model."""
    train_labels = datasets.select_structures(experiment.train, list(experiment.structures)).labels
    start = time.perf_counter()
    checkpoint = finetune(model.weights, [(experiment.train.image, train_labels)], steps=steps,
                          out=work_dir / "finetuned.pt", overwrite=True, axes=["axial"], progress=False, seed=seed,
                          **finetune_options)
    tune_seconds = time.perf_counter() - start
    print(f"  fine-tuned {steps} steps in {tune_seconds:.0f} s")
    tuned = ModelSpec(str(checkpoint), device=model.device)
    rows = []
    for role, tasks in (("target", experiment.tasks), ("control", experiment.controls)):
        for task in tasks:
            base = {"experiment": experiment.name, "role": role, "task": task.name, "structure": task.structure,
                    "support_subject": task.support.name, "subject": task.query.name,
                    "finetune_volumes": 1, "finetune_steps": steps, "finetune_seconds": round(tune_seconds, 1)}
            fused = score(label_fusion(task.query.labels.shape, [task.support_label().array]), task.reference())
            rows.append({**base, "model": "label-fusion", "postprocess": "none", **fused, "seconds": 0.0})
            dice = {}
            for name, spec in (("before", model), ("after", tuned)):
                scores, seconds = _score_model(spec, task, seed)
                dice[name] = scores["none"]["dice"]
                rows += [{**base, "model": name, "postprocess": pp, **values, "seconds": round(seconds, 2)}
                         for pp, values in scores.items()]
            print(f"  {role} {task.name}: Dice label fusion {fused['dice']}, before {dice['before']}, "
                  f"after {dice['after']}")
    return rows


def run(experiments: Sequence[Experiment], model: ModelSpec, steps: int, out_dir: Path,
        plot_dir: Optional[Path] = None, tag: str = "finetune_benefit", **finetune_options) -> list[dict]:
    """Run the experiments; write ``<out_dir>/<tag>.csv`` and ``<plot_dir>/<tag>.png``; return the rows."""
    print(f"machine: {machine_info()}")
    print(f"model: {model.describe()}")
    print_provenance([c for e in experiments for t in (*e.tasks, *e.controls) for c in (t.support, t.query)])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fewshotcx-finetune-") as tmp:
        for i, experiment in enumerate(experiments):
            print(f"experiment: {experiment.name} ({', '.join(experiment.structures)})")
            work = Path(tmp) / str(i)
            work.mkdir()
            rows += run_experiment(experiment, model, steps, work, **finetune_options)
    report(rows, out_dir, plot_dir, tag)
    return rows


def report(rows: Sequence[dict], out_dir: Path, plot_dir: Optional[Path] = None, tag: str = "finetune_benefit") -> None:
    """Write ``<tag>.csv`` and ``<tag>.png`` (bars per task: label fusion, before, after); print a summary."""
    out_dir, plot_dir = Path(out_dir), Path(plot_dir or out_dir)
    write_csv(rows, out_dir / f"{tag}.csv")
    plain = [r for r in rows if r["postprocess"] == "none"]
    _plot(plain, plot_dir / f"{tag}.png")
    print("\n3D Dice before / after fine-tuning (no post-processing):")
    print_table(summarise(plain, ["role", "model"]))
    print_table(summarise(plain, ["experiment", "task", "model"]))


def _plot(rows: Sequence[dict], path: Path) -> Path:
    """Grouped bars: one group per task, bars for label fusion / before / after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys((r["experiment"], r["task"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) + 2), 4.8))
    for j, name in enumerate(models):
        values = [np.mean([float(r["dice"]) for r in rows if (r["experiment"], r["task"]) == t and r["model"] == name]
                          or [np.nan]) for t in tasks]
        ax.bar(np.arange(len(tasks)) + (j - (len(models) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(np.arange(len(tasks)), [task.replace("->", " →\n").replace(":", "\n") for _, task in tasks],
                  fontsize=6)
    ax.set_ylabel("3D Dice")
    ax.set_title("before / after fine-tuning on the support subject", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one direction, two structures, 20 steps")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps per experiment")
    parser.add_argument("--structures", nargs="+", default=list(HELD_OUT_BRAIN))
    parser.add_argument("--control", default="brain1:brain2",
                        help="pyradiomics lesion task SUPPORT:QUERY scored before/after as a control ('' = none)")
    parser.add_argument("--directions", choices=("both", "forward"), default="both",
                        help="fine-tune on Colin27 and test on MNI152, and the reverse (both), or forward only")
    add_output_options(parser)
    args = parser.parse_args(argv)
    tag = "finetune_benefit_quick" if args.quick else "finetune_benefit"
    if apply_output_options(args, report, tag):
        return
    structures = args.structures[:2] if args.quick else args.structures
    controls = tuple(lesion_cross_tasks([tuple(args.control.split(":", 1))])) if args.control else ()
    experiments = brain_experiments(structures, controls, both_directions=args.directions == "both" and not args.quick)
    start = time.perf_counter()
    run(experiments, ModelSpec(args.weights, device=args.device), args.steps or (20 if args.quick else 150),
        args.out, args.plots, tag)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
