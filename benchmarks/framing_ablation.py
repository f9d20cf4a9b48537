"""The framing ablation, CPU scale: physical framing against the field-of-view fit (issue #33 item 5).

The bundled default checkpoint frames slices *physically* (resampled at ``pixel_mm`` around the body,
2.5D neighbours ``context_mm`` apart); the previous one (``fov64``) fitted each slice's field of view
into the square. This script trains small UniverSeg networks from scratch with the project's own
training code (:func:`fewshotcx.training.train`, what ``fewshotcx train`` runs) under both framings,
everything else identical, and scores them on the *selection* set only.

What is identical between the arms: the default checkpoint's stored training config (data sources
``synthetic slicerio pyradiomics brain nilearn sts``, slice size, context, support range, queries,
learning rate and schedule, synthetic mix, axes, augmentation), overridden only by the CPU budget
(:data:`WIDTH`, :data:`SIZE`, :data:`STEPS`, :data:`EPISODES_PER_STEP`, :data:`WARMUP`) and with every
held-out volume and structure of :mod:`roles` (selection *and* report) kept out of training; no
validation runs. The arms differ only in ``pixel_mm``/``context_mm``: ``physical`` takes the default
checkpoint's (read from its metadata: 128 px of 2.5 mm, neighbours 3 mm apart) with the pixel scaled
to the CPU slice size so that the slice still spans the default's field (64 px of 5 mm = 320 mm around
the body); ``fov-fit`` sets both to ``None`` (each slice's field of view fitted into 64 px, as
``fov64``). Seeds :data:`SEEDS` per arm.

Evaluation: the selection tasks of ``default_selection.py`` (sarcoma STS_001 and STS_002 as support
→ STS_003, on CT the GTV and the HU-defined bone and fat, on T1 MR the GTV; whole volumes,
position-matched support, seed 0), refused by :func:`roles.require` if they read report data, at the
support sizes of :data:`SUPPORT_SIZES` (the two the selection sweep weighs: S = 8 chosen by
``scripts/choose_support_size.py``'s rule, S = 16 the default in use). The report set is never read.

Decision rule (fixed before any run; :func:`decide`): a seed's score is its mean Dice over the
selection tasks. The incumbent (``physical`` framing; support size ``DEFAULT_SUPPORT_SIZE``) is kept
unless the alternative's mean over seeds exceeds the incumbent's by more than the pooled seed SD
(``sqrt((sd_a² + sd_b²) / 2)``, population SDs). Framing is decided at the incumbent support size,
then the support size under the chosen framing. The result is about the framing of *small networks
trained briefly on a CPU*, not about the bundled GPU-trained checkpoint: whatever the rule says,
this script changes no default (a change would need a GPU retrain and every default-model CSV rerun).

    python benchmarks/framing_ablation.py --out benchmarks/results     # about an hour on a busy 2-core CPU

Writes ``framing_ablation.csv`` (one row per framing × seed × support size × task) and
``framing_ablation_summary.csv`` (mean and SD over seeds per framing × support size, the decision
marked); checkpoints go to ``--work`` (default ``build/framing_ablation``). Seeds may run in separate
processes (``--seeds 2 [--framings physical] --out DIR2 --work DIR2``, a copy of the volume cache in
``DIR2``) and be joined with ``--from-csv``, which only summarises and decides.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (ModelSpec, machine_info, read_csv, sarcoma_selection_ready, summarise,  # noqa: E402
                    write_csv)
from report import write_with_summary  # noqa: E402
from default_selection import (QUERY, STRUCTURES, score_structures, selection_pairs,  # noqa: E402
                               selection_volumes)
import roles  # noqa: E402
from fewshotcx.backends.universeg import DEFAULT_SUPPORT_SIZE  # noqa: E402
from fewshotcx.models.weights import load_universeg  # noqa: E402
from fewshotcx.training import TrainConfig, train  # noqa: E402

FRAMINGS = ("physical", "fov-fit")
SEEDS = (0, 1, 2)
SUPPORT_SIZES = (8, DEFAULT_SUPPORT_SIZE)
#: The CPU budget, the same for every run (the bundled model: width 32, 2,450 steps of 8 episodes).
WIDTH, SIZE, STEPS, EPISODES_PER_STEP, WARMUP = 16, 64, 200, 2, 20
SCALE = "cpu-scale"


# ------------------------------------------------------------------------------------------ training
def default_training() -> tuple[dict[str, Any], dict[str, Optional[float]]]:
    """The bundled default checkpoint's stored training config, and its framing
    (``{"pixel_mm": ..., "context_mm": ...}``) from its metadata."""
    _, meta = load_universeg("default", return_metadata=True)
    config = meta["training"]["config"]
    return config, {"pixel_mm": meta["pixel_mm"], "context_mm": meta["context_mm"]}


def held_out(role: str, data: Sequence[str]) -> list[str]:
    """The volumes :mod:`roles` gives ``role`` that the ``data`` sources hold (the training loop refuses
    a held-out name it cannot find; ``mirp/LUNG1-001`` is in no source)."""
    return sorted(v for v in roles.VOLUMES[role] if v.split("/")[0] in data)


def run_config(base: dict[str, Any], physical: dict[str, Optional[float]], framing: str, seed: int, out: Path,
               volume_cache: Optional[Path], steps: int = STEPS, width: int = WIDTH, size: int = SIZE) -> TrainConfig:
    """One arm's training config: ``base`` (the default's) with the CPU budget, the held-out sets of
    :mod:`roles`, and ``physical``'s framing at ``size`` (the pixel scaled so that the slice covers the
    default's field, ``pixel_mm × base size``; neighbours ``context_mm`` apart) or, ``fov-fit``, none."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    names = {f.name for f in fields(TrainConfig)}
    frame = {"pixel_mm": physical["pixel_mm"] * base["size"] / size, "context_mm": physical["context_mm"]}
    override = {
        **(frame if framing == "physical" else {"pixel_mm": None, "context_mm": None}),
        "seed": seed, "width": width, "size": size, "steps": steps, "episodes_per_step": EPISODES_PER_STEP,
        "warmup": min(WARMUP, steps), "max_seconds": None, "val_every": 0, "checkpoint_every": max(steps, 1),
        "holdout_volumes": held_out(roles.SELECTION, base["data"]),
        "holdout_structures": sorted(roles.STRUCTURES[roles.SELECTION]),
        "report_volumes": held_out(roles.REPORT, base["data"]), "report_structures": sorted(roles.STRUCTURES[roles.REPORT]),
        "volume_cache": str(volume_cache) if volume_cache else None, "out": str(out), "export": None,
        "resume": False, "overwrite": True, "device": "cpu", "progress": False,
    }
    return TrainConfig(**{**{k: v for k, v in base.items() if k in names}, **override})


