"""Store write failures answer 507/503 with a stable code, never a bare 500 (issue 9, item 3).

Real failures only: an SQLite file that may not grow (``PRAGMA max_page_count``, the same
``SQLITE_FULL`` a full disk gives), an SQLite write lock held by another connection, and real
redis-servers over ``maxmemory`` or turned into a read-only replica. After each failure nothing
was stored, the index is reconciled with the store, and the next request on the same connection
works.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

WRITE = {"X-API-Key": "test-write-key"}
READ = {"X-API-Key": "test-read-key"}


def _enroll(http: httpx.Client, tid: str, frames: list[tuple[str, bytes]]) -> httpx.Response:
    files = [("frames", (name, data, "image/png")) for name, data in frames]
    return http.post("/tracklets", data={"identity": f"id_{tid}", "tracklet_id": tid}, files=files, headers=WRITE)


def _batch(http: httpx.Client, fingerprint: str, dim: int, prefix: str, n: int) -> httpx.Response:
    rng = np.random.default_rng(len(prefix))
    records = []
    for i in range(n):
        vec = rng.standard_normal(dim)
        records.append({"tracklet_id": f"{prefix}{i}", "identity": f"{prefix}id", "fingerprint": fingerprint,
                        "descriptor": (vec / np.linalg.norm(vec)).tolist()})
    return http.post("/tracklets/batch", content=json.dumps(records).encode(),
                     headers={**WRITE, "Content-Type": "application/json"})


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail["error"] == code, detail
    return detail


def _in_sync(http: httpx.Client, timeout: float = 10.0) -> dict[str, Any]:
    """Stats once the index holds exactly what the store holds (the maintenance task reconciles)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = http.get("/stats", headers=READ).json()
        if stats["tracklets"] == stats["indexed_tracklets"] or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def test_sqlite_full_and_locked(
    checkpoints: Any,
    tmp_path: Path,
    make_settings: Callable[..., Any],
    opened_runtime: Callable[..., Any],
    thread_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="service.runtime")
    path = tmp_path / "gallery.sqlite"
    runtime = opened_runtime(make_settings(checkpoints.a, f"sqlite:///{path}", keep_frames=True))
    server = thread_server(runtime.settings, runtime=runtime)
    conn: sqlite3.Connection = runtime.store._conn  # the server's own connection: real SQLite limits
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert _enroll(http, "first", make_tracklet(1)).status_code == 201
        stats = http.get("/stats", headers=READ).json()

        # ---- the file may not grow: SQLITE_FULL, as on a full disk ---------------------------
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        detail = _error(_batch(http, stats["fingerprint"], stats["dim"], "bulk_", 200), 507, "store_full")
        assert "full" in detail["message"]
        full = None
        for i in range(20):  # kept frames need new pages within a few uploads
            response = _enroll(http, f"more_{i}", make_tracklet(100 + i))
            if response.status_code != 201:
                full = response
                break
        assert full is not None, "the capped database kept accepting writes"
        _error(full, 507, "store_full")
        assert "gallery index marked for rebuild" in caplog.text
        after = _in_sync(http)
        assert after["tracklets"] == after["indexed_tracklets"]
        assert http.get("/tracklets/bulk_0", headers=READ).status_code == 404  # nothing half-stored
        conn.execute("PRAGMA max_page_count = 1073741823")
        assert _enroll(http, "after_full", make_tracklet(2)).status_code == 201

        # ---- another writer holds the lock: "database is locked" -----------------------------
        conn.execute("PRAGMA busy_timeout = 200")  # the server waits 30 s by default
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            _error(http.delete("/tracklets/first", headers=WRITE), 503, "store_busy")
            _error(_enroll(http, "while_locked", make_tracklet(3)), 503, "store_busy")
            response = http.delete("/identities/id_first", headers=WRITE)
            _error(response, 503, "store_busy")
            assert response.headers["retry-after"] == "1"
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert http.get("/tracklets/first", headers=READ).status_code == 200
        assert http.delete("/tracklets/first", headers=WRITE).status_code == 200
        final = _in_sync(http)
        assert final["tracklets"] == final["indexed_tracklets"] == after["tracklets"]


