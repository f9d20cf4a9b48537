"""Train the bundled default UniverSeg on one GPU for a time budget, then evaluate it on the held-out set.

The model: width 32 at 128² slices of 2.5 mm around the body (physical framing), 2.5D (context 1,
neighbours 3 mm apart), on the CT-heavy mix with the held-out sets of docs/model_card.md, bf16
autocast on CUDA (the training loop's default there). The bundled checkpoint is this run on an
NVIDIA H200 with ``--train-seconds 400`` (2,450 steps; ``benchmarks/results/train_gpu_log.csv``).

Training runs as ``fewshotcx train --max-seconds`` in a subprocess: the cosine schedule decays to 0 by
the end of the budget, whatever step count it allows. The real sources' volumes come from
``--volume-cache`` (written on a machine that has them, read on a GPU machine without network).
Then the checkpoint is evaluated through the full pipeline (``Segmenter``, whole volumes,
position-matched support) on the model card's held-out sets; one row per task goes to ``--report``.
``--lane ssl-ct`` adds the self-supervised ``ssl-ct`` source (supervoxel and Hounsfield tasks on the
unlabelled abdominal CTs, :mod:`fewshotcx.training.selfsupervised`) to the same recipe, with its own
checkpoint folder, report and volume cache (:data:`LANES`); the default lane is what the bundled model was
trained with, unchanged. ``--skip-eval`` trains only; ``--eval-only [--weights SPEC] --device cpu`` evaluates later, where the
data is. ``--dry-run`` trains a tiny network on synthetic data on the CPU for a few steps and
evaluates it on a synthetic cross-subject task (end to end in well under a minute); without ``--out``
and ``--report`` it writes under ``bench-output/train_gpu/``, never into ``benchmarks/results/`` or a
real run's ``build/train-gpu``.

    python benchmarks/train_gpu.py [--out build/train-gpu] [--report benchmarks/results/train_gpu_heldout.csv]
    python benchmarks/train_gpu.py --lane ssl-ct   # build/train-gpu-ssl-ct, train_gpu_ssl_ct_heldout.csv
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: ``(--out, --report)`` defaults of a real run: its checkpoint folder and the committed held-out table.
GPU_DEFAULTS = (ROOT / "build" / "train-gpu", ROOT / "benchmarks" / "results" / "train_gpu_heldout.csv")
#: A dry run's defaults: its own scratch folder, never the committed results or a real run's checkpoint.
DRY_RUN_DEFAULTS = (ROOT / "bench-output" / "train_gpu" / "dry-run",
                    ROOT / "bench-output" / "train_gpu" / "heldout.csv")

from common import (CrossTask, ModelSpec, brain_cross_tasks, data_role, lesion_cross_tasks,  # noqa: E402
                    machine_info, score, synthetic_subject, write_csv)
from fewshotcx.models.weights import load_checkpoint  # noqa: E402

#: The same data and held-out rules as scripts/train_default.sh: a selection set (validates training)
#: and a report set (kept out of training and validation; the only one reported as unseen).
DATA = ["synthetic", "slicerio", "pyradiomics", "brain", "nilearn", "sts"]
HOLDOUT_VOLUMES = ["pyradiomics/brain2", "sts/STS_003_CT", "sts/STS_003_MR_T1"]
HOLDOUT_STRUCTURES = ["left hippocampus", "right hippocampus"]
REPORT_VOLUMES = ["pyradiomics/lung2", "slicerio/CTChest4"]
#: Training lanes: extra ``--data`` sources on top of :data:`DATA`, and the lane's ``(--out, --report,
#: --volume-cache)`` defaults (a lane never resumes or reads another lane's checkpoint or cache).
LANES: dict[str, tuple[list[str], tuple[Path, Path, Path]]] = {
    "default": ([], (*GPU_DEFAULTS, ROOT / "build" / "gpu" / "volumes.npz")),
    "ssl-ct": (["ssl-ct"], (ROOT / "build" / "train-gpu-ssl-ct", ROOT / "benchmarks" / "results" /
                            "train_gpu_ssl_ct_heldout.csv", ROOT / "build" / "gpu" / "volumes-ssl-ct.npz")),
}
REPORT_STRUCTURES_HELD = ["left thalamus", "right thalamus"]
#: The model card's table: lesions on held-out volumes, brain structures across subjects (selection,
#: report, and two trained ones for comparison); each row says its data role.
REPORT_LESIONS = [("brain1", "brain2"), ("lung1", "lung2")]
REPORT_STRUCTURES = HOLDOUT_STRUCTURES + REPORT_STRUCTURES_HELD + ["left caudate", "left putamen"]

#: Physical framing: 128² slices of 2.5 mm pixels (320 mm around the body), neighbours 3 mm apart. Width 32
#: keeps CPU inference affordable (a quarter of v1's cost). The run ends at --max-seconds with the cosine
#: schedule decayed to 0 by then, whatever the step count reached.
GPU_ARGS = ["--width", "32", "--size", "128", "--context", "1", "--pixel-mm", "2.5", "--context-mm", "3.0",
            "--support-size", "2:16", "--queries", "2", "--episodes-per-step", "8", "--steps", "100000",
            "--lr", "1e-3", "--schedule", "cosine", "--warmup", "100", "--synthetic-ratio", "0.2",
            "--synthetic-families", "40", "--axes", "axial", "coronal", "sagittal", "--val-every", "1000",
            "--checkpoint-every", "250", "--device", "cuda", "--seed", "0"]
DRY_ARGS = ["--width", "4", "--size", "32", "--context", "1", "--support-size", "2:3", "--queries", "1",
            "--episodes-per-step", "1", "--steps", "4", "--warmup", "1", "--synthetic-families", "2",
            "--axes", "axial", "--val-every", "2", "--checkpoint-every", "2", "--device", "cpu", "--seed", "0"]


def train_command(out: Path, dry_run: bool, resume: bool, seconds: float, volume_cache: Optional[Path],
                  lane: str = "default") -> list[str]:
    """The ``fewshotcx train`` command line (``--resume`` if a checkpoint from an earlier run exists)."""
    data = ["synthetic"] if dry_run else DATA + LANES[lane][0]
    command = [sys.executable, "-m", "fewshotcx.cli", "train", *[a for d in data for a in ("--data", d)],
               *(DRY_ARGS if dry_run else GPU_ARGS), "--out", str(out), "--no-progress", "--max-seconds", str(seconds)]
    if volume_cache is not None and not dry_run:
        command += ["--volume-cache", str(volume_cache)]
    if not dry_run:
        command += [a for v in HOLDOUT_VOLUMES for a in ("--holdout-volume", v)]
        command += [a for s in HOLDOUT_STRUCTURES for a in ("--holdout-structure", s)]
        command += [a for v in REPORT_VOLUMES for a in ("--report-volume", v)]
        command += [a for s in REPORT_STRUCTURES_HELD for a in ("--report-structure", s)]
    return command + (["--resume"] if resume else [])


def cache_command(lane: str, volume_cache: Path, scratch: Path) -> list[str]:
    """``fewshotcx train`` with the lane's data and held-out sets for 0 steps on the CPU: it loads the real
    sources and writes ``volume_cache`` (the GPU machine then reads it); its checkpoint goes to ``scratch``."""
    return train_command(scratch, False, False, 1.0, volume_cache, lane) + ["--steps", "0", "--device", "cpu",
                                                                            "--overwrite"]


#: Wall-clock allowance for loading the data and cutting the tasks, on top of the training budget.
SETUP_SECONDS = 240


def run_training(out: Path, dry_run: bool, seconds: float, volume_cache: Optional[Path] = None,
                 lane: str = "default") -> dict:
    """Train (or resume) for a budget of ``seconds``; returns what happened (steps done, wall time)."""
    resume = out.exists()
    command = train_command(out, dry_run, resume, seconds, volume_cache, lane)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if dry_run:
        env["OMP_NUM_THREADS"] = "1"  # tiny tensors: threads only add contention
    try:
        subprocess.run(command, cwd=ROOT, check=True, timeout=seconds + SETUP_SECONDS, env=env)
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
    if not out.exists():
        raise RuntimeError(f"training wrote no checkpoint at {out} within {seconds:.0f} s: raise --train-seconds")
    _, metadata = load_checkpoint(out)
    extra = metadata.get("extra", {}) if isinstance(metadata.get("extra"), dict) else {}
    training = extra.get("training", {})
    steps_done = int(training.get("step", 0))
    return {"resumed": resume, "finished": finished, "steps_done": steps_done, "budget_seconds": seconds,
            "train_seconds": round(time.perf_counter() - start, 1)}


def report_tasks(dry_run: bool) -> list[CrossTask]:
    """The held-out report set (dry run: one synthetic cross-subject task)."""
    if dry_run:
        return [CrossTask(synthetic_subject((40, 40, 8), 0), synthetic_subject((40, 40, 8), 1), "blob")]
    return lesion_cross_tasks(REPORT_LESIONS) + brain_cross_tasks(REPORT_STRUCTURES, directions="forward")


def evaluate(checkpoint, tasks: list[CrossTask], device: str) -> list[dict]:
    """Dice, HD95, surface Dice of the checkpoint on each task (Segmenter defaults, seed 0), with
    support matched by position: the model's own quality, comparable across checkpoints (the default
    ``strategy="auto"`` adds a registration that every checkpoint would share)."""
    spec = ModelSpec(weights=str(checkpoint), device=device)
    roles = spec.roles()
    rows = []
    for task in tasks:
        seg = spec.segmenter(modality=task.modality, seed=0, strategy="position")
        pred = seg.fit([task.support.image], [task.support_label()]).predict(task.query.image)
        rows.append({"task": task.name, "structure": task.structure, "data_role": data_role(task.query, task.structure, roles),
                     **score(pred.array, task.reference())})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for the checkpoint and log (default: "
                        f"{GPU_DEFAULTS[0].relative_to(ROOT)}; with --dry-run {DRY_RUN_DEFAULTS[0].relative_to(ROOT)})")
    parser.add_argument("--report", type=Path, default=None, help="CSV of the held-out results (default: "
                        f"{GPU_DEFAULTS[1].relative_to(ROOT)}; with --dry-run {DRY_RUN_DEFAULTS[1].relative_to(ROOT)})")
    parser.add_argument("--train-seconds", type=float, default=330.0, help="training time budget (the schedule "
                        "decays to 0 by then); data loading comes on top")
    parser.add_argument("--volume-cache", type=Path, default=None,
                        help="the loaded training volumes: read when it exists (a GPU machine without the data "
                             "sources), else written (default: build/gpu/volumes.npz; lane ssl-ct: "
                             "build/gpu/volumes-ssl-ct.npz)")
    parser.add_argument("--lane", choices=sorted(LANES), default="default",
                        help="default: the bundled model's recipe; ssl-ct: the same plus --data ssl-ct (the "
                             "unlabelled abdominal CTs as supervoxel and Hounsfield tasks), with its own defaults")
    parser.add_argument("--write-cache", action="store_true", help="only load the lane's volumes and write "
                        "--volume-cache (CPU, no training): on a machine with the data, before the GPU run")
    parser.add_argument("--skip-eval", action="store_true", help="train only (evaluate later with --eval-only)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --out's checkpoint on the report set")
    parser.add_argument("--weights", default=None,
                        help="with --eval-only: a weights spec to evaluate (default, fov64, a path) instead of --out's")
    parser.add_argument("--device", default=None, help="evaluation device (default: cuda, cpu for --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, synthetic data, CPU, a few steps")
    args = parser.parse_args(argv)
    defaults = DRY_RUN_DEFAULTS if args.dry_run else LANES[args.lane][1][:2]
    args.out, args.report = args.out or defaults[0], args.report or defaults[1]
    args.volume_cache = args.volume_cache or LANES[args.lane][1][2]
    if args.write_cache:
        scratch = ROOT / "bench-output" / "train_gpu" / "cache-only.pt"
        subprocess.run(cache_command(args.lane, args.volume_cache, scratch), cwd=ROOT, check=True)
        print(f"wrote {args.volume_cache}")
        return 0
    needs_cuda = not args.dry_run and not args.eval_only
    if needs_cuda and not torch.cuda.is_available():
        print("error: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU", file=sys.stderr)
        return 2
    checkpoint = args.out / "universeg.pt"
    if args.weights is not None and not args.eval_only:
        parser.error("--weights goes with --eval-only")
    if args.eval_only:
        checkpoint = args.weights or checkpoint
        run = {"resumed": "", "finished": "", "steps_done": "", "budget_seconds": "", "train_seconds": ""}
    else:
        run = run_training(checkpoint, args.dry_run, args.train_seconds, args.volume_cache, args.lane)
        print(f"training: {run['steps_done']} steps in {run['train_seconds']} s", flush=True)
    if args.skip_eval:
        return 0
    device = args.device or ("cpu" if args.dry_run else "cuda")
    rows = evaluate(checkpoint, report_tasks(args.dry_run), device)
    common = {**run, "checkpoint": str(checkpoint), "mode": "dry-run" if args.dry_run else "gpu",
              "eval_device": device, "machine": machine_info()}
    rows = [{**r, **common} for r in rows]
    for r in rows:
        print(f"{r['task']:45s} dice {r['dice']:.3f}  hd95 {r['hd95']}  nsd {r['nsd']:.3f}  {r['data_role']}")
    print(f"wrote {write_csv(rows, args.report)} (training log: {Path(checkpoint).with_suffix('.csv')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
