"""Request and response bodies of the API (pydantic models; they also make the OpenAPI docs)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from index.store import Job, Record


# Ids appear in URL paths (GET /tracklets/{id}) and must come back unchanged through any URL
# library: no slash or backslash (WHATWG parsers, so browsers and many proxies, read "\\" as "/"),
# no control characters, no surrounding whitespace, and not the dot segments "." or "..", which
# clients remove from a path before sending it. Written without look-ahead so the OpenAPI pattern
# is the same regex in every language: one char (not a dot), two chars (not both dots), or more.
def _id_pattern(forbidden: str, edge_forbidden: str) -> str:
    any_ = f"[^{forbidden}]"
    edge = f"[^{forbidden}{edge_forbidden}]"
    edge_not_dot = f"[^.{forbidden}{edge_forbidden}]"
    return rf"^(?:{edge_not_dot}|{edge_not_dot}{edge}|\.{edge_not_dot}|{edge}{any_}+{edge})$"


# Whitespace spelled out rather than ``\s``: Python's ``\s`` also matches U+0085 and ECMAScript's
# (the dialect of an OpenAPI ``pattern``) U+FEFF, so a schema-generated id could start with U+0085
# and be refused. This class is the union of both, so every reader of the schema agrees.
_WHITESPACE = r"\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_ID_PATTERN = _id_pattern(r"/\\\x00-\x1f\x7f", _WHITESPACE)
# Ids in a URL path: anything but a slash or a dot segment. Looser than ``Identifier`` on purpose,
# so a tracklet stored before the rules tightened can still be read and deleted (unknown ids 404).
PATH_ID_PATTERN = _id_pattern("/", "")
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_ID_PATTERN)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_ID_PATTERN)]
Platform = Literal["aerial", "ground"]

# Upper bounds of the integers the API takes. Without them a number beyond int64 reached the
# store (SQLite OverflowError, Redis "value is not an integer or out of range") as a 500.
MAX_OFFSET = 1_000_000_000  # far beyond any gallery; offset + limit stays inside int64
MAX_TOP_K = 10_000  # the schema's bound; settings.max_top_k (<= this) is the served one
MAX_RERANK_K = 1000  # k1, k2 and the neighbour graph's k
MAX_NUM_FRAMES = 1_000_000
MAX_PAGE = 1000  # items per page of a listing
MAX_QUERY_BATCH = 32  # queries per POST /v1/query/batch
MAX_CURSOR_LENGTH = 200
# Time filters: unix seconds, or RFC 3339 text with an offset, of a time in years 1 to 9999.
_DAY = 86_400.0
MIN_UNIX_TIME = -62_135_596_800.0 - _DAY  # 0001-01-01T00:00:00 at the largest offset
MAX_UNIX_TIME = 253_402_300_799.0 + _DAY  # 9999-12-31T23:59:59 at the smallest offset


def _parse_instant(value: object) -> object:
    """Unix seconds (a number, or its text as a form field sends it) or an RFC 3339 time -> unix
    seconds. One validator instead of a ``float | datetime`` union, whose errors name the union's
    branches and whose datetime branch reads large numbers as milliseconds."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("must be unix seconds or an RFC 3339 time such as 2026-12-01T00:00:00Z") from None
    else:
        return value
    if when.tzinfo is None:
        # Read in the server's zone, which clients do not know: refused rather than guessed.
        raise ValueError("an RFC 3339 time needs an offset (Z or +01:00)")
    return when.timestamp()


Instant = Annotated[
    float,
    BeforeValidator(_parse_instant),
    Field(ge=MIN_UNIX_TIME, le=MAX_UNIX_TIME, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": MIN_UNIX_TIME, "maximum": MAX_UNIX_TIME},
                {"type": "string", "format": "date-time"},
            ]
        }
    ),
]
SINCE_DESCRIPTION = (
    "only gallery tracklets enrolled at or after this time: unix seconds, or an RFC 3339 time with "
    "an offset (2026-12-01T00:00:00Z)"
)
UNTIL_DESCRIPTION = "only gallery tracklets enrolled before this time (same forms as since)"


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"metadata must be plain JSON (no NaN or infinity): {exc}") from None
    return value


class ErrorDetail(BaseModel):
    error: str = Field(description="machine-readable error code")
    message: str = Field(description="what was wrong, for people")
    field: str | None = Field(None, description="the request field at fault, when one is")
    file: str | None = Field(None, description="the uploaded file at fault, when one is")


