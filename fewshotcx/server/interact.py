"""The contouring loop's interaction routes (under ``/sessions``, behind the same key and browser
guard as every session route):

=========================================  ===============================================================
``POST /sessions/{id}/box``                 a box prompt (:func:`~fewshotcx.server.prompts.parse_box`)
``POST /sessions/{id}/point``               a positive or negative click
``POST /sessions/{id}/scribble``            a positive or negative brush stroke (sparse voxels)
``POST /sessions/{id}/accept?format=F``     the accepted contour, as ``/result`` returns it
=========================================  ===============================================================

On a store that learns (``fewshotcx serve --learn``), ``accept`` first adds the contour to the shared
model's support (:meth:`SessionStore.learn <fewshotcx.server.store.SessionStore.learn>`; its answer's
``X-Fewshotcx-Support`` header counts the support volumes): sessions opened later start from it. An
empty contour is answered 400 and a full model 409, in one line, and nothing is learned.

The first three answer the session's state, as ``GET /sessions/{id}`` does, and are undone one at a
time by ``POST /sessions/{id}/undo`` (one undo stack for draws, erases and prompts). Bodies are JSON
(:mod:`fewshotcx.server.prompts`), bounded before they are read; a body that does not parse, names a
voxel outside the image or a label the session does not allow is answered 400 in one line and the
session is left as it was. Voxels are the image's own ``(i, j, k)``, never the canonical array's.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..session import ContourSession
from .answers import check_format, export, session_info
from .guard import read_json
from .limits import Limits
from .prompts import PROMPT_BODY_BYTES, SCRIBBLE_BODY_BYTES, parse_box, parse_point, parse_scribble
from .store import SessionStore

Interaction = Callable[[ContourSession, Any], None]


def interaction_routes(store: SessionStore, limits: Limits) -> APIRouter:
    """The routes above, on ``store``'s sessions."""
    router = APIRouter(prefix="/sessions")

    async def interact(request: Request, session_id: str, limit: int, act: Interaction) -> dict:
        body = await read_json(request, limit, limits.body_timeout)

        def apply() -> dict:
            with store.use(session_id) as entry:
                act(entry.session, body)
                return session_info(entry)
        return await run_in_threadpool(apply)

    @router.post("/{session_id}/box")
    async def box(session_id: str, request: Request) -> dict:
        return await interact(request, session_id, PROMPT_BODY_BYTES,
                              lambda s, body: s.add_box(*_parse(parse_box, s, body)))

    @router.post("/{session_id}/point")
    async def point(session_id: str, request: Request) -> dict:
        return await interact(request, session_id, PROMPT_BODY_BYTES,
                              lambda s, body: _add(s.add_point, _parse(parse_point, s, body)))

    @router.post("/{session_id}/scribble")
    async def scribble(session_id: str, request: Request) -> dict:
        return await interact(request, session_id, SCRIBBLE_BODY_BYTES,
                              lambda s, body: _add(s.add_scribble, _parse(parse_scribble, s, body)))

    @router.post("/{session_id}/accept")
    def accept(session_id: str, format: str = "nifti") -> Response:
        with store.use(session_id) as entry:
            check_format(entry, format)
            contour = entry.session.accept()
            if not store.learns:
                return export(entry, contour, format)
            held = store.learn(entry.session.original, contour)
            answer = export(entry, contour, format)
            answer.headers["X-Fewshotcx-Support"] = str(held)
            return answer

    return router


def _parse(parse: Callable[[Any, tuple], tuple], session: ContourSession, body: Any) -> tuple:
    """``parse(body, the session image's own shape)``."""
    return parse(body, session.original.shape)


def _add(method: Callable[..., None], parsed: tuple) -> None:
    """``method(where, positive=…, label=…)`` from a parsed point or scribble."""
    where, positive, label = parsed
    method(where, positive=positive, label=label)
