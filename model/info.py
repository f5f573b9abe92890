"""``sasreid model-info``: parameter counts per module, trainable counts, descriptor size, GFLOPs.

Large configs are built on the meta device, so no real weights are allocated and the FLOP count
(torch's FlopCounterMode: matmuls, convolutions, attention) runs without computing anything.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.config import PRESETS, ModelConfig
from model.sasreid import SASVPReID, build_model


@dataclass
class ModelInfo:
    config: str
    input_size: tuple[int, int]
    frames: int
    descriptor_dim: int
    modules: dict[str, dict[str, int]]  # module -> {"params", "trainable"}
    total_params: int
    trainable_params: int
    gflops: float

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _count(params: list[nn.Parameter]) -> dict[str, int]:
    return {"params": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad)}


def module_groups(model: SASVPReID) -> dict[str, list[nn.Parameter]]:
    """Parameters by paper module: backbone (CLIP tower + side info), MEVB head, MGTM, PRSD, heads."""
    groups: dict[str, list[nn.Parameter]] = {
        "backbone": list(model.backbone.parameters()),
        "mevb_head": list(model.attention_pool.parameters()) if model.attention_pool is not None else [],
        "mgtm": list(model.mgtm.parameters()) if model.mgtm is not None else [],
        "prsd": list(model.prsd.parameters()) if model.prsd is not None else [],
        "heads": list(model.bnnecks.parameters()) + list(model.classifiers.parameters()),
    }
    return groups


def forward_gflops(model: SASVPReID, frames: int = 8) -> float:
    """Forward GFLOPs for one tracklet of ``frames`` frames (a multiply-add counts as 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    h, w = model.input_size
    x = torch.zeros(1, frames, 3, h, w, device=device)
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def model_info(cfg: ModelConfig, name: str, frames: int = 8, device: str = "meta") -> ModelInfo:
    model = build_model(cfg, device=device)
    groups = {k: _count(v) for k, v in module_groups(model).items()}
    all_params = list(model.parameters())
    return ModelInfo(
        config=name,
        input_size=cfg.backbone.image_size,
        frames=frames,
        descriptor_dim=model.descriptor_dim,
        modules=groups,
        total_params=sum(p.numel() for p in all_params),
        trainable_params=sum(p.numel() for p in all_params if p.requires_grad),
        gflops=forward_gflops(model, frames),
    )


def format_info(info: ModelInfo) -> str:
    lines = [
        f"config            {info.config}",
        f"input             {info.input_size[0]}x{info.input_size[1]} x {info.frames} frames",
        f"descriptor dim    {info.descriptor_dim}",
        f"forward GFLOPs    {info.gflops:.2f} (one {info.frames}-frame tracklet)",
        "",
        f"{'module':<12}{'params':>16}{'trainable':>16}",
    ]
    for name, c in info.modules.items():
        lines.append(f"{name:<12}{c['params']:>16,}{c['trainable']:>16,}")
    lines.append(f"{'total':<12}{info.total_params:>16,}{info.trainable_params:>16,}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="vit-l-14", choices=sorted(PRESETS), help="model config (default vit-l-14)")
    parser.add_argument("--frames", type=int, default=8, help="tracklet length for the FLOP count (default 8)")
    parser.add_argument("--trainable-blocks", default=None,
                        help="selective fine-tuning: number of last ViT blocks that train, or 'all'")
    parser.add_argument("--temporal-pool", choices=["mean", "attention"], default=None)
    parser.add_argument("--num-classes", type=int, default=0, help="training identities (adds classifiers)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    cfg = ModelConfig.preset(args.config, num_classes=args.num_classes)
    if args.trainable_blocks is not None:
        tb = args.trainable_blocks
        cfg.backbone.trainable_blocks = tb if tb == "all" else int(tb)
    if args.temporal_pool is not None:
        cfg.mevb.temporal_pool = args.temporal_pool
    info = model_info(cfg, args.config, frames=args.frames)
    print(json.dumps(info.to_dict(), indent=2) if args.json else format_info(info))
    return 0
