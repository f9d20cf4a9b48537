"""Check every number quoted in README.md and docs/ against the committed CSV it comes from.

A quoted number carries its source in an HTML comment right after it (invisible when rendered)::

    CT lung lesion: **0.869** <!-- evidence: demo.csv task=ct-lesion-few-slices column=dice_model -->

* ``FILE.csv`` — a file under ``benchmarks/results/``;
* ``key=value`` — keep the rows whose column ``key`` equals ``value`` (as text; repeat for more;
  quote values with spaces: ``structure="left thalamus"``);
* ``column=COL`` — the value, aggregated over the kept rows by ``agg=mean`` (default; NaN rows are
  left out, as tasks with nothing to predict must be), ``min``, ``max``, ``sum`` or ``count``
  (the number of kept rows with a finite value);
* ``scale=100`` — multiply (percentages);
* ``SPEC / SPEC`` — a ratio of two such values (``a.csv workers=0 column=wall_s / a.csv workers=2
  column=wall_s``: a speed-up between two rows).

The quoted number is the last number before the comment on its line; it must equal the CSV's value
rounded to as many decimals as the quote shows. In README.md's "What it measured" section, and in
the docs sections listed in :data:`CHECKED_SECTIONS`, every number with a decimal point must carry a
comment, except thresholds written after a comparison sign (``Dice ≥ 0.85``); on any line of any
page, a line with a tag must tag every decimal number on it (a tag covers one number, not its
neighbours). Run ``python benchmarks/evidence.py`` to list
every claim with its CSV value (exit 1 when one disagrees); ``tests/test_evidence.py`` runs the same.
``--fix`` rewrites each tagged number from its CSV at the precision it is quoted with (after a rerun);
read the prose around the numbers afterwards, since a comparison in words may have flipped.
"""

from __future__ import annotations

import csv
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = ("README.md", "docs/*.md")
#: README section whose decimal numbers must all carry evidence.
MEASURED_SECTION = "## What it measured"
#: Docs sections held to the same rule (page, heading prefix). Pages not yet listed are checked line
#: by line only (:func:`partly_tagged_lines`).
CHECKED_SECTIONS = (("docs/cohort.md", "## Measured throughput"),)

_CLAIM = re.compile(r"(-?\d+(?:\.\d+)?)[^\d<\n]*?<!--\s*evidence:\s*(.*?)\s*-->")
#: A decimal number that is a measurement: not one right after a comparison sign (``Dice < 0.7`` is a
#: threshold, not a result).
_DECIMAL = re.compile(r"(?<![\w.<>≤≥])(?<![<>≤≥] )\d+\.\d+(?![\w.])")
_AGGREGATES = ("mean", "min", "max", "sum", "count")


@dataclass(frozen=True)
class Claim:
    """One quoted number and where it comes from."""

    document: str
    line: int
    quoted: str
    spec: str

    @property
    def decimals(self) -> int:
        return len(self.quoted.partition(".")[2])


