"""Torch dataset of tracklets: frame sampling, loading, tracklet-consistent augmentation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from model.config import CLIP_MEAN, CLIP_STD
from model.data.augment import TrackletAugment
from model.data.errors import DatasetError
from model.data.tracklet import Tracklet
from model.preprocess import image_to_array, normalise, to_unit_tensor
from model.sampling import even_indices, restricted_random_indices

SAMPLING_MODES: tuple[str, ...] = ("restricted_random", "even", "all")


def load_frame(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Read one image as RGB, bicubic-resize to ``size`` = (H, W); returns ``[3, H, W]`` in [0, 1]."""
    return to_unit_tensor(_decode(path, size))


def _decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as img:
        return image_to_array(img, size)


class FrameCache:
    """Decoded, resized frames (uint8) kept in memory up to ``max_bytes``, so each file is read
    and resized once per run instead of once per epoch. Past the budget frames are decoded as
    before; the cache never changes what a frame looks like.

    Frames of one size live in slabs of ``SLAB_FRAMES`` slots (one allocation each) rather than
    one small array per frame, so ten thousand long-lived 24 KB arrays are not interleaved with a
    training step's transient buffers in the allocator's heap.
    """

    SLAB_FRAMES = 512

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._slot: dict[tuple[Path, tuple[int, int]], int] = {}  # (path, size) -> slot of its size
        self._slabs: dict[tuple[int, ...], list[np.ndarray]] = {}  # frame shape -> slabs
        self._used: dict[tuple[int, ...], int] = {}  # frame shape -> slots filled

    def __len__(self) -> int:
        return len(self._slot)

    def _frame(self, shape: tuple[int, ...], slot: int) -> np.ndarray:
        return self._slabs[shape][slot // self.SLAB_FRAMES][slot % self.SLAB_FRAMES]

    def _store(self, array: np.ndarray) -> int | None:
        """Copy ``array`` into a free slot of its shape; None when over budget."""
        if self.bytes + array.nbytes > self.max_bytes:
            return None
        shape = array.shape
        slot = self._used.get(shape, 0)
        slabs = self._slabs.setdefault(shape, [])
        if slot // self.SLAB_FRAMES == len(slabs):
            slabs.append(np.empty((self.SLAB_FRAMES, *shape), dtype=np.uint8))
        self._used[shape] = slot + 1
        self._frame(shape, slot)[...] = array
        self.bytes += array.nbytes
        return slot

    def load(self, path: Path, size: tuple[int, int]) -> torch.Tensor:
        key = (path, size)
        slot = self._slot.get(key)
        if slot is not None:
            return to_unit_tensor(self._frame((*size, 3), slot))
        array = _decode(path, size)
        slot = self._store(array)
        if slot is not None:
            self._slot[key] = slot
        return to_unit_tensor(array)


def frame_indices(num_frames: int, seq_len: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Which frames (in time order) a sample uses; ``all`` returns every frame."""
    if sampling == "restricted_random":
        return restricted_random_indices(num_frames, seq_len, rng)
    if sampling == "even":
        return even_indices(num_frames, seq_len)
    if sampling == "all":
        return np.arange(num_frames, dtype=np.int64)
    raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")


class VideoDataset(Dataset):
    """Items ``(frames [T, 3, H, W] normalised float32, pid, camera, platform_id, index)``.

    Randomness (frame choice, augmentation) comes from a generator seeded by
    ``(seed, epoch, index)``, so an item is reproducible whatever worker loads it; call
    ``set_epoch`` to vary it between epochs. ``sampling="all"`` gives variable ``T`` (use batch
    size 1). Unreadable frames are skipped with a warning naming the file and remembered in
    ``corrupt_frames`` (per process: each DataLoader worker keeps its own copy); a tracklet
    with no readable frame raises ``DatasetError``. A ``frame_cache`` keeps decoded frames
    between epochs (useful with ``num_workers=0``: worker processes do not outlive an epoch).
    """

    def __init__(
        self,
        tracklets: Sequence[Tracklet],
        seq_len: int = 8,
        sampling: str = "restricted_random",
        size: tuple[int, int] = (252, 126),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        train_augment: TrackletAugment | None = None,
        seed: int = 0,
        frame_cache: FrameCache | None = None,
    ) -> None:
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if seq_len < 1:
            raise ValueError("seq_len must be >= 1")
        self.tracklets = list(tracklets)
        self.seq_len = seq_len
        self.sampling = sampling
        self.size = (int(size[0]), int(size[1]))
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)
        self.train_augment = train_augment
        self.seed = seed
        self.frame_cache = frame_cache
        self.epoch = 0
        self.corrupt_frames: set[Path] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def num_corrupt_frames(self) -> int:
        return len(self.corrupt_frames)

    def __len__(self) -> int:
        return len(self.tracklets)

    def _load_frames(self, tracklet: Tracklet, rng: np.random.Generator) -> torch.Tensor:
        while True:
            readable = [p for p in tracklet.paths if p not in self.corrupt_frames]
            if not readable:
                raise DatasetError(
                    f"tracklet {tracklet.tracklet_id} has no readable frame "
                    f"({len(tracklet.paths)} frames, e.g. {tracklet.paths[0]})"
                )
            # Re-seed per attempt so the choice depends only on which frames are readable.
            attempt_rng = np.random.default_rng(rng.integers(0, 2**63 - 1))
            idx = frame_indices(len(readable), self.seq_len, self.sampling, attempt_rng)
            loaded: dict[int, torch.Tensor] = {}
            failed = False
            for i in dict.fromkeys(idx.tolist()):
                try:
                    loaded[i] = (self.frame_cache.load(readable[i], self.size) if self.frame_cache is not None
                                 else load_frame(readable[i], self.size))
                except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError...
                    self.corrupt_frames.add(readable[i])
                    warnings.warn(f"skipping unreadable frame {readable[i]}: {exc}", RuntimeWarning, stacklevel=2)
                    failed = True
            if not failed:
                return torch.stack([loaded[i] for i in idx.tolist()])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, int, int]:
        """``item``: a tracklet index, or ``(index, draw)`` where ``draw`` numbers the repeats of
        one tracklet in a batch, so each repeat gets its own frames and augmentation."""
        index, draw = item if isinstance(item, tuple) else (item, 0)
        tracklet = self.tracklets[index]
        rng = np.random.default_rng([self.seed, self.epoch, index] + ([draw] if draw else []))
        frames = self._load_frames(tracklet, rng)
        if self.train_augment is not None:
            frames = self.train_augment(frames, rng)
        frames = normalise(frames, self.mean, self.std).contiguous()
        return frames, tracklet.pid, tracklet.camera, tracklet.platform_id, index
