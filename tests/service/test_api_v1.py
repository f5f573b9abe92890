"""The API conventions of issue 12 (items 6-9) on the real app under uvicorn with a real SQLite or
redis-server store: ``/v1`` paths and the deprecated unversioned aliases, the batch query, the
created-at time range on queries, ``GET /v1/tracklets`` with cursor pages, ``Retry-After`` on 503s
and the Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api.versioning import DEPRECATION_HEADER
from service.client import SasreidClient
from service.schemas import MAX_QUERY_BATCH

READ = {"X-API-Key": "test-read-key"}
WRITE = {"X-API-Key": "test-write-key"}
UNVERSIONED = {"/healthz", "/readyz", "/metrics"}


def _descriptor_records(fingerprint: str, dim: int, specs: list[tuple[str, str, str, str, str]], seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for tid, identity, camera, platform, session in specs:
        vec = rng.standard_normal(dim)
        out.append({"tracklet_id": tid, "identity": identity, "camera": camera, "platform": platform,
                    "session": session, "descriptor": (vec / np.linalg.norm(vec)).tolist(), "fingerprint": fingerprint})
    return out


class Live:
    """The module's server: three groups of imported descriptors enrolled apart in time, and two
    tracklets enrolled from frames."""

    def __init__(self, url: str, client: SasreidClient, groups: list[list[dict[str, Any]]], dim: int) -> None:
        self.url = url
        self.client = client
        self.groups = groups
        self.dim = dim


@pytest.fixture(scope="module")
def live(
    checkpoints: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
    module_thread_server: Callable[..., Any],
) -> Live:
    store = f"sqlite:///{tmp_path_factory.mktemp('v1') / 'gallery.sqlite'}"
    server = module_thread_server(make_settings(checkpoints.a, store, max_frames_per_tracklet=8))
    client = server.client()
    stats = client.stats()
    specs = [
        [("g0_a", "anna", "cam1", "ground", "s1"), ("g0_b", "ben", "cam2", "aerial", "s1")],
        [("g1_a", "anna", "cam2", "aerial", "s2"), ("g1_c", "cleo", "cam1", "ground", "s2")],
        [("g2_b", "ben", "cam1", "ground", "s3"), ("g2_d", "dan", "cam3", "aerial", "s3")],
    ]
    groups = []
    for n, group in enumerate(specs):
        records = _descriptor_records(stats["fingerprint"], stats["dim"], group, seed=n)
        client.import_batch(records)
        groups.append([client.get_tracklet(r["tracklet_id"]) for r in records])
        time.sleep(0.01)  # the groups' created_at ranges do not touch
    client.enroll(make_tracklet(1), "frank", tracklet_id="frank_1", camera="cam1", platform="ground", session="s4")
    client.enroll(make_tracklet(2), "gina", tracklet_id="gina_1", camera="cam2", platform="aerial", session="s4")
    return Live(server.url, client, groups, stats["dim"])


def _between(earlier: list[dict[str, Any]], later: list[dict[str, Any]], hours: int = 0) -> str:
    """RFC 3339 text (with an offset of ``hours``) of a time after one group's tracklets and
    before the next's."""
    middle = (max(t["created_at"] for t in earlier) + min(t["created_at"] for t in later)) / 2
    return datetime.fromtimestamp(middle, tz=timezone(timedelta(hours=hours))).isoformat()


def _ids(answer: dict[str, Any]) -> list[str]:
    return [t["tracklet_id"] for r in answer["results"] for t in r["tracklets"]]


