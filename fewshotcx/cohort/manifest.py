"""The cohort manifest: a CSV naming each patient's scan (and optionally a reference label map).

Columns: ``id`` and ``image`` (a volume file), or ``series`` (a DICOM series folder) instead of
``image``; optional ``reference`` (a label map on the scan's grid to score the prediction against).
Relative paths are relative to the manifest's folder. Everything structural is checked before any
work starts, so a typo costs one line, not a half-finished cohort; a missing or unreadable scan is
not a manifest error (that patient fails alone when its turn comes).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]

REQUIRED = ("id",)
OPTIONAL = ("image", "series", "reference")

#: Patient ids become file names (``<id>.nii.gz``): letters, digits, ``.``, ``_`` and ``-``, starting
#: with a letter or digit, at most 128 characters.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Output kind → the suffix after the patient id.
OUTPUT_SUFFIXES = {"labels": ".nii.gz", "names": ".structures.json", "rtstruct": ".rtstruct.dcm"}


@dataclass(frozen=True)
class Patient:
    """One manifest row.

    Attributes:
        id: the patient id (safe as a file name).
        image: the scan: a volume file, or a DICOM series folder when ``series`` is True.
        series: the scan was given in the ``series`` column (an RTSTRUCT is written too).
        reference: label map to score the prediction against, or None.
        named: the run names its label values (``structures``): a ``.structures.json`` sidecar is written.
    """

    id: str
    image: Path
    series: bool = False
    reference: Optional[Path] = None
    named: bool = False

    def output(self, kind: str) -> str:
        """The file name of one output: ``"labels"`` (``<id>.nii.gz``), ``"names"``
        (``<id>.structures.json``) or ``"rtstruct"`` (``<id>.rtstruct.dcm``)."""
        return self.id + OUTPUT_SUFFIXES[kind]

    @property
    def outputs(self) -> tuple[str, ...]:
        """File names this patient produces in the output folder."""
        kinds = ("labels", *(("names",) if self.named else ()), *(("rtstruct",) if self.series else ()))
        return tuple(self.output(kind) for kind in kinds)


def read_manifest(manifest: Union[PathLike, Iterable[Mapping[str, str]]]) -> list[Patient]:
    """Patients of a manifest CSV file, or of rows given as mappings (paths then relative to the cwd).

    Raises:
        ValueError: one line naming the manifest, the row and the problem (missing or unknown
            columns, a row with neither or both of image/series, an id unsafe as a file name,
            duplicate ids, no rows).
    """
    if isinstance(manifest, (str, os.PathLike)):
        path = Path(manifest)
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
        return _patients(rows, columns, path.parent, str(path))
    rows = [dict(row) for row in manifest]
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return _patients(rows, columns, Path.cwd(), "manifest")


def _patients(rows: list[dict], columns: list[str], base: Path, name: str) -> list[Patient]:
    missing = [c for c in REQUIRED if c not in columns]
    if missing or not {"image", "series"} & set(columns):
        raise ValueError(f"{name}: needs the columns id and image (or series); found {', '.join(columns) or 'none'}")
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise ValueError(f"{name}: unknown column(s) {', '.join(map(repr, unknown))} "
                         f"(expected {', '.join(REQUIRED + OPTIONAL)})")
    if not rows:
        raise ValueError(f"{name}: no patients listed")
    patients, seen = [], {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        value = {c: (row.get(c) or "").strip() for c in REQUIRED + OPTIONAL}
        pid = value["id"]
        where = f"{name}, line {line}"
        if not SAFE_ID.fullmatch(pid):
            raise ValueError(f"{where}: id {pid!r} is not safe as a file name (use letters, digits, '.', '_' "
                             "and '-', starting with a letter or digit, at most 128 characters)")
        if pid.lower() in seen:
            raise ValueError(f"{where}: duplicate id {pid!r} (first on line {seen[pid.lower()]}; ids are "
                             "compared ignoring case, as file systems may)")
        seen[pid.lower()] = line
        if bool(value["image"]) == bool(value["series"]):
            raise ValueError(f"{where}: give exactly one of image and series for patient {pid!r}")
        scan = value["image"] or value["series"]
        reference = base / value["reference"] if value["reference"] else None
        patients.append(Patient(pid, base / scan, series=bool(value["series"]), reference=reference))
    return patients
