"""Fixtures for the data-layer tests: real image files written to tmp folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ImageWriter = Callable[..., Path]


def _write_image(path: Path, size: tuple[int, int] = (16, 32), colour: tuple[int, int, int] | None = None, seed: int = 0) -> Path:
    """Write a real image (JPEG/PNG by suffix) of ``size`` = (W, H): flat ``colour`` or noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None:
        arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    else:
        arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
        arr[:] = colour
    Image.fromarray(arr, "RGB").save(path)
    return path


@pytest.fixture
def write_image() -> ImageWriter:
    return _write_image


@pytest.fixture
def write_tracklet(write_image: ImageWriter) -> Callable[..., list[Path]]:
    """Write ``names`` as real images into ``folder`` and return their paths (in given order)."""

    def write(folder: Path, names: list[str], size: tuple[int, int] = (16, 32), colour=None) -> list[Path]:
        return [write_image(folder / n, size, colour, seed=i) for i, n in enumerate(names)]

    return write