# ---- item 6: versioned paths --------------------------------------------------------------------
def test_every_api_route_is_versioned_and_the_old_paths_are_deprecated_aliases(live: Live) -> None:
    doc = httpx.get(f"{live.url}/openapi.json").json()
    operations = {(method, path): op for path, item in doc["paths"].items() for method, op in item.items()}
    versioned = {(m, p) for m, p in operations if p.startswith("/v1/")}
    legacy = {(m, p) for m, p in operations if not p.startswith("/v1/") and p not in UNVERSIONED}
    assert {p for _, p in operations if p in UNVERSIONED} == UNVERSIONED
    assert all(not operations[(m, p)].get("deprecated") for m, p in versioned | {("get", u) for u in UNVERSIONED})
    # Every old path is a deprecated alias of a /v1 route; the routes added with /v1 have none.
    assert legacy and all(operations[op].get("deprecated") is True for op in legacy)
    new_with_v1 = {("get", "/v1/tracklets"), ("post", "/v1/query/batch"), ("post", "/v1/jobs"), ("get", "/v1/jobs"),
                   ("get", "/v1/jobs/{job_id}")}
    assert {(m, "/v1" + p) for m, p in legacy} == versioned - new_with_v1
    for probe in UNVERSIONED:
        assert httpx.get(f"{live.url}/v1{probe}").status_code == 404


def test_an_alias_answers_as_its_v1_route_with_deprecation_headers(live: Live) -> None:
    old = httpx.get(f"{live.url}/tracklets/g0_a", headers=READ)
    new = httpx.get(f"{live.url}/v1/tracklets/g0_a", headers=READ)
    assert old.status_code == new.status_code == 200 and old.json() == new.json()
    assert old.headers["deprecation"] == DEPRECATION_HEADER and DEPRECATION_HEADER.startswith("@")
    assert old.headers["link"] == '</v1/tracklets/g0_a>; rel="successor-version"'
    assert "deprecation" not in new.headers and "link" not in new.headers
    # Errors of an alias say so too; unknown paths, probes and the console do not.
    missing = httpx.get(f"{live.url}/identities/nobody", headers=READ)
    assert missing.status_code == 404 and missing.headers["deprecation"] == DEPRECATION_HEADER
    for path in ("/nothing", "/healthz", "/readyz", "/metrics", "/ui"):
        assert "deprecation" not in httpx.get(f"{live.url}{path}").headers, path
    # Routes new with /v1 have no unversioned form.
    assert httpx.post(f"{live.url}/query/batch", headers=READ, json={"queries": []}).status_code == 404
    assert httpx.get(f"{live.url}/tracklets", headers=READ).status_code == 405


def test_the_request_histogram_tells_aliases_from_v1_routes(live: Live) -> None:
    httpx.get(f"{live.url}/stats", headers=READ)
    httpx.get(f"{live.url}/v1/stats", headers=READ)
    text = httpx.get(f"{live.url}/metrics").text
    assert 'route="/stats"' in text and 'route="/v1/stats"' in text


# ---- item 8: time range on queries ----------------------------------------------------------------
def test_queries_filter_by_created_at_range(live: Live) -> None:
    _, g1, g2 = live.groups
    start_g1, start_g2 = g1[0]["created_at"], g2[0]["created_at"]
    everything = live.client.query(tracklet_id="frank_1", top_k=20)
    assert set(_ids(everything)) == {t["tracklet_id"] for g in live.groups for t in g} | {"gina_1"}
    # [since, until): since is inclusive, until exclusive.
    middle = live.client.query(tracklet_id="frank_1", top_k=20, since=start_g1, until=start_g2)
    assert set(_ids(middle)) == {"g1_a", "g1_c"}
    before = live.client.query(tracklet_id="frank_1", top_k=20, until=start_g1)
    assert set(_ids(before)) == {"g0_a", "g0_b"}
    # RFC 3339 with an offset: a time between groups 1 and 2 (RFC 3339 text has microseconds only).
    iso = _between(g1, g2)
    later = live.client.query(tracklet_id="frank_1", top_k=20, since=iso)
    assert set(_ids(later)) == {"g2_b", "g2_d", "gina_1"}
    # With the other filters, and the session filter.
    both = live.client.query(tracklet_id="frank_1", top_k=20, since=start_g1, platform="aerial", session="s2")
    assert _ids(both) == ["g1_a"]


def test_query_time_range_over_multipart(live: Live, make_tracklet: Callable[..., list[tuple[str, bytes]]]) -> None:
    start_g2 = live.groups[2][0]["created_at"]
    answer = live.client.query(frames=make_tracklet(1), top_k=20, since=start_g2)
    assert set(_ids(answer)) == {"g2_b", "g2_d", "frank_1", "gina_1"}


