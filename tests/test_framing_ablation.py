"""The framing ablation's pure parts (benchmarks/framing_ablation.py): the decision rule, the per-seed
summary, the training configs it builds, and the role check on what it reads. No training runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import framing_ablation as fa  # noqa: E402
import roles  # noqa: E402


def _row(framing: str, seed: int, size: int, dice: float, task: str = "t") -> dict:
    return {"framing": framing, "seed": seed, "support_size": size, "task": task, "dice": dice}


def _table(physical: list[float], fov: list[float], size: int = 16) -> list[dict]:
    rows = [_row("physical", s, size, d) for s, d in enumerate(physical)]
    return fa.summary(rows + [_row("fov-fit", s, size, d) for s, d in enumerate(fov)])


def test_summary_averages_tasks_within_a_seed_then_seeds():
    rows = [_row("physical", 0, 8, 0.2, "a"), _row("physical", 0, 8, 0.4, "b"),
            _row("physical", 1, 8, 0.5, "a"), _row("physical", 1, 8, 0.5, "b"),
            _row("physical", 1, 8, float("nan"), "c")]  # nothing to predict: left out
    (table,) = fa.summary(rows)
    assert table["dice_mean"] == pytest.approx(0.4) and table["dice_sd"] == pytest.approx(0.1)
    assert table["n"] == 2  # seeds, not tasks


def test_incumbent_kept_unless_beaten_by_more_than_the_pooled_seed_sd():
    # fov-fit ahead by 0.05, seed SDs 0.1 and 0.1: within noise, physical stays
    choice, reason = fa.decide(_table([0.3, 0.5, 0.4], [0.35, 0.55, 0.45]), "framing", "physical")
    assert choice == "physical" and "keep" in reason
    # fov-fit ahead by 0.2 with SD 0.01 each: it wins
    choice, reason = fa.decide(_table([0.39, 0.41, 0.4], [0.59, 0.61, 0.6]), "framing", "physical")
    assert choice == "fov-fit" and "beats physical" in reason
    # fov-fit *behind* by far: never chosen
    assert fa.decide(_table([0.6, 0.6, 0.6], [0.1, 0.1, 0.1]), "framing", "physical")[0] == "physical"
    assert fa.pooled_sd({"dice_sd": 0.3}, {"dice_sd": 0.4}) == pytest.approx(0.125 ** 0.5)


def test_support_size_by_the_same_rule_under_the_chosen_framing():
    table = (_table([0.4, 0.4, 0.4], [0.2, 0.2, 0.2], size=16)
             + _table([0.6, 0.6, 0.6], [0.9, 0.9, 0.9], size=8))
    chosen = fa.decisions(table)
    assert chosen["framing"][0] == "physical"  # decided at the incumbent size (16), not where fov-fit shines
    assert chosen["support_size"][0] == 8
    marked = fa.mark(table, chosen)
    assert [(r["framing"], r["support_size"]) for r in marked if r["chosen"]] == [("physical", 8)]
    assert {r["scale"] for r in marked} == {"cpu-scale"}
    with pytest.raises(ValueError, match="support_size=32"):
        fa.decide(table, "support_size", 32, framing="physical")


def test_arms_differ_only_in_framing_and_hold_out_every_declared_set(tmp_path):
    base, physical = fa.default_training()
    assert physical["pixel_mm"] and physical["context_mm"]
    arms = {f: fa.run_config(base, physical, f, 1, tmp_path / f"{f}.pt", None).to_dict() for f in fa.FRAMINGS}
    differ = {k for k in arms["physical"] if arms["physical"][k] != arms["fov-fit"][k]}
    assert differ == {"pixel_mm", "context_mm", "out"}
    config = arms["physical"]
    assert arms["fov-fit"]["pixel_mm"] is None and arms["fov-fit"]["context_mm"] is None
    # the default's field (pixel_mm × its slice size) at the CPU slice size; neighbours as far apart
    assert config["pixel_mm"] * config["size"] == pytest.approx(physical["pixel_mm"] * base["size"])
    assert config["context_mm"] == physical["context_mm"] and config["size"] == fa.SIZE
    assert config["data"] == base["data"] and config["axes"] == base["axes"] and config["seed"] == 1
    assert set(config["holdout_volumes"]) == roles.VOLUMES[roles.SELECTION]
    assert set(config["report_volumes"]) >= set(base["report_volumes"])
    assert set(config["report_structures"]) == roles.STRUCTURES[roles.REPORT]
    assert roles.undeclared(config) == []
    with pytest.raises(ValueError, match="framing"):
        fa.run_config(base, physical, "stretch", 0, tmp_path / "x.pt", None)


def test_evaluation_reads_selection_data_and_refuses_a_report_volume():
    fa.roles.require(roles.SELECTION, fa.selection_volumes(),
                     [s for names in fa.STRUCTURES.values() for s in names])
    with pytest.raises(roles.RoleError, match="CTChest4"):
        fa.sarcoma_selection_ready(fa.STRUCTURES, [*fa.selection_volumes(), "slicerio/CTChest4"])
    with pytest.raises(roles.RoleError, match="thalamus"):
        fa.sarcoma_selection_ready({"MR_T1": ("left thalamus",)}, fa.selection_volumes())


def test_from_csv_joins_seed_files_and_writes_the_marked_summary(tmp_path):
    def rows(seed: int, framing: str, dice: float, steps: int = 200) -> list[dict]:
        return [{**_row(framing, seed, size, dice, task), "modality": "CT", "structure": "GTV", "steps": steps,
                 "width": 16, "episodes_per_step": 2, "train_seconds": 1.0, "scale": "cpu-scale", "machine": "test"}
                for size in fa.SUPPORT_SIZES for task in ("a", "b")]

    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    fa.write_csv(rows(0, "physical", 0.5) + rows(0, "fov-fit", 0.4) + rows(1, "physical", 0.6)
                 + rows(1, "fov-fit", 0.5), first)
    fa.write_csv(rows(2, "physical", 0.4) + rows(2, "fov-fit", 0.3), second)
    assert fa.main(["--from-csv", str(first), str(second), "--out", str(tmp_path / "out")]) == 0
    table = fa.read_csv(tmp_path / "out" / "framing_ablation_summary.csv")
    assert {(r["framing"], r["support_size"], r["n"]) for r in table} == {
        (f, s, 3) for f in fa.FRAMINGS for s in fa.SUPPORT_SIZES}
    assert [(r["framing"], r["support_size"]) for r in table if r["chosen"] is True] == [("physical", 16)]
    assert len(fa.read_csv(tmp_path / "out" / "framing_ablation.csv")) == 3 * 2 * 2 * 2
    fa.write_csv(rows(2, "physical", 0.4, steps=100) + rows(2, "fov-fit", 0.3, steps=100), second)
    with pytest.raises(ValueError, match="budget"):
        fa.main(["--from-csv", str(first), str(second), "--out", str(tmp_path / "out")])
    fa.write_csv(rows(3, "fov-fit", 0.3), second)  # one framing alone (a run of one arm): no decision, no crash
    assert fa.main(["--from-csv", str(second), "--out", str(tmp_path / "one")]) == 0
    assert not any(r["chosen"] is True for r in fa.read_csv(tmp_path / "one" / "framing_ablation_summary.csv"))