class ErrorBody(BaseModel):
    detail: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: each status it can answer with the error shape."""
    return {code: {"model": ErrorBody} for code in codes}


# ---- tracklets ---------------------------------------------------------------------------------
class EnrollFields(BaseModel):
    """The non-file fields of ``POST /tracklets`` (multipart form)."""

    model_config = ConfigDict(extra="forbid")

    identity: Identifier
    tracklet_id: Identifier | None = None
    camera: Label | None = None
    platform: Platform | None = None
    session: Label | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata", mode="before")
    @classmethod
    def _parse_metadata(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"metadata must be a JSON object string: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"metadata must be a JSON object, got {type(parsed).__name__}")
            return parsed
        return value

    @field_validator("metadata")
    @classmethod
    def _plain_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(value)


class TrackletOut(BaseModel):
    """A stored tracklet (its descriptor is never returned)."""

    tracklet_id: str
    identity: str
    camera: str | None
    platform: Platform | None
    session: str | None
    num_frames: int
    metadata: dict[str, Any]
    created_at: float
    fingerprint: str
    content_hash: str

    @classmethod
    def from_record(cls, record: Record) -> TrackletOut:
        return cls(
            tracklet_id=record.tracklet_id,
            identity=record.identity,
            camera=record.camera,
            platform=record.platform,
            session=record.session,
            num_frames=record.num_frames,
            metadata=record.metadata,
            created_at=record.created_at,
            fingerprint=record.fingerprint,
            content_hash=record.content_hash,
        )


class BatchRecordIn(BaseModel):
    """One precomputed descriptor for ``POST /tracklets/batch``."""

    model_config = ConfigDict(extra="forbid")

    tracklet_id: Identifier
    identity: Identifier
    descriptor: list[float] = Field(description="L2-normalised descriptor made by the served checkpoint")
    fingerprint: str = Field(min_length=1, description="fingerprint of the checkpoint that made the descriptor")
    camera: Label | None = None
    platform: Platform | None = None
    session: Label | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    num_frames: int = Field(0, ge=0, le=MAX_NUM_FRAMES, description="frames the descriptor was computed from (informational)")

    @field_validator("metadata")
    @classmethod
    def _plain_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(value)


class TrackletPage(BaseModel):
    """A page of ``GET /v1/tracklets``, in enrollment order (oldest first)."""

    items: list[TrackletOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page (opaque: do not parse it)"
    )
    limit: int


class BatchResult(BaseModel):
    created: int = Field(description="records stored by this request")
    existing: int = Field(description="records that were already stored with the same content")


class TrackletDeleted(BaseModel):
    tracklet_id: str
    deleted: bool = True


# ---- identities --------------------------------------------------------------------------------
class IdentitySummary(BaseModel):
    identity: str
    tracklets: int


class IdentityPage(BaseModel):
    items: list[IdentitySummary]
    total: int
    offset: int
    limit: int


class IdentityOut(BaseModel):
    identity: str
    tracklets: list[TrackletOut]


class IdentityDeleted(BaseModel):
    identity: str
    deleted: list[str] = Field(description="ids of the removed tracklets")


# ---- query -------------------------------------------------------------------------------------
class QueryOptions(BaseModel):
    """Search options of ``POST /query`` (form fields with uploaded frames, or JSON with ``tracklet_id``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="identities to return (at most the server's max_top_k)")
    rerank: bool = Field(False, description="k-reciprocal re-ranking inside the candidate set")
    k1: int | None = Field(
        None, ge=1, le=MAX_RERANK_K, description="re-ranking k1 (default from settings; at most graph_k)"
    )
    k2: int | None = Field(
        None, ge=1, le=MAX_RERANK_K, description="re-ranking k2 (default from settings; at most graph_k + 1)"
    )
    lambda_value: float | None = Field(
        None, alias="lambda", ge=0.0, le=1.0, description="re-ranking lambda (default from settings)"
    )
    platform: Platform | None = Field(None, description="only gallery tracklets from this platform")
    camera: Label | None = Field(None, description="only gallery tracklets from this camera")
    session: Label | None = Field(None, description="only gallery tracklets from this session")
    since: Instant | None = Field(None, description=SINCE_DESCRIPTION)
    until: Instant | None = Field(None, description=UNTIL_DESCRIPTION)
    query_camera: Label | None = Field(
        None, description="camera of the query tracklet (a tracklet_id query defaults to the stored one)"
    )
    exclude_same_camera: bool = Field(
        False, description="drop gallery tracklets from the query's camera (needs query_camera)"
    )
    aggregate: Literal["max", "mean"] = Field("max", description="identity score from its tracklet scores")


