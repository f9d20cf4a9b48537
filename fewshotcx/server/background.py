"""A server in a background thread of this process (notebooks, tests, benchmarks): the same app as
``fewshotcx serve``, on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .limits import Limits
from .store import SessionStore


@contextmanager
def background_server(store: SessionStore, api_key: Optional[str] = None, data_root: Optional[Path] = None,
                      host: str = "127.0.0.1", timeout: float = 30.0, sweep_seconds: float = 30.0,
                      limits: Limits = Limits()) -> Iterator[str]:
    """Serve ``store`` with uvicorn in a daemon thread under ``limits``; yields the base URL; stops the
    server and closes every session on exit.

    Raises:
        RuntimeError: the server did not start within ``timeout`` seconds.
    """
    import uvicorn

    from .app import create_app
    from .limits import uvicorn_config

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    app = create_app(store, api_key=api_key, data_root=data_root, sweep_seconds=sweep_seconds, limits=limits)
    server = uvicorn.Server(uvicorn_config(app, limits, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        port = sock.getsockname()[1]
        yield f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        store.close_all()
