"""``fewshotcx compare``: every method on the same labelled patients, one results table.

Runs :func:`fewshotcx.baselines.compare.compare` (the same code as ``benchmarks/seed_comparison.py``)
and writes ``OUT/predictions/<query>/<method>.nii.gz`` and ``OUT/results.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (POSITIVE_INT, SEED, CliError, DeprecatedAlias, check_input, check_output_dir, check_support,
                     structure_names, support_pair)


def _query(text: str) -> tuple[str, object]:
    """``IMAGE[:REFERENCE]`` → ``(image, reference or None)`` (a colon only splits before an existing file)."""
    image, sep, ref = text.rpartition(":")
    if sep and image and ref and not Path(text).exists():
        return image, ref
    return text, None


def check_arguments(args: argparse.Namespace) -> Path:
    """Every input and output of ``compare`` checked before any work; returns the output folder."""
    check_support(args.support)
    for image, reference in args.query:
        check_input(image, "--query")
        if reference is not None:
            check_input(reference, "--query")
    if args.totalseg_masks is not None:
        check_input(args.totalseg_masks, "--totalseg-masks", folder=True)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise CliError(f"output directory's parent does not exist: {out.parent}")
    return check_output_dir(out, "--out", must_be_empty=not args.overwrite)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx compare``."""
    from ..baselines.compare import METHODS, Options

    defaults = Options()
    p = subparsers.add_parser("compare", help="compare methods (UniverSeg, SAM, nnU-Net, U-Net, ...) on the same "
                                              "labelled patients")
    p.add_argument("--support", required=True, action="append", type=support_pair, metavar="IMAGE:LABEL",
                   help="a labelled patient (repeat for more)")
    p.add_argument("--query", required=True, action="append", type=_query, metavar="IMAGE[:REFERENCE]",
                   help="a volume to segment, with its reference label map to score against (repeat for more)")
    p.add_argument("--methods", default="universeg,unet,label-fusion",
                   help=f"comma-separated, from: {', '.join(METHODS)} (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder (predictions/ and results.csv)")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out, replacing its files")
    p.add_argument("--structures", type=structure_names, default=None, metavar="A,B,...",
                   help="names of label values 1, 2, ... in order (or VALUE=NAME,... for other values); "
                        "needed to match TotalSegmentator's classes")
    p.add_argument("--weights", default=defaults.weights, help="UniverSeg weights: 'default', 'official' or a path")
    p.add_argument("--sam-weights", default=None, help="SAM checkpoint (the sam method is skipped without one)")
    p.add_argument("--sam-checkpoint", dest="sam_weights", action=DeprecatedAlias, help=argparse.SUPPRESS)
    p.add_argument("--device", default=defaults.device, help="'cpu' or 'cuda'")
    p.add_argument("--modality", default=defaults.modality, choices=["auto", "ct", "mr"])
    p.add_argument("--unet-steps", type=POSITIVE_INT, default=defaults.unet_steps)
    p.add_argument("--nnunet-configuration", default=defaults.nnunet_configuration, choices=["2d", "3d_fullres"])
    p.add_argument("--nnunet-epochs", type=POSITIVE_INT, default=defaults.nnunet_epochs)
    p.add_argument("--nnunet-iterations", type=POSITIVE_INT, default=defaults.nnunet_iterations,
                   help="training iterations per nnU-Net epoch (nnU-Net's default: 250)")
    p.add_argument("--interpolation-step", type=POSITIVE_INT, default=defaults.interpolation_step)
    p.add_argument("--totalseg-masks", default=None, metavar="DIR",
                   help="TotalSegmentator outputs to score (DIR/<query>/<class>.nii.gz, or DIR/ for one query)")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..baselines.compare import Options, check_methods, compare, load_run, write_results

    methods = check_methods([m.strip() for m in args.methods.split(",") if m.strip()])
    out = check_arguments(args)
    run_ = load_run(args.support, args.query, args.structures)
    options = Options(weights=args.weights, sam_weights=args.sam_weights, device=args.device,
                      modality=args.modality, unet_steps=args.unet_steps,
                      nnunet_configuration=args.nnunet_configuration, nnunet_epochs=args.nnunet_epochs,
                      nnunet_iterations=args.nnunet_iterations, interpolation_step=args.interpolation_step,
                      totalseg_masks=args.totalseg_masks, seed=args.seed)
    predictions = out / "predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    rows = compare(run_, methods, options, predictions, overwrite=args.overwrite)
    write_results(rows, out / "results.csv", overwrite=args.overwrite)
    print(f"wrote {out / 'results.csv'} ({len(rows)} rows) and predictions in {predictions}")
