"""DICOM series reading (geometry, rescale, gaps), de-identification, and NIfTI header de-identification."""

from __future__ import annotations

import copy
import gzip
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import require_command
from fewshotcx.io import dicom
from fewshotcx.io.deid_profile import BASIC_PROFILE
from fewshotcx.io.volume import Volume, VolumeError, load_volume, save_volume

SHAPE = (20, 24, 10)  # (Columns, Rows, slices)
PIXEL_SPACING = (0.9, 1.1)  # (between rows, between columns)
THICKNESS = 2.5
ORIENTATIONS = {  # ImageOrientationPatient, expected native axis codes (RAS terms)
    "axial": ([1, 0, 0, 0, 1, 0], "LPS"),
    "sagittal": ([0, 1, 0, 0, 0, -1], "PIR"),
}
IDENTITY = {"PatientName": "DOE^JANE", "PatientID": "MRN-0042", "PatientBirthDate": "19600101",
            "InstitutionName": "Saint Nowhere Hospital", "ReferringPhysicianName": "WHO^DR",
            "AccessionNumber": "ACC77"}


def hounsfield(seed: int = 0) -> np.ndarray:
    """``(X, Y, Z)`` integer HU values, distinct enough that any flip or transpose changes them."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 2000, SHAPE).astype(np.int16)


def write_series(directory: Path, iop, hu: np.ndarray, origin=(-30.0, 45.0, 120.0), descending=False,
                 identity=None, series_uid=None, seed=0, tilt=(0.0, 0.0, 0.0)) -> list[dict]:
    """Hand-built CT slices: slice ``k`` holds ``hu[:, :, k].T`` at ``origin + k·(thickness·(±normal) + tilt)``.

    Files get shuffled names and instance numbers. Returns per-file facts for the geometry checks.
    """
    directory.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, col) * (-1.0 if descending else 1.0)
    series_uid, study, frame = series_uid or generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(seed).permutation(hu.shape[2])
    facts = []
    for k in range(hu.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = dicom.CT_IMAGE_STORAGE
        ds.SOPClassUID, ds.SOPInstanceUID = dicom.CT_IMAGE_STORAGE, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.Modality, ds.InstanceNumber = "CT", int(order[k]) + 1
        for key, value in (identity or {}).items():
            setattr(ds, key, value)
        ds.ImageOrientationPatient = list(iop)
        position = np.asarray(origin) + k * (THICKNESS * normal + np.asarray(tilt))
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = THICKNESS
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu[:, :, k].T.astype(np.int32) + 1024).astype("<u2").tobytes()
        path = directory / f"IM{order[k]:03d}"  # no extension, shuffled relative to position
        ds.save_as(path, enforce_file_format=True)
        facts.append({"path": path, "position": position, "corner_hu": int(hu[0, 0, k])})
    return facts


def expected_ras_affine(iop, origin, descending: bool, n: int) -> np.ndarray:
    """Analytic voxel → RAS affine for slices sorted along the normal (the reader's convention)."""
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * PIXEL_SPACING[1], col * PIXEL_SPACING[0], normal * THICKNESS
    lps[:3, 3] = np.asarray(origin) - (n - 1) * THICKNESS * normal if descending else origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("plane", sorted(ORIENTATIONS))
def test_series_matches_nifti_with_analytic_affine(tmp_path, plane, descending):
    iop, codes = ORIENTATIONS[plane]
    hu = hounsfield()
    origin = (-30.0, 45.0, 120.0)
    facts = write_series(tmp_path / "ct", iop, hu, origin, descending)
    native = dicom.read_dicom_series(tmp_path / "ct")
    assert native.orientation == codes and native.array.dtype == np.float32

    data = hu[:, :, ::-1] if descending else hu  # reader stacks slices along +normal
    nifti = tmp_path / "expected.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), expected_ras_affine(iop, origin, descending, SHAPE[2])), nifti)
    from_dicom, from_nifti = load_volume(tmp_path / "ct"), load_volume(nifti)
    assert from_dicom.orientation == from_nifti.orientation == "RAS"
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)

    # Independently of the expected affine: each file's first pixel sits at its ImagePositionPatient.
    inverse = np.linalg.inv(from_dicom.affine)
    for fact in facts:
        ras = np.array([-1.0, -1.0, 1.0]) * fact["position"]
        ijk = inverse[:3, :3] @ ras + inverse[:3, 3]
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-4)
        assert from_dicom.array[tuple(np.round(ijk).astype(int))] == fact["corner_hu"]


