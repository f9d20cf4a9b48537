"""``fewshotcx predict``: segment a query volume from labelled support volumes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .common import (POSITIVE_INT, CliError, add_model_options, check_input, check_output_dir, check_output_file,
                     check_support, structure_names, support_pair)

#: Suffixes of label-map outputs.
NIFTI = (".nii", ".nii.gz")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx predict``."""
    p = subparsers.add_parser("predict", help="segment a query volume from labelled support volumes")
    p.add_argument("--image", required=True, help="query volume (NIfTI, NRRD or DICOM directory)")
    p.add_argument("--support", required=True, action="append", type=support_pair,
                   metavar="IMAGE:LABEL", help="a labelled support volume, or a previous plan CT_DIR:RS.dcm "
                   "(a DICOM series folder and an RTSTRUCT drawn on it); repeat for more")
    p.add_argument("--structures", default=None, metavar="A,B,...",
                   help="structures to learn from the support RTSTRUCTs (TG-263 synonyms match, e.g. Lung_L "
                        "finds Lung-Left) and the names of the outputs; label value i is the i-th name")
    p.add_argument("--template", default=None, metavar="NAME|FILE",
                   help="structure template (shipped: cervix, thorax; or a .toml file): structure names and "
                        "order unless --structures is given, colours, interpreted types and derived "
                        "structures (PTV = CTV + margin, written into RTSTRUCTs)")
    p.add_argument("--out", required=True,
                   help="output: label map (.nii/.nii.gz, with X.structures.json naming the values when "
                        "--structures is given), RTSTRUCT (.dcm) or DICOM SEG (.seg.dcm); DICOM outputs need "
                        "a DICOM series as --image")
    p.add_argument("--deidentify", default=None, metavar="SERIES_DIR",
                   help="write the RTSTRUCT de-identified (PS3.15 Basic Profile, UIDs kept) and a copy of the "
                        "query series de-identified the same way into SERIES_DIR; default: the RTSTRUCT is in "
                        "the query's patient and study")
    p.add_argument("--proba", action="store_true", help="write foreground probabilities instead of labels")
    p.add_argument("--uncertainty", default=None, metavar="OUT.nii.gz",
                   help="also write per-voxel uncertainty (entropy over independent support draws)")
    p.add_argument("--draws", type=POSITIVE_INT, default=None,
                   help="independent support draws for --uncertainty (default: the library's, see docs/review.md)")
    p.add_argument("--overwrite", action="store_true", help="replace --out (and --uncertainty) if they exist")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..segmenter import Segmenter
    from ..io.volume import load_volume, save_volume
    from ..rt.names import default_names

    out, kind, uncertainty, names, options = check_arguments(args)
    template = args.template
    images, labels = support_volumes(args.support, names)
    query = load_volume(args.image)
    seg = Segmenter(device=args.device, axis=args.axis, seed=args.seed, modality=args.modality, **options)
    seg.fit(images=list(images), labels=list(labels))
    result = seg.predict_proba(query) if args.proba else seg.predict(query)
    if isinstance(result, dict):
        raise CliError("--proba writes one structure; the support has several label values")
    write_prediction(result, names or default_names(max(seg.classes)), out, kind, args, template)
    if uncertainty is not None:
        draws = {} if args.draws is None else {"draws": args.draws}
        save_volume(seg.predict_uncertainty(query, **draws), uncertainty, overwrite=args.overwrite)
        print(f"wrote {uncertainty}")


def check_arguments(args: argparse.Namespace) -> tuple[Path, str, Optional[Path], Optional[list[str]], dict]:
    """Every argument of ``predict`` checked before any work: ``(out, its kind, uncertainty output or
    None, structure names or None, Segmenter options)``; ``args.template`` becomes the loaded template."""
    check_input(args.image, "--image")
    check_support(args.support)
    out, kind = check_output(Path(args.out), args.overwrite, dicom_ok=True)
    uncertainty = None if args.uncertainty is None else check_output(Path(args.uncertainty), args.overwrite,
                                                                      "--uncertainty")[0]
    if uncertainty is not None and uncertainty.resolve() == out.resolve():
        raise CliError("--uncertainty needs its own file")
    args.template, names = template_structures(args.template, structure_list(args.structures))
    check_named_outputs(args, out, kind, names)
    return out, kind, uncertainty, names, model_options(args)


