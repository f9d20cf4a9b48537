"""RTSTRUCT writing and reading (fewshotcx.rt.rtstruct, re-exported by fewshotcx.rt) on generated DICOM series, and the ``rtstruct`` CLI command."""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from fewshotcx import rt
from fewshotcx.cli import rt as cli_rt
from fewshotcx.io import dicom
from fewshotcx.rt import rtstruct
from fewshotcx.io.volume import Volume, VolumeError, load_volume

SHAPE = (26, 22, 12)


def sagittal_affine() -> np.ndarray:
    """RAS affine of a sagittal series: rows towards P (1.1 mm), columns towards I (0.9 mm), slices R (2.5 mm)."""
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = [0, 1.1, 0], [0, 0, -0.9], [-2.5, 0, 0]
    lps[:3, 3] = [40.0, -30.0, 60.0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def world_grid(affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture
def series(tmp_path):
    """A generated sagittal CT series with anisotropic voxels and its (native layout) RAS affine."""
    affine = sagittal_affine()
    values = np.random.default_rng(0).integers(-1000, 1500, SHAPE).astype(np.float32)
    dicom.write_dicom_series(Volume(values, affine), tmp_path / "ct")
    return tmp_path / "ct", affine


def shapes(affine: np.ndarray) -> dict[str, Volume]:
    """A sphere and a torus whose hole shows on the sagittal slices (axis along world x)."""
    world = world_grid(affine)
    d = world - world[13, 11, 6]
    sphere = np.linalg.norm(d, axis=-1) <= 7.0
    torus = np.hypot(np.linalg.norm(d[..., 1:], axis=-1) - 6.5, d[..., 0]) <= 3.0
    return {"GTV sphere": Volume(sphere.astype(np.uint8), affine, label=True),
            "ring": Volume(torus.astype(np.uint8), affine, label=True)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_round_trip_keeps_the_voxels(series, tmp_path):
    directory, affine = series
    masks = shapes(affine)
    masks["ring"] = masks["ring"].canonical()  # any voxel layout on the series grid is accepted
    out = rt.write_rtstruct(masks, directory, tmp_path / "rs.dcm")
    back = rt.read_rtstruct(out, directory)
    reference = load_volume(directory)
    assert sorted(back) == sorted(masks)
    for name, mask in masks.items():
        assert back[name].same_grid(reference) and back[name].array.dtype == np.uint8
        score = dice(back[name].array, mask.canonical().array)
        assert score >= 0.98, (name, score)
        np.testing.assert_array_equal(back[name].array, mask.canonical().array)  # exact, as documented
    ring = pydicom.dcmread(out).ROIContourSequence[1].ContourSequence
    slices = [c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in ring]
    assert len(slices) > len(set(slices))  # the ring's holes are separate contours on the same slice


def test_contours_are_in_patient_coordinates(series, tmp_path):
    directory, affine = series
    array = np.zeros(SHAPE, np.uint8)
    array[7, 15, 4] = 1
    out = rt.write_rtstruct({"dot": Volume(array, affine, label=True)}, directory, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    (contour,) = ds.ROIContourSequence[0].ContourSequence
    points = np.asarray(contour.ContourData, float).reshape(-1, 3)
    # Voxel (i=7, j=15) of the slice at ImagePositionPatient P: P + i·ΔC·row + j·ΔR·col (LPS).
    sop = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
    image = next(pydicom.dcmread(p) for p in sorted(directory.iterdir()) if pydicom.dcmread(p).SOPInstanceUID == sop)
    iop = np.asarray(image.ImageOrientationPatient, float)
    d_row, d_col = (float(v) for v in image.PixelSpacing)
    centre = np.asarray(image.ImagePositionPatient, float) + 7 * d_col * iop[:3] + 15 * d_row * iop[3:]
    np.testing.assert_allclose(points.mean(axis=0), centre, atol=1e-4)
    offsets = np.abs(points - centre)
    np.testing.assert_allclose(offsets.max(axis=0), [0.0, d_col / 2, d_row / 2], atol=1e-4)
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == image.FrameOfReferenceUID
    assert ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == image.FrameOfReferenceUID


def test_references_and_patient_module(series, tmp_path):
    directory, affine = series
    images = [pydicom.dcmread(p) for p in sorted(directory.iterdir())]
    for ds in images:  # make the source series identifiable
        ds.PatientName, ds.PatientID, ds.InstitutionName = "DOE^JANE", "MRN-0042", "Saint Nowhere Hospital"
        ds.save_as(ds.filename, enforce_file_format=True)
    masks = {"PTV": shapes(affine)["GTV sphere"]}
    anonymous = pydicom.dcmread(rt.write_rtstruct(masks, directory, tmp_path / "anon.dcm", deidentify=True))
    study = anonymous.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    referenced = {r.ReferencedSOPInstanceUID for r in study.RTReferencedSeriesSequence[0].ContourImageSequence}
    assert referenced == {ds.SOPInstanceUID for ds in images}
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == images[0].SeriesInstanceUID
    assert anonymous.StudyInstanceUID == images[0].StudyInstanceUID != anonymous.SeriesInstanceUID
    assert anonymous.Modality == "RTSTRUCT" and anonymous.SOPClassUID == rtstruct.RT_STRUCTURE_SET_STORAGE
    assert anonymous.PatientName == "" and anonymous.PatientID == "" and anonymous.PatientIdentityRemoved == "YES"
    assert not dicom.has_identifiers(anonymous, retain=("ROIName",))  # the caller's names, kept on purpose
    assert [r.ROIName for r in anonymous.StructureSetROISequence] == ["PTV"]  # retained: the caller's names
    assert anonymous.StructureSetLabel == "ANONYMOUS" and anonymous.StructureSetDate == ""  # profile D, Z
    assert [c.CodeValue for c in anonymous.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    assert anonymous.RTROIObservationsSequence[0].RTROIInterpretedType == "PTV"
    raw = (tmp_path / "anon.dcm").read_bytes()
    assert b"DOE^JANE" not in raw and b"Saint Nowhere" not in raw

    kept = pydicom.dcmread(rt.write_rtstruct(masks, directory, tmp_path / "kept.dcm"))  # the default
    assert (kept.PatientName, kept.PatientID, kept.PatientIdentityRemoved) == ("DOE^JANE", "MRN-0042", "NO")
    assert "InstitutionName" not in kept
    assert "DeidentificationMethod" not in kept and "DeidentificationMethodCodeSequence" not in kept


def test_even_odd_rule_fills_nested_contours(series, tmp_path):
    directory, affine = series
    box = np.zeros(SHAPE, np.uint8)
    box[5:20, 4:18, 6] = 1
    out = rt.write_rtstruct({"box": Volume(box, affine, label=True)}, directory, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    (outer,) = ds.ROIContourSequence[0].ContourSequence
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    expected = box[:, :, 6].astype(bool)
    # Add a hole and an island inside it as separate contours (rectangles in voxel units, off-grid edges).
    for lo, hi in (((8.3, 6.8), (15.7, 14.2)), ((10.6, 8.7), (13.4, 12.3))):
        corners = np.array([[lo[0], lo[1], 6], [hi[0], lo[1], 6], [hi[0], hi[1], 6], [lo[0], hi[1], 6]])
        inner = pydicom.Dataset()
        inner.ContourImageSequence = outer.ContourImageSequence
        inner.ContourGeometricType, inner.NumberOfContourPoints = "CLOSED_PLANAR", 4
        inner.ContourData = [f"{v:.4f}" for v in (corners @ lps[:3, :3].T + lps[:3, 3]).ravel()]
        ds.ROIContourSequence[0].ContourSequence.append(inner)
        expected ^= (i > lo[0]) & (i < hi[0]) & (j > lo[1]) & (j < hi[1])
    ds.save_as(out, enforce_file_format=True)
    got = rt.read_rtstruct(out, directory)["box"].to_source().array
    assert 0 < expected.sum() < box.sum()
    np.testing.assert_array_equal(got[:, :, 6].astype(bool), expected)
    assert not np.delete(got, 6, axis=2).any()


def test_skipped_contours_are_counted_in_one_warning_per_roi(series, tmp_path):
    """A POINT contour and a contour beyond the last slice used to vanish silently (4901220)."""
    directory, affine = series
    box = np.zeros(SHAPE, np.uint8)
    box[5:20, 4:18, 6] = 1
    out = rt.write_rtstruct({"box": Volume(box, affine, label=True), "ok": Volume(box, affine, label=True)},
                            directory, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    (outer,) = ds.ROIContourSequence[0].ContourSequence
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    for kind, k in (("POINT", 6), ("CLOSED_PLANAR", SHAPE[2] + 3), ("CLOSED_PLANAR", -2)):
        corners = np.array([[8, 6, k], [15, 6, k], [15, 14, k]], dtype=float)[: 1 if kind == "POINT" else 3]
        extra = pydicom.Dataset()
        extra.ContourGeometricType, extra.NumberOfContourPoints = kind, len(corners)
        extra.ContourData = [f"{v:.4f}" for v in (corners @ lps[:3, :3].T + lps[:3, 3]).ravel()]
        ds.ROIContourSequence[0].ContourSequence.append(extra)
    ds.save_as(out, enforce_file_format=True)
    with pytest.warns(UserWarning) as caught:
        masks = rt.read_rtstruct(out, directory)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages  # one line for "box", none for the intact "ok"
    assert "ROI 'box'" in messages[0] and "2 contours outside the series" in messages[0]
    assert "1 contour of type POINT" in messages[0]
    np.testing.assert_array_equal(masks["box"].to_source().array, box)


def test_write_refuses_overwrite_and_off_grid_masks(series, tmp_path):
    directory, affine = series
    masks = shapes(affine)
    out = rt.write_rtstruct(masks, directory, tmp_path / "rs.dcm")
    with pytest.raises(FileExistsError):
        rt.write_rtstruct(masks, directory, out)
    rt.write_rtstruct(masks, directory, out, overwrite=True)
    shifted = affine.copy()
    shifted[:3, 3] += 1.0
    with pytest.raises(VolumeError, match="not on the grid"):
        rt.write_rtstruct({"x": Volume(masks["ring"].array, shifted, label=True)}, directory, tmp_path / "b.dcm")
    with pytest.raises(ValueError, match="ROI name"):
        rt.write_rtstruct({"a\\b": masks["ring"]}, directory, tmp_path / "c.dcm")
    with pytest.raises(VolumeError, match="not an RT Structure Set"):
        rt.read_rtstruct(next(directory.iterdir()), directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "rs.dcm"]  # no partial files left


def test_rtstruct_command(series, tmp_path, capsys):
    directory, affine = series
    native = shapes(affine)["GTV sphere"]
    path = tmp_path / "gtv.nii.gz"
    nib.save(nib.Nifti1Image(native.array, affine), path)
    parser = argparse.ArgumentParser(prog="fewshotcx")
    cli_rt.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "rs.dcm"
    args = parser.parse_args(["rtstruct", "--mask", f"GTV={path}", "--series", str(directory), "--out", str(out)])
    assert args.func(args) == 0 and "wrote" in capsys.readouterr().out
    assert dice(rt.read_rtstruct(out, directory)["GTV"].array, load_volume(path, label=True).array) >= 0.98
    with pytest.raises(FileExistsError):
        args.func(args)
    for bad in (["--mask", "GTV"], ["--mask", f"A={path}", "--mask", f"A={path}"]):
        args = parser.parse_args(["rtstruct", *bad, "--series", str(directory), "--out", str(tmp_path / "x.dcm")])
        with pytest.raises(ValueError):
            args.func(args)


def test_ptv_example_runs_end_to_end(capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "ptv_rtstruct.py"
    scores = runpy.run_path(str(example))["main"]()
    assert set(scores) == {"CTV", "PTV", "Bladder"} and min(scores.values()) >= 0.98
    assert "RTSTRUCT with 3 ROIs" in capsys.readouterr().out
