"""Enrollment throughput over HTTP on loopback, micro-batching on and off (issue 12, item 2).

Two ``sasreid serve`` subprocesses (tiny checkpoint, SQLite stores) run side by side, one with
micro-batching (``--max-batch 8 --max-wait-ms 5``) and one without (``--max-batch 1``); ``--rounds``
alternating loads of ``--per-round`` ``POST /v1/tracklets`` uploads (8 JPEG frames of 128x64 each)
from ``--clients`` client threads hit one server at a time, so background load hits both modes
alike. The mean model batch comes from each server's ``/metrics``. References, in this process:
the model alone (``TorchEncoder.encode``) at batch 1 and 8, and decoding alone
(``service.images.decode_tracklet``), per tracklet.

    python bench/enroll_throughput.py [--per-round 160] [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.bench_service import LoadResult, Server, frames, mean_batch_size, run_load  # noqa: E402
from bench.results import RESULTS, command_line, machine_line, write_section  # noqa: E402
from service.client import SasreidClient  # noqa: E402

SECTION = "Enrollment throughput (CPU)"
MODES = (("on (max_batch 8, max_wait 5 ms)", 8), ("off (max_batch 1)", 1))


def best_ms(fn: Any, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def in_process(checkpoint: Path, uploads: list[list[tuple[str, bytes]]]) -> dict[str, float]:
    """Per-tracklet ms of the model alone at batch 1 and 8, and of decoding alone."""
    from service.encoders import TorchEncoder
    from service.images import FrameLimits, decode_tracklet

    encoder = TorchEncoder(checkpoint)
    limits = FrameLimits(2 << 20, 4096 * 4096, 128 << 20)
    decoded = [decode_tracklet(u, limits, encoder.input_spec) for u in uploads[:8]]
    one, eight = np.stack(decoded[:1]), np.stack(decoded)
    encoder.encode(one), encoder.encode(eight)  # warm-up
    return {
        "model_b1_ms": best_ms(lambda: encoder.encode(one)),
        "model_b8_ms": best_ms(lambda: encoder.encode(eight)) / 8,
        "decode_ms": best_ms(lambda: [decode_tracklet(u, limits, encoder.input_spec) for u in uploads[:8]]) / 8,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-round", type=int, default=160, help="uploads per load")
    parser.add_argument("--rounds", type=int, default=3, help="alternating loads per mode")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())

    import torch

    from model import build_model, save_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench_enroll_"))
    torch.manual_seed(0)
    checkpoint = tmp / "tiny"
    save_checkpoint(build_model("tiny"), checkpoint)
    uploads = [frames(i) for i in range(args.per_round * args.rounds)]
    servers = {mb: Server(checkpoint, f"sqlite:///{tmp / f'enroll{mb}.sqlite'}", tmp / f"enroll{mb}.log",
                          ["--max-batch", str(mb), "--max-wait-ms", "5"]) for _, mb in MODES}
    runs: dict[int, list[LoadResult]] = {mb: [] for _, mb in MODES}
    try:
        for r in range(args.rounds):
            for _, mb in MODES:
                base = r * args.per_round

                def enroll(c: SasreidClient, i: int, base: int = base) -> dict[str, Any]:
                    c.enroll(uploads[base + i], f"p{base + i}", tracklet_id=f"e{base + i}")
                    return {}

                res = run_load(enroll, servers[mb].url, args.per_round, args.clients, 600.0)
                runs[mb].append(res)
                print(f"round {r} max_batch {mb}: {res.throughput:.2f} tracklets/s, errors {res.errors}", flush=True)
        batches = {mb: mean_batch_size(servers[mb].url) for _, mb in MODES}
    finally:
        for srv in servers.values():
            srv.stop()
    ref = in_process(checkpoint, uploads)
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())

    median = {mb: statistics.median(res.throughput for res in runs[mb]) for _, mb in MODES}
    rows = []
    for label, mb in MODES:
        latencies = [ms for res in runs[mb] for ms in res.latencies_ms]
        done = LoadResult(latencies, {}, sum(res.errors for res in runs[mb]), 1.0)
        rows.append(f"| {label} | {args.clients} | {len(latencies)} | {median[mb]:.1f} | "
                    f"{' / '.join(f'{res.throughput:.1f}' for res in runs[mb])} | {done.pct(50):.0f} | "
                    f"{done.pct(99):.0f} | {batches[mb]:.2f} | {done.errors} |")
    model_alone = 1e3 / ref["model_b8_ms"]
    text = "\n".join([
        machine_line(torch),
        "",
        f"Command: `{command_line('enroll_throughput.py', argv)}` · date: "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · load average start / end: {load_start} / {load_end}.",
        "",
        "Two `sasreid serve` subprocesses side by side (tiny checkpoint, 64x32 model input, SQLite store, "
        f"auth on), loads alternating between them: {args.rounds} rounds of {args.per_round} `POST /v1/tracklets` "
        f"uploads of 8 random-pixel JPEG frames of 128x64 (quality 90) from {args.clients} client threads on "
        "loopback (httpx, in this process). The server decodes frames in worker threads (at most "
        "`max_concurrent_decodes` = 2 requests at once) while the embedding worker runs the model; "
        "`mean model batch` is the server's own mean over the run (`/metrics`).",
        "",
        "| micro-batching | clients | tracklets | median tracklets/s | per round | p50 ms | p99 ms | mean model batch | errors |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"In this process, per 8-frame tracklet (best of 3): the model alone {ref['model_b1_ms']:.1f} ms at batch 1, "
        f"{ref['model_b8_ms']:.1f} ms at batch 8 ({model_alone:.0f} tracklets/s); decoding the 8 JPEGs alone "
        f"{ref['decode_ms']:.1f} ms. Ratios: micro-batching on / off {median[8] / median[1]:.2f}x; "
        f"HTTP with micro-batching / the model alone at batch 8 {median[8] / model_alone:.2f}.",
    ])
    print(text)
    if not args.no_write:
        write_section(SECTION, text, RESULTS)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
