"""Accuracy on SynthXFD: reference rows and the module ablation, written to bench/RESULTS.md.

Parts (``--parts``, default both):

- ``reference``: the untrained tiny model, the HSV colour-histogram baseline and the tiny model
  trained with the default tiny recipe once per ``--seeds`` entry (training from scratch varies
  a lot with the seed; its training time is recorded), each evaluated with and without
  k-reciprocal re-ranking;
- ``ablation``: the full model and ``--no-mgtm`` / ``--no-prsd`` / ``--no-memory``, all trained
  with the tiny recipe (first seed) at the same budget (``--ablation-epochs``, default: the
  recipe's epochs) and evaluated the same way. A run whose configuration equals one trained
  earlier in the same invocation (the full model = the default recipe's first seed) reuses that
  run and its numbers instead of training again: training is deterministic for a configuration.

Runs go to ``--out`` (one run folder each), the numbers to ``--out/results.json``, and with
``--results FILE`` the section ``## Accuracy on SynthXFD`` of that markdown file is replaced (other
sections are left as they are).

    python bench/ablation.py --data data/synthxfd --out runs/bench --results bench/RESULTS.md
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
from baseline_color_hist import evaluate_color_hist
from results import machine_line, write_section

from model import load_checkpoint
from model.engine.config import TrainConfig
from model.engine.datasets import EvalCase, load_reid_data
from model.engine.evaluate import evaluate_checkpoint, evaluate_model, unique_records
from model.engine.evaluator import ReIDEvaluator, RerankParams
from model.engine.report import EvalReport, markdown_table
from model.engine.trainer import Trainer

SECTION = "Accuracy on SynthXFD"
ABLATIONS: dict[str, dict[str, bool]] = {
    "full model": {},
    "--no-mgtm": {"mgtm": False},
    "--no-prsd": {"prsd": False},
    "--no-memory": {"memory": False},
}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def train_and_evaluate(name: str, cfg: TrainConfig, data: Path, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (replacing it), evaluate final/ with re-ranking, and measure
    how well it retrieves its own training identities (``fit_cases``).

    The descriptor cache lives inside the run folder, so the final evaluation is always cold
    (its time counts) and the re-ranked evaluation reuses it.
    """
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cache = run_dir / "descriptor-cache"
    print(f"== {name}: training {cfg.epochs} epochs into {run_dir}", flush=True)
    start = time.perf_counter()
    result = Trainer(cfg, data, run_dir, cache_dir=cache).fit()
    total = time.perf_counter() - start
    report = evaluate_checkpoint(data, result.final_checkpoint, rerank=True, frames=cfg.eval_frames,
                                 batch_size=cfg.eval_batch_size, cache_dir=cache, progress=cfg.progress)
    fit = evaluate_model(load_checkpoint(result.final_checkpoint), fit_cases(data), frames=cfg.eval_frames,
                         batch_size=cfg.eval_batch_size, progress=cfg.progress)
    return {"name": name, "report": report, "fit": fit, "train_seconds": result.train_seconds,
            "train_plus_eval_seconds": total, "epochs": cfg.epochs, "run_dir": str(run_dir),
            "config": cfg.to_dict()}


