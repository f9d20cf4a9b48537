"""The source ablation, CPU scale: the default training sources with and without ``ssl-ct`` (issue #33 item 4).

Issue #33 item 4 asks for a CT model that has seen the abdomen: self-supervised episodes (supervoxel
pseudo-labels in the SSL-ALPNet manner plus Hounsfield tasks, :mod:`fewshotcx.training.selfsupervised`)
on the unlabelled abdominal CTs CRLM-CT-1004 and -1006. Without a GPU this script asks the smaller
question the framing ablation (``framing_ablation.py``) asked of the framing: trained from scratch
with the project's training code at the same CPU budget, do those episodes help or hurt small networks?

The arms are identical (``framing_ablation.run_config``: the default checkpoint's stored training
config cut to the CPU budget ``WIDTH``/``SIZE``/``STEPS``/``EPISODES_PER_STEP``/``WARMUP``, the
bundled default's *physical* framing, the held-out sets of :mod:`roles`, no validation) except the
data sources: ``default`` trains on the stored sources, ``default+ssl-ct`` on the same plus ``ssl-ct``
(the two CRLM CTs, calibration volumes that training may use; the source loads no other volume).
Seeds ``SEEDS`` per arm; the supervoxels follow the seed, as in a real ``--data ssl-ct`` run.

Evaluation: ``framing_ablation.evaluate``, the selection tasks of ``default_selection.py`` (sarcoma
STS_003 from STS_001 or STS_002: CT GTV, bone, fat; T1 MR GTV) at support sizes 8 and 16, refused by
:func:`roles.require` if they read report data. The report set is never read. **The selection set
has no abdominal structure**: this measures whether the abdominal episodes help or hurt the selection
tasks at CPU scale, *not* the held-out abdominal check the issue asks of a GPU-trained ``ssl-ct``
checkpoint (``scripts/train_gpu.sh --lane ssl-ct``).

Decision rule (fixed before any run; ``framing_ablation.decide``): a seed's score is its mean Dice
over the selection tasks. At each support size the incumbent ``default`` is kept unless
``default+ssl-ct``'s mean over seeds exceeds it by more than the pooled seed SD
(``sqrt((sd_a² + sd_b²) / 2)``, population SDs). Whatever it says, this script changes no default.

    nice -n 5 python benchmarks/source_ablation.py --out benchmarks/results

Writes ``source_ablation.csv`` (one row per arm × seed × support size × task) and
``source_ablation_summary.csv`` (mean and SD over seeds per arm × support size, the decision
marked); checkpoints and volume caches go to ``--work`` (default ``build/source_ablation``; the
``ssl-ct`` arm's cache is the default arm's plus that seed's ``ssl-ct`` volumes). ``--from-csv``
only summarises and decides.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_csv  # noqa: E402
from default_selection import selection_pairs  # noqa: E402
from framing_ablation import (EPISODES_PER_STEP, SCALE, SIZE, STEPS, SUPPORT_SIZES, WIDTH,  # noqa: E402
                              cli, decide, default_training, evaluate, report_ablation, run_config, train_arm)
from fewshotcx import Volume  # noqa: E402
from fewshotcx.training import TrainConfig  # noqa: E402
from fewshotcx.training.selfsupervised import unlabelled_ct_volumes  # noqa: E402
from fewshotcx.training.volume_cache import load_volume_cache, save_volume_cache  # noqa: E402

INCUMBENT, SSL = "default", "default+ssl-ct"
ARMS = (INCUMBENT, SSL)
FRAMING = "physical"  # the bundled default's


# ------------------------------------------------------------------------------------------ training
def arm_sources(data: Sequence[str], arm: str) -> list[str]:
    """The data sources of ``arm``: the stored ``data``, plus ``ssl-ct`` (last) for :data:`SSL`."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    return [*data, "ssl-ct"] if arm == SSL else list(data)


def cache_path(work: Path, arm: str, seed: int) -> Path:
    """The volume cache of ``arm``: one for the default sources, one per seed with ``ssl-ct`` (its
    supervoxels follow the seed)."""
    return work / ("volumes.npz" if arm == INCUMBENT else f"volumes-ssl-ct-seed{seed}.npz")


