"""The training data pipeline: P x K identity-balanced batches of T restricted-random frames with
tracklet-consistent augmentation, reproducible per (seed, epoch) for exact resume."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from model.config import ModelConfig
from model.data import Tracklet
from model.data.augment import AugmentConfig, TrackletAugment
from model.data.sampler import IdentityBalancedSampler
from model.data.video import FrameCache, VideoDataset
from model.engine.config import TrainConfig
from model.engine.embedding import seed_worker


class NumberedRepeats(Sampler[list[tuple[int, int]]]):
    """Batches of ``sampler`` as ``(index, draw)`` pairs, ``draw`` = earlier occurrences of the
    index in its batch: an identity with fewer than K tracklets repeats one, and without the
    number every repeat would load the same frames with the same augmentation (an identical
    positive pair teaches nothing)."""

    def __init__(self, sampler: IdentityBalancedSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.sampler:
            seen: Counter[int] = Counter()
            numbered = []
            for index in batch:
                numbered.append((index, seen[index]))
                seen[index] += 1
            yield numbered

    def __len__(self) -> int:
        return len(self.sampler)


@dataclass
class TrainLoader:
    """The dataset, its batch sampler and a factory for one epoch's DataLoader."""

    dataset: VideoDataset
    sampler: IdentityBalancedSampler
    num_workers: int
    pin_memory: bool
    seed: int

    def epoch(self, epoch: int) -> DataLoader:
        """The loader of (0-based) ``epoch``: frame choice, augmentation and batches depend only on
        (seed, epoch). A private generator keeps the DataLoader off the global torch RNG."""
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return DataLoader(self.dataset, batch_sampler=NumberedRepeats(self.sampler), num_workers=self.num_workers,
                          pin_memory=self.pin_memory, worker_init_fn=seed_worker if self.num_workers else None,
                          generator=generator)

    def __len__(self) -> int:
        return len(self.sampler)


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    """Flip, random erasing and hue jitter probabilities/ranges of the run."""
    return AugmentConfig(flip_p=cfg.flip_p, erase_p=cfg.erase_p, hue_p=cfg.hue_p, hue_max=cfg.hue_max,
                         crop_pad=cfg.crop_pad, jitter_p=cfg.jitter_p, jitter=cfg.jitter, gray_p=cfg.gray_p)


def build_train_loader(tracklets: Sequence[Tracklet], cfg: TrainConfig, model_cfg: ModelConfig,
                       pin_memory: bool = False, rank: int = 0, world_size: int = 1) -> TrainLoader:
    """Train pipeline for ``tracklets`` (pids must be relabelled ``0..C-1``); under distributed
    training this rank's share of every global batch (``IdentityBalancedSampler``)."""
    dataset = VideoDataset(
        tracklets,
        seq_len=cfg.seq_len,
        sampling="restricted_random",
        size=model_cfg.backbone.image_size,
        mean=model_cfg.mean,
        std=model_cfg.std,
        train_augment=TrackletAugment(augment_config(cfg)),
        seed=cfg.seed,
        frame_cache=FrameCache(cfg.frame_cache_mb << 20) if cfg.frame_cache_mb else None,
    )
    sampler = IdentityBalancedSampler([t.pid for t in tracklets], p=cfg.p, k=cfg.k, seed=cfg.seed, rank=rank,
                                      world_size=world_size)
    return TrainLoader(dataset, sampler, cfg.num_workers, pin_memory, cfg.seed)