def test_modality_lut_sequence_is_applied(tmp_path):
    """A series whose stored values map through a Modality LUT Sequence (no rescale attributes):
    4901220's hand-written rescale ignored the LUT and returned the raw stored values."""
    hu = np.clip(hounsfield(), -1024, 1023)
    facts = write_series(tmp_path / "s", ORIENTATIONS["axial"][0], hu)
    reference = dicom.read_dicom_series(tmp_path / "s").array  # HU via the rescale attributes
    lut = 3 * np.arange(2048) + 5  # stored value s (= HU + 1024) ↦ 3·s + 5
    for fact in facts:
        ds = pydicom.dcmread(fact["path"])
        del ds.RescaleIntercept, ds.RescaleSlope
        item = Dataset()
        item.LUTDescriptor = [len(lut), 0, 16]
        item.ModalityLUTType = "US"
        item["LUTData"] = pydicom.DataElement(0x00283006, "OW", lut.astype("<u2").tobytes())
        ds.ModalityLUTSequence = [item]
        ds.save_as(fact["path"], enforce_file_format=True)
    np.testing.assert_array_equal(dicom.read_dicom_series(tmp_path / "s").array, 3 * (reference + 1024) + 5)


def test_gantry_tilt_gives_a_sheared_affine_through_every_slice_position(tmp_path):
    hu = hounsfield()
    facts = write_series(tmp_path / "ct", ORIENTATIONS["axial"][0], hu, tilt=(0.0, 0.4, 0.0))
    with pytest.warns(UserWarning, match="gantry tilt"):
        vol = dicom.read_dicom_series(tmp_path / "ct")
    for fact in facts:
        ras = np.array([-1.0, -1.0, 1.0]) * fact["position"]
        ijk = np.linalg.solve(vol.affine[:3, :3], ras - vol.affine[:3, 3])
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-4)
        assert vol.array[tuple(np.round(ijk).astype(int))] == fact["corner_hu"]


def test_missing_slice_and_duplicate_positions_are_errors(tmp_path):
    facts = write_series(tmp_path / "gap", ORIENTATIONS["axial"][0], hounsfield())
    middle = sorted(facts, key=lambda f: f["position"][2])[4]
    middle["path"].unlink()
    with pytest.raises(VolumeError, match="not uniformly spaced"):
        dicom.read_dicom_series(tmp_path / "gap")
    uid = generate_uid()
    write_series(tmp_path / "dup", ORIENTATIONS["axial"][0], hounsfield(), series_uid=uid)
    write_series(tmp_path / "dup" / "echo2", ORIENTATIONS["axial"][0], hounsfield(1), series_uid=uid)
    with pytest.raises(VolumeError, match="share a position"):
        dicom.read_dicom_series(tmp_path / "dup")


def test_largest_series_is_default_and_series_uid_selects(tmp_path):
    small = hounsfield()[:, :, :4]
    write_series(tmp_path / "a", ORIENTATIONS["axial"][0], hounsfield())
    write_series(tmp_path / "b", ORIENTATIONS["sagittal"][0], small, series_uid="1.2.3.4")
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.warns(UserWarning, match="2 image series"):
        assert dicom.read_dicom_series(tmp_path).shape == SHAPE
    assert dicom.read_dicom_series(tmp_path, series_uid="1.2.3.4").shape == small.shape
    with pytest.raises(VolumeError, match="no image series with SeriesInstanceUID"):
        dicom.read_dicom_series(tmp_path, series_uid="9.9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no DICOM image slices"):
        dicom.read_dicom_series(tmp_path / "empty")


