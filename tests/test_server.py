"""``fewshotcx serve`` + ``RemoteSession``: same result as the local session, auth, limits, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servekit import SHAPE, disc, serving, tiny_segmenter, write_image  # noqa: E402

from fewshotcx import ContourSession, load_volume  # noqa: E402
from fewshotcx.cli import main  # noqa: E402
from fewshotcx.client import RemoteError, RemoteSession  # noqa: E402
from fewshotcx.server import SessionStore  # noqa: E402

XY = SHAPE[:2]


def _draws():
    return {2: disc((12, 10), 4, XY), 6: disc((11, 9), 5, XY), 9: disc((12, 11), 3, XY)}


def test_remote_session_equals_the_local_session_after_the_same_draws_and_an_undo(tmp_path):
    path = write_image(tmp_path)
    local = ContourSession(path, tiny_segmenter())
    with serving(SessionStore(tiny_segmenter())) as url:
        remote = RemoteSession(url, path)
        for s in (local, remote):
            for z, mask in _draws().items():
                s.draw(z, mask)
            s.draw(4, disc((3, 3), 2, XY))  # a mistake ...
            s.undo()                         # ... taken back
        assert remote.drawn == local.drawn == [2, 6, 9]
        assert np.array_equal(remote.drawn_mask(6), local.drawn_mask(6))
        ours, theirs = remote.result(), local.result()
        assert ours.same_grid(theirs) and ours.label
        assert np.array_equal(ours.array, theirs.array)
        assert ours.array[..., 3:6].any()  # the undrawn slices were completed, not left empty
        assert remote.suggest(2) == local.suggest(2)
        remote.erase(9)
        local.erase(9)
        assert np.array_equal(remote.result().array, local.result().array)
        out = remote.download(tmp_path / "out.nii.gz")
        assert load_volume(out, label=True).same_grid(load_volume(path))
        with pytest.raises(FileExistsError):
            remote.download(out)
        remote.close()
        with pytest.raises(RemoteError, match="no session"):
            remote.undo()


def test_the_key_is_enforced_on_every_route_but_healthz(tmp_path):
    path = write_image(tmp_path)
    with serving(SessionStore(tiny_segmenter()), api_key="s3cret") as url:
        assert json.loads(urllib.request.urlopen(url + "/healthz").read())["status"] == "ok"
        with pytest.raises(RemoteError, match="API key") as err:
            RemoteSession(url, path)
        assert err.value.status == 401
        with pytest.raises(RemoteError, match="API key"):
            RemoteSession(url, path, api_key="wrong")
        session = RemoteSession(url, path, api_key="s3cret")
        request = urllib.request.Request(f"{url}/sessions/{session.session_id}")
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(request)
        assert http.value.code == 401
        session.draw(5, disc((12, 10), 4, XY))
        assert session.drawn == [5]


def test_a_keyless_server_answers_only_to_loopback_names(tmp_path):
    import http.client

    with serving(SessionStore(tiny_segmenter())) as url:
        port = int(url.rsplit(":", 1)[1])
        for host, status in (("evil.example", 400), (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/healthz", headers={"Host": host})  # what a DNS-rebinding page would send
            assert conn.getresponse().status == status, host
            conn.close()


def test_a_corrupt_upload_is_one_clear_error_and_the_server_stays_up(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a volume")
    store = SessionStore(tiny_segmenter())
    with serving(store) as url:
        with pytest.raises(RemoteError) as err:
            RemoteSession(url, bad)
        message = str(err.value)
        assert err.value.status == 400 and "\n" not in message and "Traceback" not in message
        assert len(store) == 0
        good = RemoteSession(url, write_image(tmp_path))
        good.draw(3, disc((12, 10), 4, XY))
        assert good.drawn == [3]


def test_upload_limit_session_limit_and_idle_expiry(tmp_path):
    clock = [0.0]
    store = SessionStore(tiny_segmenter(), max_sessions=1, idle_seconds=60, max_upload_bytes=40_000,
                         clock=lambda: clock[0])
    path = write_image(tmp_path)
    big = tmp_path / "big.nii"
    big.write_bytes(b"\0" * 60_000)
    with serving(store) as url:
        with pytest.raises(RemoteError, match="limit") as err:
            RemoteSession(url, big)
        assert err.value.status == 413
        first = RemoteSession(url, path)
        with pytest.raises(RemoteError, match="maximum of 1 sessions") as err:
            RemoteSession(url, path)
        assert err.value.status == 503
        clock[0] = 61.0  # the first session idles out
        second = RemoteSession(url, path)
        with pytest.raises(RemoteError, match="no session"):
            first.drawn
        assert second.drawn == []


def test_idle_sessions_are_closed_while_no_request_comes_in(tmp_path):
    import time

    store = SessionStore(tiny_segmenter(), idle_seconds=0.3)
    with serving(store, sweep_seconds=0.1) as url:
        RemoteSession(url, write_image(tmp_path))
        assert len(store) == 1
        deadline = time.monotonic() + 10
        while len(store) and time.monotonic() < deadline:  # no request: only the sweeper can close it
            time.sleep(0.1)
        assert len(store) == 0


def test_data_root_opens_files_inside_it_and_nothing_outside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write_image(root, "inside.nii.gz")
    write_image(tmp_path, "outside.nii.gz")
    with serving(SessionStore(tiny_segmenter()), data_root=root) as url:
        session = RemoteSession(url, server_path="inside.nii.gz")
        assert session.shape == SHAPE
        for escape in ("../outside.nii.gz", str(tmp_path / "outside.nii.gz")):
            with pytest.raises(RemoteError, match="outside") as err:
                RemoteSession(url, server_path=escape)
            assert err.value.status == 403
        (root / "link.nii.gz").symlink_to(tmp_path / "outside.nii.gz")
        with pytest.raises(RemoteError, match="outside"):
            RemoteSession(url, server_path="link.nii.gz")


def test_a_zipped_series_under_data_root_opens_and_stays_where_it_was(tmp_path):
    from fewshotcx.io.dicom import write_dicom_series
    from fewshotcx.server.wire import zip_directory

    series, root = tmp_path / "series", tmp_path / "root"
    series.mkdir()
    root.mkdir()
    write_dicom_series(load_volume(write_image(tmp_path)), series)
    archive = root / "series.zip"
    archive.write_bytes(zip_directory(series))
    with serving(SessionStore(tiny_segmenter()), data_root=root) as url:
        session = RemoteSession(url, server_path="series.zip")
        assert session._info["dicom"] and session.shape == SHAPE
        session.close()
    assert archive.is_file() and sorted(p.name for p in root.iterdir()) == ["series.zip"]


def test_dicom_series_upload_exports_rtstruct(tmp_path):
    from fewshotcx.io.dicom import write_dicom_series
    from fewshotcx.rt.rtstruct import read_rtstruct

    series = tmp_path / "series"
    series.mkdir()
    write_dicom_series(load_volume(write_image(tmp_path)), series)
    with serving(SessionStore(tiny_segmenter())) as url:
        session = RemoteSession(url, series)
        for z, mask in _draws().items():
            session.draw(z, mask)
        rt = session.download(tmp_path / "rt.dcm", format="rtstruct")
        result = session.result()
    structures = read_rtstruct(rt, series)
    (roi,) = structures.values()
    assert np.array_equal(roi.canonical().array > 0, result.canonical().array > 0)


def test_non_loopback_without_a_key_is_refused_with_one_line(capsys, tmp_path):
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "non-loopback" in err and "--api-key-file" in err and len(err.splitlines()) == 1
    (tmp_path / "empty").write_text("  \n")
    assert main(["serve", "--api-key-file", str(tmp_path / "empty")]) == 2


def test_the_client_imports_without_torch():
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from fewshotcx.client import RemoteSession\n"
            "import fewshotcx\n"
            "assert fewshotcx.RemoteSession is RemoteSession\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
            "print('torch-free')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch-free"


def test_fewshotcx_serve_starts_answers_healthz_and_enforces_its_key(tmp_path):
    """The real command in a subprocess: tiny checkpoint, a key file, loopback."""
    import socket
    import time

    import torch

    from fewshotcx.models import UniverSeg
    from fewshotcx.models.weights import save_checkpoint

    torch.manual_seed(0)
    model = UniverSeg((8, 8, 8, 8), (8, 8, 8), in_channels=1)
    weights = save_checkpoint(model, tmp_path / "tiny.pt", model.config, {"slice_size": 32})
    (tmp_path / "key").write_text("k3y\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "fewshotcx.cli", "serve", "--port", str(port), "--weights", str(weights),
                             "--device", "cpu", "--api-key-file", str(tmp_path / "key")],
                            cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                assert json.loads(urllib.request.urlopen(url + "/healthz", timeout=2).read())["status"] == "ok"
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "fewshotcx serve did not come up"
                time.sleep(0.3)
        with pytest.raises(RemoteError, match="API key"):
            RemoteSession(url, write_image(tmp_path))
        session = RemoteSession(url, write_image(tmp_path), api_key="k3y")
        session.draw(2, disc((12, 10), 4, XY))
        session.draw(7, disc((12, 10), 4, XY))
        assert session.result().array[..., 2:8].any()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_slice_preview_png_shows_the_drawing_and_the_result_in_display_orientation(tmp_path):
    import io

    import matplotlib.image as mpimg

    from fewshotcx.server.preview import to_display

    mask = np.zeros(XY, dtype=np.int64)
    mask[14:20, 2:6] = 1  # right of centre, posterior (canonical RAS plane): off every symmetry axis
    stored = np.flip(mask, (0, 1))  # the file is stored LPS: its own slice is reversed in x and y
    with serving(SessionStore(tiny_segmenter())) as url:
        session = RemoteSession(url, write_image(tmp_path))
        session.draw(2, stored)
        session.draw(8, stored)
        drawn = mpimg.imread(io.BytesIO(session.preview(2)))[..., :3]
        plain = mpimg.imread(io.BytesIO(session.preview(5)))[..., :3]
        completed = mpimg.imread(io.BytesIO(session.preview(5, result=True)))[..., :3]
        expected = session.result().canonical().array[..., 5]
        with pytest.raises(RemoteError, match="slice index"):
            session.preview(99)
    assert drawn.shape == (XY[1], XY[0], 3)
    red = (drawn[..., 0] > drawn[..., 1] + 0.2) & (drawn[..., 0] > drawn[..., 2] + 0.2)
    assert np.array_equal(red, to_display(mask) > 0)
    shown = to_display(mask)  # radiological: anterior (high y) at the top, the patient's right (high x) on the left
    assert shown[XY[1] - 1 - 2, XY[0] - 1 - 14] == 1 and shown[2, XY[0] - 1 - 14] == 0 and shown[XY[1] - 1 - 2, 14] == 0
    green = (completed[..., 1] > completed[..., 0] + 0.2) & (completed[..., 1] > completed[..., 2] + 0.2)
    assert expected.any() and np.array_equal(green, to_display(expected) > 0)
    assert not (plain[..., 1] > plain[..., 0] + 0.2).any()  # no overlay without a drawing or result=true
