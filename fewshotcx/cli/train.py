"""``fewshotcx train``: episodic in-context training and fine-tuning of UniverSeg from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training import loop
from ..training.config import DATA_SOURCES, TrainConfig
from .common import (NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, check_input, check_output_file, number)

#: ``type=`` for fractions in [0, 1].
FRACTION = number(float, low=0, high=1)


def _support_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--support-size expects N or MIN:MAX, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx train`` to the console script."""
    d = TrainConfig()
    p = subparsers.add_parser("train", help="episodic in-context training / fine-tuning of UniverSeg",
                              description=loop.__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", choices=DATA_SOURCES, default=None,
                   help="training data source (repeat for several); default synthetic unless --images are given")
    p.add_argument("--images", action="append", default=[], help="your own image volume (repeat; pairs with --labels)")
    p.add_argument("--labels", action="append", default=[], help="its label map (repeat, same order as --images)")
    p.add_argument("--init", default=None, help="start from a checkpoint: 'default', 'official' or a path")
    p.add_argument("--steps", type=NON_NEGATIVE_INT, default=d.steps)
    p.add_argument("--width", type=POSITIVE_INT, default=d.width, help="features per CrossBlock for a new model (v1: 64)")
    p.add_argument("--size", type=POSITIVE_INT, default=None, help="slice size (default: the init checkpoint's, else 64)")
    p.add_argument("--context", type=NON_NEGATIVE_INT, default=None, help="2.5D neighbour slices each side")
    p.add_argument("--volume-cache", default=None, metavar="FILE.npz",
                   help="the real sources' loaded volumes: read from FILE when it exists, else written there "
                        "(carry a run to a machine without the data sources)")
    p.add_argument("--max-seconds", type=POSITIVE, default=None,
                   help="time budget: stop when it is spent, the learning rate decaying to 0 by then")
    p.add_argument("--pixel-mm", type=POSITIVE, default=None,
                   help="physical framing: in-plane pixel size in mm around the body (default: the init "
                        "checkpoint's, else the field-of-view fit)")
    p.add_argument("--context-mm", type=POSITIVE, default=None, help="distance of 2.5D neighbours in mm")
    p.add_argument("--support-size", type=_support_range, default=d.support_size, metavar="N|MIN:MAX")
    p.add_argument("--queries", type=POSITIVE_INT, default=d.queries, help="query slabs per episode")
    p.add_argument("--episodes-per-step", type=POSITIVE_INT, default=d.episodes_per_step)
    p.add_argument("--lr", type=POSITIVE, default=d.lr)
    p.add_argument("--schedule", choices=["cosine", "constant"], default=d.schedule)
    p.add_argument("--warmup", type=NON_NEGATIVE_INT, default=d.warmup)
    p.add_argument("--synthetic-ratio", type=FRACTION, default=d.synthetic_ratio)
    p.add_argument("--synthetic-families", type=POSITIVE_INT, default=d.synthetic_families)
    p.add_argument("--axes", nargs="+", choices=["axial", "coronal", "sagittal"], default=d.axes)
    p.add_argument("--holdout-volume", action="append", default=[], help="volume name kept for validation only")
    p.add_argument("--holdout-structure", action="append", default=[], help="structure kept for validation only")
    p.add_argument("--report-volume", action="append", default=[],
                   help="volume kept out of training and validation (for reported held-out results)")
    p.add_argument("--report-structure", action="append", default=[],
                   help="structure kept out of training and validation (for reported held-out results)")
    p.add_argument("--val-every", type=NON_NEGATIVE_INT, default=d.val_every)
    p.add_argument("--checkpoint-every", type=POSITIVE_INT, default=d.checkpoint_every)
    p.add_argument("--out", default=d.out, help="training checkpoint (its log goes to the same name .csv)")
    p.add_argument("--export", default=None, help="also write an inference-only copy here at the end")
    p.add_argument("--export-dtype", choices=["float16", "float32"], default=d.export_dtype)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="start afresh over an existing --out/--export")
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=SEED, default=d.seed)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``fewshotcx train``: build the config from the arguments, train, print the checkpoint path."""
    data = args.data if args.data is not None else ([] if args.images else ["synthetic"])
    config = TrainConfig(
        data=data, images=args.images, labels=args.labels, init=args.init, steps=args.steps, width=args.width,
        size=args.size, context=args.context, volume_cache=args.volume_cache, max_seconds=args.max_seconds, pixel_mm=args.pixel_mm, context_mm=args.context_mm, support_size=args.support_size, queries=args.queries,
        episodes_per_step=args.episodes_per_step, lr=args.lr, schedule=args.schedule, warmup=args.warmup,
        synthetic_ratio=args.synthetic_ratio, synthetic_families=args.synthetic_families, axes=args.axes,
        holdout_volumes=args.holdout_volume, holdout_structures=args.holdout_structure,
        report_volumes=args.report_volume, report_structures=args.report_structure, val_every=args.val_every,
        checkpoint_every=args.checkpoint_every, out=args.out, export=args.export, export_dtype=args.export_dtype,
        resume=args.resume, overwrite=args.overwrite, device=args.device, seed=args.seed, progress=not args.no_progress,
    )
    check_paths(args)
    print(f"wrote {loop.train(config)}")


def check_paths(args: argparse.Namespace) -> None:
    """The inputs exist and the outputs can be written (whether they may be replaced is the training
    loop's check: ``--resume`` continues an existing checkpoint)."""
    for option in ("images", "labels"):
        for path in getattr(args, option):
            check_input(path, f"--{option}")
    check_output_file(args.out, "--out", (".pt",), overwrite=True, create_parent=True)
    if args.export is not None:
        check_output_file(args.export, "--export", (".pt",), overwrite=True, create_parent=True)
    if args.volume_cache is not None and not Path(args.volume_cache).expanduser().is_file():
        check_output_file(args.volume_cache, "--volume-cache", (".npz",), overwrite=False)
