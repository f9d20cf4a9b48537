"""The radiotherapy workflow on a real clinical plan: LUNG1-001 (NSCLC-Radiomics, CC BY-NC 3.0,
development only: read from ../shared/data, never committed or bundled)."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fewshotcx import rt
from fewshotcx.cli.main import main
from fewshotcx.io import dicom
from fewshotcx.io.dicom import scan_series
from fewshotcx.io.volume import Volume, load_volume

from rt_cases import set_patient

LUNG1 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mirp" / "ct_images_seg_nsclc" / "LUNG1-001"
CT, RS = LUNG1 / "image", LUNG1 / "mask_rtstruct" / "1-1.dcm"
ASKED = ["Lung_L", "Lung_R", "SpinalCord", "GTV"]  # the plan says Lung-Left, Lung-Right, Spinal-Cord, GTV-1

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RS.is_file(), reason="LUNG1-001 development data not found at ../shared/data "
                                                "(CC BY-NC, never bundled); see docs/radiotherapy.md"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def plan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rt.read_structures(RS, CT, ASKED)


def test_clinical_plan_reads_under_tg263_names(plan):
    assert plan.rois == ("Lung-Left", "Lung-Right", "Spinal-Cord", "GTV-1")
    volumes = {name: rt.volume_cc(mask) for name, mask in plan.masks().items()}
    assert volumes["Lung_L"] > 1000 and volumes["Lung_R"] > 1000 and 5 < volumes["SpinalCord"] < 100
    assert plan.labels.same_grid(load_volume(CT))


def test_rewritten_plan_is_valid_and_reads_back(plan, tmp_path):
    out = rt.write_structures(plan.labels, plan.names, CT, tmp_path / "rs.dcm")
    written, ct = pydicom.dcmread(out), pydicom.dcmread(scan_series(CT).files[0])
    for keyword in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert written.get(keyword) == ct.get(keyword)
    back = rt.read_rtstruct(out, CT)
    for value, name in enumerate(plan.names, start=1):
        np.testing.assert_array_equal(back[name].array, (plan.labels.array == value).astype(np.uint8))
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=120)
        assert "Error" not in report.stdout + report.stderr


def test_evaluate_clinical_rtstruct_against_itself(tmp_path):
    table = tmp_path / "self.csv"
    assert main(["evaluate", "--reference", str(RS), "--prediction", str(RS), "--image", str(CT),
                 "--structures", ",".join(ASKED), "--out", str(table)]) == 0
    lines = table.read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [r["structure"] for r in rows] == ASKED
    assert all(r["status"] == "ok" and float(r["dice"]) == 1.0 and float(r["apl"]) == 0.0 for r in rows)


def test_predicted_rtstruct_on_a_new_patient_scores_like_an_independent_dice(plan, tmp_path):
    """Support: the clinical plan. Query: 24 slices of the same CT written as another patient's series
    (so the prediction is meaningful for the lungs). The RTSTRUCT output must score exactly as a Dice
    computed independently (MONAI) on the label-map output."""
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_dice

    z = np.flatnonzero((plan.labels.array == 4).any(axis=(0, 1)))
    window = slice(max(int(z.mean()) - 12, 0), max(int(z.mean()) - 12, 0) + 24)
    affine = plan.image.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ [0, 0, window.start] + affine[:3, 3]
    image = Volume(plan.image.array[:, :, window], affine)
    query = tmp_path / "query_ct"
    dicom.write_dicom_series(image, query)
    set_patient(query, "NEW-1", "NEW^PATIENT")
    reference = load_volume(query).with_array(plan.labels.array[:, :, window], label=True)
    rt.save_labels(reference, ASKED, tmp_path / "ref.nii.gz")
    base = ["predict", "--support", f"{CT}:{RS}", "--structures", ",".join(ASKED), "--image", str(query),
            "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "pred.nii.gz")]) == 0
    assert main(base + ["--out", str(tmp_path / "pred.dcm")]) == 0
    table = tmp_path / "t.csv"
    assert main(["evaluate", "--reference", str(tmp_path / "ref.nii.gz"), "--prediction", str(tmp_path / "pred.dcm"),
                 "--image", str(query), "--out", str(table)]) == 0
    header, *lines = table.read_text().splitlines()
    rows = {line.split(",")[0]: dict(zip(header.split(","), line.split(","))) for line in lines}
    prediction = load_volume(tmp_path / "pred.nii.gz", label=True).array
    for value, name in enumerate(ASKED, start=1):
        theirs = float(compute_dice(torch.tensor(prediction == value)[None, None].float(),
                                    torch.tensor(reference.array == value)[None, None].float(),
                                    include_background=True, ignore_empty=False))
        assert float(rows[name]["dice"]) == pytest.approx(theirs, abs=1e-6), name
    assert any(float(rows[name]["dice"]) > 0 for name in ASKED)  # a real prediction, not empty masks
