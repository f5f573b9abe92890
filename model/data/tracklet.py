"""The tracklet record shared by every loader, and frame-file listing in frame order."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLATFORMS: tuple[str, ...] = ("ground", "aerial")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key comparing digit runs numerically: ``f2.jpg`` < ``f10.jpg``.

    Each run becomes ``(0, int)`` or ``(1, str)`` so digits and text never compare directly.
    """
    parts = _DIGITS.split(name)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p != "")


def list_frames(folder: Path) -> tuple[list[Path], int]:
    """Image files directly inside ``folder`` in natural order of their names.

    Returns ``(frames, skipped)`` where ``skipped`` counts non-image files (and sub-folders)
    that were ignored. Files are not opened: see ``validate_tracklets`` for that.
    """
    frames: list[Path] = []
    skipped = 0
    for entry in folder.iterdir():
        if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
            frames.append(entry)
        else:
            skipped += 1
    frames.sort(key=lambda p: natural_key(p.name))
    return frames, skipped


def platform_id(platform: str) -> int:
    """Integer code of a platform: ground -> 0, aerial -> 1."""
    try:
        return PLATFORMS.index(platform)
    except ValueError:
        raise ValueError(f"unknown platform {platform!r}; expected one of {PLATFORMS}") from None


@dataclass(frozen=True)
class Tracklet:
    """One video tracklet: a person's crops in frame order plus labels.

    ``pid`` is the label used by the consumer (training splits relabel it to ``0..P-1`` and keep
    the on-disk id in ``metadata["original_pid"]``). ``session`` is ``None`` when unknown.
    ``metadata`` carries optional extras (aerial altitude/distance/pitch in metres and degrees,
    the split folder, ...); it is excluded from hashing because dicts are unhashable.
    """

    paths: tuple[Path, ...]
    pid: int
    camera: int
    platform: str
    session: int | None
    tracklet_id: str
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ValueError(f"tracklet {self.tracklet_id}: platform must be one of {PLATFORMS}, got {self.platform!r}")

    @property
    def num_frames(self) -> int:
        return len(self.paths)

    @property
    def platform_id(self) -> int:
        return platform_id(self.platform)
