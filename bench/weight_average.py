"""Weight averaging on real images: the averaged weights against the last iterate of the same runs.

A run trained with ``sasreid train --weight-average DECAY`` serves the exponential moving average of
its weights as ``final/`` and keeps the last iterate in ``checkpoints/epoch_N`` (N = its epochs), so
one run gives a paired comparison: both are evaluated on the standard protocol and camera-centred
(``sasreid evaluate --camera-centring``), without re-ranking. Writes the section "Weight averaging
on real images (PETA-dev)" of bench/RESULTS.md.

    python bench/weight_average.py --data ../shared/data/peta-dev --runs runs/s0_wa runs/s1_wa
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import loadavg
from camera_centring import run_label
from real_images import branch_table
from results import command_line, finished_runs_parser, machine_line, write_section

from model.engine.config import TrainConfig
from model.engine.evaluate import evaluate_checkpoint
from model.engine.report import EvalReport, markdown_table
from model.engine.runlog import LOG_NAME, read_log
from model.engine.state import epoch_dir
from model.engine.trainer import CONFIG_FILE, FINAL_DIR

SECTION = "Weight averaging on real images (PETA-dev)"


def checkpoints_of(run: Path) -> list[tuple[str, Path]]:
    """``[("average", final/), ("last iterate", checkpoints/epoch_N)]`` of a weight-averaged run."""
    cfg = TrainConfig.load(run / CONFIG_FILE)
    if cfg.weight_average is None:
        raise SystemExit(f"{run}: not trained with --weight-average (train_config.json has weight_average null)")
    last = epoch_dir(run, cfg.epochs)
    if not (last / "config.json").is_file():
        raise SystemExit(f"{run}: no last-iterate checkpoint {last}")
    return [(f"average (decay {cfg.weight_average:g})", run / FINAL_DIR), ("last iterate", last)]


def train_minutes(run: Path) -> float | None:
    ends = [r for r in read_log(run / LOG_NAME) if r["event"] == "end"]
    return ends[-1]["train_seconds"] / 60 if ends else None


def main(argv: list[str] | None = None) -> int:
    args = finished_runs_parser(__doc__, "runs trained with --weight-average").parse_args(argv)
    command = command_line("weight_average.py", argv)
    start_load = loadavg()
    named: list[tuple[str, EvalReport]] = []
    figures: dict[str, dict[str, float]] = {}
    for run in args.runs:
        label = run_label(run)
        for weights, checkpoint in checkpoints_of(run):
            for centred in (False, True):
                name = f"{label}: {weights}" + (", camera-centred" if centred else "")
                report = evaluate_checkpoint(args.data, checkpoint, rerank=False, progress=False,
                                             camera_centring=centred)
                named.append((name, report))
                figures[name] = {"mAP-3": report.map3[0]}
    means = {}
    for weights in ("average", "last iterate"):
        for centred in (False, True):
            picked = [figures[n]["mAP-3"] for n in figures
                      if f": {weights}" in n and n.endswith("camera-centred") == centred]
            means[(weights, centred)] = float(np.mean(picked))
    times = ", ".join(f"{run_label(r)}: {m:.1f} min" for r in args.runs if (m := train_minutes(r)) is not None)
    body = "\n".join([
        machine_line(torch),
        "",
        f"Command: `{command}` · date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · load average "
        f"start / end: {start_load} / {loadavg()}.",
        "",
        "Each run was trained once with `--weight-average`; `final/` holds the exponential moving average of "
        "the weights (`model/engine/weight_average.py`), `checkpoints/epoch_N` the last iterate of the same "
        "run, so every pair below differs only in the weights served. No re-ranking. Camera-centred rows use "
        "the transductive protocol of the section above. Reference rows (dataset README, standard protocol): "
        "colour histogram 7.6, pretrained OSNet-x0.25 31.4 mAP-3.",
        "",
        markdown_table(named),
        "",
        f"mAP-3 mean over {len(args.runs)} run(s), standard protocol: average {means[('average', False)]:.2f}, "
        f"last iterate {means[('last iterate', False)]:.2f}; camera-centred: average "
        f"{means[('average', True)]:.2f}, last iterate {means[('last iterate', True)]:.2f}.",
        f"Training time (while other jobs shared the 2 cores): {times}." if times else "",
        "",
        "Each branch alone (standard protocol):",
        "",
        branch_table([{"name": n, "report": r} for n, r in named if not n.endswith("camera-centred")]),
        *(["", args.notes] if args.notes else []),
    ])
    write_section(SECTION, body, args.results)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
