"""The demo's results as evidence: runs ``fewshotcx demo`` in-process and writes ``demo.csv`` with the
provenance columns (git commit, checkpoint hash) every results CSV carries.

    python benchmarks/demo_results.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_csv  # noqa: E402
from fewshotcx.demo import run_demo  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-output/demo_results"))
    parser.add_argument("--work", type=Path, default=Path("bench-output/demo"),
                        help="the demo's own output folder (predictions, overlays; replaced)")
    parser.add_argument("--weights", default="default")
    args = parser.parse_args(argv)
    rows = run_demo(args.work, weights=args.weights, overwrite=True)
    machine = machine_info()
    write_csv([{**r, "machine": machine} for r in rows], args.out / "demo.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
