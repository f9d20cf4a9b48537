"""Record a checkpoint's default support size, chosen on its *selection* set only.

Reads a ``support_size.csv`` written by ``benchmarks/support_size.py`` for that checkpoint, keeps the
rows whose ``data_role`` is ``selection`` (structures/volumes that validated training: never the
report set), position-matched support, one ensemble member, no post-processing, and takes the
*largest* support size whose mean Dice is within :data:`TOLERANCE` of the best: differences that small
are below the draw-to-draw noise (one support draw moves a task's Dice by about ±0.1), and a larger
support averages over more slices. Writes it into the checkpoint's metadata
(``extra["support_size"]``, which :class:`~fewshotcx.backends.universeg.UniverSegBackend` uses when the
caller gives none) and into the JSON sidecar, with the evidence line.

    python scripts/choose_support_size.py benchmarks/results/support_size.csv \
        fewshotcx/models/bundled/default_universeg.pt
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from fewshotcx.models.weights import load_checkpoint, load_universeg, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import roles  # noqa: E402

#: Mean-Dice margin within which support sizes count as equally good.
TOLERANCE = 0.01


def choose(rows: Sequence[dict[str, str]]) -> tuple[int, dict[int, float], int]:
    """``(best support size, mean Dice per size, rows used)`` over the selection rows.

    Raises:
        roles.RoleError: a row used reads a report volume or structure (:func:`roles.require`).
    """
    chosen = [r for r in rows if r.get("data_role") == "selection" and r.get("method") == "universeg-position"
              and r.get("ensemble") == "1" and r.get("postprocess") == "none" and math.isfinite(float(r["dice"]))]
    roles.require(roles.SELECTION, [r[k] for r in chosen for k in ("support_subject", "subject")],
                  [r["structure"] for r in chosen])
    by_size: dict[int, list[float]] = defaultdict(list)
    for r in chosen:
        by_size[int(r["support_size"])].append(float(r["dice"]))
    used = len(chosen)
    if not by_size:
        raise SystemExit("no selection-set rows (data_role=selection, universeg-position, ensemble 1, no post-processing)")
    means = {s: sum(v) / len(v) for s, v in sorted(by_size.items())}
    top = max(means.values())
    best = max(s for s, m in means.items() if m >= top - TOLERANCE)
    return best, means, used


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="support_size.csv from benchmarks/support_size.py")
    parser.add_argument("checkpoint", type=Path, help="checkpoint to update in place (and its .json)")
    args = parser.parse_args(argv)
    with args.csv.open(newline="") as f:
        best, means, used = choose(list(csv.DictReader(f)))
    evidence = (f"{args.csv.name}: selection-set mean Dice by support size "
                + ", ".join(f"S={s}: {m:.3f}" for s, m in means.items()) + f" ({used} rows); chose S={best}, the largest within {TOLERANCE} of the best")
    model, _ = load_universeg(args.checkpoint, return_metadata=True)
    state, metadata = load_checkpoint(args.checkpoint)
    extra = {**metadata.get("extra", {}), "support_size": best, "support_size_evidence": evidence}
    model.load_state_dict(state)
    model.to(next(iter(state.values())).dtype)
    save_checkpoint(model, args.checkpoint, metadata["config"], extra)
    sidecar = args.checkpoint.with_suffix(".json")
    if sidecar.exists():
        summary = json.loads(sidecar.read_text())
        summary.update(support_size=best, support_size_evidence=evidence, size_bytes=args.checkpoint.stat().st_size)
        sidecar.write_text(json.dumps(summary, indent=2) + "\n")
    print(evidence)
    return 0


if __name__ == "__main__":
    sys.exit(main())
