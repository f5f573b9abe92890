"""The training loop (paper 1 sections 3.5 and 4.2) with checkpoints, exact resume and evaluation.

Run folder::

    RUN_DIR/train_config.json           the TrainConfig of the run
    RUN_DIR/log.jsonl                   step / epoch / checkpoint / eval records (model.engine.runlog)
    RUN_DIR/checkpoints/epoch_XXX/      model checkpoint + training_state.pt (model.engine.state)
    RUN_DIR/final/                      the served checkpoint (model only)
    RUN_DIR/eval_final.json             final evaluation report (when the root has test cases)

Exact resume: everything random is either a pure function of (seed, epoch, index) (batches,
frames, augmentation) or a global RNG whose state is saved at each checkpoint (dropout); the
optimizer state and schedule position are saved too, so ``1 epoch + resume 1 epoch`` reproduces
``2 epochs`` to float round-off.

Distributed (``torchrun ... --no-python sasreid train``; ``model.engine.distributed``): one process
per device, DistributedDataParallel over NCCL (CUDA) or gloo (CPU). Each rank takes ``P`` whole
identities of every global batch of ``P x world_size`` identities (``IdentityBalancedSampler``),
so the global batch is ``P x K x world_size`` tracklets and the gradient is the mean of the ranks'
losses. Before each memory update the ranks' features and labels are all-gathered, so every rank
holds the same proxies; the centroid pass is split across ranks and gathered. Rank 0 alone runs
the hooks (progress, log, checkpoints, evaluation); losses are averaged over the ranks first, and
a non-finite loss on any rank stops all of them. A resumed run must use the same world size
(every rank's RNG state is in the training state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel

from model.checkpoint import WEIGHTS_FILE, read_checkpoint_config, save_checkpoint
from model.engine.cache import DescriptorCache
from model.engine.config import TrainConfig, backbone_lr
from model.engine.datasets import ReIDData, load_reid_data, outfit_classes, require_train, summarize
from model.engine.distributed import (
    DistContext,
    DistributedError,
    all_gather_rows,
    barrier,
    broadcast_buffers,
    broadcast_object,
    gather_objects,
    init_distributed,
    mean_over_ranks,
    shutdown,
)
from model.engine.embedding import eval_dataset, seed_worker
from model.engine.evaluate import default_cache_dir, embedding_settings, evaluate_model
from model.engine.hooks import StepInfo, TrainHook, main_process_hooks
from model.engine.report import EvalReport
from model.engine.runlog import LOG_NAME, RunLog
from model.engine.schedule import WarmupStepSchedule
from model.engine.state import (
    TrainingState,
    epoch_dir,
    latest_state_dir,
    prune_states,
    rng_states,
    set_rng_states,
)
from model.engine.train_loader import TrainLoader, build_train_loader
from model.engine.weight_average import WeightAverage
from model.sasreid import SASVPReID, build_model, decays

CONFIG_FILE = "train_config.json"
FINAL_DIR = "final"


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message names the path and the problem."""


