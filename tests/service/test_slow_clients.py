"""Slow clients are timed out (issue 9, item 5): real sockets to a real ``sasreid serve`` process
with short limits. Before, a half-sent request head or a trickling body kept its connection open
indefinitely; every wait here is bounded by a socket timeout, so the old behaviour fails fast.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

LIMIT_S = 1.0  # head, body idle; the whole body gets 3 s
SOCKET_TIMEOUT_S = 8.0  # a server that never gives up fails the test after this
HEAD = (
    "POST /tracklets/batch HTTP/1.1\r\nHost: x\r\nX-API-Key: test-write-key\r\n"
    "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
)


@pytest.fixture
def server(process_server: Callable[..., Any], checkpoints: Any, tmp_path: Path) -> Iterator[Any]:
    yield process_server(
        ["--checkpoint", str(checkpoints.a), "--store", f"sqlite:///{tmp_path / 'g.sqlite'}"],
        SASREID_HEADER_TIMEOUT_S=str(LIMIT_S),
        SASREID_KEEP_ALIVE_TIMEOUT_S="1",
        SASREID_BODY_IDLE_TIMEOUT_S=str(LIMIT_S),
        SASREID_BODY_TIMEOUT_S="3",
    )


def _connect(url: str) -> socket.socket:
    target = urlparse(url)
    sock = socket.create_connection((target.hostname, target.port), timeout=SOCKET_TIMEOUT_S)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):  # raises socket.timeout if the server keeps it open
        data += chunk
    return data, time.monotonic() - start


def test_half_sent_head_is_closed_with_408(server: Any) -> None:
    with _connect(server.url) as sock:
        sock.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\nX-API-Key: test-read-key\r\n")  # never the blank line
        answer, took = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer
    assert took < LIMIT_S + 3


def test_idle_connection_is_closed(server: Any) -> None:
    with _connect(server.url) as sock:
        answer, took = _read_until_closed(sock)  # sends nothing at all
    assert answer == b"" and took < LIMIT_S + 3


def test_stalled_body_is_408(server: Any) -> None:
    with _connect(server.url) as sock:
        sock.sendall(HEAD.encode() + b"[{")  # 2 of 1000 bytes, then silence
        answer, took = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer and b"no body bytes" in answer
    assert took < LIMIT_S + 3


def test_trickled_body_is_408(server: Any) -> None:
    """One byte every half second never trips the idle limit; the whole-body limit (3 s) ends it."""
    with _connect(server.url) as sock:
        sock.sendall(HEAD.encode())
        start = time.monotonic()
        answer = b""
        for _ in range(40):  # bounded: 20 s at most
            try:
                sock.sendall(b" ")
            except OSError:  # the server closed the connection after answering
                break
            sock.settimeout(0.5)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk or b"request_timeout" in answer:
                break
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"longer than 3 s" in answer
    assert took < 3 + 3


def test_ordinary_clients_are_unaffected(server: Any) -> None:
    """Two requests on one kept-alive connection, and a body sent at normal speed, still work."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        time.sleep(0.5)  # under the keep-alive limit: the same connection is reused
        assert http.get("/healthz").status_code == 200
        response = http.post(
            "/tracklets/batch", content=b"[]", headers={"X-API-Key": "test-write-key", "Content-Type": "application/json"}
        )
        assert response.json()["detail"]["error"] == "empty_batch"
