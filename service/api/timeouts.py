"""Time limits for slow clients: request heads in the HTTP protocol, request bodies in the app.

Without them a client could hold a connection and its buffers forever: uvicorn times out only a
kept-alive connection that is idle *between* requests; a connection that sends half a request
head, or a body one byte at a time, was never closed (a probe kept 300 such connections open).

* ``header_timeout_protocol(s)``: uvicorn's h11 protocol with one more timer. From the moment a
  connection opens, and again after each response, the next request head must be complete within
  ``s`` seconds; otherwise the connection is closed (with a 408 answer if part of a head came).
* ``BodyTimeoutMiddleware``: while a route reads the body, no gap between two chunks may exceed
  ``idle_s`` and the whole body must arrive within ``total_s``; otherwise the route's read fails
  with 408 ``request_timeout`` and the connection is closed.

In production, a reverse proxy in front should enforce the same (see the Hardening section of
service/README_API.md); these limits keep the server safe when it is exposed directly.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.core.errors import ApiError


def _timeout_408(message: str) -> ApiError:
    return ApiError(408, "request_timeout", message, headers={"Connection": "close"})


class _HeadTimeoutH11(H11Protocol):
    """h11 protocol that closes a connection whose next request head does not arrive in time."""

    header_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _waiting_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._head_bytes += len(data)
        super().data_received(data)
        if self.cycle is not self._waiting_cycle:
            self._cancel_head_timer()  # a new request's head is complete

    def on_response_complete(self) -> None:
        # Armed first: a pipelined request already buffered starts a new cycle inside the call.
        self._arm_head_timer()
        super().on_response_complete()
        if self.cycle is not self._waiting_cycle or self.transport.is_closing():
            self._cancel_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._waiting_cycle = self.cycle
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.cycle is not self._waiting_cycle:
            return
        if self._head_bytes:
            error = _timeout_408(
                f"the request head was not complete within {self.header_timeout:g} s; connection closed"
            )
            body = json.dumps(error.body()).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
        self.transport.close()


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """The ``http`` protocol class for ``uvicorn.Config`` with a request-head time limit."""
    return type("HeadTimeoutH11Protocol", (_HeadTimeoutH11,), {"header_timeout": float(seconds)})


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, idle_s: float, total_s: float) -> None:
        self.app = app
        self.idle_s = idle_s
        self.total_s = total_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started: float | None = None
        body_done = False
        idle_s, total_s = self.idle_s, self.total_s

        async def timed_receive() -> Message:
            nonlocal started, body_done
            if body_done:
                # After the body, receive() waits for the disconnect: that wait is not a slow client.
                return await receive()
            now = time.monotonic()
            if started is None:
                started = now
            left = total_s - (now - started)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, min(idle_s, left)))
            except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
                what = (
                    f"no body bytes for {idle_s:g} s" if left > idle_s else f"the body took longer than {total_s:g} s"
                )
                # Raised inside the route's body parsing; the ApiError handler renders it.
                raise _timeout_408(f"request body too slow: {what}; connection closed") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)
