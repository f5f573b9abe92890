"""``POST /query``: rank gallery identities for uploaded frames or an enrolled tracklet."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, ReadyRuntime
from service.api.forms import (
    FRAMES_PROPERTY,
    check_frame_count,
    media_type,
    parse_fields,
    read_frames_form,
    read_json,
)
from service.api.openapi import form_properties
from service.core.errors import ApiError
from service.runtime import Runtime
from service.schemas import QueryByTracklet, QueryOptions, QueryResponse, Timings, error_responses
from service.search import plan_search, run_search

router = APIRouter(tags=["query"])

_BY_TRACKLET = TypeAdapter(QueryByTracklet)
_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 503)
_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": form_properties(QueryOptions, frames=FRAMES_PROPERTY),
                    "required": ["frames"],
                    "additionalProperties": False,
                }
            },
            "application/json": {"schema": QueryByTracklet.model_json_schema(by_alias=True)},
        },
    }
}


def _enrolled(runtime: Runtime, tracklet_id: str) -> tuple[np.ndarray, str | None] | None:
    """The indexed descriptor and camera of an enrolled tracklet (None when not indexed)."""
    gallery = runtime.gallery
    assert gallery is not None
    int_id = gallery.int_id_of(tracklet_id)
    entry = gallery.entry(int_id) if int_id is not None else None
    if int_id is None or entry is None:
        return None
    try:
        return gallery.vectors([int_id])[0], entry.camera
    except KeyError:  # deleted between the lookup and the read
        return None


@router.post(
    "/query",
    response_model=QueryResponse,
    summary="Rank gallery identities for a query tracklet",
    responses=_ERRORS,
    openapi_extra=_OPENAPI,
)
async def query(request: Request, _: ReadAccess, runtime: ReadyRuntime) -> QueryResponse:
    """Either a multipart form with ``frames`` files and option fields, or a JSON object with the
    ``tracklet_id`` of an enrolled tracklet (excluded from its own results) and the same options.
    """
    start = time.perf_counter()
    s = runtime.settings
    decode_ms = embed_ms = 0.0
    if media_type(request) == "application/json":
        by_id = await read_json(request, _BY_TRACKLET)
        enrolled = await run_in_threadpool(_enrolled, runtime, by_id.tracklet_id)
        if enrolled is None:
            raise ApiError(
                404, "tracklet_not_found", f"no tracklet {by_id.tracklet_id!r} is enrolled", field="tracklet_id"
            )
        descriptor, stored_camera = enrolled
        query_camera = by_id.query_camera if by_id.query_camera is not None else stored_camera
        plan = plan_search(by_id, s, query_camera, exclude_tracklet=by_id.tracklet_id)
    else:
        body = await read_frames_form(
            request,
            max_frames=s.max_frames_per_tracklet,
            max_frame_bytes=s.max_frame_bytes,
            max_field_bytes=s.max_metadata_bytes,
        )
        options = parse_fields(QueryOptions, body.fields)
        check_frame_count(body.frames, s.max_frames_per_tracklet)
        plan = plan_search(options, s, options.query_camera)
        t0 = time.perf_counter()
        frames = await runtime.decode([(f.name, f.data) for f in body.frames])
        t1 = time.perf_counter()
        descriptor = await runtime.batcher.embed(frames)
        decode_ms, embed_ms = (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
    gallery = runtime.gallery
    assert gallery is not None
    outcome = await run_in_threadpool(run_search, gallery, s, descriptor, plan)
    return QueryResponse(
        results=outcome.results,
        reranked=outcome.reranked,
        timings_ms=Timings(
            decode=decode_ms,
            embed=embed_ms,
            search=outcome.search_ms,
            rerank=outcome.rerank_ms,
            total=(time.perf_counter() - start) * 1e3,
        ),
    )
