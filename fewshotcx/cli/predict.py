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
    p.add_argument("--uncertainty", default=None, metavar="OUT.nii.gz",
                   help="also write per-voxel uncertainty (entropy over independent support draws)")
    p.add_argument("--draws", type=int, default=8, help="independent support draws for --uncertainty")
    p.add_argument("--overwrite", action="store_true", help="replace --out (and --uncertainty) if they exist")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..segmenter import Segmenter
    from ..io.volume import load_volume, save_volume

    out = check_output(Path(args.out), args.overwrite)
    uncertainty = None if args.uncertainty is None else check_output(Path(args.uncertainty), args.overwrite,
                                                                      "--uncertainty")
    if uncertainty is not None and (uncertainty.resolve() == out.resolve() or args.draws < 1):
        raise CliError("--uncertainty needs its own file and --draws >= 1")
    query = load_volume(args.image)
    images, labels = zip(*args.support)
    seg = Segmenter(device=args.device, axis=args.axis, seed=args.seed, modality=args.modality, **model_options(args))
    seg.fit(images=list(images), labels=list(labels))
    result = seg.predict_proba(query) if args.proba else seg.predict(query)
    if isinstance(result, dict):
        raise CliError("--proba writes one structure; the support has several label values")
    save_volume(result, out, overwrite=args.overwrite)
    print(f"wrote {out}")
    if uncertainty is not None:
        save_volume(seg.predict_uncertainty(query, k=args.draws), uncertainty, overwrite=args.overwrite)
        print(f"wrote {uncertainty}")


def check_output(out: Path, overwrite: bool, option: str = "--out") -> Path:
    """A NIfTI output path that may be written: right suffix, directory present, no silent overwrite."""
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise CliError(f"{option} must end in .nii or .nii.gz: {out}")
    if out.exists() and not overwrite:
        raise CliError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise CliError(f"output directory does not exist: {out.parent}")
    return out


def model_options(args: argparse.Namespace) -> dict:
    """Segmenter keyword arguments from :func:`~fewshotcx.cli.common.add_model_options`'s options
    (everything but ``device``/``axis``/``seed``/``modality``; ``fewshotcx cohort`` uses it too)."""
    extra = {"sam_weights": args.sam_weights or "official"} if args.backend == "universeg+sam" else {}
    if args.backend == "sam2":
        if args.config is None or args.weights in ("default", "official"):
            raise CliError("--backend sam2 needs --weights CHECKPOINT and --config CONFIG (e.g. sam2.1_hiera_t, medsam2)")
        extra["config"] = args.config
    if args.backend == "atlas":
        extra["fusion"] = args.fusion
    if args.registration is not None:
        if args.backend not in ("atlas", "universeg", "universeg+atlas"):
            raise CliError(f"--registration applies to --backend atlas, universeg or universeg+atlas, not {args.backend}")
        extra["registration"] = args.registration
    if args.strategy is not None:
        extra["strategy"] = args.strategy
    return dict(backend=args.backend, weights=args.weights, support_size=args.support_size, ensemble=args.ensemble,
                **extra)
