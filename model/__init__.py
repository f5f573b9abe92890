"""SAS-VPReID model: ``from model import ModelConfig, build_model, save_checkpoint, load_checkpoint``.

Names are imported on first use, so light submodules (``model.data``, ``model.sampling``) do not
pay for importing torch and open_clip.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CheckpointError": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "ModelConfig": "model.config",
    "ModelOutput": "model.sasreid",
    "SASVPReID": "model.sasreid",
    "build_model": "model.sasreid",
}

__all__ = [
    "CheckpointError",
    "ModelConfig",
    "ModelOutput",
    "SASVPReID",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from model.config import ModelConfig
    from model.sasreid import ModelOutput, SASVPReID, build_model


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
