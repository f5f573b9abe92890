from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import DatasetError, Tracklet
from model.data.augment import AugmentConfig, TrackletAugment
from model.data.video import VideoDataset, load_frame


def _tracklet(folder: Path, write_tracklet, n: int = 12, pid: int = 3, colour=None) -> Tracklet:
    paths = write_tracklet(folder, [f"f_{i}.png" for i in range(n)], size=(10, 20), colour=colour)
    return Tracklet(tuple(paths), pid, 2, "aerial", 1, folder.name)


def test_item_shape_labels_and_normalisation(tmp_path: Path, write_tracklet) -> None:
    t = _tracklet(tmp_path / "t", write_tracklet, colour=(255, 128, 0))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 0.5)
    ds = VideoDataset([t], seq_len=4, sampling="even", size=(32, 16), mean=mean, std=std)
    frames, pid, cam, platform, index = ds[0]
    assert frames.shape == (4, 3, 32, 16) and frames.dtype == torch.float32
    assert (pid, cam, platform, index) == (3, 2, 1, 0)
    expected = torch.tensor([(1.0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.5, (0.0 - 0.5) / 0.5])
    assert torch.allclose(frames.mean(dim=(0, 2, 3)), expected, atol=1e-3)


def test_frames_follow_time_order(tmp_path: Path, write_tracklet) -> None:
    # Frame i is a flat grey of level 20*i: the sampled sequence must increase.
    paths = [write_tracklet(tmp_path, [f"f_{i}.png"], colour=(20 * i,) * 3)[0] for i in range(10)]
    t = Tracklet(tuple(paths), 0, 0, "ground", None, "t")
    ds = VideoDataset([t], seq_len=5, sampling="restricted_random", size=(8, 4), mean=(0, 0, 0), std=(1, 1, 1))
    levels = ds[0][0].mean(dim=(1, 2, 3))
    assert torch.all(levels[1:] >= levels[:-1])
    all_frames = VideoDataset([t], sampling="all", size=(8, 4), mean=(0, 0, 0), std=(1, 1, 1))[0][0]
    assert all_frames.shape[0] == 10
    assert torch.allclose(all_frames.mean(dim=(1, 2, 3)), torch.tensor([20 * i / 255 for i in range(10)]), atol=1e-3)


def test_deterministic_by_seed_and_epoch(tmp_path: Path, write_tracklet) -> None:
    t = _tracklet(tmp_path / "t", write_tracklet, n=30)
    aug = TrackletAugment()
    a = VideoDataset([t], seq_len=4, size=(16, 8), train_augment=aug, seed=5)
    b = VideoDataset([t], seq_len=4, size=(16, 8), train_augment=aug, seed=5)
    assert torch.equal(a[0][0], b[0][0])
    outs = []
    for epoch in range(4):
        a.set_epoch(epoch)
        outs.append(a[0][0])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_corrupt_frames_skipped_and_counted(tmp_path: Path, write_tracklet) -> None:
    t = _tracklet(tmp_path / "t", write_tracklet, n=6)
    t.paths[1].write_bytes(b"garbage")
    t.paths[4].write_bytes(b"")
    ds = VideoDataset([t], seq_len=6, sampling="even", size=(8, 4))
    with pytest.warns(RuntimeWarning) as record:
        frames = ds[0][0]
    messages = " ".join(str(w.message) for w in record)
    assert "f_1.png" in messages and "f_4.png" in messages
    assert frames.shape[0] == 6
    assert ds.num_corrupt_frames == 2
    assert ds.corrupt_frames == {t.paths[1], t.paths[4]}


def test_tracklet_without_readable_frames_raises(tmp_path: Path, write_tracklet) -> None:
    t = _tracklet(tmp_path / "bad_tracklet", write_tracklet, n=2)
    for p in t.paths:
        p.write_bytes(b"xx")
    ds = VideoDataset([t], seq_len=2, size=(8, 4))
    with pytest.warns(RuntimeWarning), pytest.raises(DatasetError, match="bad_tracklet has no readable frame"):
        ds[0]


def test_augmented_identical_frames_stay_identical(tmp_path: Path, write_tracklet) -> None:
    paths = write_tracklet(tmp_path, ["same_1.png"], size=(12, 24))
    t = Tracklet(tuple(paths * 8), 1, 0, "ground", None, "t")
    aug = TrackletAugment(AugmentConfig(flip_p=1.0, erase_p=1.0, hue_p=1.0))
    ds = VideoDataset([t], seq_len=8, size=(24, 12), train_augment=aug)
    frames = ds[0][0]
    plain = VideoDataset([t], seq_len=8, size=(24, 12))[0][0]
    assert not torch.allclose(frames, plain)
    assert all(torch.equal(frames[0], frames[i]) for i in range(1, 8))


def test_load_frame_resizes_bicubic(tmp_path: Path, write_image) -> None:
    path = write_image(tmp_path / "x.jpg", (7, 13))
    frame = load_frame(path, (252, 126))
    assert frame.shape == (3, 252, 126) and 0.0 <= frame.min() and frame.max() <= 1.0


def test_bad_sampling_mode(tmp_path: Path, write_tracklet) -> None:
    with pytest.raises(ValueError, match="sampling"):
        VideoDataset([_tracklet(tmp_path, write_tracklet)], sampling="random")


def test_frame_cache_reads_each_file_once_and_changes_nothing(tmp_path) -> None:
    from model.data.video import FrameCache

    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 10, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    cache = FrameCache(max_bytes=2 * 8 * 4 * 3)  # room for two 8x4 frames
    first = [cache.load(p, (8, 4)) for p in paths]
    assert len(cache) == 2 and cache.bytes == 2 * 8 * 4 * 3
    for p in paths[:2]:
        p.unlink()  # cached frames no longer need the file
    again = [cache.load(p, (8, 4)) for p in paths]
    for a, b, p in zip(first, again, paths):
        torch.testing.assert_close(a, b)
        if p.exists():
            torch.testing.assert_close(a, load_frame(p, (8, 4)))


def test_frame_cache_slabs_hold_frames_of_each_size_intact(tmp_path, monkeypatch) -> None:
    """Frames share a few slab allocations per size (not one array each) and come back unchanged,
    whatever the mix of sizes asked for."""
    from model.data.video import FrameCache

    monkeypatch.setattr(FrameCache, "SLAB_FRAMES", 4)
    paths = []
    for i in range(10):
        p = tmp_path / f"g{i}.png"
        Image.fromarray(np.random.default_rng(10 + i).integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    cache = FrameCache(max_bytes=1 << 20)
    sizes = [(8, 4), (12, 6)]
    first = {(p, s): cache.load(p, s) for p in paths for s in sizes}
    assert len(cache) == 20 and cache.bytes == 10 * (8 * 4 * 3 + 12 * 6 * 3)
    assert [len(cache._slabs[(*s, 3)]) for s in sizes] == [3, 3]  # ceil(10 / 4) slabs per size
    for (p, s), frame in first.items():
        torch.testing.assert_close(cache.load(p, s), frame)
        torch.testing.assert_close(frame, load_frame(p, s))
