"""Frame-index sampling for tracklets (torchreid-style modes).

All functions return indices in increasing time order: frame order is never shuffled.
"""

from __future__ import annotations

import numpy as np


def even_indices(num_frames: int, t: int) -> np.ndarray:
    """Evenly spaced indices, used at test time.

    Takes ``t`` frames spread over ``[0, num_frames)``; when ``num_frames < t`` frames repeat
    (still in time order) so the output always has length ``t``.

    Returns: int64 array of shape ``[t]``.
    """
    if num_frames < 1:
        raise ValueError("a tracklet needs at least one frame")
    if t < 1:
        raise ValueError("t must be >= 1")
    # Centre of each of t equal segments: symmetric and deterministic.
    pos = (np.arange(t, dtype=np.float64) + 0.5) * num_frames / t
    return np.clip(np.floor(pos).astype(np.int64), 0, num_frames - 1)


def restricted_random_indices(num_frames: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """Restricted random sampling (Li et al. 2018), used for training.

    Splits ``[0, num_frames)`` into ``t`` contiguous chunks of (nearly) equal length and draws
    one frame uniformly from each chunk; short tracklets repeat frames in order.

    Returns: int64 array of shape ``[t]``, non-decreasing.
    """
    if num_frames < 1:
        raise ValueError("a tracklet needs at least one frame")
    if num_frames < t:
        return even_indices(num_frames, t)
    edges = np.linspace(0, num_frames, t + 1)
    lo = np.floor(edges[:-1]).astype(np.int64)
    hi = np.maximum(np.floor(edges[1:]).astype(np.int64), lo + 1)
    return lo + (rng.random(t) * (hi - lo)).astype(np.int64)
