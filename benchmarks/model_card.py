"""The model card's held-out table: the default checkpoint through the full pipeline, per structure.

Cross-subject: Colin27/AAL as support, MNI152/Harvard-Oxford as query (2 mm), and the pyradiomics
lesion pairs (brain1 → brain2, lung1 → lung2). Every row says its ``data_role`` for this checkpoint
(``report`` = never seen by training, validation or a choice of default; ``selection`` = validated
training / chose defaults; ``trained``), so the card quotes only ``report`` rows as unseen.

    python benchmarks/model_card.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ModelSpec, add_output_options, apply_output_options, binary_mask, brain_cases, data_role, machine_info,
    print_provenance, print_table, pyradiomics_case, score, write_csv,
)
from fewshotcx import datasets  # noqa: E402

BRAIN_STRUCTURES = ("left hippocampus", "right hippocampus", "left thalamus", "right thalamus",
                    "left caudate", "left putamen")
LESION_PAIRS = (("brain1", "brain2"), ("lung1", "lung2"))


def run(model: ModelSpec, structures: Sequence[str] = BRAIN_STRUCTURES,
        lesions: Sequence[tuple[str, str]] = LESION_PAIRS) -> list[dict]:
    """One row per (support → query, structure): Dice, HD95, surface Dice, seconds, data role."""
    roles = model.roles()
    colin, mni = brain_cases(2.0)
    colin, mni = datasets.structure_pair(colin, mni, list(structures))
    pairs = [(colin, mni, s) for s in structures]
    pairs += [(pyradiomics_case(a), pyradiomics_case(b), "lesion") for a, b in lesions]
    print_provenance({c.name: c for p in pairs for c in p[:2]}.values())
    rows = []
    for support, query, structure in pairs:
        start = time.perf_counter()
        seg = model.segmenter(modality=query.modality.lower() or "auto", seed=0)
        pred = seg.fit([support.image], [binary_mask(support, structure)]).predict(query.image)
        reference = binary_mask(query, structure)
        rows.append({"support": support.name, "query": query.name, "structure": structure,
                     "data_role": data_role(query, structure, roles), **score(pred.array > 0, reference),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1])
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="default", help="UniverSeg checkpoint: default, official or a path")
    parser.add_argument("--device", default="cpu")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if apply_output_options(args, lambda rows, out, plots, tag: print_table(rows), "model_card"):
        return
    print(f"machine: {machine_info()}")
    model = ModelSpec(args.weights, device=args.device)
    print(f"model: {model.describe()}")
    rows = run(model)
    print(f"wrote {write_csv(rows, Path(args.out) / 'model_card.csv')}")


if __name__ == "__main__":
    main()
