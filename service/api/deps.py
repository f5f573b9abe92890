"""Typed dependencies of the routes: the runtime, readiness and API-key authorisation.

Authorisation: keys travel in the ``X-API-Key`` header. Read routes accept a read key or a write
key; write routes need a write key. No key (or an unknown one) -> 401, a read key on a write
route -> 403. Every configured key is compared with ``hmac.compare_digest`` and the loop never
stops early, so the time taken does not tell which key (or how much of one) matched. With
``SASREID_AUTH=off`` every request is allowed.
"""

from __future__ import annotations

import hmac
from enum import Enum
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.core.errors import ApiError
from service.runtime import Runtime

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="read key (query, get, list, stats) or write key (everything, including enroll and delete)",
)


class Access(Enum):
    NONE = 0
    READ = 1
    WRITE = 2


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "not_ready", "the service is starting: the model is not loaded yet")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_ready_runtime(runtime: RuntimeDep) -> Runtime:
    if not runtime.ready:
        if runtime.phase == "failed":
            raise ApiError(503, "not_ready", f"the service failed to start: {runtime.error}")
        raise ApiError(503, "not_ready", "the service is starting: the gallery index is being restored")
    return runtime


ReadyRuntime = Annotated[Runtime, Depends(get_ready_runtime)]


def _matches(candidate: bytes, keys: list[bytes]) -> bool:
    found = False
    for key in keys:
        # No short-circuit: every key is compared whatever the outcome.
        found |= hmac.compare_digest(candidate, key)
    return found


def access_of(runtime: Runtime, presented: str | None) -> Access:
    settings = runtime.settings
    if not settings.auth:
        return Access.WRITE
    if not presented:
        return Access.NONE
    candidate = presented.encode()
    is_write = _matches(candidate, settings.write_key_values())
    is_read = _matches(candidate, settings.read_key_values())
    if is_write:
        return Access.WRITE
    return Access.READ if is_read else Access.NONE


_UNAUTHENTICATED = {"WWW-Authenticate": "ApiKey"}


def require_read(runtime: RuntimeDep, key: Annotated[str | None, Security(_api_key)]) -> Access:
    access = access_of(runtime, key)
    if access is Access.NONE:
        raise _unauthorized(key)
    return access


def require_write(runtime: RuntimeDep, key: Annotated[str | None, Security(_api_key)]) -> Access:
    access = access_of(runtime, key)
    if access is Access.NONE:
        raise _unauthorized(key)
    if access is not Access.WRITE:
        raise ApiError(403, "forbidden", "this route changes the gallery and needs a write key; the key given is read-only")
    return access


def _unauthorized(key: str | None) -> ApiError:
    if not key:
        return ApiError(401, "missing_api_key", f"send an API key in the {API_KEY_HEADER} header", headers=_UNAUTHENTICATED)
    return ApiError(401, "invalid_api_key", "the API key is not valid", headers=_UNAUTHENTICATED)


ReadAccess = Annotated[Access, Depends(require_read)]
WriteAccess = Annotated[Access, Depends(require_write)]
