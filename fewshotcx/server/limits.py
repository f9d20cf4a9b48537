"""Connection and request limits of ``fewshotcx serve`` (and :func:`~fewshotcx.server.background_server`).

:class:`Limits` holds them with their defaults; :func:`uvicorn_config` hands the connection-level
ones to uvicorn, whose HTTP protocol is extended with a header timeout (:class:`HeaderTimeoutH11`):
uvicorn itself keeps a connection that never finishes its request headers open forever.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Optional

import h11
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class Limits:
    """Request and connection limits.

    Attributes:
        max_uploads: image uploads received at once; one more waits up to ``body_timeout`` for a
            slot, then is answered 503.
        body_timeout: seconds a request body may stall (no bytes arriving) before it is answered 408.
        header_timeout: seconds a connection may take to send a request's headers (from its opening
            or the end of its previous answer) before it is closed.
        keep_alive_timeout: seconds an idle keep-alive connection stays open.
        max_connections: open connections plus running requests; beyond it, requests are answered 503.
    """

    max_uploads: int = 2
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        if self.max_uploads < 1 or self.max_connections < 1:
            raise ValueError("max_uploads and max_connections must be at least 1")
        if min(self.body_timeout, self.header_timeout, self.keep_alive_timeout) <= 0:
            raise ValueError("timeouts must be positive")


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head within
    ``header_timeout`` seconds of opening or of its previous answer (slow-loris connections)."""

    header_timeout = Limits.header_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: Optional[asyncio.TimerHandle] = None
        self._start_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._start_header_timer()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:  # no request under way
            self.transport.close()


def uvicorn_config(app: Any, limits: Limits, **kwargs: Any) -> Config:
    """A uvicorn configuration serving ``app`` under ``limits`` (``kwargs``: host, port, log_level …)."""
    protocol = type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout": limits.header_timeout})
    return Config(app, http=protocol, timeout_keep_alive=limits.keep_alive_timeout,
                  limit_concurrency=limits.max_connections, **kwargs)
