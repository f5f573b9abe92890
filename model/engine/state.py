"""The training-state file next to each epoch checkpoint, for exact resume.

``RUN_DIR/checkpoints/epoch_XXX/`` is a normal model checkpoint (``config.json`` +
``model.safetensors``, loadable by ``load_checkpoint``) plus ``training_state.pt``: optimizer,
schedule, epoch and global iteration, every RNG state (python, numpy, torch CPU and CUDA) and the
sampler's seed/epoch. The weights' fingerprint is stored in the state too, so a state is never
paired with other weights. Only the newest ``keep_states`` checkpoints keep their state file.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "training_state.pt"
STATE_FORMAT = "sas-vpreid-training-state"
STATE_VERSION = 1
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


def epoch_dir(run_dir: Path, epoch: int) -> Path:
    """``RUN_DIR/checkpoints/epoch_XXX`` for ``epoch`` completed epochs."""
    return run_dir / "checkpoints" / f"epoch_{epoch:03d}"


def rng_states() -> dict[str, Any]:
    """Every global RNG state the training loop can touch."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states` (the CUDA states only where CUDA is available)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class TrainingState:
    """What, besides the weights, a resumed run needs."""

    epoch: int  # completed epochs
    global_iter: int
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    rng: dict[str, Any]
    sampler: dict[str, int]
    fingerprint: str
    train_config: dict[str, Any]
    weight_average: dict[str, Any] | None = None  # WeightAverage.state_dict() when the run averages
    world_size: int = 1  # processes that trained the run (a resume must use as many)
    rank_rng: list[dict[str, Any]] | None = None  # every rank's RNG states (distributed runs)

    def save(self, directory: Path) -> Path:
        """Write ``directory/training_state.pt`` atomically."""
        path = directory / STATE_FILE
        tmp = directory / (STATE_FILE + ".tmp")
        torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **self.__dict__}, tmp)
        os.replace(tmp, path)
        return path

    @staticmethod
    def load(directory: Path) -> TrainingState:
        path = directory / STATE_FILE
        try:
            # weights_only=False: the state holds numpy RNG state and python tuples; it is our own file.
            data = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as exc:
            raise ValueError(f"{path}: unreadable training state ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a SAS-VPReID training state")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: training state version {data.get('version')}, expected {STATE_VERSION}")
        fields = TrainingState.__dataclass_fields__
        optional = {"weight_average": None, "world_size": 1, "rank_rng": None}
        return TrainingState(**{k: data.get(k, optional[k]) if k in optional else data[k] for k in fields})


def latest_state_dir(run_dir: Path) -> Path | None:
    """The epoch checkpoint with the most epochs that has a training state, or ``None``."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _EPOCH_DIR.match(p.name))
             and (p / STATE_FILE).is_file() and (p / "config.json").is_file()]
    return max(found)[1] if found else None


def prune_states(run_dir: Path, keep: int) -> None:
    """Delete the training state of all but the newest ``keep`` epoch checkpoints (weights stay)."""
    root = run_dir / "checkpoints"
    dirs = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _EPOCH_DIR.match(p.name))
                  and (p / STATE_FILE).is_file())
    for _epoch, path in dirs[:-keep] if keep > 0 else dirs:
        (path / STATE_FILE).unlink(missing_ok=True)
