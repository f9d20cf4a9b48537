"""Where fewshotcx keeps downloads: one root for checkpoints and data."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Cache root: ``$FEWSHOTCX_HOME`` if set, else ``~/.cache/fewshotcx`` (not created here).

    Checkpoints live directly in it; data sets under ``home()/data/<source>/``.
    """
    env = os.environ.get("FEWSHOTCX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fewshotcx"
