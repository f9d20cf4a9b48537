"""Tidy CSV files written atomically: a reader never sees half a table, a failure leaves the old one."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .atomic import atomic_output
from .grid import PathLike


def write_csv(rows: Sequence[Mapping[str, Any]], path: PathLike, columns: Optional[Sequence[str]] = None,
              overwrite: bool = False) -> Path:
    """Write ``rows`` (one dict per line) to ``path`` through :func:`~fewshotcx.io.atomic.atomic_output`.

    Args:
        columns: column order; ``None`` = keys in first-seen order across all rows. Keys outside
            ``columns`` are dropped, missing ones left empty.
        overwrite: replace an existing ``path`` (else :class:`FileExistsError`).
    Raises:
        ValueError: no rows and no columns.
    """
    if columns is None:
        if not rows:
            raise ValueError(f"no rows to write to {path}")
        columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_output(path, overwrite=overwrite) as tmp:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return Path(path)


def read_csv(path: Union[str, Path]) -> list[dict[str, str]]:
    """Rows of a CSV with a header line, as strings."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
