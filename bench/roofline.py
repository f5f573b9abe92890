"""Roofline of CPU embedding: achieved GFLOP/s of ``model.embed`` against a bare matmul's, same process.

    python bench/roofline.py [--config vit-b-16] [--batches 1 8] [--repeats 5] [--before REV]

For each batch size, interleaved ``--repeats`` times (so drift in the machine's speed hits all
three alike), the fastest of:

- ``now``: ``model.embed`` on 8-frame tracklets (random weights, float32);
- ``before``: the same model with the Mamba mixer of ``model/mamba.py`` as it was at git
  revision ``--before`` (the weights copied over, so the descriptors must agree);
- ``bare matmul``: one ``[1032, 768] @ [768, 3072]`` float32 product, the shape of vit-b-16's
  MLP on 8 frames of 129 tokens, i.e. what this CPU's BLAS does at its best on the model's
  dominant operation.

GFLOP/s = ``sasreid model-info``'s FLOP count (matmuls, convolutions and attention; a
multiply-add counts 2) x batch / seconds. Writes the "Embedding roofline (CPU)" section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.results import machine_line, module_at, write_section
from model import ModelConfig, build_model
from model.info import model_info

BEFORE = "dcae580"  # the last commit with the last-axis chunked scan
FRAMES = 8
MATMUL = (1032, 768, 3072)


def build_pair(config: str, rev: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model now, and the same weights with ``rev``'s Mamba mixer in every MGTM block."""
    import model.temporal as temporal

    torch.manual_seed(0)
    now = build_model(ModelConfig.preset(config)).eval()
    current = temporal.Mamba
    temporal.Mamba = module_at(rev, "model/mamba.py").Mamba  # BiMamba builds its mixers from this name
    try:
        before = build_model(ModelConfig.preset(config)).eval()
    finally:
        temporal.Mamba = current
    before.load_state_dict(now.state_dict())
    return now, before


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(config: str, batches: list[int], repeats: int, rev: str) -> list[dict]:
    now, before = build_pair(config, rev)
    # Counted on the meta device as `sasreid model-info` does: on the CPU, FlopCounterMode misses the
    # fused attention kernels, and all-zero frames would run through the backbone once.
    gflops = model_info(ModelConfig.preset(config), config, FRAMES).gflops
    h, w = now.input_size
    m, k, n = MATMUL
    a, b = torch.randn(m, k), torch.randn(k, n)
    rows = []
    for batch in batches:
        x = torch.randn(batch, FRAMES, 3, h, w)
        with torch.inference_mode():
            ref = before.embed(x, autocast=False)  # warm-up of both, and their agreement
            diff = float((now.embed(x, autocast=False) - ref).abs().max())
            a @ b
            t_now, t_before, t_mm = [], [], []
            for _ in range(repeats):
                t_now.append(_timed(lambda x=x: now.embed(x, autocast=False)))
                t_before.append(_timed(lambda x=x: before.embed(x, autocast=False)))
                t_mm.append(min(_timed(lambda: a @ b) for _ in range(10)))
        mm_gflops = 2 * m * k * n / min(t_mm) / 1e9
        row = {"config": config, "batch": batch, "gflops": gflops * batch, "now_s": min(t_now),
               "before_s": min(t_before), "matmul_gflops": mm_gflops, "max_diff": diff}
        row["now_gflops"] = row["gflops"] / row["now_s"]
        row["before_gflops"] = row["gflops"] / row["before_s"]
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="vit-b-16")
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--before", default=BEFORE, help=f"git revision of the reference Mamba mixer (default {BEFORE})")
    ap.add_argument("--notes", default="", help="free text appended to the section")
    args = ap.parse_args(argv)
    rows = measure(args.config, args.batches, args.repeats, args.before)
    lines = [
        machine_line(torch) + f" {torch.get_num_threads()} torch threads.",
        f"Command: `python bench/roofline.py --config {args.config} --batches {' '.join(map(str, args.batches))} "
        f"--repeats {args.repeats} --before {args.before}` on {time.strftime('%Y-%m-%d')}.",
        f"Fastest of {args.repeats} interleaved runs each; 8-frame tracklets, random weights, float32. GFLOPs from "
        "`sasreid model-info` (matmuls, convolutions, attention; multiply-add = 2). Bare matmul: "
        f"`[{MATMUL[0]}, {MATMUL[1]}] @ [{MATMUL[1]}, {MATMUL[2]}]` (vit-b-16's MLP shape) in the same process. "
        f"`before`: the same weights with `model/mamba.py` at `{args.before}` (scan along the last axis).",
        "",
        "| config | batch | GFLOPs / call | now s | now GFLOP/s | before s | before GFLOP/s | bare matmul GFLOP/s "
        "| now / matmul | before / matmul | speed-up | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['batch']} | {r['gflops']:.1f} | {r['now_s']:.3f} | {r['now_gflops']:.1f} | "
            f"{r['before_s']:.3f} | {r['before_gflops']:.1f} | {r['matmul_gflops']:.1f} | "
            f"{100 * r['now_gflops'] / r['matmul_gflops']:.0f}% | {100 * r['before_gflops'] / r['matmul_gflops']:.0f}% | "
            f"{r['before_s'] / r['now_s']:.2f}x | {r['max_diff']:.1e} |")
    if args.notes:
        lines += ["", args.notes]
    write_section("Embedding roofline (CPU)", "\n".join(lines))


if __name__ == "__main__":
    main()
