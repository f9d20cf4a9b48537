"""``fewshotcx serve`` with hostile input (issue #29): detached NRRD data, decompression bombs,
DICOM links out of ``--data-root``, an empty ``path=``, and ``--max-sessions`` under concurrent opens."""

from __future__ import annotations

import gzip
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servekit import SHAPE, serving, tiny_segmenter, write_image  # noqa: E402
from hostile import nifti_gz, nrrd_file  # noqa: E402

from fewshotcx import load_volume  # noqa: E402
from fewshotcx.client import RemoteError, RemoteSession  # noqa: E402
from fewshotcx.io.dicom import write_dicom_series  # noqa: E402
from fewshotcx.server import SessionStore  # noqa: E402
from fewshotcx.server.store import SessionLimitError  # noqa: E402
from fewshotcx.server.wire import zip_directory  # noqa: E402

LIMIT = 4 << 20


def refused(url: str, image=None, **kwargs) -> RemoteError:
    """The server's 400 for opening ``image`` (or ``server_path=``), checked to be one line."""
    with pytest.raises(RemoteError) as err:
        RemoteSession(url, image, **kwargs)
    message = str(err.value)
    assert err.value.status == 400, message
    assert "\n" not in message and "Traceback" not in message and "fewshotcx-serve-" not in message
    return err.value


def passwd_nrrd(path: Path) -> tuple[Path, int]:
    size = Path("/etc/passwd").stat().st_size
    return nrrd_file(path, (size, 1, 1), extra="data file: /etc/passwd\nbyte skip: 0\n"), size


@pytest.mark.parametrize("api_key", [None, "s3cret"])
def test_an_uploaded_nrrd_naming_the_password_file_is_refused_without_echoing_it(tmp_path, api_key):
    path, size = passwd_nrrd(tmp_path / "evil.nrrd")
    store = SessionStore(tiny_segmenter())
    with serving(store, api_key=api_key) as url:
        message = str(refused(url, path, api_key=api_key))
        assert "separate data file" in message and "evil.nrrd" in message
        assert "passwd" not in message and str(size) not in message
        assert len(store) == 0


def test_a_data_root_nrrd_may_name_data_inside_the_root_only(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    passwd_nrrd(root / "evil.nrrd")
    (root / "x.raw").write_bytes(np.arange(SHAPE[0] * SHAPE[1] * SHAPE[2], dtype=np.uint16).astype(np.uint8).tobytes())
    nrrd_file(root / "ok.nrrd", SHAPE, extra="data file: x.raw\n")
    with serving(SessionStore(tiny_segmenter()), data_root=root) as url:
        message = str(refused(url, server_path="evil.nrrd"))
        assert "passwd" not in message and str(root) not in message
        assert RemoteSession(url, server_path="ok.nrrd").shape == SHAPE


def test_compressed_uploads_declaring_large_images_are_refused(tmp_path):
    nii = nifti_gz(tmp_path / "bomb.nii.gz", (256, 256, 256), bytes(256 ** 3))
    nrrd = nrrd_file(tmp_path / "bomb.nrrd", (256, 256, 256), "gzip", gzip.compress(bytes(256 ** 3), 9))
    series = tmp_path / "series"
    series.mkdir()
    write_dicom_series(load_volume(write_image(tmp_path)), series)
    for path in sorted(series.iterdir())[1:]:
        path.unlink()
    (first,) = series.iterdir()
    ds = pydicom.dcmread(first)
    ds.Rows = ds.Columns = 2048
    ds.PixelData = bytes(2048 * 2048 * 2)
    ds.save_as(first)
    store = SessionStore(tiny_segmenter(), max_image_bytes=LIMIT)
    with serving(store) as url:
        for image in (nii, nrrd, series):
            assert "limit of 4194304 bytes" in str(refused(url, image))
        assert len(store) == 0
        assert RemoteSession(url, write_image(tmp_path)).shape == SHAPE


def test_a_dicom_file_linking_out_of_the_data_root_is_refused_and_the_root_is_never_scanned(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root / "series", outside):
        folder.mkdir(parents=True)
        write_dicom_series(load_volume(write_image(tmp_path)), folder)
    with serving(SessionStore(tiny_segmenter()), data_root=root) as url:
        assert RemoteSession(url, server_path="series").shape == SHAPE
        victim = sorted((root / "series").iterdir())[0]
        victim.unlink()
        victim.symlink_to(sorted(outside.iterdir())[0])
        for path in ("series", "series/", "./series"):
            message = str(refused(url, server_path=path))
            assert "outside" in message and str(outside) not in message
        for path in ("", ".", "series/.."):
            assert "not the root itself" in str(refused(url, server_path=path))


def test_max_sessions_holds_places_while_images_load(tmp_path, monkeypatch):
    import fewshotcx.server.store as store_module

    path = write_image(tmp_path)
    real_load = store_module.load_volume
    loading, peak, loads = [0], [0], [0]
    lock = threading.Lock()

    def slow_load(*args, **kwargs):
        with lock:
            loading[0] += 1
            loads[0] += 1
            peak[0] = max(peak[0], loading[0])
        time.sleep(0.3)
        try:
            return real_load(*args, **kwargs)
        finally:
            with lock:
                loading[0] -= 1

    monkeypatch.setattr(store_module, "load_volume", slow_load)
    store = SessionStore(tiny_segmenter(), max_sessions=4)
    outcomes: list[str] = []

    def open_one() -> None:
        try:
            store.create(store.new_folder(), path, path.name)
            outcomes.append("open")
        except SessionLimitError:
            outcomes.append("refused")

    threads = [threading.Thread(target=open_one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("open") == 4 and outcomes.count("refused") == 8
    assert loads[0] == 4 and peak[0] <= 4 and len(store) == 4
    store.close_all()


def test_a_failed_load_gives_its_place_back(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not a volume")
    store = SessionStore(tiny_segmenter(), max_sessions=1)
    for _ in range(3):
        with pytest.raises(ValueError):
            store.create(store.new_folder(), bad, bad.name)
    store.create(store.new_folder(), write_image(tmp_path), "ct.nii.gz")
    assert len(store) == 1
    store.close_all()


def test_max_image_bytes_and_the_cli_option_are_validated(capsys):
    from fewshotcx.cli import main

    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_image_bytes"):
            SessionStore(tiny_segmenter(), max_image_bytes=bad)
    for bad in ("0", "-5", "nan", "inf"):
        assert main(["serve", "--max-image-mb", bad, "--port", "1"]) == 2
        assert "--max-image-mb" in capsys.readouterr().err
