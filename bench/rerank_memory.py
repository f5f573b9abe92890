"""Exact k-reciprocal re-ranking beyond 10k gallery items: peak memory and time (issue 12, item 5).

Writes the section "Exact re-ranking beyond 10k (CPU)" of bench/RESULTS.md. Each row runs in a
fresh subprocess (bench.bench_index's data: synthetic clustered 768-d descriptors, Q = G/5; peak
RSS read from VmHWM). For each size, ``index.rerank.k_reciprocal`` runs twice in
the same process: as before this change (the dense [rows, G] block of Jaccard sums bounded by pairs
only: ``_SUM_CHUNK`` unbounded) and as now (that block also bounded by rows, 64 MiB), and the two
answers are compared element by element. Reference: the same FLOPs as one N x N distance product
(N = Q + G, blocks of 2048 rows, each block discarded), timed in the same process.

    python bench/rerank_memory.py               # G = 10k (Q 2k) and G = 50k (Q 10k)
    python bench/rerank_memory.py --sizes 5000  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_index import K1, K2, LAMBDA, make_data, measured  # noqa: E402
from bench.results import RESULTS, command_line, machine_line, write_section  # noqa: E402

TITLE = "Exact re-ranking beyond 10k (CPU)"


def _total_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmHWM not in /proc/self/status")


def task(g: int) -> dict:
    import torch

    from index import rerank
    from index.metrics import evaluate_rank

    d = make_data(g)  # Q = G / 5 queries
    qf, q_pid, q_cam = d["qf"], d["q_pid"], d["q_cam"]
    gf = d["gf"]

    def run() -> np.ndarray:
        return rerank.k_reciprocal(qf, gf, K1, K2, LAMBDA)

    inputs_mb = (qf.nbytes + gf.nbytes) / 2**20
    answer_mb = len(qf) * len(gf) * 4 / 2**20
    new, t_new, peak_new = measured(run)
    total_new = _total_peak_mb()
    plain = evaluate_rank(2.0 - 2.0 * qf @ gf.T, q_pid, d["g_pid"], q_cam, d["g_cam"])
    rr = evaluate_rank(new, q_pid, d["g_pid"], q_cam, d["g_cam"])
    bound = rerank._SUM_CHUNK
    rerank._SUM_CHUNK = 1 << 62  # as before: only the pair count bounds a chunk
    old, t_old, peak_old = measured(run)
    rerank._SUM_CHUNK = bound
    same = bool(np.array_equal(old, new))
    max_diff = float(np.abs(old - new).max())
    del old, new
    x = torch.from_numpy(np.concatenate([qf, gf]))

    def product() -> None:
        for i0 in range(0, len(x), 2048):
            torch.mm(x[i0:i0 + 2048], x.T)

    _, t_mm, _ = measured(product)
    t_mm = min(t_mm, measured(product)[1])
    return {"G": len(gf), "Q": len(qf), "time_new_s": t_new, "time_old_s": t_old, "peak_new_mb": peak_new,
            "peak_old_mb": peak_old, "total_peak_new_mb": total_new, "inputs_mb": inputs_mb, "answer_mb": answer_mb,
            "identical": same, "max_abs_diff": max_diff, "product_s": t_mm, "mAP_plain": plain.mAP,
            "mAP_rerank": rr.mAP}


def run_worker(g: int) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({"g": g})]
    print(f"  G={g} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker G={g} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"    {result}", flush=True)
    return result


def render(rows: list[dict], command: str, load: tuple[str, str]) -> str:
    import torch

    lines = [
        machine_line(np, torch),
        "",
        f"Command: `{command}` · date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Load average at start / end: {load[0]} / {load[1]} (the machine is shared with other jobs, so times are "
        "upper bounds).",
        "",
        f"`index.rerank.k_reciprocal` (k1={K1}, k2={K2}, lambda={LAMBDA}) on synthetic clustered 768-d unit descriptors "
        "(bench/bench_index.py's data), float32, each size in a fresh process. *before*: the dense block of "
        "Jaccard sums bounded by the number of (query entry, gallery entry) pairs only; *now*: also by rows, "
        "64 MiB per block. Peak = growth of the process's peak RSS (VmHWM) over its RSS before the call "
        "(the inputs are already loaded); process peak = the whole process's VmHWM after the *now* run (Python, "
        "torch, inputs, answer). The answer itself is a dense float32 [Q, G] array. Reference: the FLOPs of one "
        "N x N distance product (N = Q + G) in blocks of 2048 rows, same process.",
        "",
        "| G | Q | answer (MB) | peak before (MB) | peak now (MB) | process peak now (MB) | time before (s) | "
        "time now (s) | N x N product (s) | now / product | same answer | mAP plain | mAP re-ranked |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in rows:
        same = "yes (bit-identical)" if r["identical"] else f"max diff {r['max_abs_diff']:.2e}"
        lines.append(
            f"| {r['G']:,} | {r['Q']:,} | {r['answer_mb']:,.0f} | {r['peak_old_mb']:,.0f} | {r['peak_new_mb']:,.0f} | "
            f"{r['total_peak_new_mb']:,.0f} | {r['time_old_s']:.1f} | {r['time_new_s']:.1f} | {r['product_s']:.1f} | "
            f"{r['time_new_s'] / r['product_s']:.2f}x | {same} | {r['mAP_plain']:.4f} | {r['mAP_rerank']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000", help="gallery sizes G (Q = G / 5), comma-separated")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(task(**spec)))
        return
    sizes = [int(v) for v in args.sizes.split(",")]
    load0 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rows = [run_worker(g) for g in sizes]
    load1 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = render(rows, command_line("bench/rerank_memory.py", argv), (load0, load1))
    write_section(TITLE, text, RESULTS)
    print(text)


if __name__ == "__main__":
    main()
