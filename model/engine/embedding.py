"""Embedding tracklets with a model: even frame sampling, no augmentation, batched, with progress."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.data import Tracklet
from model.data.video import VideoDataset
from model.sasreid import SASVPReID


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one thread per worker and seeded python/numpy/torch RNGs.

    The datasets draw from their own ``(seed, epoch, index)`` generators, so this only guards
    against library code that touches the global RNGs.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


def eval_dataset(model: SASVPReID, tracklets: Sequence[Tracklet], frames: int | None = None) -> VideoDataset:
    """Test-time dataset: ``frames`` (default: the model's ``eval_frames``) evenly spaced frames."""
    cfg = model.cfg
    return VideoDataset(tracklets, seq_len=frames or cfg.eval_frames, sampling="even",
                        size=cfg.backbone.image_size, mean=cfg.mean, std=cfg.std)


def embed_tracklets(
    model: SASVPReID,
    tracklets: Sequence[Tracklet],
    frames: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "embed",
) -> np.ndarray:
    """L2-normalised descriptors ``[N, D]`` (float32) of ``tracklets`` in order.

    Runs ``model.embed`` (eval mode, bf16 autocast on CUDA); camera and platform ids of the
    records are passed for the optional side-info embedding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(tracklets) == 0:
        return np.zeros((0, model.descriptor_dim), dtype=np.float32)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(eval_dataset(model, tracklets, frames), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, worker_init_fn=seed_worker if num_workers else None,
                        generator=torch.Generator().manual_seed(0))  # keeps the global RNG untouched
    out = np.zeros((len(tracklets), model.descriptor_dim), dtype=np.float32)
    done = 0
    with tqdm(total=len(tracklets), desc=desc, unit="tracklet", disable=not progress, leave=False) as bar:
        for x, _pid, camera, platform, _index in loader:
            d = model.embed(x.to(device, non_blocking=True), camera=camera.to(device), platform=platform.to(device))
            out[done:done + len(d)] = d.cpu().numpy()
            done += len(d)
            bar.update(len(d))
    return out
