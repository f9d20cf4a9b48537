"""What the sub-commands share: the user-error type, one-line argument errors, model options, and the
up-front checks of arguments (numbers, input paths, output files and folders).

Every sub-command checks all of its arguments before it loads or writes anything, so a bad argument is
one line on stderr with exit status 2 and leaves nothing behind: numbers through the ``type=`` factories
below (argparse reports them) or :func:`check_number`, paths through :func:`check_input`,
:func:`check_output_file` and :func:`check_output_dir`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _number_problem(value: float, low: Optional[float], high: Optional[float], positive: bool) -> Optional[str]:
    """What is wrong with ``value`` for the range (``None`` when nothing is)."""
    if not math.isfinite(value):
        return "must be a finite number"
    if positive and value <= 0:
        return "must be positive"
    if low is not None and value < low:
        return f"must be >= {low}"
    if high is not None and value > high:
        return f"must be <= {high}"
    return None


def check_number(value: float, option: str, low: Optional[float] = None, high: Optional[float] = None,
                 positive: bool = False) -> float:
    """``value`` when it is finite, in ``[low, high]`` and (``positive``) above 0.

    Raises:
        CliError: naming ``option`` and the value.
    """
    problem = _number_problem(value, low, high, positive)
    if problem is not None:
        raise CliError(f"{option} {problem}, got {value}")
    return value


def number(kind: Callable[[str], float] = float, low: Optional[float] = None, high: Optional[float] = None,
           positive: bool = False) -> Callable[[str], float]:
    """An argparse ``type=``: ``kind`` (``int`` or ``float``) of the text, finite and in range (see
    :func:`check_number`), else a one-line usage error naming the option."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        problem = _number_problem(value, low, high, positive)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    return parse


#: ``type=`` for counts that must be at least 1 (steps, draws, workers, sessions).
POSITIVE_INT = number(int, low=1)
#: ``type=`` for counts that may be 0 (context slices, "every N steps" with 0 = never).
NON_NEGATIVE_INT = number(int, low=0)
#: ``type=`` for seeds (NumPy's ``SeedSequence`` takes non-negative integers).
SEED = number(int, low=0)
#: ``type=`` for TCP ports.
PORT = number(int, low=1, high=65535)
#: ``type=`` for finite positive amounts (limits, durations, sizes in mm).
POSITIVE = number(float, positive=True)
#: ``type=`` for finite amounts that may be 0 (tolerances, margins, fractions of a GPU).
NON_NEGATIVE = number(float, low=0)
#: ``type=`` for any finite number.
FINITE = number(float)

PathLike = Union[str, Path]


def check_input(path: PathLike, option: str, folder: Optional[bool] = None) -> Path:
    """An input that exists: a file (``folder=False``), a folder (``True``) or either (``None``, e.g. a
    volume file or a DICOM series folder).

    Raises:
        CliError: it is missing or of the wrong kind.
    """
    found = Path(path)
    if not found.exists():
        raise CliError(f"{option} {found}: no such file or folder")
    if folder is True and not found.is_dir():
        raise CliError(f"{option} {found} is not a folder")
    if folder is False and not found.is_file():
        raise CliError(f"{option} {found} is not a file")
    return found


