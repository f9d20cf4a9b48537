"""The DICOM node scenario against a real PACS (Debian's Orthanc), run by tests/test_dicom_node.py as
``unshare -rn python tests/nodekit.py SPEC.json``: in a private network namespace only loopback exists,
so Orthanc (which cannot be told to bind loopback only) and the node are reachable from nowhere else.

The scenario starts Orthanc (config, storage and log in the output folder, the node registered as a
modality so that Orthanc accepts its C-STORE), starts ``fewshotcx listen``, sends a CT series, waits
for the RTSTRUCT to land in Orthanc and downloads it, then tries an unknown calling AE, a truncated
series, a CT series that is an MR inside and an MR series, checks the node still answers, stops it with
SIGTERM and writes ``results.json`` (every wait bounded).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pydicom

NODE_AE, SENDER_AE, PACS_AE = "FEWSHOTCX", "STORESCU", "ORTHANC"
LOOPBACK = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def loopback_up() -> None:
    """Bring ``lo`` up in a fresh network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    with socket.socket() as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), 0x8913, request)[:18])[1]
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH", b"lo", flags | 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def http(url: str, timeout: float = 10.0) -> bytes:
    with _OPENER.open(url, timeout=timeout) as answer:
        return answer.read()


@contextmanager
def orthanc(folder: Path, node_port: int) -> Iterator[dict]:
    """A running Orthanc whose storage, index, config and log are in ``folder``; yields its ports."""
    folder.mkdir(parents=True)
    ports = {"http": free_port(), "dicom": free_port()}
    config = {"Name": "fewshotcx-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": ports["http"], "DicomPort": ports["dicom"], "DicomAet": PACS_AE, "Plugins": [],
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
              "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomCheckModalityHost": True,
              "DicomModalities": {"fewshotcx": [NODE_AE, LOOPBACK, node_port]}, "DicomScpTimeout": 10}
    (folder / "orthanc.json").write_text(json.dumps(config))
    with open(folder / "orthanc.log", "wb") as log:
        process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                http(f"http://{LOOPBACK}:{ports['http']}/system", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield {**ports, "url": f"http://{LOOPBACK}:{ports['http']}"}
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def echo(port: int, calling: str = SENDER_AE) -> str:
    """``"ok"``, ``"rejected"`` or ``"no answer"`` for a C-ECHO to the node as ``calling``."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title=NODE_AE)
    if assoc.is_rejected:
        return "rejected"
    if not assoc.is_established:
        return "no answer"
    status = assoc.send_c_echo()
    assoc.release()
    return "ok" if status and status.Status == 0 else "failed"


def send_series(folder: Path, port: int, calling: str = SENDER_AE) -> list[str]:
    """C-STORE every file of ``folder`` in one association; one outcome per file (hex status or error)."""
    from pynetdicom import AE

    files = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    ae = AE(ae_title=calling)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in sorted({str(ds.SOPClassUID) for ds in files}):
        ae.add_requested_context(uid, "1.2.840.10008.1.2.1")
    assoc = ae.associate(LOOPBACK, port, ae_title=NODE_AE)
    if not assoc.is_established:
        return ["rejected" if assoc.is_rejected else "no answer"]
    outcomes = []
    for ds in files:
        try:
            status = assoc.send_c_store(ds)
            outcomes.append(hex(int(status.Status)) if status else "no status")
        except (ValueError, RuntimeError) as exc:
            outcomes.append(f"error: {exc}")
    assoc.release()
    return outcomes


def wait_for(condition, timeout: float, step: float = 0.3):
    """Poll ``condition()`` until it returns something truthy (returned) or ``timeout`` s pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(step)
    return None


def log_lines(path: Path, text: str) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if text in line]


def run(spec: dict) -> dict:
    """The scenario (module docstring); returns what the tests check."""
    out = Path(spec["out"])
    node_port, results = free_port(), {}
    tmp = out / "node-tmp"
    tmp.mkdir()
    with orthanc(out / "orthanc", node_port) as pacs:
        command = [sys.executable, "-m", "fewshotcx", "listen", "--library", spec["library"], "--structures",
                   spec["structures"], "--port", str(node_port), "--ae-title", NODE_AE, "--forward",
                   f"{PACS_AE}@{LOOPBACK}:{pacs['dicom']}", "--allow", SENDER_AE, "--outbox", str(out / "outbox"),
                   "--idle", "3", *spec["model"]]
        log_path = out / "node.log"
        with open(log_path, "wb") as log:
            node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=spec["repo"],
                                    env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": spec["repo"]})
        try:
            start = time.monotonic()
            results["echo"] = wait_for(lambda: node.poll() is None and echo(node_port) == "ok" and "ok", 180)
            results["ready_seconds"] = time.monotonic() - start
            instances = lambda: json.loads(http(f"{pacs['url']}/instances"))  # noqa: E731
            start = time.monotonic()
            results["good"] = send_series(Path(spec["query"]), node_port)
            landed = wait_for(instances, 120) or []
            results["good_seconds"] = time.monotonic() - start
            for k, instance in enumerate(landed):
                (out / f"pacs_{k}.dcm").write_bytes(http(f"{pacs['url']}/instances/{instance}/file"))
            results["stranger_echo"] = echo(node_port, "STRANGER")
            results["stranger_store"] = send_series(Path(spec["query"]), node_port, "STRANGER")
            for name in ("truncated", "mr_inside", "mr"):
                before = len(log_lines(log_path, "not contoured"))
                results[name] = send_series(Path(spec[name]), node_port)
                if name != "mr":  # an MR series is refused at association: nothing reaches the worker
                    results[f"{name}_log"] = wait_for(lambda: log_lines(log_path, "not contoured")[before:], 60)
            time.sleep(2)  # anything sent by mistake would have landed by now
            results["pacs_instances_at_end"] = len(instances())
            results["echo_at_end"] = echo(node_port)
            results["alive_at_end"] = node.poll() is None
            results["tmp_during"] = sorted(p.name for p in tmp.rglob("*") if p.is_file())
        finally:
            node.send_signal(signal.SIGTERM)
            try:
                results["exit_code"] = node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()
                results["exit_code"] = "killed"
        results["tmp_after"] = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
        results["outbox"] = sorted(p.name for p in (out / "outbox").glob("*"))
    return results


if __name__ == "__main__":
    loopback_up()
    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text())
    (Path(spec["out"]) / "results.json").write_text(json.dumps(run(spec), indent=1))
