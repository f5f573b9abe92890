"""Crash safety: what the API acknowledged survives kill -9 of the server or of redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from index.store import open_store
from service.client import ApiClientError, SasreidClient

WRITE_KEY = "test-write-key"
CLIENTS = 4


class Enroller:
    """``CLIENTS`` threads enrolling distinct tracklets until stopped; records what was acknowledged."""

    def __init__(self, url: str, make_tracklet: Callable[..., list[tuple[str, bytes]]], prefix: str) -> None:
        self.url = url
        self.make_tracklet = make_tracklet
        self.prefix = prefix
        self.acked: dict[str, int] = {}  # tracklet id -> frames seed
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self) -> Enroller:
        for t in self._threads:
            t.start()
        return self

    def _run(self, worker: int) -> None:
        with SasreidClient(self.url, api_key=WRITE_KEY, timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                seed = 10_000 * (worker + 1) + n
                tid = f"{self.prefix}{worker}_{n}"
                n += 1
                try:
                    client.enroll(self.make_tracklet(seed), f"person{seed}", tracklet_id=tid, camera=f"cam{worker}")
                except (httpx.TransportError, ApiClientError) as exc:
                    with self._lock:
                        self.failures.append(f"{tid}: {exc!r}")
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.acked[tid] = seed

    def wait_for(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.acked)} enrollments acknowledged; failures: {self.failures[:3]}")
            time.sleep(0.05)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        with self._lock:
            return dict(self.acked)


def _check_gallery(client: SasreidClient, acked: dict[str, int], make_tracklet: Callable[..., Any]) -> None:
    """Every acknowledged tracklet is stored and indexed; store and index agree."""
    stats = client.stats()
    assert stats["tracklets"] == stats["indexed_tracklets"] >= len(acked)
    for tid in acked:
        assert client.get_tracklet(tid)["tracklet_id"] == tid
        # A tracklet_id query answers only for indexed tracklets (404 otherwise).
        client.query(tracklet_id=tid, top_k=1)
    # Searchable by content: its own frames find it first.
    for tid, seed in list(acked.items())[:3]:
        top = client.query(frames=make_tracklet(seed), top_k=1)["results"][0]
        assert top["tracklets"][0]["tracklet_id"] == tid
        assert top["score"] == pytest.approx(1.0, abs=1e-4)


def test_kill_9_server_during_concurrent_enrollment(
    checkpoints: Any,
    sqlite_url: str,
    make_settings: Callable[..., Any],
    process_server: Callable[..., Any],
    thread_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    server = process_server(["--checkpoint", str(checkpoints.a), "--store", sqlite_url, "--keep-frames"])
    enroller = Enroller(server.url, make_tracklet, "t").start()
    enroller.wait_for(8)
    server.kill()  # kill -9 while the clients are still sending
    acked = enroller.stop()
    assert len(acked) >= 8
    assert enroller.failures, "the kill should have interrupted in-flight enrollments"

    # The store itself: every acknowledged record is there, and every stored record loads whole.
    with open_store(sqlite_url) as store:
        records = list(store.iter_records())
        assert len(records) == store.count_tracklets()
        assert {r.tracklet_id for r in records} >= set(acked)
        assert len({r.int_id for r in records}) == len(records)
        for r in records:
            assert r.descriptor.shape == (store.info().dim,)
            assert store.get_frames(r.tracklet_id) is not None  # frames written with their record

    restarted = thread_server(make_settings(checkpoints.a, sqlite_url, keep_frames=True))
    _check_gallery(restarted.client(), acked, make_tracklet)


def test_redis_kill_9_with_aof(
    checkpoints: Any,
    redis_server_factory: Callable[..., Any],
    make_settings: Callable[..., Any],
    thread_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    redis = redis_server_factory(appendonly=True, appendfsync="always")
    settings = make_settings(checkpoints.a, redis.url)
    app = thread_server(settings)
    enroller = Enroller(app.url, make_tracklet, "r").start()
    enroller.wait_for(8)
    redis.kill()  # kill -9 of redis-server while enrollments are in flight
    time.sleep(0.5)
    acked = enroller.stop()
    assert len(acked) >= 8

    client = app.client()
    # While redis is down: the app says so instead of answering wrongly.
    assert httpx.get(f"{app.url}/readyz").status_code == 503
    with pytest.raises(ApiClientError) as down:
        client.enroll(make_tracklet(1), "late", tracklet_id="late_1")
    assert down.value.status == 503 and down.value.error == "store_unavailable"

    redis.start()  # replays the append-only file
    # The running app reconnects; if a write's outcome was unknown its index is rebuilt from redis.
    deadline = time.monotonic() + 30
    while True:
        stats = client.stats() if httpx.get(f"{app.url}/readyz").status_code == 200 else None
        if stats is not None and stats["tracklets"] == stats["indexed_tracklets"]:
            break
        assert time.monotonic() < deadline, f"store and index disagree after reconnecting: {stats}"
        time.sleep(0.2)
    _check_gallery(client, acked, make_tracklet)
    assert client.enroll(make_tracklet(2), "late", tracklet_id="late_2").created

    # A fresh app on the restarted redis sees the same gallery.
    app.stop()
    fresh = thread_server(settings)
    _check_gallery(fresh.client(), {**acked, "late_2": 2}, make_tracklet)
