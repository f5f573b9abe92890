from __future__ import annotations

from pathlib import Path

import pytest

from model.data.tracklet import Tracklet, list_frames, natural_key


def test_natural_key_orders_numbers_numerically() -> None:
    names = ["f10.jpg", "f2.jpg", "f1.jpg", "a_100_x.jpg", "a_99_x.jpg"]
    assert sorted(names, key=natural_key) == ["a_99_x.jpg", "a_100_x.jpg", "f1.jpg", "f2.jpg", "f10.jpg"]


def test_list_frames_natural_order_and_skips_non_images(tmp_path: Path, write_tracklet) -> None:
    write_tracklet(tmp_path, ["x_10.jpg", "x_9.jpg", "x_100.png", "x_1.JPG"])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    frames, skipped = list_frames(tmp_path)
    assert [p.name for p in frames] == ["x_1.JPG", "x_9.jpg", "x_10.jpg", "x_100.png"]
    assert skipped == 2


def test_tracklet_rejects_unknown_platform() -> None:
    with pytest.raises(ValueError, match="platform"):
        Tracklet((Path("a.jpg"),), 1, 0, "satellite", None, "t1")


def test_tracklet_is_hashable_and_exposes_platform_id() -> None:
    t = Tracklet((Path("a.jpg"),), 1, 0, "aerial", 2, "t1", {"altitude": 10.0})
    assert t.platform_id == 1 and t.num_frames == 1
    assert len({t, t}) == 1
