"""Support-size sweep: Dice and HD95 on one query as the support set grows, over several seeds.

    python examples/support_sweep.py --support a.nii.gz:a_lab.nii.gz --support b.nii.gz:b_lab.nii.gz \
        --query q.nii.gz --reference q_lab.nii.gz --sizes 1,2,4,8,16,32 --seeds 0,1,2 --csv sweep.csv

``support_size`` is the number of labelled support slices S that condition each query slice (drawn
from all support volumes, registered onto the query by default). ``seed`` changes which slices are drawn, so
the spread over seeds shows how much a result depends on the draw. One CSV row per (size, seed).
The full benchmark, over several tasks and datasets, is ``benchmarks/support_size.py``.

``--synthetic`` generates three support cases and a query; it exists for smoke tests and its
scores say nothing about segmentation quality.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import fewshotcx as fx


def sweep(images: list, labels: list, query, reference, sizes: list[int], seeds: list[int], csv_path: Path,
          weights: str = "default", device: str = "auto") -> list[dict]:
    """Predict ``query`` for every (support size, seed); write and return the rows."""
    query, reference = fx.load_volume(query), fx.load_volume(reference, label=True)
    rows = []
    for size in sizes:
        for seed in seeds:
            start = time.perf_counter()
            seg = fx.Segmenter(weights=weights, device=device, support_size=size, seed=seed, progress=False)
            mask = seg.fit(images=images, labels=labels).predict(query)
            scores = fx.metrics.evaluate(mask, reference)
            rows.append({"support_size": size, "seed": seed, "dice": round(scores["dice"], 4),
                         "hd95_mm": round(scores["hd95"], 2), "seconds": round(time.perf_counter() - start, 2)})
        dices = [r["dice"] for r in rows[-len(seeds):]]
        spread = statistics.stdev(dices) if len(dices) > 1 else 0.0
        print(f"S={size:3d}  Dice {statistics.mean(dices):.3f} ± {spread:.3f} over {len(seeds)} seed(s)")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}")
    return rows


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", action="append", default=[], metavar="IMAGE:LABEL")
    parser.add_argument("--query")
    parser.add_argument("--reference", help="reference label map of the query")
    parser.add_argument("--sizes", type=_ints, default=[1, 2, 4, 8, 16, 32], help="comma-separated support sizes")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated seeds")
    parser.add_argument("--csv", default="support-sweep.csv")
    parser.add_argument("--weights", default="default", help="'default', 'official' or a checkpoint path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--synthetic", action="store_true", help="generate smoke-test inputs next to --csv")
    args = parser.parse_args(argv)

    if args.synthetic:
        from synthetic_data import write_synthetic_cases

        data = Path(args.csv).parent / "data"
        pairs = write_synthetic_cases(data, 3)
        [(query, reference)] = write_synthetic_cases(data, 1, first_seed=3, orientation="LPS")
    else:
        pairs = [text.rsplit(":", 1) for text in args.support]
        if not pairs or any(len(p) != 2 for p in pairs) or not (args.query and args.reference):
            parser.error("give --support IMAGE:LABEL (at least one), --query and --reference, or --synthetic")
        query, reference = args.query, args.reference
    sweep([p[0] for p in pairs], [p[1] for p in pairs], query, reference, args.sizes, args.seeds, Path(args.csv),
          args.weights, args.device)


if __name__ == "__main__":
    main()
