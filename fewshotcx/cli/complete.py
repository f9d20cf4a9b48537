"""``fewshotcx complete``: finish a contour drawn on a few axial slices of the same volume.

``--slices`` counts slices the way the file stores them: index ``k`` along the file's own third array
axis (what most viewers call slice ``k`` of an axial series). That axis must be the
superior–inferior one; files stored inferior-first or superior-first both work (the index is mapped
to the canonical axial index, ``Z-1-k`` for superior-first storage). A file whose third axis is
left–right or anterior–posterior is refused: reorient it. ``Segmenter.complete`` takes the same
numbers (:func:`fewshotcx.io.grid.canonical_axial_slices`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError, add_model_options, check_input


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx complete``."""
    p = subparsers.add_parser("complete", help="finish a structure drawn on a few axial slices")
    p.add_argument("--image", required=True, help="the volume being contoured (NIfTI, NRRD or DICOM directory)")
    p.add_argument("--drawn", required=True, help="label map on --image's grid with the drawn slices")
    p.add_argument("--slices", required=True, type=slice_list, metavar="K,K,...",
                   help="drawn slices: indices along the file's own third array axis (must be superior-inferior)")
    p.add_argument("--out", required=True, help="output label map (.nii or .nii.gz)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_model_options(p)
    p.set_defaults(func=run)


def slice_list(text: str) -> list[int]:
    """``"12,30,41"`` → ``[12, 30, 41]``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slices expects comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("--slices needs at least one slice index")
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"--slices are indices from 0, got {text!r}")
    return values


def run(args: argparse.Namespace) -> None:
    from ..io.volume import load_volume, save_volume
    from ..segmenter import Segmenter
    from .predict import check_output, model_options

    check_input(args.image, "--image")
    check_input(args.drawn, "--drawn")
    out, _ = check_output(Path(args.out), args.overwrite)
    options = model_options(args)
    image = load_volume(args.image, canonical=False)
    drawn = load_volume(args.drawn, label=True)
    if not image.canonical().same_grid(drawn, atol=1e-3 * max(1.0, max(image.spacing))):
        raise CliError(f"--drawn {args.drawn} is not on the grid of --image {args.image} "
                       f"(shape {drawn.shape} vs {image.canonical().shape} after reorientation, or different affines)")
    seg = Segmenter(device=args.device, axis=args.axis, seed=args.seed, modality=args.modality, **options)
    save_volume(seg.complete(image, drawn, args.slices), out, overwrite=args.overwrite)
    print(f"wrote {out}")
