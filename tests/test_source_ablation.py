"""The source ablation's pure parts (benchmarks/source_ablation.py): the arms differ only in their data
sources, the ssl-ct arm reads only the declared unlabelled CTs (never a report or selection volume), its
volume cache is the default arm's plus those, the decision rule, and the exit without the data. No
training runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import roles  # noqa: E402
from common import read_csv  # noqa: E402
import source_ablation as sa  # noqa: E402
from framing_ablation import summary  # noqa: E402
from fewshotcx import Volume, datasets  # noqa: E402
from fewshotcx.training.selfsupervised import UNLABELLED_CTS  # noqa: E402
from fewshotcx.training.tasks import LabelledVolume  # noqa: E402
from fewshotcx.training.volume_cache import load_volume_cache, save_volume_cache  # noqa: E402
from test_selfsupervised import ct_like  # noqa: E402


def test_arms_differ_only_in_their_sources_and_the_ssl_arm_trains_on_declared_volumes(tmp_path):
    base, physical = sa.default_training()
    arms = {arm: sa.arm_config(base, physical, arm, 2, tmp_path).to_dict() for arm in sa.ARMS}
    default, ssl = arms[sa.INCUMBENT], arms[sa.SSL]
    assert {k for k in default if default[k] != ssl[k]} == {"data", "out", "volume_cache"}
    assert default["data"] == base["data"] and ssl["data"] == [*base["data"], "ssl-ct"]
    assert default["pixel_mm"] * default["size"] == pytest.approx(physical["pixel_mm"] * base["size"])
    assert set(ssl["holdout_volumes"]) == roles.VOLUMES[roles.SELECTION]
    assert roles.undeclared(ssl) == [] and roles.trained_volumes(ssl) == set(UNLABELLED_CTS)
    roles.require(roles.TRAINING, roles.trained_volumes(ssl))
    assert default["volume_cache"] == str(tmp_path / "volumes.npz")  # seed-free: the default sources are
    assert ssl["volume_cache"] == str(tmp_path / "volumes-ssl-ct-seed2.npz")  # the supervoxels follow the seed
    with pytest.raises(ValueError, match="arm"):
        sa.arm_sources(base["data"], "ssl-only")


def test_the_ssl_cache_is_the_default_cache_plus_the_unlabelled_cts_and_reads_nothing_else(tmp_path):
    ct = ct_like(2)
    blob = ct.with_array((ct.array > 0).astype(np.uint8), label=True)
    default = save_volume_cache([LabelledVolume("sts/STS_001_CT", ct, blob, {1: "soft"}, "CT", "sts")],
                                tmp_path / "volumes.npz", omitted=["slicerio/CTChest4"])
    asked: list[str] = []

    def read(name: str) -> Volume:
        asked.append(name)
        return ct_like(len(asked) - 1)

    path = sa.cache_path(tmp_path, sa.SSL, 1)
    assert not sa.compose_ssl_cache(tmp_path / "absent.npz", path, 1, read=read) and not path.exists()
    assert sa.compose_ssl_cache(default, path, 1, read=read)
    assert asked == list(UNLABELLED_CTS)
    held_out = roles.VOLUMES[roles.REPORT] | roles.VOLUMES[roles.SELECTION]
    assert not {roles.source(n) for n in asked} & held_out
    volumes, omitted = load_volume_cache(path)
    assert omitted == ["slicerio/CTChest4"] and volumes[0].name == "sts/STS_001_CT"
    assert [v.name for v in volumes[1:]] == [n for c in UNLABELLED_CTS for n in (c, f"{c} supervoxels")]
    assert {v.dataset for v in volumes[1:]} == {"ssl-ct"}
    assert not sa.compose_ssl_cache(default, path, 1, read=read) and len(asked) == 2  # kept, not reread


def _summary(default: list[float], ssl: list[float], size: int = 16) -> list[dict]:
    rows = [{"sources": arm, "seed": s, "support_size": size, "task": "t", "dice": d}
            for arm, dice in ((sa.INCUMBENT, default), (sa.SSL, ssl)) for s, d in enumerate(dice)]
    return summary(rows, arm="sources")


def test_default_kept_unless_ssl_beats_it_by_more_than_the_pooled_seed_sd_at_each_support_size():
    table = (_summary([0.3, 0.5, 0.4], [0.35, 0.55, 0.45], size=16)  # ahead by 0.05, SD 0.08: noise
             + _summary([0.39, 0.41, 0.4], [0.59, 0.61, 0.6], size=8))  # ahead by 0.2, SD 0.008: wins
    chosen = sa.decisions(table)
    assert chosen[16][0] == sa.INCUMBENT and "keep" in chosen[16][1]
    assert chosen[8][0] == sa.SSL and "beats default" in chosen[8][1]
    marked = sa.mark(table, chosen)
    assert {(r["sources"], r["support_size"]) for r in marked if r["chosen"]} == {(sa.SSL, 8), (sa.INCUMBENT, 16)}
    assert not any(r["chosen"] for r in sa.mark(table, {}))
    assert sa.decisions(_summary([0.6] * 3, [0.1] * 3))[16][0] == sa.INCUMBENT  # behind: never chosen


def test_from_csv_summarises_decides_and_one_arm_alone_decides_nothing(tmp_path, capsys):
    def rows(arm: str, seed: int, dice: float) -> list[dict]:
        return [{"sources": arm, "seed": seed, "support_size": size, "task": task, "modality": "CT",
                 "structure": "GTV", "dice": dice, "steps": 200, "width": 16, "episodes_per_step": 2,
                 "scale": "cpu-scale", "machine": "test"} for size in sa.SUPPORT_SIZES for task in ("a", "b")]

    both, one = tmp_path / "both.csv", tmp_path / "one.csv"
    sa.write_csv([r for s in range(3) for arm, d in ((sa.INCUMBENT, 0.4 + s / 100), (sa.SSL, 0.3))
                  for r in rows(arm, s, d)], both)
    assert sa.main(["--from-csv", str(both), "--out", str(tmp_path / "out")]) == 0
    table = read_csv(tmp_path / "out" / "source_ablation_summary.csv")
    assert {(r["sources"], r["support_size"], r["n"]) for r in table} == {
        (a, s, 3) for a in sa.ARMS for s in sa.SUPPORT_SIZES}
    assert {(r["sources"], r["support_size"]) for r in table if r["chosen"] is True} == {
        (sa.INCUMBENT, s) for s in sa.SUPPORT_SIZES}
    sa.write_csv(rows(sa.SSL, 0, 0.3), one)
    assert sa.main(["--from-csv", str(one), "--out", str(tmp_path / "one")]) == 0
    assert "no decision" in capsys.readouterr().out


def test_without_the_development_data_it_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "shared_data_dir", lambda: None)
    assert sa.main(["--out", str(tmp_path), "--work", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())
