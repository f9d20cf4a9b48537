"""``fewshotcx demo``: the bundled model on real package-shipped data."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx demo``."""
    p = subparsers.add_parser("demo", help="run the bundled model on real package-shipped data")
    p.add_argument("--out", default="demo-output", help="output directory")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo run in --out")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo as demo

    demo(check_output_dir(Path(args.out), "--out"), device=args.device, overwrite=args.overwrite)
