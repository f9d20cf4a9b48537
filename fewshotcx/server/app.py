"""The FastAPI application behind ``fewshotcx serve``.

Routes (every one but ``/healthz``, the viewer page ``/`` and its static files needs
``Authorization: Bearer KEY`` when the server has a key; the page and the files hold no data):

=========================================  ===============================================================
``GET /healthz``                            200 ``{"status": "ok"}`` once the model is loaded
``POST /sessions?name=F[&classes=1,2]``     body: the volume file (NIfTI/NRRD, or a .zip of a DICOM series)
``POST /sessions?path=REL``                 a file or DICOM folder under ``--data-root``
``GET /sessions/{id}``                      shape, drawn slices, prompts, declared label values, whether
                                            DICOM, the canonical layout (:func:`.answers.session_info`)
``PUT /sessions/{id}/slices/{z}``           draw slice ``z`` (body: wire-format mask, the file's X·Y
                                            bytes, see :mod:`.wire`)
``GET|DELETE /sessions/{id}/slices/{z}``    a drawn slice / erase it
``POST /sessions/{id}/undo``                undo the last draw, erase or interaction
``GET /sessions/{id}/suggest?n=1``          ``{"slices": [...]}``
``GET /sessions/{id}/result?format=F``      ``nifti`` (the image's own layout), ``canonical`` (RAS NIfTI,
                                            for the viewer), ``rtstruct`` (DICOM images only)
``GET /sessions/{id}/image``                the canonical image as NIfTI (for the viewer)
``GET /sessions/{id}/slices/{z}/png``       slice ``z`` as a PNG, drawn slice in red (``?result=true``:
                                            the completed result in green too; see :mod:`.preview`)
``GET /sessions/{id}/drawing``              every drawn slice on the canonical grid of ``/image`` (for
                                            the viewer; X·Y·Z bytes, x fastest)
``DELETE /sessions/{id}``                   close
``POST /sessions/{id}/box``                 a box prompt (JSON bodies: :mod:`.prompts`; routes: :mod:`.interact`)
``POST /sessions/{id}/point``               a positive or negative click
``POST /sessions/{id}/scribble``            a positive or negative scribble (its voxels)
``POST /sessions/{id}/accept?format=F``     the accepted contour (formats as ``/result``); learnt (``--learn``)
=========================================  ===============================================================

Errors are JSON ``{"detail": "<one line>"}``: 400 bad input (a malformed or missing parameter
included), 401 key, 403 outside ``--data-root`` or a cross-site request, 404 unknown session, 408 a
request body that stalled, 413 upload or slice body too large, 503 session or upload limit, 500
``"internal server error"`` (the traceback goes to the server's log only). No answer names a server
path: the upload folder and ``--data-root`` are replaced by ``<upload>`` and ``<data-root>``.

Browser safety: a keyless server refuses (403) ``POST``/``PUT``/``DELETE`` whose ``Origin`` is not its
own; every server refuses them with ``Sec-Fetch-Site: cross-site`` or ``same-site``. Clients that send
no ``Origin`` (``RemoteSession``, curl) are unaffected. Every answer carries anti-framing, CSP,
``nosniff`` and ``no-referrer`` headers (:data:`~fewshotcx.server.guard.SECURITY_HEADERS`); ``/docs`` and ``/redoc`` are off
(they load scripts from a CDN), the schema stays at ``/openapi.json`` (plain JSON, no data).
Limits on bodies, uploads and connections: :class:`~fewshotcx.server.limits.Limits`. Slice indices
``z`` and slice bodies are the image's own, ``array[:, :, z]`` of the file as stored (a DICOM
series: as read), as for :class:`~fewshotcx.session.ContourSession` (docs/geometry.md, "Slice indices";
changed in 0.4.0: canonical before). ``?labels=`` is the deprecated spelling of ``?classes=``.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import tempfile
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import AsyncIterator, Optional

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import __version__
from ..io.volume import VolumeError
from .answers import OCTETS, check_format, export, has_result, session_info
from .guard import (LOOPBACK_HOSTS, BrowserGuard, HTTPError, Scrub, UploadSlots, answer, read_body, receive_upload,
                    scrubber, validation_detail)
from .interact import interaction_routes
from .limits import Limits
from .store import UPLOAD_SUFFIXES, LearnLimitError, SessionLimitError, SessionStore, UnknownSession, resolve_under
from .preview import slice_png, window_range
from .wire import MAX_WIRE_LABEL, decode_mask, encode_mask, nifti_bytes


def create_app(store: SessionStore, api_key: Optional[str] = None, data_root: Optional[Path] = None,
               sweep_seconds: float = 30.0, limits: Limits = Limits()) -> FastAPI:
    """The application serving ``store``'s sessions.

    Args:
        store: sessions and the shared segmenter.
        api_key: when set, every data route needs ``Authorization: Bearer <api_key>`` (compared in
            constant time).
        data_root: the folder ``POST /sessions?path=`` may open files from (nothing outside it).
        sweep_seconds: how often idle sessions are looked for while no request comes in (every
            request also closes the idle ones).
        limits: concurrent uploads and the body timeout (the connection limits are uvicorn's:
            :func:`~fewshotcx.server.limits.uvicorn_config`).

    Without a key, only requests addressed to a loopback name (:data:`~fewshotcx.server.guard.LOOPBACK_HOSTS`) and not coming
    from another origin are answered. When the server stops (SIGTERM/SIGINT included), every session
    is closed and the store's folder removed.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()

        async def sweep() -> None:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=sweep_seconds)
                except asyncio.TimeoutError:
                    await run_in_threadpool(store.expire)

        task = asyncio.create_task(sweep())
        try:
            yield
        finally:  # uvicorn runs this on SIGTERM/SIGINT too, before it re-raises the signal
            stop.set()
            await task
            await run_in_threadpool(store.close_all)

    app = FastAPI(title="fewshotcx", description="Few-shot contouring sessions (draw, complete, suggest).",
                  version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    if api_key is None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS), www_redirect=False)
    app.add_middleware(BrowserGuard, check_origin=api_key is None)
    scrub = scrubber({"<upload>": store.root, "<data-root>": data_root, "<tmp>": Path(tempfile.gettempdir()),
                      "<python>": Path(sys.prefix)})
    _add_error_handlers(app, scrub)

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "sessions": len(store)}

    static = resources.files("fewshotcx.server") / "static"

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    for router in (_session_routes(store, data_root, limits), interaction_routes(store, limits)):
        app.include_router(router, dependencies=[Depends(authorised)])
    return app