@pytest.mark.parametrize(
    ("options", "code", "field"),
    [
        ({"since": 20.0, "until": 10.0}, "invalid_time_range", "until"),
        ({"since": 10.0, "until": 10.0}, "invalid_time_range", "until"),
        ({"since": "2026-12-01T00:00:00"}, "invalid_request", "since"),  # no offset: ambiguous
        ({"until": 1e13}, "invalid_request", "until"),  # past year 9999, not read as milliseconds
        ({"since": "1e400"}, "invalid_request", "since"),
        ({"since": "yesterday"}, "invalid_request", "since"),
    ],
)
def test_bad_time_ranges_are_refused(live: Live, options: dict[str, Any], code: str, field: str) -> None:
    response = httpx.post(f"{live.url}/v1/query", headers=READ, json={"tracklet_id": "frank_1", **options})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["error"] == code and response.json()["detail"]["field"] == field
    listing = httpx.get(f"{live.url}/v1/tracklets", headers=READ, params=options)
    assert listing.status_code == 422 and listing.json()["detail"]["error"] == code


# ---- item 8: GET /v1/tracklets ----------------------------------------------------------------------
def test_listing_pages_in_enrollment_order_with_filters(live: Live) -> None:
    all_ids = [t["tracklet_id"] for g in live.groups for t in g] + ["frank_1", "gina_1"]
    assert [t["tracklet_id"] for t in live.client.iter_tracklets(page_size=3)] == all_ids
    first = live.client.list_tracklets(limit=3)
    assert [t["tracklet_id"] for t in first["items"]] == all_ids[:3] and first["limit"] == 3
    assert first["items"][0] == live.client.get_tracklet(all_ids[0])  # full records
    last = live.client.list_tracklets(limit=8)
    assert len(last["items"]) == 8 and last["next_cursor"] is None  # no empty trailing page
    g1 = live.groups[1]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"platform": "aerial"}, ["g0_b", "g1_a", "g2_d", "gina_1"]),
        ({"camera": "cam1"}, ["g0_a", "g1_c", "g2_b", "frank_1"]),
        ({"session": "s3"}, ["g2_b", "g2_d"]),
        ({"identity": "ben"}, ["g0_b", "g2_b"]),
        ({"since": g1[0]["created_at"], "until": live.groups[2][0]["created_at"]}, ["g1_a", "g1_c"]),
        ({"since": _between(live.groups[0], g1, hours=2), "camera": "cam1"}, ["g1_c", "g2_b", "frank_1"]),
        ({"identity": "nobody"}, []),
    ]
    for filters, expected in cases:
        assert [t["tracklet_id"] for t in live.client.iter_tracklets(page_size=1, **filters)] == expected, filters


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, sqlite_url: str) -> tuple[str, str]:
    """(store URL, redis key prefix) of an empty store of each kind."""
    if request.param == "sqlite":
        return sqlite_url, "sasreid:"
    return request.getfixturevalue("redis_server").url, request.getfixturevalue("redis_prefix")


def test_listing_is_stable_under_concurrent_writes(
    checkpoints: Any, store: tuple[str, str], make_settings: Callable[..., Any], thread_server: Callable[..., Any]
) -> None:
    server = thread_server(make_settings(checkpoints.a, store[0], redis_prefix=store[1]))
    client = server.client()
    stats = client.stats()
    specs = [(f"t{i:02d}", f"p{i % 3}", "cam1", "ground", "s") for i in range(10)]
    client.import_batch(_descriptor_records(stats["fingerprint"], stats["dim"], specs, seed=5))
    seen: list[str] = []
    page = client.list_tracklets(limit=4)
    seen += [t["tracklet_id"] for t in page["items"]]
    # Between pages: new tracklets, one deleted before the cursor and one after it.
    client.import_batch(_descriptor_records(stats["fingerprint"], stats["dim"],
                                            [("new_1", "p9", "cam1", "ground", "s")], seed=6))
    client.delete_tracklet("t01")  # already listed
    client.delete_tracklet("t06")  # not listed yet
    for _ in range(10):
        page = client.list_tracklets(limit=4, cursor=page["next_cursor"])
        seen += [t["tracklet_id"] for t in page["items"]]
        if page["next_cursor"] is None:
            break
    assert seen == ["t00", "t01", "t02", "t03", "t04", "t05", "t07", "t08", "t09", "new_1"]
    # A tracklet id deleted and enrolled again comes back under its new place, once.
    client.import_batch(_descriptor_records(stats["fingerprint"], stats["dim"],
                                            [("t06", "p0", "cam1", "ground", "s")], seed=7))
    assert [t["tracklet_id"] for t in client.iter_tracklets(page_size=2)][-2:] == ["new_1", "t06"]


