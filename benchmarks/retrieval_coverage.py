"""Where retrieval finds the query's anatomy in the support, and where it finds nothing.

For each pair (support → query, axial), every group of 8 query slices gets its best retrieval similarity
to the support pool (:func:`fewshotcx.pipeline.support.retrieval_similarity`, the bundled model's
framing), the distance between the best match's relative position and the group's own, and the
similarity position matching gives away (:func:`~fewshotcx.pipeline.query_support.position_gap`).
These set ``MIN_SIMILARITY`` and ``MAX_POSITION_GAP`` in :mod:`fewshotcx.pipeline.query_support`:

* chest CT → chest CT of another patient (LUNG1-001 ↔ CTChest4), whole query and its caudal 60 %;
* chest CT support → brain MR query (Colin27): anatomy the support does not have.

    python benchmarks/retrieval_coverage.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_csv  # noqa: E402
from ct_cross_patient import CROP, LUNG1, crop, ctchest4, lung1_001  # noqa: E402
from fewshotcx import datasets  # noqa: E402
from fewshotcx.backends.universeg import UniverSegBackend  # noqa: E402
from fewshotcx.pipeline.intensity import normalize  # noqa: E402
from fewshotcx.pipeline.query_support import SlabSettings, position_gap, query_descriptors  # noqa: E402
from fewshotcx.pipeline.slicing import Framing  # noqa: E402
from fewshotcx.pipeline.support import build_pool, retrieval_similarity  # noqa: E402

GROUP = 8


def groups(support, query, framing: Framing, modality: str) -> list[dict]:
    """One row per group of query slices: best similarity, position distance of the best match."""
    pool = build_pool([normalize(support[0].array, "ct")], [support[1]], 2, framing)
    settings = SlabSettings(framing, GROUP, torch.device("cpu"))
    similarity = retrieval_similarity(query_descriptors(torch.as_tensor(normalize(query.array, modality)),
                                                        query.spacing, 2, settings), pool)
    best, match = similarity.max(dim=1)
    depth = query.shape[2]
    gap = position_gap(similarity, pool, depth, GROUP)
    own = (torch.arange(len(best)) * GROUP + (GROUP - 1) / 2).clamp(max=depth - 1) / max(depth - 1, 1)
    return [{"group": g, "first_slice": g * GROUP, "best_similarity": round(float(best[g]), 4),
             "position_distance": round(float((pool.positions[match[g]] - own[g]).abs()), 4),
             "position_gap": round(float(gap[g]), 4)} for g in range(len(best))]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-output/retrieval_coverage"))
    args = parser.parse_args(argv)
    root = datasets.shared_data_dir()
    if root is None or not (root / LUNG1).is_dir():
        print("error: LUNG1-001 is development data in ../shared/data; it is not distributed", file=sys.stderr)
        return 2
    framing = Framing.of(UniverSegBackend())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lung1, chest = lung1_001(root), ctchest4()
    brain = datasets.colin27_aal(downsample=2.0).image.canonical()
    pairs = [("LUNG1-001 -> CTChest4", "full", lung1, chest[0], "ct"),
             ("LUNG1-001 -> CTChest4", "cropped", lung1, crop(*chest, CROP)[0], "ct"),
             ("CTChest4 -> LUNG1-001", "full", chest, lung1[0], "ct"),
             ("CTChest4 -> LUNG1-001", "cropped", chest, crop(*lung1, CROP)[0], "ct"),
             ("LUNG1-001 -> Colin27 brain MR", "other anatomy", lung1, brain, "mr")]
    machine = machine_info()
    rows = [{"pair": name, "kind": kind, **r, "machine": machine}
            for name, kind, support, query, modality in pairs for r in groups(support, query, framing, modality)]
    write_csv(rows, args.out / "retrieval_coverage.csv")
    for r in rows:
        print(f"{r['pair']:32s} {r['kind']:14s} group {r['group']:2d} best {r['best_similarity']:.2f} "
              f"distance {r['position_distance']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
