"""Hostile and broken inputs through every door (issue #29): truncated, oversized, decompression-bomb,
detached-data and malformed NIfTI, NRRD, DICOM (zipped for the server) and RTSTRUCT files, fed to
``load_volume`` (as untrusted input), ``read_structures``, the CLI and the server.

Every door must answer with one line (no traceback, no server path), keep memory bounded (the files
declare gigabytes; the decoded-size limit here is 4 MiB) and leave no file behind.
"""

from __future__ import annotations

import gzip
import io
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hostile import nifti_gz, nrrd_file
from servekit import write_image
from fewshotcx import Volume, rt
from fewshotcx.cli.main import main
from fewshotcx.io import ReadLimits, VolumeError, load_volume
from fewshotcx.io.dicom import write_dicom_series

LIMIT = 4 << 20
MIB = 1 << 20
#: Bytes of zeros inside the real bombs (a few hundred KiB once compressed).
BOMB = 64 * MIB


def _gzip_zeros(path: Path, head: bytes, size: int) -> Path:
    """``head`` followed by ``size`` zero bytes, gzip-compressed, written without holding them."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(head)
        block = bytes(MIB)
        for _ in range(size // MIB):
            out.write(block)
    return path


def _nifti(path: Path, shape=(8, 8, 8), affine=None, dtype=np.uint8) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4) if affine is None else affine), str(path))
    return path


def volume_files(folder: Path) -> dict[str, Path]:
    """Broken or hostile single-file volumes, by what is wrong with them."""
    folder.mkdir()
    good = write_image(folder, "good.nii.gz").read_bytes()
    header = nib.Nifti1Header()
    header.set_data_shape((8, 8, 8))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    files = {
        "nifti truncated": folder / "cut.nii.gz",
        "nifti header only": folder / "header.nii",
        "nifti random bytes": folder / "noise.nii.gz",
        "nifti declares 8 GiB": nifti_gz(folder / "declares.nii.gz", (2048, 2048, 2048), b""),
        "nifti real bomb": _gzip_zeros(folder / "bomb.nii.gz", header.binaryblock + bytes(4), BOMB),
        "nifti 1e30 mm voxels": _nifti(folder / "huge_voxels.nii", affine=np.diag([1e30, 1e30, 1e30, 1.0])),
        "nifti parallel axes": _nifti(folder / "flat.nii", affine=np.array(
            [[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])),
        "nifti 4D": _nifti(folder / "four.nii", shape=(4, 4, 4, 3)),
        "nrrd truncated header": folder / "header.nrrd",
        "nrrd short data": nrrd_file(folder / "short.nrrd", payload=bytes(10)),
        "nrrd bad sizes": nrrd_file(folder / "sizes.nrrd", sizes=(-1, 8, 8)),
        "nrrd nan spacing": nrrd_file(folder / "nan.nrrd", spacing=float("nan"), payload=bytes(512)),
        "nrrd names the password file": nrrd_file(folder / "detached.nrrd", sizes=(64, 1, 1),
                                                  extra="data file: /etc/passwd\n"),
        "nrrd names the zero device": nrrd_file(folder / "zero.nrrd", sizes=(64, 64, 64), encoding="gzip",
                                                extra="data file: /dev/zero\n"),
        "nrrd declares 8 GiB": nrrd_file(folder / "declares.nrrd", sizes=(2048, 2048, 2048), encoding="gzip",
                                         payload=gzip.compress(bytes(1024))),
    }
    files["nifti truncated"].write_bytes(good[: len(good) // 2])
    files["nifti header only"].write_bytes(gzip.decompress(good)[:200])
    files["nifti random bytes"].write_bytes(np.random.default_rng(29).bytes(4096))
    files["nrrd truncated header"].write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8")
    return files


def zip_files(folder: Path) -> dict[str, Path]:
    """Zipped "DICOM series" for the server: broken members, traversal, a bomb, too many members."""
    folder.mkdir()
    series = folder / "series"
    write_dicom_series(Volume(np.zeros((8, 8, 4), np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), series)
    first = sorted(series.iterdir())[0].read_bytes()

    def archive(name: str, members: dict[str, bytes]) -> Path:
        path = folder / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
            for member, data in members.items():
                out.writestr(member, data)
        return path

    bomb = folder / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        with out.open("slice.dcm", "w", force_zip64=True) as member:
            block = bytes(MIB)
            for _ in range(BOMB // MIB):
                member.write(block)
    archive_cut = folder / "cut.zip"
    archive_cut.write_bytes(archive("whole.zip", {"a.dcm": first}).read_bytes()[:-30])
    return {
        "zip truncated dicom": archive("truncated.zip", {"a.dcm": first[: len(first) // 2]}),
        "zip not dicom": archive("text.zip", {"a.dcm": b"not DICOM at all\n" * 64}),
        "zip traversal": archive("traversal.zip", {"../../escape.dcm": first}),
        "zip many members": archive("many.zip", {f"m{i}.dcm": b"x" for i in range(5000)}),
        "zip bomb": bomb,
        "zip truncated archive": archive_cut,
    }


def one_line(message: str) -> str:
    assert message and "\n" not in message.strip(), message
    assert "Traceback" not in message and "fewshotcx-serve-" not in message, message
    return message


def peak_mib(call) -> float:
    """Peak traced allocation (MiB, every thread) while ``call()`` runs."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / MIB


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------------- load_volume
def test_load_volume_refuses_every_hostile_file_in_one_line_with_bounded_memory(tmp_path):
    files = volume_files(tmp_path / "in")
    before = tree(tmp_path)
    limits = ReadLimits(max_decoded_bytes=LIMIT)
    for what, path in files.items():
        messages = []

        def read() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises((VolumeError, ValueError)) as err:
                    load_volume(path, limits=limits)
            messages.append(str(err.value))

        assert peak_mib(read) < 16, what
        message = one_line(messages[0])
        assert "passwd" not in message and "/dev/zero" not in message, (what, message)
    assert tree(tmp_path) == before


