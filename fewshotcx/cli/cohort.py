"""``fewshotcx cohort``: segment every patient of a CSV manifest on Ray (resumable, fault-tolerant)."""

from __future__ import annotations

import argparse

from .common import (NON_NEGATIVE, POSITIVE_INT, CliError, add_model_options, check_input, check_output_dir,
                     check_support, support_pair)
from .predict import model_options, structure_list, support_volumes

#: ``add_model_options`` destinations passed to :class:`~fewshotcx.Segmenter` as they are (the
#: others go through :func:`~fewshotcx.cli.predict.model_options`, exactly as for ``predict``).
_SEGMENTER_OPTIONS = ("device", "axis", "seed", "modality")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx cohort``."""
    p = subparsers.add_parser(
        "cohort", help="segment a cohort listed in a CSV manifest, in parallel on Ray (resumable)",
        description="Writes OUT/<id>.nii.gz per patient (and OUT/<id>.rtstruct.dcm for DICOM series) and "
                    "OUT/results.csv; a rerun skips patients already done with the same inputs and options. "
                    "Needs the cohort extra: pip install 'fewshotcx[cohort]'.")
    p.add_argument("--manifest", required=True, help="CSV with columns id,image (or series) and optional reference")
    p.add_argument("--support", required=True, action="append", type=support_pair,
                   metavar="IMAGE:LABEL", help="a labelled support volume, or a previous plan CT_DIR:RS.dcm "
                   "with --structures (repeat for more)")
    p.add_argument("--structures", default=None, metavar="A,B,...",
                   help="structures to learn from the support plans; the ROI names of every patient's RTSTRUCT")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster ('auto' or HOST:PORT); default: a private local one")
    p.add_argument("--workers", type=POSITIVE_INT, default=None,
                   help="worker processes (default: one per GPU, else one per --cpus-per-worker CPUs)")
    p.add_argument("--gpus-per-worker", type=NON_NEGATIVE, default=None,
                   help="GPUs per worker (default 1 when the cluster has GPUs, else 0; fractions share a GPU)")
    p.add_argument("--cpus-per-worker", type=POSITIVE_INT, default=1, help="CPUs (torch threads) per worker")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every patient and replace existing outputs")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from .. import cohort

    try:
        cohort.require_ray()
    except ImportError as exc:
        raise CliError(str(exc)) from None
    check_input(args.manifest, "--manifest", folder=False)
    check_support(args.support)
    check_output_dir(args.out, "--out")
    options = {**{name: getattr(args, name) for name in _SEGMENTER_OPTIONS}, **model_options(args)}
    names = structure_list(args.structures)
    support = list(zip(*support_volumes(args.support, names)))
    results = cohort.run(args.manifest, support=support, out_dir=args.out, address=args.address, structures=names,
                         workers=args.workers, segmenter_options=options, overwrite=args.overwrite,
                         gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker)
    print(results.summary())
    failed = results.count("failed")
    if failed:
        raise CliError(f"{failed} of {len(results.rows)} patients failed; see the error column of {results.path}")