def reuse_or_train(name: str, cfg: TrainConfig, data: Path, run_dir: Path,
                   finished: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of a finished run with the same configuration (renamed), else a new training."""
    for row in finished:
        if row.get("config") == cfg.to_dict():
            print(f"== {name}: same configuration as {row['run_dir']}, reusing its run", flush=True)
            return {**row, "name": name, "reused": row["name"]}
    return train_and_evaluate(name, cfg, data, run_dir)


def fit_cases(data: Path) -> list[EvalCase]:
    """Retrieval among the TRAINING identities (a diagnostic of fitting, not the protocol):
    session-1 aerial -> session-1 ground (same outfit) and session 1 -> session 2 (outfit change)."""
    train = load_reid_data(data).train
    s1 = [t for t in train if t.session == 1]
    s2 = [t for t in train if t.session == 2]
    if not s1 or not s2:
        raise SystemExit(f"{data}: the fit diagnostic needs session labels (manifest.csv) in the train split")
    return [EvalCase("fit_same", "train A->G same session", "", [t for t in s1 if t.platform == "aerial"],
                     [t for t in s1 if t.platform == "ground"]),
            EvalCase("fit_cross", "train S1->S2", "", s1, s2)]


def chance_report(data: Path, draws: int = 20) -> tuple[EvalReport, float, float]:
    """One report of random unit descriptors (seed 0) plus the mean unweighted mAP-3 and its std
    over ``draws`` seeds: the chance level of the protocol on this data."""
    d = load_reid_data(data)
    records = unique_records(d.cases)
    means, first = [], None
    for seed in range(draws):
        ev = ReIDEvaluator(d.cases, rerank=RerankParams() if seed == 0 else None)
        ev.process(np.random.default_rng(seed).normal(size=(len(records), 64)), records)
        ev.evaluate()
        assert ev.report is not None
        first = first or ev.report
        means.append(ev.report.map3[0])
    assert first is not None
    return first, float(np.mean(means)), float(np.std(means))


def reference_part(data: Path, out: Path, recipe: TrainConfig, seeds: list[int]) -> list[dict[str, Any]]:
    report, mean, std = chance_report(data)
    rows: list[dict[str, Any]] = [{"name": "random descriptors (chance)", "report": report,
                                   "chance_map3_mean": mean, "chance_map3_std": std}]
    rows.append(train_and_evaluate("tiny, untrained", recipe.replace(epochs=0), data, out / "untrained"))
    print("== HSV colour histogram baseline", flush=True)
    start = time.perf_counter()
    hist = evaluate_color_hist(data, rerank=RerankParams(), progress=recipe.progress)
    rows.append({"name": "HSV colour histogram", "report": hist, "seconds": time.perf_counter() - start})
    for seed in seeds:
        rows.append(train_and_evaluate(f"tiny, trained (default recipe, seed {seed})", recipe.replace(seed=seed),
                                       data, out / f"tiny_default_seed{seed}"))
    return rows


def ablation_part(data: Path, out: Path, recipe: TrainConfig, epochs: int,
                  finished: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, changes in ABLATIONS.items():
        slug = name.strip("-").replace(" ", "_")
        cfg = recipe.replace(epochs=epochs, **changes)
        rows.append(reuse_or_train(name, cfg, data, out / f"ablation_{slug}", finished))
    return rows


def _times(rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        if "reused" in r:
            parts.append(f"{r['name']}: the run of \"{r['reused']}\" (same configuration)")
        elif "train_seconds" in r:
            parts.append(f"{r['name']}: train {r['train_seconds'] / 60:.1f} min, train + final eval + re-ranked "
                         f"eval {r['train_plus_eval_seconds'] / 60:.1f} min")
    return "; ".join(parts)


def fit_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the training-identity diagnostic (mAP / R1 per diagnostic case)."""
    rows = [r for r in rows if "fit" in r]
    if not rows:
        return ""
    labels = [c.label for c in rows[0]["fit"].cases]
    lines = ["| model | " + " | ".join(f"{lb} mAP / R1" for lb in labels) + " |",
             "|:---|" + "---:|" * len(labels)]
    for r in rows:
        cells = [f"{c.plain.mAP:.2f} / {c.plain.cmc_at[1]:.2f}" for c in r["fit"].cases]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _part_meta(part: dict[str, Any]) -> str:
    m = part["meta"]
    return f"Command: `{m['command']}` · date: {m['date']} · load average start / end: {m['load_start']} / {m['load_end']}."


def render_section(results: dict[str, Any]) -> str:
    """The markdown body of the section from ``results``."""
    lines = [f"{results['machine']} The machine is shared with other jobs, so times are upper "
             "bounds; the load average (1/5/15 min) at the start and end of each part is given."]
    lines.append("")
    lines.append(f"Data: SynthXFD at `{results['data']}` (default build: `sasreid synth --out DIR`): {results['data_summary']}. "
                 "Metrics in %: mAP / rank-1 per case, then mAP-3 as the unweighted mean of the three case mAPs "
                 "and as the query-weighted (pooled) mean over all valid queries. Re-ranking: k-reciprocal "
                 "k1=20, k2=6, lambda=0.3. Evaluation: 8 evenly spaced frames per tracklet (the tiny recipe's "
                 "`eval_frames`), cosine distance.")
    if results.get("reference"):
        ref = results["reference"]
        lines += ["", "### Reference rows", "", _part_meta(ref), "", ref["table"], ""]
        lines.append(f"Chance level: random descriptors give mAP-3 {ref['chance'][0]:.2f} +- {ref['chance'][1]:.2f} "
                     "(mean +- std over 20 draws; the row above is draw 0).")
        if ref.get("seed_spread"):
            lines.append(ref["seed_spread"])
        lines.append(f"Default tiny recipe: `{ref['recipe']}`. Times: {ref['times']}.")
        lines += ["", f"Diagnostic, not the protocol: retrieval among the {results['train_pids']} TRAINING identities (session-1 aerial "
                  "-> session-1 ground, same outfit; session 1 -> session 2, outfit changed), to show what the "
                  "training fits:", "", ref["fit_table"]]
    if results.get("ablation"):
        ab = results["ablation"]
        lines += ["", f"### Ablation (tiny recipe, {ab['epochs']} epochs each, same budget)", "", _part_meta(ab), "",
                  ab["table"], ""]
        lines.append(f"Times: {ab['times']}.")
        lines += ["", "Training-identity diagnostic of the same runs:", "", ab["fit_table"]]
    if results.get("notes"):
        lines += ["", results["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def data_summary(data: Path) -> str:
    d = load_reid_data(data)
    cases = ", ".join(f"{c.label} {len(c.query)} queries / {len(c.gallery)} gallery" for c in d.cases)
    return f"{len(d.train)} training tracklets of {d.num_train_pids} identities; {cases}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="SynthXFD root (default build)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="run folders and results.json")
    parser.add_argument("--parts", default="reference,ablation", help="comma list: reference, ablation")
    parser.add_argument("--seeds", default="0", help="comma list of seeds for the trained reference rows (default 0)")
    parser.add_argument("--ablation-epochs", type=int, default=None, help="epochs per ablation run (default: recipe)")
    parser.add_argument("--results", type=Path, default=None, help="markdown file whose section to replace")
    parser.add_argument("--notes", default=None, help="free text appended to the section (kept in results.json)")
    parser.add_argument("--render-only", action="store_true", help="only re-render the section from results.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"reference", "ablation"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}")
    seeds = parse_seeds(parser, args.seeds)
    recipe = TrainConfig.recipe("tiny", progress=not args.no_progress, seed=seeds[0])
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.notes is not None:
        results["notes"] = args.notes
    if args.render_only:
        _save(results_file, results)
        return _render(results, args.results)
    if args.data is None:
        parser.error("--data is required unless --render-only")
    results.update(machine=machine_line(torch, np), data=str(args.data), data_summary=data_summary(args.data),
                   train_pids=load_reid_data(args.data).num_train_pids)
    command = "python bench/ablation.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    def meta() -> dict[str, str]:
        return {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": loadavg()}

    finished: list[dict[str, Any]] = []
    if "reference" in parts:
        part_meta = meta()
        rows = reference_part(args.data, args.out, recipe, seeds)
        finished.extend(r for r in rows if "config" in r)
        results["reference"] = {"table": markdown_table([(r["name"], r["report"]) for r in rows]),
                                "times": _times(rows), "recipe": _recipe_text(recipe),
                                "seed_spread": seed_spread([r for r in rows if "default recipe" in r["name"]]),
                                "chance": [rows[0]["chance_map3_mean"], rows[0]["chance_map3_std"]],
                                "fit_table": fit_table(rows), "reports": {r["name"]: _summary(r) for r in rows},
                                "meta": {**part_meta, "load_end": loadavg()}}
        _save(results_file, results)
    if "ablation" in parts:
        part_meta = meta()
        epochs = args.ablation_epochs if args.ablation_epochs is not None else recipe.epochs
        rows = ablation_part(args.data, args.out, recipe, epochs, finished)
        results["ablation"] = {"epochs": epochs, "table": markdown_table([(r["name"], r["report"]) for r in rows]),
                               "times": _times(rows), "fit_table": fit_table(rows),
                               "reports": {r["name"]: _summary(r) for r in rows},
                               "meta": {**part_meta, "load_end": loadavg()}}
        _save(results_file, results)
    return _render(results, args.results)


def _save(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _render(results: dict[str, Any], markdown: Path | None) -> int:
    body = render_section(results)
    print(body)
    if markdown is not None:
        write_section(SECTION, body, markdown)
        print(f"section '## {SECTION}' of {markdown} updated")
    return 0


def parse_seeds(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """``--seeds`` as a non-empty list of ints; a bad value ends the program through ``parser``."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds must be a comma list of integers, got {text!r}")
    if not seeds:
        parser.error("--seeds needs at least one seed")
    return seeds


def seed_spread(rows: list[dict[str, Any]], what: str = "Trained tiny") -> str:
    """One sentence on the trained rows' mAP-3 across seeds (empty for a single seed)."""
    if len(rows) < 2:
        return ""
    values = np.array([r["report"].map3[0] for r in rows])
    return (f"{what} over {len(rows)} seeds: mAP-3 (unweighted, no re-ranking) mean {values.mean():.2f}, "
            f"min {values.min():.2f}, max {values.max():.2f}.")


def _recipe_text(cfg: TrainConfig) -> str:
    return (f"sasreid train --config tiny (epochs {cfg.epochs}, P={cfg.p} x K={cfg.k} x T={cfg.seq_len}, Adam lr "
            f"{cfg.lr_new:g} for all parameters (backbone not pretrained), warm-up {cfg.warmup_iters} it from "
            f"{cfg.warmup_start_lr:g}, x{cfg.gamma:g} at epochs {list(cfg.milestones)}, weight decay "
            f"{cfg.weight_decay:g})")


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    report: EvalReport = row["report"]
    out = {k: v for k, v in row.items() if k not in ("report", "config", "fit")}
    out["metrics"] = report.metrics()
    if "fit" in row:
        out["fit_metrics"] = row["fit"].metrics()
    return out


if __name__ == "__main__":
    sys.exit(main())
