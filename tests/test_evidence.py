"""Every number README.md and docs/ quote matches the committed CSV it names (benchmarks/evidence.py),
and the checker itself catches a wrong quote, a missing row and an untagged number on any page."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import evidence  # noqa: E402


def test_every_quoted_number_matches_its_csv():
    claims = [c for doc in evidence.documents() for c in evidence.claims(doc)]
    assert len(claims) >= 10, "README/docs should tag their measured numbers with evidence comments"
    problems = [p for p in (evidence.check(c) for c in claims) if p]
    assert not problems, "\n".join(problems)


def test_every_decimal_number_on_every_page_carries_evidence():
    """README.md and every docs page, whole: only code, thresholds and the tags' own numbers are exempt."""
    missing = evidence.unchecked_numbers()
    assert not missing, "\n".join(missing)


def test_a_tag_covers_only_its_own_number_and_ratios_are_checked(results, tmp_path):
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    doc.write_text("1.5–1.7× faster, i.e. 1.74 <!-- evidence: r.csv task=a method=model column=dice / "
                   "r.csv task=a method=base column=dice --> (threshold < 0.5)\nplain 2.5 mm text\n")
    assert _numbers(evidence.untagged_numbers(doc)) == ["1.5", "1.7", "2.5"]
    ratio = _claim("1.74 <!-- evidence: r.csv task=a method=model column=dice / r.csv task=a method=base column=dice -->")
    assert evidence.check(ratio, results) is None  # 0.8694 / 0.5
    assert "gives 1.74" in evidence.check(_claim(ratio.spec.join(["1.70 <!-- evidence: ", " -->"])), results)


@pytest.fixture()
def results(tmp_path):
    (tmp_path / "r.csv").write_text("task,method,dice\na,model,0.8694\nb,model,0.7\nc,model,nan\na,base,0.5\n")
    return tmp_path


def _claim(text: str) -> evidence.Claim:
    return evidence.Claim("x.md", 1, text.split()[0], text.split("evidence:")[1].rstrip(" ->"))


def test_checker_matches_rounding_and_filters(results):
    assert evidence.check(_claim("0.869 <!-- evidence: r.csv task=a method=model column=dice -->"), results) is None
    assert evidence.check(_claim("0.785 <!-- evidence: r.csv method=model column=dice -->"), results) is None  # nan left out
    assert evidence.check(_claim("2 <!-- evidence: r.csv method=model column=dice agg=count -->"), results) is None
    difference = "0.37 <!-- evidence: r.csv task=a method=model column=dice - r.csv task=a method=base column=dice -->"
    assert evidence.check(_claim(difference), results) is None  # 0.8694 - 0.5
    assert evidence.check(_claim("0.70 <!-- evidence: r.csv column=dice agg=median -->"), results) is None  # mean 0.69


def test_checker_reports_a_wrong_quote_and_a_missing_row(results):
    wrong = evidence.check(_claim("0.870 <!-- evidence: r.csv task=a method=model column=dice -->"), results)
    assert wrong and "gives 0.869" in wrong
    missing = evidence.check(_claim("0.5 <!-- evidence: r.csv task=z column=dice -->"), results)
    assert missing and "no row" in missing


def test_claims_and_untagged_numbers_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    doc = tmp_path / "README.md"
    doc.write_text("# x\n## What it measured\n| a | **0.869** <!-- evidence: r.csv column=dice --> | 2.33× |"
                   " slices with Dice < 0.7 or ≥0.85 |\n"
                   "## Next\n1.5 is not fine here either, nor at the end: 0.25.\n")
    found = evidence.claims(doc)
    assert [(c.quoted, c.spec) for c in found] == [("0.869", "r.csv column=dice")]
    assert _numbers(evidence.untagged_numbers(doc)) == ["2.33", "1.5", "0.25"]


def test_every_docs_page_is_checked_whole_except_code(tmp_path):
    """Any docs page, any section: an untagged decimal is reported unless it is code (a setting, a
    command, a version), a threshold, or a dotted version / a word like 2.5D."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("nothing measured\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("# Page\n## Any section\nDice was 0.74 on the held-out set.\n"
                    "Set `pixel_mm=2.5` or ``ray>=2.52``; 2.5D slabs; slicerio 1.4.0; Dice ≥ 0.85; `a command\n"
                    "--lr 0.3` that runs over a line break.\n"
                    "```bash\nfewshotcx run --threshold 0.5\n```\n"
                    "~~~\n``` 0.75 inside a tilde fence\n~~~\nafter the fence 0.81\n")
    assert _numbers(evidence.unchecked_numbers(tmp_path)) == ["0.74", "0.81"]


def _numbers(missing: list[str]) -> list[str]:
    return [m.split(": ")[1].split()[0] for m in missing]


def test_fix_rewrites_numbers_from_the_csv(results, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("model 0.000 <!-- evidence: r.csv task=a method=model column=dice --> vs 9 "
                   "<!-- evidence: r.csv task=zz column=dice -->\n")
    assert evidence.fix(doc, results) == 1
    assert doc.read_text().startswith("model 0.869 <!-- evidence:") and "vs 9 <!--" in doc.read_text()
