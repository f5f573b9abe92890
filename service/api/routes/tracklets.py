"""``/tracklets``: enroll from frames, bulk-import descriptors, list (``/v1`` only), get and delete,
and thumbnails of kept frames."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from index.store import Record
from index.types import GalleryEntry, SearchFilter
from service import thumbnails
from service.api.deps import ReadAccess, ReadyRuntime, WriteAccess
from service.api.forms import (
    FRAMES_PROPERTY,
    check_frame_count,
    json_body,
    multipart_body,
    parse_fields,
    read_frames_form,
    read_json,
)
from service.api.openapi import form_properties
from service.core.errors import ApiError
from service.enrollment import (
    accept_existing,
    commit_batch,
    commit_record,
    delete_tracklet,
    frames_content_hash,
    records_from_batch,
)
from service.runtime import Runtime
from service.schemas import (
    MAX_CURSOR_LENGTH,
    MAX_PAGE,
    PATH_ID_PATTERN,
    SINCE_DESCRIPTION,
    UNTIL_DESCRIPTION,
    BatchRecordIn,
    BatchResult,
    EnrollFields,
    Identifier,
    Instant,
    Label,
    Platform,
    TrackletDeleted,
    TrackletOut,
    TrackletPage,
    error_responses,
)
from service.search import time_range
from service.thumbnails import thumbnail

router = APIRouter(prefix="/tracklets", tags=["tracklets"])
# Routes added with /v1: no unversioned alias (service.api.versioning).
v1_router = APIRouter(prefix="/tracklets", tags=["tracklets"])

_BATCH = TypeAdapter(list[BatchRecordIn])
_WRITE_ERRORS = error_responses(400, 401, 403, 409, 413, 415, 422, 503, 507)
_ENROLL_FORM = multipart_body(
    form_properties(
        EnrollFields,
        frames=FRAMES_PROPERTY,
        metadata={"type": "string", "description": "a JSON object's text, stored as given"},
    ),
    ["frames", "identity"],
)
TrackletPath = Annotated[str, Path(min_length=1, max_length=200, pattern=PATH_ID_PATTERN)]


def _not_found(tracklet_id: str) -> ApiError:
    return ApiError(404, "tracklet_not_found", f"no tracklet {tracklet_id!r} is stored", field="tracklet_id")


@router.post(
    "",
    status_code=201,
    response_model=TrackletOut,
    summary="Enroll a tracklet from its frames",
    responses={200: {"model": TrackletOut, "description": "already stored with the same content"}, **_WRITE_ERRORS},
    openapi_extra=_ENROLL_FORM,
)
async def enroll(request: Request, response: Response, _: WriteAccess, runtime: ReadyRuntime) -> TrackletOut:
    """Frames are embedded and stored; the answer comes after the store has the record (201).

    Idempotent on ``tracklet_id``: the same frames and fields again answer 200 with the stored
    record; different content under a stored id answers 409.
    """
    s = runtime.settings
    body = await read_frames_form(
        request,
        max_frames=s.max_frames_per_tracklet,
        max_frame_bytes=s.max_frame_bytes,
        max_field_bytes=s.max_metadata_bytes,
    )
    fields = parse_fields(EnrollFields, body.fields)
    check_frame_count(body.frames, s.max_frames_per_tracklet)
    data = [f.data for f in body.frames]
    content_hash = await run_in_threadpool(
        frames_content_hash, data, fields.identity, fields.camera, fields.platform, fields.session, fields.metadata
    )
    if fields.tracklet_id is not None:
        # Decided before decoding: a retried upload costs no embedding.
        stored = await run_in_threadpool(
            accept_existing, runtime, fields.tracklet_id, fields.identity, content_hash
        )
        if stored is not None:
            response.status_code = 200
            return TrackletOut.from_record(stored)
    model = runtime.model  # the fingerprint below must name the encoder that made the descriptor
    frames = await runtime.decode([(f.name, f.data) for f in body.frames], model)
    descriptor = await model.batcher.embed(frames)
    record = Record(
        tracklet_id=fields.tracklet_id or uuid.uuid4().hex,
        identity=fields.identity,
        num_frames=len(data),
        fingerprint=model.fingerprint,
        descriptor=descriptor,
        content_hash=content_hash,
        camera=fields.camera,
        platform=fields.platform,
        session=fields.session,
        metadata=fields.metadata,
    )
    result = await run_in_threadpool(commit_record, runtime, record, data if s.keep_frames else None)
    response.status_code = 201 if result.created else 200
    return TrackletOut.from_record(result.record)


@router.post(
    "/batch",
    response_model=BatchResult,
    status_code=201,
    summary="Bulk-import precomputed descriptors",
    responses={200: {"model": BatchResult, "description": "every record was already stored"}, **_WRITE_ERRORS},
    openapi_extra=json_body({"type": "array", "items": BatchRecordIn.model_json_schema()}),
)
async def import_batch(request: Request, response: Response, _: WriteAccess, runtime: ReadyRuntime) -> BatchResult:
    """A JSON array of records whose descriptors were computed offline with the served checkpoint.

    All-or-nothing: any bad record (wrong fingerprint or dimension, NaN, not unit-norm, an id stored
    with other content) rejects the whole request and nothing is stored. Send large imports in
    chunks (``sasreid.client`` sends a few thousand records per request) within
    ``max_request_bytes`` and ``max_batch_records``.
    """
    limit = runtime.settings.max_batch_records
    # Counted while streaming: an over-long array is refused before it is parsed at all.
    items = await read_json(request, _BATCH, max_items=limit)
    if not items:
        raise ApiError(422, "empty_batch", "the batch holds no records", field="records")
    if len(items) > limit:
        raise ApiError(
            413, "too_many_records", f"{len(items)} records; send at most {limit} per request", field="records"
        )
    records = await run_in_threadpool(records_from_batch, runtime, items)
    results = await run_in_threadpool(commit_batch, runtime, records)
    created = sum(1 for r in results if r.created)
    response.status_code = 201 if created else 200
    return BatchResult(created=created, existing=len(results) - created)


@router.get(
    "/{tracklet_id}",
    response_model=TrackletOut,
    summary="Get a stored tracklet",
    responses=error_responses(401, 404, 422, 503),
)
async def get_tracklet(tracklet_id: TrackletPath, _: ReadAccess, runtime: ReadyRuntime) -> TrackletOut:
    record = await run_in_threadpool(runtime.store.get, tracklet_id)
    if record is None:
        raise _not_found(tracklet_id)
    return TrackletOut.from_record(record)


@router.delete(
    "/{tracklet_id}",
    response_model=TrackletDeleted,
    summary="Delete a tracklet",
    responses=error_responses(401, 403, 404, 422, 503, 507),
)
async def remove_tracklet(tracklet_id: TrackletPath, _: WriteAccess, runtime: ReadyRuntime) -> TrackletDeleted:
    if not await run_in_threadpool(delete_tracklet, runtime, tracklet_id):
        raise _not_found(tracklet_id)
    return TrackletDeleted(tracklet_id=tracklet_id)


# A frame index is below max_frames_per_tracklet, whose own bound is 10 000.
MAX_FRAME_INDEX = 9_999


def _frames_not_kept(runtime: Runtime, tracklet_id: str) -> ApiError:
    if not runtime.settings.keep_frames:
        why = "this server does not keep frames (it was started without --keep-frames / SASREID_KEEP_FRAMES)"
    else:
        why = "it was enrolled while frames were not kept, or imported as a descriptor"
    return ApiError(404, "frames_not_kept", f"no frames of tracklet {tracklet_id!r} are stored: {why}", field="tracklet_id")


def _etag(record: Record, index: int, size: int) -> str:
    # The content hash changes with the frames (a tracklet id re-enrolled after a delete with other
    # frames gets another one), so a cached thumbnail is never shown for the wrong frames.
    return f'"{record.content_hash}-{index}-{size}"'


def _thumbnail(runtime: Runtime, tracklet_id: str, index: int, size: int) -> bytes:
    frames = runtime.store.get_frames(tracklet_id)
    if frames is None:
        if runtime.store.get(tracklet_id) is None:  # deleted since the record was read
            raise _not_found(tracklet_id)
        raise _frames_not_kept(runtime, tracklet_id)
    if index >= len(frames):
        raise ApiError(
            404,
            "frame_not_found",
            f"tracklet {tracklet_id!r} has {len(frames)} kept frames (indices 0 to {len(frames) - 1}); no frame {index}",
            field="index",
        )
    return thumbnail(frames[index], size, runtime.settings.max_pixels)


@router.get(
    "/{tracklet_id}/frames/{index}",
    response_class=Response,
    summary="A kept frame of a tracklet, resized (JPEG)",
    responses={
        200: {
            "content": {thumbnails.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            "description": "the frame as JPEG, its longer side at most `size` pixels (never enlarged)",
        },
        304: {"description": "unchanged since the ETag sent in If-None-Match"},
        **error_responses(401, 404, 422, 503),
    },
)
async def get_frame(
    tracklet_id: TrackletPath,
    index: Annotated[int, Path(ge=0, le=MAX_FRAME_INDEX, description="frame position in upload order, from 0")],
    _: ReadAccess,
    runtime: ReadyRuntime,
    size: Annotated[
        int,
        Query(ge=thumbnails.MIN_SIZE, le=thumbnails.MAX_SIZE, description="longest side of the thumbnail, pixels"),
    ] = thumbnails.DEFAULT_SIZE,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Frames are kept only by a server started with ``--keep-frames``; otherwise (or for a
    tracklet imported as a descriptor) the answer is 404 ``frames_not_kept``. Answers carry an
    ETag and ``Cache-Control: private, no-cache``: a client revalidates and gets 304 when the
    tracklet's content is unchanged."""
    record = await run_in_threadpool(runtime.store.get, tracklet_id)
    if record is None:
        raise _not_found(tracklet_id)
    etag = _etag(record, index, size)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if if_none_match is not None and etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    data = await runtime.decoding(_thumbnail, runtime, tracklet_id, index, size)
    return Response(data, media_type=thumbnails.MEDIA_TYPE, headers=headers)


