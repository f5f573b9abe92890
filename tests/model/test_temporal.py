"""MGTM (paper 1 section 3.3) against a window-by-window reference written from the equations."""

from __future__ import annotations

import pytest
import torch

from model.config import MGTMConfig
from model.temporal import MGTM, reorder_by_relevance, window_lengths


def reference_mgtm(mgtm: MGTM, tokens: torch.Tensor) -> torch.Tensor:
    """Eq. (7)-(10) one window at a time: cut T into windows of s frames (last one shorter),
    reorder each window's patch tokens by relevance to its mean class token, BiMamba, average
    over every patch token of the tracklet, then the softmax-weighted sum over granularities."""
    b, t, _, w = tokens.shape
    per_scale = []
    for s, block in zip(window_lengths(mgtm.cfg, t), mgtm.blocks):
        total, count = torch.zeros(b, w), 0
        for start in range(0, t, s):
            win = tokens[:, start:start + s]
            patches = reorder_by_relevance(win[:, :, 1:].reshape(b, -1, w), win[:, :, 0].mean(dim=1))
            h = block(patches)
            total, count = total + h.sum(dim=1), count + h.shape[1]
        per_scale.append(total / count)
    weights = torch.softmax(mgtm.scale_logits, dim=0)
    return mgtm.fusion_norm(sum(wt * h for wt, h in zip(weights, per_scale)))


@pytest.mark.parametrize("frames", [8, 6, 3, 1])
def test_mgtm_matches_window_by_window_reference(frames: int) -> None:
    torch.manual_seed(0)
    mgtm = MGTM(16, MGTMConfig(windows=(2, 4, 8), d_state=4, scan_chunk=4)).eval()
    with torch.no_grad():
        mgtm.scale_logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    tokens = torch.randn(3, frames, 1 + 5, 16)
    with torch.no_grad():
        got, want = mgtm(tokens), reference_mgtm(mgtm, tokens)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_mgtm_tracklets_do_not_mix_across_the_batch() -> None:
    torch.manual_seed(1)
    mgtm = MGTM(16, MGTMConfig(windows=(2, 4), d_state=4)).eval()
    tokens = torch.randn(4, 6, 1 + 3, 16)
    with torch.no_grad():
        batched = mgtm(tokens)
        alone = torch.cat([mgtm(tokens[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
