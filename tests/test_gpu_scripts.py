"""scripts/gpu_check.sh and scripts/train_gpu.sh run end to end with --dry-run (tiny, CPU)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_gpu_check_dry_run_writes_every_part(tmp_path):
    out = tmp_path / "gpu_check.csv"
    done = _script("gpu_check.sh", "--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = _rows(out)
    by_part = {part: [r for r in rows if r["part"] == part] for part in ("tests", "equality", "speed", "dice")}
    assert all(by_part.values()), "every part leaves rows"
    assert not [r for r in rows if r["status"] in ("failed", "error")]
    # CUDA parts are skipped with the reason; CPU parts really ran and measured something
    assert by_part["tests"][0]["status"] == "skipped" and "CUDA" in by_part["tests"][0]["detail"]
    assert {r["status"] for r in by_part["equality"] if r["name"].startswith("max")} == {"skipped"}
    assert 0 < float(next(r for r in by_part["equality"] if r["name"] == "cpu fp32 reference")["value"]) < 1
    seconds = [r for r in by_part["speed"] if r["name"].endswith(" seconds")]
    assert {r["name"].split()[1] for r in seconds} == {"fp32", "bf16", "fp16"} and all(float(r["value"]) > 0
                                                                                        for r in seconds)
    dice = {r["name"].split(" ", 1)[1]: float(r["value"]) for r in by_part["dice"] if r["unit"] == "Dice"}
    assert 0 <= dice["fp32"] <= 1 and 0 <= dice["bf16"] <= 1
    assert abs(dice["bf16 - fp32"] - (dice["bf16"] - dice["fp32"])) < 1e-3


def test_train_gpu_dry_run_trains_evaluates_and_resumes(tmp_path):
    report = tmp_path / "heldout.csv"
    args = ("--dry-run", "--out", str(tmp_path / "run"), "--report", str(report))
    done = _script("train_gpu.sh", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (first,) = _rows(report)
    assert first["resumed"] == "False" and first["finished"] == "True"
    assert int(first["steps_done"]) == 4 and float(first["budget_seconds"]) > 0
    assert 0 <= float(first["dice"]) <= 1 and first["mode"] == "dry-run"
    again = _script("train_gpu.sh", *args)  # the checkpoint exists: the run resumes (nothing left to do)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    (second,) = _rows(report)
    assert second["resumed"] == "True" and second["steps_done"] == "4" and second["dice"] == first["dice"]


def test_train_gpu_eval_only_evaluates_an_existing_checkpoint_on_the_cpu(tmp_path):
    report, again = tmp_path / "first.csv", tmp_path / "again.csv"
    out = ("--dry-run", "--out", str(tmp_path / "run"))
    assert _script("train_gpu.sh", *out, "--skip-eval", "--report", str(report)).returncode == 0
    assert not report.exists()  # --skip-eval: trained, nothing evaluated
    done = _script("train_gpu.sh", *out, "--eval-only", "--device", "cpu", "--report", str(again))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = _rows(again)
    assert row["eval_device"] == "cpu" and 0 <= float(row["dice"]) <= 1 and row["steps_done"] == ""


def test_train_gpu_without_cuda_and_without_dry_run_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-GPU error path cannot be exercised")
    done = _script("train_gpu.sh", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "no CUDA device" in done.stderr and not (tmp_path / "run").exists()


def _results_snapshot() -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted((ROOT / "benchmarks" / "results").rglob("*")) if path.is_file()}


@pytest.mark.parametrize("script, args, default", [
    ("gpu_check.sh", ("--parts", "tests"), "bench-output/gpu_check/gpu_check.csv"),
    ("train_gpu.sh", (), "bench-output/train_gpu/heldout.csv"),
])
def test_dry_run_without_out_leaves_the_committed_results_alone(script, args, default):
    """A dry run writes to its scratch default, never into benchmarks/results/ (the committed real runs)."""
    before = _results_snapshot()
    try:
        done = _script(script, "--dry-run", *args)
        after = _results_snapshot()
    finally:  # put back whatever a failing dry run replaced, so the committed results survive the test
        for path, data in before.items():
            if not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert after == before, [str(p.relative_to(ROOT)) for p in set(before) | set(after)
                             if before.get(p) != after.get(p)]
    assert str(ROOT / default) in done.stdout and (ROOT / default).is_file()
