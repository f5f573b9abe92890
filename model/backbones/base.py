"""The backbone interface, the registry of backbone kinds, and positional-embedding resizing.

A backbone turns frames ``[n, 3, H, W]`` into a frame feature ``f_t: [n, feature_dim]`` (the
MEVB's input, eq. 4) and tokens ``[n, 1 + P, token_dim]`` whose first entry is a summary (class)
token and the rest ``P`` spatial tokens (MGTM's input). Its pretrained part is ``visual`` (the
CLIP tower, loadable from CLIP weight files); everything else in it is new.

Kinds register themselves with :func:`register_backbone`; :func:`make_backbone` builds one from
``BackboneConfig.arch``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BackboneConfig
from model.data.tracklet import PLATFORMS


class Backbone(nn.Module):
    """Interface of every backbone kind (see the module docstring)."""

    cfg: BackboneConfig
    visual: nn.Module
    feature_dim: int
    token_dim: int

    def forward(self, x: torch.Tensor, camera: torch.Tensor | None = None,
                platform: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def adapt_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A CLIP visual state dict made to fit ``visual`` (positional embeddings resized)."""
        return state

    def apply_fine_tuning(self, trainable_blocks: int | str) -> None:
        """Selective fine-tuning (paper 2): only the last N blocks of ``visual`` train."""
        raise NotImplementedError


BACKBONES: dict[str, type[Backbone]] = {}


def register_backbone(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    def add(cls: type[Backbone]) -> type[Backbone]:
        BACKBONES[name] = cls
        return cls

    return add


def make_backbone(cfg: BackboneConfig) -> Backbone:
    """The backbone of kind ``cfg.arch``; a ``ValueError`` names the valid kinds."""
    try:
        cls = BACKBONES[cfg.arch]
    except KeyError:
        raise ValueError(f"unknown backbone arch {cfg.arch!r}; choose one of {sorted(BACKBONES)}") from None
    return cls(cfg)


def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a positional embedding with a leading class position to a new patch grid.

    ``pos: [1 + g_h * g_w, width]`` with the class position first; the source grid is taken as
    square (pretrained CLIP) unless its size already equals the target. Bicubic interpolation of
    the patch positions; the class position is kept. Returns ``[1 + grid_h * grid_w, width]``.
    """
    n_src = pos.shape[0] - 1
    if n_src == grid[0] * grid[1]:
        return pos
    side = round(n_src ** 0.5)
    if side * side != n_src:
        raise ValueError(f"cannot interpolate a non-square positional embedding of {n_src} patches")
    cls, patches = pos[:1], pos[1:]
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls, patches], dim=0)


class SideInfo(nn.Module):
    """Paper 2's optional learned camera / platform embedding, added to a summary vector."""

    def __init__(self, cfg: BackboneConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.camera_embed: nn.Parameter | None = None
        self.platform_embed: nn.Parameter | None = None
        if cfg.side_info in ("camera", "both"):
            self.camera_embed = nn.Parameter(torch.zeros(cfg.num_cameras, dim))
        if cfg.side_info in ("platform", "both"):
            self.platform_embed = nn.Parameter(torch.zeros(len(PLATFORMS), dim))
        for p in (self.camera_embed, self.platform_embed):
            if p is not None and not p.is_meta:
                nn.init.trunc_normal_(p, std=0.02)

    def forward(self, camera: torch.Tensor | None, platform: torch.Tensor | None) -> torch.Tensor | None:
        """The embedding to add for ``[n]`` camera / platform ids: ``[n, dim]``, or None."""
        out = None
        if self.camera_embed is not None and camera is not None:
            out = self.cfg.side_info_scale * self.camera_embed[camera % self.cfg.num_cameras]
        if self.platform_embed is not None and platform is not None:
            emb = self.cfg.side_info_scale * self.platform_embed[platform]
            out = emb if out is None else out + emb
        return out
