"""The investigators' web console: ``GET /ui`` and its static assets under ``/ui/static/``.

Plain static files, no build step and no templates: ``index.html`` holds no data and no secret,
``console.js`` builds every page in the browser from the public API (``/v1/query``,
``/v1/identities``, ``/v1/tracklets``, ``/v1/stats``, the thumbnails of
``/v1/tracklets/{id}/frames/{i}``), exactly as any other client would. The API key the user
types is kept in the tab's ``sessionStorage`` and sent in the
``X-API-Key`` header; it never appears in a URL, so it is in no access log or browser history.

Safety: everything that comes from the gallery (identity names, tracklet ids, metadata) is put in
the page as text (``textContent``, never HTML), and every console response carries a
Content-Security-Policy that allows scripts and styles from this origin's files only (no inline
script, no ``eval``, no inline style), pictures from this origin and the ``blob:`` URLs the
console makes from thumbnails it fetched with the key, and no framing. Swagger UI at ``/docs``
keeps FastAPI's own headers (it loads inline scripts), so the policy is applied to ``/ui`` only.

``sasreid serve --no-ui`` (``SASREID_UI=off``) leaves the console out: ``/ui`` then answers 404
``not_found`` like any unknown path.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"
UI_PATH = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # blob: = thumbnails fetched with the key in a header, then shown from memory.
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        # Forms are handled by the script; none is ever submitted to a server by the browser.
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load, so an upgraded server never runs with an old cached script.
    "Cache-Control": "no-cache",
}


def _is_console(path: str) -> bool:
    return path == UI_PATH or path.startswith(UI_PATH + "/")


class ConsoleSecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every response under ``/ui`` (pages, assets and their 404s)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        self._names = {k for k, _ in self._headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_console(scope.get("path", "")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self._names]
                message = {**message, "headers": kept + self._headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


router = APIRouter(include_in_schema=False)


@router.get(UI_PATH)
@router.get(UI_PATH + "/")
async def console_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


def install_ui(app: FastAPI) -> None:
    """Serve the console on ``app`` (call it only when the console is on)."""
    app.include_router(router)
    app.mount(UI_PATH + "/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_middleware(ConsoleSecurityHeaders)
