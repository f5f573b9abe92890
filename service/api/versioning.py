"""Versioned paths: every API route under ``/v1``, today's unversioned paths as deprecated aliases.

``include_versioned(app, router)`` mounts a router twice: under ``API_PREFIX`` and, for routes that
existed before versioning, once more at the root with ``deprecated=True`` (OpenAPI marks those
operations ``deprecated: true``). Routes added since (``v1_only``) exist under ``/v1`` alone. Probes
(``/healthz``, ``/readyz``, ``/metrics``), the docs and the web console (``/ui``) stay unversioned:
orchestrators, Prometheus and browsers address them by fixed paths that do not change with the API.

``DeprecationHeaders`` tells clients at run time too: every answer of a deprecated alias, errors
included, carries ``Deprecation`` (RFC 9745: the date the alias was deprecated, as ``@unix-seconds``)
and ``Link: </v1/...>; rel="successor-version"`` naming the path to call instead.

``served_route``: the route a request path and method reach, with its full path template. Needed
because a router included twice is one set of route objects: since FastAPI 0.16x, ``scope["route"]``
is the router's own route (``/tracklets/{tracklet_id}``, neither prefixed nor marked deprecated),
the same object under ``/v1`` and at the root. The table is FastAPI's public ``iter_route_contexts``
(what the OpenAPI document is built from), built once per app.
"""

from __future__ import annotations

import re
from calendar import timegm
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_VERSION = "1"
API_PREFIX = f"/v{API_VERSION}"
# 2026-12-03: the release that introduced /v1.
DEPRECATED_SINCE = timegm((2026, 12, 3, 0, 0, 0))
DEPRECATION_HEADER = f"@{DEPRECATED_SINCE}"


def include_versioned(app: FastAPI, router: APIRouter, *, v1_only: bool = False) -> None:
    """Mount ``router`` under ``/v1`` and, unless ``v1_only``, as deprecated unversioned aliases."""
    app.include_router(router, prefix=API_PREFIX)
    if not v1_only:
        app.include_router(router, deprecated=True)


@dataclass(frozen=True)
class ServedRoute:
    path: str  # the full template, e.g. /v1/tracklets/{tracklet_id}
    regex: re.Pattern[str]
    methods: frozenset[str]
    deprecated: bool


def served_routes(app: Any) -> list[ServedRoute]:
    """Every route of ``app`` with its full path (cached: routes are fixed once the app serves)."""
    cached = getattr(app.state, "served_routes", None)
    if cached is None:
        cached = []
        for route in iter_route_contexts(app.routes):
            regex, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
            if route.path is None or regex is None:
                continue
            cached.append(ServedRoute(route.path, regex, frozenset(methods or ()), bool(getattr(route, "deprecated", False))))
        app.state.served_routes = cached
    return cached


def served_route(app: Any, path: str, method: str) -> ServedRoute | None:
    """The route ``method path`` reaches: the first whose template and method match, else the first
    whose template matches (a 405)."""
    candidates = [r for r in served_routes(app) if r.regex.match(path)]
    for route in candidates:
        if not route.methods or method in route.methods:
            return route
    return candidates[0] if candidates else None


class DeprecationHeaders:
    """Adds ``Deprecation`` and a successor ``Link`` to the answers of deprecated routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and _deprecated(scope):
                successor = API_PREFIX + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
                headers = list(message.get("headers", []))
                headers.append((b"deprecation", DEPRECATION_HEADER.encode()))
                headers.append((b"link", f'<{successor}>; rel="successor-version"'.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _deprecated(scope: Scope) -> bool:
    if scope.get("route") is None:  # no route matched: a 404, nothing to succeed it
        return False
    route = served_route(scope["app"], scope["path"], scope["method"])
    return route is not None and route.deprecated
