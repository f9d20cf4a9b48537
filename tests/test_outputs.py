"""Issue #10 bugs 7 and 12: every file written whole or not at all, nothing overwritten unasked,
benchmark output away from the committed results, no progress bars in logs."""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fewshotcx.cli.main import main
from fewshotcx.training import loop as training
from fewshotcx.training.loop import TrainConfig, train
from test_training import TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402


class DiskFull(Exception):
    pass


def _fail_on_second_row(monkeypatch):
    """Make ``csv.DictWriter`` raise while converting the second row (as a full disk would mid-write)."""
    real = csv.DictWriter._dict_to_list
    calls = []

    def convert(self, row):
        calls.append(row)
        if len(calls) == 2:
            raise DiskFull
        return real(self, row)

    monkeypatch.setattr(csv.DictWriter, "_dict_to_list", convert)


def test_write_csv_is_atomic_and_asks_before_replacing(tmp_path, monkeypatch):
    from fewshotcx.io.tables import write_csv

    path = tmp_path / "r.csv"
    write_csv([{"a": 1, "b": 2}, {"a": 3, "c": 4}], path)
    assert path.read_text().splitlines() == ["a,b,c", "1,2,", "3,,4"]
    with pytest.raises(FileExistsError, match="overwrite"):
        write_csv([{"a": 9}], path)
    _fail_on_second_row(monkeypatch)
    with pytest.raises(DiskFull):
        write_csv([{"a": 5}, {"a": 6}], path, overwrite=True)
    assert path.read_text().splitlines() == ["a,b,c", "1,2,", "3,,4"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # no temporary file left either


def test_benchmark_csv_writer_is_atomic(tmp_path, monkeypatch):
    """benchmarks/common.write_csv used ``open("w")``: a failure mid-write left a truncated CSV."""
    path = common.write_csv([{"x": 1}, {"x": 2}], tmp_path / "b.csv")
    before = path.read_text()
    _fail_on_second_row(monkeypatch)
    with pytest.raises(DiskFull):
        common.write_csv([{"x": 7}, {"x": 8}], path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["b.csv"]


def test_benchmark_output_defaults_to_a_scratch_folder():
    """The committed benchmarks/results/ is only written with an explicit ``--out benchmarks/results``."""
    parser = argparse.ArgumentParser(prog="support_size.py")
    common.add_output_options(parser)
    default = parser.parse_args([]).out
    assert default == Path("bench-output/support_size")
    assert parser.parse_args(["--out", "benchmarks/results"]).out == Path("benchmarks/results")


def test_fresh_training_run_refuses_an_existing_checkpoint(tmp_path, capsys):
    config = TrainConfig(**TINY, steps=1, val_every=0, out=str(tmp_path / "run.pt"))
    train(config)
    before = (tmp_path / "run.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True .* overwrite=True"):
        train(replace(config, lr=5e-3))
    assert (tmp_path / "run.pt").read_bytes() == before
    assert main(["train", "--data", "synthetic", "--steps", "1", "--width", "8", "--size", "32",
                 "--out", str(tmp_path / "run.pt"), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "run.pt").read_bytes() == before
    train(replace(config, lr=5e-3, overwrite=True))
    assert (tmp_path / "run.pt").read_bytes() != before


def test_resumed_run_rewrites_its_log_atomically(tmp_path, monkeypatch):
    """Dropping the log rows after the resume step used to delete the log and append the kept rows
    one by one: a failure in between lost the earlier rows."""
    log = tmp_path / "run.csv"
    with log.open("w", newline="") as f:
        f.write("step,train_loss,val_dice,seconds\n0,,0.1,0\n10,0.5,0.2,3\n20,0.4,0.3,6\n")
    before = log.read_text()
    _fail_on_second_row(monkeypatch)
    with pytest.raises(DiskFull):
        training.truncate_log(log, 10)
    assert log.read_text() == before
    monkeypatch.undo()
    training.truncate_log(log, 10)
    assert log.read_text().splitlines() == before.splitlines()[:3]


def test_training_draws_no_progress_bar_into_a_log(tmp_path, capsys):
    """stderr is not a terminal under pytest (as in a log file): no bar, even with progress=True."""
    assert not sys.stderr.isatty()
    train(TrainConfig(**{**TINY, "progress": True}, steps=2, val_every=1, out=str(tmp_path / "run.pt")))
    captured = capsys.readouterr()
    assert "training" not in captured.err and "it/s" not in captured.err and "\r" not in captured.err


def test_fresh_training_run_keeps_an_existing_log(tmp_path, capsys):
    """A fresh run used to delete ``<out>.csv`` (another run's log) when no checkpoint was there."""
    log = tmp_path / "run.csv"
    log.write_text("a user's table\n")
    with pytest.raises(FileExistsError, match="run.csv exists"):
        train(TrainConfig(**TINY, steps=1, val_every=0, out=str(tmp_path / "run.pt")))
    assert log.read_text() == "a user's table\n" and not (tmp_path / "run.pt").exists()
    train(TrainConfig(**TINY, steps=1, val_every=0, out=str(tmp_path / "run.pt"), overwrite=True))
    assert not log.exists() or log.read_text() != "a user's table\n"  # replaced (or dropped) on request


def test_figures_are_not_overwritten_without_overwrite(tmp_path):
    from fewshotcx import Volume
    from fewshotcx.viz import save_overlay

    image = Volume(np.random.default_rng(0).random((8, 8, 4)).astype(np.float32), np.eye(4))
    mask = Volume((image.array > 0.5).astype(np.uint8), np.eye(4), label=True)
    png = tmp_path / "overlay.png"
    png.write_bytes(b"a user's picture")
    with pytest.raises(FileExistsError, match="overlay.png exists"):
        save_overlay(image, mask, png)
    assert png.read_bytes() == b"a user's picture" and [p.name for p in tmp_path.iterdir()] == ["overlay.png"]
    save_overlay(image, mask, png, overwrite=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_an_earlier_run_without_overwrite(tmp_path, capsys):
    """``fewshotcx demo --out D`` used to rewrite D's results; now exit 2 before any work."""
    (tmp_path / "results.csv").write_text("a user's table\n")
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.csv exists" in err and "--overwrite" in err
    assert (tmp_path / "results.csv").read_text() == "a user's table\n"


def test_benchmark_csvs_record_the_commit_and_the_checkpoint_hash(tmp_path):
    import hashlib
    import re

    import torch

    from fewshotcx.models import UniverSeg
    from fewshotcx.models.weights import load_universeg, save_checkpoint

    torch.manual_seed(0)
    model = UniverSeg((8, 8), (8,))
    ckpt = save_checkpoint(model, tmp_path / "w.pt", model.config, {"slice_size": 32})
    load_universeg(str(ckpt))
    path = common.write_csv([{"x": 1}, {"x": 2, "git_commit": "kept"}], tmp_path / "r.csv")
    rows = list(csv.DictReader(path.open()))
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", rows[0]["git_commit"]) and rows[1]["git_commit"] == "kept"
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert all(digest in r["checkpoint_sha256"].split(";") for r in rows)
