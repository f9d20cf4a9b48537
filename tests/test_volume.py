from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from conftest import ORIENTATIONS
from fewshotcx.io.volume import Volume, VolumeError, check_pair, load_volume, reorient_array, save_volume


def _write(path, array, affine, **header):
    img = nib.Nifti1Image(array, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_load_is_canonical_and_world_preserving(tmp_path, name):
    affine = ORIENTATIONS[name]
    array = np.random.default_rng(1).random((7, 6, 5)).astype(np.float32)
    vol = load_volume(_write(tmp_path / "x.nii.gz", array, affine))
    assert vol.orientation == "RAS"
    # Every source voxel's world position maps to the canonical voxel holding the same value.
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij"), -1).reshape(-1, 3)
    world = np.c_[ijk, np.ones(len(ijk))] @ affine.T
    canon_ijk = np.rint(world @ np.linalg.inv(vol.affine).T)[:, :3].astype(int)
    assert np.array_equal(vol.array[tuple(canon_ijk.T)], array[tuple(ijk.T)])
    assert np.allclose(sorted(vol.spacing), sorted(np.sqrt((affine[:3, :3] ** 2).sum(0))))


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_save_inverts_exactly(tmp_path, name):
    affine = ORIENTATIONS[name]
    array = np.random.default_rng(2).random((7, 6, 5)).astype(np.float32)
    src = _write(tmp_path / "src.nii.gz", array, affine)
    out = save_volume(load_volume(src), tmp_path / "out.nii.gz")
    back = nib.load(str(out))
    assert np.array_equal(np.asanyarray(back.dataobj), array)
    assert np.allclose(back.affine, nib.load(str(src)).affine, atol=1e-6)


def test_labels_stay_integer(tmp_path):
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[1:3, 1:3, 1:3] = 3
    vol = load_volume(_write(tmp_path / "l.nii.gz", lab, ORIENTATIONS["LPS"]), label=True)
    assert np.issubdtype(vol.array.dtype, np.integer) and set(np.unique(vol.array)) == {0, 3}
    out = nib.load(str(save_volume(vol, tmp_path / "o.nii.gz")))
    assert np.issubdtype(out.get_data_dtype(), np.integer)
    assert np.array_equal(np.asanyarray(out.dataobj), lab)


def test_float_labels_that_are_not_integer_are_refused(tmp_path):
    bad = np.full((3, 3, 3), 0.5, np.float32)
    with pytest.raises(VolumeError, match="non-integer"):
        load_volume(_write(tmp_path / "b.nii.gz", bad, np.eye(4)), label=True)


def test_4d_unreadable_and_missing_are_refused(tmp_path):
    with pytest.raises(VolumeError, match="3D"):
        load_volume(_write(tmp_path / "4d.nii.gz", np.zeros((3, 3, 3, 2), np.float32), np.eye(4)))
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti")
    with pytest.raises(VolumeError, match="cannot read"):
        load_volume(junk)
    with pytest.raises(VolumeError, match="no such file"):
        load_volume(tmp_path / "absent.nii.gz")


def test_trailing_singleton_4d_is_squeezed(tmp_path):
    vol = load_volume(_write(tmp_path / "s.nii.gz", np.ones((3, 4, 5, 1), np.float32), np.eye(4)))
    assert vol.shape == (3, 4, 5)


def test_check_pair_errors(blob_pair):
    image, label = blob_pair
    check_pair(image, label)
    with pytest.raises(VolumeError, match="empty"):
        check_pair(image, label.with_array(np.zeros(label.shape, np.uint8)))
    shifted = Volume(label.array, label.affine + _translation(5.0), label=True)
    with pytest.raises(VolumeError, match="affines"):
        check_pair(image, shifted)
    with pytest.raises(VolumeError, match="shape"):
        check_pair(image, Volume(np.ones((2, 2, 2), np.uint8), label.affine, label=True))


def _translation(mm: float) -> np.ndarray:
    t = np.zeros((4, 4))
    t[0, 3] = mm
    return t


def test_save_refuses_overwrite_and_is_atomic(tmp_path, blob_pair):
    import os

    image, _ = blob_pair
    old_umask = os.umask(0o022)
    target = tmp_path / "p.nii.gz"
    target.write_bytes(b"user data")
    with pytest.raises(FileExistsError):
        save_volume(image, target)
    assert target.read_bytes() == b"user data"
    save_volume(image, target, overwrite=True)
    assert nib.load(str(target)).shape == image.shape
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic_output's temp names are hidden
    os.umask(old_umask)
    assert target.stat().st_mode & 0o777 == 0o644  # the usual permissions, not mkstemp's 0600


def test_identifying_header_text_is_cleared(tmp_path):
    src = _write(tmp_path / "id.nii.gz", np.zeros((3, 3, 3), np.float32), np.eye(4),
                 descrip=b"Jane Doe 1970", aux_file=b"MRN123", db_name=b"hospital", intent_name=b"pid")
    out = save_volume(load_volume(src), tmp_path / "clean.nii.gz")
    raw = nib.load(str(out)).header
    for key in ("descrip", "aux_file", "db_name", "intent_name"):
        assert raw[key].item() in (b"", "")
    kept = save_volume(load_volume(src), tmp_path / "kept.nii.gz", keep_identifiers=True)
    assert nib.load(str(kept)).header["descrip"].item() == b"Jane Doe 1970"


def test_volume_from_arrays_keeps_layout_and_canonical_inverts(orientations):
    array = np.random.default_rng(3).random((5, 6, 7)).astype(np.float32)
    for affine in orientations.values():
        vol = Volume(array, affine)
        assert vol.shape == (5, 6, 7) and np.array_equal(vol.array, array)
        back = vol.canonical().to_source()
        assert np.array_equal(back.array, array) and np.allclose(back.affine, affine)


def test_reorient_array_keeps_leading_axes(orientations):
    probs = np.random.default_rng(4).random((2, 5, 6, 7)).astype(np.float32)
    lps = Volume(probs[0], orientations["LPS"])
    ras = lps.canonical()
    moved = reorient_array(probs, lps.affine, ras.affine)
    assert moved.shape == (2, 5, 6, 7)
    assert np.array_equal(moved[1], Volume(probs[1], orientations["LPS"]).canonical().array)
    assert np.array_equal(reorient_array(moved, ras.affine, lps.affine), probs)


def test_nrrd_lps_is_read_into_ras(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.7, 0.8, 5.0]),
              "space origin": np.array([10.0, 20.0, 30.0])}
    nrrd.write(str(tmp_path / "x.nrrd"), data, header)
    vol = load_volume(tmp_path / "x.nrrd", canonical=False)
    # LPS (10, 20, 30) is RAS (-10, -20, 30); index steps flip sign in x and y.
    assert np.allclose(vol.affine[:3, 3], [-10, -20, 30])
    assert np.allclose(np.diag(vol.affine)[:3], [-0.7, -0.8, 5.0])
    assert load_volume(tmp_path / "x.nrrd").orientation == "RAS"


