"""``fewshotcx train``: episodic in-context training and fine-tuning of UniverSeg from the command line."""

from __future__ import annotations

import argparse

from ..training import loop
from ..training.config import DATA_SOURCES, TrainConfig


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
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--width", type=int, default=d.width, help="features per CrossBlock for a new model (v1: 64)")
    p.add_argument("--size", type=int, default=None, help="slice size (default: the init checkpoint's, else 64)")
    p.add_argument("--context", type=int, default=None, help="2.5D neighbour slices each side")
    p.add_argument("--volume-cache", default=None, metavar="FILE.npz",
                   help="the real sources' loaded volumes: read from FILE when it exists, else written there "
                        "(carry a run to a machine without the data sources)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="time budget: stop when it is spent, the learning rate decaying to 0 by then")
    p.add_argument("--pixel-mm", type=float, default=None,
                   help="physical framing: in-plane pixel size in mm around the body (default: the init "
                        "checkpoint's, else the field-of-view fit)")
    p.add_argument("--context-mm", type=float, default=None, help="distance of 2.5D neighbours in mm")
    p.add_argument("--support-size", type=_support_range, default=d.support_size, metavar="N|MIN:MAX")
    p.add_argument("--queries", type=int, default=d.queries, help="query slabs per episode")
    p.add_argument("--episodes-per-step", type=int, default=d.episodes_per_step)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--schedule", choices=["cosine", "constant"], default=d.schedule)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--synthetic-ratio", type=float, default=d.synthetic_ratio)
    p.add_argument("--synthetic-families", type=int, default=d.synthetic_families)
    p.add_argument("--axes", nargs="+", choices=["axial", "coronal", "sagittal"], default=d.axes)
    p.add_argument("--holdout-volume", action="append", default=[], help="volume name kept for validation only")
    p.add_argument("--holdout-structure", action="append", default=[], help="structure kept for validation only")
    p.add_argument("--report-volume", action="append", default=[],
                   help="volume kept out of training and validation (for reported held-out results)")
    p.add_argument("--report-structure", action="append", default=[],
                   help="structure kept out of training and validation (for reported held-out results)")
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--out", default=d.out, help="training checkpoint (its log goes to the same name .csv)")
    p.add_argument("--export", default=None, help="also write an inference-only copy here at the end")
    p.add_argument("--export-dtype", choices=["float16", "float32"], default=d.export_dtype)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="start afresh over an existing --out/--export")
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
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
    print(f"wrote {loop.train(config)}")
