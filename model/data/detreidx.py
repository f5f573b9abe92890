"""DetReIDX / VReID-XFD loader (also reads SynthXFD, which is written in the same layout).

Layout (folders are the split; there are no split files)::

    ROOT/train/<PID>/<TRACKLET>/*.jpg
    ROOT/case1_aerial_to_ground/{query,gallery}/<PID>/<TRACKLET>/*.jpg
    ROOT/case2_ground_to_aerial/{query,gallery}/<PID>/<TRACKLET>/*.jpg
    ROOT/case3_aerial_to_aerial/{query,gallery}/<PID>/<TRACKLET>/*.jpg
    ROOT/manifest.csv            (optional, see model.data.manifest)

``<PID>`` is an integer folder name (``0024``); tracklet folders are conventionally
``<pid>_<trackletid>`` (``0024_5453``) and the folder name is the tracklet id. A root needs
``train/`` or at least one case folder; a case folder needs both ``query/`` and ``gallery/``.

Frame-name grammar (the rule of the public DetReIDX loader, made explicit). The file stem is
split on ``_`` into fields ``f[0] .. f[n-1]`` (indices 0-based):

- ``n < 8``: a **ground** frame. No geometry; camera id 0.
- ``n >= 8``: an **aerial** frame.
  ``f[6]`` = altitude (m), ``f[7]`` = horizontal distance (m), ``f[8]`` = gimbal pitch (deg),
  each a decimal number; ``f[-2]`` = camera field: camera id 1 when it equals 1, else 2.
  With exactly 8 fields the pitch is absent (``None``); a field that is not a number gives
  ``None`` for that value (the public loader silently substitutes 30 m / 10 m / 30 deg instead,
  which we do not). ``slant_distance = sqrt(altitude^2 + distance^2)`` is derived.
- Fields other than these carry no meaning for the loader (in the real data they hold date,
  subject and sequence codes; sessions and clothing are not encoded).

Platform and geometry come from the first frame of a tracklet. When ``ROOT/manifest.csv``
exists (or a manifest is passed) its rows override camera and platform and supply the session,
keyed by ``(split, pid folder, tracklet folder)`` with ``split`` such as
``case1_aerial_to_ground/query``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.data.errors import DatasetError
from model.data.folders import SplitScan, TrackletFolder, relabel_map, scan_split
from model.data.manifest import MANIFEST_NAME, ManifestKey, ManifestRow, read_manifest
from model.data.tracklet import Tracklet

AERIAL_MIN_FIELDS = 8
ALTITUDE_FIELD = 6
DISTANCE_FIELD = 7
PITCH_FIELD = 8
CAMERA_FIELD = -2


@dataclass(frozen=True)
class CaseInfo:
    """Static description of one evaluation case."""

    name: str
    label: str
    challenge_name: str
    query_platform: str
    gallery_platform: str


CASES: dict[str, CaseInfo] = {
    info.name: info
    for info in (
        CaseInfo("case1_aerial_to_ground", "A->G", "Case 1: Aerial to Ground", "aerial", "ground"),
        CaseInfo("case2_ground_to_aerial", "G->A", "Case 2: Ground to Aerial", "ground", "aerial"),
        CaseInfo("case3_aerial_to_aerial", "A->A", "Case 3: Aerial to Aerial", "aerial", "aerial"),
    )
}


@dataclass(frozen=True)
class FrameNameInfo:
    """What a DetReIDX frame name says (see the module docstring for the grammar)."""

    platform: str
    camera: int
    altitude: float | None = None
    distance: float | None = None
    pitch: float | None = None
    camera_field: str | None = None

    @property
    def slant_distance(self) -> float | None:
        if self.altitude is None or self.distance is None:
            return None
        return math.hypot(self.altitude, self.distance)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_frame_name(name: str) -> FrameNameInfo:
    """Parse a frame file name (with or without extension) by the DetReIDX grammar."""
    fields = Path(name).stem.split("_")
    if len(fields) < AERIAL_MIN_FIELDS:
        return FrameNameInfo(platform="ground", camera=0)
    cam_text = fields[CAMERA_FIELD]
    cam_value = _number(cam_text)
    return FrameNameInfo(
        platform="aerial",
        camera=1 if cam_value == 1 else 2,
        altitude=_number(fields[ALTITUDE_FIELD]),
        distance=_number(fields[DISTANCE_FIELD]),
        pitch=_number(fields[PITCH_FIELD]) if len(fields) > PITCH_FIELD else None,
        camera_field=cam_text,
    )


@dataclass(frozen=True)
class CaseSplit:
    """One evaluation case: queries ranked against that case's gallery."""

    name: str
    label: str
    challenge_name: str
    query: list[Tracklet]
    gallery: list[Tracklet]


