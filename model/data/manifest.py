"""Per-tracklet manifest CSV: camera, platform and session for tracklet folders.

Format (UTF-8, comma separated, exactly this header, one row per tracklet folder)::

    split,pid,tracklet,camera,platform,session
    train,0001,0001_00007,0,ground,1
    case1_aerial_to_ground/query,0051,0051_00412,13,aerial,2

- ``split``: the split folder relative to the dataset root, ``/``-separated
  (``train``, ``test``, ``case1_aerial_to_ground/query``, ...).
- ``pid``: the identity folder name exactly as on disk (``0001``).
- ``tracklet``: the tracklet folder name exactly as on disk.
- ``camera``: integer camera id.
- ``platform``: ``ground`` or ``aerial``.
- ``session``: integer session (capture day), or empty when unknown.

Rows are keyed by ``(split, pid, tracklet)``; a folder with no row keeps the loader's defaults.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from model.data.errors import DatasetError
from model.data.tracklet import PLATFORMS

MANIFEST_HEADER: tuple[str, ...] = ("split", "pid", "tracklet", "camera", "platform", "session")
MANIFEST_NAME = "manifest.csv"

ManifestKey = tuple[str, str, str]


@dataclass(frozen=True)
class ManifestRow:
    """One manifest line."""

    split: str
    pid: str
    tracklet: str
    camera: int
    platform: str
    session: int | None

    @property
    def key(self) -> ManifestKey:
        return (self.split, self.pid, self.tracklet)


def _parse_row(path: Path, line_no: int, row: dict[str, str]) -> ManifestRow:
    where = f"{path} line {line_no}"
    try:
        camera = int(row["camera"])
    except ValueError:
        raise DatasetError(f"{where}: camera must be an integer, got {row['camera']!r}") from None
    platform = row["platform"].strip()
    if platform not in PLATFORMS:
        raise DatasetError(f"{where}: platform must be one of {PLATFORMS}, got {platform!r}")
    session_text = row["session"].strip()
    try:
        session = int(session_text) if session_text else None
    except ValueError:
        raise DatasetError(f"{where}: session must be an integer or empty, got {session_text!r}") from None
    split = row["split"].strip().strip("/")
    if not split or not row["pid"].strip() or not row["tracklet"].strip():
        raise DatasetError(f"{where}: split, pid and tracklet must not be empty")
    return ManifestRow(split, row["pid"].strip(), row["tracklet"].strip(), camera, platform, session)


def read_manifest(path: Path) -> dict[ManifestKey, ManifestRow]:
    """Parse a manifest CSV into ``{(split, pid, tracklet): row}``.

    Raises ``DatasetError`` naming the file (and line) on a missing file, wrong header, bad
    value or duplicate key.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist (expected a CSV with header {','.join(MANIFEST_HEADER)})")
    rows: dict[ManifestKey, ManifestRow] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MANIFEST_HEADER:
            raise DatasetError(
                f"manifest {path}: header must be {','.join(MANIFEST_HEADER)}, got {','.join(reader.fieldnames or [])}"
            )
        for line_no, raw in enumerate(reader, start=2):
            if None in raw or any(v is None for v in raw.values()):
                raise DatasetError(f"{path} line {line_no}: expected {len(MANIFEST_HEADER)} columns")
            row = _parse_row(path, line_no, raw)
            if row.key in rows:
                raise DatasetError(f"{path} line {line_no}: duplicate entry for {'/'.join(row.key)}")
            rows[row.key] = row
    return rows


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> None:
    """Write rows (in the given order) as a manifest CSV with the standard header."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_HEADER)
        for r in rows:
            writer.writerow([r.split, r.pid, r.tracklet, r.camera, r.platform, "" if r.session is None else r.session])
