"""Shared test fixtures: a real redis-server on a free loopback port.

``redis_server`` is one server for the whole session (append-only file on, fsync on every write);
tests isolate themselves with a fresh key prefix. Tests that kill the server use
``redis_server_factory`` to get their own. Nothing is skipped: without a ``redis-server`` binary
the fixtures fail and say how to get one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

# torch and faiss each bring an OpenMP pool; on 2 cores, spinning pools made tests 5x slower.
# Set before any test module imports torch (Makefile exports it too, for direct pytest runs).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_STARTUP_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback port that was free a moment ago (``--port 0`` would disable TCP in redis)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process owned by the tests, restartable on the same port and directory."""

    binary: str
    port: int
    directory: Path
    appendonly: bool = True
    appendfsync: str = "always"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(
                        f"redis-server exited with {self.proc.returncode}: {err}\n{self.log_tail()}"
                    )
                try:
                    # Answers LOADING (an error) until the append-only file is replayed.
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(
            f"redis-server on port {self.port} not ready after {_STARTUP_TIMEOUT_S}s\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        log = self.directory / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def kill(self) -> None:
        """kill -9: no shutdown, no final fsync; only what the server already persisted survives."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, kill: bool = True) -> None:
        """Bring the server back on the same port and directory (replaying its append-only file)."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found on PATH: `make test` installs it (Debian package redis-server)")
    return binary


@pytest.fixture(scope="session")
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """Start dedicated servers: ``factory(appendonly=True, appendfsync="always")``; all stopped at the end."""
    binary = _redis_binary()
    servers: list[RedisServer] = []

    def factory(appendonly: bool = True, appendfsync: str = "always") -> RedisServer:
        server = RedisServer(
            binary=binary,
            port=free_port(),
            directory=tmp_path_factory.mktemp("redis"),
            appendonly=appendonly,
            appendfsync=appendfsync,
        )
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """The session's shared server (AOF on, appendfsync always). Do not kill it: use the factory."""
    return redis_server_factory()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests sharing the server never see each other's keys."""
    return f"test:{uuid.uuid4().hex}:"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--index",
        default="flat",
        help="vector index kind the service tests serve with (flat, ivf, hnsw, milvus); milvus runs each "
        "test on its own milvus-lite file",
    )
