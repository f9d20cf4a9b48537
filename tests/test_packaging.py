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
