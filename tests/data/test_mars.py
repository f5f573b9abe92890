from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from model.data import DatasetError, load_mars


def _names(pid: int, cam: int, tracklet: int, frames: list[int]) -> list[str]:
    return [f"{pid:04d}C{cam}T{tracklet:04d}F{f:03d}.jpg" for f in frames]


def _build_mars(root: Path, write_image) -> None:
    train = _names(1, 1, 1, [1, 2, 3]) + _names(1, 2, 2, [1, 2]) + _names(5, 3, 1, [1, 2, 3, 4])
    test = _names(10, 1, 1, [1, 2]) + _names(10, 4, 2, [1, 2, 3]) + _names(11, 2, 1, [1, 2]) + _names(0, 5, 1, [1])
    for folder, names in (("bbox_train", train), ("bbox_test", test)):
        for i, n in enumerate(names):
            write_image(root / folder / n[:4] / n, (8, 16), seed=i)
    info = root / "info"
    info.mkdir()
    (info / "train_name.txt").write_text("\n".join(train) + "\n")
    (info / "test_name.txt").write_text("\n".join(test) + "\n")
    scipy.io.savemat(info / "tracks_train_info.mat", {"track_train_info": np.array([[1, 3, 1, 1], [4, 5, 1, 2], [6, 9, 5, 3]])})
    scipy.io.savemat(
        info / "tracks_test_info.mat",
        {"track_test_info": np.array([[1, 2, 10, 1], [3, 5, 10, 4], [6, 7, 11, 2], [8, 8, 0, 5]])},
    )
    scipy.io.savemat(info / "query_IDX.mat", {"query_IDX": np.array([[1, 3]])})


def test_load_mars(tmp_path: Path, write_image) -> None:
    _build_mars(tmp_path, write_image)
    ds = load_mars(tmp_path, aerial_cameras=[4])
    assert ds.train_pid_map == {1: 0, 5: 1}
    assert [(t.pid, t.camera, t.num_frames) for t in ds.train] == [(0, 0, 3), (0, 1, 2), (1, 2, 4)]
    assert ds.train[0].paths[0] == tmp_path / "bbox_train" / "0001" / "0001C1T0001F001.jpg"
    assert all(p.exists() for t in ds.train + ds.query + ds.gallery for p in t.paths)
    assert [(t.pid, t.camera) for t in ds.query] == [(10, 0), (11, 1)]
    assert [(t.pid, t.camera, t.platform) for t in ds.gallery] == [(10, 3, "aerial"), (0, 4, "ground")]
    assert ds.query[0].platform == "ground"
    assert [p.name for p in ds.gallery[0].paths] == _names(10, 4, 2, [1, 2, 3])
    assert len({t.tracklet_id for t in ds.query + ds.gallery}) == 4


def test_mars_min_seq_len_keeps_labels_contiguous(tmp_path: Path, write_image) -> None:
    _build_mars(tmp_path, write_image)
    ds = load_mars(tmp_path, min_seq_len=4)
    assert ds.train_pid_map == {5: 0} and [t.pid for t in ds.train] == [0]


def test_mars_missing_info_file(tmp_path: Path, write_image) -> None:
    _build_mars(tmp_path, write_image)
    (tmp_path / "info" / "query_IDX.mat").unlink()
    with pytest.raises(DatasetError, match=r"query_IDX\.mat"):
        load_mars(tmp_path)


def test_mars_bad_track_range(tmp_path: Path, write_image) -> None:
    _build_mars(tmp_path, write_image)
    scipy.io.savemat(tmp_path / "info" / "tracks_train_info.mat", {"track_train_info": np.array([[1, 99, 1, 1]])})
    with pytest.raises(DatasetError, match=r"tracks_train_info\.mat row 1"):
        load_mars(tmp_path)


def test_mars_not_a_mars_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"info/"):
        load_mars(tmp_path)
