"""What ``predict_uncertainty`` costs against one ``predict``, with the default strategy on real CT.

Pairs: the sarcoma patients' CTs in ``../shared/data`` (development data, never bundled): support one
patient's CT and GTV, query another patient's CT. Each method gets a freshly fitted default
``fx.Segmenter()`` (strategy ``auto``: every support volume registered onto the query), so each timing
includes its own registration: ``predict`` registers once and predicts once; ``predict_uncertainty``
registers once (every draw reuses it) and predicts ``draws`` times, each on a random ``fraction`` of
the support (the pool, and each query group's support set), so a draw costs about ``fraction`` of an
inference. ``--draws`` and ``--fraction`` default to the library's defaults (chosen on the selection
set by ``uncertainty_draws.py``).

    python benchmarks/uncertainty_cost.py            # a few minutes on a 2-core CPU

Writes benchmarks/results/uncertainty_cost.csv (one row per pair) and prints it.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import fewshotcx as fx
from fewshotcx.backends import default_strategy
from fewshotcx.evaluation.uncertainty import DEFAULT_DRAWS, DEFAULT_FRACTION

from common import machine_info, write_and_show

RESULTS = Path(__file__).parent / "results" / "uncertainty_cost.csv"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirp" / "sts_images_flat" / "nifti"
PAIRS = (("STS_001", "STS_002"), ("STS_002", "STS_003"))


def timed(call) -> float:
    """Wall-clock seconds of ``call()``."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="uncertainty draws (the library default)")
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION, help="share of the support per draw")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"needs the development data in {DATA.parent.parent.parent} (../shared/data)")

    machine, rows = machine_info(), []
    for support, query in PAIRS:
        image, label = (fx.load_volume(DATA / f"{support}_CT_{part}.nii.gz", label=part == "mask")
                        for part in ("image", "mask"))
        target = fx.load_volume(DATA / f"{query}_CT_image.nii.gz")

        def fitted() -> fx.Segmenter:
            return fx.Segmenter(progress=False).fit([image], [label])

        predict = timed(lambda: fitted().predict(target))
        uncertainty = timed(lambda: fitted().predict_uncertainty(target, draws=args.draws, fraction=args.fraction))
        row = {"support": support, "query": query, "query_shape": "x".join(map(str, target.shape)),
               "strategy": default_strategy(), "draws": args.draws, "fraction": args.fraction,
               "predict_s": round(predict, 1),
               "uncertainty_s": round(uncertainty, 1), "ratio": round(uncertainty / predict, 2),
               "load_avg": round(os.getloadavg()[0], 1), "machine": machine}
        rows.append(row)
        print({k: v for k, v in row.items() if k != "machine"}, flush=True)
    write_and_show(rows, args.out, "predict_uncertainty vs predict")


if __name__ == "__main__":
    main()
