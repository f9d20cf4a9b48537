"""``fewshotcx listen`` against a real PACS (Debian's Orthanc), in a private network namespace: a CT series
sent to the node comes back into Orthanc as an RTSTRUCT with exactly the requested names, in the CT's
patient, study and frame of reference, dciodvfy-clean and equal to ``fewshotcx predict`` on the same
inputs; an unknown calling AE is rejected; broken series leave the node running and send nothing;
SIGTERM leaves no received file behind. Plus the argument checks (one line, exit 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fewshotcx import rt
from fewshotcx.cli.main import main
from fewshotcx.io import dicom
from fewshotcx.io.volume import Volume

from conftest import missing, require_command
from rt_cases import AFFINE, make_plan, make_query, phantom, tiny_weights

REPO = Path(__file__).resolve().parents[1]
ASKED = "Lung_L,SpinalCord,GTV"
pytest.importorskip("pynetdicom", reason="pynetdicom is in the node and dev extras: pip install -e '.[dev]'")


def private_network_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    return done.returncode == 0


def broken_series(query: Path, root: Path) -> dict[str, Path]:
    """A truncated copy of the query (pixel data cut short) and CT files that are MR inside and out."""
    from pydicom.uid import generate_uid

    truncated, mr_inside = root / "truncated", root / "mr_inside"
    uids = {truncated: generate_uid(), mr_inside: generate_uid()}
    for folder in (truncated, mr_inside):
        folder.mkdir()
    for k, path in enumerate(sorted(query.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uids[truncated]
        if k == 3:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 * 2]
        ds.save_as(truncated / path.name)
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.Modality = uids[mr_inside], "MR"
        ds.save_as(mr_inside / path.name)
    image, _ = phantom(2)
    mr = root / "mr"
    dicom.write_dicom_series(Volume(image + 1000.0, AFFINE), mr, modality="mr")
    return {"truncated": truncated, "mr_inside": mr_inside, "mr": mr}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    require_command("Orthanc", "orthanc")
    if not private_network_works():
        missing("cannot make a private network namespace (unshare -rn) to run Orthanc on loopback only")
    root = tmp_path_factory.mktemp("node")
    library = root / "library"
    make_plan(library / "patient-1")
    query = make_query(root)
    weights = tiny_weights(root / "tiny.pt")
    model = ["--weights", str(weights), "--device", "cpu"]
    out = root / "out"
    out.mkdir()
    spec = {"out": str(out), "library": str(library), "query": str(query), "structures": ASKED, "model": model,
            "repo": str(REPO), **{k: str(v) for k, v in broken_series(query, root).items()}}
    (root / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(["unshare", "-rn", sys.executable, str(REPO / "tests" / "nodekit.py"), str(root / "spec.json")],
                          capture_output=True, text=True, timeout=500, cwd=REPO)
    log = (out / "node.log").read_text() if (out / "node.log").exists() else ""
    assert done.returncode == 0, done.stderr[-3000:] + log[-3000:]
    results = json.loads((out / "results.json").read_text())
    predicted = root / "predict.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = library / "patient-1"
        assert main(["predict", "--support", f"{plan}:{plan / 'PLAN-1_RS.dcm'}", "--structures", ASKED,
                     "--image", str(query), "--out", str(predicted), *model]) == 0
    return {"results": results, "out": out, "query": query, "predicted": predicted, "log": log}


def test_the_rtstruct_lands_in_orthanc_with_the_requested_names_and_the_ct_identity(scenario):
    results = scenario["results"]
    assert results["echo"] == "ok" and set(results["good"]) == {"0x0"}, results
    landed = sorted(scenario["out"].glob("pacs_*.dcm"))
    assert len(landed) == 1, scenario["log"]
    rs, ct = pydicom.dcmread(landed[0]), pydicom.dcmread(sorted(scenario["query"].glob("*.dcm"))[0])
    assert rs.Modality == "RTSTRUCT"
    assert [r.ROIName for r in rs.StructureSetROISequence] == ASKED.split(",")
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert rs.get(keyword) == ct.get(keyword), keyword
    series = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.SeriesInstanceUID
    assert results["outbox"] == [f"RS_{rs.SOPInstanceUID}.dcm"]
    line = [x for x in scenario["log"].splitlines() if ct.SeriesInstanceUID in x and "sent to ORTHANC" in x]
    assert len(line) == 1 and "received 10 images, contoured 3 structures" in line[0], scenario["log"]


def test_the_node_rtstruct_equals_fewshotcx_predict(scenario):
    landed = sorted(scenario["out"].glob("pacs_*.dcm"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        node, cli = rt.read_rtstruct(landed, scenario["query"]), rt.read_rtstruct(scenario["predicted"], scenario["query"])
    assert list(node) == list(cli) == ASKED.split(",")
    assert any(m.array.any() for m in node.values())
    for name in node:
        np.testing.assert_array_equal(node[name].array, cli[name].array, err_msg=name)


def test_the_node_rtstruct_is_dciodvfy_clean(scenario):
    require_command("dciodvfy", "dicom3tools")
    landed = sorted(scenario["out"].glob("pacs_*.dcm"))[0]
    report = subprocess.run(["dciodvfy", str(landed)], capture_output=True, text=True, timeout=60)
    text = report.stdout + report.stderr
    assert "Error" not in text and "RTStructureSet" in text, text


def test_an_unknown_calling_ae_is_rejected(scenario):
    results = scenario["results"]
    assert results["stranger_echo"] == "rejected" and results["stranger_store"] == ["rejected"]
    assert "refused an association from 'STRANGER'" in scenario["log"]


def test_broken_series_are_logged_send_nothing_and_the_node_keeps_running(scenario):
    results = scenario["results"]
    assert results["truncated_log"] and "cannot decode pixel data" in results["truncated_log"][0], scenario["log"]
    assert set(results["mr_inside"]) == {"0xa900"} and "a MR image" in results["mr_inside_log"][0]
    assert "0x0" not in results["mr"], results["mr"]  # MR has no presentation context: the association fails
    assert results["pacs_instances_at_end"] == 1 and len(results["outbox"]) == 1
    assert results["echo_at_end"] == "ok" and results["alive_at_end"]


def test_sigterm_stops_the_node_and_leaves_no_received_file(scenario):
    results = scenario["results"]
    assert results["exit_code"] == 0 and results["tmp_after"] == [], results
    assert scenario["log"].rstrip().endswith("stopped")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("listen-args")
    make_plan(root / "library" / "patient-1")
    (root / "empty").mkdir()
    two = root / "two" / "patient-1"
    make_plan(two)
    shutil.copy(next(two.glob("*_RS.dcm")), two / "copy_RS.dcm")
    return root


@pytest.mark.parametrize("change, message", [
    ({"--structures": None}, "say what to contour"),
    ({"--forward": "ORTHANC@localhost"}, "--forward expects AE@HOST:PORT"),
    ({"--forward": "THIS-AE-TITLE-IS-TOO-LONG@h:4242"}, "is not an AE title"),
    ({"--ae-title": "a\\b"}, "is not an AE title"),
    ({"--host": "0.0.0.0"}, "needs --allow"),
    ({"--host": "0.0.0.0", "--allow": ","}, "is not an AE title"),
    ({"--library": "empty"}, "has no patient folders"),
    ({"--library": "two"}, "holds 2 RTSTRUCTs"),
    ({"--library": "absent"}, "is not a folder"),
    ({"--structures": "Heart"}, "structure 'Heart' is not in"),
    ({"--template": "nowhere"}, "neither a shipped template"),
    ({"--port": "70000"}, "must be <= 65535"),
    ({"--idle": "0"}, "must be positive"),
])
def test_listen_arguments_are_checked_in_one_line_before_anything_starts(library, capsys, change, message):
    args = {"--library": "library", "--structures": ASKED, "--forward": "ORTHANC@127.0.0.1:4242", "--port": "11112"}
    args.update(change)
    argv = ["listen"]
    for option, value in args.items():
        if value is not None:
            argv += [option, str(library / value) if option == "--library" else value]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
