"""Identity losses: label-smoothed cross-entropy and batch-hard triplet (paper 1 eq. 18-19)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothed_ce(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """``-sum_c q_c log p_c`` with ``q = (1 - eps) onehot + eps / C``. ``logits: [B, C]``."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=epsilon)


def batch_hard_triplet(feats: torch.Tensor, pids: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances.

    ``feats: [B, d]``. For each anchor: ``[m + max_{p: same id} d(a, p) - min_{n: other id} d(a, n)]_+``;
    anchors with no positive or no negative in the batch are left out.
    """
    x = feats.float()
    dist = torch.cdist(x, x).clamp_min(1e-12)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=x.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not bool(valid.any()):
        return x.sum() * 0.0
    hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(1)
    return F.relu(margin + hardest_pos - hardest_neg)[valid].mean()
