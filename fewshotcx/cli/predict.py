"""``fewshotcx predict``: segment a query volume from labelled support volumes."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError, add_model_options, support_pair


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx predict``."""
    p = subparsers.add_parser("predict", help="segment a query volume from labelled support volumes")
    p.add_argument("--image", required=True, help="query volume (NIfTI, NRRD or DICOM directory)")
    p.add_argument("--support", required=True, action="append", type=support_pair,
                   metavar="IMAGE:LABEL", help="a labelled support volume (repeat for more)")
    p.add_argument("--out", required=True, help="output label map (.nii or .nii.gz)")
    p.add_argument("--proba", action="store_true", help="write foreground probabilities instead of labels")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..segmenter import Segmenter
    from ..io.volume import load_volume, save_volume

    out = Path(args.out)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise CliError(f"--out must end in .nii or .nii.gz: {out}")
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise CliError(f"output directory does not exist: {out.parent}")
    query = load_volume(args.image)
    images, labels = zip(*args.support)
    extra = {"sam_weights": args.sam_weights or "official"} if args.backend == "universeg+sam" else {}
    if args.backend == "atlas":
        extra = {"fusion": args.fusion, "registration": args.registration}
    if args.strategy is not None:
        extra["strategy"] = args.strategy
    seg = Segmenter(backend=args.backend, weights=args.weights, device=args.device, axis=args.axis,
                    support_size=args.support_size, ensemble=args.ensemble, seed=args.seed,
                    modality=args.modality, **extra)
    seg.fit(images=list(images), labels=list(labels))
    result = seg.predict_proba(query) if args.proba else seg.predict(query)
    if isinstance(result, dict):
        raise CliError("--proba writes one structure; the support has several label values")
    save_volume(result, out, overwrite=args.overwrite)
    print(f"wrote {out}")
