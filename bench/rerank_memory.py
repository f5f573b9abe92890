"""Exact k-reciprocal re-ranking beyond 10k gallery items: peak memory and time (issue 12, item 5).

Writes the section "Exact re-ranking beyond 10k (CPU)" of bench/RESULTS.md. Each row runs in a
fresh subprocess (bench.bench_index's data: synthetic clustered 768-d descriptors, Q = G/5; peak
RSS read from VmHWM). For each size, ``k_reciprocal`` runs in two fresh
processes: ``index/rerank.py`` as it was at ``--before`` (git revision; default the commit before
the memory changes) and as it is now; the parent compares the two saved answers element by
element. Reference: the same FLOPs as one N x N distance product (N = Q + G, blocks of 2048 rows,
each block discarded), timed in the process of the current implementation.

    python bench/rerank_memory.py               # G = 10k (Q 2k) and G = 50k (Q 10k)
    python bench/rerank_memory.py --sizes 5000  # quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_index import K1, K2, LAMBDA, make_data, measured  # noqa: E402
from bench.results import RESULTS, command_line, machine_line, module_at, run_json_worker, write_section  # noqa: E402

TITLE = "Exact re-ranking beyond 10k (CPU)"
BEFORE = "a53f24c"  # the last commit before the memory changes of issue 12, item 5


def _total_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmHWM not in /proc/self/status")


def task(g: int, variant: str, out: str) -> dict:
    """One k_reciprocal run at gallery size ``g`` in this fresh process, of the working tree's
    ``index.rerank`` (``variant="now"``) or of the one at git revision ``variant``; the answer is
    saved to ``out`` (.npy) for the parent to compare."""
    import torch

    from index import rerank
    from index.metrics import evaluate_rank

    d = make_data(g)  # Q = G / 5 queries
    qf, gf = d["qf"], d["gf"]
    module = rerank if variant == "now" else module_at(variant, "index/rerank.py")
    answer, seconds, peak = measured(lambda: module.k_reciprocal(qf, gf, K1, K2, LAMBDA))
    result = {"G": len(gf), "Q": len(qf), "variant": variant, "time_s": seconds, "peak_mb": peak,
              "process_peak_mb": _total_peak_mb(), "answer_mb": answer.nbytes / 2**20}
    if variant == "now":
        plain = evaluate_rank(2.0 - 2.0 * qf @ gf.T, d["q_pid"], d["g_pid"], d["q_cam"], d["g_cam"])
        rr = evaluate_rank(answer, d["q_pid"], d["g_pid"], d["q_cam"], d["g_cam"])
        x = torch.from_numpy(np.concatenate([qf, gf]))

        def product() -> None:
            for i0 in range(0, len(x), 2048):
                torch.mm(x[i0:i0 + 2048], x.T)

        result.update(mAP_plain=plain.mAP, mAP_rerank=rr.mAP,
                      product_s=min(measured(product)[1], measured(product)[1]))
    np.save(out, answer)
    return result


def run_worker(g: int, variant: str, out: Path) -> dict:
    return run_json_worker(__file__, {"g": g, "variant": variant, "out": str(out)})


def measure_size(g: int, before_rev: str, tmp: Path) -> dict:
    """Now and ``before_rev`` at gallery size ``g``, each in its own process, and whether they agree."""
    now = run_worker(g, "now", tmp / "now.npy")
    before = run_worker(g, before_rev, tmp / "before.npy")
    a, b = np.load(tmp / "now.npy", mmap_mode="r"), np.load(tmp / "before.npy", mmap_mode="r")
    diff = max(float(np.abs(a[i:i + 1000] - b[i:i + 1000]).max()) for i in range(0, len(a), 1000))
    return {"G": now["G"], "Q": now["Q"], "answer_mb": now["answer_mb"], "time_new_s": now["time_s"],
            "time_old_s": before["time_s"], "peak_new_mb": now["peak_mb"], "peak_old_mb": before["peak_mb"],
            "total_peak_new_mb": now["process_peak_mb"], "total_peak_old_mb": before["process_peak_mb"],
            "identical": diff == 0.0, "max_abs_diff": diff, "product_s": now["product_s"],
            "mAP_plain": now["mAP_plain"], "mAP_rerank": now["mAP_rerank"]}


def render(rows: list[dict], command: str, load: tuple[str, str], before: str) -> str:
    import torch

    lines = [
        machine_line(np, torch),
        "",
        f"Command: `{command}` · date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Load average at start / end: {load[0]} / {load[1]} (the machine is shared with other jobs, so times are "
        "upper bounds).",
        "",
        f"`index.rerank.k_reciprocal` (k1={K1}, k2={K2}, lambda={LAMBDA}) on synthetic clustered 768-d unit descriptors "
        f"(bench/bench_index.py's data), float32. *before*: `index/rerank.py` at `{before}` (the dense block of "
        "Jaccard sums bounded by the number of (query entry, gallery entry) pairs only, and the augmented "
        "[x, |x|^2, 1] rows of the distance products made for all N at once); *now*: both per block "
        "(Jaccard sums at most 64 MiB), the gallery side of the Jaccard step in int32 ids, 1M pairs per "
        "chunk instead of 4M; each variant in its own fresh process. MB = MiB. Peak = growth of the process's peak RSS "
        "(VmHWM) over its RSS before the call (the inputs are already loaded); process peak = the whole "
        "process's VmHWM after the call (Python, torch, inputs, answer). The answer itself is a dense float32 [Q, G] array. Reference: the FLOPs of one "
        "N x N distance product (N = Q + G) in blocks of 2048 rows, same process.",
        "",
        "| G | Q | answer (MB) | peak before (MB) | peak now (MB) | process peak before (MB) | process peak now (MB) | "
        "time before (s) | time now (s) | N x N product (s) | now / product | same answer | mAP plain | mAP re-ranked |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in rows:
        same = "yes (bit-identical)" if r["identical"] else f"max diff {r['max_abs_diff']:.2e}"
        lines.append(
            f"| {r['G']:,} | {r['Q']:,} | {r['answer_mb']:,.0f} | {r['peak_old_mb']:,.0f} | {r['peak_new_mb']:,.0f} | "
            f"{r['total_peak_old_mb']:,.0f} | {r['total_peak_new_mb']:,.0f} | {r['time_old_s']:.1f} | {r['time_new_s']:.1f} | {r['product_s']:.1f} | "
            f"{r['time_new_s'] / r['product_s']:.2f}x | {same} | {r['mAP_plain']:.4f} | {r['mAP_rerank']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000", help="gallery sizes G (Q = G / 5), comma-separated")
    parser.add_argument("--before", default=BEFORE, help=f"git revision of the reference implementation (default {BEFORE})")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(task(**spec)))
        return
    sizes = [int(v) for v in args.sizes.split(",")]
    load0 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure_size(g, args.before, Path(tmp)) for g in sizes]
    load1 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = render(rows, command_line("rerank_memory.py", argv), (load0, load1), args.before)
    write_section(TITLE, text, RESULTS)
    print(text)


if __name__ == "__main__":
    main()
