"""Hostile input against the real app on both stores (issue 9): numbers out of range, ids that
cannot round-trip through a URL path, credentials in store URLs. Every answer must be a 4xx with
the API's error shape, never a 500 (which also resets the connection)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from service.client import SasreidClient
from service.runtime import redact_url

WRITE = {"X-API-Key": "test-write-key"}
READ = {"X-API-Key": "test-read-key"}
INT64_MAX = 2**63 - 1


@dataclass
class Live:
    kind: str
    url: str
    fingerprint: str
    dim: int


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def live(
    request: pytest.FixtureRequest,
    checkpoints: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
    module_thread_server: Callable[..., Any],
) -> Iterator[Live]:
    if request.param == "sqlite":
        store, prefix = f"sqlite:///{tmp_path_factory.mktemp('hard') / 'gallery.sqlite'}", "sasreid:"
    else:
        store, prefix = request.getfixturevalue("redis_server").url, f"test:{uuid.uuid4().hex}:"
    server = module_thread_server(make_settings(checkpoints.a, store, redis_prefix=prefix))
    with SasreidClient(server.url, api_key="test-write-key") as client:
        client.enroll(make_tracklet(21), "known", tracklet_id="known_1", camera="cam1")
        stats = client.stats()
    yield Live(request.param, server.url, stats["fingerprint"], stats["dim"])


def _record(live: Live, tid: str, **over: Any) -> dict[str, Any]:
    vec = np.random.default_rng(7).standard_normal(live.dim)
    rec = {"tracklet_id": tid, "identity": "imported", "descriptor": (vec / np.linalg.norm(vec)).tolist(),
           "fingerprint": live.fingerprint}
    rec.update(over)
    return rec


def _rejected(response: httpx.Response, status: int = 422, error: str | None = "invalid_request") -> dict[str, Any]:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    if error is not None:
        assert detail["error"] == error, detail
    return detail


# ---- 2. integers out of range --------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"offset": str(2**63)},  # SQLite: OverflowError binding the parameter
        {"offset": str(INT64_MAX)},  # Redis: offset + limit - 1 overflows the server's int64
        {"offset": "1e20"},
        {"offset": "100000000000000000000"},
        {"offset": "-1"},
        {"limit": str(2**63)},
        {"offset": "1", "limit": str(INT64_MAX)},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()),
)
def test_page_numbers_out_of_range_are_422(live: Live, params: dict[str, str]) -> None:
    _rejected(httpx.get(f"{live.url}/identities", params=params, headers=READ, timeout=30))
    # The connection-level state is intact: the next ordinary request works.
    assert httpx.get(f"{live.url}/identities", headers=READ, timeout=30).status_code == 200


@pytest.mark.parametrize(
    "options",
    [
        {"top_k": 2**63},
        {"top_k": 10**20},
        {"rerank": True, "k1": 2**63},
        {"rerank": True, "k1": 10, "k2": 2**63},
        {"rerank": True, "k1": 10, "k2": 10**6},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_query_numbers_out_of_range_are_422(live: Live, options: dict[str, Any]) -> None:
    body = {"tracklet_id": "known_1", **options}
    response = httpx.post(f"{live.url}/query", json=body, headers=READ, timeout=60)
    _rejected(response, error=None)
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
    files = [("frames", ("a.png", _png(), "image/png"))]
    _rejected(httpx.post(f"{live.url}/query", data=form, files=files, headers=READ, timeout=60), error=None)


def test_batch_numbers_out_of_range_are_422(live: Live) -> None:
    for value in (2**63, INT64_MAX, 10**20):
        response = httpx.post(
            f"{live.url}/tracklets/batch",
            content=json.dumps([_record(live, f"big_{value}", num_frames=value)]).encode(),
            headers={**WRITE, "Content-Type": "application/json"},
            timeout=60,
        )
        assert _rejected(response)["field"] == "records[0].num_frames"
        assert httpx.get(f"{live.url}/tracklets/big_{value}", headers=READ).status_code == 404


def test_integer_parameters_are_bounded_in_the_schema(live: Live) -> None:
    """Every integer the API takes has a maximum in /openapi.json, so clients see the limits."""
    schema = httpx.get(f"{live.url}/openapi.json").json()
    unbounded: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer" and "maximum" not in node and "inside_response" not in where:
                unbounded.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    for path, item in schema["paths"].items():
        for method, op in item.items():
            walk(op.get("parameters", []), f"{method} {path} parameters")
            walk(op.get("requestBody", {}), f"{method} {path} body")
    for name in ("QueryOptions", "QueryByTracklet", "BatchRecordIn", "EnrollFields"):
        if name in schema.get("components", {}).get("schemas", {}):
            walk(schema["components"]["schemas"][name], name)
    assert unbounded == []


def _png() -> bytes:
    from tests.service.conftest import image_bytes

    return image_bytes(5)


# ---- 4. ids that cannot round-trip through a URL path ----------------------------------------------
# "." and ".." are dot segments: every URL library removes them from a path before sending. A
# backslash is a path separator to WHATWG URL parsers (browsers, many proxies).
@pytest.mark.parametrize("bad_id", [".", "..", "a\\b", "\\"])
def test_ids_that_do_not_round_trip_are_refused(live: Live, bad_id: str) -> None:
    files = [("frames", ("a.png", _png(), "image/png"))]
    for field in ("tracklet_id", "identity"):
        data = {"identity": "someone", "tracklet_id": f"ok_{uuid.uuid4().hex[:6]}", field: bad_id}
        response = httpx.post(f"{live.url}/tracklets", data=data, files=files, headers=WRITE, timeout=60)
        assert _rejected(response)["field"] == field
    response = httpx.post(
        f"{live.url}/tracklets/batch",
        content=json.dumps([_record(live, bad_id)]).encode(),
        headers={**WRITE, "Content-Type": "application/json"},
        timeout=60,
    )
    assert _rejected(response)["field"] == "records[0].tracklet_id"


@pytest.mark.parametrize("odd_id", ["...", ".a", "a.b", "50% off", "%2e", "a+b c", "ü-ß", "x;y=z", "?x#y"])
def test_odd_but_valid_ids_round_trip_through_the_client(live: Live, odd_id: str) -> None:
    with SasreidClient(live.url, api_key="test-write-key") as client:
        tid = f"{odd_id}{uuid.uuid4().hex[:4]}" if odd_id != "..." else odd_id
        created = client.enroll([("a.png", _png())], odd_id, tracklet_id=tid)
        assert created.record["tracklet_id"] == tid
        assert client.get_tracklet(tid)["identity"] == odd_id
        assert [t["tracklet_id"] for t in client.get_identity(odd_id)["tracklets"]] == [tid]
        assert client.delete_identity(odd_id)["deleted"] == [tid]


def test_client_refuses_dot_segments_before_sending() -> None:
    with SasreidClient("http://127.0.0.1:9", api_key="k") as client:
        for bad in (".", ".."):
            with pytest.raises(ValueError, match="dot"):
                client.get_tracklet(bad)
            with pytest.raises(ValueError, match="dot"):
                client.delete_identity(bad)


# ---- 6. credentials in store URLs --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0?password=secret", "redis://h:6379/0?password=***"),
        ("redis://h:6379/0?db=1&password=secret&x=1", "redis://h:6379/0?db=1&password=***&x=1"),
        ("redis://h/0?PASSWORD=secret", "redis://h/0?PASSWORD=***"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://:pw@host", "redis://:***@host"),
        ("rediss://user:pw@host:6380/1", "rediss://user:***@host:6380/1"),
        ("redis://onlytoken@host/0", "redis://***@host/0"),
        ("redis://h:6379/0?username=u&password=a%26b", "redis://h:6379/0?username=u&password=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:///data/gallery.sqlite", "sqlite:///data/gallery.sqlite"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "secret" not in redact_url(url) and ":pw@" not in redact_url(url)


def test_stats_never_shows_a_query_password(
    redis_server_factory: Callable[..., Any],
    checkpoints: Any,
    make_settings: Callable[..., Any],
    thread_server: Callable[..., Any],
) -> None:
    """A real password-protected redis-server, the password given as ``?password=``."""
    import redis

    redis_srv = redis_server_factory(appendonly=False)
    redis.Redis.from_url(redis_srv.url).config_set("requirepass", "hunter2")
    url = f"{redis_srv.url}?password=hunter2"
    server = thread_server(make_settings(checkpoints.a, url))
    stats = httpx.get(f"{server.url}/stats", headers=READ, timeout=30)
    assert stats.status_code == 200, stats.text
    assert "hunter2" not in stats.text and stats.json()["store"].endswith("?password=***")


# ---- 1. decoded pixels per request ----------------------------------------------------------------
def test_decoded_pixels_per_request_are_capped_before_decoding(live: Live) -> None:
    """Nine 4000x4000 PNG headers (each within max_pixels) would decode to 144 Mpx, above the
    default 128 Mpx per request: refused from the headers alone (their pixel data is not even
    valid, so any decoding would have failed as corrupt_image instead)."""
    from tests.service.test_bad_inputs import png_header_only

    frames = [("frames", (f"{i}.png", png_header_only(4000, 4000), "image/png")) for i in range(9)]
    response = httpx.post(f"{live.url}/query", files=frames, headers=READ, timeout=60)
    assert _rejected(response, error="too_many_pixels")["field"] == "frames"
    # Eight of them fit the budget and reach decoding, which then finds them corrupt.
    response = httpx.post(f"{live.url}/query", files=frames[:8], headers=READ, timeout=60)
    _rejected(response, error="corrupt_image")


# ---- 8. bulk import: an over-long array is refused while it streams ---------------------------------
def test_over_long_batch_is_413_not_a_validation_error(live: Live) -> None:
    body = b"[" + b",".join([b"{}"] * 20_001) + b"]"  # default max_batch_records is 20,000
    response = httpx.post(f"{live.url}/tracklets/batch", content=body,
                          headers={**WRITE, "Content-Type": "application/json"}, timeout=60)
    assert _rejected(response, status=413, error="too_many_records")["field"] == "records"
    # At the limit the records are parsed (and these are invalid): one 422 naming the first.
    at_limit = b"[" + b",".join([b"{}"] * 20_000) + b"]"
    response = httpx.post(f"{live.url}/tracklets/batch", content=at_limit,
                          headers={**WRITE, "Content-Type": "application/json"}, timeout=60)
    _rejected(response, status=422, error="invalid_request")


def test_over_long_batch_is_refused_before_the_body_ends(live: Live) -> None:
    """The 413 comes while the client is still sending: the server stops reading at record 20,001."""
    import socket
    from urllib.parse import urlparse

    target = urlparse(live.url)
    records = b"[" + b",".join([b'{"s": "a,\\"],b"}'] * 20_001) + b","  # commas inside strings do not count
    with socket.create_connection((target.hostname, target.port), timeout=15) as sock:
        head = (
            "POST /tracklets/batch HTTP/1.1\r\nHost: x\r\nX-API-Key: test-write-key\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode() + f"{len(records):x}\r\n".encode() + records + b"\r\n")
        # ... and never the rest of the array nor the final chunk.
        answer = b""
        while b"\r\n\r\n" not in answer or b"too_many_records" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"too_many_records" in answer


def test_array_counter_matches_json_at_every_chunking() -> None:
    """Strings with commas, brackets, quotes and backslash runs, split at every chunk size."""
    import random

    from service.api.forms import ArrayCounter

    rng = random.Random(0)
    for _ in range(200):
        items: list[Any] = []
        for _ in range(rng.randint(0, 12)):
            text = "".join(rng.choice('ab,[]{}"\\\n') for _ in range(rng.randint(0, 8)))
            items.append(rng.choice([{"k": text, "v": [1, [2]]}, text, [text, {"x": text}], 1.5, {}]))
        body = json.dumps(items).encode()
        for size in (1, 2, 3, 7, 64, len(body)):
            counter = ArrayCounter()
            for start in range(0, len(body), size):
                counter.feed(body[start : start + size])
            assert (counter.separators, counter.depth, counter.in_string) == (max(len(items) - 1, 0), 0, False)
