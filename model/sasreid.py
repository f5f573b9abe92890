"""SAS-VPReID: MEVB + MGTM + PRSD with BNNeck heads (paper 1 section 3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from model.backbones import make_backbone
from model.config import ModelConfig
from model.losses import batch_hard_triplet, label_smoothed_ce
from model.memory import MultiProxyMemory
from model.preprocess import images_to_tensor
from model.shape import PRSD, shape_prior_loss
from model.temporal import MGTM, TemporalAttentionPool

BACKBONE_FRAME_CHUNK = 16  # frames per backbone call at inference (speed only; see _backbone)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def branch_input(x: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    """What a branch (MGTM, PRSD) sees of a backbone output: the same values, and in backward
    no gradient (``detach``), ``scale`` times it (``scale``) or all of it (``full``)."""
    if mode == "detach":
        return x.detach()
    if mode == "scale":
        return _ScaleGrad.apply(x, scale)
    if mode == "full":
        return x
    raise ValueError(f"branch_grad must be detach, scale or full, got {mode!r}")


def unique_frames(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Which frames of ``[B, T, ...]`` are not a repeat of the previous frame of their tracklet.

    Short tracklets are repeated to T frames in time order (``model.sampling``), so a repeat is
    always the previous frame. Returns ``(new [B * T] bool, index [B * T])`` such that
    ``flat[new][index] == flat`` for ``flat = frames.flatten(0, 1)``, or None when nothing repeats.
    """
    b, t = frames.shape[:2]
    if t < 2:
        return None
    same = (frames[:, 1:] == frames[:, :-1]).flatten(2).all(dim=2)  # [B, T-1]
    if not bool(same.any()):
        return None
    new = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=frames.device), ~same], dim=1).flatten()
    return new, torch.cumsum(new.long(), dim=0) - 1


