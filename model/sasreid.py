"""SAS-VPReID: MEVB + MGTM + PRSD with BNNeck heads (paper 1 section 3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from model.backbone import CLIPBackbone
from model.config import ModelConfig
from model.losses import batch_hard_triplet, label_smoothed_ce
from model.memory import MultiProxyMemory
from model.preprocess import images_to_tensor
from model.shape import PRSD, shape_prior_loss
from model.temporal import MGTM, TemporalAttentionPool


class BNNeck(nn.Module):
    """BatchNorm with a frozen zero bias between the metric feature and the classifier."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


@dataclass
class ModelOutput:
    """Per-branch features of a batch of tracklets.

    ``feats`` are the metric (pre-BN) features keyed ``v`` (v_i), ``h`` (h_M), ``s`` (f_S);
    ``necked`` the BNNeck outputs; ``logits`` the identity logits (training models only);
    ``betas: [B, T, 10]`` the smoothed per-frame shape parameters; ``descriptor: [B, D]``.
    """

    feats: dict[str, torch.Tensor]
    necked: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    betas: torch.Tensor | None = None
    descriptor: torch.Tensor | None = None


class SASVPReID(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        bb = cfg.backbone
        self.backbone = CLIPBackbone(bb)
        self.attention_pool = TemporalAttentionPool(bb.output_dim) if cfg.mevb.temporal_pool == "attention" else None
        self.mgtm = MGTM(bb.width, cfg.mgtm) if cfg.mgtm.enabled else None
        self.prsd = PRSD(bb.output_dim, cfg.prsd) if cfg.prsd.enabled else None
        dims = {"v": bb.output_dim}
        if self.mgtm is not None:
            dims["h"] = bb.width
        if self.prsd is not None:
            dims["s"] = cfg.prsd.num_betas
        self.branch_dims = dims
        self.bnnecks = nn.ModuleDict({k: BNNeck(d) for k, d in dims.items()})
        self.classifiers = nn.ModuleDict()
        self.memory: MultiProxyMemory | None = None
        if cfg.num_classes > 0:
            for k, d in dims.items():
                self.classifiers[k] = nn.Linear(d, cfg.num_classes, bias=False)
                if not self.classifiers[k].weight.is_meta:
                    nn.init.normal_(self.classifiers[k].weight, std=0.001)
            if cfg.mevb.memory:
                self.memory = MultiProxyMemory(cfg.num_classes, bb.output_dim, cfg.mevb.num_proxies,
                                               cfg.mevb.momentum, cfg.mevb.temperature)
        # Set by load_checkpoint / save_checkpoint: identifies the weights behind a descriptor.
        self.fingerprint: str | None = None

    # -- sizes ---------------------------------------------------------------------------
    @property
    def descriptor_dim(self) -> int:
        return sum(self.branch_dims.values())

    @property
    def input_size(self) -> tuple[int, int]:
        return self.cfg.backbone.image_size

    # -- forward -------------------------------------------------------------------------
    def forward(self, frames: torch.Tensor, camera: torch.Tensor | None = None,
                platform: torch.Tensor | None = None) -> ModelOutput:
        """``frames: [B, T, 3, H, W]`` (normalised) -> :class:`ModelOutput`.

        ``camera`` / ``platform``: optional ``[B]`` int tensors for the side-info embedding.
        """
        if frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, H, W], got shape {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        def per_frame(ids: torch.Tensor | None) -> torch.Tensor | None:
            return None if ids is None else ids.to(frames.device).repeat_interleave(t)

        f, tokens = self.backbone(frames.flatten(0, 1), per_frame(camera), per_frame(platform))
        f = f.view(b, t, -1)
        feats = {"v": self.attention_pool(f) if self.attention_pool is not None else f.mean(dim=1)}
        betas = None
        if self.mgtm is not None:
            feats["h"] = self.mgtm(tokens.view(b, t, *tokens.shape[1:]))
        if self.prsd is not None:
            feats["s"], betas = self.prsd(f)
        necked = {k: self.bnnecks[k](x.float()) for k, x in feats.items()}
        out = ModelOutput(feats=feats, necked=necked, betas=betas)
        if self.training and len(self.classifiers):
            out.logits = {k: self.classifiers[k](necked[k]) for k in self.classifiers}
        parts = necked if self.cfg.descriptor_bnneck else {k: x.float() for k, x in feats.items()}
        out.descriptor = F.normalize(torch.cat([parts[k] for k in self.branch_dims], dim=1), dim=1)
        return out

    @torch.no_grad()
    def embed(self, frames: torch.Tensor, camera: torch.Tensor | None = None,
              platform: torch.Tensor | None = None, autocast: bool | None = None) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> L2-normalised descriptors ``[B, D]`` = concat(v_i, h_M, f_S).

        Always runs in eval mode (restoring the previous mode), so it is deterministic and a
        tracklet's descriptor does not depend on the rest of the batch. ``autocast`` (default: on
        for CUDA) runs the network in bf16; the descriptor is returned in float32.
        """
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            frames = frames.to(device)
            use_bf16 = device.type == "cuda" if autocast is None else autocast
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = self(frames, camera, platform)
            return out.descriptor.float()
        finally:
            self.train(was_training)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """One tracklet as PIL images (any size, time order) -> ``[1, T, 3, H, W]``."""
        return images_to_tensor(images, self.input_size, self.cfg.mean, self.cfg.std)[None]

    # -- training ------------------------------------------------------------------------
    def compute_losses(self, out: ModelOutput, pids: torch.Tensor, update_memory: bool = True) -> dict[str, torch.Tensor]:
        """Eq. (20) ``L = L_tri + 0.25 L_id + L_me + L_alpha`` (weights from ``cfg.loss``).

        Triplet on the metric features and ID on the BNNeck logits of each branch in
        ``cfg.loss.branches``; memory contrastive on v_i; shape prior on the smoothed betas.
        The memory is updated after its loss is computed. Returns each term and ``total``.
        """
        lc = self.cfg.loss
        terms: dict[str, torch.Tensor] = {}
        branches = [k for k in lc.branches if k in out.feats]
        if lc.triplet_weight:
            terms["triplet"] = sum(batch_hard_triplet(out.feats[k], pids, lc.triplet_margin) for k in branches)
        if lc.id_weight and out.logits:
            terms["id"] = sum(label_smoothed_ce(out.logits[k], pids, lc.label_smoothing)
                              for k in branches if k in out.logits)
        if self.memory is not None and lc.memory_weight:
            terms["memory"] = self.memory.loss(out.feats["v"], pids)
        if out.betas is not None and lc.shape_prior_weight:
            terms["shape_prior"] = shape_prior_loss(out.betas)
        weights = {"triplet": lc.triplet_weight, "id": lc.id_weight, "memory": lc.memory_weight,
                   "shape_prior": lc.shape_prior_weight}
        terms["total"] = sum(weights[k] * v for k, v in terms.items())
        if update_memory and self.memory is not None:
            self.memory.update(out.feats["v"], pids)
        return terms

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for differential learning rates (paper 1 section 3.5):
        ``pretrained`` = the CLIP tower, ``new`` = everything added on top of it."""
        pretrained = [p for p in self.backbone.visual.parameters() if p.requires_grad]
        ids = {id(p) for p in pretrained}
        new = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return {"pretrained": pretrained, "new": new}


def build_model(cfg: ModelConfig | str, device: str | torch.device = "cpu",
                clip_weights: str | None = None) -> SASVPReID:
    """Build a model from a config (or preset name). ``device="meta"`` allocates no weights;
    ``clip_weights`` loads a local pretrained CLIP file into the backbone."""
    if isinstance(cfg, str):
        cfg = ModelConfig.preset(cfg)
    with torch.device(device):
        model = SASVPReID(cfg)
    if clip_weights is not None:
        from model.weights import load_clip_weights

        load_clip_weights(model.backbone, clip_weights)
    return model
