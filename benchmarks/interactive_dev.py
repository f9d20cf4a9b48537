"""The interactive refinement's development set: what chose its click constants (docs/interactive.md).

``interactive_protocol.py`` reports structures the refinement was not tuned on; this script runs the
same protocol (``interactive_protocol.drive``: the reference's 3D box, or the automatic contour of a
segmenter fitted on the other subject, then five protocol clicks) on the structures it *was* tuned
on, from the same starts (``auto`` from the default segmenter, ``auto-universeg+atlas`` and
``auto-atlas`` from the registered ones, where they run), so a constant's choice can be reproduced
and checked without looking at a reported structure:

* T1 MR: the left and right amygdalae and pallida of Colin27 (AAL) and MNI152 (Harvard-Oxford), each
  brain the other's support for the ``auto`` start (``interactive_protocol.BRAIN`` does not list them);
* CT: ``interactive_report.TUNED_ON`` (STS_001's and STS_002's GTVs, each the other's support,
  and LUNG1-001's GTV and spinal cord, blank start only).

Each structure runs once per *variant* of :class:`fewshotcx.interactive.refine.Settings`
(:data:`VARIANTS`): the current settings, and each earlier choice they replaced. Each
automatic contour is computed once per structure and shared by the variants. Summary per variant ×
modality × start: mean Dice per step, Dice-AUC, the worst change of the mean from one step to the
next, and how many single clicks lowered a structure's Dice by more than 0.05.

    python benchmarks/interactive_dev.py --out benchmarks/results      # ~8 min on 2 cores
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import binary_mask, brain_cases, development_data_parser, machine_info  # noqa: E402
from report import write_with_summary  # noqa: E402
from interactive_protocol import AUTO_BACKENDS, Task, drive, load_all, make_task  # noqa: E402
from interactive_report import TUNED_ON  # noqa: E402
import fewshotcx as fx  # noqa: E402
from fewshotcx.evaluation.interactive import CLICKS, click_auc  # noqa: E402
from fewshotcx.interactive.refine import Settings  # noqa: E402
from fewshotcx.registration import RegistrationError  # noqa: E402

MR_DEV = ("left amygdala", "left pallidum", "right amygdala", "right pallidum")
#: CT development structure → the structure whose image and label are its ``auto`` support.
CT_SUPPORT = {"STS_001:GTV": "STS_002:GTV", "STS_002:GTV": "STS_001:GTV"}
#: A click that lowers one structure's Dice by more than this counts as a drop.
DROP = 0.05
#: The current constants, and each earlier choice they replaced (one constant changed per variant).
VARIANTS = {"current": Settings(), "no-hold": replace(Settings(), hold=np.inf),
            "radius-0.9": replace(Settings(), radius=0.9), "two-way": replace(Settings(), one_way=False)}


def dev_tasks(shared: Optional[Path]) -> Iterator[tuple[Task, Optional[Task]]]:
    """``(task, support task or None)`` for every development structure whose data are here."""
    cases = dict(zip(("Colin27", "MNI152"), brain_cases(2.0)))
    for structure in MR_DEV:
        for name, other in (("Colin27", "MNI152"), ("MNI152", "Colin27")):
            task = lambda n: make_task(f"{n}:{structure}", (cases[n].image, binary_mask(cases[n], structure),  # noqa: E731
                                                            cases[n].licence, "MR"))
            yield task(name), task(other)
    found = load_all(shared, brains=False)
    for key in (k for k in TUNED_ON if k in found):
        support = CT_SUPPORT.get(key)
        yield make_task(key, found[key]), (make_task(support, found[support]) if support in found else None)


def automatic_starts(task: Task, other: Optional[Task]) -> dict[str, tuple]:
    """``start → (fitted segmenter, its automatic contour on the task)`` for each of
    ``interactive_protocol.AUTO_BACKENDS`` fitted on ``other`` (start ``auto`` for the default,
    ``auto-<backend>`` for another), each contour computed once for every variant; a backend that
    cannot start here (the atlas where no registration passes its gate) is left out with a line."""
    starts = {}
    for backend in AUTO_BACKENDS if other is not None else ():
        fitted = fx.Segmenter(backend=backend, progress=False).fit([other.image], [other.reference])
        first = fx.ContourSession(task.image, segmenter=fitted)
        try:
            first.result()
        except RegistrationError as err:
            print(f"{task.key:28s} no {backend} start: {err}", flush=True)
            continue
        starts["auto" if backend == "universeg" else f"auto-{backend}"] = (fitted, first._automatic)
    return starts


def run(task: Task, other: Optional[Task]) -> list[dict]:
    """Every variant × start on one structure: one row per step."""
    automatic = automatic_starts(task, other)
    rows = []
    for variant, settings in VARIANTS.items():
        for start in ("blank", *automatic):
            fitted, contour = automatic.get(start, (None, None))
            session = fx.ContourSession(task.image, segmenter=fitted, refinement=settings)
            if contour is not None:  # the same first pass for every variant (the model is immutable)
                session._automatic = contour
            steps = drive(task, session, "blank" if start == "blank" else "auto")
            rows += [{"structure": task.key, "modality": task.modality, "start": start, "variant": variant,
                      "step": r["step"], "interaction": r["interaction"], "dice": r["dice"]} for r in steps]
            print(f"{task.key:28s} {start:20s} {variant:10s} " + " ".join(f"{r['dice']:.3f}" for r in steps), flush=True)
    return rows


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per variant × modality × start: mean Dice per step, Dice-AUC, worst step change, drops."""
    out = []
    for key in dict.fromkeys((r["variant"], r["modality"], r["start"]) for r in rows):
        curves = {}
        for r in rows:
            if (r["variant"], r["modality"], r["start"]) == key:
                curves.setdefault(r["structure"], [0.0] * (CLICKS + 1))[r["step"]] = r["dice"]
        dice = np.array(list(curves.values()))
        mean = dice.mean(axis=0)
        out.append({"variant": key[0], "modality": key[1], "start": key[2], "structures": len(dice),
                    **{f"step{s}_dice": round(float(m), 4) for s, m in enumerate(mean)},
                    "dice_auc": round(float(np.mean([click_auc(list(d)) for d in dice])), 4),
                    "worst_mean_step": round(float(np.diff(mean).min()), 4),
                    "drops": int((np.diff(dice, axis=1) < -DROP).sum())})
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = development_data_parser(__doc__)
    args = parser.parse_args(argv)
    machine = machine_info()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = [r | {"machine": machine} for task, other in dev_tasks(args.shared) for r in run(task, other)]
    write_with_summary(rows, summarise(rows), args.out, "interactive_dev",
                       ("development structures, per step", "development set, per variant"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