def test_identifying_series_warns_and_nothing_identifying_reaches_the_nifti(tmp_path):
    write_series(tmp_path / "ct", ORIENTATIONS["axial"][0], hounsfield(), identity=IDENTITY)
    with pytest.warns(dicom.IdentifyingDataWarning):
        vol = load_volume(tmp_path / "ct")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dicom.read_dicom_series(tmp_path / "ct", deidentify=False)
    out = save_volume(vol, tmp_path / "ct.nii.gz")
    raw = gzip.decompress(out.read_bytes())
    for value in IDENTITY.values():
        assert value.encode() not in raw


def test_unidentified_series_does_not_warn(tmp_path):
    write_series(tmp_path / "ct", ORIENTATIONS["axial"][0], hounsfield())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dicom.read_dicom_series(tmp_path / "ct")


def test_deidentify_dataset_removes_identifying_text(tmp_path):
    ds = Dataset()
    for key, value in IDENTITY.items():
        setattr(ds, key, value)
    ds.PatientAddress, ds.OperatorsName, ds.StudyDate = "1 Main Street", "TECH^A", "20240102"
    ds.StudyInstanceUID, ds.SOPInstanceUID, ds.Modality = "1.2.3", "1.2.3.4", "CT"
    item = Dataset()
    item.ReferencedSOPInstanceUID, item.PerformingPhysicianName = "1.2.3.5", "SCAN^DR"
    ds.ReferencedImageSequence = [item]
    ds.add_new(0x00091001, "LO", "private note with DOE^JANE")
    before = ds.to_json()

    out = dicom.deidentify_dataset(ds)
    assert ds.to_json() == before  # input untouched
    assert "PatientAddress" not in out and out.PatientName == "" and out.OperatorsName == ""
    assert "PerformingPhysicianName" not in out.ReferencedImageSequence[0]  # nested sequences too
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.5"  # Retain UIDs Option
    assert 0x00091001 not in out  # private
    assert (out.StudyInstanceUID, out.SOPInstanceUID, out.Modality) == ("1.2.3", "1.2.3.4", "CT")
    assert out.PatientIdentityRemoved == "YES" and out.DeidentificationMethod == dicom.DEIDENTIFICATION_METHOD
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    assert not dicom.has_identifiers(out) and dicom.has_identifiers(ds)
    out.file_meta = FileMetaDataset()
    out.SOPClassUID = dicom.CT_IMAGE_STORAGE
    raw = dicom.write_dataset(out, tmp_path / "x.dcm").read_bytes()
    for text in ("DOE^JANE", "MRN-0042", "Saint Nowhere", "1 Main Street", "SCAN^DR", "20240102"):
        assert text.encode() not in raw


REFERENCE_TABLE = Path(__file__).parent / "data" / "ps3.15_table_e1-1.tsv"


def reference_rows() -> list[list[str]]:
    """Rows ``[tag, basic action, retain-UIDs action, name]`` of the reference copy of Table E.1-1."""
    lines = [line for line in REFERENCE_TABLE.read_text().splitlines() if not line.startswith("#")]
    return [line.split("\t") for line in lines[1:]]