def test_load_volume_refuses_a_broken_dicom_folder_in_one_line(tmp_path):
    series = tmp_path / "series"
    write_dicom_series(Volume(np.zeros((8, 8, 4), np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), series)
    files = sorted(series.iterdir())
    files[1].write_bytes(files[1].read_bytes()[:300])
    (series / "notes.txt").write_text("not a slice")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VolumeError) as err:
            load_volume(series, limits=ReadLimits(max_decoded_bytes=LIMIT, root=tmp_path))
    one_line(str(err.value))


# ---------------------------------------------------------------------------- read_structures
@pytest.fixture
def plan(tmp_path):
    """A generated CT series and an RTSTRUCT with one ROI 'box'."""
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])
    write_dicom_series(Volume(np.zeros((16, 16, 6), np.float32), affine), tmp_path / "ct")
    box = np.zeros((16, 16, 6), np.uint8)
    box[3:8, 3:8, 2:4] = 1
    return tmp_path / "ct", rt.write_rtstruct({"box": Volume(box, affine, label=True)}, tmp_path / "ct",
                                              tmp_path / "rs.dcm")


def broken_rtstructs(rs: Path, out: Path) -> dict[str, Path]:
    data = rs.read_bytes()
    variants = {"empty": b"", "preamble only": data[:132], "half": data[: len(data) // 2],
                "text": b"ROI box\n" * 40, "oversized element": data[:132] + b"DICM" + b"\x08\x00\x16\x00UI\xff\xff"}
    rng = np.random.default_rng(7)
    for k in range(8):
        flipped = bytearray(data)
        for at in rng.integers(132, len(data), size=4):
            flipped[at] ^= 0xFF
        variants[f"flipped {k}"] = bytes(flipped)
    out.mkdir()
    paths = {}
    for name, raw in variants.items():
        paths[name] = out / f"{name.replace(' ', '_')}.dcm"
        paths[name].write_bytes(raw)
    return paths


def test_read_structures_answers_broken_rtstructs_in_one_line(plan, tmp_path):
    ct, rs = plan
    for what, path in broken_rtstructs(rs, tmp_path / "broken").items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rt.read_structures(path, ct, ["box"])
            except (VolumeError, ValueError) as exc:
                one_line(str(exc))
            # a flip that lands in a value nobody reads may leave a readable file: that is fine


# ---------------------------------------------------------------------------- the CLI
def _cli(argv: list[str], capsys) -> tuple[int, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_the_cli_answers_broken_inputs_with_one_line_exit_2_and_writes_nothing(tmp_path, plan, capsys):
    ct, rs = plan
    files = volume_files(tmp_path / "in")
    support = _nifti(tmp_path / "support.nii.gz", shape=(16, 16, 6), dtype=np.float32)
    label = _nifti(tmp_path / "support_label.nii.gz", shape=(16, 16, 6))
    trusted_bombs = ("nifti declares 8 GiB", "nifti real bomb", "nrrd declares 8 GiB", "nrrd names the zero device")
    for what, path in files.items():
        if what in trusted_bombs:
            continue  # the CLI reads the user's own files as trusted input: these are the server's to refuse
        out = tmp_path / "out.nii.gz"
        code, err = _cli(["predict", "--image", str(path), "--support", f"{support}:{label}", "--out", str(out)],
                         capsys)
        assert code == 2 and "error" in one_line(err), (what, code, err)
        assert not out.exists(), what
    for what, broken in broken_rtstructs(rs, tmp_path / "broken").items():
        out = tmp_path / f"out_{what.replace(' ', '_')}.dcm"
        code, err = _cli(["predict", "--image", str(ct), "--support", f"{ct}:{broken}", "--structures", "box",
                          "--out", str(out)], capsys)
        if code != 0:
            assert code == 2 and one_line(err), (what, code, err)
            assert not out.exists(), what


# ---------------------------------------------------------------------------- the server
def test_the_server_answers_every_hostile_upload_in_one_line_with_bounded_memory(tmp_path):
    pytest.importorskip("fastapi")
    from servekit import serving, tiny_segmenter

    from fewshotcx.client import RemoteError, RemoteSession
    from fewshotcx.server import SessionStore

    uploads = {**volume_files(tmp_path / "volumes"), **zip_files(tmp_path / "zips")}
    store = SessionStore(tiny_segmenter(), max_upload_bytes=LIMIT, max_image_bytes=LIMIT)
    answers = {}

    def upload_all() -> None:
        with serving(store) as url:
            for what, path in uploads.items():
                with pytest.raises(RemoteError) as err:
                    RemoteSession(url, path)
                answers[what] = err.value
                assert not any(store.root.iterdir()), f"{what}: files left in the server's folder"

    assert peak_mib(upload_all) < 48
    for what, answer in answers.items():
        assert answer.status in (400, 413), (what, answer.status, str(answer))
        message = one_line(str(answer))
        assert str(tmp_path) not in message and "passwd" not in message, (what, message)
    assert len(store) == 0 and not store.root.exists()
    assert not (tmp_path / "escape.dcm").exists()
