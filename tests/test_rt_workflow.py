"""The radiotherapy workflow: previous plans (CT + RTSTRUCT) as support, named RTSTRUCT / SEG / label-map
outputs a planning system accepts, de-identification, and bad input as one line (generated series)."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from fewshotcx import rt
from fewshotcx.cli.main import main
from fewshotcx.io.dicom import scan_series
from fewshotcx.rt.rtstruct import on_series_grid
from fewshotcx.io.volume import Volume, VolumeError, load_volume

from conftest import require_command
from rt_cases import AFFINE, PLAN_ROIS, make_plan, make_query, phantom, tiny_weights

ASKED = "Lung_L,SpinalCord,GTV"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A generated plan, a query of another patient, a tiny checkpoint and the predictions the CLI writes."""
    root = tmp_path_factory.mktemp("rt")
    ct, rs = make_plan(root)
    query = make_query(root)
    weights = tiny_weights(root / "tiny.pt")
    base = ["predict", "--support", f"{ct}:{rs}", "--structures", ASKED, "--image", str(query),
            "--weights", str(weights), "--device", "cpu"]
    outputs = {"nifti": root / "pred.nii.gz", "rtstruct": root / "pred.dcm", "seg": root / "pred.seg.dcm"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for out in outputs.values():
            assert main(base + ["--out", str(out)]) == 0
    return {"root": root, "ct": ct, "rs": rs, "query": query, "weights": weights, "base": base, **outputs}


def first_slice(directory) -> pydicom.Dataset:
    return pydicom.dcmread(scan_series(directory).files[0])


def labels_on_series(case) -> np.ndarray:
    """The label-map output in the query series' own ``(X, Y, Z)`` layout."""
    return on_series_grid(load_volume(case["nifti"], label=True), scan_series(case["query"]), "pred", binary=False)


def test_read_structures_finds_clinical_names_through_tg263(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = rt.read_structures(case["rs"], case["ct"], ASKED.split(","))
    assert found.names == ("Lung_L", "SpinalCord", "GTV") and found.rois == tuple(PLAN_ROIS)
    _, masks = phantom()
    assert found.labels.same_grid(found.image) and found.labels.array.dtype == np.uint8
    expected = np.zeros(masks["GTV-1"].shape, np.uint8)
    for value, roi in enumerate(PLAN_ROIS, start=1):  # later structures win where they overlap (GTV in lung)
        expected[masks[roi]] = value
    native = on_series_grid(found.labels, scan_series(case["ct"]), "labels", binary=False)
    np.testing.assert_array_equal(native, expected)
    assert set(found.masks()) == {"Lung_L", "SpinalCord", "GTV"}


def test_label_map_output_has_a_name_sidecar(case):
    labels, names = rt.load_labels(case["nifti"])
    assert names == ["Lung_L", "SpinalCord", "GTV"]
    sidecar = json.loads(case["nifti"].with_name("pred.structures.json").read_text())
    assert sidecar["format"] == "fewshotcx-structures/1"
    assert [(e["value"], e["name"], e["type"]) for e in sidecar["structures"]] == [
        (1, "Lung_L", "ORGAN"), (2, "SpinalCord", "ORGAN"), (3, "GTV", "GTV")]
    assert labels.same_grid(load_volume(case["query"])) and int(labels.array.max()) <= 3


def test_rtstruct_is_in_the_query_patient_study_and_frame(case):
    out, ct = pydicom.dcmread(case["rtstruct"]), first_slice(case["query"])
    assert [r.ROIName for r in out.StructureSetROISequence] == ["Lung_L", "SpinalCord", "GTV"]
    assert [o.RTROIInterpretedType for o in out.RTROIObservationsSequence] == ["ORGAN", "ORGAN", "GTV"]
    assert out.ROIContourSequence[2].ROIDisplayColor == [255, 0, 0]
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                    "StudyDate", "AccessionNumber", "FrameOfReferenceUID"):
        assert out.get(keyword) == ct.get(keyword), keyword
    assert out.PatientID == "NEW-7" and out.PatientIdentityRemoved == "NO"
    referenced = {c.ReferencedSOPInstanceUID for c in out.ReferencedFrameOfReferenceSequence[0]
                  .RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence}
    assert referenced == set(scan_series(case["query"]).sop_instance_uids)


def test_rtstruct_reads_back_into_the_label_map_output(case):
    labels = load_volume(case["nifti"], label=True)
    back = rt.read_rtstruct(case["rtstruct"], case["query"])
    assert list(back) == ["Lung_L", "SpinalCord", "GTV"]
    for value, name in enumerate(back, start=1):
        np.testing.assert_array_equal(back[name].array, (labels.array == value).astype(np.uint8))
    assert any(back[name].array.any() for name in back)  # not a vacuous comparison


def test_an_independent_reader_gets_the_same_masks(case):
    """rt-utils fills polygons boundary-inclusively on rounded vertices (OpenCV), so its masks hold ours
    and add at most the ring of pixels the 0.5 iso-contour runs through: anything else (a flipped,
    transposed or shifted slice, a wrong slice) breaks one of the two inclusions."""
    rt_utils = pytest.importorskip("rt_utils", reason="rt-utils is in the dev extra: pip install -e '.[dev]'")
    reader = rt_utils.RTStructBuilder.create_from(dicom_series_path=str(case["query"]),
                                                  rt_struct_path=str(case["rtstruct"]))
    assert reader.get_roi_names() == ["Lung_L", "SpinalCord", "GTV"]
    ours = labels_on_series(case)
    ring = np.ones((3, 3, 1), bool)
    for value, name in enumerate(reader.get_roi_names(), start=1):
        theirs = reader.get_roi_mask_by_name(name).transpose(1, 0, 2)  # (row, column, slice) -> (X, Y, Z)
        mine = ours == value
        assert mine.any()
        assert not (mine & ~theirs).any(), name
        assert not (theirs & ~ndimage.binary_dilation(mine, structure=ring)).any(), name


def test_dciodvfy_finds_no_error(case):
    require_command("dciodvfy", "dicom3tools")
    for path in (case["rtstruct"], case["seg"]):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        assert "Error" not in report, report
        assert ("RTStructureSet" if path == case["rtstruct"] else "Segmentation") in report


def test_seg_output_reads_back_through_highdicom(case):
    hd = pytest.importorskip("highdicom", reason="highdicom is in the dicom and dev extras")
    seg = hd.seg.segread(str(case["seg"]))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lung_L", "SpinalCord", "GTV"]
    assert seg.StudyInstanceUID == first_slice(case["query"]).StudyInstanceUID
    ours = labels_on_series(case)
    series = scan_series(case["query"])
    for number in (1, 2, 3):
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(series.sop_instance_uids),
                                                   segment_numbers=[number], assert_missing_frames_are_empty=True)
        np.testing.assert_array_equal(frames[..., 0].transpose(2, 1, 0).astype(bool), ours == number)


