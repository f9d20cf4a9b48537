"""Provenance columns for every benchmark CSV: the code (git commit) and the weights (checkpoint hashes)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What benchmarks write into the checkout: changes there are results, not code, so they do not make a
#: run ``+dirty`` (a regeneration rewrites one CSV after another in the same checkout).
OUTPUTS = ("benchmarks/results", "docs/img")


def provenance() -> dict[str, str]:
    """``git_commit``: this checkout's HEAD (``+dirty`` with uncommitted changes to tracked files
    outside :data:`OUTPUTS`, ``unknown`` outside git); ``checkpoint_sha256``: the SHA-256 of every checkpoint file this
    process has read (``;``-separated, in load order; ``none`` for in-memory networks or backends
    without one)."""
    from fewshotcx.models.weights import checkpoints

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in OUTPUTS))
        commit = git("rev-parse", "HEAD") + ("+dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    hashes = [_sha256(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in checkpoints.LOADED if p.is_file()]
    return {"git_commit": commit, "checkpoint_sha256": ";".join(hashes) or "none"}


@lru_cache(maxsize=None)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of a file, computed once per version (path, modification time, size)."""
    from fewshotcx.models.weights.registry import sha256_file

    return sha256_file(path)
