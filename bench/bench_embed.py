"""Embedding throughput on this CPU: torch vs ONNX Runtime, batch 1 and 8, same process.

    python bench/bench_embed.py [--configs tiny vit-b-16:1] [--repeats 5] [--batches 1 8] [--no-onnx]

A config may name its own batch sizes (``vit-b-16:1`` or ``tiny:1,8``); otherwise ``--batches``.

Weights are random (timing does not depend on their values). For each config: build a model,
save it as a checkpoint, export it to ONNX, then time ``model.embed`` (torch, float32) and an
ONNX Runtime session on the same 8-frame inputs. Writes the "Model embedding (CPU)" section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.results import machine_line, write_section
from model import ModelConfig, build_model, save_checkpoint

FRAMES = 8


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_config(name: str, repeats: int, onnx: bool, batches: tuple[int, ...] = (1, 8)) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset(name)).eval()
    h, w = model.input_size
    rows = []
    session = None
    export_s = None
    if onnx:
        import onnxruntime as ort

        from model.export import export_onnx

        tmp = Path(tempfile.mkdtemp())
        save_checkpoint(model, tmp / "ckpt")
        t0 = time.perf_counter()
        export_onnx(tmp / "ckpt", tmp / "m.onnx", frames=FRAMES)
        export_s = time.perf_counter() - t0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(tmp / "m.onnx"), opts, providers=["CPUExecutionProvider"])
    for batch in batches:
        x = torch.randn(batch, FRAMES, 3, h, w)
        t_torch = _time(lambda x=x: model.embed(x, autocast=False), repeats)
        row = {"config": name, "batch": batch, "torch_s": t_torch, "torch_tps": batch / t_torch,
               "onnx_s": None, "onnx_tps": None, "ratio": None, "export_s": export_s}
        if session is not None:
            xn = x.numpy()
            t_onnx = _time(lambda xn=xn: session.run(None, {"frames": xn}), repeats)
            diff = float(np.abs(session.run(None, {"frames": xn})[0] - model.embed(x, autocast=False).numpy()).max())
            row.update(onnx_s=t_onnx, onnx_tps=batch / t_onnx, ratio=t_torch / t_onnx, max_diff=diff)
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["tiny", "vit-b-16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--notes", default="", help="free text appended to the section")
    args = ap.parse_args()
    rows = []
    for spec in args.configs:
        name, _, sizes = spec.partition(":")
        batches = tuple(int(b) for b in sizes.split(",")) if sizes else tuple(args.batches)
        rows += bench_config(name, args.repeats, not args.no_onnx, batches)
    lines = [
        machine_line(),
        f"Command: `python bench/bench_embed.py --configs {' '.join(args.configs)} --repeats {args.repeats} "
        f"--batches {' '.join(map(str, args.batches))}{' --no-onnx' if args.no_onnx else ''}` on {time.strftime('%Y-%m-%d')}, torch {torch.__version__}"
        f" ({torch.get_num_threads()} threads), Python {platform.python_version()}.",
        "One tracklet = 8 frames at the config's input size; random weights; float32; median of "
        f"{args.repeats} runs after a warm-up. `ratio` = torch time / ONNX Runtime time (>1: ORT faster).",
        "",
        "| config | batch | torch s/call | torch tracklets/s | ORT s/call | ORT tracklets/s | ratio | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in rows:
        lines.append(f"| {r['config']} | {r['batch']} | {r['torch_s']:.3f} | {r['torch_tps']:.2f} | "
                     f"{f(r['onnx_s'], '.3f')} | {f(r['onnx_tps'], '.2f')} | {f(r['ratio'], '.2f')} | "
                     f"{f(r.get('max_diff'), '.1e')} |")
    exports = {r["config"]: r["export_s"] for r in rows if r["export_s"]}
    if exports:
        lines.append("")
        lines.append("ONNX export time (incl. parity check): " +
                     ", ".join(f"{k} {v:.0f} s" for k, v in exports.items()) + ".")
    if args.notes:
        lines += ["", args.notes]
    write_section("Model embedding (CPU)", "\n".join(lines))


if __name__ == "__main__":
    main()
