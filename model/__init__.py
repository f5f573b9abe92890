"""SAS-VPReID model: ``from model import ModelConfig, build_model, save_checkpoint, load_checkpoint``."""

from model.compat import ensure_torchvision_importable

ensure_torchvision_importable()

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.sasreid import ModelOutput, SASVPReID, build_model  # noqa: E402

__all__ = [
    "CheckpointError",
    "ModelConfig",
    "ModelOutput",
    "SASVPReID",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]
