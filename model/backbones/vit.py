"""CLIP ViT visual tower (open_clip) adapted to person crops: non-square input, token outputs,
selective fine-tuning and an optional camera/platform embedding on the class token."""

from __future__ import annotations

import torch
from torch import nn

from model.backbones.base import Backbone, SideInfo, interpolate_pos_embed, register_backbone
from model.compat import ensure_torchvision_importable
from model.config import BackboneConfig

ensure_torchvision_importable()
from open_clip.transformer import QuickGELU, VisionTransformer  # noqa: E402


@register_backbone("vit")
class CLIPViTBackbone(Backbone):
    """Frames ``[n, 3, H, W]`` -> projected class token ``[n, output_dim]`` and tokens
    ``[n, 1 + P, width]`` (after ``ln_post``)."""

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
        self.feature_dim = cfg.output_dim
        self.token_dim = cfg.width
        self.side_info = SideInfo(cfg, cfg.width)
        self.apply_fine_tuning(cfg.trainable_blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    def adapt_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "positional_embedding" in state:
            state = {**state, "positional_embedding": interpolate_pos_embed(state["positional_embedding"],
                                                                            self.cfg.grid)}
        return state

    def apply_fine_tuning(self, trainable_blocks: int | str) -> None:
        """Only the last N blocks (+ final norm, projection) train; ``"all"`` trains the tower.

        The side-info embeddings are new and always train.
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
        side = self.side_info(camera, platform)
        if side is not None:
            cls = cls + side[:, None].to(x.dtype)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        x = v.transformer(x)
        x = v.ln_post(x)
        return x[:, 0] @ v.proj, x
