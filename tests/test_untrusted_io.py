"""Reading untrusted volumes (issue #29): no file named by another is followed outside the allowed
folder, declared sizes are checked before decoding, decompression is capped, absurd geometry is
refused by every reader."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from hostile import nifti_gz, nrrd_file
from fewshotcx.io import ReadLimits, Volume, VolumeError, load_volume
from fewshotcx.io.dicom import write_dicom_series
from fewshotcx.server.wire import safe_extract

LIMIT = 4 << 20  # 4 MiB decoded
MIB = 1 << 20


def peak_mib(func) -> float:
    """Peak traced allocation (MiB) while ``func()`` runs (numpy arrays are traced)."""
    tracemalloc.start()
    try:
        func()
    except VolumeError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / MIB


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ------------------------------------------------------------------ decompression bombs
def test_a_small_nifti_gz_declaring_a_large_image_is_refused_before_decoding(tmp_path):
    bomb = nifti_gz(tmp_path / "bomb.nii.gz", (256, 256, 256), bytes(256 ** 3))  # 16 MiB of zeros, ~16 KB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(VolumeError, match="limit of 4194304 bytes") as err:
        load_volume(bomb, limits=ReadLimits(LIMIT))
    one_line(err)
    tiny = nifti_gz(tmp_path / "tiny.nii.gz", (4096, 4096, 4096), bytes(64))  # declares 256 GiB, holds 64 bytes
    with pytest.raises(VolumeError, match="declared image size"):
        load_volume(tiny, limits=ReadLimits(LIMIT))
    assert peak_mib(lambda: load_volume(bomb, limits=ReadLimits(LIMIT))) < 8  # not 16 + 64 MiB


def test_a_nifti_gz_whose_stream_is_longer_than_the_limit_is_refused(tmp_path):
    bomb = nifti_gz(tmp_path / "tail.nii.gz", (4, 4, 4), bytes(64 + 16 * MIB))  # trailing 16 MiB
    with pytest.raises(VolumeError, match="decompresses to more than"):
        load_volume(bomb, limits=ReadLimits(LIMIT))
    assert peak_mib(lambda: load_volume(bomb, limits=ReadLimits(LIMIT))) < 8


def test_a_gzip_nrrd_declaring_a_large_image_is_refused_before_decoding(tmp_path):
    bomb = nrrd_file(tmp_path / "bomb.nrrd", (256, 256, 256), "gzip", gzip.compress(bytes(256 ** 3), 9))
    with pytest.raises(VolumeError, match="exceeds the limit") as err:
        load_volume(bomb, limits=ReadLimits(LIMIT))
    assert str(bomb) in one_line(err)
    assert peak_mib(lambda: load_volume(bomb, limits=ReadLimits(LIMIT))) < 8


def test_a_gzip_nrrd_stream_is_decompressed_only_up_to_its_declared_size(tmp_path):
    path = nrrd_file(tmp_path / "long.nrrd", (8, 8, 8), "gzip", gzip.compress(bytes(range(8)) * 64 + bytes(32 * MIB), 9))
    peak = peak_mib(lambda: load_volume(path, limits=ReadLimits(LIMIT)))
    volume = load_volume(path, limits=ReadLimits(LIMIT), canonical=False)
    assert volume.shape == (8, 8, 8) and volume.array[:8, 0, 0].tolist() == list(range(8))
    assert peak < 8  # not the 32 MiB the stream holds


def test_a_short_nrrd_is_one_error(tmp_path):
    path = nrrd_file(tmp_path / "short.nrrd", (8, 8, 8), "gzip", gzip.compress(bytes(100)))
    with pytest.raises(VolumeError, match="shorter than its header declares"):
        load_volume(path, limits=ReadLimits(LIMIT))


# ------------------------------------------------------------------ files named by other files
def test_detached_nrrd_data_is_never_followed_for_untrusted_input(tmp_path):
    secret = Path("/etc/passwd")
    size = secret.stat().st_size
    path = nrrd_file(tmp_path / "x.nrrd", (size, 1, 1), extra=f"data file: {secret}\nbyte skip: 0\n")
    for limits in (ReadLimits(LIMIT), ReadLimits(LIMIT, root=tmp_path)):
        with pytest.raises(VolumeError, match="separate data file") as err:
            load_volume(path, limits=limits)
        message = one_line(err)
        assert "passwd" not in message and str(size) not in message
    assert load_volume(path, canonical=False).shape == (size, 1, 1)  # trusted local reading follows it


def test_detached_nrrd_data_naming_the_zero_device_is_refused(tmp_path):
    path = nrrd_file(tmp_path / "zero.nrrd", (8, 8, 8), "gzip", extra="data file: /dev/zero\n")
    with pytest.raises(VolumeError, match="separate data file"):
        load_volume(path, limits=ReadLimits(LIMIT, root=Path("/dev")))  # not a regular file


def test_detached_nrrd_data_inside_the_root_is_read_and_a_link_out_of_it_is_not(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    data = np.arange(512, dtype=np.uint8)
    (root / "sub" / "x.raw").write_bytes(data.tobytes())
    path = nrrd_file(root / "x.nrrd", extra="data file: sub/x.raw\n")
    volume = load_volume(path, limits=ReadLimits(LIMIT, root=root), canonical=False)
    assert np.array_equal(volume.array.ravel(order="F"), data)
    (tmp_path / "out.raw").write_bytes(data.tobytes())
    (root / "link.raw").symlink_to(tmp_path / "out.raw")
    linked = nrrd_file(root / "y.nrrd", extra="data file: link.raw\n")
    with pytest.raises(VolumeError, match="separate data file"):
        load_volume(linked, limits=ReadLimits(LIMIT, root=root))


def test_a_nifti_header_pair_is_not_read_as_untrusted_input(tmp_path):
    image = nib.Nifti1Pair(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    nib.save(image, str(tmp_path / "pair.hdr"))
    assert load_volume(tmp_path / "pair.hdr").shape == (4, 4, 4)
    with pytest.raises(VolumeError, match="single-file NIfTI"):
        load_volume(tmp_path / "pair.hdr", limits=ReadLimits(LIMIT, root=tmp_path))


# ------------------------------------------------------------------ DICOM folders
def _series(folder: Path, spacing: float = 1.0) -> Path:
    folder.mkdir(parents=True)
    write_dicom_series(Volume(np.arange(8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4),
                              np.diag([spacing, spacing, 2.0, 1.0])), folder)
    return folder


def test_a_dicom_file_linking_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    series = _series(root / "series")
    assert load_volume(series, limits=ReadLimits(LIMIT, root=root)).shape == (8, 6, 4)
    outside = _series(tmp_path / "outside")
    victim = sorted(series.iterdir())[0]
    victim.unlink()
    victim.symlink_to(sorted(outside.iterdir())[0])
    for limits in (ReadLimits(LIMIT, root=root), ReadLimits(LIMIT)):
        with pytest.raises(VolumeError, match="link to a file outside") as err:
            load_volume(series, limits=limits)
        assert str(outside) not in one_line(err)


def test_a_dicom_folder_with_too_many_files_or_a_large_declared_image_is_refused(tmp_path):
    series = _series(tmp_path / "series")
    with pytest.raises(VolumeError, match="more than 3 files"):
        load_volume(series, limits=ReadLimits(LIMIT, max_files=3))
    first = sorted(series.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.Rows = ds.Columns = 2048
    ds.PixelData = bytes(2048 * 2048 * 2)  # 8 MiB on disk, 16 MiB as float32
    big = tmp_path / "big"
    big.mkdir()
    ds.save_as(big / "slice.dcm")
    with pytest.raises(VolumeError, match="exceeds the limit"):
        load_volume(big, limits=ReadLimits(LIMIT))
    assert peak_mib(lambda: load_volume(big, limits=ReadLimits(LIMIT))) < 4


def test_a_deflated_dicom_data_set_is_not_read_as_untrusted_input(tmp_path):
    series = _series(tmp_path / "series")
    path = sorted(series.iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(VolumeError, match="deflate-compressed"):
        load_volume(series, limits=ReadLimits(LIMIT))


# ------------------------------------------------------------------ zip archives
def test_zip_extraction_caps_members_and_unpacked_size(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(5):
            z.writestr(f"f{i}.dcm", bytes(MIB))
    with pytest.raises(ValueError, match="more than 4 members"):
        safe_extract(archive, tmp_path / "out1", 100 * MIB, max_members=4)
    with pytest.raises(ValueError, match="unpacks to more than"):
        safe_extract(archive, tmp_path / "out2", 4 * MIB)
    safe_extract(archive, tmp_path / "out3", 5 * MIB)
    assert sorted(p.name for p in (tmp_path / "out3").iterdir()) == [f"f{i}.dcm" for i in range(5)]


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("spacing", [1e30, 1e5, 1e-6])
def test_absurd_nifti_voxel_sizes_are_one_error_even_for_trusted_files(tmp_path, spacing):
    path = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([spacing, 1, 1, 1])), str(path))
    for limits in (None, ReadLimits(LIMIT)):
        with pytest.raises(VolumeError, match="voxel sizes") as err:
            load_volume(path, limits=limits)
        assert one_line(err).startswith(str(path))


def test_absurd_nrrd_and_dicom_geometry_is_one_error(tmp_path):
    path = nrrd_file(tmp_path / "odd.nrrd", payload=bytes(512), spacing=1e-6)
    with pytest.raises(VolumeError, match="voxel sizes"):
        load_volume(path)
    far = nrrd_file(tmp_path / "far.nrrd", payload=bytes(512), extra="").read_text(errors="ignore")
    (tmp_path / "far.nrrd").write_bytes(far.replace("space origin: (0,0,0)", "space origin: (1e30,0,0)")
                                        .encode("latin-1"))
    with pytest.raises(VolumeError, match="origin"):
        load_volume(tmp_path / "far.nrrd")
    with pytest.raises(VolumeError, match="voxel sizes"):
        load_volume(_series(tmp_path / "huge", spacing=2e4))


def test_degenerate_axes_are_refused():
    from fewshotcx.io.grid import check_geometry

    affine = np.eye(4)
    affine[:3, 1] = [1.0, 1e-5, 0.0]  # second axis almost along the first
    with pytest.raises(VolumeError, match="parallel"):
        check_geometry(affine, "x")
    check_geometry(np.diag([0.5, 0.5, 3.0, 1.0]), "x")


def test_read_limits_validate_their_values(tmp_path):
    with pytest.raises(ValueError):
        ReadLimits(0)
    assert ReadLimits(1, root=Path(os.path.relpath(tmp_path))).root == tmp_path.resolve()


@pytest.mark.parametrize("encoding, dtype", [("raw", ">i2"), ("gzip", "<u2"), ("bzip2", "<f8"), ("ascii", "int16")])
def test_untrusted_nrrd_data_reads_as_the_trusted_reader_does(tmp_path, encoding, dtype):
    import nrrd

    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / "x.nrrd"
    nrrd.write(str(path), array, {"space": "left-posterior-superior", "space directions": np.eye(3),
                                  "encoding": encoding})
    untrusted = load_volume(path, limits=ReadLimits(LIMIT), canonical=False)
    assert np.array_equal(untrusted.array, load_volume(path, canonical=False).array)
    assert np.array_equal(untrusted.array, array)