def train_arm(config: TrainConfig) -> tuple[Path, float]:
    """Train one arm; ``(checkpoint, seconds)``."""
    start = time.perf_counter()
    path = train(config)
    return path, round(time.perf_counter() - start, 1)


# ---------------------------------------------------------------------------------------- evaluation
def evaluate(checkpoint: Path, pairs: Sequence[tuple], sizes: Sequence[int] = SUPPORT_SIZES) -> list[dict]:
    """Dice (and HD95, surface Dice) of ``checkpoint`` on every selection task of ``pairs``
    (:func:`default_selection.selection_pairs`) at each support size."""
    spec = ModelSpec(weights=str(checkpoint), device="cpu")
    rows = []
    for size in sizes:
        for modality, support_id, support, query in pairs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seg = spec.segmenter(modality="ct" if modality == "CT" else "mr", seed=0, support_size=size)
                pred = seg.fit([support.image], [support.labels]).predict(query.image).array
            for scored in score_structures(pred, modality, query):
                structure = scored.pop("structure")
                rows.append({"support_size": size, "task": f"{modality} {support_id}->{QUERY}:{structure}",
                             "modality": modality, "structure": structure, "data_role": roles.SELECTION, **scored})
    return rows


# ------------------------------------------------------------------------------------------ decision
def seed_scores(rows: Sequence[dict], arm: str = "framing") -> list[dict]:
    """Each arm (the ``arm`` column: framing) × support size × seed's mean Dice over its tasks (column ``dice``)."""
    means = summarise(rows, [arm, "support_size", "seed"])
    return [{arm: m[arm], "support_size": m["support_size"], "seed": m["seed"], "dice": m["dice_mean"]}
            for m in means]


