"""``fewshotcx weights``: list, locate, verify checkpoints."""

from __future__ import annotations

import argparse

from .common import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx weights``."""
    p = subparsers.add_parser("weights", help="list, locate or verify checkpoints")
    p.add_argument("action", choices=["list", "locate", "verify"])
    p.add_argument("name", nargs="?", help="registry name or path (locate/verify)")
    p.set_defaults(func=run_weights)


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
