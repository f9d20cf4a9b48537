"""``fewshotcx serve``: contouring sessions over HTTP for the browser viewer, napari and
:class:`fewshotcx.client.RemoteSession`.

:func:`create_app` builds the FastAPI application (see :mod:`fewshotcx.server.app` for the routes),
:class:`~fewshotcx.server.store.SessionStore` holds the sessions around one shared segmenter,
:mod:`fewshotcx.server.interact` adds the prompt routes (box, point, scribble, accept), and
:mod:`fewshotcx.server.wire` and :mod:`fewshotcx.server.prompts` define the byte and JSON formats
(shared with the torch-free client). FastAPI
and uvicorn come with the ``[serve]`` extra; they are imported only when the server is used.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["SessionStore", "background_server", "create_app", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only listens on this machine (``localhost``, ``127.x``, ``::1``)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def __getattr__(name: str):
    if name == "create_app":
        return import_module(".app", __name__).create_app
    if name == "background_server":
        return import_module(".background", __name__).background_server
    if name == "SessionStore":
        return import_module(".store", __name__).SessionStore
    raise AttributeError(f"module 'fewshotcx.server' has no attribute {name!r}")
