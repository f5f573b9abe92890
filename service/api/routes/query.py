"""``POST /query``: rank gallery identities for uploaded frames or an enrolled tracklet;
``POST /v1/query/batch``: several such queries in one call, one answer each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, ReadyRuntime
from service.api.forms import (
    FRAMES_PROPERTY,
    UploadedFrame,
    check_frame_count,
    media_type,
    parse_fields,
    read_frames_form,
    read_json,
)
from service.api.openapi import form_properties
from service.core.errors import ApiError, validation_error
from service.images import open_frame, plan_decode
from service.runtime import Runtime, ServingModel
from service.schemas import (
    MAX_QUERY_BATCH,
    BatchAnswer,
    BatchQueryItem,
    BatchQueryRequest,
    BatchQueryResponse,
    QueryByTracklet,
    QueryOptions,
    QueryResponse,
    Timings,
    error_responses,
)
from service.search import SearchOutcome, SearchPlan, plan_search, run_search

router = APIRouter(tags=["query"])
# Routes added with /v1: no unversioned alias (service.api.versioning).
v1_router = APIRouter(tags=["query"])

_BY_TRACKLET = TypeAdapter(QueryByTracklet)
_BATCH_JSON = TypeAdapter(BatchQueryRequest)
_BATCH_ITEMS = TypeAdapter(list[BatchQueryItem])
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
_ITEM_SCHEMA = BatchQueryItem.model_json_schema(by_alias=True)
_QUERIES_SCHEMA = {"type": "array", "items": _ITEM_SCHEMA, "minItems": 1, "maxItems": MAX_QUERY_BATCH}
_BATCH_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "queries": {**_QUERIES_SCHEMA, "items": QueryByTracklet.model_json_schema(by_alias=True)}
                    },
                    "required": ["queries"],
                    "additionalProperties": False,
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "queries": {
                            **_QUERIES_SCHEMA,
                            "description": "the queries, as one JSON array (sent as an application/json part)",
                        },
                        "frames": {
                            **FRAMES_PROPERTY,
                            "description": "the frames of every query that gives `frames`, query after query",
                        },
                    },
                    "required": ["queries"],
                    "additionalProperties": False,
                },
                # OpenAPI's default for an array property of a form is a JSON part; said explicitly.
                "encoding": {"queries": {"contentType": "application/json"}},
            },
        },
    }
}


def _enrolled(model: ServingModel, tracklet_id: str) -> tuple[np.ndarray, str | None] | None:
    """The indexed descriptor and camera of an enrolled tracklet (None when not indexed)."""
    gallery = model.gallery
    assert gallery is not None
    int_id = gallery.int_id_of(tracklet_id)
    entry = gallery.entry(int_id) if int_id is not None else None
    if int_id is None or entry is None:
        return None
    try:
        return gallery.vectors([int_id])[0], entry.camera
    except KeyError:  # deleted between the lookup and the read
        return None


def _not_enrolled(tracklet_id: str, field: str = "tracklet_id") -> ApiError:
    return ApiError(404, "tracklet_not_found", f"no tracklet {tracklet_id!r} is enrolled", field=field)


def _observe(runtime: Runtime, decode_ms: float | None, embed_ms: float | None, outcome: SearchOutcome) -> None:
    """Per-stage histograms: decode and embed only for uploaded frames, rerank only when it ran."""
    stages = {"search": outcome.search_ms}
    if decode_ms is not None and embed_ms is not None:
        stages.update(decode=decode_ms, embed=embed_ms)
    if outcome.reranked:
        stages["rerank"] = outcome.rerank_ms
    runtime.metrics.observe_query(stages)


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
    model = runtime.model  # one model for the whole request (a checkpoint switch swaps it)
    decode_ms: float | None = None
    embed_ms: float | None = None
    if media_type(request) == "application/json":
        by_id = await read_json(request, _BY_TRACKLET)
        enrolled = await run_in_threadpool(_enrolled, model, by_id.tracklet_id)
        if enrolled is None:
            raise _not_enrolled(by_id.tracklet_id)
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
        frames = await runtime.decode([(f.name, f.data) for f in body.frames], model)
        t1 = time.perf_counter()
        descriptor = await model.batcher.embed(frames)
        decode_ms, embed_ms = (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
    gallery = model.gallery
    assert gallery is not None
    outcome = await run_in_threadpool(run_search, gallery, s, descriptor, plan)
    _observe(runtime, decode_ms, embed_ms, outcome)
    return QueryResponse(
        results=outcome.results,
        reranked=outcome.reranked,
        timings_ms=Timings(
            decode=decode_ms or 0.0,
            embed=embed_ms or 0.0,
            search=outcome.search_ms,
            rerank=outcome.rerank_ms,
            total=(time.perf_counter() - start) * 1e3,
        ),
    )


# ---- batch -------------------------------------------------------------------------------------
@dataclass
class _Planned:
    """One validated query of a batch: its plan, and its descriptor source."""

    plan: SearchPlan
    tracklet_id: str | None = None
    descriptor: np.ndarray | None = None
    frames: list[UploadedFrame] | None = None
    decode_ms: float | None = None
    embed_ms: float | None = None


def _check_count(n: int) -> None:
    if n == 0:
        raise ApiError(422, "empty_batch", "the batch holds no queries", field="queries")
    if n > MAX_QUERY_BATCH:
        raise ApiError(
            413, "too_many_queries", f"{n} queries; send at most {MAX_QUERY_BATCH} per request", field="queries"
        )


def _parse_multipart_queries(fields: dict[str, str]) -> list[BatchQueryItem]:
    for key in fields:
        if key != "queries":
            raise ApiError(
                422, "invalid_request", f"unknown field {key!r}: options go inside each query of 'queries'", field=key
            )
    text = fields.get("queries")
    if text is None:
        raise ApiError(422, "invalid_request", "queries: field required (a JSON array of queries)", field="queries")
    try:
        return _BATCH_ITEMS.validate_json(text)
    except ValidationError as exc:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            raise ApiError(
                422, "invalid_json", f"queries is not valid JSON: {errors[0].get('msg')}", field="queries"
            ) from None
        raise validation_error([{**e, "loc": ("queries", *e.get("loc", ()))} for e in errors]) from None


def _check_batch_pixels(runtime: Runtime, model: ServingModel, planned: list[_Planned]) -> None:
    """The request's decoded pixels, all queries together, against ``max_request_pixels``: read
    from the headers before any pixel is decoded (each query's decode checks its own frames too)."""
    limits, size = runtime.frame_limits, model.encoder.input_spec.size
    total = 0
    for item in planned:
        for frame in item.frames or ():
            width, height = plan_decode(open_frame(frame.data, frame.name, limits), size)
            total += width * height
    if total > limits.max_request_pixels:
        raise ApiError(
            422,
            "too_many_pixels",
            f"the batch's frames would decode to {total} pixels; the limit is {limits.max_request_pixels} "
            "decoded pixels per request; send fewer queries per batch or smaller crops",
            field="frames",
        )


def _plan_batch(
    runtime: Runtime,
    model: ServingModel,
    items: Sequence[BatchQueryItem | QueryByTracklet],
    frames: list[UploadedFrame] | None,
) -> list[_Planned]:
    """Validate every query before any decoding or embedding (all-or-nothing, like bulk import);
    enrolled descriptors are read here, uploaded frames are cut into each query's tracklet."""
    s = runtime.settings
    planned: list[_Planned] = []
    taken = 0
    for i, item in enumerate(items):
        count = item.frames if isinstance(item, BatchQueryItem) else None
        if (item.tracklet_id is None) == (count is None):
            raise ApiError(
                422,
                "invalid_batch_query",
                f"queries[{i}]: give exactly one of tracklet_id and frames",
                field=f"queries[{i}].tracklet_id",
            )
        try:
            if item.tracklet_id is not None:
                enrolled = _enrolled(model, item.tracklet_id)
                if enrolled is None:
                    raise _not_enrolled(item.tracklet_id, field=f"queries[{i}].tracklet_id")
                descriptor, stored_camera = enrolled
                camera = item.query_camera if item.query_camera is not None else stored_camera
                plan = plan_search(item, s, camera, exclude_tracklet=item.tracklet_id)
                planned.append(_Planned(plan, tracklet_id=item.tracklet_id, descriptor=descriptor))
                continue
            assert count is not None and frames is not None  # frames counts come in multipart only
            if count > s.max_frames_per_tracklet:
                raise ApiError(
                    422,
                    "too_many_frames",
                    f"queries[{i}]: {count} frames; a tracklet may have at most {s.max_frames_per_tracklet}",
                    field=f"queries[{i}].frames",
                )
            mine = frames[taken : taken + count]
            if len(mine) < count:
                raise ApiError(
                    422,
                    "frame_count_mismatch",
                    f"queries[{i}]: asks for {count} frames but only {len(frames) - taken} uploaded frames are left",
                    field=f"queries[{i}].frames",
                )
            taken += count
            plan = plan_search(item, s, item.query_camera)
            planned.append(_Planned(plan, frames=mine))
        except ApiError as exc:
            if exc.field is not None and not exc.field.startswith("queries["):
                # An option's own check (top_k, rerank, time range): name the query it is in.
                raise ApiError(
                    exc.status, exc.error, f"queries[{i}]: {exc.message}", field=f"queries[{i}].{exc.field}"
                ) from None
            raise
    if frames is not None and taken != len(frames):
        raise ApiError(
            422,
            "frame_count_mismatch",
            f"{len(frames)} frames uploaded but the queries' frames counts add up to {taken}",
            field="frames",
        )
    return planned


async def _embed_uploads(runtime: Runtime, model: ServingModel, planned: list[_Planned]) -> None:
    """Decode the uploaded tracklets one after another (decode slots bound the memory) and embed
    each as soon as it is decoded: the micro-batcher stacks a batch's tracklets into shared
    model calls while the next ones decode."""

    async def embed(item: _Planned, frames: np.ndarray) -> None:
        t0 = time.perf_counter()
        item.descriptor = await model.batcher.embed(frames)
        item.embed_ms = (time.perf_counter() - t0) * 1e3

    tasks: list[asyncio.Task[None]] = []
    try:
        for item in planned:
            if item.frames is None:
                continue
            t0 = time.perf_counter()
            decoded = await runtime.decode([(f.name, f.data) for f in item.frames], model)
            item.decode_ms = (time.perf_counter() - t0) * 1e3
            tasks.append(asyncio.create_task(embed(item, decoded)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # a failed decode leaves no embedding running for a dead request
            task.cancel()


def _search_all(runtime: Runtime, model: ServingModel, planned: list[_Planned]) -> list[SearchOutcome]:
    gallery = model.gallery
    assert gallery is not None
    out = []
    for item in planned:
        assert item.descriptor is not None
        out.append(run_search(gallery, runtime.settings, item.descriptor, item.plan))
    return out


@v1_router.post(
    "/query/batch",
    response_model=BatchQueryResponse,
    summary="Rank gallery identities for several query tracklets in one call",
    responses=_ERRORS,
    openapi_extra=_BATCH_OPENAPI,
)
async def query_batch(request: Request, _: ReadAccess, runtime: ReadyRuntime) -> BatchQueryResponse:
    """Up to 32 queries, one answer each in the same order. JSON ``{"queries": [...]}`` for
    enrolled ``tracklet_id`` queries; multipart for uploads: a ``queries`` part with the JSON array,
    where a query gives ``frames: N`` to take the next N uploaded ``frames`` files, and the files in
    query order. Every query has its own options (those of ``POST /v1/query``). All-or-nothing:
    every query is checked before any is run, and a bad one answers 4xx naming ``queries[i]``."""
    start = time.perf_counter()
    s = runtime.settings
    frames: list[UploadedFrame] | None = None
    items: Sequence[BatchQueryItem | QueryByTracklet]
    if media_type(request) == "application/json":
        items = (await read_json(request, _BATCH_JSON)).queries
    else:
        body = await read_frames_form(
            request,
            max_frames=MAX_QUERY_BATCH * s.max_frames_per_tracklet,
            max_frame_bytes=s.max_frame_bytes,
            # The queries part holds up to 32 queries' options.
            max_field_bytes=s.max_metadata_bytes,
        )
        items = _parse_multipart_queries(body.fields)
        frames = body.frames
    _check_count(len(items))
    model = runtime.model  # one model for the whole request (a checkpoint switch swaps it)
    planned = await run_in_threadpool(_plan_batch, runtime, model, items, frames)
    if frames:
        await run_in_threadpool(_check_batch_pixels, runtime, model, planned)
        await _embed_uploads(runtime, model, planned)
    outcomes = await run_in_threadpool(_search_all, runtime, model, planned)
    answers = []
    for item, outcome in zip(planned, outcomes, strict=True):
        _observe(runtime, item.decode_ms, item.embed_ms, outcome)
        decode_ms, embed_ms = item.decode_ms or 0.0, item.embed_ms or 0.0
        answers.append(
            BatchAnswer(
                tracklet_id=item.tracklet_id,
                results=outcome.results,
                reranked=outcome.reranked,
                timings_ms=Timings(
                    decode=decode_ms,
                    embed=embed_ms,
                    search=outcome.search_ms,
                    rerank=outcome.rerank_ms,
                    total=decode_ms + embed_ms + outcome.search_ms + outcome.rerank_ms,
                ),
            )
        )
    return BatchQueryResponse(answers=answers, total_ms=(time.perf_counter() - start) * 1e3)