def test_profile_table_matches_the_reference_copy_of_the_standard():
    rows = reference_rows()
    assert len(rows) == 621
    exact = {int(tag[1:5] + tag[6:10], 16): (action, retain) for tag, action, retain, _ in rows
             if all(c in "0123456789ABCDEF" for c in tag[1:5] + tag[6:10])}
    assert len(exact) == len(BASIC_PROFILE) == 617  # a tag dropped from the module fails here
    for tag, (action, retain) in exact.items():
        keyword, ours, retained = BASIC_PROFILE[tag]
        assert (ours, retained) == (action, retain == "K"), hex(tag)
        assert keyword == keyword_for_tag(tag), hex(tag)
    masked = {tag for tag, *_ in rows} - {f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in exact}
    assert masked == {"(50XX,XXXX)", "(60XX,3000)", "(60XX,4000)", "(GGGG,EEEE) WHERE GGGG IS ODD"}
    for tag in (0x50000010, 0x50F23000, 0x60003000, 0x601E4000, 0x00090010, 0x00111001):
        assert dicom.profile_action(tag) == "X", hex(tag)
    for tag in (0x60000010, 0x60023001, 0x00280010, 0x30060026):  # overlay rows, Rows: kept; ROI Name: Z
        assert dicom.profile_action(tag) == ("Z" if tag == 0x30060026 else None), hex(tag)


def identifiable_value(tag: int):
    """A non-empty value of the attribute's VR (first of ambiguous VRs) that differs from any dummy."""
    vr = dictionary_VR(tag).split(" or ")[0]
    if vr == "SQ":
        item = Dataset()
        item.PatientName, item.StudyInstanceUID = "DOE^NESTED", "1.2.826.0.1.3680043.8.498.7"
        item.add_new(0x00291010, "LO", "private nested")
        return vr, [item]
    values = {"DA": "20240102", "TM": "101010", "DT": "20240102101010", "AS": "042Y", "DS": "42.5", "IS": "42",
              "UI": "1.2.826.0.1.3680043.8.498.42", "CS": "SECRET", "AT": 0x00100010, "UR": "http://x.org/1",
              "FL": 4.5, "FD": 4.5, "OB": b"SECRET", "OW": b"SECRET", "UN": b"SECRET", "OF": b"SECRETSE"}
    if vr in ("US", "SS", "UL", "SL"):
        return vr, 42
    return vr, values.get(vr, "DOE^JANE SECRET")


def full_profile_dataset() -> Dataset:
    """Every attribute of Table E.1-1 with a value, private and overlay attributes, and all of it again
    inside an item of a sequence the profile does not name."""
    ds = Dataset()
    for tag in BASIC_PROFILE:
        ds.add_new(tag, *identifiable_value(tag))
    ds.add_new(0x00091001, "LO", "private note")
    ds.add_new(0x60003000, "OW", b"\x01\x00")
    ds.add_new(0x50000010, "US", 4)
    ds.ReferencedFrameOfReferenceSequence = [copy.deepcopy(ds)]
    return ds


def check_profile_actions(before: Dataset, after: Dataset) -> None:
    for tag, (keyword, _, _) in BASIC_PROFILE.items():
        action = dicom.profile_action(tag)
        if action == "X":
            assert tag not in after, keyword
            continue
        assert tag in after, keyword
        if action == "Z":
            assert after[tag].is_empty, keyword
        elif action == "D":
            if after[tag].VR == "SQ":
                assert after[tag].value[0]["PatientName"].is_empty, keyword  # kept, cleaned inside
            else:
                assert after[tag].value == dicom.dummy_value(after[tag]) != before[tag].value, keyword
        elif action == "U":
            assert after[tag].value != before[tag].value and after[tag].value.is_valid, keyword
        else:
            assert action == "K" and after[tag].VR == "SQ" or after[tag].value == before[tag].value, keyword
    for tag in (0x00091001, 0x60003000, 0x50000010):
        assert tag not in after


