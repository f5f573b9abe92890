"""Learning-rate schedules: paper 1 section 4.2's linear warm-up then step decay by epoch, or the
same warm-up then a cosine decay to zero over the run (the CPU recipe's)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def lr_factor(iteration: int, epoch: int, warmup_iters: int, warmup_start: float,
              milestones: Sequence[int], gamma: float, total_iters: int | None = None) -> float:
    """Multiplier of every group's base lr at a (0-based) global ``iteration`` inside ``epoch``.

    Warm-up (iterations ``0 .. warmup_iters - 1``): ``warmup_start + (1 - warmup_start) * i / warmup_iters``,
    i.e. linear from ``warmup_start`` (= 3.5e-5 / 3.5e-4 = 0.1 in the paper) towards 1.
    Afterwards ``gamma ** #{m in milestones : epoch >= m}`` (x0.1 from epochs 10, 20, 30), or, when
    ``total_iters`` is given (cosine), ``(1 + cos(pi * (i - warmup_iters) / (total_iters - warmup_iters))) / 2``.
    """
    if total_iters is not None:
        span = max(total_iters - warmup_iters, 1)
        decay = 0.5 * (1.0 + math.cos(math.pi * min(max(iteration - warmup_iters, 0) / span, 1.0)))
    else:
        decay = gamma ** sum(1 for m in milestones if epoch >= m)
    if iteration < warmup_iters:
        return (warmup_start + (1.0 - warmup_start) * iteration / warmup_iters) * decay
    return decay


class WarmupStepSchedule:
    """Sets each param group's lr to ``base_lr * lr_factor(...)`` before every iteration.

    Stateless apart from the base lrs, so resuming needs only the global iteration and epoch
    (kept in the training state); ``state_dict`` is there for completeness of the state file.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int, warmup_start: float,
                 milestones: Sequence[int], gamma: float, total_iters: int | None = None) -> None:
        self.optimizer = optimizer
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.warmup_iters = warmup_iters
        self.warmup_start = warmup_start
        self.milestones = tuple(milestones)
        self.gamma = gamma
        self.total_iters = total_iters

    def set(self, iteration: int, epoch: int) -> list[float]:
        """Apply the schedule for ``iteration`` / ``epoch``; returns the lrs set, per group."""
        f = lr_factor(iteration, epoch, self.warmup_iters, self.warmup_start, self.milestones, self.gamma,
                      self.total_iters)
        lrs = [base * f for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        return lrs

    def state_dict(self) -> dict[str, object]:
        return {"base_lrs": list(self.base_lrs), "warmup_iters": self.warmup_iters,
                "warmup_start": self.warmup_start, "milestones": list(self.milestones), "gamma": self.gamma,
                "total_iters": self.total_iters}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.base_lrs = [float(x) for x in state["base_lrs"]]  # type: ignore[union-attr]
