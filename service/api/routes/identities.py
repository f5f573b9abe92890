"""``/identities``: list (paged), get one with its tracklets, delete one with all its tracklets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, ReadyRuntime, WriteAccess
from service.core.errors import ApiError
from service.enrollment import delete_identity
from service.schemas import (
    MAX_OFFSET,
    PATH_ID_PATTERN,
    IdentityDeleted,
    IdentityOut,
    IdentityPage,
    IdentitySummary,
    TrackletOut,
    error_responses,
)

router = APIRouter(prefix="/identities", tags=["identities"])

IdentityPath = Annotated[str, Path(min_length=1, max_length=200, pattern=PATH_ID_PATTERN)]
MAX_PAGE = 1000


def _not_found(identity: str) -> ApiError:
    return ApiError(404, "identity_not_found", f"no tracklet of identity {identity!r} is stored", field="identity")


@router.get(
    "",
    response_model=IdentityPage,
    summary="List identities (paged, sorted by name)",
    responses=error_responses(401, 422, 503),
)
async def list_identities(
    _: ReadAccess,
    runtime: ReadyRuntime,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> IdentityPage:
    page, total = await run_in_threadpool(runtime.store.list_identities, offset, limit)
    return IdentityPage(
        items=[IdentitySummary(identity=name, tracklets=n) for name, n in page], total=total, offset=offset, limit=limit
    )


@router.get(
    "/{identity}",
    response_model=IdentityOut,
    summary="An identity and its tracklets",
    responses=error_responses(401, 404, 422, 503),
)
async def get_identity(identity: IdentityPath, _: ReadAccess, runtime: ReadyRuntime) -> IdentityOut:
    records = await run_in_threadpool(runtime.store.get_identity, identity)
    if not records:
        raise _not_found(identity)
    return IdentityOut(identity=identity, tracklets=[TrackletOut.from_record(r) for r in records])


@router.delete(
    "/{identity}",
    response_model=IdentityDeleted,
    summary="Delete an identity's tracklets",
    responses=error_responses(401, 403, 404, 422, 503, 507),
)
async def remove_identity(identity: IdentityPath, _: WriteAccess, runtime: ReadyRuntime) -> IdentityDeleted:
    deleted = await run_in_threadpool(delete_identity, runtime, identity)
    if not deleted:
        raise _not_found(identity)
    return IdentityDeleted(identity=identity, deleted=deleted)