def check_output_file(path: PathLike, option: str, suffixes: Sequence[str], overwrite: bool,
                      create_parent: bool = False) -> Path:
    """An output file that may be written: one of ``suffixes`` (lower case, e.g. ``(".nii", ".nii.gz")``),
    not a folder, absent unless ``overwrite``, in an existing writable folder (``create_parent``: a
    folder :func:`check_output_dir` accepts, for commands that create it).

    Raises:
        FileExistsError: it exists and ``overwrite`` is False. CliError: anything else, naming ``option``.
    """
    out = Path(path).expanduser()
    if not out.name.lower().endswith(tuple(suffixes)):
        raise CliError(f"{option} must end in {' or '.join(suffixes)}: {out}")
    if out.is_dir():
        raise CliError(f"{option} {out} is a folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if create_parent:
        check_output_dir(out.parent, option)
    elif not out.parent.is_dir():
        raise CliError(f"output directory does not exist: {out.parent}")
    elif not os.access(out.parent, os.W_OK | os.X_OK):
        raise CliError(f"{option}: cannot write into {out.parent}")
    return out


def check_output_dir(path: PathLike, option: str, must_be_empty: bool = False) -> Path:
    """An output folder that exists or can be created (its nearest existing ancestor is a writable
    folder); nothing is created here. With ``must_be_empty`` an existing folder must be empty (what
    a command without ``--overwrite`` asks of a folder it fills).

    Raises:
        CliError: naming ``option``.
    """
    out = Path(path).expanduser()
    if out.exists():
        if not out.is_dir():
            raise CliError(f"{option} {out} is not a folder")
        if must_be_empty and any(out.iterdir()):
            raise CliError(f"{option} {out} is not empty; pass --overwrite to write into it")
        ancestor = out
    else:
        ancestor = next(parent for parent in out.absolute().parents if parent.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise CliError(f"{option} {out} cannot be created or written: {ancestor} is not a writable folder")
    return out


def support_pair(text: str) -> tuple[str, str]:
    """``IMAGE:LABEL`` → ``(image, label)`` (the last colon splits, so Windows drive letters survive)."""
    image, sep, label = text.rpartition(":")
    if not sep or not image or not label:
        raise argparse.ArgumentTypeError(f"--support expects IMAGE:LABEL, got {text!r}")
    return image, label


def structure_names(text: str) -> dict[int, str]:
    """``--structures``, one format for every command: ``A,B`` → ``{1: "A", 2: "B"}`` (label values 1, 2,
    … in the order given), or ``VALUE=NAME,…`` where the label values are others."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("--structures expects A,B,... (or VALUE=NAME,...)")
    if not any("=" in item for item in items):
        return {value: name for value, name in enumerate(items, start=1)}
    out = {}
    for item in items:
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1 or not name.strip() or int(value) in out:
            raise argparse.ArgumentTypeError(f"--structures expects A,B,... or VALUE=NAME,... (distinct values "
                                             f"from 1), got {text!r}")
        out[int(value)] = name.strip()
    return out


class DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new option's ``dest`` and says, on stderr, to use the new one."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"{parser.prog}: {option_string} is deprecated and will be removed in the next release; use {new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


class DeprecatedFlag(argparse.Action):
    """An old flag whose behaviour is now the default: accepted, doing nothing, with a note on stderr
    (``const``: what to tell the user)."""

    def __init__(self, option_strings, dest, const: str = "", **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, const=const, default=argparse.SUPPRESS,
                         **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated and will be removed in the next release; {self.const}",
              file=sys.stderr)


def check_support(pairs: Sequence[tuple[str, str]]) -> None:
    """Every ``--support IMAGE:LABEL`` names existing inputs (a DICOM series folder counts)."""
    for image, label in pairs:
        check_input(image, "--support")
        check_input(label, "--support")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The Segmenter's options shared by ``predict``, ``complete`` and ``cohort`` (numbers checked as parsed)."""
    from ..backends import BACKENDS
    from ..pipeline.support import STRATEGIES

    p.add_argument("--backend", default="universeg", choices=list(BACKENDS))
    p.add_argument("--strategy", default=None, choices=list(STRATEGIES),
                   help="support selection of --backend universeg (default auto: support registered onto each "
                        "query, retrieval where registration fails its check; $FEWSHOTCX_DEFAULT_STRATEGY "
                        "overrides it); universeg+atlas takes auto or registered, universeg+sam position or random")
    p.add_argument("--config", default=None, help="sam2 config for --backend sam2 (e.g. sam2.1_hiera_t, medsam2)")
    p.add_argument("--fusion", default="majority", choices=["majority", "staple", "weighted"],
                   help="label fusion for --backend atlas")
    p.add_argument("--registration", default=None, choices=["rigid", "affine", "deformable"],
                   help="registration for --backend atlas and universeg+atlas and for the universeg strategies "
                        "registered/auto (default deformable: affine, then demons)")
    p.add_argument("--sam-weights", default=None, help="SAM checkpoint for --backend universeg+sam")
    p.add_argument("--weights", default="default", help="'default', 'official' or a checkpoint path")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal", "all"])
    p.add_argument("--support-size", type=POSITIVE_INT, default=None)
    p.add_argument("--ensemble", type=POSITIVE_INT, default=1)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--modality", default="auto", choices=["auto", "ct", "mr"])
