"""Loading pretrained CLIP visual weights from local files.

Accepted files (nothing is ever downloaded):
- OpenAI CLIP ``.pt`` (a TorchScript archive, e.g. ``ViT-L-14.pt``);
- open_clip checkpoints (``{"state_dict": ...}``, optionally ``module.``-prefixed) or bare state
  dicts saved with ``torch.save``;
- ``.safetensors`` files (full CLIP or visual tower only).
Keys may be full-model (``visual.conv1.weight``) or visual-only (``conv1.weight``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from model.backbones import Backbone


class WeightsError(ValueError):
    """A weights file that cannot be used, with the path and the reason."""


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read any supported weights file into a flat CPU state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if _is_torchscript(path):
            return {k: v for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as exc:  # corrupt archive, pickle error, ...
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict (found {type(obj).__name__})")
    return obj


def visual_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the visual tower's entries, without ``module.`` / ``visual.`` prefixes."""
    out: dict[str, torch.Tensor] = {}
    has_visual = any(k.removeprefix("module.").startswith("visual.") for k in state)
    for key, value in state.items():
        key = key.removeprefix("module.")
        if has_visual:
            if not key.startswith("visual."):
                continue
            key = key[len("visual."):]
        out[key] = value
    return out


def load_clip_weights(backbone: Backbone, path: str | Path) -> None:
    """Load pretrained CLIP visual weights into ``backbone`` (positional embeddings resized)."""
    state = backbone.adapt_pretrained(visual_state_dict(read_state_dict(path)))
    own = backbone.visual.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise WeightsError(
            f"{path}: not weights for a {backbone.cfg.name} visual tower; missing {len(missing)} keys "
            f"(e.g. {missing[:3]})" + (f", unexpected {unexpected[:3]}" if unexpected else "")
        )
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise WeightsError(
            f"{path}: shape mismatch for {backbone.cfg.name}: {k} is {got} in the file, model expects {want}"
            f" ({len(bad)} mismatched tensors in all) - is this the right config?"
        )
    backbone.visual.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)
