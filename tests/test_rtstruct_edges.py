"""RTSTRUCT inputs as planning systems export them (issue #29 items 11-13): contours off the slice
planes, nesting on one plane, ROIs without an ROI Contour item, malformed ContourData, corrupt files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fewshotcx import rt
from fewshotcx.cli.main import main
from fewshotcx.io import dicom
from fewshotcx.io.dicom import scan_series
from fewshotcx.io.volume import Volume, VolumeError

from rt_cases import make_plan, make_query, tiny_weights

SHAPE = (24, 24, 8)
AFFINE = np.diag([-1.5, -1.5, 3.0, 1.0])  # axial, 1.5 x 1.5 x 3 mm
LUNG1 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mirp" / "ct_images_seg_nsclc" / "LUNG1-001"


@pytest.fixture
def plan(tmp_path):
    """``(CT folder, RTSTRUCT)``: ROIs 'box' (one square on slice 2) and 'other' on a generated series."""
    dicom.write_dicom_series(Volume(np.zeros(SHAPE, np.float32), AFFINE), tmp_path / "ct")
    box = np.zeros(SHAPE, np.uint8)
    box[3:8, 3:8, 2] = 1
    masks = {"box": Volume(box, AFFINE, label=True), "other": Volume(box, AFFINE, label=True)}
    return tmp_path / "ct", rt.write_rtstruct(masks, tmp_path / "ct", tmp_path / "rs.dcm")


def square(lo: float, hi: float, k: float, corner: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``(4, 3)`` voxel (i, j, k) corners of the square ``[lo, hi]²`` moved by ``corner``."""
    i0, j0 = corner
    return np.array([[i0 + lo, j0 + lo, k], [i0 + hi, j0 + lo, k], [i0 + hi, j0 + hi, k], [i0 + lo, j0 + hi, k]])


def set_contours(ct: Path, rs: Path, polygons: list[np.ndarray], roi: int = 0) -> None:
    """Replace ROI ``roi``'s contours with CLOSED_PLANAR ``polygons`` (voxel units → LPS mm)."""
    lps = scan_series(ct).affine_lps
    ds = pydicom.dcmread(rs)
    contours = []
    for polygon in polygons:
        contour = pydicom.Dataset()
        contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(polygon)
        contour.ContourData = [f"{v:.4f}" for v in (polygon @ lps[:3, :3].T + lps[:3, 3]).ravel()]
        contours.append(contour)
    ds.ROIContourSequence[roi].ContourSequence = contours
    ds.save_as(rs, enforce_file_format=True)


def read_box(ct: Path, rs: Path) -> tuple[np.ndarray, list[str]]:
    """``(X, Y, Z)`` voxels of 'box' in the series' layout and the warnings reading it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        box = rt.read_rtstruct(rs, ct, names={"box"})["box"].to_source().array.astype(bool)
    return box, [str(w.message) for w in caught]


def cells(lo: float, hi: float, corner: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``(X, Y)`` voxel centres strictly inside the square of :func:`square`."""
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    return (i > corner[0] + lo) & (i < corner[0] + hi) & (j > corner[1] + lo) & (j < corner[1] + hi)


def test_islands_of_two_planes_on_one_slice_are_kept_with_a_warning(plan):
    """Two separate islands drawn on planes 0.4 slice above and below slice 4 (the same islands on
    both): the even-odd rule over the slice cancelled them; they are unioned on slice 4."""
    ct, rs = plan
    islands = [square(2.3, 6.7, k, corner) for k in (3.6, 4.4) for corner in ((0, 0), (10, 10))]
    set_contours(ct, rs, islands)
    box, messages = read_box(ct, rs)
    expected = cells(2.3, 6.7) | cells(2.3, 6.7, (10, 10))
    np.testing.assert_array_equal(box[:, :, 4], expected)
    assert not np.delete(box, 4, axis=2).any()
    (message,) = messages
    assert "ROI 'box'" in message and "4 of 4 contours" in message and "1.20 mm" in message, message


def test_a_hole_is_a_hole_while_an_overlapping_contour_is_added(plan):
    """On one (off-)plane: an outer square with a hole, and a second outer square overlapping the first
    beside the hole. The overlap is filled (not cancelled), the hole stays empty."""
    ct, rs = plan
    set_contours(ct, rs, [square(2.3, 12.7, 4.2), square(5.3, 8.7, 4.2), square(10.3, 16.7, 4.2)])
    box, messages = read_box(ct, rs)
    expected = (cells(2.3, 12.7) & ~cells(5.3, 8.7)) | cells(10.3, 16.7)
    assert cells(10.3, 12.7).any() and not (cells(5.3, 8.7) & cells(10.3, 16.7)).any()
    np.testing.assert_array_equal(box[:, :, 4], expected)
    assert len(messages) == 1 and "0.60 mm" in messages[0]


def test_an_island_in_a_hole_is_filled_even_when_drawn_twice_overlapping(plan):
    """Outer, hole, and inside the hole an island drawn as two overlapping squares (depth 2 both)."""
    ct, rs = plan
    polygons = [square(1.3, 18.7, 2), square(3.3, 16.7, 2), square(5.3, 10.7, 2), square(8.3, 13.7, 2)]
    set_contours(ct, rs, polygons)
    box, messages = read_box(ct, rs)
    expected = (cells(1.3, 18.7) & ~cells(3.3, 16.7)) | cells(5.3, 10.7) | cells(8.3, 13.7)
    np.testing.assert_array_equal(box[:, :, 2], expected)
    assert messages == []  # on the slice planes: no warning


