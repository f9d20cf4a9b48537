"""Radiotherapy sub-commands of the ``fewshotcx`` console script: ``margin``, ``rtstruct`` and ``evaluate``.

:mod:`fewshotcx.cli.main` calls :func:`register` with its subparsers; each command's function raises ``ValueError``,
``VolumeError`` or ``FileExistsError`` on bad input and the entry point turns those into one-line errors.
"""

from __future__ import annotations

import argparse
import numpy as np

from .. import rt
from ..io.volume import load_volume, save_volume
from .common import NON_NEGATIVE, DeprecatedFlag, check_input, check_number, check_output_file

_AXES = {"lr": ("left", "right"), "ap": ("anterior", "posterior"), "si": ("superior", "inferior")}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``margin``, ``rtstruct`` and ``evaluate`` subcommands (``func`` set to their run functions)."""
    p = subparsers.add_parser(
        "margin", help="grow (or shrink) a mask by an exact margin in mm, e.g. CTV -> PTV",
        description="Exact Euclidean margins in world directions (any voxel layout). Later options "
                    "override earlier ones: --margin, then --margin-lr/-ap/-si, then --directions.")
    p.add_argument("--mask", required=True, help="binary mask (NIfTI/NRRD/DICOM folder)")
    p.add_argument("--margin", type=NON_NEGATIVE, help="isotropic margin in mm")
    for axis, (a, b) in _AXES.items():
        p.add_argument(f"--margin-{axis}", type=NON_NEGATIVE, help=f"margin in mm towards both {a} and {b}")
    p.add_argument("--directions", help="per-direction margins in mm, e.g. anterior=5,posterior=3,superior=10")
    p.add_argument("--shrink", action="store_true", help="erode by the margin instead of growing")
    p.add_argument("--subtract", action="append", default=[], metavar="MASK",
                   help="remove this structure (e.g. an organ at risk) from the result; repeatable")
    p.add_argument("--out", required=True, help="output mask (.nii.gz), written in the input's layout")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run_margin)

    p = subparsers.add_parser(
        "rtstruct", help="write masks as a DICOM RT Structure Set on an image series",
        description="Contours every mask slice (holes as separate contours) in patient coordinates of "
                    "the referenced series, in the series' patient and study (--deidentify for a "
                    "de-identified file).")
    p.add_argument("--mask", action="append", required=True, metavar="NAME=PATH",
                   help="ROI name and mask file on the series' grid; repeatable")
    p.add_argument("--series", required=True, help="folder of the DICOM image series")
    p.add_argument("--out", required=True, help="output RTSTRUCT file (.dcm)")
    p.add_argument("--deidentify", action="store_true",
                   help="de-identify the file (PS3.15 Basic Profile, Retain UIDs) instead of copying the series' "
                        "patient and study (which planning systems match on)")
    p.add_argument("--keep-patient-identity", action=DeprecatedFlag, help=argparse.SUPPRESS,
                   const="the series' patient and study are kept by default now")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run_rtstruct)

    p = subparsers.add_parser(
        "evaluate", help="compare structures (RTSTRUCT or label map) with a reference: Dice, HD95, APL, ...",
        description="One CSV row per structure: dice, hd95 and assd (mm), surface Dice at --tolerance from surface "
                    "areas, added path length (apl, mm; Vaassen et al. 2020), volumes in cc, and a status. "
                    "Structures pair up by name (case, spaces, underscores and TG-263 synonyms ignored); one "
                    "present on one side only gets status missing_in_prediction/missing_in_reference.")
    p.add_argument("--reference", required=True, help="reference RTSTRUCT (.dcm) or label map (+ .structures.json)")
    p.add_argument("--prediction", required=True, help="predicted RTSTRUCT (.dcm) or label map (+ .structures.json)")
    p.add_argument("--image", required=True, help="the image both lie on: DICOM series folder (needed for "
                   "RTSTRUCTs) or volume file")
    p.add_argument("--structures", default=None, metavar="A,B,...", help="only these structures (default: all)")
    p.add_argument("--tolerance", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)")
    p.add_argument("--apl-tolerance", type=float, default=0.0,
                   help="in-plane distance in mm within which a reference contour pixel needs no editing (default 0)")
    p.add_argument("--out", required=True, help="output table (.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run_evaluate)


def margin_spec(args: argparse.Namespace) -> dict[str, float]:
    """Per-direction margins in mm from the ``margin`` options (raises ValueError if none is given)."""
    if args.margin is None and args.directions is None and all(
            getattr(args, f"margin_{axis}") is None for axis in _AXES):
        raise ValueError("give a margin: --margin, --margin-lr/--margin-ap/--margin-si or --directions")
    spec = {name: float(args.margin or 0.0) for name in rt.DIRECTIONS}
    for axis, names in _AXES.items():
        value = getattr(args, f"margin_{axis}")
        if value is not None:
            spec.update(dict.fromkeys(names, value))
    for item in (args.directions or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in rt.DIRECTIONS:
            raise ValueError(f"--directions item {item!r} is not NAME=MM with NAME in {', '.join(rt.DIRECTIONS)}")
        try:
            spec[name] = check_number(float(value), f"--directions {name}", low=0)
        except ValueError:
            raise ValueError(f"--directions item {item!r}: {value!r} is not a number of mm") from None
    return spec


def run_margin(args: argparse.Namespace) -> int:
    """``fewshotcx margin``: load, expand/shrink, subtract, save; prints one summary line."""
    out = check_output_file(args.out, "--out", (".nii", ".nii.gz"), args.overwrite)
    spec = margin_spec(args)
    check_input(args.mask, "--mask")
    for path in args.subtract:
        check_input(path, "--subtract")
    mask = load_volume(args.mask, label=True)
    result = (rt.shrink_margin if args.shrink else rt.expand_margin)(mask, spec)
    if args.subtract:
        result = rt.subtract(result, rt.union(*(load_volume(p, label=True) for p in args.subtract)))
    save_volume(result, out, overwrite=args.overwrite)
    voxels = int(np.count_nonzero(result.array))
    print(f"wrote {out}: {voxels} voxels, {voxels * np.prod(result.spacing) / 1000:.2f} ml")
    return 0


def run_rtstruct(args: argparse.Namespace) -> int:
    """``fewshotcx rtstruct``: write ``NAME=PATH`` masks as an RTSTRUCT on ``--series``."""
    check_input(args.series, "--series", folder=True)
    check_output_file(args.out, "--out", (".dcm",), args.overwrite)
    paths = {}
    for item in args.mask:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path:
            raise ValueError(f"--mask {item!r} is not NAME=PATH")
        if name in paths:
            raise ValueError(f"ROI name {name!r} is given twice")
        paths[name] = check_input(path, "--mask")
    masks = {name: load_volume(path, label=True) for name, path in paths.items()}
    out = rt.write_rtstruct(masks, args.series, args.out, overwrite=args.overwrite,
                            deidentify=args.deidentify)
    print(f"wrote {out}: {len(masks)} ROI(s) on series {args.series}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``fewshotcx evaluate``: the per-structure table of :func:`fewshotcx.rt.evaluate_structures`."""
    from ..io.tables import write_csv
    from ..rt.names import check_names, match_structure

    out = check_output_file(args.out, "--out", (".csv",), args.overwrite)
    for option in ("image", "reference", "prediction"):
        check_input(getattr(args, option), f"--{option}")
    check_number(args.tolerance, "--tolerance (mm)", low=0)
    check_number(args.apl_tolerance, "--apl-tolerance (mm)", low=0)
    wanted = None if args.structures is None else check_names(args.structures.split(","))
    image = load_volume(args.image)
    sides = {}
    for option in ("reference", "prediction"):
        masks = rt.structure_masks(getattr(args, option), args.image)
        for name, mask in masks.items():
            if not mask.same_grid(image):
                raise ValueError(f"--{option} structure {name!r} is not on the grid of --image {args.image}")
        if wanted is not None:
            found = {name: match_structure(name, list(masks), str(getattr(args, option)), missing_ok=True)
                     for name in wanted}
            masks = {name: masks[roi] for name, roi in found.items() if roi is not None}
        sides[option] = masks
    rows = rt.evaluate_structures(prediction=sides["prediction"], reference=sides["reference"],
                                  tolerance=args.tolerance, apl_tolerance=args.apl_tolerance)
    write_csv(rows, out, overwrite=args.overwrite)
    ok = [r for r in rows if r["status"] == "ok"]
    print(f"wrote {out}: {len(rows)} structure(s), {len(ok)} scored"
          + (f", mean Dice {np.mean([r['dice'] for r in ok]):.3f}" if ok else ""))
    return 0
