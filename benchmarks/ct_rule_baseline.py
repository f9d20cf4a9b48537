"""What a rule with no support and no model scores on the CT cross-patient pair: the lungs as air.

The lungs of both patients of ``ct_cross_patient.py`` (LUNG1-001's clinical contours, CTChest4's
segments) are what Hounsfield units define: air inside the body. The rule here is
:func:`fewshotcx.datasets.ct_anatomy.hu_anatomy` (body > −500 HU; air < −400 HU inside it, in
components of at least 2 % of the body; split at the body's centre of mass into the patient's left
and right), applied to each query exactly as ``ct_cross_patient.py`` cuts it (whole, and its caudal
60 %). It is the bar every method on that table must be read against: where a rule scores this,
the table measures the rule's structure, not in-context segmentation.

    python benchmarks/ct_rule_baseline.py --out benchmarks/results      # about a minute

Writes ``ct_rule_baseline.csv`` (per query, kind and structure: Dice, HD95, surface Dice) and
``ct_rule_baseline_summary.csv`` (mean Dice per kind).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import score  # noqa: E402
from ct_cross_patient import CROP, STRUCTURES, crop, load_patients, write_report  # noqa: E402
from fewshotcx.datasets.ct_anatomy import HU_STRUCTURES, hu_anatomy  # noqa: E402

METHOD = "hu-rule"


def rule_rows(image, labels, query: str, kind: str) -> list[dict]:
    """One row per lung: the rule's mask against the reference."""
    start = time.perf_counter()
    anatomy, _ = hu_anatomy(image)
    seconds = round(time.perf_counter() - start, 1)
    value_of = {name: value for value, name in HU_STRUCTURES.items()}
    rows = []
    for value, structure in enumerate(STRUCTURES, start=1):
        reference = labels.with_array((labels.array == value).astype(np.uint8), label=True)
        predicted = (anatomy == value_of[structure]).astype(np.uint8)
        rows.append({"query": query, "kind": kind, "method": METHOD, "structure": structure,
                     **score(predicted, reference), "seconds": seconds})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=None, help="development data folder (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path("bench-output/ct_rule_baseline"))
    args = parser.parse_args(argv)
    patients = load_patients(args.shared)
    if patients is None:
        return 2
    rows = []
    for kind in ("cropped", "full"):
        for name, (image, labels) in patients.items():
            query = crop(image, labels, CROP) if kind == "cropped" else (image, labels)
            rows += rule_rows(*query, name, kind)
            print(" ".join(f"{r['query']} {r['kind']} {r['structure']} {r['dice']:.3f}" for r in rows[-2:]), flush=True)
    write_report(rows, args.out, "ct_rule_baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
