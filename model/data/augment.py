"""Tracklet-consistent augmentation (SAS-VPReID section 3.2 and 4.2).

Every random parameter (flip, translation, erasing rectangle, hue shift, colour jitter, greyscale) is drawn **once per tracklet** and
applied identically to all of its frames, so augmentation never introduces frame-to-frame
flicker. Frames are float tensors in ``[0, 1]`` of shape ``[T, 3, H, W]``, before
normalisation; erased pixels are filled with ``erase_fill`` (by default the CLIP mean colour,
which normalises to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from model.config import CLIP_MEAN


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; defaults follow the paper (h=0.3, p_c=0.5) and torchvision's
    RandomErasing (scale 0.02-0.33, log-uniform aspect 0.3-3.3)."""

    flip_p: float = 0.5
    erase_p: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_fill: tuple[float, float, float] = CLIP_MEAN
    hue_p: float = 0.5
    hue_max: float = 0.3
    # Random translation (the ReID "pad and random crop"): the frame is padded by this many
    # black pixels on each side and cropped back to its size at a random offset; 0 = off.
    crop_pad: int = 0
    # Photometric jitter (torchvision ColorJitter's brightness / contrast / saturation with one
    # factor range [1 - j, 1 + j]) with probability jitter_p, and greyscale with probability
    # gray_p: cross-camera pairs differ in colour and exposure. 0 = off.
    jitter_p: float = 0.0
    jitter: float = 0.0
    gray_p: float = 0.0


