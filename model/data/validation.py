"""Opt-in integrity check of tracklet frames (opening every file is too slow for load time)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from model.data.tracklet import Tracklet


@dataclass
class ValidationReport:
    """Result of ``validate_tracklets``.

    ``corrupt_frames`` lists (path, reason) for frames that are missing or fail PIL's verify;
    ``empty_tracklets`` lists ids of tracklets with no readable frame at all.
    """

    num_tracklets: int = 0
    num_frames: int = 0
    corrupt_frames: list[tuple[Path, str]] = field(default_factory=list)
    empty_tracklets: list[str] = field(default_factory=list)

    @property
    def num_corrupt_frames(self) -> int:
        return len(self.corrupt_frames)

    @property
    def num_empty_tracklets(self) -> int:
        return len(self.empty_tracklets)

    @property
    def ok(self) -> bool:
        return not self.corrupt_frames and not self.empty_tracklets


def frame_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable image, or ``None`` when PIL verifies it.

    ``verify()`` checks the container without decoding all pixels; a truncated JPEG body is
    caught by also loading the (small) image.
    """
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        return "missing file"
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        return f"{type(exc).__name__}: {exc}"
    return None


def validate_tracklets(tracklets: Sequence[Tracklet], progress: bool = True) -> ValidationReport:
    """Open every frame of every tracklet and count corrupt frames and empty tracklets."""
    report = ValidationReport(num_tracklets=len(tracklets))
    for t in tqdm(tracklets, desc="validate", unit="tracklet", disable=not progress):
        readable = 0
        for path in t.paths:
            report.num_frames += 1
            problem = frame_problem(path)
            if problem is None:
                readable += 1
            else:
                report.corrupt_frames.append((path, problem))
        if readable == 0:
            report.empty_tracklets.append(t.tracklet_id)
    return report
