"""Plain folder layout: ``<root>/<split>/<pid>/<tracklet>/*.{jpg,png}`` plus optional manifest.

Every immediate sub-folder of ``root`` is a split (``train``, ``query``, ``gallery``, ...);
identity folders are integer ids; the tracklet folder name is the tracklet id. Camera, platform
and session come from the manifest CSV (``root/manifest.csv`` or an explicit path; format in
``model.data.manifest``, with ``split`` = the split folder name); tracklets without a manifest
row get ``default_camera``, ``default_platform`` and session ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from model.data.errors import DatasetError
from model.data.folders import relabel_map, scan_split
from model.data.manifest import MANIFEST_NAME, read_manifest
from model.data.tracklet import PLATFORMS, Tracklet, natural_key


@dataclass
class PlainDataset:
    """A loaded plain-layout root: ``splits[name]`` lists that split's tracklets."""

    root: Path
    splits: dict[str, list[Tracklet]]
    train_pid_map: dict[int, int]
    empty_tracklets: list[Path] = field(default_factory=list)
    skipped_files: int = 0
    manifest_path: Path | None = None
    unmatched_manifest_rows: int = 0


def load_plain(
    root: str | Path,
    manifest: str | Path | None = None,
    auto_manifest: bool = True,
    relabel_splits: Iterable[str] = ("train",),
    default_camera: int = 0,
    default_platform: str = "ground",
    progress: bool = True,
) -> PlainDataset:
    """Load every split under ``root``.

    Splits named in ``relabel_splits`` get pids relabelled ``0..P-1`` (one shared map, kept in
    ``train_pid_map`` and per tracklet as ``metadata["original_pid"]``).
    """
    if default_platform not in PLATFORMS:
        raise ValueError(f"default_platform must be one of {PLATFORMS}, got {default_platform!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    split_dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
    if not split_dirs:
        raise DatasetError(f"expected split folders under {root} (layout <split>/<pid>/<tracklet>/*.jpg)")
    manifest_path: Path | None = Path(manifest) if manifest is not None else None
    if manifest_path is None and auto_manifest and (root / MANIFEST_NAME).is_file():
        manifest_path = root / MANIFEST_NAME
    rows = read_manifest(manifest_path) if manifest_path is not None else {}

    relabel = set(relabel_splits)
    scans = [scan_split(d, d.name, progress) for d in split_dirs]
    pid_map = relabel_map([e.pid for s in scans if s.split in relabel for e in s.folders])
    splits: dict[str, list[Tracklet]] = {}
    used: set[tuple[str, str, str]] = set()
    for scan in scans:
        tracklets: list[Tracklet] = []
        for e in scan.folders:
            key = (scan.split, e.pid_name, e.folder.name)
            row = rows.get(key)
            if row is not None:
                used.add(key)
            tracklets.append(
                Tracklet(
                    paths=e.frames,
                    pid=pid_map[e.pid] if scan.split in relabel else e.pid,
                    camera=row.camera if row else default_camera,
                    platform=row.platform if row else default_platform,
                    session=row.session if row else None,
                    tracklet_id=e.folder.name,
                    metadata={"original_pid": e.pid, "split": scan.split},
                )
            )
        splits[scan.split] = tracklets
    return PlainDataset(
        root=root,
        splits=splits,
        train_pid_map=pid_map,
        empty_tracklets=[p for s in scans for p in s.empty_tracklets],
        skipped_files=sum(s.skipped_files for s in scans),
        manifest_path=manifest_path,
        unmatched_manifest_rows=len(set(rows) - used),
    )
