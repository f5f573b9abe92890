"""Start of ``sasreid serve`` to ``/readyz`` 200 with a durable re-ranking graph (issue 10, item 3).

For each gallery size (synthetic unit descriptors of dim 768, 10 tracklets per identity, written
straight into a SQLite store with the checkpoint's fingerprint):

1. first start: no graph in the store yet, so the server builds it from all descriptors and saves
   it (what every start did before the graph was kept in the store, plus one save);
2. restart after a clean stop (SIGTERM): the stored graph is loaded, nothing to catch up;
3. restart after a kill -9 that followed ``--unsaved`` bulk-imported tracklets the server had not
   saved yet (fewer than ``index.graph_store.SAVE_EVERY``, imported within ``SAVE_AFTER_S``): the
   stored graph is loaded and caught up.

The checkpoint is the tiny preset with its backbone output widened so descriptors are 768-d
(untrained weights: the start path does not depend on them). The server logs at INFO, so which
path the graph took is read from its log line, not inferred from timing.

Writes the section "## Gallery start with a durable re-ranking graph" of bench/RESULTS.md
(``--no-write`` to skip). ``--quick``: 10k only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.bench_service import Server, records  # noqa: E402
from bench.results import machine_line, write_section  # noqa: E402

SECTION = "Gallery start with a durable re-ranking graph"
DIM = 768
_GRAPH_LINE = re.compile(r"re-ranking graph (loaded from the store|rebuilt and saved to the store)[^\n]*")


def checkpoint_768(path: Path) -> str:
    """Save the tiny preset widened to 768-d descriptors; returns its fingerprint."""
    import torch

    from model import build_model, load_checkpoint, save_checkpoint
    from model.config import ModelConfig

    cfg = ModelConfig.preset("tiny")
    # descriptor = backbone output + MGTM (64) + shape betas (10) dims
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, output_dim=DIM - 74))
    torch.manual_seed(0)
    model = build_model(cfg)
    if model.descriptor_dim != DIM:
        raise RuntimeError(f"widened tiny preset gives {model.descriptor_dim}-d descriptors, not {DIM}")
    save_checkpoint(model, path)
    return str(load_checkpoint(path).fingerprint)


def fill(store_path: Path, size: int, fingerprint: str) -> float:
    """Write ``size`` synthetic records into a new SQLite store; returns seconds."""
    from index.store import Record, SQLiteStore

    t0 = time.perf_counter()
    store = SQLiteStore(store_path)
    try:
        for lo in range(0, size, 5000):
            batch = records(lo, min(size, lo + 5000), DIM, fingerprint, seed=lo)
            store.put_many([
                Record(
                    tracklet_id=r["tracklet_id"], identity=r["identity"], camera=r["camera"],
                    platform=r["platform"], session=None, num_frames=8, fingerprint=fingerprint,
                    descriptor=np.asarray(r["descriptor"], dtype=np.float32),
                    content_hash=f"h-{r['tracklet_id']}",
                )
                for r in batch
            ])
    finally:
        store.close()
    return time.perf_counter() - t0


def graph_line(log: Path, skip: int) -> tuple[str, int]:
    """The newest graph log line written after byte ``skip``, and the log's size now."""
    text = log.read_text(errors="replace")
    lines = [m.group(0) for m in _GRAPH_LINE.finditer(text[skip:])]
    return (lines[-1] if lines else "(no graph log line)"), len(text)


def start(checkpoint: Path, store: str, log: Path) -> tuple[Server, float, str]:
    skip = log.stat().st_size if log.exists() else 0
    server = Server(checkpoint, store, log, ["--log-level", "info"])
    line, _ = graph_line(log, skip)
    return server, server.start_s, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="gallery sizes")
    parser.add_argument("--quick", action="store_true", help="10k only")
    parser.add_argument("--unsaved", type=int, default=200, help="tracklets imported before the kill -9")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    command = "python bench/graph_start.py " + " ".join(sys.argv[1:])
    load_start = os.getloadavg()
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench_graph_start_"))
    checkpoint = tmp / "tiny768"
    fingerprint = checkpoint_768(checkpoint)
    print(f"work dir {tmp}, fingerprint {fingerprint}", flush=True)
    rows: list[str] = []
    for size in sizes:
        db = tmp / f"g{size}.sqlite"
        store = f"sqlite:///{db}"
        fill_s = fill(db, size, fingerprint)
        log = tmp / f"serve{size}.log"
        print(f"{size}: store filled in {fill_s:.1f}s", flush=True)
        server, first_s, first_line = start(checkpoint, store, log)
        server.stop()
        print(f"{size}: first start {first_s:.1f}s: {first_line}", flush=True)
        server, clean_s, clean_line = start(checkpoint, store, log)
        print(f"{size}: restart {clean_s:.1f}s: {clean_line}", flush=True)
        with server.client() as client:
            client.import_batch(records(size, size + args.unsaved, DIM, fingerprint, seed=size))
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        server, crash_s, crash_line = start(checkpoint, store, log)
        server.stop()
        print(f"{size}: restart after kill -9 {crash_s:.1f}s: {crash_line}", flush=True)
        rows.append(
            f"| {size:,} | {fill_s:.0f} | {first_s:.1f} | {clean_s:.1f} | {crash_s:.1f} "
            f"| {first_line} / {clean_line} / {crash_line} |"
        )
    load_end = os.getloadavg()
    body = "\n".join([
        machine_line(torch, np),
        "",
        f"Command: `{command}` · date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · load average "
        f"start / end: {' '.join(f'{x:.2f}' for x in load_start)} / {' '.join(f'{x:.2f}' for x in load_end)}.",
        "",
        "Server: `sasreid serve` subprocess, SQLite store, FAISS flat, re-ranking graph k = 30, a tiny checkpoint "
        f"widened to {DIM}-d descriptors (untrained), synthetic unit descriptors. Times are from process start "
        "to `/readyz` 200 (model load, FAISS index from the store, re-ranking graph). *First start*: no graph in "
        "the store, so it is built from all descriptors and saved (every start did this before the graph was "
        "kept in the store). *Restart*: after SIGTERM, the stored graph is loaded. *After kill -9*: "
        f"{args.unsaved} tracklets bulk-imported and not yet saved, then kill -9; the restart catches them up.",
        "",
        "| tracklets | store fill s | first start s (graph built) | restart s (graph loaded) | "
        "restart after kill -9 s (caught up) | server's graph log lines |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    if not args.no_write:
        write_section(SECTION, body, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
