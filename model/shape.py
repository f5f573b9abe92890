"""Prior-Regularised Shape Dynamics (PRSD, paper 1 section 3.4) and SMPL body measurements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.config import PRSDConfig


class PRSD(nn.Module):
    """Frame features ``f: [B, T, d]`` -> shape feature ``f_S: [B, 10]`` and smoothed betas.

    eq. (11)-(12)  f^g_t = f_t + GRU(f)_t             (residual temporal encoder; with
                   ``encoder_dim`` set, f_t is first projected linearly to that width)
    eq. (13)       alpha_t = R(f^g_t)                 (regressor to SMPL betas)
    eq. (14)       alpha~_t = GRU'(alpha_t, alpha~_{t-1})  (smoothing)
    eq. (15)       alpha~ = LN(TransformerEncoder(alpha~))  (4 layers; the LN's gain starts at
                   ``output_scale_init``, so the betas start near the mean shape)
    eq. (16)       f_S = mean_t alpha~_t
    All recurrences are batch-first, so a tracklet never mixes with the rest of its batch, and
    gradients flow through the whole branch (the public code detaches it).
    """

    def __init__(self, dim: int, cfg: PRSDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.encoder_dim or dim
        self.project = nn.Linear(dim, width) if width != dim else nn.Identity()
        self.encoder = nn.GRU(width, width, batch_first=True)
        self.regressor = nn.Sequential(
            nn.Linear(width, cfg.regressor_hidden), nn.GELU(), nn.Linear(cfg.regressor_hidden, cfg.num_betas)
        )
        self.smoother = nn.GRU(cfg.num_betas, cfg.num_betas, batch_first=True)
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.num_betas, nhead=cfg.transformer_heads, dim_feedforward=cfg.transformer_ff,
            dropout=cfg.dropout, batch_first=True,
            # Pre-norm: a post-norm encoder ends in LayerNorm, which pins ||alpha~||^2 near K and
            # leaves the prior of eq. (17) nothing to act on.
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=cfg.transformer_layers,
                                                 enable_nested_tensor=False)
        # A pre-norm encoder has no final norm: its output norm (~9 at initialisation) made eq. 17
        # start at ~75 and swamp the other losses, and Adam's second moment remembered it.
        # Its gain starts at output_scale_init (||alpha~||^2 ~ K * output_scale_init^2) and is
        # learned, so unlike a post-norm encoder's fixed-gain LN the prior can act on it.
        self.out_norm = nn.LayerNorm(cfg.num_betas)
        nn.init.constant_(self.out_norm.weight, cfg.output_scale_init)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.project(f)
        g, _ = self.encoder(f)
        alpha = self.regressor(f + g)
        smoothed, _ = self.smoother(alpha)
        betas = self.out_norm(self.transformer(smoothed))  # [B, T, num_betas]
        return betas.mean(dim=1), betas


def shape_prior_loss(betas: torch.Tensor, mean_shape: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (17): ``L_alpha = 1/T sum_t ||alpha~_t - alpha_SMPL||^2`` averaged over the batch.

    ``betas: [B, T, K]``. SMPL's canonical mean shape is the zero vector of betas.
    """
    target = 0.0 if mean_shape is None else mean_shape.to(betas)
    return ((betas - target) ** 2).sum(dim=-1).mean()


# SMPL joint indices (the standard 24-joint kinematic tree).
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 16, 17, 1, 2


@dataclass(frozen=True)
class BodyMeasurements:
    height: float  # metres, vertex extent along the vertical axis in the rest pose
    shoulder_width: float
    hip_width: float
    arm_length: float  # left shoulder -> left wrist
    leg_length: float  # left hip -> left ankle


class SMPLMeasurer:
    """Turns predicted betas into body measurements with smplx and a user-provided SMPL model file.

    SMPL files require registration, so none ships with the project: point
    ``PRSDConfig.smpl_model_path`` at your ``SMPL_NEUTRAL.pkl`` (or ``.npz``).
    """

    def __init__(self, model_path: str | Path, gender: str = "neutral", num_betas: int = 10) -> None:
        import smplx

        path = Path(model_path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: SMPL model file not found")
        self.model = smplx.create(str(path), model_type="smpl", gender=gender, num_betas=num_betas)
        self.model.eval()

    @torch.no_grad()
    def measure(self, betas: torch.Tensor) -> list[BodyMeasurements]:
        """``betas: [N, num_betas]`` -> one :class:`BodyMeasurements` per row."""
        n = betas.shape[0]
        # Rest pose for every row: smplx's default pose tensors have batch 1 and would not broadcast.
        out = self.model(betas=betas.float(), global_orient=torch.zeros(n, 3),
                         body_pose=torch.zeros(n, self.model.NUM_BODY_JOINTS * 3), return_verts=True)
        verts, joints = out.vertices, out.joints
        res = []
        for v, j in zip(verts, joints):
            res.append(BodyMeasurements(
                height=float(v[:, 1].max() - v[:, 1].min()),
                shoulder_width=float((j[_L_SHOULDER] - j[_R_SHOULDER]).norm()),
                hip_width=float((j[_L_HIP] - j[_R_HIP]).norm()),
                arm_length=float((j[_L_SHOULDER] - j[20]).norm()),
                leg_length=float((j[_L_HIP] - j[7]).norm()),
            ))
        return res
