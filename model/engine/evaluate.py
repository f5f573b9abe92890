"""Evaluating a model or checkpoint on a dataset root: embed each tracklet once, rank every case.

``evaluate_checkpoint(data_root, checkpoint, rerank=...)`` is the one-call entry point (the CLI and
the service demo use it). Descriptors are cached on disk per checkpoint fingerprint, data root and
sampling settings (``model.engine.cache``; never inside the dataset folder), so a second
evaluation, e.g. with re-ranking, embeds nothing. Besides the fused descriptor, each branch of
``model.descriptor_layout`` is evaluated alone from the same descriptors (no re-embedding).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint, weights_fingerprint
from model.data import Tracklet
from model.engine.cache import RUN_CACHE_DIRNAME, DescriptorCache, record_key, user_cache_dir
from model.engine.datasets import EvalCase, load_reid_data, require_cases, tracklet_key
from model.engine.embedding import embed_tracklets
from model.engine.evaluator import ReIDEvaluator, RerankParams
from model.engine.report import EvalReport
from model.engine.runlog import LOG_NAME
from model.sasreid import SASVPReID

_RERANK_DEFAULTS = RerankParams()  # the one source of the re-ranking defaults


@dataclass
class EmbedStats:
    """How many tracklets were embedded now and how many came from the cache."""

    embedded: int = 0
    cached: int = 0
    seconds: float = 0.0


def unique_records(cases: Sequence[EvalCase]) -> list[Tracklet]:
    """Every query and gallery record of ``cases`` once (first occurrence order)."""
    seen: dict[str, Tracklet] = {}
    for case in cases:
        for t in (*case.query, *case.gallery):
            seen.setdefault(tracklet_key(t), t)
    return list(seen.values())


def model_fingerprint(model: SASVPReID) -> str:
    """The checkpoint fingerprint of ``model`` (computed from its weights when it has none)."""
    if model.fingerprint:
        return model.fingerprint
    return weights_fingerprint({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def embedding_settings(model: SASVPReID, frames: int | None) -> dict[str, object]:
    """What besides the weights determines a descriptor (part of the cache key)."""
    cfg = model.cfg
    return {"frames": frames or cfg.eval_frames, "sampling": "even", "size": list(cfg.backbone.image_size),
            "mean": list(cfg.mean), "std": list(cfg.std), "side_info": cfg.backbone.side_info}


def embed_records(
    model: SASVPReID,
    records: Sequence[Tracklet],
    cache: DescriptorCache | None = None,
    frames: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, EmbedStats]:
    """Descriptors ``[N, D]`` of ``records``: cached ones read, the rest embedded (and cached)."""
    start = time.perf_counter()
    keys = [record_key(t) for t in records]
    found = cache.get(keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in found]
    out = np.zeros((len(records), model.descriptor_dim), dtype=np.float32)
    for i, k in enumerate(keys):
        if k in found:
            out[i] = found[k]
    if todo:
        new = embed_tracklets(model, [records[i] for i in todo], frames=frames, batch_size=batch_size,
                              num_workers=num_workers, device=device, progress=progress)
        out[todo] = new
        if cache is not None:
            try:
                cache.put({keys[i]: new[j] for j, i in enumerate(todo)})
            except OSError as exc:
                warnings.warn(f"could not write descriptor cache {cache.path}: {exc}", RuntimeWarning, stacklevel=2)
    return out, EmbedStats(embedded=len(todo), cached=len(records) - len(todo), seconds=time.perf_counter() - start)


def evaluate_model(
    model: SASVPReID,
    cases: Sequence[EvalCase],
    rerank: RerankParams | None = None,
    cache: DescriptorCache | None = None,
    frames: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    leaderboard: bool = False,
    branches: bool = True,
    camera_centring: bool = False,
) -> EvalReport:
    """Embed the records of ``cases`` once and evaluate them (plain, and re-ranked if asked).

    ``leaderboard``: add the VReID-XFD scorer's figures. ``branches``: also evaluate each branch of
    ``model.descriptor_layout`` alone (when there are at least two), from the same descriptors.
    """
    records = unique_records(cases)
    desc, stats = embed_records(model, records, cache, frames, batch_size, num_workers, device, progress)
    evaluator = ReIDEvaluator(cases, rerank=rerank, leaderboard=leaderboard,
                              branches=model.descriptor_layout if branches else (),
                              camera_centring=camera_centring)
    evaluator.process(desc, records)
    start = time.perf_counter()
    evaluator.evaluate()
    report = evaluator.report
    assert report is not None
    report.meta.update(
        fingerprint=model_fingerprint(model),
        frames=frames or model.cfg.eval_frames,
        descriptor_dim=model.descriptor_dim,
        embedded_tracklets=stats.embedded,
        cached_tracklets=stats.cached,
        embed_seconds=round(stats.seconds, 3),
        rank_seconds=round(time.perf_counter() - start, 3),
    )
    return report


def default_cache_dir(run_dir: str | Path | None = None) -> Path:
    """Where descriptors are cached by default: ``RUN_DIR/descriptor-cache`` for a training run's
    evaluation, else the user cache folder (``model.engine.cache.user_cache_dir``)."""
    return Path(run_dir) / RUN_CACHE_DIRNAME if run_dir is not None else user_cache_dir()


def checkpoint_cache_dir(checkpoint: str | Path | SASVPReID) -> Path:
    """The default cache of ``sasreid evaluate --checkpoint C``: the cache of C's training run when C
    is a checkpoint inside a run folder (``RUN_DIR/final``, ``RUN_DIR/epoch_5``: the folder holds
    ``log.jsonl``), so the run's final evaluation is reused; otherwise the user cache folder."""
    if not isinstance(checkpoint, SASVPReID):
        run_dir = Path(checkpoint).resolve().parent
        if (run_dir / LOG_NAME).is_file():
            return default_cache_dir(run_dir)
    return default_cache_dir()


