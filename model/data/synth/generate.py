"""Render a SynthXFD plan to disk in the DetReIDX layout, plus manifest and identity sheet.

Output under ``out``: ``train/``, ``case{1,2,3}_*/{query,gallery}/`` (DetReIDX layout),
``manifest.csv`` (camera/platform/session per tracklet folder) and ``identities.json`` (every
identity's traits and both outfits, for analysis). A case's gallery holds, for each query,
same-session positives (same outfit) and other-session positives (other outfit); the manifest's
session column is what tells them apart (see ``model.data.synth.plan``). Each tracklet is
rendered once and the same bytes are written to every split folder that uses it. Output depends
only on the config: every random draw is seeded from ``(seed, purpose, ids)``, so worker count
and scheduling do not change a byte.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.data.manifest import MANIFEST_NAME, ManifestRow, write_manifest
from model.data.synth.identity import Identity, Outfit
from model.data.synth.plan import PlannedTracklet, SynthConfig, SynthPlan, make_plan
from model.data.synth.render import encode_jpeg, render_frame
from model.data.synth.scene import sample_capture, scene_env

IDENTITIES_NAME = "identities.json"
_OWNED_OUTPUTS = (
    "train",
    "case1_aerial_to_ground",
    "case2_ground_to_aerial",
    "case3_aerial_to_aerial",
    MANIFEST_NAME,
    IDENTITIES_NAME,
)


def render_tracklet(t: PlannedTracklet, identity: Identity, outfit: Outfit, seed: int) -> list[tuple[str, bytes, tuple[int, int]]]:
    """Render one planned tracklet: ``[(file name, JPEG bytes, (width, height))]`` in frame order."""
    view = t.view_spec
    env = scene_env(view, np.random.default_rng([seed, 3, t.session, view.camera]))
    rng = np.random.default_rng([seed, 6, t.number])
    capture = sample_capture(view, env, rng)
    phase0 = rng.uniform(0.0, 2 * math.pi)
    out = []
    for i, number in enumerate(t.frame_numbers()):
        img = render_frame(identity, outfit, phase0 + identity.cadence * i, capture, i, rng)
        out.append((t.frame_name(number), encode_jpeg(img, capture.jpeg_quality), img.size))
    return out


@dataclass(frozen=True)
class _TrackletResult:
    index: int
    files: int
    bytes: int
    heights: tuple[int, ...]


_WORKER_STATE: dict[str, object] = {}


def _init_worker(plan: SynthPlan, out: Path) -> None:
    _WORKER_STATE["plan"] = plan
    _WORKER_STATE["out"] = out


def _work(index: int) -> _TrackletResult:
    plan: SynthPlan = _WORKER_STATE["plan"]  # type: ignore[assignment]
    out: Path = _WORKER_STATE["out"]  # type: ignore[assignment]
    t = plan.tracklets[index]
    frames = render_tracklet(t, plan.identities[t.pid], plan.outfit_of(t), plan.config.seed)
    files = written = 0
    for dest in t.destinations:
        folder = out / dest / f"{t.pid:04d}" / t.folder_name
        folder.mkdir(parents=True, exist_ok=True)
        for name, data, _size in frames:
            (folder / name).write_bytes(data)
            files += 1
            written += len(data)
    return _TrackletResult(index, files, written, tuple(size[1] for _n, _d, size in frames))


@dataclass
class SynthSummary:
    """What a build produced."""

    out: Path
    seconds: float
    files: int
    bytes: int
    rendered_tracklets: int
    split_counts: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    crop_heights: dict[str, tuple[int, float, int]] = field(default_factory=dict)
    distractors: dict[str, int] = field(default_factory=dict)
    # case -> (same-outfit, clothing-changed) gallery positives per query, on average
    positives: dict[str, tuple[float, float]] = field(default_factory=dict)

    def format(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"SynthXFD written to {self.out} in {self.seconds:.1f} s"]
        lines.append(f"  {self.rendered_tracklets} tracklets rendered, {self.files} files, {self.bytes / 1e6:.1f} MB")
        lines.append(f"  {'split':34s} {'ids':>5s} {'tracklets':>10s} {'frames':>7s}")
        for split, (ids, tracklets, frames) in self.split_counts.items():
            extra = f"  ({self.distractors[split]} distractor ids)" if split in self.distractors else ""
            lines.append(f"  {split:34s} {ids:5d} {tracklets:10d} {frames:7d}{extra}")
        for case, (same, changed) in self.positives.items():
            lines.append(f"  {case} positives per query: {same:.1f} same-outfit, {changed:.1f} clothing-changed")
        for platform, (lo, med, hi) in self.crop_heights.items():
            lines.append(f"  {platform} crop height px: min {lo}, median {med:.0f}, max {hi}")
        return "\n".join(lines)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} is not empty; pass --overwrite to replace a previous build")
        for name in _OWNED_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _manifest_rows(plan: SynthPlan) -> list[ManifestRow]:
    rows = []
    for t in plan.tracklets:
        v = t.view_spec
        for dest in t.destinations:
            rows.append(ManifestRow(dest, f"{t.pid:04d}", t.folder_name, t.camera, v.platform, t.session))
    rows.sort(key=lambda r: (r.split, r.pid, r.tracklet))
    return rows


def _identity_sheet(plan: SynthPlan) -> str:
    train = set(plan.train_pids)
    sheet = {
        f"{pid:04d}": {
            "split": "train" if pid in train else "test",
            "identity": ident.to_dict(),
            "outfits": {str(s): plan.outfits[(pid, s)].to_dict() for s in (1, 2)},
        }
        for pid, ident in plan.identities.items()
    }
    return json.dumps(sheet, indent=1, sort_keys=True) + "\n"


def generate_synth(
    config: SynthConfig, out: str | Path, workers: int = 2, overwrite: bool = False, progress: bool = True
) -> SynthSummary:
    """Plan, render and write a SynthXFD build; returns its summary."""
    start = time.perf_counter()
    out = Path(out)
    plan = make_plan(config)
    _prepare_out(out, overwrite)
    todo = [i for i, t in enumerate(plan.tracklets) if t.destinations]
    bar = tqdm(total=len(todo), desc="render", unit="tracklet", disable=not progress, file=sys.stderr)
    results: list[_TrackletResult] = []
    if workers <= 1:
        _init_worker(plan, out)
        for i in todo:
            results.append(_work(i))
            bar.update()
    else:
        # fork shares the plan without pickling; elsewhere the initializer ships it once per worker.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(plan, out)) as pool:
            for r in pool.imap_unordered(_work, todo, chunksize=4):
                results.append(r)
                bar.update()
    bar.close()
    write_manifest(out / MANIFEST_NAME, _manifest_rows(plan))
    (out / IDENTITIES_NAME).write_text(_identity_sheet(plan), encoding="utf-8")
    return _summarise(plan, results, out, time.perf_counter() - start)


def _summarise(plan: SynthPlan, results: list[_TrackletResult], out: Path, seconds: float) -> SynthSummary:
    summary = SynthSummary(
        out=out,
        seconds=seconds,
        files=sum(r.files for r in results),
        bytes=sum(r.bytes for r in results),
        rendered_tracklets=len(results),
    )
    splits = ["train"] + [f"{case}/{role}" for case in plan.case_query_pids for role in ("query", "gallery")]
    for split in splits:
        ts = [t for t in plan.tracklets if split in t.destinations]
        summary.split_counts[split] = (len({t.pid for t in ts}), len(ts), sum(t.num_frames for t in ts))
    for case, pids in plan.case_distractor_pids.items():
        summary.distractors[f"{case}/gallery"] = len(pids)
    for case in plan.case_query_pids:
        summary.positives[case] = positives_per_query(plan, case)
    by_index = {r.index: r for r in results}
    for platform in ("ground", "aerial"):
        heights = [h for t_i, r in by_index.items() if plan.tracklets[t_i].platform == platform for h in r.heights]
        if heights:
            summary.crop_heights[platform] = (min(heights), float(np.median(heights)), max(heights))
    return summary


def positives_per_query(plan: SynthPlan, case: str) -> tuple[float, float]:
    """Mean number of ``(same-session, other-session)`` gallery positives of a query in ``case``."""
    gallery = [t for t in plan.tracklets if f"{case}/gallery" in t.destinations]
    queries = [t for t in plan.tracklets if f"{case}/query" in t.destinations]
    if not queries:
        return 0.0, 0.0
    same = sum(g.pid == q.pid and g.session == q.session for q in queries for g in gallery)
    other = sum(g.pid == q.pid and g.session != q.session for q in queries for g in gallery)
    return same / len(queries), other / len(queries)
