"""Fixtures of the service tests: tiny checkpoints, real image files, real servers on loopback.

Two ways to run the real app:

* ``ThreadServer``: ``create_app`` served by ``uvicorn.Server`` in a thread of the test process
  (fast to start; used where a process boundary does not matter);
* ``ProcessServer``: ``python -m service.cli serve ...`` in a subprocess (``sasreid serve`` as a
  user runs it), for restarts and kill -9.

``pytest --index milvus tests/service`` runs the whole service suite against the milvus index (one
milvus-lite file per test, shared by the test's thread and process servers); default flat.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image

from model import build_model, save_checkpoint
from service.app import create_app
from service.client import SasreidClient
from service.core.config import Settings
from service.runtime import Runtime, open_runtime

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
WRITE_KEY = "test-write-key"
READ_KEY = "test-read-key"
# Frames are small and tracklets short so the tiny model embeds quickly on 2 cores.
FRAME_SIZE = (48, 24)  # (H, W)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- images ------------------------------------------------------------------------------------
def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = FRAME_SIZE) -> bytes:
    """A real encoded image whose pixels depend on ``seed`` (a person-crop-sized noise pattern)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 2, 3), dtype=np.uint8)
    pixels = np.kron(base, np.ones((size[0] // 4, size[1] // 2, 1), dtype=np.uint8))
    pixels = np.clip(pixels.astype(np.int16) + rng.integers(-20, 21, size=pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def tracklet(seed: int, frames: int = 2, fmt: str = "PNG") -> list[tuple[str, bytes]]:
    """``frames`` frames of one synthetic tracklet, as (file name, bytes)."""
    ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[fmt]
    return [(f"{seed}_{i:03d}.{ext}", image_bytes(seed * 1000 + i, fmt)) for i in range(frames)]


# ---- checkpoints -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoints:
    a: Path
    b: Path
    fingerprint_a: str
    fingerprint_b: str


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    root = tmp_path_factory.mktemp("checkpoints")
    fingerprints = []
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        fingerprints.append(save_checkpoint(build_model("tiny"), root / name))
    return Checkpoints(root / "a", root / "b", fingerprints[0], fingerprints[1])


# The index the service tests serve with (``--index``) and, for milvus, this test's milvus-lite file.
_INDEX: dict[str, str | None] = {"kind": "flat", "milvus_uri": None}


@pytest.fixture(autouse=True)
def _service_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    kind = request.config.getoption("--index")
    _INDEX["kind"] = kind
    _INDEX["milvus_uri"] = str(tmp_path / "milvus.db") if kind == "milvus" else None
    yield
    _INDEX.update(kind="flat", milvus_uri=None)


@pytest.fixture
def index_kind() -> str:
    """The vector index kind this run serves with (``pytest --index KIND``)."""
    return str(_INDEX["kind"])


def _index_settings() -> dict[str, str]:
    out = {"index": str(_INDEX["kind"])}
    if _INDEX["milvus_uri"] is not None:
        out["milvus_uri"] = str(_INDEX["milvus_uri"])
    return out


def base_env(**extra: str) -> dict[str, str]:
    """Environment of a server process: keys, thread policy, the run's index, nothing inherited
    from SASREID_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SASREID_")}
    env.update(
        OMP_WAIT_POLICY="PASSIVE",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        SASREID_WRITE_KEYS=WRITE_KEY,
        SASREID_READ_KEYS=READ_KEY,
    )
    env.update({f"SASREID_{k.upper()}": v for k, v in _index_settings().items()})
    env.update(extra)
    return env


# ---- servers -----------------------------------------------------------------------------------
@dataclass
class ThreadServer:
    """The real app under uvicorn in a thread of the test process."""

    settings: Settings
    lifespan: str = "on"
    runtime: Runtime | None = None
    port: int = field(default_factory=_free_port)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> ThreadServer:
        app = create_app(self.settings, runtime=self.runtime)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=self.lifespan)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the test server exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("the test server did not start")
            time.sleep(0.02)
        if wait_ready:
            self.client().wait_ready(60)
        return self

    def client(self, key: str | None = WRITE_KEY) -> SasreidClient:
        return SasreidClient(self.url, api_key=key)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(30)
            self._server = None


@dataclass
class ProcessServer:
    """``sasreid serve`` in a subprocess; ``kill()`` is kill -9."""

    args: list[str]
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> ProcessServer:
        cmd = [sys.executable, "-m", "service.cli", "serve", *self.args, "--port", str(self.port), "--log-level", "warning"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
                try:
                    if http.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not ready after {timeout}s:\n{self.log_text()}")
                time.sleep(0.1)

    def client(self, key: str | None = WRITE_KEY) -> SasreidClient:
        return SasreidClient(self.url, api_key=key)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def settings_for(checkpoint: Path, store: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "checkpoint": checkpoint,
        "store": store,
        "write_keys": WRITE_KEY,
        "read_keys": READ_KEY,
        "max_wait_ms": 2.0,
        **_index_settings(),
    }
    values.update(overrides)
    # _env_prefix keeps a developer's SASREID_* variables out of the tests' settings.
    return Settings(_env_prefix="SASREID_TEST_UNUSED_", **values)


@pytest.fixture
def thread_server() -> Iterator[Callable[..., ThreadServer]]:
    """``thread_server(settings, lifespan="on", runtime=None)``: started servers, stopped afterwards."""
    servers: list[ThreadServer] = []

    def start(settings: Settings, lifespan: str = "on", runtime: Runtime | None = None,
              wait_ready: bool = True) -> ThreadServer:
        server = ThreadServer(settings, lifespan=lifespan, runtime=runtime)
        servers.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def module_thread_server() -> Iterator[Callable[..., ThreadServer]]:
    """Like ``thread_server``, for servers shared by the tests of a module."""
    servers: list[ThreadServer] = []

    def start(settings: Settings) -> ThreadServer:
        server = ThreadServer(settings)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def process_server(tmp_path: Path) -> Iterator[Callable[..., ProcessServer]]:
    """``process_server(args, **env)``: ``sasreid serve ARGS`` subprocesses, stopped afterwards."""
    servers: list[ProcessServer] = []

    def start(args: list[str], wait_ready: bool = True, **env: str) -> ProcessServer:
        server = ProcessServer(args=args, env=base_env(**env), log=tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gallery.sqlite'}"


@pytest.fixture
def opened_runtime() -> Iterator[Callable[[Settings], Runtime]]:
    """Runtimes opened by a test (closed afterwards unless a server closed them)."""
    opened: list[Runtime] = []

    def open_(settings: Settings) -> Runtime:
        runtime = open_runtime(settings)
        opened.append(runtime)
        return runtime

    yield open_
    for runtime in opened:
        try:
            runtime.close()
        except Exception:  # already closed by its server's lifespan
            pass


@pytest.fixture(scope="session")
def make_tracklet() -> Callable[..., list[tuple[str, bytes]]]:
    """``make_tracklet(seed, frames=2, fmt="PNG")`` -> [(file name, bytes)] of real encoded images."""
    return tracklet


@pytest.fixture(scope="session")
def make_image() -> Callable[..., bytes]:
    """``make_image(seed, fmt="PNG", size=(H, W))`` -> encoded image bytes."""
    return image_bytes


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., Settings]:
    """``make_settings(checkpoint, store_url, **overrides)`` -> Settings with the test keys (no env)."""
    return settings_for
