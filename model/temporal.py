"""Temporal modules: attention pooling (paper 2) and Multi-Granularity Temporal Modelling (MGTM,
paper 1 section 3.3) with bidirectional Mamba and learnable scale fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import MGTMConfig
from model.mamba import Mamba


class TemporalAttentionPool(nn.Module):
    """``v = sum_t softmax_t(w^T tanh(W f_t)) f_t``: down-weights degraded frames (paper 2).

    ``f: [B, T, d] -> [B, d]``. Softmax over each tracklet's own frames only.
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(dim // 4, 8)
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.score(f).squeeze(-1).float(), dim=1).to(f.dtype)  # [B, T]
        return torch.einsum("bt,btd->bd", w, f)


def window_lengths(cfg: MGTMConfig, t: int) -> list[int]:
    """Window length (in frames) for each granularity s in S at a tracklet length ``t``.

    ``fixed``: s itself; ``scale_with_t``: round(s * t / train_frames). Always clipped to [1, t].
    """
    out = []
    for s in cfg.windows:
        w = s if cfg.window_rule == "fixed" else round(s * t / cfg.train_frames)
        out.append(int(min(max(w, 1), t)))
    return out


def reorder_by_relevance(patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Sort tokens by cosine relevance to the class token, most relevant first.

    ``patches: [n, L, W]``, ``cls: [n, W]`` -> ``[n, L, W]``. Ties keep time-major order. The
    position of token i is ``#{j: r_j > r_i} + #{j < i: r_j = r_i}`` (a stable descending sort
    written with comparisons: ONNX has no stable sort, and this exports as plain tensor ops).
    """
    rel = F.cosine_similarity(patches.float(), cls.float()[:, None], dim=-1)  # [n, L]
    length = rel.shape[1]
    earlier = torch.ones(length, length, dtype=torch.bool, device=rel.device).tril(-1)  # [i, j]: j < i
    ri, rj = rel[:, :, None], rel[:, None, :]
    before = (rj > ri) | ((rj == ri) & earlier)
    position = before.sum(dim=2)  # [n, L], a permutation of 0..L-1
    index = position[..., None].expand_as(patches)
    return torch.zeros_like(patches).scatter(1, index, patches)


class BiMamba(nn.Module):
    """Eq. (8): ``H = Mamba_f(x) + flip(Mamba_b(flip(x)))`` with separate parameters, pre-norm.

    ``block="residual"`` wraps it as the public code's Mamba layer:
    ``y = x + H(LN x)``, ``z = y + MLP(LN y)``, output ``LN z``; ``"plain"`` returns ``H(LN x)``.
    ``x: [n, L, dim] -> [n, L, dim]``.
    """

    def __init__(self, dim: int, cfg: MGTMConfig) -> None:
        super().__init__()
        self.residual = cfg.block == "residual"
        self.norm = nn.LayerNorm(dim)
        kw = dict(d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, scan_chunk=cfg.scan_chunk,
                  use_cuda_kernels=cfg.use_cuda_kernels)
        self.forward_mamba = Mamba(dim, **kw)
        self.backward_mamba = Mamba(dim, **kw)
        if self.residual:
            hidden = max(int(dim * cfg.mlp_ratio), 1)
            self.mlp_norm = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.norm(x)
        h = self.forward_mamba(u) + self.backward_mamba(u.flip(1)).flip(1)
        if not self.residual:
            return h
        y = x + h
        return self.out_norm(y + self.mlp(self.mlp_norm(y)))


class MGTM(nn.Module):
    """Tokens ``[B, T, 1 + P, W]`` -> multi-granularity temporal feature ``h_M: [B, W]``.

    For each granularity s: frames are cut into consecutive windows of s frames (eq. 7; the last
    window may be shorter), a window's patch tokens (s * P of them, time-major) are reordered by
    relevance to the window's mean class token, run through a bidirectional Mamba, and averaged
    over all tokens of the tracklet into ``h^(s)``. Eq. (9)-(10): ``h_M = sum_s softmax(a)_s h^(s)``,
    followed by a LayerNorm with residual blocks (the public code).
    """

    def __init__(self, dim: int, cfg: MGTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(BiMamba(dim, cfg) for _ in cfg.windows)
        self.scale_logits = nn.Parameter(torch.zeros(len(cfg.windows)))  # a_s
        self.fusion_norm = nn.LayerNorm(dim) if cfg.block == "residual" else nn.Identity()
        if cfg.fusion == "mean":
            self.scale_logits.requires_grad_(False)

    def fusion_weights(self) -> torch.Tensor:
        return torch.softmax(self.scale_logits.float(), dim=0)

    def _windows(self, win: torch.Tensor, block: BiMamba) -> torch.Tensor:
        """Windows ``[n, s, 1 + P, W]`` (each an independent sequence) -> token sums ``[n, W]``."""
        n, _, _, w = win.shape
        cls = win[:, :, 0].mean(dim=1)
        patches = win[:, :, 1:].reshape(n, -1, w)
        if self.cfg.reorder:
            patches = reorder_by_relevance(patches, cls)
        return block(patches).sum(dim=1)

    def _granularity(self, tokens: torch.Tensor, length: int, block: BiMamba) -> torch.Tensor:
        t, p1, w = tokens.shape[1:]
        full = t // length
        # All full windows go through the Mamba as one batch (the scan is sequential in the token
        # axis only, so this runs the windows side by side); a shorter last window runs alone.
        total = self._windows(tokens[:, :full * length].reshape(-1, length, p1, w), block)
        total = total.view(-1, full, w).sum(dim=1)
        if t % length:
            total = total + self._windows(tokens[:, full * length:], block)
        return total / float(t * (p1 - 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        lengths = window_lengths(self.cfg, tokens.shape[1])
        feats = torch.stack([self._granularity(tokens, s, blk) for s, blk in zip(lengths, self.blocks)], 0)
        w = self.fusion_weights().to(feats.dtype)
        return self.fusion_norm(torch.einsum("s,sbw->bw", w, feats))
