"""Choose the bundled default between two checkpoints on the *selection* set only.

The GPU-trained physical-scale model replaces the previous default only if it does at least as well
on the selection set (never on the report set, which is kept for reporting). Selection tasks here:
the sarcoma patients' CT and MR (STS_001 and STS_002 → STS_003, the held-out selection patient; GTV,
and on CT the HU-defined bone and fat), whole volumes, position-matched support, seed 0. The brain
selection rows (hippocampus) come from ``train_gpu.py --eval-only`` (``train_gpu_heldout.csv`` and
the same script with ``--weights fov64``).

    python benchmarks/default_selection.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, score, sarcoma_selection_ready, write_csv  # noqa: E402
from fewshotcx import Segmenter, datasets  # noqa: E402

CHECKPOINTS = ("default", "fov64")
STRUCTURES = {"CT": ("GTV", "bone", "fat"), "MR_T1": ("GTV",)}
SUPPORTS, QUERY = ("STS_001", "STS_002"), "STS_003"


def selection_volumes() -> list[str]:
    """Every volume this selection reads (supports and queries), as :mod:`roles` names them."""
    return [f"sts/{patient}_{modality}" for modality in STRUCTURES for patient in (*SUPPORTS, QUERY)]


def selection_pairs() -> list[tuple[str, str, datasets.Case, datasets.Case]]:
    """``(modality, support id, support, query)`` for every selection task, each case keeping only
    :data:`STRUCTURES`' structures of its modality, relabelled ``1..n`` in that order (call
    :func:`common.sarcoma_selection_ready` first)."""
    pairs = []
    for modality, names in STRUCTURES.items():
        cases = {c.name.split("/")[1][:7]: c for c in datasets.sts_cases([modality])}
        if modality == "CT":
            cases = {k: datasets.with_hu_anatomy(c) for k, c in cases.items()}
        query = datasets.select_structures(cases[QUERY], names)
        pairs += [(modality, s, datasets.select_structures(cases[s], names), query) for s in SUPPORTS]
    return pairs


def score_structures(pred: np.ndarray, modality: str, query: datasets.Case) -> list[dict]:
    """One row per structure of ``modality`` (``structure``, ``dice``, ``hd95``, ...) for a predicted
    label map ``pred`` on the query of :func:`selection_pairs`."""
    rows = []
    for value, name in enumerate(STRUCTURES[modality], start=1):
        ref = query.labels.with_array((query.labels.array == value).astype(np.uint8))
        rows.append({"structure": name, **score((pred == value).astype(np.uint8), ref)})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-output/default_selection"))
    args = parser.parse_args(argv)
    if not sarcoma_selection_ready(STRUCTURES, selection_volumes()):
        return 2
    rows = []
    for modality, support_id, support, query in selection_pairs():
        for weights in CHECKPOINTS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seg = Segmenter(weights=weights, strategy="position", progress=False, seed=0,
                                modality="ct" if modality == "CT" else "mr")
                pred = seg.fit([support.image], [support.labels]).predict(query.image).array
            for scored in score_structures(pred, modality, query):
                rows.append({"weights": weights, "modality": modality, "support": support_id, "query": QUERY,
                             "structure": scored.pop("structure"), "data_role": "selection", **scored})
                print(f"{weights:8s} {modality:6s} {support_id} -> {QUERY} {rows[-1]['structure']:6s} "
                      f"dice {rows[-1]['dice']:.3f}", flush=True)
    machine = machine_info()
    rows = [{**r, "machine": machine} for r in rows]
    write_csv(rows, args.out / "default_selection.csv")
    summary = [{"weights": w, "dice_mean": round(float(np.mean([r["dice"] for r in rows if r["weights"] == w])), 4),
                "n": sum(r["weights"] == w for r in rows)} for w in CHECKPOINTS]
    write_csv(summary, args.out / "default_selection_summary.csv")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