def summary(rows: Sequence[dict], arm: str = "framing") -> list[dict]:
    """Mean and SD over seeds of the seed scores (:func:`seed_scores`), per arm × support size."""
    return summarise(seed_scores(rows, arm), [arm, "support_size"])


def pooled_sd(a: dict, b: dict) -> float:
    """The pooled seed SD of two summary rows: ``sqrt((sd_a² + sd_b²) / 2)``."""
    return math.sqrt((a["dice_sd"] ** 2 + b["dice_sd"] ** 2) / 2)


def decide(table: Sequence[dict], column: str, incumbent: Any, **fixed: Any) -> tuple[Any, str]:
    """``(choice, reason)`` among the values of ``column`` in the summary ``table`` (rows matching
    ``fixed``): ``incumbent`` unless another value's ``dice_mean`` beats it by more than the pooled seed SD
    (:func:`pooled_sd`); with several such, the one with the highest mean."""
    rows = {r[column]: r for r in table if all(r[k] == v for k, v in fixed.items())}
    if incumbent not in rows:
        raise ValueError(f"no summary row with {column}={incumbent!r} and {fixed}")
    base = rows[incumbent]
    better = [(r["dice_mean"] - base["dice_mean"], value) for value, r in rows.items()
              if value != incumbent and r["dice_mean"] - base["dice_mean"] > pooled_sd(base, r)]
    if not better:
        others = ", ".join(f"{v}: {r['dice_mean']:.3f} ± {r['dice_sd']:.3f}" for v, r in rows.items() if v != incumbent)
        return incumbent, (f"keep {column}={incumbent} ({base['dice_mean']:.3f} ± {base['dice_sd']:.3f}); "
                           f"no alternative ahead by more than the pooled seed SD ({others})")
    gain, choice = max(better)
    return choice, (f"{column}={choice} beats {incumbent} by {gain:.3f} mean Dice, more than the pooled seed SD "
                    f"{pooled_sd(base, rows[choice]):.3f}")


def decisions(table: Sequence[dict]) -> dict[str, tuple[Any, str]]:
    """The framing (at the incumbent support size), then the support size (under the chosen framing)."""
    framing = decide(table, "framing", "physical", support_size=DEFAULT_SUPPORT_SIZE)
    return {"framing": framing, "support_size": decide(table, "support_size", DEFAULT_SUPPORT_SIZE, framing=framing[0])}


def mark(table: Sequence[dict], chosen: dict[str, tuple[Any, str]]) -> list[dict]:
    """The summary rows with ``chosen`` (True on the chosen framing × support size; none without a
    decision) and ``scale``."""
    pick = (chosen["framing"][0], chosen["support_size"][0]) if chosen else None
    return [{**r, "chosen": (r["framing"], r["support_size"]) == pick, "scale": SCALE} for r in table]


# ------------------------------------------------------------------------------------------------ main
def run_all(seeds: Sequence[int], steps: int, work: Path, out: Path, framings: Sequence[str] = FRAMINGS) -> list[dict]:
    """Train and score every framing × seed; the rows so far go to ``out/framing_ablation.csv`` after
    each run (an interrupted sweep keeps what finished)."""
    base, physical = default_training()
    print(f"physical framing of the default checkpoint: {physical}; {WIDTH=} {SIZE=} {steps=} {EPISODES_PER_STEP=}",
          flush=True)
    pairs = selection_pairs()
    machine = machine_info()
    rows: list[dict] = []
    for seed in seeds:
        for framing in framings:
            config = run_config(base, physical, framing, seed, work / f"{framing}-seed{seed}.pt",
                                work / "volumes.npz", steps=steps)
            checkpoint, seconds = train_arm(config)
            found = evaluate(checkpoint, pairs)
            print(f"{framing:8s} seed {seed}: trained {seconds} s; selection Dice "
                  + ", ".join(f"S={s} {np.mean([r['dice'] for r in found if r['support_size'] == s]):.3f}"
                              for s in SUPPORT_SIZES), flush=True)
            rows += [{"framing": framing, "seed": seed, **r, "steps": config.steps, "width": config.width,
                      "episodes_per_step": config.episodes_per_step, "train_seconds": seconds, "scale": SCALE,
                      "machine": machine} for r in found]
            write_csv(rows, out / "framing_ablation.csv")
    return rows


