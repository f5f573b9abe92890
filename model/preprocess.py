"""Turning frames (PIL images of any size) into the model's normalised input tensors."""

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


def normalize_frames(frames: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` scaled to [0, 1] and normalised."""
    x = torch.as_tensor(frames).float().div_(255.0)
    x = x.movedim(-1, -3)
    m = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s


def images_to_tensor(images: Sequence[Image.Image], size: tuple[int, int], mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """One tracklet's frames, in the given (time) order -> ``[T, 3, H, W]``."""
    if len(images) == 0:
        raise ValueError("a tracklet needs at least one frame")
    return normalize_frames(np.stack([image_to_array(im, size) for im in images]), mean, std)