def test_redis_oom_and_read_only(
    checkpoints: Any,
    make_settings: Callable[..., Any],
    thread_server: Callable[..., Any],
    redis_server_factory: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    # Own servers: maxmemory and replication change the whole server.
    server_redis = redis_server_factory(appendonly=False)
    admin = redis.Redis.from_url(server_redis.url)
    server = thread_server(make_settings(checkpoints.a, server_redis.url))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert _enroll(http, "first", make_tracklet(1)).status_code == 201
            stats = http.get("/stats", headers=READ).json()

            admin.config_set("maxmemory", 1)  # every write is now over the limit: OOM
            _error(_enroll(http, "oom", make_tracklet(2)), 507, "store_full")
            _error(_batch(http, stats["fingerprint"], stats["dim"], "bulk_", 50), 507, "store_full")
            admin.config_set("maxmemory", 0)
            assert http.get("/tracklets/oom", headers=READ).status_code == 404
            assert _enroll(http, "after_oom", make_tracklet(3)).status_code == 201
            assert _in_sync(http)["tracklets"] == 2

            # A read-only replica (what a failover can leave behind a stale URL).
            primary = redis_server_factory(appendonly=False)
            admin.replicaof("127.0.0.1", primary.port)
            detail = _error(_enroll(http, "ro", make_tracklet(4)), 503, "store_read_only")
            assert "read-only" in detail["message"]
            _error(http.delete("/tracklets/first", headers=WRITE), 503, "store_read_only")
            assert http.get("/healthz").status_code == 200
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()


def test_redis_misconf_is_503(
    checkpoints: Any,
    make_settings: Callable[..., Any],
    thread_server: Callable[..., Any],
    redis_server_factory: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    """A real MISCONF: Redis refuses writes once a snapshot failed (here: its dump file's path is
    a directory, as a full or broken disk would make it fail)."""
    server_redis = redis_server_factory(appendonly=False)
    admin = redis.Redis.from_url(server_redis.url)
    server = thread_server(make_settings(checkpoints.a, server_redis.url))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert _enroll(http, "first", make_tracklet(1)).status_code == 201
            (server_redis.directory / "dump.rdb").mkdir()
            admin.config_set("save", "3600 1")  # MISCONF applies only with snapshots configured
            admin.bgsave()
            deadline = time.monotonic() + 10
            while admin.info("persistence")["rdb_last_bgsave_status"] != "err":
                assert time.monotonic() < deadline, "the snapshot did not fail"
                time.sleep(0.05)
            detail = _error(_enroll(http, "misconf", make_tracklet(2)), 503, "store_read_only")
            assert "MISCONF" in detail["message"]
            assert http.get("/tracklets/first", headers=READ).status_code == 200  # reads still work
    finally:
        admin.config_set("save", "")
        admin.close()


def test_sqlite_write_beyond_a_file_size_limit_is_503(
    process_server: Callable[..., Any],
    checkpoints: Any,
    tmp_path: Path,
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    """The issue's case: DELETE (and enroll) on a database that cannot grow answered a bare 500.

    A file-size rlimit (RLIMIT_FSIZE) on the real ``sasreid serve`` process makes every write that
    extends a file fail (EFBIG; SQLite reports a disk I/O error, as for a quota or a failing
    disk). Afterwards the limit is lifted and the same requests succeed."""
    import resource

    data = tmp_path / "data"
    server = process_server(["--checkpoint", str(checkpoints.a), "--store", f"sqlite:///{data / 'g.sqlite'}"])
    assert server.proc is not None
    pid = server.proc.pid
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for i in range(3):
            assert _enroll(http, f"t{i}", make_tracklet(10 + i)).status_code == 201
        limit = max(f.stat().st_size for f in [*data.iterdir(), server.log])
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))
        try:
            detail = _error(http.delete("/tracklets/t0", headers=WRITE), 503, "store_unavailable")
            assert "write to the database failed" in detail["message"]
            _error(_enroll(http, "t9", make_tracklet(19)), 503, "store_unavailable")
            _error(http.delete("/identities/id_t1", headers=WRITE), 503, "store_unavailable")
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        assert http.get("/tracklets/t0", headers=READ).status_code == 200  # the delete did not happen
        assert http.delete("/tracklets/t0", headers=WRITE).status_code == 200
        stats = _in_sync(http)
        assert stats["tracklets"] == stats["indexed_tracklets"] == 2
