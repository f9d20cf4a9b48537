"""The report of ``interactive_protocol.py``: its per-structure summary (which rows are headline), the
plot of mean Dice against the step and the per-structure table of docs/interactive.md."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

import numpy as np

from common import RULE_SOLVED_DICE
from fewshotcx.evaluation.interactive import CLICKS, click_auc

#: Structures the session's refinement was tuned on (``refine.Settings``; LUNG1-001's GTV: interact commit
#: 22dd3a4) or tested on (STS_002: tests/test_session_interact.py): not held out, not headline.
TUNED_ON = ("STS_001:GTV", "LUNG1-001:spinal cord", "LUNG1-001:GTV", "STS_002:GTV")


def summarise_runs(rows: Sequence[dict]) -> list[dict]:
    """One row per structure × start × method: box (step 0) and final Dice/NSD, Dice-AUC, NSD-AUC
    and the median seconds per interaction (steps with an interaction)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["structure"], r["start"], r["method"]), []).append(r)
    rule = {r["structure"]: r["dice"] for r in rows if r["method"] == "hu-rule-in-box" and r["step"] == CLICKS}
    out = []
    for (structure, start, method), group in groups.items():
        group = sorted(group, key=lambda r: r["step"])
        complete = len(group) == CLICKS + 1 and all(np.isfinite(r["dice"]) for r in group)
        timed = [r["seconds"] for r in group if r["interaction"] not in ("ignored", "none (perfect)", "automatic")]
        solved = rule.get(structure, float("nan"))
        out.append({
            "structure": structure, "modality": group[0]["modality"], "start": start, "method": method,
            "rule_solved": "yes" if solved >= RULE_SOLVED_DICE else "no", "rule_dice": solved,
            "tuned_on": "yes" if structure in TUNED_ON else "no",
            "headline": "yes" if not solved >= RULE_SOLVED_DICE and structure not in TUNED_ON else "no",
            "step0_dice": group[0]["dice"], "final_dice": group[-1]["dice"] if complete else float("nan"),
            "final_nsd": group[-1]["nsd"] if complete else float("nan"),
            "dice_auc": round(click_auc([r["dice"] for r in group]), 4) if complete else float("nan"),
            "nsd_auc": round(click_auc([r["nsd"] for r in group]), 4) if complete else float("nan"),
            "median_seconds": round(statistics.median(timed), 3) if timed and complete else float("nan"),
            "step0_seconds": group[0]["seconds"], "setup_seconds": group[0].get("setup_seconds", ""),
            "error": group[0].get("error", "")})
    return out


def plot(rows: Sequence[dict], path: Path) -> Path:
    """Mean Dice against the step, one line per start/method, one panel per modality, over the headline
    structures (no HU rule solves them, the session was not tuned on them); ``n``: structures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    excluded = {s["structure"] for s in summarise_runs(rows) if s["headline"] == "no"}
    modalities = sorted({r["modality"] for r in rows})
    names = sorted({f"{r['start']}: {r['method']}" for r in rows})  # one colour per line, the same in every panel
    fig, axes = plt.subplots(1, len(modalities), figsize=(6 * len(modalities), 4.5), squeeze=False)
    for ax, modality in zip(axes[0], modalities):
        lines: dict[str, dict[int, list[float]]] = {}
        for r in rows:
            if r["structure"] not in excluded and r["modality"] == modality and np.isfinite(r["dice"]):
                lines.setdefault(f"{r['start']}: {r['method']}", {}).setdefault(r["step"], []).append(r["dice"])
        for name, steps in lines.items():
            x = sorted(steps)
            ax.plot(x, [np.mean(steps[s]) for s in x], marker="o", label=f"{name} (n={len(steps[x[0]])})",
                    color=f"C{names.index(name) % 10}")
        ax.set(xticks=range(CLICKS + 1), xticklabels=["box / start"] + [f"click {i}" for i in range(1, CLICKS + 1)],
               ylabel="mean Dice", ylim=(0, 1), title=f"{modality}: headline structures")
        ax.set_xlabel("interaction (interpolation: step + 1 slices drawn)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


COLUMNS = ("blank hu-rule-in-box final_dice", "blank session step0_dice", "blank session final_dice",
           "blank session dice_auc", "auto session step0_dice", "auto session final_dice", "auto session dice_auc",
           "auto session-universeg+atlas step0_dice", "auto session-universeg+atlas final_dice",
           "auto session-atlas step0_dice", "auto session-atlas final_dice",
           "blank box-filled final_dice", "slices interpolation final_dice")


def docs_table(summary: Sequence[dict]) -> str:
    """The per-structure Markdown table of docs/interactive.md, every number with its evidence tag."""
    def cell(structure: str, start: str, method: str, column: str) -> str:
        row = next((s for s in summary if (s["structure"], s["start"], s["method"]) == (structure, start, method)), None)
        if row is None or not np.isfinite(float(row[column])):
            return "–"
        return (f"{float(row[column]):.3f} <!-- evidence: interactive_protocol_summary.csv structure=\"{structure}\" "
                f"start={start} method={method} column={column} -->")

    lines = ["| structure | headline | HU rule in box | blank: box | blank: 5 clicks | blank Dice-AUC | auto: start "
             "| auto: 5 clicks | auto Dice-AUC | auto (universeg+atlas): start | auto (universeg+atlas): 5 clicks "
             "| auto (atlas): start | auto (atlas): 5 clicks | box filled | interpolation, 6 slices |", "|" + "---|" * 15]
    for structure in dict.fromkeys(s["structure"] for s in summary):
        head = next(s for s in summary if s["structure"] == structure)
        cells = [cell(structure, *spec.split()) for spec in COLUMNS]
        lines.append(" | ".join([f"| {structure}", head["headline"], *cells]) + " |")
    return "\n".join(lines)