def test_deidentified_rtstruct_fits_the_deidentified_series(case, tmp_path):
    out, copy = tmp_path / "anon.dcm", tmp_path / "anon_ct"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(case["base"] + ["--out", str(out), "--deidentify", str(copy)]) == 0
    structure_set, ct = pydicom.dcmread(out), first_slice(copy)
    assert structure_set.PatientIdentityRemoved == "YES" and ct.PatientIdentityRemoved == "YES"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert structure_set.get(keyword) == ct.get(keyword), keyword
    assert ct.PatientID == "" and ct.PatientName == "" and "NEW-7" not in str(structure_set)
    back = rt.read_rtstruct(out, copy)  # the pair still fits together
    assert [name for name in back] == ["Lung_L", "SpinalCord", "GTV"]
    if shutil.which("dciodvfy"):
        result = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
        assert "Error" not in result.stdout + result.stderr


def test_evaluate_scores_a_structure_set_against_itself(case, tmp_path, capsys):
    table = tmp_path / "self.csv"
    assert main(["evaluate", "--reference", str(case["rtstruct"]), "--prediction", str(case["nifti"]),
                 "--image", str(case["query"]), "--out", str(table)]) == 0
    rows = [line.split(",") for line in table.read_text().splitlines()]
    header = rows[0]
    assert header[:3] == ["structure", "prediction_name", "status"] and "surface_dice_2mm" in header
    for row in rows[1:]:
        values = dict(zip(header, row))
        if values["status"] == "ok":
            assert float(values["dice"]) == 1.0 and float(values["apl"]) == 0.0
            assert float(values["surface_dice_2mm"]) == pytest.approx(1.0, abs=1e-12) and values["volume_reference_cc"] == values[
                "volume_prediction_cc"]


def test_evaluate_reports_a_missing_structure_explicitly(case, tmp_path):
    labels, _ = rt.load_labels(case["nifti"])
    partial = tmp_path / "partial.nii.gz"
    rt.save_labels(labels.with_array(np.where(labels.array == 1, 1, 0).astype(np.uint8)), ["lung left"], partial)
    table = tmp_path / "t.csv"
    assert main(["evaluate", "--reference", str(case["rtstruct"]), "--prediction", str(partial),
                 "--image", str(case["query"]), "--out", str(table)]) == 0
    lines = table.read_text().splitlines()
    header = lines[0].split(",")
    rows = {r.split(",")[0]: dict(zip(header, r.split(","))) for r in lines[1:]}
    assert rows["Lung_L"]["prediction_name"] == "lung left" and rows["Lung_L"]["status"] in ("ok", "empty_prediction")
    assert rows["GTV"]["status"] == "missing_in_prediction" and rows["GTV"]["dice"] == ""


