"""An exponential moving average of the weights (mean teacher / SWA-style weight averaging).

Averaging the weights along the optimisation path finds flatter minima, which transfer better to
unseen cameras than the last iterate (Izmailov et al. 2018, SWA; Cha et al. 2021, SWAD for domain
generalisation). After every optimizer step::

    d_n = min(decay, (1 + n) / (10 + n))            n = updates so far (early steps average less)
    w_avg <- d_n * w_avg + (1 - d_n) * w            for every floating parameter and buffer

Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. With ``decay = 0.999`` and ~100
iterations per epoch the average spans roughly the last ten epochs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def average_decay(decay: float, updates: int) -> float:
    """The decay used at update number ``updates`` (0-based): ``min(decay, (1+n)/(10+n))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """The running average of one model's ``state_dict`` (held on the model's device)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight-average decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current weights into the average (call after ``optimizer.step()``)."""
        d = average_decay(self.decay, self.updates)
        for name, value in model.state_dict().items():
            avg = self.shadow[name]
            if avg.is_floating_point():
                avg.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                avg.copy_(value)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Load the averaged weights into ``model`` for the block, then restore its own."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow, strict=True)
        try:
            yield model
        finally:
            model.load_state_dict(own, strict=True)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("weight-average state does not match the model's parameters")
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
