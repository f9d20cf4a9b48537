"""Issue #29 (untrusted input, round 4), server side: bounded bodies, no patient data left behind,
cross-site refusal, scrubbed errors, no key sent across a redirect, timeouts and browser headers.
Every request goes to 127.0.0.1 with a timeout."""

from __future__ import annotations

import http.server
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servekit import SHAPE, call, disc, error_detail, serving, tiny_segmenter, write_image  # noqa: E402

from fewshotcx.client import RemoteError, RemoteSession  # noqa: E402
from fewshotcx.server import SessionStore  # noqa: E402

XY = SHAPE[:2]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _leftovers(store: SessionStore) -> list[Path]:
    return list(store.root.iterdir()) if store.root.exists() else []


def _status_line(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    return sock.recv(65536).split(b"\r\n", 1)[0]


# ---------------------------------------------------------------- item 4: a slice body is bounded
def test_an_oversized_slice_body_is_refused_before_it_is_read(tmp_path):
    with serving(SessionStore(tiny_segmenter())) as url:
        session = RemoteSession(url, write_image(tmp_path))
        route = f"/sessions/{session.session_id}/slices/3"
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:  # declared too large
            sock.sendall(f"PUT {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 400000000\r\n\r\n".encode())
            assert b" 413 " in _status_line(sock)
        chunk, sent, answered = b"\x01" * 65536, 0, False
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:  # chunked: no length
            sock.sendall(f"PUT {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            while sent < 64 << 20 and not answered:
                try:
                    sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                except OSError:  # the server closed the connection after answering
                    break
                sent += len(chunk)
                answered = bool(select.select([sock], [], [], 0.01)[0])
            assert b" 413 " in _status_line(sock)
        assert sent < 8 << 20, f"the server read {sent >> 20} MB of a body bounded by {XY[0] * XY[1]} bytes"
        assert session.drawn == []


# ---------------------------------------------------------------- item 5: no patient data left behind
def test_an_upload_aborted_mid_body_leaves_no_folder(tmp_path):
    store = SessionStore(tiny_segmenter())
    with serving(store) as url:
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
            sock.sendall(b"POST /sessions?name=ct.nii.gz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 1000000\r\n\r\n" + b"\0" * 100_000)
            assert _wait_until(lambda: _leftovers(store), 5.0)  # the upload is under way
        assert _wait_until(lambda: not _leftovers(store)), f"left behind: {_leftovers(store)}"


@pytest.mark.parametrize("name", ["a\0.nii.gz", "../up.nii.gz", "sub/x.nii", "b\\c.nrrd", "tab\t.nii"])
def test_a_name_with_a_nul_byte_or_a_folder_is_refused_and_leaves_nothing(tmp_path, name):
    store = SessionStore(tiny_segmenter())
    with serving(store) as url:
        status, _, body = call(f"{url}/sessions?{urllib.parse.urlencode({'name': name})}", "POST",
                                write_image(tmp_path).read_bytes())
        assert status == 400 and "plain file name" in error_detail(body)
        assert _leftovers(store) == [] and len(store) == 0


def _tiny_checkpoint(folder: Path) -> Path:
    import torch

    from fewshotcx.models import UniverSeg
    from fewshotcx.models.weights import save_checkpoint

    torch.manual_seed(0)
    model = UniverSeg((8, 8, 8, 8), (8, 8, 8), in_channels=1)
    return save_checkpoint(model, folder / "tiny.pt", model.config, {"slice_size": 32})


@contextmanager
def _serve_process(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """``fewshotcx serve`` in a subprocess whose temporary folder is ``tmp_path/tmp``."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "fewshotcx.cli", "serve", "--port", str(port), "--weights",
                             str(_tiny_checkpoint(tmp_path)), "--device", "cpu", *extra],
                            cwd=Path(__file__).parent.parent, env={**os.environ, "TMPDIR": str(temp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: _healthy(url) or proc.poll() is not None, 120) and proc.poll() is None
        yield proc, url, temp
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return json.loads(urllib.request.urlopen(url + "/healthz", timeout=2).read())["status"] == "ok"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_fewshotcx_serve_removes_every_uploaded_image(tmp_path, sig):
    with _serve_process(tmp_path) as (proc, url, temp):
        session = RemoteSession(url, write_image(tmp_path))
        session.draw(2, disc((12, 10), 4, XY))
        uploaded = [p for p in temp.rglob("*") if p.is_file()]
        assert any(p.name == "ct.nii.gz" for p in uploaded)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert list(temp.iterdir()) == []


# ---------------------------------------------------------------- item 8: cross-site requests
def test_cross_site_state_changes_are_refused_and_same_origin_ones_work(tmp_path):
    image = write_image(tmp_path).read_bytes()
    store = SessionStore(tiny_segmenter())
    with serving(store) as url:
        create = f"{url}/sessions?name=ct.nii.gz"
        for headers in ({"Origin": "https://evil.example", "Content-Type": "text/plain"},
                        {"Origin": "null"}, {"Origin": "http://127.0.0.1:1"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            status, _, body = call(create, "POST", image, headers)
            assert status == 403 and "cross-site" in error_detail(body), headers
        assert len(store) == 0 and _leftovers(store) == []
        status, _, body = call(create, "POST", image, {"Origin": url, "Sec-Fetch-Site": "same-origin"})
        assert status == 200
        sid = json.loads(body)["session_id"]
        assert call(f"{url}/sessions/{sid}", "DELETE", headers={"Origin": "https://evil.example"})[0] == 403
        assert call(f"{url}/sessions/{sid}", headers={"Origin": "https://evil.example"})[0] == 200  # reads: CORS
        RemoteSession(url, write_image(tmp_path)).close()  # no Origin: unaffected
    with serving(SessionStore(tiny_segmenter()), api_key="k") as url:
        status, _, _ = call(f"{url}/sessions?name=ct.nii.gz", "POST", image,
                             {"Sec-Fetch-Site": "cross-site", "Authorization": "Bearer k"})
        assert status == 403


# ---------------------------------------------------------------- item 9: no internals in answers
def test_an_internal_error_answers_a_generic_line_without_paths_or_trace(tmp_path, monkeypatch):
    import fewshotcx.server.app as app

    store = SessionStore(tiny_segmenter())

    def explode(*args, **kwargs):
        raise RuntimeError(f"at {store.root}/x.so 0x7f00deadbeef\nTraceback (most recent call last):\n"
                           f"  File \"{sys.prefix}/lib/torch.py\"")

    monkeypatch.setattr(app, "nifti_bytes", explode)
    with serving(store) as url:
        session = RemoteSession(url, write_image(tmp_path))
        status, _, body = call(f"{url}/sessions/{session.session_id}/image")
    detail = error_detail(body)
    assert status == 500 and detail.startswith("internal server error")
    for leak in ("Traceback", "RuntimeError", "0x7f", str(store.root), sys.prefix, "/"):
        assert leak not in detail


def test_bad_input_answers_name_neither_the_upload_folder_nor_the_data_root(tmp_path):
    nrrd = ("NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nspace: left-posterior-superior\n"
            "space directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\n"
            "data file: missing.raw\n\n")
    root = tmp_path / "data"
    root.mkdir()
    (root / "bad.nrrd").write_text(nrrd)
    store = SessionStore(tiny_segmenter())
    with serving(store, data_root=root) as url:
        for route, body in ((f"{url}/sessions?name=bad.nrrd", nrrd.encode()), (f"{url}/sessions?path=bad.nrrd", None)):
            status, _, answer = call(route, "POST", body)
            detail = error_detail(answer)
            assert status == 400 and "bad.nrrd" in detail and "\n" not in detail
            assert str(store.root) not in detail and str(root) not in detail and str(tmp_path) not in detail


def test_a_malformed_parameter_is_one_line_detail(tmp_path):
    with serving(SessionStore(tiny_segmenter())) as url:
        session = RemoteSession(url, write_image(tmp_path))
        for route in (f"/sessions/{session.session_id}/suggest?n=many", f"/sessions/{session.session_id}/slices/x"):
            status, _, body = call(url + route)
            assert status == 400 and error_detail(body).startswith("bad ")


# ---------------------------------------------------------------- item 10: client, limits, headers
class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with ``self.server.answer`` (status, headers, body) and records the headers."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.seen.append(dict(self.headers))
        status, headers, body = self.server.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def _recorder(answer: tuple[int, dict, bytes]) -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen, server.answer, server.timeout = [], answer, 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_sends_its_key_to_no_other_origin_after_a_redirect():
    info = json.dumps({"session_id": "s", "name": "x", "shape": [2, 2, 2], "drawn": [], "labels": None,
                       "dicom": False}).encode()
    with _recorder((200, {"Content-Type": "application/json"}, info)) as other:
        target = f"http://127.0.0.1:{other.server_address[1]}/sessions/s"
        with _recorder((302, {"Location": target}, b"")) as first:
            with pytest.raises(RemoteError, match="redirect") as err:
                RemoteSession.attach(f"http://127.0.0.1:{first.server_address[1]}", "s", api_key="k3y")
            assert err.value.status == 302 and first.seen[0]["Authorization"] == "Bearer k3y"
        assert other.seen == []


def test_a_stalled_request_head_is_closed_and_a_stalled_body_refused(tmp_path):
    from fewshotcx.server.limits import Limits

    store = SessionStore(tiny_segmenter())
    limits = Limits(header_timeout=0.5, body_timeout=0.5, max_uploads=1)
    with serving(store, limits=limits) as url:
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
            slow.settimeout(5)
            assert slow.recv(100) == b""  # closed by the server
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as stalled:
            stalled.sendall(b"POST /sessions?name=ct.nii.gz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Length: 1000\r\n\r\n" + b"\0" * 10)
            assert b" 408 " in _status_line(stalled)
        assert _wait_until(lambda: not _leftovers(store))


def test_uploads_beyond_the_limit_wait_for_a_slot_then_are_answered_503(tmp_path):
    from fewshotcx.server.limits import Limits

    store = SessionStore(tiny_segmenter())
    done = threading.Event()

    def trickle(sock: socket.socket) -> None:  # a slow upload: one byte every 0.1 s, never stalled
        while not done.wait(0.1):
            sock.sendall(b"\0")

    with serving(store, limits=Limits(max_uploads=1, body_timeout=1.0)) as url:
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as busy:
            busy.sendall(b"POST /sessions?name=a.nii.gz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 1000\r\n\r\n")
            writer = threading.Thread(target=trickle, args=(busy,), daemon=True)
            writer.start()
            try:
                assert _wait_until(lambda: _leftovers(store), 5.0)
                status, _, body = call(f"{url}/sessions?name=ct.nii.gz", "POST", write_image(tmp_path).read_bytes())
                assert status == 503 and "uploads" in error_detail(body)
            finally:
                done.set()
                writer.join(timeout=5)
        assert _wait_until(lambda: not _leftovers(store))
        RemoteSession(url, write_image(tmp_path)).close()  # the slot is free again


def test_uvicorn_gets_the_keep_alive_and_concurrency_limits():
    from fewshotcx.server.limits import HeaderTimeoutH11, Limits, uvicorn_config

    config = uvicorn_config(object(), Limits(keep_alive_timeout=3, max_connections=7, header_timeout=2))
    assert config.timeout_keep_alive == 3 and config.limit_concurrency == 7
    assert issubclass(config.http, HeaderTimeoutH11) and config.http.header_timeout == 2
    with pytest.raises(ValueError):
        Limits(body_timeout=0)


def test_docs_are_off_and_every_answer_carries_the_browser_headers(tmp_path):
    with serving(SessionStore(tiny_segmenter())) as url:
        assert call(url + "/docs")[0] == 404 and call(url + "/redoc")[0] == 404
        for route in ("/", "/static/viewer.js", "/healthz", "/sessions/none", "/openapi.json"):
            _, headers, _ = call(url + route)
            assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "no-referrer"
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_the_drawing_route_builds_a_uint8_volume(tmp_path):
    """``/drawing`` on a 256×256×32 image stays far below one int64 copy (16 MB)."""
    import tracemalloc

    import nibabel as nib
    from fastapi.testclient import TestClient

    from fewshotcx.server import create_app

    nib.save(nib.Nifti1Image(np.zeros((256, 256, 32), np.float32), np.eye(4)), str(tmp_path / "big.nii.gz"))
    client = TestClient(create_app(SessionStore(tiny_segmenter()), data_root=tmp_path), base_url="http://127.0.0.1")
    sid = client.post("/sessions?path=big.nii.gz").json()["session_id"]
    mask = np.zeros((256, 256), np.uint8)
    mask[100:120, 100:120] = 1
    assert client.put(f"/sessions/{sid}/slices/4", content=mask.tobytes(order="F")).status_code == 200
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        answer = client.get(f"/sessions/{sid}/drawing")
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert answer.status_code == 200 and len(answer.content) == 256 * 256 * 32
    assert peak < 12 << 20, f"/drawing peaked at {peak >> 20} MB"
