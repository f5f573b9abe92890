"""Training-loop hooks (fast-reid's ``train_loop.py`` idea): what runs around the optimisation.

The loop (``model.engine.trainer.Trainer``) only computes; progress, the run log, checkpoints and
periodic evaluation are :class:`TrainHook` objects it calls at fixed points. Under distributed
training they are installed on rank 0 alone, so exactly one process writes files and prints.
Every collective the hooks' work needs (the ranks' RNG states for a checkpoint, the losses
averaged over ranks) is done by the loop on every rank before the hooks run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from model.engine.trainer import Trainer

ESTIMATE_AFTER = 20  # iterations timed before the run's remaining time is printed


@dataclass(frozen=True)
class StepInfo:
    """One optimisation step: ``epoch`` and ``it`` are 0-based; ``loss`` is averaged over ranks."""

    epoch: int
    it: int
    global_iter: int
    lrs: list[float]
    loss: dict[str, float]


class TrainHook:
    """A hook: every method does nothing unless overridden."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def before_epoch(self, trainer: Trainer, epoch: int, iters: int) -> None:
        pass

    def after_step(self, trainer: Trainer, step: StepInfo) -> None:
        pass

    def after_epoch(self, trainer: Trainer, epoch: int, means: dict[str, float], seconds: float) -> None:
        """``epoch`` is the number of completed epochs."""

    def after_train(self, trainer: Trainer) -> None:
        pass


class ProgressHook(TrainHook):
    """A progress bar per epoch, an estimate of the time left, and one line per epoch (stderr)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.start = 0.0

    def before_epoch(self, trainer: Trainer, epoch: int, iters: int) -> None:
        self.start = time.perf_counter()
        self.bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{trainer.cfg.epochs}", unit="it", file=sys.stderr,
                        leave=False)

    def after_step(self, trainer: Trainer, step: StepInfo) -> None:
        cfg = trainer.cfg
        if step.it + 1 == ESTIMATE_AFTER and step.epoch == trainer.start_epoch:
            per_it = (time.perf_counter() - self.start) / ESTIMATE_AFTER
            left = per_it * (len(trainer.loader) * (cfg.epochs - step.epoch) - ESTIMATE_AFTER)
            tracklets = cfg.p * cfg.k * trainer.ctx.world_size
            tqdm.write(f"{per_it:.2f} s per iteration ({per_it / tracklets * 1000:.0f} ms per tracklet): "
                       f"about {left / 60:.0f} min of training left", file=sys.stderr)
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in step.loss.items()}, refresh=False)
            self.bar.update()

    def after_epoch(self, trainer: Trainer, epoch: int, means: dict[str, float], seconds: float) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        terms = " ".join(f"{k}={v:.4f}" for k, v in means.items())
        print(f"epoch {epoch}/{trainer.cfg.epochs}: {len(trainer.loader)} it in {seconds:.1f}s; {terms}",
              file=sys.stderr)


class LogHook(TrainHook):
    """``log.jsonl``: a step record every ``log_every`` iterations and one record per epoch."""

    def after_step(self, trainer: Trainer, step: StepInfo) -> None:
        if step.it % trainer.cfg.log_every == 0:
            trainer.log.write("step", epoch=step.epoch + 1, iter=step.it, global_iter=step.global_iter,
                              lr=dict(zip(trainer.group_names, step.lrs, strict=True)), loss=step.loss)

    def after_epoch(self, trainer: Trainer, epoch: int, means: dict[str, float], seconds: float) -> None:
        trainer.log.write("epoch", epoch=epoch, iters=len(trainer.loader), seconds=round(seconds, 3), loss=means)


class CheckpointHook(TrainHook):
    """``checkpoints/epoch_XXX`` every ``ckpt_every`` epochs and after the last one."""

    def after_epoch(self, trainer: Trainer, epoch: int, means: dict[str, float], seconds: float) -> None:
        if trainer.checkpoint_due(epoch):
            trainer.save_epoch(epoch)


class EvalHook(TrainHook):
    """Evaluation on the test cases every ``eval_every`` epochs (the final one is the loop's)."""

    def after_epoch(self, trainer: Trainer, epoch: int, means: dict[str, float], seconds: float) -> None:
        cfg = trainer.cfg
        if cfg.eval_every and epoch % cfg.eval_every == 0 and epoch != cfg.epochs:
            trainer.evaluate(epoch)


def main_process_hooks(progress: bool) -> list[TrainHook]:
    """The hooks of rank 0 (a single-process run is rank 0)."""
    hooks: list[TrainHook] = [LogHook(), CheckpointHook(), EvalHook()]
    return ([ProgressHook()] if progress else []) + hooks
