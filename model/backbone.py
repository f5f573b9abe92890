"""CLIP ViT visual tower (open_clip) adapted to person crops: non-square input, token outputs,
selective fine-tuning and an optional camera/platform embedding on the class token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.compat import ensure_torchvision_importable
from model.config import BackboneConfig

ensure_torchvision_importable()
from open_clip.transformer import QuickGELU, VisionTransformer  # noqa: E402

PLATFORMS = ("ground", "aerial")


def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ViT positional embedding to a new patch grid.

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


class CLIPBackbone(nn.Module):
    """Frames ``[n, 3, H, W]`` -> projected class token ``[n, d]`` and tokens ``[n, 1 + P, width]``."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            width=cfg.width,
            layers=cfg.layers,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            output_dim=cfg.output_dim,
            act_layer=QuickGELU if cfg.quick_gelu else nn.GELU,
        )
        self.visual.set_grad_checkpointing(cfg.grad_checkpointing)
        self.camera_embed: nn.Parameter | None = None
        self.platform_embed: nn.Parameter | None = None
        if cfg.side_info in ("camera", "both"):
            self.camera_embed = nn.Parameter(torch.zeros(cfg.num_cameras, cfg.width))
        if cfg.side_info in ("platform", "both"):
            self.platform_embed = nn.Parameter(torch.zeros(len(PLATFORMS), cfg.width))
        for p in (self.camera_embed, self.platform_embed):
            if p is not None and not p.is_meta:
                nn.init.trunc_normal_(p, std=0.02)
        self.apply_fine_tuning(cfg.trainable_blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    def apply_fine_tuning(self, trainable_blocks: int | str) -> None:
        """Selective fine-tuning: only the last N blocks (+ final norm, projection) train.

        ``"all"`` trains the whole tower. The side-info embeddings are new and always train.
        """
        if trainable_blocks == "all":
            for p in self.visual.parameters():
                p.requires_grad_(True)
            return
        n = int(trainable_blocks)
        if not 0 <= n <= self.num_blocks:
            raise ValueError(f"trainable_blocks must be 'all' or 0..{self.num_blocks}, got {n}")
        for p in self.visual.parameters():
            p.requires_grad_(False)
        blocks = self.visual.transformer.resblocks
        for block in list(blocks)[self.num_blocks - n:]:
            for p in block.parameters():
                p.requires_grad_(True)
        if n > 0:
            for p in (*self.visual.ln_post.parameters(), self.visual.proj):
                p.requires_grad_(True)

    def forward(
        self,
        x: torch.Tensor,
        camera: torch.Tensor | None = None,
        platform: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.visual
        x = v.conv1(x)  # [n, width, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [n, P, width]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        if self.camera_embed is not None and camera is not None:
            cls = cls + self.cfg.side_info_scale * self.camera_embed[camera % self.cfg.num_cameras][:, None]
        if self.platform_embed is not None and platform is not None:
            cls = cls + self.cfg.side_info_scale * self.platform_embed[platform][:, None]
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        x = v.transformer(x)
        x = v.ln_post(x)
        return x[:, 0] @ v.proj, x
