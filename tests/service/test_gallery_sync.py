"""The change-feed poller (service.gallery_sync) inside real apps: it survives and counts a store
outage and catches up afterwards, a replica whose feed position is lost is reconciled, and the
setting is validated."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.client import ApiClientError
from service.core.config import Settings
from tests.conftest import RedisServer


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def eventually(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within}s")
        time.sleep(0.05)


def known(client: Any, tracklet_id: str) -> bool:
    try:
        client.query(tracklet_id=tracklet_id, top_k=5)
    except ApiClientError as exc:
        if exc.status != 404:
            raise
        return False
    return True


def test_a_store_outage_is_counted_survived_and_caught_up(
    redis_server_factory: Callable[..., RedisServer],
    checkpoints: Any,
    make_settings: Callable[..., Settings],
    thread_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    redis = redis_server_factory()
    settings = make_settings(checkpoints.a, redis.url, sync_interval=0.05)
    reader, writer = thread_server(settings), thread_server(settings)
    assert writer.client().enroll(make_tracklet(1), "alice", tracklet_id="alice_1").created
    eventually(lambda: known(reader.client(), "alice_1"), "first enroll seen")
    assert metric(reader.url, "sasreid_gallery_sync_errors_total") == 0
    assert metric(reader.url, "sasreid_gallery_sync_changes_total") >= 1

    redis.kill()
    eventually(lambda: metric(reader.url, "sasreid_gallery_sync_errors_total") >= 3, "failed polls counted")
    assert httpx.get(f"{reader.url}/healthz", timeout=5).status_code == 200  # the server lives on
    redis.restart()  # the append-only file brings the gallery back

    def enrolled() -> bool:
        try:
            return writer.client().enroll(make_tracklet(2), "bob", tracklet_id="bob_1").created
        except ApiClientError as exc:
            if exc.status != 503:  # store_unavailable until the writer reconnects
                raise
            return False

    eventually(enrolled, "enroll after the outage")
    eventually(lambda: known(reader.client(), "bob_1"), "write after the outage seen")
    assert reader.client().stats()["indexed_tracklets"] == 2
    assert metric(reader.url, "sasreid_gallery_sync_position") == metric(
        writer.url, "sasreid_gallery_sync_position"
    )


def test_a_lost_feed_position_is_reconciled(
    redis_server: RedisServer,
    redis_prefix: str,
    checkpoints: Any,
    make_settings: Callable[..., Settings],
    opened_runtime: Callable[[Settings], Any],
    thread_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    settings = make_settings(checkpoints.a, redis_server.url, redis_prefix=redis_prefix, sync_interval=0.05)
    runtime = opened_runtime(settings)
    reader = thread_server(settings, runtime=runtime)
    writer = thread_server(settings)
    assert writer.client().enroll(make_tracklet(1), "alice", tracklet_id="alice_1").created
    eventually(lambda: known(reader.client(), "alice_1"), "enroll seen")
    head = runtime.store.change_head()
    # As if the store behind this replica were replaced: its position is past the feed's head, so
    # the feed cannot say what changed; the replica must reconcile with the store's contents.
    with runtime.write_lock:
        runtime.feed_position = head + 50
    eventually(lambda: runtime.feed_position == head and not runtime.dirty, "reconciled, position reset")
    assert writer.client().enroll(make_tracklet(2), "bob", tracklet_id="bob_1").created
    eventually(lambda: known(reader.client(), "bob_1"), "enroll after the reconcile seen", within=5)
    assert reader.client().stats()["indexed_tracklets"] == 2


def test_sync_off_and_bad_intervals(
    sqlite_url: str,
    checkpoints: Any,
    make_settings: Callable[..., Settings],
    opened_runtime: Callable[[Settings], Any],
) -> None:
    runtime = opened_runtime(make_settings(checkpoints.a, sqlite_url, sync_interval=0))
    runtime.restore_gallery()
    assert runtime._sync is None and runtime.feed_position == 0  # one server per store: no polling
    for bad in (-0.1, 3601, "often"):
        with pytest.raises(ValidationError, match="sync_interval"):
            make_settings(checkpoints.a, sqlite_url, sync_interval=bad)