def test_listing_refuses_bad_cursors_and_limits(live: Live) -> None:
    page = live.client.list_tracklets(limit=2, platform="aerial")
    cursor = page["next_cursor"]
    assert cursor is not None
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"cursor": cursor, "platform": "ground"}, "invalid_cursor", "cursor"),  # other filters
        ({"cursor": cursor}, "invalid_cursor", "cursor"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor", "cursor"),
        ({"cursor": "eyJ2IjoxLCJhZnRlciI6LTEsImYiOiIifQ"}, "invalid_cursor", "cursor"),  # {"after": -1}
        ({"cursor": "x" * 201}, "invalid_request", "cursor"),
        ({"limit": 0}, "invalid_request", "limit"),
        ({"limit": 1001}, "invalid_request", "limit"),
        ({"platform": "space"}, "invalid_request", "platform"),
    ]
    for params, code, field in cases:
        response = httpx.get(f"{live.url}/v1/tracklets", headers=READ, params=params)
        assert response.status_code == 422, (params, response.text)
        assert (response.json()["detail"]["error"], response.json()["detail"]["field"]) == (code, field), params
    assert httpx.get(f"{live.url}/v1/tracklets").status_code == 401
    same = httpx.get(f"{live.url}/v1/tracklets", headers=READ, params={"cursor": cursor, "platform": "aerial"})
    assert same.status_code == 200 and same.json()["items"]


# ---- item 7: batch queries --------------------------------------------------------------------------
def test_batch_by_tracklet_ids_equals_single_queries(live: Live) -> None:
    queries: list[dict[str, Any]] = [
        {"tracklet_id": "frank_1", "top_k": 3},
        {"tracklet_id": "g1_a", "top_k": 5, "platform": "ground"},
        {"tracklet_id": "gina_1", "rerank": True, "top_k": 4},
        {"tracklet_id": "g0_a", "since": live.groups[2][0]["created_at"]},
    ]
    answers = live.client.query_batch(queries)
    assert len(answers) == len(queries)
    for query, answer in zip(queries, answers, strict=True):
        single = live.client.query(**query)
        assert answer["tracklet_id"] == query["tracklet_id"]
        assert answer["results"] == single["results"] and answer["reranked"] == single["reranked"]
        assert answer["timings_ms"]["decode"] == answer["timings_ms"]["embed"] == 0.0


def test_batch_mixes_uploads_and_ids_in_order(live: Live, make_tracklet: Callable[..., list[tuple[str, bytes]]]) -> None:
    uploads = [make_tracklet(2, frames=3), make_tracklet(1, frames=2), make_tracklet(9, frames=1)]
    queries: list[dict[str, Any]] = [
        {"frames": uploads[0], "top_k": 2},
        {"tracklet_id": "frank_1", "top_k": 2},
        {"frames": uploads[1], "top_k": 3, "camera": "cam1"},
        {"frames": uploads[2], "rerank": True},
    ]
    answers = live.client.query_batch(queries)
    assert [a["tracklet_id"] for a in answers] == [None, "frank_1", None, None]
    for query, answer in zip(queries, answers, strict=True):
        # Micro-batched with the batch's other uploads: the same descriptor up to float rounding.
        single = live.client.query(**query)["results"]
        assert _ranked(answer["results"]) == _ranked(single)
        assert _scores(answer["results"]) == pytest.approx(_scores(single), abs=1e-5)
    assert answers[0]["results"][0]["identity"] == "gina"  # her own frames
    assert answers[2]["results"][0]["identity"] == "frank"
    assert answers[0]["timings_ms"]["embed"] > 0 and answers[0]["timings_ms"]["decode"] > 0


