"""``python -m fewshotcx`` and the single version source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fewshotcx

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fewshotcx", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


def test_python_dash_m_fewshotcx_runs_the_cli():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: fewshotcx") and "predict" in done.stdout and "serve" in done.stdout
    bad = _run("no-such-command")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_version_has_one_source():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fewshotcx.__version__"}
    done = _run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"fewshotcx {fewshotcx.__version__}"


def test_old_sam_import_path_warns_and_gives_the_moved_modules():
    """SAM model code moved to ``fewshotcx.models.sam``: ``fewshotcx.sam`` (package and submodules) still
    imports, with a DeprecationWarning, as the same module objects; ``fx.sam`` is the new package, silently."""
    code = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "import fewshotcx as fx\n"
        "import fewshotcx.models.sam.models as new\n"
        "assert fx.sam.__name__ == 'fewshotcx.models.sam'\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    from fewshotcx.sam.models import tiny_sam\n"
        "    from fewshotcx.sam import refine_with_sam\n"
        "assert tiny_sam is new.tiny_sam and refine_with_sam is fx.sam.refine_with_sam\n"
        "assert [w.category for w in caught] == [DeprecationWarning], caught\n"
        "assert 'fewshotcx.models.sam' in str(caught[0].message)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
