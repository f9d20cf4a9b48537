"""The documentation site builds offline with --strict, and the docs' links and API names are real."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fewshotcx

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_API_NAME = re.compile(r"(?<![\w./-])(fx|fewshotcx)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans (links there are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def relative_links(page: Path) -> list[str]:
    """Link targets of ``page`` that point into the repository (no scheme, not a bare #anchor)."""
    text = _prose(page.read_text(encoding="utf-8"))
    targets = _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


def test_site_builds_offline_with_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for anchor in ("fewshotcx.Segmenter.fit", "fewshotcx.load_volume", "fewshotcx.evaluation.metrics.hd95",
                   "fewshotcx.models.UniverSeg", "fewshotcx.training.finetune"):
        assert f'id="{anchor}"' in api, f"API reference lacks {anchor}"
    assert "write_synthetic_cases" in (site / "guide" / "index.html").read_text(encoding="utf-8")  # example included
    for html in site.rglob("*.html"):  # the pages must not need a CDN to render
        assert "cdnjs.cloudflare.com" not in html.read_text(encoding="utf-8"), html


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    missing = []
    for target in relative_links(page):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_link_finder_sees_links_and_skips_code():
    page = ROOT / "docs" / "index.md"
    links = relative_links(page)
    assert "guide.md" in links and "api.md" in links
    assert not any(t.startswith("http") for t in links)


def resolve(prefix: str, dotted: str) -> bool:
    """Whether ``fx.<dotted>`` (attribute access only) or ``fewshotcx.<dotted>`` (a module path) exists."""
    obj = fewshotcx
    for part in dotted.split("."):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif prefix == "fewshotcx" and isinstance(obj, type(fewshotcx)):
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except ImportError:
                return False
        else:
            return False
    return True


def test_api_names_in_docs_exist():
    unknown = set()
    for page in PAGES:
        for prefix, dotted in _API_NAME.findall(page.read_text(encoding="utf-8")):
            dotted = dotted.rstrip(".")
            if not resolve(prefix, dotted):
                unknown.add(f"{page.name}: {prefix}.{dotted}")
    assert not unknown, f"names in the docs that fewshotcx does not have: {sorted(unknown)}"


def test_every_example_is_in_the_docs():
    docs = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    scripts = [p.name for p in (ROOT / "examples").glob("*.py") if p.name != "synthetic_data.py"]
    assert scripts
    assert not [s for s in scripts if f"examples/{s}" not in docs], "examples the docs never mention"
