"""Walking ``<split>/<pid>/<tracklet>/<frames>`` folder trees (DetReIDX and plain layouts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from model.data.errors import DatasetError
from model.data.tracklet import list_frames, natural_key


@dataclass(frozen=True)
class TrackletFolder:
    """A non-empty tracklet folder found on disk, frames in natural order."""

    pid_name: str
    pid: int
    folder: Path
    frames: tuple[Path, ...]


@dataclass
class SplitScan:
    """Everything found under one split folder."""

    split: str
    folders: list[TrackletFolder] = field(default_factory=list)
    empty_tracklets: list[Path] = field(default_factory=list)
    skipped_files: int = 0


def _sorted_children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda p: natural_key(p.name))


def scan_split(split_dir: Path, split: str, progress: bool = True) -> SplitScan:
    """Scan ``split_dir/<pid>/<tracklet>/*`` without opening any image.

    Identity folders must be named by an integer id; anything else raises ``DatasetError``
    naming the folder. Files where a folder is expected and non-image files inside tracklets are
    skipped and counted; tracklet folders with no image file are listed in ``empty_tracklets``.
    """
    if not split_dir.is_dir():
        raise DatasetError(f"expected split folder {split_dir} (layout <split>/<pid>/<tracklet>/*.jpg)")
    scan = SplitScan(split=split)
    pid_dirs = _sorted_children(split_dir)
    for pid_dir in tqdm(pid_dirs, desc=f"scan {split}", unit="id", disable=not progress, leave=False):
        if not pid_dir.is_dir():
            scan.skipped_files += 1
            continue
        try:
            pid = int(pid_dir.name)
        except ValueError:
            raise DatasetError(
                f"{pid_dir}: identity folders must be named by an integer id (layout <split>/<pid>/<tracklet>/*.jpg)"
            ) from None
        for tracklet_dir in _sorted_children(pid_dir):
            if not tracklet_dir.is_dir():
                scan.skipped_files += 1
                continue
            frames, skipped = list_frames(tracklet_dir)
            scan.skipped_files += skipped
            if not frames:
                scan.empty_tracklets.append(tracklet_dir)
                continue
            scan.folders.append(TrackletFolder(pid_dir.name, pid, tracklet_dir, tuple(frames)))
    return scan


def relabel_map(pids: list[int]) -> dict[int, int]:
    """Map the sorted distinct ``pids`` to ``0..P-1`` (training labels)."""
    return {pid: label for label, pid in enumerate(sorted(set(pids)))}
