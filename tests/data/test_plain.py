from __future__ import annotations

import re
from pathlib import Path

import pytest

from model.data import DatasetError, load_plain

MANIFEST = """split,pid,tracklet,camera,platform,session
train,3,t1,4,aerial,1
train,3,t2,0,ground,
query,8,q1,2,ground,2
gallery,8,nonexistent,1,ground,1
"""


def test_plain_layout_with_manifest(tmp_path: Path, write_tracklet) -> None:
    write_tracklet(tmp_path / "train" / "3" / "t1", ["1.png", "2.png"])
    write_tracklet(tmp_path / "train" / "3" / "t2", ["1.jpg"])
    write_tracklet(tmp_path / "train" / "9" / "t3", ["1.jpg"])
    write_tracklet(tmp_path / "query" / "8" / "q1", ["5.jpg", "40.jpg", "6.jpg"])
    write_tracklet(tmp_path / "gallery" / "8" / "g1", ["1.jpg"])
    (tmp_path / "manifest.csv").write_text(MANIFEST)
    ds = load_plain(tmp_path, progress=False)
    assert set(ds.splits) == {"train", "query", "gallery"}
    t1, t2, t3 = ds.splits["train"]
    assert (t1.pid, t1.camera, t1.platform, t1.session) == (0, 4, "aerial", 1)
    assert (t2.camera, t2.platform, t2.session) == (0, "ground", None)
    assert t3.pid == 1 and t3.metadata["original_pid"] == 9
    q = ds.splits["query"][0]
    assert (q.pid, q.camera, q.session) == (8, 2, 2)
    assert [p.name for p in q.paths] == ["5.jpg", "6.jpg", "40.jpg"]
    g = ds.splits["gallery"][0]
    assert (g.camera, g.platform, g.session) == (0, "ground", None)
    assert ds.unmatched_manifest_rows == 1


def test_plain_bad_manifest_value(tmp_path: Path, write_tracklet) -> None:
    write_tracklet(tmp_path / "train" / "3" / "t1", ["1.png"])
    bad = tmp_path / "m.csv"
    bad.write_text("split,pid,tracklet,camera,platform,session\ntrain,3,t1,4,underwater,1\n")
    with pytest.raises(DatasetError, match=r"m\.csv line 2: platform"):
        load_plain(tmp_path, manifest=bad, progress=False)


def test_plain_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="expected split folders under " + re.escape(str(tmp_path))):
        load_plain(tmp_path)
