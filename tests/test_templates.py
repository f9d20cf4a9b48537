"""Structure templates (fewshotcx.rt.templates): the shipped ones, one-line validation errors, and their use
by write_structures and ``fewshotcx predict --template`` (colours, interpreted types, order, PTV = CTV + margin)."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest

from fewshotcx import rt
from fewshotcx.cli.main import main
from fewshotcx.io.volume import Volume, load_volume
from fewshotcx.rt.templates import SHIPPED, load_template, parse_template

from rt_cases import AFFINE, make_plan, make_query, tiny_weights

CUSTOM = """format = "fewshotcx-template/1"
name = "lung-test"

[[structure]]
name = "GTV"
colour = [250, 10, 10]
type = "GTV"

[[structure]]
name = "Lung_L"
colour = [10, 20, 30]
type = "ORGAN"

[[structure]]
name = "PTV"
colour = [0, 255, 255]
type = "PTV"
source = "GTV"
margin = 3.0
"""


def structure(**fields) -> dict:
    return {"name": "A", "colour": [1, 2, 3], "type": "ORGAN", **fields}


def template(*structures) -> dict:
    return {"format": "fewshotcx-template/1", "name": "t", "structure": list(structures)}


def test_shipped_templates_list_the_issue_structures():
    assert set(SHIPPED) >= {"cervix", "thorax"}
    cervix, thorax = load_template("cervix"), load_template("thorax")
    assert [s.name for s in cervix.structures] == ["Bladder", "Rectum", "Bowel_Bag", "Femur_Head_L", "Femur_Head_R",
                                                   "CTV", "PTV"]
    assert cervix.predicted == [s.name for s in cervix.structures][:-1]
    ptv = cervix.structures[-1]
    assert (ptv.type, ptv.source, ptv.margin) == ("PTV", "CTV", 7.0)
    assert cervix.structures[2].tg263 == "Bowel"
    assert thorax.predicted == ["Lung_L", "Lung_R", "SpinalCord", "Heart", "Esophagus", "GTV"]
    assert {s.type for s in thorax.structures} == {"ORGAN", "GTV"}


@pytest.mark.parametrize("data, message", [
    (template(structure(shade=1)), "unknown key 'shade'"),
    ({**template(structure()), "version": 2}, "unknown key 'version'"),
    (template(structure(colour=[0, 0, 256])), "colour must be three integers 0-255"),
    (template(structure(colour="red")), "colour must be three integers 0-255"),
    (template(structure(colour=[1, 2])), "colour must be three integers 0-255"),
    (template(structure(type="ORGAN_AT_RISK")), "type must be an RT ROI Interpreted Type"),
    (template(structure(name="Lung_L"), structure(name="lung-left")), "duplicate of structure 'Lung_L'"),
    (template(structure(name="Heart"), structure(name="HEART")), "duplicate of structure 'Heart'"),
    (template(structure(name="PTV", margin=5.0)), "margin without a source"),
    (template(structure(name="PTV", source="CTV")), "source without a margin"),
    (template(structure(name="PTV", source="CTV", margin=5.0)), "source 'CTV' is not a predicted structure"),
    (template(structure(name="CTV"), structure(name="PTV", source="CTV", margin=-1)), "margin must be a number"),
    (template(structure(name="a\\b")), "without a backslash"),
    ({**template(structure()), "format": "other/1"}, "format must be"),
    ({"format": "fewshotcx-template/1", "name": "t"}, "no [[structure]] tables"),
])
def test_bad_templates_are_one_line_errors(data, message):
    with pytest.raises(ValueError) as caught:
        parse_template(data, "t.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("template t.toml")


def test_unknown_name_and_non_toml_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="neither a shipped template"):
        load_template("prostate-of-nowhere")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(ValueError, match="is not TOML"):
        load_template(bad)


def test_select_keeps_derived_structures_with_their_source():
    cervix = load_template("cervix")
    chosen = cervix.select(["bladder", "CTV", "PTV"])
    assert [s.name for s in chosen.structures] == ["bladder", "CTV", "PTV"] and chosen.predicted == ["bladder", "CTV"]
    assert chosen.structures[0].colour == (255, 220, 0)
    with pytest.raises(ValueError, match="PTV is CTV \\+ 7 mm: list CTV too"):
        cervix.select(["Bladder", "PTV"])
    assert cervix.select(["Liver"]).structures[0].type == "ORGAN"  # not in the template: the defaults


def test_write_structures_takes_colours_types_order_and_margins_from_the_template(tmp_path):
    from fewshotcx.io import dicom

    custom = tmp_path / "lung.toml"
    custom.write_text(CUSTOM)
    chosen = load_template(custom)
    image = np.full((20, 20, 8), -500.0, np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[4:12, 4:14, 2:6] = 2  # Lung_L
    labels[7:9, 8:10, 3:5] = 1  # GTV
    ct = tmp_path / "ct"
    dicom.write_dicom_series(Volume(image, AFFINE), ct)
    out = rt.write_structures(Volume(labels, AFFINE, label=True), ["GTV", "Lung_L"], ct, tmp_path / "rs.dcm",
                              template=chosen)
    ds = pydicom.dcmread(out)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["GTV", "Lung_L", "PTV"]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["GTV", "ORGAN", "PTV"]
    assert [list(c.ROIDisplayColor) for c in ds.ROIContourSequence] == [[250, 10, 10], [10, 20, 30], [0, 255, 255]]
    back = rt.read_rtstruct(out, ct)
    gtv = Volume((labels == 1).astype(np.uint8), AFFINE, label=True)
    expected = rt.expand_margin(gtv, 3.0).canonical()
    np.testing.assert_array_equal(back["PTV"].array, expected.array)
    assert back["PTV"].array.sum() > back["GTV"].array.sum()


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("template-plan")
    ct, rs = make_plan(root)
    custom = root / "lung.toml"
    custom.write_text(CUSTOM)
    return {"root": root, "ct": ct, "rs": rs, "query": make_query(root), "weights": tiny_weights(root / "tiny.pt"),
            "template": custom}


def predict_args(plan, out, *extra) -> list[str]:
    return ["predict", "--support", f"{plan['ct']}:{plan['rs']}", "--image", str(plan["query"]), "--weights",
            str(plan["weights"]), "--device", "cpu", "--out", str(out), *extra]


def test_predict_with_a_template_writes_its_structures_in_its_order(plan, tmp_path, capsys):
    out = tmp_path / "rs.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(predict_args(plan, out, "--template", str(plan["template"]))) == 0
    ds = pydicom.dcmread(out)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["GTV", "Lung_L", "PTV"]
    assert "wrote" in capsys.readouterr().out
    nifti = tmp_path / "labels.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(predict_args(plan, nifti, "--template", str(plan["template"]), "--structures", "Lung_L")) == 0
    labels, names = rt.load_labels(nifti)
    assert names == ["Lung_L"] and labels.same_grid(load_volume(plan["query"]))


@pytest.mark.parametrize("extra, message", [
    (["--template", "nowhere"], "neither a shipped template"),
    (["--template", "thorax"], "structure 'Lung_R' is not in"),
    (["--template", "cervix", "--structures", "Bladder,PTV"], "list CTV too"),
])
def test_predict_template_problems_are_one_line_exit_2(plan, tmp_path, capsys, extra, message):
    out = tmp_path / "rs.dcm"
    assert main(predict_args(plan, out, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_shipped_templates_are_package_data():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["fewshotcx"]
    assert "rt/template_files/*.toml" in globs