@dataclass
class DetReIDXDataset:
    """A loaded DetReIDX-layout root.

    ``train`` pids are relabelled ``0..P-1`` (``train_pid_map`` maps on-disk id -> label, and
    each tracklet keeps ``metadata["original_pid"]``); query/gallery keep on-disk ids.
    """

    root: Path
    train: list[Tracklet]
    cases: dict[str, CaseSplit]
    train_pid_map: dict[int, int]
    empty_tracklets: list[Path] = field(default_factory=list)
    skipped_files: int = 0
    manifest_path: Path | None = None

    @property
    def num_train_pids(self) -> int:
        return len(self.train_pid_map)


def _tracklet_from_folder(
    entry: TrackletFolder, split: str, label: int, manifest: dict[ManifestKey, ManifestRow]
) -> Tracklet:
    info = parse_frame_name(entry.frames[0].name)
    metadata: dict[str, Any] = {"original_pid": entry.pid, "split": split}
    if info.platform == "aerial":
        metadata.update(
            altitude=info.altitude,
            distance=info.distance,
            pitch=info.pitch,
            slant_distance=info.slant_distance,
            camera_field=info.camera_field,
        )
    camera, platform, session = info.camera, info.platform, None
    row = manifest.get((split, entry.pid_name, entry.folder.name))
    if row is not None:
        camera, platform, session = row.camera, row.platform, row.session
    return Tracklet(
        paths=entry.frames,
        pid=label,
        camera=camera,
        platform=platform,
        session=session,
        tracklet_id=entry.folder.name,
        metadata=metadata,
    )


def _build(scan: SplitScan, manifest: dict[ManifestKey, ManifestRow], relabel: bool) -> tuple[list[Tracklet], dict[int, int]]:
    mapping = relabel_map([e.pid for e in scan.folders]) if relabel else {}
    tracklets = [
        _tracklet_from_folder(e, scan.split, mapping[e.pid] if relabel else e.pid, manifest) for e in scan.folders
    ]
    return tracklets, mapping


def load_detreidx(
    root: str | Path,
    manifest: str | Path | None = None,
    auto_manifest: bool = True,
    progress: bool = True,
) -> DetReIDXDataset:
    """Load a DetReIDX-layout root (see module docstring).

    Args:
        root: dataset root.
        manifest: explicit manifest CSV; otherwise ``ROOT/manifest.csv`` is used when present
            and ``auto_manifest`` is true.
        progress: show a tqdm bar per split.

    Raises ``DatasetError`` naming the path when the root is missing, holds neither ``train/``
    nor a case folder, or a case folder lacks ``query/`` or ``gallery/``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    present_cases = [name for name in CASES if (root / name).exists()]
    has_train = (root / "train").is_dir()
    if not has_train and not present_cases:
        raise DatasetError(f"expected folder train/ or {next(iter(CASES))}/ (or another case folder) under {root}")

    manifest_path: Path | None = Path(manifest) if manifest is not None else None
    if manifest_path is None and auto_manifest and (root / MANIFEST_NAME).is_file():
        manifest_path = root / MANIFEST_NAME
    rows = read_manifest(manifest_path) if manifest_path is not None else {}

    empty: list[Path] = []
    skipped = 0
    train: list[Tracklet] = []
    pid_map: dict[int, int] = {}
    if has_train:
        scan = scan_split(root / "train", "train", progress)
        train, pid_map = _build(scan, rows, relabel=True)
        empty += scan.empty_tracklets
        skipped += scan.skipped_files

    cases: dict[str, CaseSplit] = {}
    for name in present_cases:
        case_dir = root / name
        if not case_dir.is_dir():
            raise DatasetError(f"{case_dir} must be a folder holding query/ and gallery/")
        parts: dict[str, list[Tracklet]] = {}
        for role in ("query", "gallery"):
            role_dir = case_dir / role
            if not role_dir.is_dir():
                raise DatasetError(f"expected folder {role}/ under {case_dir}")
            scan = scan_split(role_dir, f"{name}/{role}", progress)
            parts[role], _ = _build(scan, rows, relabel=False)
            empty += scan.empty_tracklets
            skipped += scan.skipped_files
        info = CASES[name]
        cases[name] = CaseSplit(name, info.label, info.challenge_name, parts["query"], parts["gallery"])

    return DetReIDXDataset(
        root=root,
        train=train,
        cases=cases,
        train_pid_map=pid_map,
        empty_tracklets=empty,
        skipped_files=skipped,
        manifest_path=manifest_path,
    )
