"""One error shape for every rejection, and the handlers that produce it.

Every 4xx/5xx answer of the API has the body::

    {"detail": {"error": "<machine-readable code>", "message": "<what was wrong>",
                "field": "<request field, when one is to blame>", "file": "<uploaded file name, when one is>"}}

``field`` and ``file`` are present only when they apply. Store errors are translated here so route
code never needs to know which backend is in use.

Every 503 carries ``Retry-After`` (``ApiError`` adds one when the raiser did not): a 503 is always
"try again later", and clients and proxies back off by that header rather than guessing.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from index.store import (
    DimensionMismatch,
    FingerprintMismatch,
    InvalidRecord,
    StoreBusy,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
    TrackletConflict,
    TrackletNotFound,
)
from service.api.versioning import served_routes

log = logging.getLogger(__name__)


# Seconds a client should wait before retrying a 503 whose raiser gave no better estimate.
RETRY_AFTER_S = 1


class ModelSwitchError(RuntimeError):
    """This server cannot switch to the checkpoint its store was re-embedded with (the message
    says why and what to do)."""


def model_switching(fingerprint: str | None) -> ApiError:
    """The answer while this server has not yet switched to the checkpoint the store now holds."""
    return ApiError(503, "model_switching",
                    f"the gallery was re-embedded with checkpoint {fingerprint}; this server is switching to it, "
                    "retry shortly", headers=_RETRY)


class ApiError(Exception):
    """An expected rejection: raised anywhere in request handling, rendered as the error shape."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        field: str | None = None,
        file: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.file = file
        if status == 503 and not any(k.lower() == "retry-after" for k in (headers or {})):
            headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.field is not None:
            detail["field"] = self.field
        if self.file is not None:
            detail["file"] = self.file
        return {"detail": detail}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_RETRY = {"Retry-After": "1"}


def from_store_error(exc: StoreError) -> ApiError:
    """The API answer for a store exception."""
    if isinstance(exc, TrackletNotFound):
        return ApiError(404, "tracklet_not_found", str(exc), field="tracklet_id")
    if isinstance(exc, TrackletConflict):
        return ApiError(409, "tracklet_conflict", str(exc), field="tracklet_id")
    if isinstance(exc, FingerprintMismatch):
        return ApiError(422, "fingerprint_mismatch", str(exc), field="fingerprint")
    if isinstance(exc, DimensionMismatch):
        return ApiError(422, "dimension_mismatch", str(exc), field="descriptor")
    if isinstance(exc, InvalidRecord):
        return ApiError(422, "invalid_record", str(exc))
    # Write failures of the store answer 507/503 with their own codes: the client can tell "no room"
    # (free space, then retry) from "try again later"; nothing of the failed write was stored.
    if isinstance(exc, StoreFull):
        return ApiError(507, "store_full", f"the gallery store has no room for this write: {exc}")
    if isinstance(exc, StoreReadOnly):
        return ApiError(503, "store_read_only", f"the gallery store refuses writes: {exc}", headers=_RETRY)
    if isinstance(exc, StoreBusy):
        return ApiError(503, "store_busy", f"the gallery store is locked by another writer: {exc}", headers=_RETRY)
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, "store_unavailable", f"the gallery store is unavailable: {exc}", headers=_RETRY)
    return ApiError(500, "store_error", f"gallery store error: {exc}")


def _location(loc: tuple[Any, ...]) -> str:
    # ("body", 3, "descriptor") -> "records[3].descriptor"; ("query", "limit") -> "limit"
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out = f"{out or 'records'}[{p}]"
        else:
            out = f"{out}.{p}" if out else str(p)
    return out or "body"


def validation_error(errors: list[Any], status: int = 422) -> ApiError:
    """A pydantic/FastAPI validation error list -> one ApiError naming the first bad field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _location(tuple(first.get("loc", ())))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return ApiError(status, "invalid_request", f"{field}: {first.get('msg', 'invalid')}{more}", field=field)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    api = from_store_error(exc)
    if api.status >= 500:
        log.error("store error: %s", exc)
    return api.response()


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(list(exc.errors())).response()


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path.

    Starlette's 405 names only the methods of the first route matching the path, but GET and
    DELETE of ``/tracklets/{id}`` are two routes: its ``Allow`` said ``GET`` alone.
    """
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in served_routes(request.app):
        if route.regex.match(path):
            methods |= route.methods
    return sorted(methods)


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
    return ApiError(exc.status_code, code, message, headers=headers).response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
