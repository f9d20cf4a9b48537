"""What the sub-commands share: the user-error type, one-line argument errors, model options."""

from __future__ import annotations

import argparse

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def support_pair(text: str) -> tuple[str, str]:
    """``IMAGE:LABEL`` → ``(image, label)`` (the last colon splits, so Windows drive letters survive)."""
    image, sep, label = text.rpartition(":")
    if not sep or not image or not label:
        raise argparse.ArgumentTypeError(f"--support expects IMAGE:LABEL, got {text!r}")
    return image, label


def add_model_options(p: argparse.ArgumentParser) -> None:
    from ..backends import BACKENDS
    from ..pipeline.support import STRATEGIES

    p.add_argument("--backend", default="universeg", choices=list(BACKENDS))
    p.add_argument("--strategy", default=None, choices=list(STRATEGIES),
                   help="support selection for universeg backends (default: the backend's)")
    p.add_argument("--config", default=None, help="sam2 config for --backend sam2 (e.g. sam2.1_hiera_t, medsam2)")
    p.add_argument("--fusion", default="majority", choices=["majority", "staple", "weighted"],
                   help="label fusion for --backend atlas")
    p.add_argument("--registration", default=None, choices=["rigid", "affine", "deformable"],
                   help="registration for --backend atlas (default deformable) and for the universeg strategies "
                        "registered/auto (default affine)")
    p.add_argument("--sam-weights", default=None, help="SAM checkpoint for --backend universeg+sam")
    p.add_argument("--weights", default="default", help="'default', 'official' or a checkpoint path")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal", "all"])
    p.add_argument("--support-size", type=int, default=None)
    p.add_argument("--ensemble", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", default="auto", choices=["auto", "ct", "mr"])