def bad_input_cases(case, tmp_path):
    """Each bad input: the arguments after ``predict`` and a fragment of its one-line error."""
    base = case["base"]
    _, other_rs = make_plan(tmp_path, shift=2, patient="OTHER")
    empty_rs = tmp_path / "empty_rs.dcm"
    empty = Volume(np.zeros(phantom()[0].shape, np.uint8), AFFINE, label=True)
    full = Volume(phantom()[1]["Lung-Left"].astype(np.uint8), AFFINE, label=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt.write_rtstruct({"Lung-Left": full, "GTV-1": empty}, case["ct"], empty_rs)
    swap = lambda i, value: base[:i] + [value] + base[i + 1:]  # noqa: E731
    return {
        "unknown ROI": (swap(4, "Liver"), "its ROIs are: 'Lung-Left', 'SPINAL CORD', 'GTV-1'"),
        "RTSTRUCT on another series": (swap(2, f"{case['ct']}:{other_rs}"), "drawn on series"),
        "empty contour": (swap(2, f"{case['ct']}:{empty_rs}")[:4] + ["Lung_L,GTV"] + base[5:], "has no contour"),
        "two names for one structure": (swap(4, "Lung_L,lung-left"), "name the same structure"),
        "two names for one ROI": (swap(4, "GTV,GTV-1"), "both match ROI 'GTV-1'"),
        "RTSTRUCT without --structures": (base[:3] + base[5:], "--structures"),
        "DICOM out on a NIfTI query": (swap(6, str(case["nifti"])), "DICOM series folder"),
    }


def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    cases = bad_input_cases(case, tmp_path)
    for label, (args, fragment) in cases.items():
        out = tmp_path / f"{label.replace(' ', '_')}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(args + ["--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, (label, err)
        assert len(err.strip().splitlines()) == 1 and fragment in err, (label, err)
        assert not out.exists(), label


def test_overlapping_names_in_an_rtstruct_are_refused(case, tmp_path):
    lung = Volume(phantom()[1]["Lung-Left"].astype(np.uint8), AFFINE, label=True)
    twice = tmp_path / "twice.dcm"
    rt.write_rtstruct({"Lung-Left": lung, "LUNG_LEFT": lung}, case["ct"], twice)
    with pytest.raises(ValueError, match="matches several ROIs"):
        rt.read_structures(twice, case["ct"], ["Lung_L"])
    with pytest.raises(ValueError, match="both match ROI 'GTV-1'"):
        rt.read_structures(case["rs"], case["ct"], ["GTV", "GTV-1"])


def test_existing_outputs_need_overwrite(case, capsys):
    for kind in ("rtstruct", "seg", "nifti"):
        before = case[kind].read_bytes()
        assert main(case["base"] + ["--out", str(case[kind])]) == 2
        assert "--overwrite" in capsys.readouterr().err and case[kind].read_bytes() == before


def test_write_structures_rejects_labels_off_the_series_grid(case, tmp_path):
    wrong = Volume(np.ones((5, 5, 5), np.uint8), np.eye(4), label=True)
    with pytest.raises(VolumeError, match="not on the grid"):
        rt.write_structures(wrong, ["GTV"], case["query"], tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_evaluate_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    _, other_rs = make_plan(tmp_path, shift=2, patient="ELSE")
    table = tmp_path / "t.csv"
    runs = {
        "RTSTRUCT on another series": (["--reference", str(other_rs), "--prediction", str(case["nifti"])],
                                       "drawn on series"),
        "RTSTRUCT on a file image": (["--reference", str(case["rtstruct"]), "--prediction", str(case["nifti"]),
                                      "--image", str(case["nifti"])], "not a directory"),
        "negative tolerance": (["--reference", str(case["rtstruct"]), "--prediction", str(case["nifti"]),
                                "--tolerance", "-1"], ">= 0"),
    }
    for label, (args, fragment) in runs.items():
        argv = ["evaluate", "--image", str(case["query"]), *args, "--out", str(table)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(argv) == 2, label
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and fragment in err, (label, err)
        assert not table.exists(), label


def test_named_label_map_support_is_remapped_to_the_requested_order(case, tmp_path, capsys):
    labels, names = rt.load_labels(case["nifti"])
    assert names == ["Lung_L", "SpinalCord", "GTV"]
    image, remapped = rt.support_from(case["query"], case["nifti"], ["gtv", "Lung-Left"])
    np.testing.assert_array_equal(remapped.array, np.select([labels.array == 3, labels.array == 1], [1, 2], 0))
    assert image.same_grid(remapped)
    with pytest.raises(ValueError, match="'Heart' is not in"):
        rt.support_from(case["query"], case["nifti"], ["Heart"])
    bare = tmp_path / "bare.nii.gz"
    shutil.copy(case["nifti"], bare)
    with pytest.raises(ValueError, match="structures.json sidecar"):
        rt.support_from(case["query"], bare, ["GTV"])