@dataclass
class TrainResult:
    run_dir: Path
    final_checkpoint: Path
    epochs: int
    train_seconds: float
    report: EvalReport | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: SASVPReID, cfg: TrainConfig, pretrained: bool) -> tuple[torch.optim.Optimizer, list[str]]:
    """Adam (or SGD with momentum, ``cfg.optimizer``) with the CLIP tower at ``backbone_lr`` and the
    new modules at ``lr_new``, each split into parameters with and without weight decay
    (``model.sasreid.decays``).

    Returns the optimizer and its group names (``new``, ``new/no_decay``, ...; empty groups, e.g.
    a frozen tower, are left out).
    """
    lrs = {"pretrained": backbone_lr(cfg, pretrained), "new": cfg.lr_new}
    param_groups, names = [], []
    for part, named in model.parameter_groups().items():
        for suffix, wd, keep in (("", cfg.weight_decay, True), ("/no_decay", 0.0, False)):
            params = [p for n, p in named if decays(n, p) == keep]
            if params:
                param_groups.append({"params": params, "lr": lrs[part], "weight_decay": wd, "name": part + suffix})
                names.append(part + suffix)
    if not param_groups:
        raise TrainingError("the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr_new, momentum=0.9), names
    return torch.optim.Adam(param_groups, lr=cfg.lr_new), names


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def init_memory_from_centroids(model: SASVPReID, loader: TrainLoader, device: torch.device,
                               ctx: DistContext | None = None) -> None:
    """The public code's epoch start: every proxy = its identity's centroid of v_i (eval mode,
    even frame sampling, no augmentation). Distributed: each rank embeds every ``world_size``-th
    tracklet and the features are gathered, so every rank sets the same proxies."""
    if model.memory is None:
        return
    ctx = ctx or DistContext(device=device)
    # Every rank embeds with rank 0's BatchNorm statistics, those final/ is saved with.
    broadcast_buffers(ctx, model)
    tracklets = loader.dataset.tracklets[ctx.rank::ctx.world_size]
    ds = eval_dataset(model, tracklets, loader.dataset.seq_len)
    dl = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=loader.num_workers,
                                     worker_init_fn=seed_worker if loader.num_workers else None,
                                     generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    feats, pids = [], []
    try:
        for x, pid, cam, plat, _ in dl:
            out = model(x.to(device), cam.to(device), plat.to(device))
            feats.append(out.feats["v"].float())
            pids.append(pid.to(device))
    finally:
        model.train(was_training)
    dim = model.memory.proxies.shape[-1]
    local_f = torch.cat(feats) if feats else torch.zeros(0, dim, device=device)
    local_p = torch.cat(pids) if pids else torch.zeros(0, dtype=torch.long, device=device)
    model.memory.init_from_centroids(all_gather_rows(ctx, local_f).cpu(), all_gather_rows(ctx, local_p).cpu())


def _mean_terms(sums: dict[str, float], n: int) -> dict[str, float]:
    return {k: v / max(n, 1) for k, v in sums.items()}


def _rank_seed(seed: int, rank: int) -> int:
    """The global RNG seed of ``rank`` after the model is built (dropout differs between ranks)."""
    return seed + 1_000_003 * rank


class Trainer:
    """Trains one run (see the module docstring); :meth:`fit` does everything."""

    def __init__(self, cfg: TrainConfig, data_root: str | Path, run_dir: str | Path,
                 clip_weights: str | Path | None = None, resume: bool = False,
                 cache_dir: str | Path | None = None, hooks: list[TrainHook] | None = None) -> None:
        """``cache_dir``: where the final evaluation caches its descriptors (default
        ``RUN_DIR/descriptor-cache``; never the dataset folder, which may be read-only).
        ``hooks``: extra hooks run on rank 0 after the standard ones."""
        cfg.validate()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.clip_weights = Path(clip_weights) if clip_weights is not None else None
        self.resume = resume
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.data: ReIDData = load_reid_data(data_root, cfg.layout)
        require_train(self.data)
        if cfg.train_identity == "outfit":
            train, classes = outfit_classes(self.data.train)
            self.data = dataclasses.replace(self.data, train=train, num_train_pids=classes)
        if self.clip_weights is not None and not self.clip_weights.is_file():
            raise TrainingError(f"--clip-weights {self.clip_weights}: file not found")
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise TrainingError("--device cuda was requested but CUDA is not available")
        try:
            self.ctx = init_distributed(cfg.device)
        except DistributedError as exc:
            raise TrainingError(str(exc)) from None
        if cfg.sync_bn and self.ctx.distributed and self.ctx.device.type != "cuda":
            raise TrainingError("--sync-bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); "
                                "drop it for a gloo / CPU run")
        self.device = self.ctx.device
        self.log = RunLog(self.run_dir / LOG_NAME)
        extra = list(hooks or [])
        self.hooks: list[TrainHook] = main_process_hooks(cfg.progress) + extra if self.ctx.is_main else []
        self._rank_rngs: list[dict[str, object]] | None = None

    # -- setup -----------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        problem = None
        if self.ctx.is_main:
            existing = (self.run_dir / "checkpoints").exists() or (self.run_dir / CONFIG_FILE).exists()
            if existing and not self.resume:
                problem = (f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                           "another --out")
            if self.resume and not existing:
                problem = f"--resume: {self.run_dir} holds no run to resume (no {CONFIG_FILE})"
        # Rank 0 decides: the other ranks would otherwise see the config rank 0 is about to write.
        problem = broadcast_object(self.ctx, problem)
        if problem:
            raise TrainingError(problem)

    def _build(self) -> None:
        seed_everything(self.cfg.seed)
        self.model_cfg = self.cfg.model_config(self.data.num_train_pids)
        self.model = build_model(self.model_cfg, clip_weights=str(self.clip_weights) if self.clip_weights else None)
        if self.cfg.sync_bn and self.ctx.distributed:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device).train()
        if self.ctx.distributed:
            seed_everything(_rank_seed(self.cfg.seed, self.ctx.rank))
        self.pretrained = self.clip_weights is not None
        self.optimizer, self.group_names = build_optimizer(self.model, self.cfg, self.pretrained)
        try:
            self.loader = build_train_loader(self.data.train, self.cfg, self.model_cfg,
                                             pin_memory=self.device.type == "cuda", rank=self.ctx.rank,
                                             world_size=self.ctx.world_size)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        total = self.cfg.epochs * len(self.loader) if self.cfg.schedule == "cosine" else None
        self.schedule = WarmupStepSchedule(self.optimizer, self.cfg.warmup_iters,
                                           self.cfg.warmup_start_lr / self.cfg.lr_new, self.cfg.milestones,
                                           self.cfg.gamma, total)
        wrapped: torch.nn.Module = self.model
        if self.ctx.distributed:
            # Unused parameters: ablations and detached branches leave some without a gradient.
            wrapped = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.forward = torch.compile(wrapped) if self.cfg.compile else wrapped
        self.average = WeightAverage(self.model, self.cfg.weight_average) if self.cfg.weight_average else None
        self.start_epoch, self.global_iter = 0, 0

    def _restore(self) -> None:
        state_dir = latest_state_dir(self.run_dir)
        if state_dir is None:
            # A run killed before its first checkpoint: start it over.
            if self.ctx.is_main:
                self.log.write("resume", from_epoch=0, note="no checkpoint with a training state; starting over")
            return
        meta = read_checkpoint_config(state_dir)
        state = TrainingState.load(state_dir)
        if state.fingerprint != meta.get("fingerprint"):
            raise TrainingError(f"{state_dir}: training state belongs to weights {state.fingerprint}, "
                                f"but the checkpoint holds {meta.get('fingerprint')}")
        if state.world_size != self.ctx.world_size:
            raise TrainingError(
                f"{state_dir}: the run was trained by {state.world_size} process(es) and is resumed by "
                f"{self.ctx.world_size}; resume with the same world size (torchrun --nproc_per_node / --nnodes), "
                "or start a new run from its weights")
        weights = load_file(str(state_dir / WEIGHTS_FILE))
        self.model.load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(state.optimizer)
        self.schedule.load_state_dict(state.schedule)
        set_rng_states(state.rank_rng[self.ctx.rank] if state.rank_rng else state.rng)
        if self.average is not None:
            if state.weight_average is None:
                raise TrainingError(f"{state_dir}: the run averages its weights but the training state holds no average")
            self.average.load_state_dict(state.weight_average)
        self.start_epoch, self.global_iter = state.epoch, state.global_iter
        if self.ctx.is_main:
            self.log.write("resume", from_epoch=state.epoch, checkpoint=state_dir, global_iter=state.global_iter)

    # -- checkpoints -----------------------------------------------------------------------
    def _extra(self, epoch: int) -> dict[str, object]:
        return {"train_config": self.cfg.to_dict(), "dataset": str(self.data.root.resolve()),
                "layout": self.data.layout, "epoch": epoch, "num_train_pids": self.data.num_train_pids,
                "clip_weights": str(self.clip_weights) if self.clip_weights else None,
                "world_size": self.ctx.world_size}

    def checkpoint_due(self, epoch: int) -> bool:
        """Whether ``epoch`` completed epochs get a checkpoint."""
        return epoch % self.cfg.ckpt_every == 0 or epoch == self.cfg.epochs

    def save_epoch(self, epoch: int) -> Path:
        """Write ``checkpoints/epoch_XXX`` (rank 0; the ranks' RNG states were gathered before)."""
        directory = epoch_dir(self.run_dir, epoch)
        fingerprint = save_checkpoint(self.model, directory, extra=self._extra(epoch))
        ranks = self._rank_rngs if self.ctx.distributed else None
        TrainingState(
            epoch=epoch, global_iter=self.global_iter, optimizer=self.optimizer.state_dict(),
            schedule=self.schedule.state_dict(), rng=rng_states(),
            sampler={"seed": self.loader.sampler.seed, "epoch": epoch}, fingerprint=fingerprint,
            train_config=self.cfg.to_dict(),
            weight_average=self.average.state_dict() if self.average is not None else None,
            world_size=self.ctx.world_size, rank_rng=ranks,
        ).save(directory)
        prune_states(self.run_dir, self.cfg.keep_states)
        self.log.write("checkpoint", epoch=epoch, path=directory, fingerprint=fingerprint)
        return directory

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, epoch: int, cache: DescriptorCache | None = None) -> EvalReport | None:
        """Evaluate the current weights on the root's test cases (None when it has none; rank 0)."""
        if not self.data.cases:
            return None
        report = evaluate_model(self.model, self.data.cases, cache=cache, frames=self.cfg.eval_frames,
                                batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.num_workers,
                                device=self.device, progress=self.cfg.progress)
        self.model.train()
        self.log.write("eval", epoch=epoch, metrics=report.metrics(), embed_seconds=report.meta.get("embed_seconds"))
        return report

    # -- the loop --------------------------------------------------------------------------
    def _batches(self, loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, ...]]:
        for frames, pids, cams, plats, _index in loader:
            yield (frames.to(self.device, non_blocking=True), pids.to(self.device), cams.to(self.device),
                   plats.to(self.device))

    def _call(self, name: str, *args: object) -> None:
        for hook in self.hooks:
            getattr(hook, name)(self, *args)

    def _step(self, epoch: int, it: int, frames: torch.Tensor, pids: torch.Tensor, cams: torch.Tensor,
              plats: torch.Tensor) -> StepInfo:
        cfg = self.cfg
        lrs = self.schedule.set(self.global_iter, epoch)
        with _autocast(self.device, cfg.bf16):
            out = self.forward(frames, cams, plats)
            terms = self.model.compute_losses(out, pids, update_memory=False)
        if self.model.memory is not None:
            # Every rank updates its proxies with the whole global batch, so they stay identical.
            feats = all_gather_rows(self.ctx, self.model.memory_features(out).detach())
            self.model.memory.update(feats, all_gather_rows(self.ctx, pids))
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        # One collective: a non-finite loss on any rank makes the mean non-finite on every rank.
        values = mean_over_ranks(self.ctx, {k: float(v.detach()) for k, v in terms.items()})
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingError(f"non-finite loss at epoch {epoch + 1}, iteration {it}: {values}")
        self.global_iter += 1
        return StepInfo(epoch=epoch, it=it, global_iter=self.global_iter, lrs=list(lrs), loss=values)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        self.model.fingerprint = None  # the weights are about to change
        if cfg.memory_init == "centroids":
            init_memory_from_centroids(self.model, self.loader, self.device, self.ctx)
        sums: dict[str, float] = {}
        n = 0
        start = time.perf_counter()
        loader = self.loader.epoch(epoch)
        self._call("before_epoch", epoch, len(loader))
        for it, batch in enumerate(self._batches(loader)):
            step = self._step(epoch, it, *batch)
            for k, v in step.loss.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            self._call("after_step", step)
        seconds = time.perf_counter() - start
        means = _mean_terms(sums, n)
        if self.checkpoint_due(epoch + 1):
            self._rank_rngs = gather_objects(self.ctx, rng_states())
        self._call("after_epoch", epoch + 1, means, seconds)
        return means

    def fit(self) -> TrainResult:
        """Train (or continue) the run, write ``final/`` and evaluate it; returns the result."""
        try:
            return self._fit()
        finally:
            shutdown(self.ctx)

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        self._check_run_dir()
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._build()
        if self.resume:
            self._restore()
        if self.ctx.is_main:
            cfg.save(self.run_dir / CONFIG_FILE)
            self._announce()
        self._call("before_train")
        start = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs):
            self._train_epoch(epoch)
        train_seconds = time.perf_counter() - start
        self._call("after_train")
        result = TrainResult(self.run_dir, self.run_dir / FINAL_DIR, cfg.epochs, train_seconds, None)
        if self.ctx.is_main:
            with self._served_weights():
                result = self._finish(train_seconds)
            if self.average is not None:
                self.model.fingerprint = None  # the model holds the last iterate again, not final/'s weights
        # The other ranks wait for rank 0's final checkpoint and evaluation before they leave.
        barrier(self.ctx)
        return result

    def _announce(self) -> None:
        """The dataset summary (stderr with progress on) and the log's start record (rank 0)."""
        cfg = self.cfg
        summary = summarize(self.data.train)
        world = self.ctx.world_size
        if cfg.progress:
            print(f"train split of {self.data.root}: {summary.describe()}", file=sys.stderr)
            for case in self.data.cases:
                print(f"  test case {case.label}: {len(case.query)} query / {len(case.gallery)} gallery tracklets",
                      file=sys.stderr)
            ranks = f" on each of {world} processes" if world > 1 else ""
            print(f"  {len(self.loader)} iterations per epoch of P={cfg.p} x K={cfg.k} tracklets x T={cfg.seq_len} "
                  f"frames{ranks}, {cfg.epochs} epochs", file=sys.stderr)
        if self.start_epoch == 0:
            self.log.write(
                "start", config=cfg.to_dict(), data_root=str(self.data.root), layout=self.data.layout,
                train=summary.to_dict(),
                cases={c.label: {"query": len(c.query), "gallery": len(c.gallery)} for c in self.data.cases},
                num_train_tracklets=len(self.data.train), num_train_pids=self.data.num_train_pids,
                iters_per_epoch=len(self.loader.epoch(0)), device=str(self.device), pretrained_backbone=self.pretrained,
                base_lr=dict(zip(self.group_names, self.schedule.base_lrs, strict=True)),
                trainable_params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                world_size=world, global_batch_tracklets=cfg.p * cfg.k * world,
            )

    def _served_weights(self) -> contextlib.AbstractContextManager:
        """The weights ``final/`` serves: the running average when the run keeps one."""
        return self.average.applied(self.model) if self.average is not None else contextlib.nullcontext()

    def _finish(self, train_seconds: float) -> TrainResult:
        cfg = self.cfg
        self.model.fingerprint = None
        final = self.run_dir / FINAL_DIR
        fingerprint = save_checkpoint(self.model, final, extra=self._extra(cfg.epochs))
        report = None
        if self.data.cases:
            cache = DescriptorCache(self.cache_dir or default_cache_dir(self.run_dir), fingerprint, self.data.root,
                                    embedding_settings(self.model, cfg.eval_frames))
            report = self.evaluate(cfg.epochs, cache)
            if report is not None:
                report.meta.update(checkpoint=str(final), data_root=str(self.data.root), layout=self.data.layout)
                (self.run_dir / "eval_final.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n",
                                                              encoding="utf-8")
        self.log.write("end", final=final, fingerprint=fingerprint, epochs=cfg.epochs,
                       train_seconds=round(train_seconds, 3),
                       final_weights="average" if self.average is not None else "last iterate")
        return TrainResult(self.run_dir, final, cfg.epochs, train_seconds, report)
