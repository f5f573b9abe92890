"""Tracklet encoders: one small interface in front of every embedding backend.

The service only ever talks to an ``Encoder``: it turns a batch of preprocessed tracklets
``[B, T, 3, H, W]`` into L2-normalised float32 descriptors ``[B, D]``. ``make_encoder`` picks the
implementation from ``settings.backend``; a new backend (ONNX Runtime) is one more class here and
one more branch there.

Preprocessing is shared by all backends (``prepare_tracklet``): frames are converted with
``model.preprocess`` (RGB, bicubic resize to the model's input size, CLIP normalisation) after
frame sampling. Every tracklet is embedded with exactly ``eval_frames`` frames (8 for the
presets) chosen by ``model.sampling.even_indices`` (the centre frame of each of ``eval_frames``
equal segments, in time order; a shorter tracklet repeats frames in order). That is the
test-time protocol of ``sasreid evaluate``, so the API and the evaluator give the same
descriptor for the same frames, and it is the fixed T an exported ONNX graph takes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from model.preprocess import images_to_tensor
from model.sampling import even_indices

if TYPE_CHECKING:
    from service.core.config import Settings

BackendName = Literal["torch", "onnx"]


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: ``size`` = (H, W), normalisation, and frames per tracklet."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_frames: int


@runtime_checkable
class Encoder(Protocol):
    fingerprint: str
    dim: int
    device: str
    backend: BackendName
    input_size: tuple[int, int]
    input_spec: InputSpec

    def encode(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """``[B, T, 3, H, W]`` normalised frames -> float32 ``[B, D]``, rows L2-normalised.

        Deterministic and batch-independent: a tracklet's descriptor does not depend on the other
        tracklets of the batch (the micro-batcher relies on this).
        """
        ...


def sampled_indices(num_frames: int, spec: InputSpec) -> list[int]:
    """Which of a tracklet's ``num_frames`` frames the model sees, in order (repeats allowed)."""
    if num_frames == 0:
        raise ValueError("a tracklet needs at least one frame")
    return [int(i) for i in even_indices(num_frames, spec.eval_frames).tolist()]


def images_to_input(picked: Sequence[Image.Image], spec: InputSpec) -> np.ndarray:
    """Already sampled PIL frames -> float32 ``[T, 3, H, W]`` model input."""
    return images_to_tensor(picked, spec.size, spec.mean, spec.std).numpy()


def prepare_tracklet(images: Sequence[Image.Image], spec: InputSpec) -> np.ndarray:
    """One tracklet's PIL frames (time order) -> float32 ``[T, 3, H, W]`` model input."""
    return images_to_input([images[i] for i in sampled_indices(len(images), spec)], spec)


class TorchEncoder:
    """A SAS-VPReID checkpoint run with PyTorch; bf16 autocast on CUDA, float32 on CPU."""

    backend: BackendName = "torch"

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        from model import load_checkpoint

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
        self.model = load_checkpoint(checkpoint, device=device)
        self.model.eval()
        if not self.model.fingerprint:
            raise RuntimeError(f"checkpoint {checkpoint} carries no fingerprint")
        self.fingerprint: str = self.model.fingerprint
        self.dim: int = int(self.model.descriptor_dim)
        self.device: str = device
        cfg = self.model.cfg
        self.input_size: tuple[int, int] = tuple(self.model.input_size)  # type: ignore[assignment]
        self.input_spec = InputSpec(
            size=self.input_size,
            mean=tuple(cfg.mean),  # type: ignore[arg-type]
            std=tuple(cfg.std),  # type: ignore[arg-type]
            eval_frames=int(cfg.eval_frames),
        )
        # embed() switches the module to eval and back; one call at a time keeps that safe.
        self._lock = threading.Lock()

    def encode(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(frames, dtype=torch.float32)
        if x.dim() != 5 or x.shape[2] != 3 or tuple(x.shape[3:]) != self.input_size:
            raise ValueError(
                f"frames must be [B, T, 3, {self.input_size[0]}, {self.input_size[1]}], got {tuple(x.shape)}"
            )
        with self._lock, torch.inference_mode():
            out = self.model.embed(x.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()


class OnnxEncoder:
    """An exported SAS-VPReID model (``sasreid export``) run with ONNX Runtime.

    The fingerprint, descriptor size, frames per tracklet and preprocessing come from the model's
    metadata, so the gallery's fingerprint check covers the ONNX file like the checkpoint it was
    exported from. On ``cuda`` the CUDA execution provider is required (onnxruntime-gpu).
    """

    backend: BackendName = "onnx"

    def __init__(self, model_path: str | Path, device: str = "cpu") -> None:
        import json

        import onnxruntime as ort

        from model.export import read_onnx_metadata

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found (make one with `sasreid export`)")
        meta = read_onnx_metadata(path)
        missing = {"fingerprint", "descriptor_dim", "frames", "input_size", "mean", "std"} - set(meta)
        if missing:
            raise ValueError(f"{path}: not exported by `sasreid export` (metadata lacks {sorted(missing)})")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("device 'cuda' requested but onnxruntime has no CUDA execution provider "
                                   "(install onnxruntime-gpu: pip install -e '.[gpu]')")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.fingerprint: str = meta["fingerprint"]
        self.dim: int = int(meta["descriptor_dim"])
        self.device: str = device
        self.input_size: tuple[int, int] = tuple(json.loads(meta["input_size"]))  # type: ignore[assignment]
        self.input_spec = InputSpec(
            size=self.input_size,
            mean=tuple(json.loads(meta["mean"])),  # type: ignore[arg-type]
            std=tuple(json.loads(meta["std"])),  # type: ignore[arg-type]
            eval_frames=int(meta["frames"]),
        )

    def encode(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(torch.as_tensor(frames, dtype=torch.float32).numpy())
        t = self.input_spec.eval_frames
        if x.ndim != 5 or x.shape[1] != t or x.shape[2] != 3 or tuple(x.shape[3:]) != self.input_size:
            raise ValueError(
                f"frames must be [B, {t}, 3, {self.input_size[0]}, {self.input_size[1]}] (T is fixed at export), "
                f"got {tuple(x.shape)}"
            )
        return self.session.run(["descriptor"], {"frames": x})[0].astype(np.float32, copy=False)


def make_encoder(settings: Settings) -> Encoder:
    """The encoder named by ``settings.backend``: the checkpoint (torch) or the ONNX file (onnx)."""
    if settings.backend == "onnx":
        if settings.model is None:
            raise ValueError("the onnx backend needs an exported model: --model model.onnx (SASREID_MODEL)")
        return OnnxEncoder(settings.model, device=settings.device)
    if settings.checkpoint is None:
        raise ValueError("no checkpoint configured")
    return TorchEncoder(settings.checkpoint, device=settings.device)
