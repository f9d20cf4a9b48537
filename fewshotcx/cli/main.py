"""``fewshotcx`` console script.

Every user error (bad path, mismatched grids, an existing output without ``--overwrite``, a missing
checkpoint) is reported as one line on stderr with exit status 2, and no output file is written. An
internal failure (a bug, not the user's input) is one line too, with exit status 1. A missing optional
dependency (Ray, nnU-Net, SAM 2) is a user error naming the extra to install. Set
``FEWSHOTCX_DEBUG=1`` to get the full traceback instead.

Each sub-command lives in a module of this package with a ``register(subparsers)`` function that adds
its parser and sets ``func``; :data:`COMMANDS` lists them.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Optional, Sequence

from .. import __version__
from ..datasets.sources import DatasetError
from ..io.volume import VolumeError
from .common import EXIT_USAGE, CliError, OneLineParser

EXIT_INTERNAL = 1

#: Modules of :mod:`fewshotcx.cli` that contribute sub-commands, in ``--help`` order.
COMMANDS = ("predict", "complete", "compare", "cohort", "train", "demo", "weights", "rt", "serve", "listen")

#: Exceptions that mean "the user's input or options are wrong" (exit 2); anything else is internal.
USER_ERRORS = (CliError, VolumeError, DatasetError, FileExistsError, FileNotFoundError, NotADirectoryError,
               PermissionError, ValueError)


#: Optional dependency (top-level module) → the extra that installs it.
EXTRAS = {"ray": "cohort", "nnunetv2": "nnunet", "sam2": "sam2", "pynetdicom": "node"}


def missing_extra(exc: ImportError) -> Optional[str]:
    """One line naming the extra to install when ``exc`` is a missing optional dependency, else ``None``."""
    module = (exc.name or "").split(".")[0]
    if "pip install" in str(exc):  # already says what to install
        return _one_line(exc)
    if module in EXTRAS and isinstance(exc, ModuleNotFoundError):
        return f"this needs the optional dependency {module}: pip install 'fewshotcx[{EXTRAS[module]}]'"
    return None


def build_parser() -> OneLineParser:
    """The ``fewshotcx`` parser with every sub-command of :data:`COMMANDS`."""
    parser = OneLineParser(prog="fewshotcx", description="Few-shot in-context segmentation of 3D medical images.")
    parser.add_argument("--version", action="version", version=f"fewshotcx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        import_module(f".{name}", __package__).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit status (0 ok, 1 internal error, 2 usage error, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as exc:
        if os.environ.get("FEWSHOTCX_DEBUG"):
            raise
        print(f"fewshotcx {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        line = missing_extra(exc)
        if line is None or os.environ.get("FEWSHOTCX_DEBUG"):
            return _internal(args.command, exc)
        print(f"fewshotcx {args.command}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fewshotcx: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        return _internal(args.command, exc)
    return 0


def _internal(command: str, exc: Exception) -> int:
    """Report an internal error in one line (or re-raise it with ``FEWSHOTCX_DEBUG``): exit 1."""
    if os.environ.get("FEWSHOTCX_DEBUG"):
        raise exc
    print(f"fewshotcx {command}: internal error ({type(exc).__name__}): {_one_line(exc)} "
          "(set FEWSHOTCX_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
    return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