def claims(path: Path) -> list[Claim]:
    """Every evidence-tagged number in a Markdown file."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        for match in _CLAIM.finditer(line):
            found.append(Claim(str(path.relative_to(ROOT)), number, match.group(1), match.group(2)))
    return found


def untagged_numbers(path: Path, section: str = MEASURED_SECTION) -> list[str]:
    """Decimal numbers in ``section`` of ``path`` (up to the next ``## `` heading) without evidence."""
    text = path.read_text()
    start = text.find(section)
    if start < 0:
        return [f"{path.name}: no section {section!r}"]
    end = text.find("\n## ", start + len(section))
    missing = []
    for line in text[start:end if end > 0 else None].splitlines():
        tagged = _tagged_positions(line)
        missing += [f"{path.name}: {m.group(0)} in {line.strip()[:80]!r}" for m in _DECIMAL.finditer(line)
                    if m.start() not in tagged and not _inside_tag(line, m.start())]
    return missing


def partly_tagged_lines(path: Path) -> list[str]:
    """Decimal numbers without evidence on lines of ``path`` that tag some other number."""
    missing = []
    for line in path.read_text().splitlines():
        tagged = _tagged_positions(line)
        if tagged:
            missing += [f"{path.name}: {m.group(0)} in {line.strip()[:80]!r}" for m in _DECIMAL.finditer(line)
                        if m.start() not in tagged and not _inside_tag(line, m.start())]
    return missing


def _tagged_positions(line: str) -> set[int]:
    """Where the tagged numbers of ``line`` start (a negative number also at its first digit)."""
    return {m.start(1) + skip for m in _CLAIM.finditer(line) for skip in (0, m.group(1).startswith("-"))}


def _inside_tag(line: str, position: int) -> bool:
    """Whether ``position`` lies inside an ``<!-- ... -->`` comment (a spec's own numbers)."""
    return any(m.start() <= position < m.end() for m in re.finditer(r"<!--.*?-->", line))


def unchecked_numbers(root: Optional[Path] = None) -> list[str]:
    """Every rule above at once: README's measured section, :data:`CHECKED_SECTIONS`, partly tagged lines."""
    root = ROOT if root is None else root
    missing = untagged_numbers(root / "README.md")
    for page, heading in CHECKED_SECTIONS:
        missing += untagged_numbers(root / page, heading)
    for doc in documents(root):
        missing += partly_tagged_lines(doc)
    return list(dict.fromkeys(missing))


def evaluate(spec: str, results: Path = RESULTS) -> float:
    """The value a claim's spec selects from its CSV (see the module docstring)."""
    if " / " in spec:
        numerator, denominator = spec.split(" / ", 1)
        return evaluate(numerator, results) / evaluate(denominator, results)
    words = shlex.split(spec)
    if not words or not words[0].endswith(".csv"):
        raise ValueError(f"evidence spec must start with a CSV file name: {spec!r}")
    options = dict(word.split("=", 1) for word in words[1:] if "=" in word)
    column, agg, scale = options.pop("column", None), options.pop("agg", "mean"), float(options.pop("scale", 1))
    if column is None or agg not in _AGGREGATES:
        raise ValueError(f"evidence spec needs column= and agg in {_AGGREGATES}: {spec!r}")
    path = results / words[0]
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if all(r.get(k) == v for k, v in options.items())]
    if not rows:
        raise ValueError(f"no row of {path.name} has {options}")
    if column not in rows[0]:
        raise ValueError(f"{path.name} has no column {column!r}")
    values = [float(r[column]) for r in rows if r[column] not in ("", "nan", "NaN")]
    values = [v for v in values if math.isfinite(v)]
    if agg == "count":
        return float(len(values))
    if not values:
        raise ValueError(f"{path.name}: no finite {column} in the rows with {options}")
    total = {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "sum": sum(values)}[agg]
    return total * scale


def check(claim: Claim, results: Path = RESULTS) -> Optional[str]:
    """``None`` when the quoted number matches its CSV, else a one-line description of the mismatch."""
    try:
        value = evaluate(claim.spec, results)
    except (OSError, ValueError, KeyError) as exc:
        return f"{claim.document}:{claim.line}: {claim.quoted}: {exc}"
    expected = f"{round(value, claim.decimals):.{claim.decimals}f}"
    if expected != claim.quoted and float(expected) != float(claim.quoted):
        return f"{claim.document}:{claim.line}: quotes {claim.quoted}, {claim.spec} gives {expected}"
    return None


def fix(path: Path, results: Path = RESULTS) -> int:
    """Rewrite every tagged number in ``path`` from its CSV (same number of decimals); returns how
    many changed. A claim whose spec cannot be evaluated is left as it is (``check`` reports it)."""
    changed = 0

    def rewrite(match: re.Match) -> str:
        nonlocal changed
        quoted, spec = match.group(1), match.group(2)
        try:
            value = evaluate(spec, results)
        except (OSError, ValueError, KeyError):
            return match.group(0)
        decimals = len(quoted.partition(".")[2])
        new = f"{round(value, decimals):.{decimals}f}"
        changed += new != quoted
        return new + match.group(0)[len(quoted):]

    lines = [_CLAIM.sub(rewrite, line) for line in path.read_text().splitlines(keepends=True)]
    path.write_text("".join(lines))
    return changed


def documents(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return sorted(p for pattern in DOCUMENTS for p in root.glob(pattern))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print every claim (``ok`` or the mismatch) and the README numbers without evidence;
    ``--fix`` first rewrites the tagged numbers from their CSVs."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--fix" in argv:
        for doc in documents():
            count = fix(doc)
            if count:
                print(f"rewrote {count} number(s) in {doc.relative_to(ROOT)}")
    problems = []
    for doc in documents():
        for claim in claims(doc):
            problem = check(claim)
            problems += [problem] if problem else []
            print(problem or f"ok  {claim.document}:{claim.line}: {claim.quoted}")
    for missing in unchecked_numbers():
        problems.append(f"no evidence: {missing}")
        print(problems[-1])
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
