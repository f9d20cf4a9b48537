"""Data roles (benchmarks/roles.py): no report volume or structure feeds a calibration or a selection.

Each calibrating or selecting benchmark's task list is imported (nothing heavy runs) and every volume
in it is checked against the declared roles, as are the committed calibration CSVs and the held-out
sets that the training scripts and the bundled checkpoints record."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import roles  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _volumes_of(pairs) -> list[str]:
    return [v for p in pairs for v in (p.support, p.query)]


def _reads_report(pair) -> bool:
    """A held-out pair: its support or its query is a report volume."""
    return roles.REPORT in {roles.volume_role(pair.support), roles.volume_role(pair.query)}


def test_held_out_roles_are_disjoint_and_every_name_resolves():
    held = list(roles.VOLUMES.values())
    for i, a in enumerate(held):
        for b in held[i + 1:]:
            assert not a & b, a & b
    structures = list(roles.STRUCTURES.values())
    assert not structures[0] & structures[1]
    for role, ids in roles.VOLUMES.items():
        assert all(roles.volume_role(v) == role and roles.volume_role(f"{v} deformed slab") == role for v in ids)
    assert roles.volume_role("pyradiomics/brain1") == roles.TRAINING


def test_require_refuses_report_data_with_one_error_naming_each_offender():
    with pytest.raises(roles.RoleError, match=r"CTChest4 slab.*report.*STS_003_CT.*selection.*Thalamus_L.*report"):
        roles.require(roles.CALIBRATION, ["mirp/CRLM-CT-1004", "slicerio/CTChest4 slab", "sts/STS_003_CT"],
                      ["bone", "Thalamus_L"])
    with pytest.raises(roles.RoleError, match="LUNG1-001"):
        roles.require(roles.SELECTION, ["sts/STS_001_CT", "mirp/LUNG1-001"])
    with pytest.raises(roles.RoleError, match="right thalamus"):
        roles.require(roles.SELECTION, ["pyradiomics/brain2"], ["right thalamus"])
    with pytest.raises(roles.RoleError, match="no declared data role"):
        roles.require(roles.CALIBRATION, ["LUNG1-001"])  # an unknown name is never assumed safe
    roles.require(roles.SELECTION, ["pyradiomics/brain1", "sts/STS_003_CT"], ["left hippocampus", "GTV"])


def test_registration_gate_calibration_reads_only_calibration_volumes():
    import registration_gates as gates

    roles.require(roles.CALIBRATION, _volumes_of(gates.CALIBRATION_PAIRS))
    assert all(_reads_report(p) for p in gates.HELDOUT_PAIRS)
    assert gates.SETS["calibration"][0] is gates.CALIBRATION_PAIRS


def _csv(name: str) -> list[dict[str, str]]:
    with open(RESULTS / name, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["registration_gates.csv", "retrieval_coverage.csv"])
def test_committed_calibration_tables_hold_no_report_or_selection_volume(name):
    rows = _csv(name)
    volumes = {v for r in rows for v in r["pair"].split(" -> ")}
    roles.require(roles.CALIBRATION, volumes, [s for r in rows for s in r.get("structures", "").split("+") if s])
    assert {r["data_role"] for r in rows} == {roles.CALIBRATION}


def test_retrieval_coverage_calibration_reads_only_calibration_volumes():
    import retrieval_coverage as coverage

    roles.require(roles.CALIBRATION, _volumes_of(coverage.CALIBRATION_PAIRS))
    assert all(_reads_report(p) for p in coverage.HELDOUT_PAIRS)


def test_default_selection_reads_no_report_volume():
    import default_selection

    roles.require(roles.SELECTION, default_selection.selection_volumes(),
                  [s for names in default_selection.STRUCTURES.values() for s in names])
    assert {roles.volume_role(v) for v in default_selection.selection_volumes()} >= {roles.SELECTION}


def test_uncertainty_draws_reads_only_selection_and_calibration_volumes():
    import uncertainty_draws

    roles.require(roles.SELECTION, uncertainty_draws.selection_volumes(),
                  [s for names in uncertainty_draws.STRUCTURES.values() for s in names])
    assert roles.SELECTION in {roles.volume_role(v) for v in uncertainty_draws.selection_volumes()}


def test_cross_patient_selection_split_holds_no_report_structure():
    import cross_patient

    roles.require(roles.SELECTION, cross_patient.BRAIN_VOLUMES, cross_patient.SPLITS["selection"])
    with pytest.raises(roles.RoleError):
        roles.require(roles.SELECTION, cross_patient.BRAIN_VOLUMES, cross_patient.SPLITS["report"])


def test_support_size_chooser_refuses_a_report_row_even_when_labelled_selection():
    import choose_support_size as choose

    row = {"data_role": "selection", "method": "universeg-position", "ensemble": "1", "postprocess": "none",
           "support_size": "8", "dice": "0.5", "support_subject": "pyradiomics/lung1", "subject": "pyradiomics/lung2",
           "structure": "lesion"}
    with pytest.raises(roles.RoleError, match="lung2"):
        choose.choose([row])
    committed = _csv("support_size_selection_default.csv")
    assert choose.choose(committed)[2] > 0  # the committed selection sweep passes the check


def test_training_scripts_and_bundled_checkpoints_hold_out_what_roles_declares():
    import train_gpu

    config = {"holdout_volumes": train_gpu.HOLDOUT_VOLUMES, "holdout_structures": train_gpu.HOLDOUT_STRUCTURES,
              "report_volumes": train_gpu.REPORT_VOLUMES, "report_structures": train_gpu.REPORT_STRUCTURES_HELD}
    assert roles.undeclared(config) == []
    script = (ROOT / "scripts" / "train_default.sh").read_text()
    flags = {key: re.findall(rf'--{key}-(volume|structure) ("[^"]+"|\S+)', script) for key in ("holdout", "report")}
    assert roles.undeclared({f"{key}_{kind}s": [v.strip('"') for k, v in found if k == kind]
                             for key, found in flags.items() for kind in ("volume", "structure")}) == []
    from fewshotcx.models.weights import load_checkpoint

    for name in ("default", "fov64"):
        _, metadata = load_checkpoint(ROOT / "fewshotcx" / "models" / "bundled" / f"{name}_universeg.pt")
        assert roles.undeclared(metadata["extra"]["training"]["config"]) == [], name


def test_undeclared_names_a_checkpoint_that_validated_on_report_data():
    assert roles.undeclared({"holdout_volumes": ["slicerio/CTChest4"], "report_structures": ["left hippocampus"]}) == [
        "holdout volume 'slicerio/CTChest4'", "report structure 'left hippocampus'"]


def test_the_ssl_ct_source_trains_only_on_volumes_whose_role_permits_training(monkeypatch):
    from fewshotcx.training import selfsupervised

    roles.require(roles.TRAINING, selfsupervised.UNLABELLED_CTS)
    assert roles.SELF_SUPERVISED == set(selfsupervised.UNLABELLED_CTS)
    assert {roles.volume_role(v) for v in roles.SELF_SUPERVISED} == {roles.CALIBRATION}
    for refused in ("mirp/LUNG1-001", "sts/STS_003_CT", "slicerio/CTChest4 supervoxels"):
        with pytest.raises(roles.RoleError, match=refused.split(" ")[0]):
            roles.require(roles.TRAINING, [refused])
    # a checkpoint has trained on the CRLM pair only when its data names ssl-ct, less what it held out
    assert roles.trained_volumes({"data": ["synthetic", "sts"]}) == frozenset()
    config = {"data": ["ssl-ct"], "holdout_volumes": ["mirp/CRLM-CT-1006"]}
    assert roles.trained_volumes(config) == {"mirp/CRLM-CT-1004"}
    assert roles.undeclared({"data": ["ssl-ct"]}) == []
    monkeypatch.setattr(roles, "SELF_SUPERVISED", frozenset({"mirp/CRLM-CT-1004", "pyradiomics/lung2"}))
    assert roles.undeclared({"data": ["ssl-ct"]}) == ["ssl-ct volume 'pyradiomics/lung2' (report)"]