def arm_config(base: dict[str, Any], physical: dict[str, Optional[float]], arm: str, seed: int, work: Path,
               steps: int = STEPS, width: int = WIDTH, size: int = SIZE) -> TrainConfig:
    """One arm's training config: :func:`framing_ablation.run_config` under the physical framing with
    the arm's sources (:func:`arm_sources`)."""
    data = {**base, "data": arm_sources(base["data"], arm)}
    return run_config(data, physical, FRAMING, seed, work / f"{arm}-seed{seed}.pt", cache_path(work, arm, seed),
                      steps=steps, width=width, size=size)


def compose_ssl_cache(default_cache: Path, path: Path, seed: int,
                      read: Optional[Callable[[str], Volume]] = None) -> bool:
    """Write the ``ssl-ct`` arm's cache ``path`` as the default arm's plus ``ssl-ct``'s volumes for
    ``seed`` (the order and content a fresh load gives: the report set left out, ``ssl-ct`` last), so
    the other sources load once. ``read``: as :func:`unlabelled_ct_volumes`. False (nothing written)
    when ``path`` exists or ``default_cache`` does not; the training loop then loads what it lacks."""
    if path.exists() or not default_cache.exists():
        return False
    volumes, omitted = load_volume_cache(default_cache)
    save_volume_cache([*volumes, *unlabelled_ct_volumes(seed=seed, read=read)], path, omitted)
    return True


# ------------------------------------------------------------------------------------------ decision
def decisions(table: Sequence[dict]) -> dict[int, tuple[Any, str]]:
    """Per support size: :data:`INCUMBENT` unless :data:`SSL` beats it by more than the pooled seed SD."""
    return {size: decide(table, "sources", INCUMBENT, support_size=size)
            for size in sorted({r["support_size"] for r in table})}


def mark(table: Sequence[dict], chosen: dict[int, tuple[Any, str]]) -> list[dict]:
    """The summary rows with ``chosen`` (True on each support size's chosen arm; none without a
    decision) and ``scale``."""
    return [{**r, "chosen": chosen.get(r["support_size"], (None,))[0] == r["sources"], "scale": SCALE}
            for r in table]


# ------------------------------------------------------------------------------------------------ main
def run_all(seeds: Sequence[int], steps: int, work: Path, out: Path, arms: Sequence[str] = ARMS) -> list[dict]:
    """Train and score every arm × seed; the rows so far go to ``out/source_ablation.csv`` after each
    run (an interrupted sweep keeps what finished)."""
    base, physical = default_training()
    print(f"sources {base['data']} (+ ssl-ct); physical framing {physical}; {WIDTH=} {SIZE=} {steps=} "
          f"{EPISODES_PER_STEP=}", flush=True)
    pairs = selection_pairs()
    machine = machine_info()
    rows: list[dict] = []
    for seed in seeds:
        for arm in arms:
            config = arm_config(base, physical, arm, seed, work, steps=steps)
            if arm == SSL:
                compose_ssl_cache(cache_path(work, INCUMBENT, seed), Path(config.volume_cache), seed)
            checkpoint, seconds = train_arm(config)
            found = evaluate(checkpoint, pairs)
            print(f"{arm:14s} seed {seed}: trained {seconds} s; selection Dice "
                  + ", ".join(f"S={s} {np.mean([r['dice'] for r in found if r['support_size'] == s]):.3f}"
                              for s in SUPPORT_SIZES), flush=True)
            rows += [{"sources": arm, "seed": seed, **r, "data": " ".join(config.data), "steps": config.steps,
                      "width": config.width, "episodes_per_step": config.episodes_per_step,
                      "train_seconds": seconds, "scale": SCALE, "machine": machine} for r in found]
            write_csv(rows, out / "source_ablation.csv")
    return rows


def report(rows: Sequence[dict], out: Path) -> dict[int, tuple[Any, str]]:
    """Write ``source_ablation.csv`` and the summary (decision marked), print the decision, return it."""
    return report_ablation(rows, out, "source_ablation", "sources", ARMS, decisions, mark,
                           "the bundled default is unchanged: a CPU-scale result does not retrain the GPU "
                           "checkpoint, and the selection set has no abdominal structure",
                           label=lambda size: f"S={size}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(argv, __doc__, "source_ablation", "arms", ARMS, run_all, report)


if __name__ == "__main__":
    sys.exit(main())
