"""A small synchronous client of the retrieval API (used by ``sasreid enroll/query``, tests, bench).

Every non-2xx answer raises ``ApiClientError`` carrying the status and the API's error code and
message; connection problems raise ``httpx`` errors unchanged. API routes are called under ``/v1``
(``API_PREFIX``); the probes ``/healthz`` and ``/readyz`` are unversioned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FrameInput = Path | str | bytes | tuple[str, bytes]
# Bulk imports are cut into requests of at most this many records and bytes (the server's
# defaults accept 20,000 records and 64 MB).
DEFAULT_BATCH_RECORDS = 5000
DEFAULT_BATCH_BYTES = 16 * 1024 * 1024

API_PREFIX = "/v1"
# A listing stops after this many pages (at most 1000 tracklets each): far beyond any gallery, so
# only a server that kept answering with a next_cursor would reach it.
MAX_LIST_PAGES = 1_000_000

_MIME = {b"\xff\xd8\xff": "image/jpeg", b"\x89PN": "image/png", b"RIF": "image/webp"}


class ApiClientError(Exception):
    def __init__(self, status: int, error: str, message: str, detail: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.detail = dict(detail or {})


@dataclass(frozen=True)
class EnrollResult:
    created: bool
    record: dict[str, Any]


@dataclass(frozen=True)
class BatchTotals:
    created: int = 0
    existing: int = 0
    requests: int = 0


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict):
        raise ApiClientError(response.status_code, str(detail.get("error")), str(detail.get("message")), detail)
    raise ApiClientError(response.status_code, "http_error", response.text[:500])


def _frame_part(i: int, frame: FrameInput) -> tuple[str, tuple[str, bytes, str]]:
    if isinstance(frame, tuple):
        name, data = frame
    elif isinstance(frame, bytes):
        name, data = f"frame{i:04d}", frame
    else:
        path = Path(frame)
        name, data = path.name, path.read_bytes()
    return "frames", (name, data, _MIME.get(data[:3], "application/octet-stream"))


def _form(values: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, dict):
            out[key] = json.dumps(value)
        else:
            out[key] = str(value)
    return out


class SasreidClient:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> SasreidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An API route: ``path`` is relative to the API version (``/tracklets`` -> ``/v1/tracklets``)."""
        response = self._http.request(method, API_PREFIX + path, **kwargs)
        _raise_for(response)
        return response

    # ---- service -----------------------------------------------------------------------------
    def healthz(self) -> bool:
        return self._http.get("/healthz").is_success

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._http.base_url} not ready after {timeout}s")
            time.sleep(interval)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats").json()

    # ---- tracklets ---------------------------------------------------------------------------
    def enroll(
        self,
        frames: Sequence[FrameInput],
        identity: str,
        tracklet_id: str | None = None,
        camera: str | None = None,
        platform: str | None = None,
        session: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> EnrollResult:
        data = _form(
            {
                "identity": identity,
                "tracklet_id": tracklet_id,
                "camera": camera,
                "platform": platform,
                "session": session,
                "metadata": dict(metadata) if metadata else None,
            }
        )
        files = [_frame_part(i, f) for i, f in enumerate(frames)]
        response = self._call("POST", "/tracklets", data=data, files=files)
        return EnrollResult(created=response.status_code == 201, record=response.json())

    def import_batch(
        self,
        records: Iterable[Mapping[str, Any]],
        max_records: int = DEFAULT_BATCH_RECORDS,
        max_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> BatchTotals:
        """POST /tracklets/batch in chunks; each chunk is all-or-nothing on the server."""
        created = existing = requests = 0
        parts: list[bytes] = []
        size = 2

        def flush() -> None:
            nonlocal created, existing, requests, parts, size
            if not parts:
                return
            body = b"[" + b",".join(parts) + b"]"
            out = self._call(
                "POST", "/tracklets/batch", content=body, headers={"Content-Type": "application/json"}
            ).json()
            created += int(out["created"])
            existing += int(out["existing"])
            requests += 1
            parts, size = [], 2

        for record in records:
            item = dict(record)
            descriptor = item.get("descriptor")
            if descriptor is not None and not isinstance(descriptor, list):
                item["descriptor"] = [float(v) for v in descriptor]
            encoded = json.dumps(item, separators=(",", ":")).encode()
            if parts and (len(parts) >= max_records or size + len(encoded) + 1 > max_bytes):
                flush()
            parts.append(encoded)
            size += len(encoded) + 1
        flush()
        return BatchTotals(created=created, existing=existing, requests=requests)

    # ---- jobs --------------------------------------------------------------------------------
    def start_import_job(self, source: str) -> dict[str, Any]:
        """``POST /v1/jobs``: import the JSON-lines file ``source`` (relative to the server's
        ``--import-dir``) in the background; returns the job (``id``, ``state``, ``progress``)."""
        return self._call("POST", "/jobs", json={"kind": "import", "params": {"source": source}}).json()

    def start_reembed_job(self, model: str) -> dict[str, Any]:
        """``POST /v1/jobs``: re-embed the gallery with ``model`` (a name in the server's
        ``--model-dir``) and switch the servers to it live; returns the job."""
        return self._call("POST", "/jobs", json={"kind": "reembed", "params": {"model": model}}).json()

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{_quote(job_id)}").json()

    def wait_job(self, job_id: str, timeout: float = 3600.0, interval: float = 0.5) -> dict[str, Any]:
        """Poll ``GET /v1/jobs/{id}`` until the job succeeded or failed (``TimeoutError`` after
        ``timeout`` seconds); returns the finished job."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job["state"] in ("succeeded", "failed"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout}s: {job['progress']}")
            time.sleep(interval)

    def get_tracklet(self, tracklet_id: str) -> dict[str, Any]:
        return self._call("GET", f"/tracklets/{_quote(tracklet_id)}").json()

    def delete_tracklet(self, tracklet_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/tracklets/{_quote(tracklet_id)}").json()

    def list_tracklets(self, limit: int = 100, cursor: str | None = None, **filters: Any) -> dict[str, Any]:
        """One page of ``GET /v1/tracklets``; ``filters``: ``platform``, ``camera``, ``session``,
        ``identity``, ``since``, ``until`` (unix seconds or RFC 3339 text)."""
        params = {k: v for k, v in {**filters, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self._call("GET", "/tracklets", params=params).json()

    def iter_tracklets(self, page_size: int = 1000, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every tracklet that passes ``filters``, page after page, in enrollment order."""
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = self.list_tracklets(limit=page_size, cursor=cursor, **filters)
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return
        raise RuntimeError(f"the listing did not end after {MAX_LIST_PAGES} pages")

    # ---- identities --------------------------------------------------------------------------
    def list_identities(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return self._call("GET", "/identities", params={"offset": offset, "limit": limit}).json()

    def get_identity(self, identity: str) -> dict[str, Any]:
        return self._call("GET", f"/identities/{_quote(identity)}").json()

    def delete_identity(self, identity: str) -> dict[str, Any]:
        return self._call("DELETE", f"/identities/{_quote(identity)}").json()

    # ---- query -------------------------------------------------------------------------------
    def query(
        self,
        frames: Sequence[FrameInput] | None = None,
        tracklet_id: str | None = None,
        top_k: int = 10,
        rerank: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """Query with uploaded ``frames`` or an enrolled ``tracklet_id``; ``options`` are the other
        query fields (``platform``, ``camera``, ``query_camera``, ``exclude_same_camera``, ``k1``,
        ``k2``, ``lambda``, ``aggregate``)."""
        if (frames is None) == (tracklet_id is None):
            raise ValueError("pass exactly one of frames and tracklet_id")
        fields: dict[str, Any] = {"top_k": top_k, "rerank": rerank, **options}
        if tracklet_id is not None:
            payload = {k: v for k, v in fields.items() if v is not None}
            payload["tracklet_id"] = tracklet_id
            return self._call("POST", "/query", json=payload).json()
        assert frames is not None
        files = [_frame_part(i, f) for i, f in enumerate(frames)]
        return self._call("POST", "/query", data=_form(fields), files=files).json()

    def query_batch(self, queries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Several queries in one ``POST /v1/query/batch``; returns one answer per query, in order.

        Each query is a mapping of query options with either ``tracklet_id`` or ``frames`` (a
        sequence of frames, as for ``query``). With any ``frames`` the batch is sent as multipart."""
        items: list[dict[str, Any]] = []
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        for query in queries:
            item = {k: v for k, v in query.items() if v is not None}
            frames = item.pop("frames", None)
            if frames is not None:
                item["frames"] = len(frames)
                files += [_frame_part(len(files) + i, f) for i, f in enumerate(frames)]
            items.append(item)
        if not files:
            response = self._call("POST", "/query/batch", json={"queries": items})
        else:
            part = ("queries", (None, json.dumps(items).encode(), "application/json"))
            response = self._call("POST", "/query/batch", files=[part, *files])  # type: ignore[list-item]
        return list(response.json()["answers"])


def _quote(value: str) -> str:
    """One URL path segment for an id: every reserved character percent-encoded.

    "." and ".." cannot be sent at all: URL libraries (httpx included) resolve them as dot
    segments, so the request would reach another route. The server refuses such ids (422).
    """
    from urllib.parse import quote

    if value in (".", ".."):
        raise ValueError(f"id {value!r} is a dot segment and cannot appear in a URL path")
    return quote(value, safe="")

