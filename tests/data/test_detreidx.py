from __future__ import annotations

import re
from pathlib import Path

import pytest

from model.data import DatasetError, load_detreidx, parse_frame_name
from model.data.manifest import ManifestRow, write_manifest

GROUND = [f"0024_S1_G0_5453_{i}.jpg" for i in (7, 10, 100, 13)]
AERIAL = [f"0024_S2_UAV_5460_P05_20240611_40.0_80.0_30_1_{i}.jpg" for i in (3, 21, 12)]


def test_parse_ground_frame() -> None:
    info = parse_frame_name("0024_S1_G0_5453_7.jpg")
    assert info.platform == "ground" and info.camera == 0 and info.altitude is None


def test_parse_aerial_frame_fields() -> None:
    info = parse_frame_name("0024_S2_UAV_5460_P05_20240611_40.0_80.0_30_1_3.jpg")
    assert info.platform == "aerial"
    assert (info.altitude, info.distance, info.pitch) == (40.0, 80.0, 30.0)
    assert info.camera == 1 and info.camera_field == "1"
    assert info.slant_distance == pytest.approx((40.0**2 + 80.0**2) ** 0.5)
    assert parse_frame_name("a_b_c_d_e_f_10_0_90_2_5.jpg").camera == 2


def test_parse_eight_fields_and_non_numeric_geometry() -> None:
    eight = parse_frame_name("a_b_c_d_e_f_12.5_30.jpg")
    assert eight.platform == "aerial" and eight.pitch is None and eight.altitude == 12.5
    odd = parse_frame_name("p_s_x_t_p_d_high_far_steep_1_9.jpg")
    assert odd.platform == "aerial" and odd.altitude is None and odd.pitch is None and odd.camera == 1


def _build_root(root: Path, write_tracklet) -> None:
    write_tracklet(root / "train" / "0024" / "0024_5453", GROUND)
    write_tracklet(root / "train" / "0024" / "0024_5460", AERIAL)
    write_tracklet(root / "train" / "0007" / "0007_0001", ["0007_S1_G1_1_1.jpg", "0007_S1_G1_1_2.jpg"])
    (root / "train" / "0007" / "0007_empty").mkdir(parents=True)
    (root / "train" / "0007" / "0007_0001" / "Thumbs.db").write_text("junk")
    for case in ("case1_aerial_to_ground", "case2_ground_to_aerial", "case3_aerial_to_aerial"):
        write_tracklet(root / case / "query" / "0100" / "0100_0002", [n.replace("0024", "0100") for n in AERIAL])
        write_tracklet(root / case / "gallery" / "0100" / "0100_0003", [n.replace("0024", "0100") for n in GROUND])
        write_tracklet(root / case / "gallery" / "0101" / "0101_0004", [n.replace("0024", "0101") for n in GROUND])


def test_load_detreidx_layout(tmp_path: Path, write_tracklet) -> None:
    _build_root(tmp_path, write_tracklet)
    ds = load_detreidx(tmp_path, progress=False)
    assert ds.train_pid_map == {7: 0, 24: 1}
    assert sorted((t.pid, t.metadata["original_pid"]) for t in ds.train) == [(0, 7), (1, 24), (1, 24)]
    ground = next(t for t in ds.train if t.tracklet_id == "0024_5453")
    assert [p.name for p in ground.paths] == ["0024_S1_G0_5453_7.jpg", "0024_S1_G0_5453_10.jpg",
                                              "0024_S1_G0_5453_13.jpg", "0024_S1_G0_5453_100.jpg"]
    assert ground.platform == "ground" and ground.camera == 0 and ground.session is None
    aerial = next(t for t in ds.train if t.tracklet_id == "0024_5460")
    assert aerial.platform == "aerial" and aerial.camera == 1
    assert [p.name.rsplit("_", 1)[1] for p in aerial.paths] == ["3.jpg", "12.jpg", "21.jpg"]
    assert (aerial.metadata["altitude"], aerial.metadata["distance"], aerial.metadata["pitch"]) == (40.0, 80.0, 30.0)
    assert ds.empty_tracklets == [tmp_path / "train" / "0007" / "0007_empty"]
    assert ds.skipped_files == 1
    assert set(ds.cases) == {"case1_aerial_to_ground", "case2_ground_to_aerial", "case3_aerial_to_aerial"}
    case1 = ds.cases["case1_aerial_to_ground"]
    assert (case1.label, case1.challenge_name) == ("A->G", "Case 1: Aerial to Ground")
    assert ds.cases["case2_ground_to_aerial"].challenge_name == "Case 2: Ground to Aerial"
    assert ds.cases["case3_aerial_to_aerial"].label == "A->A"
    assert [t.pid for t in case1.query] == [100] and sorted(t.pid for t in case1.gallery) == [100, 101]


def test_manifest_overrides_camera_platform_session(tmp_path: Path, write_tracklet) -> None:
    _build_root(tmp_path, write_tracklet)
    write_manifest(tmp_path / "manifest.csv", [ManifestRow("train", "0024", "0024_5453", 5, "ground", 2),
                                               ManifestRow("case1_aerial_to_ground/query", "0100", "0100_0002", 17, "aerial", 1)])
    ds = load_detreidx(tmp_path, progress=False)
    t = next(t for t in ds.train if t.tracklet_id == "0024_5453")
    assert (t.camera, t.session) == (5, 2)
    q = ds.cases["case1_aerial_to_ground"].query[0]
    assert (q.camera, q.session, q.platform) == (17, 1, "aerial")
    untouched = ds.cases["case2_ground_to_aerial"].query[0]
    assert (untouched.camera, untouched.session) == (1, None)
    plain = load_detreidx(tmp_path, progress=False, auto_manifest=False)
    assert next(t for t in plain.train if t.tracklet_id == "0024_5453").session is None


def test_missing_root_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        load_detreidx(missing)


def test_root_without_expected_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"expected folder train/ or case1_aerial_to_ground/") as err:
        load_detreidx(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_case_without_gallery(tmp_path: Path, write_tracklet) -> None:
    write_tracklet(tmp_path / "case1_aerial_to_ground" / "query" / "0001" / "0001_1", ["a_1.jpg"])
    with pytest.raises(DatasetError, match=r"expected folder gallery/ under .*case1_aerial_to_ground"):
        load_detreidx(tmp_path)


def test_non_integer_identity_folder(tmp_path: Path, write_tracklet) -> None:
    write_tracklet(tmp_path / "train" / "alice" / "t1", ["a_1.jpg"])
    with pytest.raises(DatasetError, match="alice"):
        load_detreidx(tmp_path, progress=False)


def test_malformed_manifest_names_file(tmp_path: Path, write_tracklet) -> None:
    write_tracklet(tmp_path / "train" / "0001" / "0001_1", ["a_1.jpg"])
    (tmp_path / "manifest.csv").write_text("split,pid,camera\ntrain,0001,3\n")
    with pytest.raises(DatasetError, match=r"manifest\.csv: header must be"):
        load_detreidx(tmp_path, progress=False)