def test_deidentify_dataset_applies_every_profile_action(tmp_path):
    ds = full_profile_dataset()
    out = dicom.deidentify_dataset(ds)
    check_profile_actions(ds, out)
    check_profile_actions(ds.ReferencedFrameOfReferenceSequence[0], out.ReferencedFrameOfReferenceSequence[0])
    retained_sequence = out.ReferencedImageSequence[0]  # K by the Retain UIDs Option: kept, cleaned inside
    assert retained_sequence.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.7"
    assert retained_sequence.PatientName == "" and 0x00291010 not in retained_sequence
    assert out.to_json() == dicom.deidentify_dataset(ds).to_json()  # deterministic, UIDs mapped consistently
    assert dicom.has_identifiers(ds) and not dicom.has_identifiers(out)
    for tag in [t for t in out.keys() if t >> 16 in (0x0000, 0x0002)]:  # command set and file meta groups
        del out[tag]
    out.SOPClassUID = dicom.CT_IMAGE_STORAGE
    raw = dicom.write_dataset(out, tmp_path / "all.dcm").read_bytes()
    assert b"SECRET" not in raw and b"DOE^" not in raw and b"private" not in raw


def test_deidentify_dataset_retains_named_attributes():
    ds = Dataset()
    ds.StructureSetROISequence = [Dataset()]
    ds.StructureSetROISequence[0].ROIName = "PTV"
    ds.StructureSetROISequence[0].ROIDescription = "drawn for DOE^JANE"
    out = dicom.deidentify_dataset(ds, retain=("ROIName",))
    assert out.StructureSetROISequence[0].ROIName == "PTV"
    assert "ROIDescription" not in out.StructureSetROISequence[0]
    assert dicom.deidentify_dataset(ds).StructureSetROISequence[0].ROIName == ""
    with pytest.raises(ValueError, match="NotAKeyword"):
        dicom.deidentify_dataset(ds, retain=("NotAKeyword",))


def test_docs_describe_the_applied_profile():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "radiotherapy.md").read_text()
    assert dicom.DEIDENTIFICATION_METHOD in doc and "Retain UIDs Option" in doc
    for compound, applied in dicom.COMPOUND_ACTIONS.items():
        assert f"`{compound}` → {applied}" in doc, compound


@pytest.mark.parametrize("affine_name", ["LPS", "PIR"])
def test_write_dicom_series_round_trips(tmp_path, orientations, affine_name):
    affine = orientations[affine_name].copy()
    affine[:3, 3] = [10.0, -20.0, 30.0]
    values = np.random.default_rng(2).normal(0, 300, (12, 9, 7)).astype(np.float32)
    integral = Volume(np.round(values), affine)
    files = dicom.write_dicom_series(integral, tmp_path / "int")
    assert len(files) == 7 and not dicom.has_identifiers(pydicom.dcmread(files[0]))
    back = dicom.read_dicom_series(tmp_path / "int")
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, integral.array)
    dicom.write_dicom_series(Volume(values, affine), tmp_path / "float")
    step = np.ptp(values) / 65535
    np.testing.assert_allclose(dicom.read_dicom_series(tmp_path / "float").array, values, atol=step)
    with pytest.raises(FileExistsError):
        dicom.write_dicom_series(integral, tmp_path / "int")


@pytest.mark.parametrize("modality, iod", [("ct", "CTImage"), ("mr", "MRImage")])
def test_written_series_pass_dciodvfy(tmp_path, modality, iod):
    """dicom3tools' validator finds no error in a written CT or MR slice (warnings about DICOMDIR
    attributes emptied by de-identification, and MR's rescale, remain)."""
    require_command("dciodvfy", "dicom3tools")
    values = np.random.default_rng(3).normal(0, 300, (10, 8, 3)).astype(np.float32)
    files = dicom.write_dicom_series(Volume(values, np.diag([0.8, 0.8, 2.5, 1.0])), tmp_path / modality,
                                     modality=modality)
    report = subprocess.run(["dciodvfy", str(files[1])], capture_output=True, text=True, timeout=60)
    text = report.stdout + report.stderr
    assert iod in text and "Error" not in text, text


