"""Service benchmark over HTTP on loopback: query latency and bulk import.

What it does (each server is ``sasreid serve`` in a subprocess with the tiny checkpoint, SQLite):

1. bulk-imports random L2-normalised descriptors (the tiny checkpoint's fingerprint and dim)
   through ``POST /tracklets/batch`` up to each gallery size (default 10k, then 100k; 10
   tracklets per identity, random cameras/platforms), timing the import;
2. at each size, runs a bounded concurrent load (``--queries`` queries or ``--time-limit``
   seconds, ``--concurrency`` client threads) of ``POST /query`` by enrolled ``tracklet_id``
   (search only), with and without re-ranking, and a smaller load of queries with 8 uploaded
   frames (decode + embed + search); reports client-side p50/p99 latency and throughput;
3. enrollment throughput is measured by ``bench/enroll_throughput.py`` (its own section).

Writes the section "## Service latency (CPU)" of bench/RESULTS.md (``--no-write`` to skip).
Usage: ``python bench/bench_service.py`` (about 5-10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.results import machine_line, write_section  # noqa: E402
from service.client import SasreidClient  # noqa: E402

KEY = "bench-key"
SECTION = "Service latency (CPU)"


# ---- servers -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, checkpoint: Path, store: str, log: Path, extra: list[str],
                 settings_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SASREID_")}
        env.update(OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", SASREID_WRITE_KEYS=KEY, **(settings_env or {}))
        cmd = [sys.executable, "-m", "service.cli", "serve", "--checkpoint", str(checkpoint), "--store", store,
               "--port", str(self.port), "--log-level", "warning", *extra]
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        start = time.monotonic()
        with SasreidClient(self.url, api_key=KEY) as client:
            while not client.ready():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
                if time.monotonic() - start > 300:
                    raise TimeoutError("server not ready after 300 s")
                time.sleep(0.2)
        self.start_s = time.monotonic() - start

    def client(self) -> SasreidClient:
        return SasreidClient(self.url, api_key=KEY, timeout=600)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---- load generation -----------------------------------------------------------------------------
@dataclass
class LoadResult:
    latencies_ms: list[float]
    server_ms: dict[str, list[float]]
    errors: int
    wall_s: float

    def pct(self, q: float) -> float:
        return float(np.percentile(np.array(self.latencies_ms), q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s > 0 else float("nan")

    def server_mean(self, key: str) -> float:
        values = self.server_ms.get(key, [])
        return statistics.fmean(values) if values else float("nan")


def run_load(make_call: Callable[[SasreidClient, int], dict[str, Any]], url: str, count: int, concurrency: int,
             time_limit: float) -> LoadResult:
    """``count`` calls (or until ``time_limit`` s) from ``concurrency`` threads, each with its own client."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    server: dict[str, list[float]] = {}
    errors = 0
    deadline = time.monotonic() + time_limit

    def worker() -> None:
        nonlocal issued, errors
        with SasreidClient(url, api_key=KEY, timeout=600) as client:
            while True:
                with lock:
                    if issued >= count or time.monotonic() > deadline:
                        return
                    i = issued
                    issued += 1
                t0 = time.perf_counter()
                try:
                    answer = make_call(client, i)
                except Exception:
                    with lock:
                        errors += 1
                    continue
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    latencies.append(ms)
                    for k, v in (answer.get("timings_ms") or {}).items():
                        server.setdefault(k, []).append(float(v))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(latencies, server, errors, time.perf_counter() - start)