def _ranked(results: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    return [(r["identity"], [t["tracklet_id"] for t in r["tracklets"]]) for r in results]


def _scores(results: list[dict[str, Any]]) -> list[float]:
    return [r["score"] for r in results] + [t["score"] for r in results for t in r["tracklets"]]


def _multipart(queries: str, frames: list[tuple[str, bytes]]) -> list[Any]:
    return [("queries", (None, queries.encode(), "application/json"))] + [
        ("frames", (name, data, "image/png")) for name, data in frames
    ]


def test_batch_errors_name_the_query(live: Live, make_tracklet: Callable[..., list[tuple[str, bytes]]]) -> None:
    url = f"{live.url}/v1/query/batch"
    two = make_tracklet(3, frames=2)
    json_cases: list[tuple[Any, int, str, str]] = [
        ({"queries": []}, 422, "empty_batch", "queries"),
        ({"queries": [{"tracklet_id": "frank_1"}] * (MAX_QUERY_BATCH + 1)}, 413, "too_many_queries", "queries"),
        ({"queries": [{"tracklet_id": "frank_1"}, {"tracklet_id": "ghost"}]}, 404, "tracklet_not_found",
         "queries[1].tracklet_id"),
        ({"queries": [{"tracklet_id": "frank_1", "top_k": 5000}]}, 422, "invalid_request", "queries[0].top_k"),
        ({"queries": [{"tracklet_id": "frank_1"}, {"tracklet_id": "g0_a", "since": 5, "until": 4}]}, 422,
         "invalid_time_range", "queries[1].until"),
        ({"queries": [{"tracklet_id": "frank_1", "exclude_same_camera": True, "query_camera": None},
                      {"top_k": 3, "tracklet_id": "frank_1", "frames": 2}]}, 422, "invalid_request",
         "queries[1].frames"),  # frames counts need multipart
        ({"queries": [{"tracklet_id": "frank_1", "rerank": True, "k1": 999}]}, 422, "invalid_rerank",
         "queries[0].k1"),
        ([{"tracklet_id": "frank_1"}], 422, "invalid_request", "body"),
    ]
    for body, status, code, field in json_cases:
        response = httpx.post(url, headers=READ, json=body)
        assert response.status_code == status, (body, response.text)
        assert (response.json()["detail"]["error"], response.json()["detail"]["field"]) == (code, field), body
    multipart_cases: list[tuple[str, list[tuple[str, bytes]], int, str, str]] = [
        ('[{"frames": 3}]', two, 422, "frame_count_mismatch", "queries[0].frames"),
        ('[{"frames": 1}]', two, 422, "frame_count_mismatch", "frames"),
        ('[{"frames": 2, "tracklet_id": "frank_1"}]', two, 422, "invalid_batch_query", "queries[0].tracklet_id"),
        ('[{"top_k": 2}]', two, 422, "invalid_batch_query", "queries[0].tracklet_id"),
        ('[{"frames": 9}]', make_tracklet(4, frames=9), 422, "too_many_frames", "queries[0].frames"),
        ('[{"frames": 2, "colour": "red"}]', two, 422, "invalid_request", "queries[0].colour"),
        ('[{"frames": 2}', two, 422, "invalid_json", "queries"),
        ('[{"frames": 1}, {"frames": 1}]', [two[0], ("bad.png", b"not an image")], 415,
         "unsupported_image_format", "frames"),
    ]
    for queries, frames, status, code, field in multipart_cases:
        response = httpx.post(url, headers=READ, files=_multipart(queries, frames))
        assert response.status_code == status, (queries, response.text)
        assert (response.json()["detail"]["error"], response.json()["detail"]["field"]) == (code, field), queries
    extra = httpx.post(url, headers=READ, files=_multipart('[{"frames": 2}]', two), data={"top_k": "3"})
    assert extra.status_code == 422 and extra.json()["detail"]["field"] == "top_k"
    assert httpx.post(url, json={"queries": [{"tracklet_id": "frank_1"}]}).status_code == 401


# ---- item 9: Retry-After and metrics ----------------------------------------------------------------
def test_every_503_carries_retry_after(
    checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any], thread_server: Callable[..., Any],
    redis_server_factory: Callable[..., Any], redis_prefix: str,
) -> None:
    # No runtime at all (lifespan off): every API route and /readyz answer 503 not_ready.
    starting = thread_server(make_settings(checkpoints.a, sqlite_url), lifespan="off", wait_ready=False)
    for method, path in (("GET", "/readyz"), ("GET", "/v1/stats"), ("GET", "/stats"), ("GET", "/v1/tracklets"),
                         ("POST", "/v1/query"), ("POST", "/v1/query/batch"), ("DELETE", "/v1/identities/x")):
        response = httpx.request(method, f"{starting.url}{path}", headers=WRITE)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["detail"]["error"] == "not_ready" and response.headers["retry-after"] == "1", path
    # A store that stops answering: readiness and the routes that read it.
    redis = redis_server_factory(appendonly=False)
    server = thread_server(make_settings(checkpoints.a, redis.url, redis_prefix=redis_prefix, sync_interval=0))
    client = server.client()
    stats = client.stats()
    client.import_batch(_descriptor_records(stats["fingerprint"], stats["dim"],
                                            [("r1", "rita", "cam1", "ground", "s")], seed=8))
    redis.stop()
    try:
        for method, path in (("GET", "/readyz"), ("GET", "/v1/stats"), ("GET", "/v1/tracklets"),
                             ("GET", "/v1/tracklets/r1"), ("DELETE", "/v1/tracklets/r1")):
            response = httpx.request(method, f"{server.url}{path}", headers=WRITE, timeout=30)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["detail"]["error"] == "store_unavailable", path
            assert int(response.headers["retry-after"]) >= 1, path
    finally:
        redis.start()