def structure_list(text: Optional[str]) -> Optional[list[str]]:
    """``--structures A,B`` (:func:`~fewshotcx.cli.common.structure_names`) → checked names in label
    order, or None.

    Raises:
        CliError: not the names of label values 1, 2, … (predict numbers structures in the order given).
    """
    if text is None:
        return None
    from ..rt.names import check_names

    try:
        values = structure_names(text)
    except argparse.ArgumentTypeError as exc:
        raise CliError(str(exc)) from None
    if sorted(values) != list(range(1, len(values) + 1)):
        raise CliError("--structures: the structures are labelled 1, 2, ... in the order given; write A,B,...")
    return check_names([values[value] for value in sorted(values)])


def template_structures(template: Optional[str], names: Optional[list[str]]) -> tuple[object, Optional[list[str]]]:
    """``--template`` and ``--structures`` → ``(Template or None, names to predict or None)``: the
    template's structures unless names are given (then the template restricted to them)."""
    if template is None:
        return None, names
    from ..rt.templates import load_template

    found = load_template(template)
    found = found if names is None else found.select(names)
    return found, found.predicted


def check_named_outputs(args: argparse.Namespace, out: Path, kind: str, names: Optional[list[str]]) -> None:
    """Refuse, before any work, what cannot be written: DICOM outputs without a DICOM query, --proba into
    DICOM, --deidentify without an RTSTRUCT output, existing sidecars or de-identified series."""
    from ..rt.structures import sidecar_path

    if kind != "nifti":
        if not Path(args.image).is_dir():
            raise CliError(f"--out {out.name} writes DICOM on the query series: --image must be a DICOM series folder")
        if args.proba:
            raise CliError("--proba writes probabilities: use a .nii.gz --out")
    if args.deidentify is not None:
        target = Path(args.deidentify)
        if kind != "rtstruct":
            raise CliError("--deidentify goes with an RTSTRUCT --out (.dcm)")
        check_output_dir(target, "--deidentify", must_be_empty=not args.overwrite)
    if kind == "nifti" and names is not None and sidecar_path(out).exists() and not args.overwrite:
        raise CliError(f"{sidecar_path(out)} exists; pass --overwrite to replace it")
    if args.proba and names is not None and len(names) > 1:
        raise CliError("--proba writes one structure; --structures names several")


def support_volumes(pairs: Sequence[tuple[str, str]], names: Optional[list[str]]) -> tuple[list, list]:
    """Support images and label maps: plans read through ``--structures``, label maps as they are."""
    from ..rt.structures import is_rtstruct, support_from

    plans = [label for _, label in pairs if is_rtstruct(label)]
    if plans and names is None:
        raise CliError(f"--support {plans[0]} is an RTSTRUCT: say which structures to learn with --structures")
    if names is None:
        return [image for image, _ in pairs], [label for _, label in pairs]
    images, labels = [], []
    for image, label in pairs:
        volume, label_map = support_from(image, label, names)
        images.append(volume)
        labels.append(label_map)
    return images, labels


def write_prediction(result, names: list[str], out: Path, kind: str, args: argparse.Namespace,
                     template=None) -> None:
    """Write the label map (and sidecar), RTSTRUCT or SEG (``template``: a structure template, whose
    derived structures only RTSTRUCTs hold); prints one line per file."""
    from .. import rt
    from ..io.volume import save_volume

    derived = [s.name for s in template.structures if s.source is not None] if template is not None else []
    if kind == "rtstruct":
        rt.write_structures(result, names, args.image, out, overwrite=args.overwrite,
                            deidentify=args.deidentify is not None, template=template)
        names = [s.name for s in template.structures] if template is not None else names
        if args.deidentify is not None:
            rt.deidentify_series(args.image, args.deidentify, overwrite=args.overwrite)
            print(f"wrote {args.deidentify} (de-identified query series)")
    elif kind == "seg":
        rt.write_seg(result, names, args.image, out, overwrite=args.overwrite)
    elif args.structures is not None or template is not None:
        rt.save_labels(result, names, out, overwrite=args.overwrite)
    else:
        save_volume(result, out, overwrite=args.overwrite)
    print(f"wrote {out}" + (f": {', '.join(names)}" if args.structures or template else ""))
    if derived and kind != "rtstruct":
        print(f"note: {', '.join(derived)} (derived by a margin) are written into RTSTRUCT outputs only")


def check_output(out: Path, overwrite: bool, option: str = "--out", dicom_ok: bool = False) -> tuple[Path, str]:
    """An output path that may be written (:func:`~fewshotcx.cli.common.check_output_file`) and its kind
    (``nifti``, ``rtstruct``, ``seg``)."""
    check_output_file(out, option, NIFTI + ((".dcm",) if dicom_ok else ()), overwrite)
    name = out.name.lower()
    return out, "seg" if name.endswith(".seg.dcm") else "rtstruct" if name.endswith(".dcm") else "nifti"


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
