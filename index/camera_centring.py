"""Camera-wise centring of descriptors: removing each camera's mean appearance before ranking.

A model trained on one set of cameras meets new ones at test time with their own colour balance,
exposure and background; every descriptor of a camera is then shifted by a common offset, and the
offset, not the person, dominates cross-camera cosine similarity. Subtracting each camera's mean
descriptor (estimated from that camera's unlabelled tracklets) removes the offset; it is the
feature-level form of camera-based batch normalisation (Zhuang et al., "Rethinking the
Distribution Gap of Person Re-identification with Camera-based Batch Normalization", ECCV 2020).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def centre_by_camera(x: np.ndarray, cameras: Sequence[Hashable], strength: float = 1.0) -> np.ndarray:
    """Camera-centred unit descriptors ``[N, D]`` of ``x [N, D]``.

    With ``u_i = x_i / ||x_i||`` and ``mu_c`` the mean of ``u_j`` over the rows of camera ``c``:
    ``y_i = n(u_i - strength * mu_{c(i)})``, ``n`` = L2 normalisation. ``cameras[i]`` is any
    hashable camera key of row ``i`` (e.g. ``(platform, camera)``). A camera with a single row
    would be centred to zero, so such rows are only normalised.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(cameras) != x.shape[0]:
        raise ValueError(f"x must be [N, D] with one camera per row, got shape {x.shape} and {len(cameras)} cameras")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    unit = _unit_rows(x)
    out = unit.copy()
    groups: dict[Hashable, list[int]] = {}
    for i, cam in enumerate(cameras):
        groups.setdefault(cam, []).append(i)
    for rows in groups.values():
        if len(rows) > 1:
            out[rows] = unit[rows] - strength * unit[rows].mean(axis=0, keepdims=True)
    return _unit_rows(out)