def test_nrrd_without_space_is_refused_unless_the_caller_names_it(tmp_path):
    """4901220 silently assumed LPS for an NRRD without ``space``; a RAS file then came out mirrored."""
    nrrd = pytest.importorskip("nrrd")
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nrrd.write(str(tmp_path / "x.nrrd"), data, {"space directions": np.diag([0.7, 0.8, 5.0]),
                                               "space origin": np.array([10.0, 20.0, 30.0])})
    with pytest.raises(VolumeError, match=r"x\.nrrd: NRRD has no 'space' field.*nrrd_space="):
        load_volume(tmp_path / "x.nrrd")
    ras = load_volume(tmp_path / "x.nrrd", canonical=False, nrrd_space="right-anterior-superior")
    assert np.allclose(ras.affine[:3, 3], [10, 20, 30]) and np.allclose(np.diag(ras.affine)[:3], [0.7, 0.8, 5.0])
    lps = load_volume(tmp_path / "x.nrrd", canonical=False, nrrd_space="left-posterior-superior")
    assert np.allclose(lps.affine[:3, 3], [-10, -20, 30])
    with pytest.raises(VolumeError, match="unsupported NRRD space 'scanner-xyz'"):
        load_volume(tmp_path / "x.nrrd", nrrd_space="scanner-xyz")
