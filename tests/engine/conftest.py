"""Fixtures for the engine tests: small real datasets written as image folders, tiny checkpoints.

``write_easy_detreidx`` writes a DetReIDX-layout root where each identity is a distinct two-colour
figure (with pixel noise), so a tiny model can learn it in a few epochs. Frame names follow the
DetReIDX grammar: ground ``PPPP_S1_G1_NNNNN_F`` (camera 0), aerial
``PPPP_S1_UAV_NNNNN_P01_20240611_40.0_30.0_60_U_F`` with camera field U in {1, 2} (cameras 1, 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import ModelConfig, build_model, save_checkpoint

torch.set_num_threads(2)

PALETTE = np.array(
    [[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 40], [200, 40, 210], [40, 210, 220],
     [250, 140, 20], [120, 120, 120], [20, 20, 20], [240, 240, 240], [120, 60, 20], [90, 20, 140]],
    dtype=np.int64,
)


def identity_frame(pid: int, frame: int, rng: np.random.Generator, size: tuple[int, int] = (32, 16)) -> np.ndarray:
    """An ``H x W x 3`` uint8 figure: top half colour A, bottom half colour B of identity ``pid``."""
    h, w = size
    top, bottom = PALETTE[pid % len(PALETTE)], PALETTE[(3 * pid + 5) % len(PALETTE)]
    img = np.empty((h, w, 3), dtype=np.int64)
    img[: h // 2], img[h // 2:] = top, bottom
    img += rng.integers(-20, 21, img.shape) + (frame % 3) * 4
    return np.clip(img, 0, 255).astype(np.uint8)


def frame_name(pid: int, number: int, frame: int, camera: int) -> str:
    """DetReIDX frame name: camera 0 = ground (5 fields), 1/2 = aerial (camera field at -2)."""
    if camera == 0:
        return f"{pid:04d}_S1_G1_{number:05d}_{frame}.png"
    return f"{pid:04d}_S1_UAV_{number:05d}_P01_20240611_40.0_30.0_60_{camera}_{frame}.png"


def write_tracklet(folder: Path, pid: int, number: int, camera: int, frames: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, pid, number])
    for f in range(frames):
        Image.fromarray(identity_frame(pid, f, rng)).save(folder / frame_name(pid, number, f, camera))


CASE_CAMERAS = {
    "case1_aerial_to_ground": (1, 0),
    "case2_ground_to_aerial": (0, 1),
    "case3_aerial_to_aerial": (1, 2),
}


def write_easy_detreidx(root: Path, train_ids: int = 4, test_ids: int = 3, train_tracklets: int = 4,
                        frames: int = 6, gallery_per_id: int = 2, seed: int = 0) -> Path:
    """Write the easy dataset (see module docstring); train pids 1.., test pids 100..; returns root."""
    number = 0
    for pid in range(1, train_ids + 1):
        for j in range(train_tracklets):
            number += 1
            write_tracklet(root / "train" / f"{pid:04d}" / f"{pid:04d}_{number:05d}", pid, number, j % 3, frames, seed)
    for case, (q_cam, g_cam) in CASE_CAMERAS.items():
        for pid in range(100, 100 + test_ids):
            number += 1
            write_tracklet(root / case / "query" / f"{pid:04d}" / f"{pid:04d}_{number:05d}", pid, number, q_cam,
                           frames, seed)
            for _ in range(gallery_per_id):
                number += 1
                write_tracklet(root / case / "gallery" / f"{pid:04d}" / f"{pid:04d}_{number:05d}", pid, number,
                               g_cam, frames, seed)
    return root


@pytest.fixture(scope="session")
def easy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared easy dataset (read-only for tests: copy it to change it)."""
    return write_easy_detreidx(tmp_path_factory.mktemp("easy") / "data")


def write_tiny_checkpoint(path: Path, seed: int) -> Path:
    """An untrained tiny inference checkpoint (weights drawn with ``seed``)."""
    torch.manual_seed(seed)
    save_checkpoint(build_model(ModelConfig.preset("tiny")), path)
    return path


@pytest.fixture
def make_easy_dataset():
    """``make(root, **options)`` writes an easy DetReIDX-layout dataset (see ``write_easy_detreidx``)."""
    return write_easy_detreidx


@pytest.fixture
def make_tiny_checkpoint():
    """``make(path, seed)`` writes an untrained tiny checkpoint and returns its path."""
    return write_tiny_checkpoint
