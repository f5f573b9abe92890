"""Request body size limit, enforced before the body is read.

A request whose ``Content-Length`` exceeds the limit is answered 413 at once, without reading any
of its body. A request without a length (chunked upload) or one that lies about it is counted as
it streams in and aborted with the same 413 as soon as it passes the limit, so the server never
buffers more than the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import ApiError


def _too_large(limit: int, size: int | None) -> ApiError:
    what = f"{size} bytes" if size is not None else "more bytes than allowed"
    return ApiError(
        413,
        "request_too_large",
        f"request body has {what}; the limit is {limit} bytes per request",
        headers={"Connection": "close"},
    )


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await ApiError(400, "bad_content_length", "Content-Length is not an integer").response()(
                        scope, receive, send
                    )
                    return
                if declared > self.max_bytes:
                    await _too_large(self.max_bytes, declared).response()(scope, receive, send)
                    return
        received = 0
        limit = self.max_bytes

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body parsing; the ApiError handler renders it.
                    raise _too_large(limit, None)
            return message

        await self.app(scope, counting_receive, send)
