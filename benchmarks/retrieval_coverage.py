"""Where retrieval finds the query's anatomy in the support, and where it finds nothing.

For each pair (support → query, axial), every group of 8 query slices gets its best retrieval similarity
to the support pool (:func:`fewshotcx.pipeline.support.retrieval_similarity`, the bundled model's
framing), the distance between the best match's relative position and the group's own, and the
similarity position matching gives away (:func:`~fewshotcx.pipeline.query_support.position_gap`).
Scans as stored (canonical), the support labelled with its HU-defined bone and fat
(:mod:`gate_cases`; the pool needs labels, the similarity ignores them).

Two sets, by data role (:mod:`roles`):

* ``--set calibration`` (:data:`CALIBRATION_PAIRS`, calibration volumes only): abdominal CT →
  abdominal CT of another patient (CRLM-CT-1004 ↔ 1006) and sarcoma CT → sarcoma CT (STS_001 ↔ 002),
  whole query (``full``) and its caudal 60 % (``cropped``); abdominal CT support → brain MR query
  (Colin27, ``other anatomy``). :func:`fit_coverage` turns its rows into ``MIN_SIMILARITY`` and
  ``MAX_POSITION_GAP`` in :mod:`fewshotcx.pipeline.query_support`; writes ``retrieval_coverage.csv``.
* ``--set heldout`` (:data:`HELDOUT_PAIRS`: LUNG1-001 ↔ CTChest4 full and cropped, LUNG1-001 → brain,
  the pairs these thresholds were fitted on before issue #33): ``retrieval_coverage_heldout.csv``.

    python benchmarks/retrieval_coverage.py --out benchmarks/results [--set heldout]
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import roles  # noqa: E402
from common import machine_info, write_csv  # noqa: E402
from ct_cross_patient import CROP, crop  # noqa: E402
from fewshotcx import Volume, datasets  # noqa: E402
from fewshotcx.backends.universeg import UniverSegBackend  # noqa: E402
from fewshotcx.pipeline.intensity import normalize  # noqa: E402
from fewshotcx.pipeline.query_support import SlabSettings, position_gap, query_descriptors  # noqa: E402
from fewshotcx.pipeline.slicing import Framing  # noqa: E402
from fewshotcx.pipeline.support import build_pool, retrieval_similarity  # noqa: E402
from gate_cases import load  # noqa: E402

GROUP = 8
#: Rounding steps of the fitted ``MIN_SIMILARITY`` and ``MAX_POSITION_GAP``.
SIMILARITY_STEP, GAP_STEP = 0.05, 0.01
#: A group whose best match lies within this relative distance of its own position found its own
#: anatomy (the ``full`` pairs' covered groups).
SAME_PLACE = 0.1


class CoveragePair(NamedTuple):
    """Support volume, query volume (:mod:`roles` names) and ``kind``: ``full``, ``cropped`` (the
    query's caudal 60 %) or ``other anatomy``."""

    support: str
    query: str
    kind: str


CRLM, STS = ("mirp/CRLM-CT-1004", "mirp/CRLM-CT-1006"), ("sts/STS_001_CT", "sts/STS_002_CT")
CALIBRATION_PAIRS: tuple[CoveragePair, ...] = (
    *(CoveragePair(a, b, kind) for x, y in (CRLM, STS) for a, b in ((x, y), (y, x)) for kind in ("full", "cropped")),
    CoveragePair(CRLM[0], "mricron/colin27_aal", "other anatomy"),
)
LUNG1, CHEST = "mirp/LUNG1-001", "slicerio/CTChest4"
HELDOUT_PAIRS: tuple[CoveragePair, ...] = (
    *(CoveragePair(a, b, kind) for a, b in ((LUNG1, CHEST), (CHEST, LUNG1)) for kind in ("full", "cropped")),
    CoveragePair(LUNG1, "mricron/colin27_aal", "other anatomy"),
)
SETS = {"calibration": (CALIBRATION_PAIRS, "retrieval_coverage.csv"),
        "heldout": (HELDOUT_PAIRS, "retrieval_coverage_heldout.csv")}


def groups(support: datasets.Case, image: Volume, modality: str, framing: Framing) -> list[dict]:
    """One row per group of the query ``image``'s slices: best similarity, position distance of the
    best match."""
    pool = build_pool([normalize(support.image.array, "ct")], [support.labels], 2, framing)
    settings = SlabSettings(framing, GROUP, torch.device("cpu"))
    similarity = retrieval_similarity(query_descriptors(torch.as_tensor(normalize(image.array, modality)),
                                                        image.spacing, 2, settings), pool)
    best, match = similarity.max(dim=1)
    depth = image.shape[2]
    gap = position_gap(similarity, pool, depth, GROUP)
    own = (torch.arange(len(best)) * GROUP + (GROUP - 1) / 2).clamp(max=depth - 1) / max(depth - 1, 1)
    return [{"group": g, "first_slice": g * GROUP, "best_similarity": round(float(best[g]), 4),
             "position_distance": round(float((pool.positions[match[g]] - own[g]).abs()), 4),
             "position_gap": round(float(gap[g]), 4)} for g in range(len(best))]


def fit_coverage(rows: Sequence[dict]) -> dict[str, float]:
    """``MIN_SIMILARITY`` and ``MAX_POSITION_GAP`` from calibration rows, each halfway between what it
    must separate, rounded to its step:

    * similarity: the best ``other anatomy`` group vs the worst ``full`` group that found its own
      anatomy (best match within :data:`SAME_PLACE`);
    * position gap (mean per pair): the largest ``full`` pair's vs the smallest ``cropped`` pair's.
    """
    def of(kind: str) -> list[dict]:
        return [r for r in rows if r["kind"] == kind]

    foreign = max(float(r["best_similarity"]) for r in of("other anatomy"))
    covered = min(float(r["best_similarity"]) for r in of("full") if float(r["position_distance"]) <= SAME_PLACE)

    def mean_gaps(kind: str) -> list[float]:
        by_pair: dict[str, list[float]] = {}
        for r in of(kind):
            by_pair.setdefault(r["pair"], []).append(float(r["position_gap"]))
        return [sum(gaps) / len(gaps) for gaps in by_pair.values()]

    def halfway(low: float, high: float, step: float) -> float:
        return round(math.floor((low + high) / 2 / step + 0.5) * step, 4)

    return {"MIN_SIMILARITY": halfway(foreign, covered, SIMILARITY_STEP),
            "MAX_POSITION_GAP": halfway(max(mean_gaps("full")), min(mean_gaps("cropped")), GAP_STEP)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-output/retrieval_coverage"))
    parser.add_argument("--set", choices=tuple(SETS), default="calibration")
    args = parser.parse_args(argv)
    pairs, filename = SETS[args.set]
    data_role = roles.CALIBRATION if args.set == "calibration" else roles.REPORT
    if data_role == roles.CALIBRATION:
        roles.require(roles.CALIBRATION, [v for p in pairs for v in (p.support, p.query)])
    if datasets.shared_data_dir() is None:
        print("error: these scans are development data in ../shared/data; they are not distributed", file=sys.stderr)
        return 2
    framing = Framing.of(UniverSegBackend())
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in pairs:
            query = load(p.query, spacing=None)
            image = crop(query.image, query.labels, CROP)[0] if p.kind == "cropped" else query.image
            rows += [{"pair": f"{p.support} -> {p.query}", "kind": p.kind, "data_role": data_role, **r}
                     for r in groups(load(p.support, spacing=None), image, query.modality.lower(), framing)]
    machine = machine_info()
    write_csv([{**r, "machine": machine} for r in rows], args.out / filename)
    for r in rows:
        print(f"{r['pair']:52s} {r['kind']:14s} group {r['group']:2d} best {r['best_similarity']:.2f} "
              f"distance {r['position_distance']:.2f} gap {r['position_gap']:.2f}")
    if data_role == roles.CALIBRATION:
        print(f"fitted: {fit_coverage(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
