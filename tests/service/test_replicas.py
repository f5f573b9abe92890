"""Stateless replicas: two ``sasreid serve`` processes on one Redis (and, for milvus, one Milvus run
as a server process) see each other's writes through the store's change feed within 1 s.

Real components only: redis-server (tests/conftest.py), the milvus-lite engine listening on a
loopback TCP port, and the servers as subprocesses.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.client import ApiClientError
from tests.conftest import RedisServer, free_port

# What "see each other's writes" must mean in time: the bound.
VISIBLE_WITHIN_S = 1.0


class MilvusLiteServer:
    """The milvus-lite engine serving one *.db file on 127.0.0.1:PORT (gRPC), so several
    processes can share it as they would a Milvus standalone."""

    def __init__(self, db_file: Path) -> None:
        from milvus_lite.server import Server

        self.port = free_port()
        self._server = Server(str(db_file), address=f"127.0.0.1:{self.port}")

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if not self._server.init() or not self._server.start():
            raise RuntimeError("milvus-lite did not start (see its log on stderr)")
        deadline = time.monotonic() + timeout
        while True:  # listening once a TCP connect succeeds
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"milvus-lite not listening on port {self.port} after {timeout}s"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[MilvusLiteServer]:
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install '.[milvus]')")
    server = MilvusLiteServer(tmp_path / "shared-milvus.db")
    server.start()
    yield server
    server.stop()


def listed(answer: dict[str, Any]) -> set[str]:
    return {t["tracklet_id"] for r in answer["results"] for t in r["tracklets"]}


def neighbours(client: Any, tracklet_id: str) -> set[str] | None:
    """Tracklets a query by ``tracklet_id`` lists; None while that replica does not know it (404)."""
    try:
        return listed(client.query(tracklet_id=tracklet_id, top_k=10))
    except ApiClientError as exc:
        if exc.status != 404:
            raise
        return None


def wait_until(check: Callable[[], bool], what: str, within: float = VISIBLE_WITHIN_S) -> float:
    """Seconds until ``check()`` held; fails after ``within`` seconds (bounded loop)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            pytest.fail(f"{what}: not within {within}s")
        time.sleep(0.02)


@pytest.mark.parametrize("kind", ["milvus", "flat"])
def test_two_replicas_see_each_others_writes(
    kind: str,
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    redis_prefix: str,
    checkpoints: Any,
    process_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    args = ["--checkpoint", str(checkpoints.a), "--store", redis_server.url, "--index", kind]
    if kind == "milvus":
        args += ["--milvus-uri", request.getfixturevalue("milvus_server").uri]
    env = {"SASREID_REDIS_PREFIX": redis_prefix}  # the default sync interval (0.25 s)
    a = process_server(args, **env)
    a_client = a.client()
    for identity, tid, seed in (("alice", "alice_1", 1), ("bob", "bob_1", 3)):
        assert a_client.enroll(make_tracklet(seed), identity, tracklet_id=tid).created
    b = process_server(args, **env)  # loads what A wrote from the store (and Milvus)
    b_client = b.client()
    assert listed(b_client.query(tracklet_id="alice_1", top_k=10)) == {"bob_1"}

    # Enrolled through A: B answers with it within 1 s (B embeds nothing: a query by tracklet id).
    assert a_client.enroll(make_tracklet(2), "alice", tracklet_id="alice_2").created
    took = wait_until(
        lambda: "alice_2" in listed(b_client.query(tracklet_id="alice_1", top_k=10)), "enroll on A seen by B"
    )
    answer = b_client.query(tracklet_id="alice_2", top_k=10)
    assert listed(answer) == {"alice_1", "bob_1"}
    assert answer["results"][0]["identity"] == "alice"  # found by its vector: its own identity first

    # Deleted through B: gone from A's answers within 1 s; B's own answer is right at once.
    assert b_client.delete_tracklet("bob_1")["tracklet_id"] == "bob_1"
    assert "bob_1" not in listed(b_client.query(tracklet_id="alice_1", top_k=10))
    took = max(
        took,
        wait_until(
            lambda: "bob_1" not in listed(a_client.query(tracklet_id="alice_1", top_k=10)),
            "delete on B seen by A",
        ),
    )
    with pytest.raises(ApiClientError) as missing:
        a_client.query(tracklet_id="bob_1")
    assert missing.value.status == 404

    # An identity deleted through A, enrolled again through B under the same tracklet id.
    assert a_client.delete_identity("alice")["deleted"] == ["alice_1", "alice_2"]
    assert b_client.enroll(make_tracklet(5), "carol", tracklet_id="carol_1").created
    wait_until(
        lambda: neighbours(a_client, "carol_1") == set() and neighbours(b_client, "carol_1") == set(),
        "identity delete and enroll",
    )
    assert b_client.enroll(make_tracklet(6), "alice", tracklet_id="alice_1").created  # a new int id
    for client in (a_client, b_client):
        wait_until(lambda c=client: neighbours(c, "carol_1") == {"alice_1"}, "re-enrolled id")

    # Listings and stats agree (listings come from the store; indexed counts from each gallery).
    for client in (a_client, b_client):
        wait_until(lambda c=client: c.stats()["indexed_tracklets"] == 2, "indexed counts agree")
    stats_a, stats_b = a_client.stats(), b_client.stats()
    for key in ("tracklets", "identities", "indexed_tracklets", "fingerprint", "index"):
        assert stats_a[key] == stats_b[key], key
    assert (stats_a["tracklets"], stats_a["identities"]) == (2, 2)
    assert a_client.list_identities() == b_client.list_identities()
    assert [i["identity"] for i in a_client.list_identities()["items"]] == ["alice", "carol"]
    print(f"{kind}: slowest write seen by the other replica after {took:.2f}s")
