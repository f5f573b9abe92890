"""Re-ranked against plain query latency over HTTP, side by side in one run (issue 12, speed item 1).

For each gallery size: synthetic unit descriptors of the tiny checkpoint's dim (138), 10 tracklets
per identity, written straight into a SQLite store (``bench.graph_start``'s way: an HTTP import of
100k takes minutes and is not what is measured here); ``sasreid serve`` starts on it (building and
saving the re-ranking graph, k = 30); then loads of ``POST /query`` by enrolled ``tracklet_id``
(top_k 10, ``--concurrency`` clients, the load of bench/bench_service.py) alternate between the
modes (plain; re-ranked with the server's default k1 / k2; re-ranked with k1 20, k2 6) for
``--rounds`` rounds, so background load on the shared machine hits all of them alike.

Reported per size and mode: client p50 / p99, the server's own p50 of ``timings_ms.total``
(receipt of the request to its answer), the mean of the server's ``search`` / ``rerank`` stages,
and the ratios re-ranked / plain that issue 12's goal is stated in (server-side p50 <= 60 ms at
100k, at most 3x a plain query).

Writes the section "## Re-ranked query latency (CPU)" of bench/RESULTS.md (``--no-write`` to skip).
Usage: ``python bench/rerank_latency.py [--sizes 10000,100000]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.bench_service import LoadResult, Server, records, run_load  # noqa: E402
from bench.results import machine_line, write_section  # noqa: E402

SECTION = "Re-ranked query latency (CPU)"


def tiny_checkpoint(path: Path) -> tuple[str, int]:
    """Save the tiny preset (seed 0); returns its fingerprint and descriptor dim."""
    import torch

    from model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("tiny")
    return str(save_checkpoint(model, path)), int(model.descriptor_dim)


def reuse_checkpoint(path: Path) -> tuple[str, int]:
    """Fingerprint and descriptor dim of a checkpoint saved by ``tiny_checkpoint`` before."""
    from model import load_checkpoint

    model = load_checkpoint(path)
    return str(model.fingerprint), int(model.descriptor_dim)


def fill(store_path: Path, size: int, dim: int, fingerprint: str) -> float:
    """Write ``size`` synthetic records into a new SQLite store; returns seconds."""
    from index.store import Record, SQLiteStore

    t0 = time.perf_counter()
    store = SQLiteStore(store_path)
    try:
        for lo in range(0, size, 5000):
            store.put_many([
                Record(
                    tracklet_id=r["tracklet_id"], identity=r["identity"], camera=r["camera"],
                    platform=r["platform"], session=None, num_frames=8, fingerprint=fingerprint,
                    descriptor=np.asarray(r["descriptor"], dtype=np.float32),
                    content_hash=f"h-{r['tracklet_id']}",
                )
                for r in records(lo, min(size, lo + 5000), dim, fingerprint, seed=lo)
            ])
    finally:
        store.close()
    return time.perf_counter() - t0


def merged(results: list[LoadResult]) -> LoadResult:
    """The loads of several rounds as one (wall time summed)."""
    server: dict[str, list[float]] = {}
    for res in results:
        for key, values in res.server_ms.items():
            server.setdefault(key, []).extend(values)
    return LoadResult(
        [ms for res in results for ms in res.latencies_ms],
        server,
        sum(res.errors for res in results),
        sum(res.wall_s for res in results),
    )


def server_pct(res: LoadResult, key: str, q: float) -> float:
    values = res.server_ms.get(key, [])
    return float(np.percentile(np.array(values), q)) if values else float("nan")


# (label, query options): plain, re-ranked with the server's defaults, and with Zhong et al.'s k1 / k2
# (what the service used when issue 12's figures were taken).
MODES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("no", {}),
    ("yes (defaults k1 3, k2 1)", {"rerank": True}),
    ("yes (k1 20, k2 6)", {"rerank": True, "k1": 20, "k2": 6}),
)


def row(size: int, label: str, res: LoadResult) -> str:
    return (
        f"| {size:,} | {label} | {len(res.latencies_ms)} | {res.pct(50):.1f} "
        f"| {res.pct(99):.1f} | {server_pct(res, 'total', 50):.1f} | {res.throughput:.1f} "
        f"| {res.server_mean('search'):.1f} | {res.server_mean('rerank'):.1f} | {res.errors} |"
    )


def measure(server: Server, size: int, queries: int, rounds: int, concurrency: int) -> list[LoadResult]:
    """Alternating loads of ``queries`` each per mode and round, merged per mode (``MODES`` order)."""
    rng = np.random.default_rng(size)
    ids = [f"t{int(i):07d}" for i in rng.integers(0, size, queries * rounds)]
    # Warm-up: the first queries pay for lazy imports and first-touch of the graph's arrays.
    run_load(lambda c, i: c.query(tracklet_id=ids[i], top_k=10, **MODES[i % len(MODES)][1]), server.url,
             10 * len(MODES), 2, 60.0)
    loads: list[list[LoadResult]] = [[] for _ in MODES]
    for r in range(rounds):
        part = ids[r * queries : (r + 1) * queries]
        for m, (_, options) in enumerate(MODES):
            loads[m].append(run_load(
                lambda c, i, options=options, part=part: c.query(tracklet_id=part[i], top_k=10, **options),
                server.url, queries, concurrency, 120.0,
            ))
    return [merged(parts) for parts in loads]


def command_args(argv: list[str]) -> list[str]:
    """``argv`` for the report's command line, a ``--note`` text shortened (it is printed below)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--note":
            out.append('"(the note below)"')
        elif arg.startswith("--note="):
            out.append('--note "(the note below)"')
        else:
            out.append(arg)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="gallery sizes")
    parser.add_argument("--queries", type=int, default=100, help="queries per load (per mode and round)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating plain / re-ranked rounds")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep checkpoint and stores here and reuse them (a stored graph loads in seconds; "
                        "building it at 100k takes minutes on 2 cores)")
    parser.add_argument("--note", default="", help="a line added under the table (e.g. what the code was)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    command = "python bench/rerank_latency.py " + " ".join(command_args(sys.argv[1:]))
    load_start = os.getloadavg()
    import faiss
    import torch

    tmp = args.work if args.work is not None else Path(tempfile.mkdtemp(prefix="bench_rerank_latency_"))
    tmp.mkdir(parents=True, exist_ok=True)
    checkpoint = tmp / "tiny"
    fingerprint, dim = tiny_checkpoint(checkpoint) if not checkpoint.exists() else reuse_checkpoint(checkpoint)
    print(f"work dir {tmp}, dim {dim}", flush=True)
    rows: list[str] = []
    ratios: list[str] = []
    for size in sizes:
        db = tmp / f"g{size}.sqlite"
        fill_s = fill(db, size, dim, fingerprint) if not db.exists() else 0.0
        server = Server(checkpoint, f"sqlite:///{db}", tmp / f"serve{size}.log", [])
        print(f"{size}: store filled in {fill_s:.1f} s, server ready in {server.start_s:.1f} s", flush=True)
        try:
            results = measure(server, size, args.queries, args.rounds, args.concurrency)
        finally:
            server.stop()
        for (label, _), res in zip(MODES, results, strict=True):
            rows.append(row(size, label, res))
            print(rows[-1], flush=True)
        plain = server_pct(results[0], "total", 50)
        for (label, _), res in zip(MODES[1:], results[1:], strict=True):
            reranked = server_pct(res, "total", 50)
            ratios.append(
                f"- {size:,}, re-ranked {label.removeprefix('yes ')}: server-side p50 {reranked:.1f} ms "
                f"({reranked / 60.0:.2f}x the 60 ms goal), {reranked / plain:.2f}x plain ({plain:.1f} ms; "
                f"goal <= 3x); client p50 {res.pct(50) / results[0].pct(50):.2f}x plain"
            )
            print(ratios[-1], flush=True)
    load_end = os.getloadavg()
    body = "\n".join([
        f"Command: `{command.strip()}` · date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · load "
        f"average start / end: {' '.join(f'{x:.2f}' for x in load_start)} / "
        f"{' '.join(f'{x:.2f}' for x in load_end)}.",
        machine_line(torch, faiss),
        "",
        f"Server: `sasreid serve` subprocess, tiny checkpoint ({dim}-d descriptors), SQLite store filled "
        "directly with synthetic unit descriptors (10 tracklets per identity), flat FAISS index, re-ranking "
        "graph k = 30 (default k1 / k2 / lambda), search candidates 200. `POST /query` by enrolled "
        f"tracklet_id, top_k 10, {args.concurrency} concurrent clients; {args.rounds} rounds, each a load of "
        f"{args.queries} queries per mode in turn (merged per mode), so the machine's background load hits "
        "all modes alike.",
        "",
        "| gallery | re-ranked | queries | client p50 ms | client p99 ms | server p50 ms | queries/s "
        "| search ms | rerank ms | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "*server p50*: median of the answer's `timings_ms.total` (request received to answer built); "
        "*search* / *rerank*: means of the server's stage timings.",
        "",
        "Goal (issue 12, speed item 1): at 100k a re-ranked query by tracklet_id (the server's default "
        "k1 / k2) has server-side p50 <= 60 ms and costs at most 3x a plain one. k1 20 / k2 6 (Zhong et "
        "al.'s, the service's defaults when the issue's figures were taken) is shown for comparison.",
        "",
        *ratios,
        *([f"\n{args.note}"] if args.note else []),
    ])
    print(body)
    if not args.no_write:
        write_section(SECTION, body, args.results)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