def evaluate_checkpoint(
    data_root: str | Path,
    checkpoint: str | Path | SASVPReID,
    rerank: bool = False,
    k1: int = _RERANK_DEFAULTS.k1,
    k2: int = _RERANK_DEFAULTS.k2,
    lambda_value: float = _RERANK_DEFAULTS.lambda_value,
    layout: str = "auto",
    frames: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    leaderboard: bool = False,
    branches: bool = True,
    camera_centring: bool = False,
) -> EvalReport:
    """Evaluate a checkpoint directory (or a loaded model) on every case under ``data_root``.

    Returns an :class:`EvalReport` with per-case metrics (and re-ranked metrics when ``rerank``),
    mAP-3 unweighted and pooled, and full rankings (for the submission CSV); the cross-session,
    VReID-XFD scorer (``leaderboard``) and per-branch (``branches``) figures when they apply.
    ``cache_dir`` defaults to ``checkpoint_cache_dir(checkpoint)`` (the run's cache or the user cache,
    never the dataset). Raises
    ``DatasetError`` / ``CheckpointError`` naming the path when either input is unusable.
    """
    data = load_reid_data(data_root, layout)
    require_cases(data)
    if isinstance(checkpoint, SASVPReID):
        model, ckpt_name = checkpoint.to(device).eval(), "<in-memory model>"
    else:
        model, ckpt_name = load_checkpoint(checkpoint, device=device), str(checkpoint)
    cache = None
    if use_cache:
        cache = DescriptorCache(cache_dir or checkpoint_cache_dir(checkpoint), model_fingerprint(model), data.root,
                                embedding_settings(model, frames))
    params = RerankParams(k1, k2, lambda_value) if rerank else None
    report = evaluate_model(model, data.cases, params, cache, frames, batch_size, num_workers, device, progress,
                            leaderboard=leaderboard, branches=branches, camera_centring=camera_centring)
    report.meta.update(checkpoint=ckpt_name, data_root=str(data.root), layout=data.layout,
                       cache=str(cache.path) if cache is not None else None)
    return report

