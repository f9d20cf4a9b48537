"""When to draw progress bars: only for a person watching a terminal (bars flood log files)."""

from __future__ import annotations

import sys


def show_progress(enabled: bool = True) -> bool:
    """Whether to draw progress bars: asked for, and stderr is a terminal."""
    return bool(enabled) and sys.stderr.isatty()