@dataclass(frozen=True)
class AugmentParams:
    """Parameters drawn for one tracklet. ``erase`` is ``(top, left, height, width)``;
    ``shift`` is the ``(dy, dx)`` translation in pixels."""

    flip: bool
    erase: tuple[int, int, int, int] | None
    hue: float | None
    shift: tuple[int, int] = (0, 0)
    # (brightness, contrast, saturation) factors, or None; and whether to make the frames grey.
    jitter: tuple[float, float, float] | None = None
    gray: bool = False


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` RGB in [0, 1] -> HSV with all channels in [0, 1] (colorsys convention).

    Hue sector from the arg-max channel (ties resolved r, g, b as colorsys does):
    ``h = (2 * argmax + (next - after_next) / delta) / 6`` with channels taken cyclically.
    """
    maxc, argmax = rgb.max(dim=-3, keepdim=True)
    minc = rgb.amin(dim=-3, keepdim=True)
    delta = maxc - minc
    # Cyclic differences per channel: r -> g - b, g -> b - r, b -> r - g.
    diff = rgb.roll(-1, dims=-3) - rgb.roll(-2, dims=-3)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = (torch.gather(diff, -3, argmax) / safe + 2.0 * argmax) / 6.0
    h = torch.where(delta > 0, torch.remainder(h, 1.0), torch.zeros_like(h))
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    return torch.cat((h, s, maxc), dim=-3)


_HSV_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv``: ``[..., 3, H, W]`` HSV -> RGB in [0, 1].

    Closed form per channel n in (5, 3, 1): ``v - v * s * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6h) mod 6``.
    """
    h, s, v = hsv.split(1, dim=-3)
    k = torch.remainder(_HSV_OFFSETS.to(hsv.dtype) + 6.0 * h, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v - v * s * ramp


def adjust_hue(frames: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate hue by ``shift`` turns (``[-0.5, 0.5]``, as torchvision's ``adjust_hue``).

    ``frames``: ``[..., 3, H, W]`` in [0, 1]; saturation and value are unchanged.
    """
    if not -0.5 <= shift <= 0.5:
        raise ValueError(f"hue shift must be in [-0.5, 0.5], got {shift}")
    hsv = rgb_to_hsv(frames)
    hsv[..., 0:1, :, :] = torch.remainder(hsv[..., 0:1, :, :] + shift, 1.0)
    return hsv_to_rgb(hsv)


def draw_erase_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int] | None:
    """Random erasing rectangle ``(top, left, h, w)`` (torchvision rule: 10 tries, else None)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        h = round(math.sqrt(target * aspect))
        w = round(math.sqrt(target / aspect))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return None


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601, as torchvision's rgb_to_grayscale


def grey(frames: torch.Tensor) -> torch.Tensor:
    """Luma of ``[..., 3, H, W]`` repeated over the 3 channels."""
    return (frames * _LUMA.to(frames.dtype)).sum(dim=-3, keepdim=True).expand_as(frames)


def color_jitter(frames: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """torchvision's ColorJitter steps in its fixed order, on ``[T, 3, H, W]`` in [0, 1]:
        brightness: x * b;  contrast: m + c (x - m), m = mean luma of each frame;
        saturation: g + s (x - g), g = the frame's luma;  clamped to [0, 1] after each step.
    """
    out = (frames * brightness).clamp_(0.0, 1.0)
    mean = grey(out).mean(dim=(-3, -2, -1), keepdim=True)
    out = (mean + contrast * (out - mean)).clamp_(0.0, 1.0)
    g = grey(out)
    return (g + saturation * (out - g)).clamp_(0.0, 1.0)


def translate(frames: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift ``[..., H, W]`` content by ``(dy, dx)`` pixels (down, right), filling with black (0):
    the same as padding by ``|d|`` and cropping at the shifted offset."""
    out = torch.zeros_like(frames)
    h, w = frames.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[..., dst_y, dst_x] = frames[..., src_y, src_x]
    return out


class TrackletAugment:
    """Draws one set of parameters per tracklet and applies it to every frame."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()

    def draw(self, rng: np.random.Generator, height: int, width: int) -> AugmentParams:
        """Parameters for one tracklet of ``height x width`` frames (a fixed number of draws,
        so the rng stream does not depend on which branches fire)."""
        c = self.config
        u_flip, u_erase, u_hue = rng.random(3)
        hue = float(rng.uniform(-c.hue_max, c.hue_max))
        box = draw_erase_box(rng, height, width, c.erase_scale, c.erase_ratio)
        params = AugmentParams(
            flip=bool(u_flip < c.flip_p),
            erase=box if u_erase < c.erase_p else None,
            hue=hue if u_hue < c.hue_p else None,
        )
        if c.crop_pad > 0:  # drawn last, so runs without translation keep their old streams
            dy, dx = (int(v) for v in rng.integers(-c.crop_pad, c.crop_pad + 1, size=2))
            params = AugmentParams(params.flip, params.erase, params.hue, (dy, dx))
        if c.jitter_p > 0 or c.gray_p > 0:  # drawn after the others, so their streams are unchanged
            u_jitter, u_gray = rng.random(2)
            factors = tuple(float(f) for f in rng.uniform(1 - c.jitter, 1 + c.jitter, size=3))
            params = AugmentParams(params.flip, params.erase, params.hue, params.shift,
                                   factors if u_jitter < c.jitter_p else None, bool(u_gray < c.gray_p))
        return params

    def apply(self, frames: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply ``params`` to ``frames`` ``[T, 3, H, W]`` in [0, 1]; returns a new tensor."""
        out = frames
        if params.jitter is not None:
            out = color_jitter(out, *params.jitter)
        if params.hue is not None:
            out = adjust_hue(out, params.hue)
        if params.gray:
            out = grey(out).contiguous()
        if params.flip:
            out = torch.flip(out, dims=(-1,))
        if params.shift != (0, 0):
            out = translate(out, *params.shift)
        if params.erase is not None:
            top, left, h, w = params.erase
            out = out.clone()
            fill = torch.tensor(self.config.erase_fill, dtype=out.dtype).view(3, 1, 1)
            out[..., top : top + h, left : left + w] = fill
        return out

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return self.apply(frames, self.draw(rng, frames.shape[-2], frames.shape[-1]))
