"""One name per concept (issue #30 item 4): metrics take ``(prediction, reference)``, one
``--structures`` format, one SAM weights flag, one patient-identity default for both RTSTRUCT writers,
one default ROI name; the old spellings still work for one release with a deprecation note."""

from __future__ import annotations

import argparse

import numpy as np
import pydicom
import pytest

from fewshotcx import Volume, metrics, rt
from fewshotcx.cli.common import CliError, structure_names
from fewshotcx.cli.predict import structure_list
from fewshotcx.io.dicom import write_dicom_series
from fewshotcx.rt.names import default_name, default_names

AFFINE = np.diag([-1.5, -1.5, 3.0, 1.0])


def masks():
    a = np.zeros((12, 12, 4), np.uint8)
    a[2:7, 2:7, 1:3] = 1
    b = np.zeros_like(a)
    b[3:8, 2:7, 1:3] = 1
    return Volume(a, AFFINE, label=True), Volume(b, AFFINE, label=True)


@pytest.mark.parametrize("metric", [metrics.dice, metrics.hd95, metrics.assd, metrics.surface_dice])
def test_metrics_take_prediction_then_reference_and_the_old_keywords_warn(metric):
    prediction, reference = masks()
    value = metric(prediction=prediction, reference=reference)
    assert value == metric(prediction, reference)
    with pytest.warns(DeprecationWarning, match="gt=.*deprecated.*reference="):
        assert metric(pred=prediction, gt=reference) == value
    with pytest.raises(TypeError, match="both"):
        metric(prediction, reference=reference, gt=reference)


def test_evaluate_structures_names_its_maps_and_the_old_positional_order_warns():
    prediction, reference = masks()
    prediction_map, reference_map = {"GTV": prediction}, {"GTV": reference, "Cord": reference}
    rows = rt.evaluate_structures(prediction=prediction_map, reference=reference_map)
    assert {r["structure"]: r["status"] for r in rows} == {"GTV": "ok", "Cord": "missing_in_prediction"}
    with pytest.warns(DeprecationWarning, match="evaluate_structures"):
        assert rt.evaluate_structures(reference_map, prediction_map) == rows
    with pytest.raises(TypeError):
        rt.evaluate_structures(prediction=prediction_map)


def test_both_rtstruct_writers_keep_the_patient_by_default(tmp_path):
    series = tmp_path / "ct"
    write_dicom_series(Volume(np.zeros((12, 12, 4), np.float32), AFFINE), series)
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "DOE^JANE", "MRN-7"
        ds.save_as(path, enforce_file_format=True)
    mask, _ = masks()
    plain = pydicom.dcmread(rt.write_rtstruct({"GTV": mask}, series, tmp_path / "a.dcm"))
    named = pydicom.dcmread(rt.write_structures(mask, ["GTV"], series, tmp_path / "b.dcm"))
    assert (plain.PatientID, named.PatientID) == ("MRN-7", "MRN-7")
    anonymous = pydicom.dcmread(rt.write_rtstruct({"GTV": mask}, series, tmp_path / "c.dcm", deidentify=True))
    assert anonymous.PatientID != "MRN-7" and anonymous.PatientIdentityRemoved == "YES"
    with pytest.warns(DeprecationWarning, match="keep_patient_identity"):
        old = pydicom.dcmread(rt.write_rtstruct({"GTV": mask}, series, tmp_path / "d.dcm", keep_patient_identity=False))
    assert old.PatientIdentityRemoved == "YES"


def test_one_structures_format():
    assert structure_names("Bladder,Rectum") == {1: "Bladder", 2: "Rectum"}
    assert structure_names("2=Spleen, 5=Liver") == {2: "Spleen", 5: "Liver"}
    for bad in ("", "1=A,1=B", "0=A", "x=A", "A,2=B"):
        with pytest.raises(argparse.ArgumentTypeError):
            structure_names(bad)
    assert structure_list("Lung_L,Lung_R") == structure_list("1=Lung_L,2=Lung_R") == ["Lung_L", "Lung_R"]
    with pytest.raises(CliError, match="1, 2, ... in the order given"):
        structure_list("3=GTV")


def test_old_cli_spellings_still_parse_with_a_note(capsys):
    from fewshotcx.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["compare", "--support", "a:b", "--query", "q", "--out", "o", "--sam-checkpoint", "s.pth"])
    assert args.sam_weights == "s.pth" and "--sam-weights" in capsys.readouterr().err
    args = parser.parse_args(["rtstruct", "--mask", "A=a.nii", "--series", "s", "--out", "o.dcm",
                              "--keep-patient-identity"])
    assert args.deidentify is False and "deprecated" in capsys.readouterr().err


def test_one_default_roi_name():
    assert default_name(3) == "label_3" and default_names(2) == ["label_1", "label_2"]


def test_session_classes_keyword_and_property_and_draws_keep_the_old_spellings_for_one_release(tmp_path):
    """``ContourSession(classes=)`` (was ``labels=``), ``session.classes`` a property (was a method),
    ``session.declared`` (was ``.labels``), ``draws=`` (was ``k=``) in predict_uncertainty,
    predict_samples and review."""
    from servekit import tiny_segmenter, write_image

    from fewshotcx import ContourSession, load_volume
    from fewshotcx.evaluation import review

    path = write_image(tmp_path)
    mask = np.zeros((24, 20), np.int64)
    mask[8:14, 6:12] = 2
    session = ContourSession(path, tiny_segmenter(), classes=(2,))
    session.draw(4, mask)
    assert session.classes == (2,) and session.declared == (2,)
    with pytest.warns(DeprecationWarning, match=r"ContourSession.classes\(\) is deprecated"):
        assert session.classes() == (2,)
    with pytest.warns(DeprecationWarning, match=r"ContourSession\(labels=\) is deprecated.*classes="):
        assert ContourSession(path, tiny_segmenter(), labels=(2,)).declared == (2,)
    with pytest.warns(DeprecationWarning, match="ContourSession.declared"):
        assert session.labels == (2,)
    with pytest.raises(TypeError, match="both"):
        ContourSession(path, tiny_segmenter(), labels=(2,), classes=(2,))
    image, label = load_volume(path), session.result()
    seg = tiny_segmenter().fit([image], [label])
    expected = seg.predict_uncertainty(image, draws=2).array
    with pytest.warns(DeprecationWarning, match=r"Segmenter.predict_uncertainty\(k=\).*draws="):
        assert np.array_equal(seg.predict_uncertainty(image, k=2).array, expected)
    with pytest.warns(DeprecationWarning, match=r"Segmenter.predict_samples\(k=\)"):
        assert len(seg.predict_samples(image, k=2)) == 2
    with pytest.warns(DeprecationWarning, match=r"review\(k=\)"):
        assert np.array_equal(review.review(seg, image, k=2).scores, review.review(seg, image, draws=2).scores)
