"""Accuracy on real images (PETA-dev or any DetReIDX-layout root), written to bench/RESULTS.md.

Parts (``--parts``, default all three):

- ``reference``: random descriptors (chance, 20 draws) and the HSV colour-histogram baseline of
  ``baseline_color_hist.py``, measured here; the dataset README's rows (its own histogram and a
  pretrained OSNet) are quoted in the section text;
- ``default``: the default CPU recipe (``sasreid train --config small``) once per ``--seeds``
  entry, each evaluated without and with re-ranking (the ``RerankParams()`` defaults) and with
  the VReID-XFD organisers' scorer, plus every descriptor branch alone (v_i, h_M, f_S, fused)
  from the same descriptors; the first seed's descriptors also rank a small re-ranking grid (k1,
  k2), the validation behind the re-ranking defaults;
- ``ablation``: ``--no-mgtm``, ``--no-prsd``, ``--no-memory``, ``--input-norm dataset`` (frames
  normalised by the dataset mean and std only, as before the per-frame standardisation) and the papers' training settings
  (memory on raw v_i at tau 1, branch gradients into the backbone) on the same recipe and
  budget (``--ablation-epochs``, default the recipe's), first seed; the full model is the default
  recipe's first-seed run when the budgets agree, else trained at the ablation budget too.

Each run trains into ``--out/<name>`` with its descriptor cache inside the run folder, so the
re-ranked and grid evaluations embed nothing again. ``--reuse`` keeps a finished run whose
``train_config.json`` equals the configuration (training is deterministic for a configuration
and seed, up to thread scheduling), so an interrupted benchmark resumes where it stopped.

    python bench/real_images.py --data ../shared/data/peta-dev --out runs/real --results bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import chance_report, loadavg, parse_seeds, seed_spread
from baseline_color_hist import evaluate_color_hist
from results import machine_line, write_section

from model.engine.config import TrainConfig
from model.engine.datasets import load_reid_data
from model.engine.evaluate import evaluate_checkpoint
from model.engine.evaluator import RerankParams
from model.engine.report import FUSED, EvalReport, map_means, markdown_table
from model.engine.runlog import LOG_NAME, read_log
from model.engine.trainer import CONFIG_FILE, Trainer

SECTION = "Accuracy on real images (PETA-dev)"
PARTS = ("reference", "default", "ablation")
ABLATIONS: dict[str, dict[str, Any]] = {
    "--no-mgtm": {"mgtm": False},
    "--no-prsd": {"prsd": False},
    "--no-memory": {"memory": False},
    "--input-norm dataset (no per-frame standardisation)": {"input_norm": "dataset"},
    "papers' training settings (--memory-input raw --memory-temperature 1 --branch-grad full)":
        {"memory_input": "raw", "memory_temperature": 1.0, "branch_grad": "full"},
}
# (k1, k2) pairs ranked on the first seed's descriptors; lambda stays RerankParams()'s.
RERANK_GRID: tuple[tuple[int, int], ...] = ((20, 6), (10, 4), (6, 3), (4, 2), (3, 1))


def finished_run(run_dir: Path, cfg: TrainConfig) -> float | None:
    """The training seconds of a finished run of exactly ``cfg`` in ``run_dir``, else None."""
    config, log = run_dir / CONFIG_FILE, run_dir / LOG_NAME
    if not (run_dir / "final").is_dir() or not config.is_file() or not log.is_file():
        return None
    if json.loads(config.read_text()) != json.loads(json.dumps(cfg.to_dict())):
        return None
    ends = [r for r in read_log(log) if r.get("event") == "end"]
    return float(ends[-1]["train_seconds"]) if ends else None


def train_and_evaluate(name: str, cfg: TrainConfig, data: Path, run_dir: Path, reuse: bool) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (or reuse a finished identical run), then evaluate final/
    with re-ranking and the organisers' scorer from the run's descriptor cache."""
    cache = run_dir / "descriptor-cache"
    seconds = finished_run(run_dir, cfg) if reuse else None
    if seconds is None:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"== {name}: training {cfg.epochs} epochs into {run_dir}", flush=True)
        seconds = Trainer(cfg, data, run_dir, cache_dir=cache).fit().train_seconds
    else:
        print(f"== {name}: reusing the finished run in {run_dir}", flush=True)
    start = time.perf_counter()
    report = evaluate_checkpoint(data, run_dir / "final", rerank=True, frames=cfg.eval_frames,
                                 batch_size=cfg.eval_batch_size, cache_dir=cache, progress=cfg.progress,
                                 leaderboard=True)
    return {"name": name, "report": report, "train_seconds": seconds,
            "eval_seconds": time.perf_counter() - start, "run_dir": str(run_dir), "epochs": cfg.epochs}