def test_metrics_have_process_python_stage_and_index_families(live: Live, make_tracklet: Callable[..., Any]) -> None:
    def scrape() -> dict[str, Any]:
        text = httpx.get(f"{live.url}/metrics").text
        return {f.name: f for f in text_string_to_metric_families(text)}

    def count(families: dict[str, Any], stage: str) -> float:
        fam = families["sasreid_query_stage_duration_seconds"]
        return next(s.value for s in fam.samples if s.name.endswith("_count") and s.labels["stage"] == stage)

    before = scrape()
    live.client.query(tracklet_id="frank_1")
    live.client.query(frames=make_tracklet(1), rerank=True)
    live.client.query_batch([{"tracklet_id": "gina_1"}, {"tracklet_id": "frank_1", "rerank": True}])
    after = scrape()
    assert count(after, "search") - count(before, "search") == 4
    assert count(after, "decode") - count(before, "decode") == 1
    assert count(after, "embed") - count(before, "embed") == 1
    assert count(after, "rerank") - count(before, "rerank") == 2

    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "python_info",
                 "python_gc_collections", "python_gc_objects_collected"):
        assert name in after, name
    tracklets = next(s.value for s in after["sasreid_gallery_tracklets"].samples)
    assert tracklets == 8
    assert next(s.value for s in after["sasreid_index_descriptor_bytes"].samples) == tracklets * live.dim * 4
    # Prometheus conventions: snake case, counters _total, durations in seconds, bytes in bytes.
    for name, fam in after.items():
        assert name == name.lower() and " " not in name, name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), name
        if fam.type == "histogram" and ("duration" in name or "latency" in name):
            assert name.endswith("_seconds"), name
        if "memory" in name or name.endswith("_bytes"):
            assert name.endswith("_bytes"), name
