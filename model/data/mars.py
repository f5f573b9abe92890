"""MARS-format loader (MARS, and G2A-VReID which ships in the same format).

Layout::

    ROOT/bbox_train/<pid4>/<pid4>C<cam>T<tracklet>F<frame>.jpg
    ROOT/bbox_test/<pid4>/<pid4>C<cam>T<tracklet>F<frame>.jpg
    ROOT/info/train_name.txt          one frame file name per line (train)
    ROOT/info/test_name.txt           one frame file name per line (test)
    ROOT/info/tracks_train_info.mat   variable track_train_info: rows (start, end, pid, cam)
    ROOT/info/tracks_test_info.mat    variable track_test_info:  rows (start, end, pid, cam)
    ROOT/info/query_IDX.mat           variable query_IDX: 1-based rows of the test tracks

``start``/``end`` are 1-based inclusive line numbers in the name list; a frame lives in the
folder named by the first four characters of its name. Query = test tracks listed in
``query_IDX``; gallery = all other test tracks (the usual MARS protocol). Camera ids are made
0-based (``cam - 1``). Train pids are relabelled ``0..P-1``; test pids keep their values (MARS
uses 0 for distractors and -1 for junk). Frame files are not stat-ed at load time (MARS has
over a million): ``validate_tracklets`` checks them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from model.data.errors import DatasetError
from model.data.folders import relabel_map
from model.data.tracklet import Tracklet, natural_key

_MAT_KEYS = {
    "tracks_train_info.mat": "track_train_info",
    "tracks_test_info.mat": "track_test_info",
    "query_IDX.mat": "query_IDX",
}


@dataclass
class MarsDataset:
    """A loaded MARS-format root."""

    root: Path
    train: list[Tracklet]
    query: list[Tracklet]
    gallery: list[Tracklet]
    train_pid_map: dict[int, int]

    @property
    def num_train_pids(self) -> int:
        return len(self.train_pid_map)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"expected {what} at {path} (MARS layout: bbox_train/, bbox_test/, info/)")
    return path


def _read_names(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DatasetError(f"{path} lists no frame names")
    return names


def _read_mat_array(path: Path) -> np.ndarray:
    """The single data variable of a .mat file (the standard name first, else the only one)."""
    try:
        content = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several unrelated types for bad files
        raise DatasetError(f"{path} is not a readable .mat file: {exc}") from exc
    key = _MAT_KEYS.get(path.name)
    if key not in content:
        data_keys = [k for k in content if not k.startswith("__")]
        if len(data_keys) != 1:
            raise DatasetError(f"{path}: expected variable {key!r}, found {data_keys}")
        key = data_keys[0]
    return np.asarray(content[key])


def _tracks(path: Path, num_names: int) -> np.ndarray:
    arr = _read_mat_array(path)
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise DatasetError(f"{path}: expected an N x 4 array of (start, end, pid, cam), got shape {arr.shape}")
    arr = arr[:, :4].astype(np.int64)
    for row_no, (start, end, _pid, _cam) in enumerate(arr, start=1):
        if not 1 <= start <= end <= num_names:
            raise DatasetError(
                f"{path} row {row_no}: start={start}, end={end} is not a valid 1-based range into {num_names} names"
            )
    return arr


def _make_tracklets(
    tracks: np.ndarray,
    names: list[str],
    frame_dir: Path,
    split: str,
    rows: Iterable[int],
    aerial_cameras: frozenset[int],
    min_seq_len: int,
) -> list[Tracklet]:
    out: list[Tracklet] = []
    for i in rows:
        start, end, pid, cam = (int(v) for v in tracks[i])
        frame_names = sorted(names[start - 1 : end], key=natural_key)
        if len(frame_names) < min_seq_len:
            continue
        paths = tuple(frame_dir / n[:4] / n for n in frame_names)
        metadata: dict[str, Any] = {"original_pid": pid, "split": split, "track_row": i, "mars_camera": cam}
        out.append(
            Tracklet(
                paths=paths,
                pid=pid,
                camera=cam - 1,
                platform="aerial" if cam in aerial_cameras else "ground",
                session=None,
                tracklet_id=Path(frame_names[0]).stem,
                metadata=metadata,
            )
        )
    return out


def load_mars(root: str | Path, aerial_cameras: Iterable[int] = (), min_seq_len: int = 0) -> MarsDataset:
    """Load a MARS-format root (see module docstring).

    Args:
        aerial_cameras: 1-based camera numbers (as in the .mat files) that are aerial, for
            G2A-VReID-style data; all others are ground.
        min_seq_len: drop tracklets with fewer frames.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    info = _require(root / "info", "folder info/")
    train_dir = _require(root / "bbox_train", "folder bbox_train/")
    test_dir = _require(root / "bbox_test", "folder bbox_test/")
    train_names = _read_names(_require(info / "train_name.txt", "file info/train_name.txt"))
    test_names = _read_names(_require(info / "test_name.txt", "file info/test_name.txt"))
    train_tracks = _tracks(_require(info / "tracks_train_info.mat", "file info/tracks_train_info.mat"), len(train_names))
    test_tracks = _tracks(_require(info / "tracks_test_info.mat", "file info/tracks_test_info.mat"), len(test_names))
    query_path = _require(info / "query_IDX.mat", "file info/query_IDX.mat")
    query_idx = _read_mat_array(query_path).astype(np.int64).ravel() - 1
    if query_idx.size == 0 or query_idx.min() < 0 or query_idx.max() >= len(test_tracks):
        raise DatasetError(f"{query_path}: query indices must be 1-based rows of the {len(test_tracks)} test tracks")

    aerial = frozenset(int(c) for c in aerial_cameras)
    query_rows = [int(i) for i in query_idx]
    query_set = set(query_rows)
    gallery_rows = [i for i in range(len(test_tracks)) if i not in query_set]
    train_raw = _make_tracklets(train_tracks, train_names, train_dir, "train", range(len(train_tracks)), aerial, min_seq_len)
    # Relabel after filtering so labels stay contiguous when min_seq_len drops an identity.
    pid_map = relabel_map([t.pid for t in train_raw])
    train = [replace(t, pid=pid_map[t.pid]) for t in train_raw]
    query = _make_tracklets(test_tracks, test_names, test_dir, "query", query_rows, aerial, min_seq_len)
    gallery = _make_tracklets(test_tracks, test_names, test_dir, "gallery", gallery_rows, aerial, min_seq_len)
    return MarsDataset(root=root, train=train, query=query, gallery=gallery, train_pid_map=pid_map)