def rerank_grid(data: Path, row: dict[str, Any], cfg: TrainConfig) -> list[dict[str, Any]]:
    """mAP-3 of the run in ``row`` re-ranked with each (k1, k2) of RERANK_GRID (cached descriptors)."""
    out = []
    lam = RerankParams().lambda_value
    for k1, k2 in RERANK_GRID:
        rep = evaluate_checkpoint(data, Path(row["run_dir"]) / "final", rerank=True, k1=k1, k2=k2, lambda_value=lam,
                                  frames=cfg.eval_frames, batch_size=cfg.eval_batch_size,
                                  cache_dir=Path(row["run_dir"]) / "descriptor-cache", progress=False, branches=False)
        assert rep.map3_reranked is not None
        out.append({"k1": k1, "k2": k2, "lambda": lam, "plain": rep.map3[0], "reranked": rep.map3_reranked[0],
                    "cases": [c.reranked.mAP for c in rep.cases if c.reranked is not None]})
    return out


def branch_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each branch alone and fused, per case mAP and mAP-3 (unweighted), one row per run."""
    lines: list[str] = []
    for r in rows:
        report: EvalReport = r["report"]
        if not report.branches:
            continue
        if not lines:
            labels = [c.label for c in report.cases]
            lines = ["| run | descriptor | " + " | ".join(f"{lb} mAP" for lb in labels) + " | mAP-3 |",
                     "|:---|:---|" + "---:|" * (len(labels) + 1)]
        entries = [(b.label, b.cases) for b in report.branches] + [(FUSED, [c.plain for c in report.cases])]
        for label, metrics in entries:
            lines.append(f"| {r['name']} | {label} | " + " | ".join(f"{m.mAP:.2f}" for m in metrics)
                         + f" | {map_means(metrics)[0]:.2f} |")
    return "\n".join(lines)


def scorer_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the VReID-XFD organisers' scorer beside the standard mAP-3 (no re-ranking)."""
    lines = ["| run | standard mAP-3 | scorer mAP per case | scorer mAP-3 |", "|:---|---:|:---|---:|"]
    for r in rows:
        report: EvalReport = r["report"]
        metrics = report.scorer_metrics()
        if metrics is None:
            continue
        lines.append(f"| {r['name']} | {report.map3[0]:.2f} | " + " / ".join(f"{m.mAP:.2f}" for m in metrics)
                     + f" | {map_means(metrics)[0]:.2f} |")
    return "\n".join(lines)


def grid_table(grid: list[dict[str, Any]], labels: list[str]) -> str:
    lines = ["| k1 | k2 | lambda | " + " | ".join(f"{lb} mAP" for lb in labels) + " | mAP-3 re-ranked | mAP-3 plain |",
             "|---:|---:|---:|" + "---:|" * (len(labels) + 2)]
    for g in grid:
        lines.append(f"| {g['k1']} | {g['k2']} | {g['lambda']:g} | " + " | ".join(f"{m:.2f}" for m in g["cases"])
                     + f" | {g['reranked']:.2f} | {g['plain']:.2f} |")
    return "\n".join(lines)


def times_text(rows: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['name']}: train {r['train_seconds'] / 60:.1f} min" for r in rows if "train_seconds" in r)


def recipe_text(cfg: TrainConfig) -> str:
    return (f"`sasreid train --config small`: epochs {cfg.epochs}, P={cfg.p} x K={cfg.k} x T={cfg.seq_len}, Adam lr "
            f"{cfg.lr_new:g} for all parameters (from scratch), warm-up {cfg.warmup_iters} it from "
            f"{cfg.warmup_start_lr:g}, {cfg.schedule} schedule, weight decay {cfg.weight_decay:g}, random "
            f"translation +-{cfg.crop_pad} px, flip {cfg.flip_p:g}, erasing {cfg.erase_p:g}")