def test_a_smaller_contour_of_another_plane_is_not_a_hole(plan):
    """Planes 3.6 and 4.4 both belong to slice 4: the smaller contour inside the larger one is a
    neighbouring slice's outline (half-way shifts), not a hole."""
    ct, rs = plan
    set_contours(ct, rs, [square(2.3, 12.7, 4.4), square(5.3, 8.7, 3.6)])
    box, _ = read_box(ct, rs)
    np.testing.assert_array_equal(box[:, :, 4], cells(2.3, 12.7))


@pytest.mark.skipif(not (LUNG1 / "mask_rtstruct" / "1-1.dcm").is_file(),
                    reason="LUNG1-001 development data not found at ../shared/data (never bundled)")
def test_lung1_gtv_shifted_by_half_a_slice_keeps_its_volume(tmp_path):
    ct, rs = LUNG1 / "image", LUNG1 / "mask_rtstruct" / "1-1.dcm"
    ds = pydicom.dcmread(rs)
    (item,) = [i for i, r in zip(ds.ROIContourSequence, ds.StructureSetROISequence) if r.ROIName == "GTV-1"]
    for contour in item.ContourSequence:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3) + [0.0, 0.0, 1.5]
        contour.ContourData = [f"{v:.6g}" for v in points.ravel()]
    ds.save_as(tmp_path / "shifted.dcm", enforce_file_format=True)
    unshifted = int(rt.read_rtstruct(rs, ct, names={"GTV-1"})["GTV-1"].array.sum())
    with pytest.warns(UserWarning, match=r"ROI 'GTV-1'.*off the image slice planes \(up to 1\.50 mm"):
        shifted = int(rt.read_rtstruct(tmp_path / "shifted.dcm", ct, names={"GTV-1"})["GTV-1"].array.sum())
    assert shifted >= 0.95 * unshifted, (shifted, unshifted)


def drop_contour_item(rs: Path, roi_name: str) -> None:
    """Remove the ROI Contour item of ``roi_name`` (as exporters do for empty ROIs)."""
    ds = pydicom.dcmread(rs)
    number = next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == roi_name)
    ds.ROIContourSequence = [i for i in ds.ROIContourSequence if i.ReferencedROINumber != number]
    ds.save_as(rs, enforce_file_format=True)


def test_an_roi_without_a_contour_item_is_named_when_requested(plan):
    ct, rs = plan
    drop_contour_item(rs, "other")
    with pytest.warns(UserWarning, match="ROI 'other' without an ROI Contour item"):
        assert sorted(rt.read_rtstruct(rs, ct)) == ["box"]
    assert rt.read_rtstruct(rs, ct, names={"box"})["box"].array.sum() == 25
    for read in (lambda: rt.read_rtstruct(rs, ct, names={"other", "box"}), lambda: rt.read_structures(rs, ct, ["other"])):
        with pytest.raises(VolumeError) as caught:
            read()
        assert str(caught.value) == "rs.dcm: ROI 'other' has no ROI Contour item (no contours to read)"


def test_predict_with_a_support_roi_without_contour_item_is_exit_2(tmp_path, capsys):
    ct, rs = make_plan(tmp_path)
    drop_contour_item(rs, "GTV-1")
    args = ["predict", "--support", f"{ct}:{rs}", "--structures", "Lung_L,GTV", "--image", str(make_query(tmp_path)),
            "--weights", str(tiny_weights(tmp_path / "tiny.pt")), "--device", "cpu", "--out", str(tmp_path / "p.dcm")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ROI 'GTV-1' has no ROI Contour item" in err, err
    assert not (tmp_path / "p.dcm").exists()


@pytest.mark.parametrize("values, fragment", [
    (["1.0", "NaN", "3.0"] * 3, "NaN or infinite"),
    (["1.0", "2.0", "3.0", "4.0"], "4 values, not a multiple of 3"),
    ([], "ContourData is empty"),
])
def test_malformed_contour_data_names_the_file_and_the_roi(plan, values, fragment, monkeypatch):
    ct, rs = plan
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    ds = pydicom.dcmread(rs)
    ds.ROIContourSequence[1].ContourSequence[0].ContourData = values
    ds.save_as(rs, enforce_file_format=True)
    with pytest.raises(VolumeError) as caught:
        rt.read_rtstruct(rs, ct)
    message = str(caught.value)
    assert message.startswith("rs.dcm: ROI 'other': contour 1: ") and fragment in message, message
    assert "\n" not in message and str(rs.parent) not in message


def corrupt_variants(rs: Path, out: Path) -> list[Path]:
    """Truncations, seeded byte flips and a non-DICOM file, written under ``out``."""
    data, rng = rs.read_bytes(), np.random.default_rng(29)
    variants = {f"cut{n}": data[:n] for n in (0, 100, 132, 400, len(data) // 2, len(data) - 7)}
    for k in range(40):
        flipped = bytearray(data)
        for at in rng.integers(132, len(data), size=int(rng.integers(1, 6))):
            flipped[at] ^= int(rng.integers(1, 256))
        variants[f"flip{k}"] = bytes(flipped)
    variants["text"] = b"ROI GTV, not DICOM\n" * 20
    out.mkdir()
    for name, raw in variants.items():
        (out / f"{name}.dcm").write_bytes(raw)
    return sorted(out.iterdir())


def test_corrupt_files_give_only_one_line_library_errors(plan, tmp_path):
    ct, rs = plan
    for path in corrupt_variants(rs, tmp_path / "corrupt"):
        for read in (lambda: rt.read_structures(path, ct, ["box"]), lambda: rt.read_rtstruct(path, ct)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    read()
                except (VolumeError, ValueError) as exc:  # VolumeError, or the library's name errors
                    assert type(exc) in (VolumeError, ValueError) and "\n" not in str(exc), (path.name, exc)
