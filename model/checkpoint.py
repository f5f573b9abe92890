"""Checkpoints: one directory with ``config.json`` and ``model.safetensors``.

``config.json`` holds the format name and version, the model config, the descriptor dimension
and a fingerprint of the weights (sha256 over every tensor's name, dtype, shape and bytes). The
fingerprint is checked on load, so a truncated or modified weights file fails loudly, and it is
what a gallery records to refuse descriptors made by another model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig
from model.sasreid import SASVPReID, build_model

FORMAT = "sas-vpreid-checkpoint"
# 2: per-branch descriptor normalisation and weights, PRSD output norm, MGTM residual blocks,
# ResNet backbones (version-1 weights do not fit these modules).
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the path and the problem."""


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order; first 16 hex digits."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _state_for_saving(model: SASVPReID) -> dict[str, torch.Tensor]:
    # safetensors refuses shared/non-contiguous storage; clone gives each tensor its own.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(model: SASVPReID, path: str | Path, extra: dict[str, Any] | None = None) -> str:
    """Write ``model`` to directory ``path`` (created; files replaced atomically). Returns the fingerprint."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = _state_for_saving(model)
    fingerprint = weights_fingerprint(state)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "descriptor_dim": model.descriptor_dim,
        "descriptor_layout": [part.to_dict() for part in model.descriptor_layout],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model.cfg.to_dict(),
        "extra": extra or {},
    }
    tmp_w, tmp_c = path / (WEIGHTS_FILE + ".tmp"), path / (CONFIG_FILE + ".tmp")
    save_file(state, str(tmp_w), metadata={"fingerprint": fingerprint})
    tmp_c.write_text(json.dumps(meta, indent=2))
    # Weights first, config last: a config.json always describes the weights beside it.
    os.replace(tmp_w, path / WEIGHTS_FILE)
    os.replace(tmp_c, path / CONFIG_FILE)
    model.fingerprint = fingerprint
    return fingerprint


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """Read and validate ``config.json`` of a checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found (expected a folder with "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: missing {CONFIG_FILE}; not a SAS-VPReID checkpoint")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file}: corrupt config ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file}: not a SAS-VPReID checkpoint config (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version}, but this sasreid reads version {FORMAT_VERSION};"
            " re-export it with a matching sasreid version"
        )
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> SASVPReID:
    """Load a checkpoint directory into a model in eval mode, verifying the weights fingerprint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_checkpoint_config(path)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid model config ({exc})") from exc
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: corrupt weights file ({exc})") from exc
    fingerprint = weights_fingerprint(state)
    if fingerprint != meta.get("fingerprint"):
        raise CheckpointError(
            f"{weights}: weights fingerprint {fingerprint} does not match {meta.get('fingerprint')} in "
            f"{CONFIG_FILE}; the file is corrupt or was modified"
        )
    model = build_model(cfg, device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: weights do not fit the model config ({exc})") from exc
    model.fingerprint = fingerprint
    return model.to(device).eval()