def test_nifti_identifiers_do_not_survive_save(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    secrets = {"descrip": b"DOE^JANE 1960", "aux_file": b"MRN0042", "db_name": b"StNowhere", "intent_name": b"PIDX"}
    for key, value in secrets.items():
        img.header[key] = value
    nib.save(img, tmp_path / "in.nii")
    assert b"DOE^JANE" in (tmp_path / "in.nii").read_bytes()
    out = save_volume(load_volume(tmp_path / "in.nii"), tmp_path / "out.nii")
    raw = out.read_bytes()
    header = nib.load(out).header
    for key, value in secrets.items():
        assert value not in raw and header[key].item() in (b"", "")


# ------------------------------------------------------------------ issue #23 item 10
def test_identifiers_inside_sequences_are_found():
    ds = Dataset()
    item = Dataset()
    item.PatientName = "DOE^JANE"  # e.g. inside OtherPatientIDsSequence / a referenced item
    ds.ReferencedStudySequence = [item]
    assert dicom.has_identifiers(ds)
    assert not dicom.has_identifiers(dicom.deidentify_dataset(ds))


def test_burned_in_annotation_decides_the_deidentified_claim(tmp_path):
    image = Volume(np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2) - 1000.0, np.eye(4))
    clean = pydicom.dcmread(dicom.write_dicom_series(image, tmp_path / "a")[0])
    assert clean.BurnedInAnnotation == "NO" and clean.PatientIdentityRemoved == "YES"
    text = pydicom.dcmread(dicom.write_dicom_series(image, tmp_path / "b", burned_in_annotation=True)[0])
    assert text.BurnedInAnnotation == "YES" and text.PatientIdentityRemoved == "NO"
    unknown = Dataset()
    unknown.PixelData = b"\0\0"  # an image whose annotation nobody checked
    assert dicom.deidentify_dataset(unknown).PatientIdentityRemoved == "NO"


def test_mr_is_written_as_mr_not_as_ct_in_hounsfield_units(tmp_path):
    mr = Volume(np.round(np.random.default_rng(0).uniform(0, 400, (6, 5, 3))).astype(np.float32), np.eye(4))
    ds = pydicom.dcmread(dicom.write_dicom_series(mr, tmp_path / "mr")[0])
    assert ds.Modality == "MR" and ds.SOPClassUID == dicom.MR_IMAGE_STORAGE and ds.RescaleType != "HU"
    back = dicom.read_dicom_series(tmp_path / "mr")
    np.testing.assert_allclose(back.array, mr.canonical().array, atol=0.01)
    ct = pydicom.dcmread(dicom.write_dicom_series(mr, tmp_path / "ct", modality="ct")[0])
    assert ct.Modality == "CT" and ct.SOPClassUID == dicom.CT_IMAGE_STORAGE and ct.RescaleType == "HU"


def test_uid_constants_are_named_for_what_they_are():
    from pydicom.uid import UID

    from fewshotcx.rt import rtstruct

    for module in (dicom, rtstruct):
        for name, value in vars(module).items():
            if isinstance(value, str) and value.startswith("1.2.840.10008."):
                words = UID(value).name.lower().replace(" sop class", "").split()
                assert name.lstrip("_").lower().split("_") == words, (name, UID(value).name)


def test_distance_metrics_refuse_a_sheared_grid():
    from fewshotcx import metrics

    sheared = np.eye(4)
    sheared[0, 2] = 0.5  # slices stacked obliquely (gantry tilt)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    pred, ref = Volume(mask, sheared, label=True), Volume(np.roll(mask, 1, axis=0), sheared, label=True)
    with pytest.raises(VolumeError, match="sheared"):
        metrics.evaluate(pred, ref)
    assert metrics.dice(pred, ref) > 0  # overlap needs no distances
    orthogonal = metrics.evaluate(pred.with_array(mask), ref.with_array(np.roll(mask, 1, axis=0)), spacing=(1, 1, 1))
    assert orthogonal["hd95"] > 0  # explicit spacing accepts the approximation
