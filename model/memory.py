"""Multi-proxy identity memory of the MEVB (paper 1 section 3.2, eq. 5-6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiProxyMemory(nn.Module):
    """P proxies per identity over L2-normalised sequence features ``v_i``.

    Proxy 1 follows the identity's batch mean (dominant mode); proxy 2 its hardest sample, the one
    least similar to the mean proxy (eq. 5 with momentum mu). A proxy is set directly the first
    time its identity is seen; :meth:`init_from_centroids` sets all proxies from class centroids.
    """

    def __init__(self, num_classes: int, dim: int, num_proxies: int = 2, momentum: float = 0.2,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if num_proxies not in (1, 2):
            raise ValueError("num_proxies must be 1 (mean proxy) or 2 (mean + hard proxy)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError("memory momentum must be in [0, 1)")
        self.momentum = momentum
        self.temperature = temperature
        self.register_buffer("proxies", torch.zeros(num_classes, num_proxies, dim))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    def loss(self, v: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Eq. (6): ``-log sum_p exp(<v, M_y^p>/tau) / sum_y sum_p exp(<v, M_y^p>/tau)``.

        ``v: [B, d]``, ``pids: [B]``. Identities never seen yet have no proxies and are left out of
        the denominator; samples of such identities contribute nothing.
        """
        v = F.normalize(v.float(), dim=-1)
        # A copy: update() rewrites the proxies in place before backward runs.
        proxies = self.proxies.detach().clone().float()
        sims = torch.einsum("bd,ypd->byp", v, proxies) / self.temperature
        sims = sims.masked_fill(~self.initialized[None, :, None], float("-inf"))
        rows = self.initialized[pids]
        if not bool(rows.any()):
            return v.sum() * 0.0
        sims, pids = sims[rows], pids[rows]
        pos = torch.logsumexp(sims[torch.arange(len(pids), device=v.device), pids], dim=-1)
        return (torch.logsumexp(sims.flatten(1), dim=-1) - pos).mean()

    @torch.no_grad()
    def update(self, v: torch.Tensor, pids: torch.Tensor) -> None:
        """Eq. (5): ``M_y^p <- mu M_y^p + (1 - mu) v*_y`` with mean and hard representatives."""
        v = F.normalize(v.detach().float(), dim=-1)
        mu = self.momentum
        for y in torch.unique(pids).tolist():
            vy = v[pids == y]
            mean = F.normalize(vy.mean(0), dim=0)
            if not bool(self.initialized[y]):
                self.proxies[y, 0] = mean
                if self.proxies.shape[1] > 1:
                    self.proxies[y, 1] = vy[torch.argmin(vy @ mean)]
                self.initialized[y] = True
                continue
            self.proxies[y, 0] = F.normalize(mu * self.proxies[y, 0] + (1 - mu) * mean, dim=0)
            if self.proxies.shape[1] > 1:
                hard = vy[torch.argmin(vy @ self.proxies[y, 0])]
                self.proxies[y, 1] = F.normalize(mu * self.proxies[y, 1] + (1 - mu) * hard, dim=0)

    @torch.no_grad()
    def init_from_centroids(self, feats: torch.Tensor, pids: torch.Tensor) -> None:
        """Set every proxy of each identity to its class centroid (the public code's epoch init)."""
        feats = F.normalize(feats.float(), dim=-1).to(self.proxies.device)
        pids = pids.to(self.proxies.device)
        for y in torch.unique(pids).tolist():
            self.proxies[y, :] = F.normalize(feats[pids == y].mean(0), dim=0)
            self.initialized[y] = True