# ---- data ----------------------------------------------------------------------------------------
def frames(seed: int, n: int = 8, size: tuple[int, int] = (128, 64)) -> list[tuple[str, bytes]]:
    """``n`` JPEG person-crop-sized frames."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        out.append((f"{seed}_{i:03d}.jpg", buf.getvalue()))
    return out


def records(start: int, stop: int, dim: int, fingerprint: str, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((stop - start, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cams = rng.integers(0, 6, size=stop - start)
    return [
        {
            "tracklet_id": f"t{i:07d}",
            "identity": f"id{i // 10:06d}",
            "descriptor": x[j].tolist(),
            "fingerprint": fingerprint,
            "camera": f"cam{int(cams[j])}",
            "platform": "aerial" if cams[j] < 3 else "ground",
        }
        for j, i in enumerate(range(start, stop))
    ]


def mean_batch_size(url: str) -> float:
    import httpx

    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^sasreid_embed_batch_size_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^sasreid_embed_batch_size_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total / count if count else float("nan")


# ---- report --------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="gallery sizes, ascending")
    parser.add_argument("--queries", type=int, default=200, help="queries per search load")
    parser.add_argument("--frame-queries", type=int, default=40, help="queries per load with uploaded frames")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per load at most")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    command = "python bench/bench_service.py " + " ".join(sys.argv[1:])
    load_start = os.getloadavg()

    import faiss
    import torch

    from model import build_model, save_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench_service_"))
    torch.manual_seed(0)
    checkpoint = tmp / "tiny"
    save_checkpoint(build_model("tiny"), checkpoint)
    lines: list[str] = []
    rows: list[str] = []
    print(f"work dir {tmp}", flush=True)

    # ---- search latency at each gallery size ------------------------------------------------------
    store = f"sqlite:///{tmp / 'search.sqlite'}"
    server = Server(checkpoint, store, tmp / "search.log", [])
    imports: list[str] = []
    restart = ""
    try:
        have = 0
        for n, size in enumerate(sizes):
            with server.client() as client:
                stats = client.stats()
                dim, fingerprint = int(stats["dim"]), str(stats["fingerprint"])
                t0 = time.perf_counter()
                for lo in range(have, size, 20_000):
                    client.import_batch(records(lo, min(size, lo + 20_000), dim, fingerprint, seed=lo))
                took = time.perf_counter() - t0
                imports.append(f"{have:,} -> {size:,}: {size - have:,} records in {took:.1f} s "
                               f"({(size - have) / took:,.0f} records/s)")
                print(imports[-1], flush=True)
                have = size
                stats = client.stats()
                assert stats["tracklets"] == stats["indexed_tracklets"] == size, stats
            rng = np.random.default_rng(size)
            ids = [f"t{int(i):07d}" for i in rng.integers(0, size, args.queries)]
            for rerank in (False, True):
                res = run_load(lambda c, i, r=rerank, ids=ids: c.query(tracklet_id=ids[i], top_k=10, rerank=r),
                               server.url, args.queries, args.concurrency, args.time_limit)
                rows.append(f"| {size:,} | by tracklet_id | {'yes' if rerank else 'no'} | {len(res.latencies_ms)} "
                            f"| {res.pct(50):.1f} | {res.pct(99):.1f} | {res.throughput:.1f} "
                            f"| {res.server_mean('search'):.1f} | {res.server_mean('rerank'):.1f} | {res.errors} |")
                print(rows[-1], flush=True)
            query_frames = [frames(10_000 + i) for i in range(8)]
            for rerank in (False, True):
                res = run_load(lambda c, i, r=rerank, qf=query_frames: c.query(frames=qf[i % 8], top_k=10, rerank=r),
                               server.url, args.frame_queries, args.concurrency, args.time_limit)
                rows.append(f"| {size:,} | 8 frames (decode+embed) | {'yes' if rerank else 'no'} "
                            f"| {len(res.latencies_ms)} | {res.pct(50):.1f} | {res.pct(99):.1f} "
                            f"| {res.throughput:.1f} | {res.server_mean('search'):.1f} "
                            f"| {res.server_mean('rerank'):.1f} | {res.errors} |")
                print(rows[-1], flush=True)
            if n == 0:
                # Restart on the first gallery: time until /readyz (index and re-ranking graph rebuilt).
                server.stop()
                server = Server(checkpoint, store, tmp / "search.log", [])
                restart = (f"restart of the server on the {size:,}-tracklet store until /readyz is 200 (model "
                           f"load, FAISS index and re-ranking graph rebuilt from SQLite): {server.start_s:.1f} s")
                print(restart, flush=True)
    finally:
        server.stop()

    load_end = os.getloadavg()
    lines += [
        f"Command: `{command.strip()}` · date: {time.strftime('%Y-%m-%d %H:%M')}.",
        machine_line(torch, faiss),
        f"Load average at start / end: {' '.join(f'{x:.2f}' for x in load_start)} / "
        f"{' '.join(f'{x:.2f}' for x in load_end)} (shared machine: other jobs ran at the same time, so "
        "latencies are upper bounds).",
        "",
        "Server: `sasreid serve` subprocess, tiny checkpoint (64x32 input, "
        f"{dim}-d descriptors), SQLite store, flat (exact) FAISS index, re-ranking graph k=30, "
        "search candidates 200; clients on loopback (httpx), latency measured by the client.",
        "",
        "### Bulk import (POST /tracklets/batch, 20k records per call of the client, sent as requests of 5k)",
        "",
        *[f"- {line}" for line in imports],
        f"- {restart}",
        "",
        f"### Query latency (top_k 10, {args.concurrency} concurrent clients; server-side means in ms)",
        "",
        "| gallery | query | rerank | queries | p50 ms | p99 ms | queries/s | search ms | rerank ms | errors |",
        "|---:|---|:---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "`search ms` / `rerank ms` are the server's `timings_ms` (re-ranking: extra time of the re-ranked "
        "search over the plain one). Queries by tracklet_id skip decoding and embedding.",
        "",
        "Enrollment throughput: `bench/enroll_throughput.py`, section \"Enrollment throughput (CPU)\".",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section(SECTION, report, args.results)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
