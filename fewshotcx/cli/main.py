"""``fewshotcx`` console script.

Every user error (bad path, mismatched grids, an existing output without ``--overwrite``, a missing
checkpoint) is reported as one line on stderr with exit status 2, and no output file is written.
Set ``FEWSHOTCX_DEBUG=1`` to get the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..io.volume import VolumeError

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _support_pair(text: str) -> tuple[str, str]:
    image, sep, label = text.rpartition(":")
    if not sep or not image or not label:
        raise argparse.ArgumentTypeError(f"--support expects IMAGE:LABEL, got {text!r}")
    return image, label


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="universeg", choices=["universeg", "sam", "universeg+sam"])
    p.add_argument("--sam-weights", default=None, help="SAM checkpoint for --backend universeg+sam")
    p.add_argument("--weights", default="default", help="'default', 'official' or a checkpoint path")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal", "all"])
    p.add_argument("--support-size", type=int, default=None)
    p.add_argument("--ensemble", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", default="auto", choices=["auto", "ct", "mr"])


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fewshotcx", description="Few-shot in-context segmentation of 3D medical images.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment a query volume from labelled support volumes")
    p.add_argument("--image", required=True, help="query volume (NIfTI, NRRD or DICOM directory)")
    p.add_argument("--support", required=True, action="append", type=_support_pair,
                   metavar="IMAGE:LABEL", help="a labelled support volume (repeat for more)")
    p.add_argument("--out", required=True, help="output label map (.nii or .nii.gz)")
    p.add_argument("--proba", action="store_true", help="write foreground probabilities instead of labels")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_model_options(p)
    p.set_defaults(func=run_predict)

    p = sub.add_parser("demo", help="run the bundled model on real package-shipped data")
    p.add_argument("--out", default="demo-output", help="output directory")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_demo)

    p = sub.add_parser("weights", help="list, locate or verify checkpoints")
    p.add_argument("action", choices=["list", "locate", "verify"])
    p.add_argument("name", nargs="?", help="registry name or path (locate/verify)")
    p.set_defaults(func=run_weights)

    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands():
    """Subcommands contributed by other modules (training, radiotherapy)."""
    from . import rt as cli_rt
    from ..training import loop as training

    return [training.register_cli, cli_rt.register]


def run_predict(args: argparse.Namespace) -> None:
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
    seg = Segmenter(backend=args.backend, weights=args.weights, device=args.device, axis=args.axis,
                    support_size=args.support_size, ensemble=args.ensemble, seed=args.seed,
                    modality=args.modality, **extra)
    seg.fit(images=list(images), labels=list(labels))
    result = seg.predict_proba(query) if args.proba else seg.predict(query)
    if isinstance(result, dict):
        raise CliError("--proba writes one structure; the support has several label values")
    save_volume(result, out, overwrite=args.overwrite)
    print(f"wrote {out}")


def run_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo as demo

    demo(Path(args.out), device=args.device)


def run_weights(args: argparse.Namespace) -> None:
    from ..models import weights

    if args.action == "list":
        for ckpt in weights.REGISTRY.values():
            path = weights.expected_path(ckpt)
            state = "present" if path.is_file() else "absent"
            print(f"{ckpt.name:20s} {ckpt.backend:9s} {state:8s} {path}  [{ckpt.licence}]")
        return
    if not args.name:
        raise CliError(f"'weights {args.action}' needs a registry name (see 'fewshotcx weights list') or a path")
    entry = weights.REGISTRY.get(args.name)
    path = weights.resolve(args.name, entry.backend if entry else "universeg", download=False)
    if args.action == "locate":
        print(path)
        return
    digest, size = weights.sha256_file(path), path.stat().st_size
    if entry is not None and entry.size_bytes is not None and size != entry.size_bytes:
        raise CliError(f"{path}: {size} bytes, expected {entry.size_bytes}")
    if entry is not None and entry.sha256 is not None and digest != entry.sha256:
        raise CliError(f"{path}: SHA-256 {digest} does not match the registry's {entry.sha256}")
    if entry is None or entry.backend == "universeg":
        weights.load_universeg(path)  # strict key and shape check
    pinned = "matches the registry" if entry is not None and entry.sha256 else "no pinned hash to compare"
    print(f"ok {path} ({size} bytes, sha256 {digest}; {pinned})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CliError, VolumeError, FileExistsError, FileNotFoundError, ValueError, RuntimeError) as exc:
        if os.environ.get("FEWSHOTCX_DEBUG"):
            raise
        print(f"fewshotcx {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fewshotcx: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