def _add_error_handlers(app: FastAPI, scrub: Scrub) -> None:
    """Every error as one scrubbed line; a 500 says nothing about its cause (uvicorn logs it)."""

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        headers = {401: {"WWW-Authenticate": "Bearer"},  # and a body left unread ends the connection:
                   408: {"Connection": "close"}, 413: {"Connection": "close"}}.get(exc.status)
        return JSONResponse({"detail": scrub(str(exc))}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": scrub(validation_detail(exc))}, status_code=400)

    for kind, status in ((UnknownSession, 404), (SessionLimitError, 503), (LearnLimitError, 409),
                         (PermissionError, 403), (ValueError, 400), (VolumeError, 400), (FileNotFoundError, 400)):
        app.add_exception_handler(kind, answer(status, scrub))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal server error (details are in the server's log)"}, status_code=500)


def _session_routes(store: SessionStore, data_root: Optional[Path], limits: Limits) -> APIRouter:
    router = APIRouter(prefix="/sessions")
    uploads = UploadSlots(limits.max_uploads, wait=limits.body_timeout)

    @router.post("")
    async def create(request: Request, name: Optional[str] = None, path: Optional[str] = None,
                     classes: Optional[str] = None, labels: Optional[str] = None) -> dict:
        if classes is not None and labels is not None:
            raise HTTPError(400, "give ?classes= only (?labels= is its deprecated spelling)")
        values = _classes(classes if classes is not None else labels)
        if path is not None:
            source = resolve_under(data_root, path)
            folder = store.new_folder()
            entry = await run_in_threadpool(store.create, folder, source, path, values, root=data_root)
        else:
            _check_upload_name(name)
            async with uploads.hold():
                folder = store.new_folder()
                source = folder / name
                await receive_upload(request, source, store.max_upload_bytes, limits.body_timeout, folder)
            entry = await run_in_threadpool(store.create, folder, source, name, values)
        return session_info(entry)

    @router.get("/{session_id}")
    def info(session_id: str) -> dict:
        with store.use(session_id) as entry:
            return session_info(entry)

    @router.put("/{session_id}/slices/{z}")
    async def draw(session_id: str, z: int, request: Request) -> dict:
        def slice_bytes() -> int:
            with store.use(session_id) as entry:
                x, y = entry.session.original.shape[:2]
                return x * y

        limit = await run_in_threadpool(slice_bytes)
        body = b"".join([chunk async for chunk in read_body(request, limit, limits.body_timeout)])

        def record() -> dict:
            with store.use(session_id) as entry:
                entry.session.draw(z, decode_mask(body, entry.session.original.shape[:2]))
                return session_info(entry)
        return await run_in_threadpool(record)

    @router.get("/{session_id}/slices/{z}")
    def drawn_slice(session_id: str, z: int) -> Response:
        with store.use(session_id) as entry:
            if z not in entry.session.drawn:
                raise HTTPError(404, f"slice {z} is not drawn (drawn: {entry.session.drawn})")
            return Response(encode_mask(entry.session.drawn_mask(z)), media_type=OCTETS)

    @router.delete("/{session_id}/slices/{z}")
    def erase(session_id: str, z: int) -> dict:
        with store.use(session_id) as entry:
            entry.session.erase(z)
            return session_info(entry)

    @router.post("/{session_id}/undo")
    def undo(session_id: str) -> dict:
        with store.use(session_id) as entry:
            entry.session.undo()
            return session_info(entry)

    @router.get("/{session_id}/suggest")
    def suggest(session_id: str, n: int = 1) -> dict:
        with store.use(session_id) as entry:
            return {"slices": entry.session.suggest(n)}

    @router.get("/{session_id}/result")
    def result(session_id: str, format: str = "nifti") -> Response:
        with store.use(session_id) as entry:
            check_format(entry, format)
            return export(entry, entry.session.result(), format)

    @router.get("/{session_id}/slices/{z}/png")
    def slice_preview(session_id: str, z: int, result: bool = False) -> Response:
        with store.use(session_id) as entry:
            s = entry.session
            c = s.slices.to_canonical(z)  # shown as the canonical plane (radiological view)
            if entry.window is None:
                entry.window = window_range(s.image.array)
            drawn = s.slices.plane_to_canonical(s.drawn_mask(z)) if z in s.drawn else None
            completed = s.result().canonical().array[..., c] if result and has_result(entry) else None
            return Response(slice_png(s.image.array[..., c], entry.window, drawn, completed), media_type="image/png")

    @router.get("/{session_id}/image")
    def image(session_id: str) -> Response:
        with store.use(session_id) as entry:
            canonical = entry.session.image
            return Response(nifti_bytes(canonical.array, canonical.affine), media_type=OCTETS)

    @router.get("/{session_id}/drawing")
    def drawing(session_id: str) -> Response:
        with store.use(session_id) as entry:
            s = entry.session
            volume = np.zeros(s.image.shape, dtype=np.uint8)
            for k in s.drawn:
                mask = s.drawn_mask(k)
                if mask.max(initial=0) > MAX_WIRE_LABEL:
                    raise ValueError(f"slice {k} holds label values above {MAX_WIRE_LABEL}: not sendable as uint8")
                volume[..., s.slices.to_canonical(k)] = s.slices.plane_to_canonical(mask)
            return Response(encode_mask(volume), media_type=OCTETS)

    @router.delete("/{session_id}")
    def close(session_id: str) -> dict:
        store.close(session_id)
        return {"closed": session_id}

    return router


def _classes(text: Optional[str]) -> Optional[list[int]]:
    if text is None or not text.strip():
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"classes must be comma-separated integers, got {text!r}") from None


def _check_upload_name(name: Optional[str]) -> None:
    """A plain file name with an image suffix (no folder part, no control character).

    Raises:
        HTTPError: 400 otherwise.
    """
    if not name or not name.lower().endswith(UPLOAD_SUFFIXES):
        raise HTTPError(400, "give ?name=FILE ending in .nii, .nii.gz, .nrrd or .zip (a DICOM series) "
                             "with the file as the request body, or ?path=REL under --data-root")
    if any(c in "/\\" or not c.isprintable() for c in name):
        raise HTTPError(400, "?name= must be a plain file name: no folder, no control characters")
