"""Tidy CSV files written atomically: a reader never sees half a table, a failure leaves the old one.

Every CSV the library writes goes through :func:`write_csv`, which neutralises text that a spreadsheet
would run as a formula (CSV injection, OWASP): ROI names, patient ids and error messages come from
outside data, and a cell such as ``=HYPERLINK("http://x")`` is written as ``'=HYPERLINK("http://x")``.
Numbers, negative ones included, are written as they are.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .atomic import atomic_output
from .grid import PathLike


#: First characters that make a spreadsheet read a text cell as a formula (OWASP's list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading single quote when it is text that starts like a formula and is not a plain
    number (``-0.5`` stays ``-0.5``; ``-2+3`` and ``@SUM(A1)`` are quoted); anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with every cell through :func:`safe_cell`."""
    return {key: safe_cell(value) for key, value in row.items()}


def write_csv(rows: Sequence[Mapping[str, Any]], path: PathLike, columns: Optional[Sequence[str]] = None,
              overwrite: bool = False) -> Path:
    """Write ``rows`` (one dict per line) to ``path`` through :func:`~fewshotcx.io.atomic.atomic_output`,
    text cells neutralised against spreadsheet formulas (:func:`safe_cell`).

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
            writer.writerows(safe_row(row) for row in rows)
    return Path(path)


def read_csv(path: Union[str, Path]) -> list[dict[str, str]]:
    """Rows of a CSV with a header line, as strings."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