def one_budget(rows: Sequence[dict]) -> None:
    """Raise unless every run of ``rows`` had the same budget (steps, width, episodes per step)."""
    if len({(r["steps"], r["width"], r["episodes_per_step"]) for r in rows}) != 1:
        raise ValueError("the runs differ in budget (steps, width, episodes per step): not one ablation")


def report_ablation(rows: Sequence[dict], out: Path, name: str, arm: str, arms: Sequence[str],
                    decide_all: Callable[[Sequence[dict]], dict],
                    mark_table: Callable[[Sequence[dict], dict], list[dict]],
                    note: str, label: Callable[[Any], str] = str) -> dict:
    """Write ``<name>.csv`` and its summary (decision marked) for an ablation whose arms are column
    ``arm``'s values ``arms``; print the decisions (``decide_all(table)``, each under ``label(key)``;
    none until every arm is measured) and ``note``; return them."""
    one_budget(rows)
    table = summary(rows, arm=arm)
    measured = sorted({r[arm] for r in table})
    chosen = decide_all(table) if measured == sorted(arms) else {}
    title = name.replace("_", " ")
    write_with_summary(rows, mark_table(table, chosen), out, name,
                       (f"{title} ({SCALE})", f"{title} summary ({SCALE}, mean ± SD over seeds)"))
    for what, (choice, reason) in chosen.items():
        print(f"decision ({SCALE}) {label(what)}: {choice}: {reason}")
    if not chosen:
        print(f"no decision ({SCALE}): only {', '.join(measured)} measured here; join every arm with --from-csv")
    print(note)
    return chosen


def report(rows: Sequence[dict], out: Path) -> dict[str, tuple[Any, str]]:
    """Write ``framing_ablation.csv`` and the summary (decision marked), print the decision, return it."""
    return report_ablation(rows, out, "framing_ablation", "framing", FRAMINGS, decisions, mark,
                           "the bundled default is unchanged: a CPU-scale result does not retrain the GPU checkpoint")


def cli(argv: Optional[Sequence[str]], doc: str, name: str, arm_flag: str, arms: Sequence[str],
        run: Any, write: Any) -> int:
    """The command line of a CPU-scale ablation (this one, ``source_ablation.py``): train and score
    ``run(seeds, steps, work, out, arms)``'s runs, or join ``--from-csv`` files, then ``write(rows, out)``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(f"bench-output/{name}"), help="CSV folder")
    parser.add_argument("--work", type=Path, default=Path(f"build/{name}"), help="checkpoints and the volume cache")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument(f"--{arm_flag}", dest="arms", nargs="+", choices=arms, default=list(arms))
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps per run (the same for every run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--from-csv", type=Path, nargs="+", default=None,
                        help=f"no training: summarise and decide from these {name}.csv files (e.g. "
                             "seeds run in separate processes), concatenated")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_csv:
        rows = [row for path in args.from_csv for row in read_csv(path)]
        roles.require(roles.SELECTION, selection_volumes(), [r["structure"] for r in rows])
    elif not sarcoma_selection_ready(STRUCTURES, selection_volumes()):
        return 2
    else:
        rows = run(args.seeds, args.steps, args.work, args.out, args.arms)
    write(rows, args.out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(argv, __doc__, "framing_ablation", "framings", FRAMINGS, run_all, report)


if __name__ == "__main__":
    sys.exit(main())
