"""Turning frames (PIL images of any size) into the model's normalised input tensors.

One implementation for every path that feeds the model (training/eval datasets, the service,
the ONNX encoder), so the same images give the same descriptor everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def image_to_array(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """RGB, bicubic resize to ``size = (H, W)``; returns uint8 ``[H, W, 3]``."""
    image = image.convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def to_unit_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` in [0, 1]."""
    # np.array copies: arrays that view PIL images are read-only, which torch warns about.
    return torch.from_numpy(np.array(frames, dtype=np.uint8)).float().div_(255.0).movedim(-1, -3)


def normalise(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(frames - mean) / std`` per channel; ``frames`` is ``[..., 3, H, W]`` in [0, 1]."""
    m = torch.tensor(mean, dtype=frames.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=frames.dtype).view(3, 1, 1)
    return (frames - m) / s


def images_to_tensor(images: Sequence[Image.Image], size: tuple[int, int], mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """One tracklet's frames, in the given (time) order -> ``[T, 3, H, W]``."""
    if len(images) == 0:
        raise ValueError("a tracklet needs at least one frame")
    return normalise(to_unit_tensor(np.stack([image_to_array(im, size) for im in images])), mean, std)
