"""Check every number quoted in README.md and docs/ against the committed CSV it comes from.

A quoted number carries its source in an HTML comment right after it (invisible when rendered)::

    CT lung lesion: **0.869** <!-- evidence: demo.csv task=ct-lesion-few-slices column=dice_model -->

* ``FILE.csv`` — a file under ``benchmarks/results/``;
* ``key=value`` — keep the rows whose column ``key`` equals ``value`` (as text; repeat for more;
  quote values with spaces: ``structure="left thalamus"``);
* ``column=COL`` — the value, aggregated over the kept rows by ``agg=mean`` (default; NaN rows are
  left out, as tasks with nothing to predict must be), ``median``, ``min``, ``max``, ``sum`` or ``count``
  (the number of kept rows with a finite value);
* ``scale=100`` — multiply (percentages);
* ``SPEC / SPEC`` — a ratio of two such values (``a.csv workers=0 column=wall_s / a.csv workers=2
  column=wall_s``: a speed-up between two rows); ``SPEC - SPEC`` — their difference (``+0.10 Dice
  over registered``; quote a difference as a positive number, the words saying which way it goes).

The quoted number is the last number before the comment on its line; it must equal the CSV's value
rounded to as many decimals as the quote shows. On every page (README.md and docs/*.md, whole) every
number with a decimal point must carry its own comment (a tag covers one number, not its neighbours:
in ``0.52 / 0.87`` both need one), except

* numbers in code — inline code spans and fenced code blocks: settings, commands and versions are
  written as code (``pixel_mm=2.5``, ``ray>=2.52``), not tagged;
* thresholds written right after a comparison sign (``Dice ≥ 0.85``, ``< 0.7``);
* numbers inside an evidence comment (a spec's own filters).

Run ``python benchmarks/evidence.py`` to list every claim with its CSV value and every untagged number
(exit 1 on any); ``tests/test_evidence.py`` runs the same. ``--fix`` rewrites each tagged number from
its CSV at the precision it is quoted with (after a rerun); read the prose around the numbers
afterwards, since a comparison in words may have flipped.
"""

from __future__ import annotations

import csv
import math
import operator
import re
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = ("README.md", "docs/*.md")
_CLAIM = re.compile(r"(-?\d+(?:\.\d+)?)[^\d<\n]*?<!--\s*evidence:\s*(.*?)\s*-->")
#: A decimal number that is a measurement: not one right after a comparison sign (``Dice < 0.7`` is a
#: threshold, not a result), nor part of a word or a dotted version (``2.5D``, ``1.4.0``); a full stop
#: after it may end the sentence.
_DECIMAL = re.compile(r"(?<![\w.<>≤≥])(?<![<>≤≥] )\d+\.\d+(?!\w|\.\d)")
#: Code, whose numbers are settings, commands or versions: a fenced block (to the fence that closes
#: it), an inline code span (which may run over line breaks, not over a blank line).
_FENCED = re.compile(r"^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\n[ \t]*\n).)+?\1", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_AGGREGATES = ("mean", "median", "min", "max", "sum", "count")


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


def untagged_numbers(path: Path) -> list[str]:
    """Decimal numbers of ``path`` without evidence, outside code, comments and thresholds."""
    text = path.read_text()
    prose = _blank(_COMMENT, _blank(_CODE_SPAN, _blank(_FENCED, text)))
    missing = []
    for line, visible in zip(text.split("\n"), prose.split("\n")):
        tagged = _tagged_positions(line)
        missing += [f"{path.name}: {m.group(0)} in {line.strip()[:80]!r}" for m in _DECIMAL.finditer(visible)
                    if m.start() not in tagged]
    return missing


def _blank(pattern: re.Pattern, text: str) -> str:
    """``text`` with what ``pattern`` matches turned into spaces (line breaks and positions kept)."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _tagged_positions(line: str) -> set[int]:
    """Where the tagged numbers of ``line`` start (a negative number also at its first digit)."""
    return {m.start(1) + skip for m in _CLAIM.finditer(line) for skip in (0, m.group(1).startswith("-"))}


def unchecked_numbers(root: Optional[Path] = None) -> list[str]:
    """The untagged decimal numbers of every page (:func:`untagged_numbers`)."""
    return [missing for doc in documents(ROOT if root is None else root) for missing in untagged_numbers(doc)]


def evaluate(spec: str, results: Path = RESULTS) -> float:
    """The value a claim's spec selects from its CSV (see the module docstring)."""
    return _value(shlex.split(spec), results)


def _value(words: list[str], results: Path) -> float:
    """The value of a split spec: ``SPEC / SPEC``, ``SPEC - SPEC`` or one ``FILE.csv ...`` selection."""
    for sign, combine in (("/", operator.truediv), ("-", operator.sub)):
        if sign in words:
            at = words.index(sign)
            return combine(_value(words[:at], results), _value(words[at + 1:], results))
    spec = " ".join(words)
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
    total = {"mean": statistics.fmean, "median": statistics.median, "min": min, "max": max, "sum": sum}[agg](values)
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
    """Print every claim (``ok`` or the mismatch) and every number without evidence;
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