class QueryByTracklet(QueryOptions):
    tracklet_id: Identifier = Field(description="an enrolled tracklet; it is excluded from its own results")


class BatchQueryItem(QueryOptions):
    """One query of ``POST /v1/query/batch``: an enrolled ``tracklet_id``, or (multipart only) the
    next ``frames`` uploaded files; and its own options."""

    tracklet_id: Identifier | None = Field(
        None, description="an enrolled tracklet (excluded from its own results); or give frames"
    )
    frames: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="multipart only: this query's tracklet is the next this-many uploaded `frames` files, "
        "in upload order (at most the server's max_frames_per_tracklet)",
    )


class BatchQueryRequest(BaseModel):
    """The JSON body of ``POST /v1/query/batch``: queries by ``tracklet_id`` (frames need multipart)."""

    model_config = ConfigDict(extra="forbid")

    # Length checked by the route (413 too_many_queries, 422 empty_batch), stated by the schema.
    queries: list[QueryByTracklet] = Field(json_schema_extra={"minItems": 1, "maxItems": MAX_QUERY_BATCH})


class TrackletScore(BaseModel):
    tracklet_id: str
    score: float
    camera: str | None
    platform: Platform | None


class IdentityResult(BaseModel):
    rank: int
    identity: str
    score: float
    tracklets: list[TrackletScore]


class Timings(BaseModel):
    decode: float = Field(description="validating and decoding uploaded frames, ms")
    embed: float = Field(description="waiting for and running the model, ms")
    search: float = Field(description="candidate search and identity aggregation, ms")
    rerank: float = Field(description="k-reciprocal re-ranking of the candidates, ms (0 when off)")
    total: float


class QueryResponse(BaseModel):
    results: list[IdentityResult]
    reranked: bool
    timings_ms: Timings


class BatchAnswer(QueryResponse):
    """The answer to one query of a batch (the same position as in ``queries``)."""

    tracklet_id: str | None = Field(description="the query's tracklet_id; null for uploaded frames")


class BatchQueryResponse(BaseModel):
    answers: list[BatchAnswer] = Field(description="one per query, in the order of `queries`")
    total_ms: float = Field(description="the whole request, server side")


# ---- service -----------------------------------------------------------------------------------
class Stats(BaseModel):
    tracklets: int = Field(description="tracklets in the store")
    identities: int = Field(description="identities in the store")
    indexed_tracklets: int = Field(description="tracklets in the search index (equals tracklets when in sync)")
    fingerprint: str
    backend: str
    device: str
    dim: int
    index: str
    store: str = Field(description="store URL (password redacted)")
    keep_frames: bool
    ready: bool
    max_frames_per_tracklet: int = Field(description="frames a tracklet upload may have")
    max_frame_bytes: int = Field(description="bytes a frame may have")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    tracklets: int | None = None


class JobIn(BaseModel):
    """A long job for ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=64, description="what to run: `import` (service.jobs)")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the kind's parameters; import: `source`, a JSON-lines file (one record of POST "
        "/v1/tracklets/batch per line) relative to the server's import directory",
    )


class JobOut(BaseModel):
    """A job and how far it got. ``state``: queued, running, succeeded or failed."""

    id: str
    kind: str
    state: str
    params: dict[str, Any]
    progress: dict[str, Any] = Field(
        description="import: offset / bytes_total (bytes read of the file), lines, records, created, existing"
    )
    error: dict[str, Any] | None = Field(description="why it failed: `error` (a stable code) and `message`")
    created_at: float = Field(description="seconds since the epoch, like a tracklet's created_at")
    updated_at: float

    @staticmethod
    def from_job(job: Job) -> JobOut:
        return JobOut(id=job.id, kind=job.kind, state=job.state, params=job.params, progress=job.progress,
                      error=job.error, created_at=job.created_at, updated_at=job.updated_at)


class JobPage(BaseModel):
    """The newest jobs, newest first."""

    items: list[JobOut]
