"""The train loader: P x K identity-balanced batches, restricted-random frame choice in time order,
per-epoch reproducibility; the test-time loader samples evenly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model import ModelConfig
from model.data import Tracklet
from model.engine.config import TrainConfig
from model.engine.embedding import eval_dataset
from model.engine.train_loader import build_train_loader
from model.sampling import even_indices
from model.sasreid import build_model


def coded_tracklets(root: Path, ids: int, per_id: int, lengths: list[int]) -> list[Tracklet]:
    """Tracklets whose frame i is a flat grey image of level 6 * i (lossless PNG)."""
    out = []
    n = 0
    for pid in range(ids):
        for j in range(per_id):
            length = lengths[(pid * per_id + j) % len(lengths)]
            folder = root / f"{pid}_{j}"
            folder.mkdir(parents=True)
            paths = []
            for i in range(length):
                p = folder / f"f{i}.png"
                Image.fromarray(np.full((20, 10, 3), 6 * i, dtype=np.uint8)).save(p)
                paths.append(p)
            out.append(Tracklet(tuple(paths), pid, 0, "ground", None, f"{pid}_{j}", {"split": "train"}))
            n += 1
    return out


def decode_indices(frames: torch.Tensor, cfg: ModelConfig) -> np.ndarray:
    """Frame indices of ``[B, T, 3, H, W]`` normalised frames (red channel mean -> level / 6)."""
    red = frames[:, :, 0].mean(dim=(-1, -2)) * cfg.std[0] + cfg.mean[0]
    return np.rint(red.numpy() * 255 / 6).astype(np.int64)


def restricted_chunks(n: int, t: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, t + 1)
    lo = np.floor(edges[:-1]).astype(int)
    hi = np.maximum(np.floor(edges[1:]).astype(int), lo + 1)
    return list(zip(lo, hi))


def test_train_batches_are_pxk_with_restricted_random_frames(tmp_path: Path):
    tracklets = coded_tracklets(tmp_path, ids=5, per_id=4, lengths=[17, 24, 9, 30])
    cfg = TrainConfig.recipe("tiny", p=3, k=2, seq_len=4, flip_p=0.0, erase_p=0.0, hue_p=0.0, num_workers=0)
    mcfg = cfg.model_config(num_classes=5)
    loader = build_train_loader(tracklets, cfg, mcfg)
    seen: set[int] = set()
    epochs: list[list[np.ndarray]] = []
    for epoch in (0, 1, 0):
        chosen = []
        for frames, pids, _cam, _plat, index in loader.epoch(epoch):
            assert frames.shape == (6, 4, 3, *mcfg.backbone.image_size)
            groups = pids.view(3, 2)
            assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == 3
            idx = decode_indices(frames, mcfg)
            for row, i in zip(idx, index.tolist()):
                n = tracklets[i].num_frames
                assert list(row) == sorted(row)  # time order
                for f, (lo, hi) in zip(row, restricted_chunks(n, 4)):
                    assert lo <= f < hi  # one frame from each of T equal chunks
                seen.add(i)
            chosen.append(idx)
        epochs.append(chosen)
    assert seen == set(range(len(tracklets)))  # every tracklet appears in an epoch
    same = all(np.array_equal(a, b) for a, b in zip(epochs[0], epochs[2]))
    assert same and len(epochs[0]) == len(epochs[2])  # an epoch is reproducible
    assert not all(np.array_equal(a, b) for a, b in zip(epochs[0], epochs[1]))  # and epochs differ


def test_eval_dataset_samples_evenly(tmp_path: Path):
    tracklets = coded_tracklets(tmp_path, ids=1, per_id=3, lengths=[5, 16, 40])
    model = build_model(ModelConfig.preset("tiny"))
    ds = eval_dataset(model, tracklets, frames=8)
    for i, t in enumerate(tracklets):
        frames = ds[i][0][None]
        assert decode_indices(frames, model.cfg)[0].tolist() == even_indices(t.num_frames, 8).tolist()


def test_a_tracklet_repeated_in_a_batch_gets_its_own_frames_and_augmentation(tmp_path: Path):
    """An identity with one tracklet fills its K slots with that tracklet; each copy must be a
    different sample (frames and augmentation), else the positive pair is the same tensor."""
    tracklets = coded_tracklets(tmp_path, ids=4, per_id=1, lengths=[30])
    cfg = TrainConfig.recipe("tiny", p=2, k=3, seq_len=4, flip_p=0.5, erase_p=0.5, hue_p=0.0, num_workers=0)
    loader = build_train_loader(tracklets, cfg, cfg.model_config(num_classes=4))
    batches = list(loader.epoch(0))
    assert batches
    for frames, _pids, _cam, _plat, index in batches:
        for g in range(2):
            rows = index[g * 3:(g + 1) * 3]
            assert len(set(rows.tolist())) == 1  # one tracklet, three times
            copies = frames[g * 3:(g + 1) * 3]
            assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
    again = list(loader.epoch(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # still reproducible
