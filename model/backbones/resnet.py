"""CLIP's ModifiedResNet (open_clip; the RN50 family) as a person-crop backbone.

The tower is open_clip's own (3-convolution stem, anti-aliased strided blocks, optional QKV
attention pool), so CLIP RN weights load into it. Changes for re-identification:

- ``last_stride = 1`` keeps layer4 at stride 16 (the ReID convention; the stride of a CLIP block
  is a parameter-free average pool, so pretrained weights still fit);
- ``pool``: ``"attention"`` is CLIP's attention pool (its positional embedding resized to the
  person grid, output ``output_dim``); ``"avg"`` is the global average of the last feature map
  (``feature_dim = 32 * width``), the usual choice when training from scratch;
- ``ibn``: IBN-Net-a normalisation (Pan et al. 2018): half the channels of the first convolution
  of every block in layers 1-3 are instance-normalised, which removes per-image colour and
  contrast statistics that do not transfer between cameras;
- ``parts``: the frame feature is the global feature followed by ``parts`` horizontal stripes of
  the last feature map, each average-pooled and projected to ``part_dim`` (PCB, Sun et al. 2018):
  where a colour or texture sits on the body (head, torso, legs) is what transfers between
  cameras best when training from scratch on a few thousand images;
- tokens for MGTM: the last feature map's cells (average-pooled to ``token_grid`` when set: the
  Mamba scan's cost grows with the token count), projected to ``token_dim``, behind their mean
  as the summary token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones.base import Backbone, SideInfo, interpolate_pos_embed, register_backbone
from model.compat import ensure_torchvision_importable
from model.config import BackboneConfig

ensure_torchvision_importable()
from open_clip.modified_resnet import Bottleneck, ModifiedResNet  # noqa: E402

STRIDE = 32  # CLIP ResNet output stride with every stage strided


class IBN(nn.Module):
    """``concat(InstanceNorm(x[:, :c/2]), BatchNorm(x[:, c/2:]))`` (IBN-a)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.split([self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


def resnet_grid(cfg: BackboneConfig) -> tuple[int, int]:
    """Size ``(h, w)`` of the last feature map for ``cfg.image_size``."""
    stride = STRIDE // 2 if cfg.last_stride == 1 else STRIDE
    return cfg.image_size[0] // stride, cfg.image_size[1] // stride


@register_backbone("resnet")
class CLIPResNetBackbone(Backbone):
    """Frames ``[n, 3, H, W]`` -> pooled feature ``[n, feature_dim]`` and tokens
    ``[n, 1 + h * w, token_dim]``."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {cfg.last_stride}")
        if cfg.pool not in ("attention", "avg"):
            raise ValueError(f"pool must be 'attention' or 'avg', got {cfg.pool!r}")
        self.cfg = cfg
        grid = resnet_grid(cfg)
        if grid[0] < 1 or grid[1] < 1:
            raise ValueError(f"image_size {cfg.image_size} is too small for a stride-{STRIDE} ResNet")
        visual = ModifiedResNet(list(cfg.resnet_layers), cfg.output_dim, cfg.heads, image_size=STRIDE, width=cfg.width)
        channels = cfg.width * 32
        if cfg.last_stride == 1:
            first = visual.layer4[0]
            first.avgpool = nn.Identity()
            first.downsample[0] = nn.Identity()  # the "-1" AvgPool2d; its conv and BN stay
        if cfg.pool == "attention":
            # A square pool embedding of the grid's area would not match CLIP's; keep the person
            # grid and resize pretrained ones in adapt_pretrained.
            pos = torch.randn(grid[0] * grid[1] + 1, channels) / channels ** 0.5
            visual.attnpool.positional_embedding = nn.Parameter(pos)
            global_dim = cfg.output_dim
        else:
            visual.attnpool = None
            global_dim = channels
        if not 0 <= cfg.parts <= grid[0]:
            raise ValueError(f"parts must be in 0..{grid[0]} (the feature map's height), got {cfg.parts}")
        part_dim = cfg.part_dim or channels
        self.part_proj = nn.ModuleList(
            nn.Linear(channels, part_dim) if part_dim != channels else nn.Identity() for _ in range(cfg.parts))
        self.feature_dim = global_dim + cfg.parts * part_dim
        if cfg.ibn:
            for layer in (visual.layer1, visual.layer2, visual.layer3):
                for block in layer:
                    block.bn1 = IBN(block.bn1.num_features)
        self.visual = visual
        self.grid = grid
        self.token_dim = cfg.token_dim or channels
        self.token_proj = nn.Linear(channels, self.token_dim) if self.token_dim != channels else nn.Identity()
        self.side_info = SideInfo(cfg, self.feature_dim)
        self.apply_fine_tuning(cfg.trainable_blocks)

    def blocks(self) -> list[Bottleneck]:
        v = self.visual
        return [b for layer in (v.layer1, v.layer2, v.layer3, v.layer4) for b in layer]

    def adapt_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = "attnpool.positional_embedding"
        if self.cfg.pool == "attention" and key in state:
            return {**state, key: interpolate_pos_embed(state[key], self.grid)}
        return {k: v for k, v in state.items() if not k.startswith("attnpool.")} if self.cfg.pool == "avg" else state

    def apply_fine_tuning(self, trainable_blocks: int | str) -> None:
        """Only the last N residual blocks (+ the attention pool) train; ``"all"`` trains the tower."""
        blocks = self.blocks()
        if trainable_blocks == "all":
            for p in self.visual.parameters():
                p.requires_grad_(True)
            return
        n = int(trainable_blocks)
        if not 0 <= n <= len(blocks):
            raise ValueError(f"trainable_blocks must be 'all' or 0..{len(blocks)}, got {n}")
        for p in self.visual.parameters():
            p.requires_grad_(False)
        for block in blocks[len(blocks) - n:]:
            for p in block.parameters():
                p.requires_grad_(True)
        if n > 0 and self.visual.attnpool is not None:
            for p in self.visual.attnpool.parameters():
                p.requires_grad_(True)

    def forward(
        self,
        x: torch.Tensor,
        camera: torch.Tensor | None = None,
        platform: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.visual
        x = v.stem(x.to(memory_format=torch.channels_last) if x.device.type == "cpu" else x)
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))  # [n, C, h, w]
        f = v.attnpool(x) if v.attnpool is not None else F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.cfg.parts:
            stripes = F.adaptive_avg_pool2d(x, (self.cfg.parts, 1)).flatten(2).unbind(dim=2)
            f = torch.cat([f, *(proj(s) for proj, s in zip(self.part_proj, stripes))], dim=1)
        side = self.side_info(camera, platform)
        if side is not None:
            f = f + side.to(f.dtype)
        if self.cfg.token_grid is not None:
            x = F.adaptive_avg_pool2d(x, tuple(self.cfg.token_grid))
        cells = self.token_proj(x.flatten(2).transpose(1, 2))  # [n, h * w, token_dim]
        tokens = torch.cat([cells.mean(dim=1, keepdim=True), cells], dim=1)
        return f, tokens