# ---- listing (GET /v1/tracklets) ---------------------------------------------------------------
# Pages follow the store's int ids, which only grow and are never reused: a tracklet enrolled while
# a client pages sorts after every id that existed, so no page shifts, nothing is listed twice and
# nothing that existed when the listing began (and was not deleted) is skipped. The cursor is the
# last int id listed plus a digest of the filters, so it cannot be replayed with other filters.
_CURSOR_VERSION = 1


def _filters_digest(filt: SearchFilter, identity: str | None) -> str:
    key = json.dumps(
        [filt.platform, filt.camera, filt.session, identity, filt.created_from, filt.created_to], separators=(",", ":")
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def encode_cursor(after: int, digest: str) -> str:
    raw = json.dumps({"v": _CURSOR_VERSION, "after": after, "f": digest}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _bad_cursor(why: str) -> ApiError:
    return ApiError(422, "invalid_cursor", f"cursor: {why}; pass a next_cursor exactly as returned", field="cursor")


def decode_cursor(cursor: str, digest: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_cursor("not a cursor this server made") from None
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
        raise _bad_cursor("not a cursor this server made")
    after = data.get("after")
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**63:
        raise _bad_cursor("not a cursor this server made")
    if data.get("f") != digest:
        raise _bad_cursor("it belongs to a listing with other filters (send the same filters on every page)")
    return after


def _page(
    runtime: Runtime, filt: SearchFilter, identity: str | None, after: int, limit: int
) -> tuple[list[Record], int | None]:
    """Records after int id ``after`` that pass the filters, at most ``limit``, and the int id the
    next page starts after (None on the last page).

    The filters are applied to the search index's metadata (in memory), then the page's records
    are read from the store, which holds the rest of each record; a tracklet deleted in between is
    left out of the page without moving the cursor."""
    gallery = runtime.gallery
    assert gallery is not None
    ids = gallery.int_ids()
    picked: list[GalleryEntry] = []
    more = False
    # One pass over at most the whole gallery, stopping at the first match past the page.
    for int_id in ids[int(np.searchsorted(ids, after, side="right")) :].tolist():
        entry = gallery.entry(int_id)
        if entry is None or (identity is not None and entry.identity != identity) or not filt.matches(entry):
            continue
        if len(picked) == limit:
            more = True
            break
        picked.append(entry)
    records = []
    for entry in picked:
        record = runtime.store.get(entry.tracklet_id)
        # Another int id: deleted and enrolled again since; listed later under its new id.
        if record is not None and record.int_id == entry.int_id:
            records.append(record)
    return records, (picked[-1].int_id if more else None)


@v1_router.get(
    "",
    response_model=TrackletPage,
    summary="List stored tracklets (cursor pages, oldest first, with filters)",
    responses=error_responses(401, 422, 503),
)
async def list_tracklets(
    _: ReadAccess,
    runtime: ReadyRuntime,
    platform: Annotated[Platform | None, Query(description="only tracklets from this platform")] = None,
    camera: Annotated[Label | None, Query(description="only tracklets from this camera")] = None,
    session: Annotated[Label | None, Query(description="only tracklets from this session")] = None,
    identity: Annotated[Identifier | None, Query(description="only tracklets of this identity")] = None,
    since: Annotated[Instant | None, Query(description=SINCE_DESCRIPTION.replace("gallery ", ""))] = None,
    until: Annotated[Instant | None, Query(description=UNTIL_DESCRIPTION.replace("gallery ", ""))] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="tracklets per page")] = 100,
    cursor: Annotated[
        str | None, Query(min_length=1, max_length=MAX_CURSOR_LENGTH, description="next_cursor of the previous page")
    ] = None,
) -> TrackletPage:
    """Tracklets in enrollment order, ``limit`` per page; ``next_cursor`` fetches the next page
    (null on the last). Paging is stable while others enroll: nothing is listed twice or skipped,
    and tracklets enrolled meanwhile come at the end. On a replica, another replica's writes are
    listed once it has applied them (``SASREID_SYNC_INTERVAL``)."""
    created_from, created_to = time_range(since, until)
    filt = SearchFilter(
        platform=platform, camera=camera, session=session, created_from=created_from, created_to=created_to
    )
    digest = _filters_digest(filt, identity)
    after = decode_cursor(cursor, digest) if cursor is not None else 0
    records, next_after = await run_in_threadpool(_page, runtime, filt, identity, after, limit)
    return TrackletPage(
        items=[TrackletOut.from_record(r) for r in records],
        next_cursor=encode_cursor(next_after, digest) if next_after is not None else None,
        limit=limit,
    )