def standardise_frames(frames: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Per-frame, per-channel standardisation ``(x - mean_hw x) / sqrt(var_hw x + eps)``.

    ``frames: [..., 3, H, W]`` -> same shape. The result does not change when a frame's channels
    are multiplied by positive gains and shifted by offsets (``a_c x_c + b_c``, the diagonal model
    of a camera's white balance and exposure), so a descriptor built on it cannot tell two cameras
    apart by their colour cast; ``eps`` keeps a near-uniform frame from being amplified to noise.
    """
    mean = frames.mean(dim=(-2, -1), keepdim=True)
    var = frames.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (frames - mean) * torch.rsqrt(var + eps)


class BNNeck(nn.Module):
    """BatchNorm with a frozen zero bias between the metric feature and the classifier."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


@dataclass(frozen=True)
class DescriptorPart:
    """Where one branch lies in the descriptor: columns ``start:stop``, scaled by ``weight``."""

    name: str  # "v" (v_i), "h" (h_M) or "s" (f_S)
    start: int
    stop: int
    weight: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "start": self.start, "stop": self.stop, "weight": self.weight}


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
        self.backbone = make_backbone(cfg.backbone)
        feature_dim, token_dim = self.backbone.feature_dim, self.backbone.token_dim
        self.attention_pool = TemporalAttentionPool(feature_dim) if cfg.mevb.temporal_pool == "attention" else None
        self.mgtm = MGTM(token_dim, cfg.mgtm) if cfg.mgtm.enabled else None
        self.prsd = PRSD(feature_dim, cfg.prsd) if cfg.prsd.enabled else None
        dims = {"v": feature_dim}
        if self.mgtm is not None:
            dims["h"] = token_dim
        if self.prsd is not None:
            dims["s"] = cfg.prsd.num_betas
        self.branch_dims = dims
        self.descriptor_layout = _descriptor_layout(dims, cfg)
        self.bnnecks = nn.ModuleDict({k: BNNeck(d) for k, d in dims.items()})
        self.classifiers = nn.ModuleDict()
        self.memory: MultiProxyMemory | None = None
        if cfg.num_classes > 0:
            for k, d in dims.items():
                self.classifiers[k] = nn.Linear(d, cfg.num_classes, bias=False)
                if not self.classifiers[k].weight.is_meta:
                    nn.init.normal_(self.classifiers[k].weight, std=0.001)
            if cfg.mevb.memory:
                self.memory = MultiProxyMemory(cfg.num_classes, feature_dim, cfg.mevb.num_proxies,
                                               cfg.mevb.momentum, cfg.mevb.temperature)
        # Set by load_checkpoint / save_checkpoint: identifies the weights behind a descriptor.
        self.fingerprint: str | None = None

    # -- sizes ---------------------------------------------------------------------------
    @property
    def descriptor_dim(self) -> int:
        return self.descriptor_layout[-1].stop

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
        f, tokens = self._frame_features(frames, camera, platform)
        f = f.view(b, t, -1)
        feats = {"v": self.attention_pool(f) if self.attention_pool is not None else f.mean(dim=1)}
        betas = None
        grad, scale = self.cfg.branch_grad, self.cfg.branch_grad_scale
        if self.mgtm is not None:
            feats["h"] = self.mgtm(branch_input(tokens.view(b, t, *tokens.shape[1:]), grad, scale))
        if self.prsd is not None:
            feats["s"], betas = self.prsd(branch_input(f, grad, scale))
        necked = {k: self.bnnecks[k](x.float()) for k, x in feats.items()}
        out = ModelOutput(feats=feats, necked=necked, betas=betas)
        if self.training and len(self.classifiers):
            out.logits = {k: self.classifiers[k](necked[k]) for k in self.classifiers}
        out.descriptor = self.describe(necked if self.cfg.descriptor.bnneck else feats)
        return out

    def describe(self, branches: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. (20) with :class:`DescriptorConfig`: ``normalize(concat_k w_k * n(x_k))`` over the
        branches of ``descriptor_layout``, ``n`` = L2 normalisation when ``branch_norm`` (else
        identity). ``branches[k]: [B, d_k]`` -> ``[B, D]``."""
        norm = self.cfg.descriptor.branch_norm
        parts = [(F.normalize(branches[p.name].float(), dim=1) if norm else branches[p.name].float()) * p.weight
                 for p in self.descriptor_layout]
        return F.normalize(torch.cat(parts, dim=1), dim=1)

    def _frame_features(self, frames: torch.Tensor, camera: torch.Tensor | None,
                        platform: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone over every frame ``[B, T, ...]`` -> ``f: [B * T, d]``, ``tokens: [B * T, 1 + P, W]``.

        A frame repeated to fill a short tracklet goes through the backbone once (most real
        tracklets are one or two frames). A traced graph (ONNX export) and the meta device keep
        the plain path, whose shapes do not depend on the data.
        """
        t = frames.shape[1]
        cam = None if camera is None else camera.to(frames.device).repeat_interleave(t)
        plat = None if platform is None else platform.to(frames.device).repeat_interleave(t)
        traced = torch.jit.is_tracing() or torch.compiler.is_compiling() or frames.is_meta
        dedup = None if traced else unique_frames(frames)
        flat = frames.flatten(0, 1)
        if dedup is None:
            return self._backbone(self._input(flat), cam, plat, chunked=not traced)
        new, index = dedup
        f, tokens = self._backbone(self._input(flat[new]), None if cam is None else cam[new],
                                   None if plat is None else plat[new], chunked=True)
        return f[index], tokens[index]

    def _backbone(self, x: torch.Tensor, cam: torch.Tensor | None, plat: torch.Tensor | None,
                  chunked: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone over frames ``[N, 3, H, W]``; without autograd, ``BACKBONE_FRAME_CHUNK``
        frames per call (the backbone treats every frame on its own, so the result is the same):
        the activations of a few frames stay in cache, where a batch of 8 vit-b-16 tracklets (64
        frames, 100 MB per MLP activation) in one call ran ~14% slower per tracklet."""
        n = BACKBONE_FRAME_CHUNK
        if not chunked or torch.is_grad_enabled() or x.shape[0] <= n:
            return self.backbone(x, cam, plat)
        parts = [self.backbone(x[i:i + n], None if cam is None else cam[i:i + n],
                               None if plat is None else plat[i:i + n]) for i in range(0, x.shape[0], n)]
        return torch.cat([f for f, _ in parts]), torch.cat([t for _, t in parts])

    def _input(self, frames: torch.Tensor) -> torch.Tensor:
        """The backbone's input: dataset-normalised frames, standardised per frame when
        ``cfg.input_norm == "frame"``."""
        return standardise_frames(frames) if self.cfg.input_norm == "frame" else frames

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
        memory_input = self.memory_features(out)
        if self.memory is not None and lc.memory_weight:
            terms["memory"] = self.memory.loss(memory_input, pids)
        if out.betas is not None and lc.shape_prior_weight:
            terms["shape_prior"] = shape_prior_loss(out.betas)
        weights = {"triplet": lc.triplet_weight, "id": lc.id_weight, "memory": lc.memory_weight,
                   "shape_prior": lc.shape_prior_weight}
        terms["total"] = sum(weights[k] * v for k, v in terms.items())
        if update_memory and self.memory is not None:
            self.memory.update(memory_input, pids)
        return terms

    def memory_features(self, out: ModelOutput) -> torch.Tensor:
        """The v_i features the memory compares and is updated with (``cfg.mevb.memory_input``)."""
        return out.necked["v"] if self.cfg.mevb.memory_input == "bnneck" else out.feats["v"]

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable ``(name, parameter)`` pairs split for differential learning rates (paper 1
        section 3.5): ``pretrained`` = the CLIP tower, ``new`` = everything added on top of it."""
        tower = {id(p) for p in self.backbone.visual.parameters()}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"pretrained": [], "new": []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups["pretrained" if id(p) in tower else "new"].append((name, p))
        return groups


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether weight decay applies: not to biases, norm gains, other vectors, nor Mamba's
    ``A_log`` (a matrix of log decay rates) and ``D`` (mamba_ssm's rule)."""
    return param.ndim > 1 and not name.endswith(("A_log", ".D"))


def _descriptor_layout(dims: dict[str, int], cfg: ModelConfig) -> list[DescriptorPart]:
    """Branches with a non-zero weight, in the order v, h, s, with their column ranges."""
    layout, start = [], 0
    for name, dim in dims.items():
        weight = cfg.descriptor.weight(name)
        if weight < 0:
            raise ValueError(f"descriptor weight of branch {name!r} must be >= 0, got {weight}")
        if weight > 0:
            layout.append(DescriptorPart(name, start, start + dim, weight))
            start += dim
    if not layout:
        raise ValueError("the descriptor needs at least one branch with a weight > 0")
    return layout


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
