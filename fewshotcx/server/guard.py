"""What stands between the network and the sessions: one-line scrubbed errors, security headers and
cross-site refusal (:class:`BrowserGuard`), upload slots and bounded request bodies."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HTTPError(Exception):
    """An error answered as ``{"detail": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Scrub = Callable[[str], str]

#: Longest ``detail`` answered (a message beyond it is cut).
MAX_DETAIL = 300


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def scrubber(replacements: dict[str, Optional[Path]]) -> Scrub:
    """A function that replaces each folder in ``replacements`` (as given and resolved; whole path
    components only) by its placeholder key, longest first, cuts what follows a C++/Python trace
    marker and caps the length at :data:`MAX_DETAIL`."""
    pairs = {}
    for placeholder, path in replacements.items():
        if path is not None:
            for form in {str(path).rstrip("/\\"), str(Path(path).resolve()).rstrip("/\\")}:
                if form:
                    pairs[form] = placeholder
    ordered = [(re.compile(re.escape(path) + r"(?![\w.-])"), pairs[path])
               for path in sorted(pairs, key=len, reverse=True)]

    def scrub(text: str) -> str:
        for marker in ("Exception raised from", "Traceback (most recent call last)"):
            text = text.split(marker)[0].rstrip()
        for pattern, placeholder in ordered:
            text = pattern.sub(placeholder, text)
        return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 1] + "…"
    return scrub


def answer(status: int, scrub: Scrub):
    """An exception handler answering ``status`` with the exception's message on one line, scrubbed."""
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": scrub(one_line(exc))}, status_code=status)
    return handler


def validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: the first one, named by its parameter."""
    errors = exc.errors()
    if not errors:
        return "malformed request"
    where = [str(part) for part in errors[0].get("loc", ())]
    kind, name = (where[0], ".".join(where[1:])) if len(where) > 1 else ("request", "".join(where))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"bad {kind} parameter {name!r}: {errors[0].get('msg', 'invalid')}{more}"


#: Host names a keyless server answers to: a page on another site that rebinds its own name to
#: 127.0.0.1 (DNS rebinding) sends its name in ``Host`` and is refused.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")

#: Headers on every answer. The viewer loads its own scripts (ES modules, NiiVue's WebAssembly) and
#: inline styles only; images and volumes are fetched from this origin, downloads are blob URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
                               "connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: Methods that change state: refused when they come from another site.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def cross_site(headers: Headers, check_origin: bool) -> bool:
    """Whether a request comes from a page of another site (``Sec-Fetch-Site``) or, if
    ``check_origin``, from any origin but the one it is addressed to (``Origin`` vs ``Host``)."""
    if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        return True
    origin = headers.get("origin")
    if not check_origin or origin is None:
        return False
    parts = urlsplit(origin)
    return parts.scheme not in ("http", "https") or parts.netloc.lower() != headers.get("host", "").lower()


class BrowserGuard:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every answer, and 403 for a state-changing
    request from another site (:func:`cross_site`)."""

    def __init__(self, app: ASGIApp, check_origin: bool) -> None:
        self.app = app
        self.check_origin = check_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in UNSAFE_METHODS and cross_site(Headers(scope=scope), self.check_origin):
            refusal = JSONResponse({"detail": "cross-site request refused: use the server's own page, or a "
                                              "client that sends no Origin"}, status_code=403,
                                   headers=SECURITY_HEADERS)
            await refusal(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)
        await self.app(scope, receive, send_secured)


class UploadSlots:
    """At most ``size`` uploads received at once; one more waits up to ``wait`` seconds for a slot."""

    def __init__(self, size: int, wait: float) -> None:
        self.size = size
        self.wait = wait
        self._free = asyncio.Semaphore(size)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """One slot while the block runs.

        Raises:
            HTTPError: 503 when no slot came free in time.
        """
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait)
        except asyncio.TimeoutError:
            raise HTTPError(503, f"the server is receiving its maximum of {self.size} uploads; "
                                 "retry shortly") from None
        try:
            yield
        finally:
            self._free.release()


async def read_body(request: Request, limit: int, timeout: float) -> AsyncIterator[bytes]:
    """The request body's chunks, refusing more than ``limit`` bytes (413, checked against
    ``Content-Length`` before reading), a body stalled for ``timeout`` seconds (408) and a client that
    went away (400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"a body of {declared} bytes exceeds this request's limit of {limit} bytes")
    received = 0
    chunks = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), timeout)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise HTTPError(408, f"the request body stalled for {timeout:g} s") from None
        except ClientDisconnect:
            raise HTTPError(400, "the client went away before the request body was complete") from None
        received += len(chunk)
        if received > limit:
            raise HTTPError(413, f"the body exceeds this request's limit of {limit} bytes")
        yield chunk


async def receive_upload(request: Request, target: Path, limit: int, timeout: float, folder: Path) -> None:
    """Stream the upload to ``target`` (see :func:`read_body`); on any failure (an aborted upload too)
    ``folder`` is removed at once."""
    try:
        with open(target, "wb") as f:
            async for chunk in read_body(request, limit, timeout):
                f.write(chunk)
            if f.tell() == 0:
                raise HTTPError(400, "empty upload: send the volume file as the request body")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


async def read_json(request: Request, limit: int, timeout: float) -> Any:
    """The request body parsed as JSON, bounded as :func:`read_body` bounds it.

    Raises:
        HTTPError: 400 for a body that is not JSON (and :func:`read_body`'s errors).
    """
    body = b"".join([chunk async for chunk in read_body(request, limit, timeout)])
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPError(400, "the body must be a JSON object (see fewshotcx.server.prompts)") from None
