from __future__ import annotations

from pathlib import Path

from model.data import Tracklet, load_detreidx, validate_tracklets


def test_validate_counts_corrupt_frames_and_empty_tracklets(tmp_path: Path, write_tracklet) -> None:
    good = write_tracklet(tmp_path / "train" / "0001" / "0001_1", ["a_1.jpg", "a_2.jpg", "a_3.jpg"], size=(24, 48))
    good[1].write_bytes(b"definitely not a jpeg")
    data = good[2].read_bytes()
    good[2].write_bytes(data[: len(data) // 2])  # truncated JPEG
    bad = write_tracklet(tmp_path / "train" / "0002" / "0002_1", ["b_1.jpg"])
    bad[0].write_bytes(b"\x00" * 10)
    ds = load_detreidx(tmp_path, progress=False)
    assert len(ds.train) == 2  # the loader does not open files
    report = validate_tracklets(ds.train, progress=False)
    assert report.num_frames == 4
    assert report.num_corrupt_frames == 3
    assert {p.name for p, _ in report.corrupt_frames} == {"a_2.jpg", "a_3.jpg", "b_1.jpg"}
    assert report.empty_tracklets == ["0002_1"]
    assert not report.ok


def test_validate_missing_file(tmp_path: Path) -> None:
    t = Tracklet((tmp_path / "gone.jpg",), 0, 0, "ground", None, "t")
    report = validate_tracklets([t], progress=False)
    assert report.corrupt_frames == [(tmp_path / "gone.jpg", "missing file")]