def data_summary(data: Path) -> str:
    d = load_reid_data(data)
    cases = ", ".join(f"{c.label} {len(c.query)} queries / {len(c.gallery)} gallery" for c in d.cases)
    return f"{len(d.train)} training tracklets of {d.num_train_pids} identities; {cases}"


def _meta(command: str) -> dict[str, str]:
    return {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": loadavg()}


def _part_meta(part: dict[str, Any]) -> str:
    m = part["meta"]
    return f"Command: `{m['command']}` · date: {m['date']} · load average start / end: {m['load_start']} / {m['load_end']}."


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "report"}
    out["metrics"] = row["report"].metrics()
    return out


def _rerank_text(results: dict[str, Any]) -> str:
    p = results.get("rerank") or RerankParams().to_dict()
    return f"k1={p['k1']}, k2={p['k2']}, lambda={p['lambda']:g}"


def render_section(results: dict[str, Any]) -> str:
    lines = [f"{results['machine']} The machine is shared with other jobs, so times are upper bounds; the "
             "load average (1/5/15 min) at the start and end of each part is given.", "",
             f"Data: `{results['data']}`: {results['data_summary']}. Real ground-camera crops (PRID-2011, VIPeR "
             "test cases; GRID, 3DPeS, i-LIDS, SARC3D, TownCentre training identities), no sessions, so only the "
             "standard protocol applies. Metrics in %: mAP / rank-1 per case, mAP-3 = the unweighted mean of the "
             "three case mAPs (and the query-weighted pooled mean). Evaluation: the recipe's frames per tracklet, "
             f"cosine distance; re-ranked rows with k-reciprocal {_rerank_text(results)} (the `RerankParams()` defaults "
             "when the rows were measured) unless a row says otherwise.", "",
             "Reference rows from the dataset README (its own protocol implementation): random ~1.6; HSV colour "
             "histogram (4 stripes x 8 bins x 3 channels) 2.9 / 4.9 / 15.1 mAP, mAP-3 7.6; OSNet-x0.25 pretrained "
             "on MSMT17 (126k images, not trained here) 11.9 / 32.0 / 50.1, mAP-3 31.4."]
    if results.get("reference"):
        ref = results["reference"]
        lines += ["", "### Reference rows measured here", "", _part_meta(ref), "", ref["table"], "",
                  f"Chance: random descriptors give mAP-3 {ref['chance'][0]:.2f} +- {ref['chance'][1]:.2f} "
                  "(20 draws; the row is draw 0)."]
    if results.get("default"):
        d = results["default"]
        lines += ["", "### Default CPU recipe", "", _part_meta(d), "", d["recipe"] + ".", "", d["table"], ""]
        if d.get("seeds"):
            lines.append(d["seeds"])
        lines += [f"Times: {d['times']}.", "", "Each branch alone (no re-ranking; the fused row is the model's "
                  "descriptor):", "", d["branches"], "", "The VReID-XFD organisers' scorer (`sasreid evaluate "
                  "--leaderboard-metric`: only the query's own tracklet is junk, trapezoidal AP) beside the standard "
                  "figure:", "", d["scorer"], "", "Re-ranking grid on the first seed's descriptors (the validation "
                  "behind the re-ranking defaults; galleries hold one or two tracklets per identity):", "", d["grid"]]
    if results.get("ablation"):
        ab = results["ablation"]
        lines += ["", f"### Ablation (default recipe, {ab['epochs']} epochs each, first seed)", "", _part_meta(ab), "",
                  ab["table"], "", f"Times: {ab['times']}."]
    if results.get("notes"):
        lines += ["", results["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset root (DetReIDX layout), e.g. PETA-dev")
    parser.add_argument("--out", type=Path, default=Path("runs/real"), help="run folders and results.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--seeds", default="0,1", help="comma list of seeds of the default recipe (default 0,1)")
    parser.add_argument("--ablations", default=None,
                        help="comma list of ablation names to run (default all: " + ", ".join(ABLATIONS) + ")")
    parser.add_argument("--ablation-epochs", type=int, default=None,
                        help="epochs of every ablation run and of its full-model row (default: the recipe's)")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of the same configuration")
    parser.add_argument("--results", type=Path, default=None, help="markdown file whose section to replace")
    parser.add_argument("--notes", default=None, help="free text appended to the section (kept in results.json)")
    parser.add_argument("--render-only", action="store_true", help="only re-render the section from results.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(parts) - set(PARTS):
        parser.error(f"unknown part(s) {sorted(set(parts) - set(PARTS))}; valid: {', '.join(PARTS)}")
    seeds = parse_seeds(parser, args.seeds)
    ablations = list(ABLATIONS) if args.ablations is None else [a.strip() for a in args.ablations.split(",")]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        parser.error(f"unknown ablation(s) {unknown}; valid: {list(ABLATIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.notes is not None:
        results["notes"] = args.notes
    if not args.render_only:
        if args.data is None:
            parser.error("--data is required unless --render-only")
        run_parts(args, parts, seeds, ablations, results, results_file)
    _save(results_file, results)
    body = render_section(results)
    print(body)
    if args.results is not None:
        write_section(SECTION, body, args.results)
        print(f"section '## {SECTION}' of {args.results} updated")
    return 0


def run_parts(args: argparse.Namespace, parts: list[str], seeds: list[int], ablations: list[str],
              results: dict[str, Any], results_file: Path) -> None:
    data, out = args.data, args.out
    recipe = TrainConfig.recipe("small", progress=not args.no_progress, seed=seeds[0])
    results.update(machine=machine_line(torch, np), data=str(data), data_summary=data_summary(data),
                   rerank=RerankParams().to_dict())
    command = "python bench/real_images.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if args else []))
    if "reference" in parts:
        meta = _meta(command)
        chance, mean, std = chance_report(data)
        print("== HSV colour histogram baseline", flush=True)
        hist = evaluate_color_hist(data, rerank=RerankParams(), progress=recipe.progress)
        rows = [("random descriptors (chance)", chance), ("HSV colour histogram (baseline_color_hist.py)", hist)]
        results["reference"] = {"table": markdown_table(rows), "chance": [mean, std],
                                "meta": {**meta, "load_end": loadavg()}}
        _save(results_file, results)
    first: dict[str, Any] | None = None
    if "default" in parts or "ablation" in parts:
        meta = _meta(command)
        rows = []
        for seed in seeds if "default" in parts else seeds[:1]:
            rows.append(train_and_evaluate(f"small, seed {seed}", recipe.replace(seed=seed), data,
                                           out / f"small_seed{seed}", args.reuse))
        first = rows[0]
        if "default" in parts:
            grid = rerank_grid(data, first, recipe)
            results["default"] = {
                "recipe": recipe_text(recipe), "table": markdown_table([(r["name"], r["report"]) for r in rows]),
                "seeds": seed_spread(rows, "Default recipe"), "times": times_text(rows), "branches": branch_table(rows),
                "scorer": scorer_table(rows), "grid": grid_table(grid, [c.label for c in first["report"].cases]),
                "grid_values": grid, "reports": {r["name"]: _summary(r) for r in rows},
                "meta": {**meta, "load_end": loadavg()}}
            _save(results_file, results)
    if "ablation" in parts:
        assert first is not None
        meta = _meta(command)
        epochs = args.ablation_epochs or recipe.epochs
        budget = recipe.replace(epochs=epochs)
        if epochs == recipe.epochs:
            rows = [{**first, "name": f"full model ({first['name']})"}]
        else:
            rows = [train_and_evaluate("full model", budget, data, out / f"ablation_full_{epochs}ep", args.reuse)]
        for name in ablations:
            slug = name.split(" ")[0].strip("-").replace("'", "")
            rows.append(train_and_evaluate(name, budget.replace(**ABLATIONS[name]), data,
                                           out / f"ablation_{slug}_{epochs}ep", args.reuse))
            results["ablation"] = {"epochs": epochs, "table": markdown_table([(r["name"], r["report"]) for r in rows]),
                                   "times": times_text(rows), "reports": {r["name"]: _summary(r) for r in rows},
                                   "meta": {**meta, "load_end": loadavg()}}
            _save(results_file, results)  # after each run, so an interruption keeps what finished


def _save(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
