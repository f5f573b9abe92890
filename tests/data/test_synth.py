from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import CASES, load_detreidx, parse_frame_name
from model.data.manifest import read_manifest
from model.data.synth.generate import generate_synth, positives_per_query, render_tracklet
from model.data.synth.identity import HAIR_DYED, HAIR_STYLES, Outfit, colour_distance, sample_identity
from model.data.synth.plan import PlannedTracklet, SynthConfig, SynthPlan, make_plan, session_views
from model.data.synth.render import Capture, render_frame
from model.data.synth.views import UAV_POINTS, view_by_name
from service.cli import main as cli_main

SMALL = SynthConfig(ids=6, test_ids=3, tracklets_per_id=4, frames=3, min_frames=2, distractor_fraction=0.34, seed=3)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "small"
    generate_synth(SMALL, out, workers=2, progress=False)
    return out


def test_same_seed_gives_identical_files_whatever_the_workers(small_build: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    summary = generate_synth(SMALL, again, workers=1, progress=False)
    assert _digest(again) == _digest(small_build)
    assert summary.files == sum(1 for p in again.rglob("*.jpg"))


def test_different_seed_differs(small_build: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_synth(SynthConfig(**{**SMALL.__dict__, "seed": 4}), other, workers=1, progress=False)
    assert _digest(other) != _digest(small_build)


def test_output_loads_with_detreidx_loader(small_build: Path) -> None:
    ds = load_detreidx(small_build, progress=False)
    assert ds.num_train_pids == 3 and sorted({t.pid for t in ds.train}) == [0, 1, 2]
    assert len(ds.train) == 3 * SMALL.tracklets_per_id
    assert set(ds.cases) == set(CASES)
    assert all(t.session in (1, 2) for t in ds.train)
    assert all(2 <= t.num_frames <= 3 for t in ds.train)
    assert {t.platform for t in ds.train} == {"ground", "aerial"}
    assert not ds.empty_tracklets and ds.skipped_files == 0


def test_train_and_test_identities_disjoint(small_build: Path) -> None:
    ds = load_detreidx(small_build, progress=False)
    train = {t.metadata["original_pid"] for t in ds.train}
    test = {t.pid for c in ds.cases.values() for t in c.query + c.gallery}
    assert train == {1, 2, 3} and test == {4, 5, 6}


def test_case_structure(small_build: Path) -> None:
    ds = load_detreidx(small_build, progress=False)
    for name, case in ds.cases.items():
        info = CASES[name]
        assert case.query and case.gallery
        assert {t.platform for t in case.query} == {info.query_platform}
        assert {t.platform for t in case.gallery} == {info.gallery_platform}
        # Platforms also follow from the frame names alone (DetReIDX grammar).
        assert {parse_frame_name(t.paths[0].name).platform for t in case.query} == {info.query_platform}
        gallery_pids = {t.pid for t in case.gallery}
        query_pids = {t.pid for t in case.query}
        assert query_pids < gallery_pids, "every query id in the gallery, plus distractors"
        assert not {t.tracklet_id for t in case.query} & {t.tracklet_id for t in case.gallery}
        for q in case.query:
            positives = [g for g in case.gallery if g.pid == q.pid]
            assert any(g.session == q.session for g in positives), f"{name} {q.tracklet_id}: no same-outfit positive"
            assert any(g.session != q.session for g in positives), f"{name} {q.tracklet_id}: no clothing-changed positive"
            assert all(g.camera != q.camera for g in positives), "no same-camera (junk) positives"


def _plan_positives(plan: SynthPlan, case: str) -> list[tuple[PlannedTracklet, list[PlannedTracklet]]]:
    """Each query of ``case`` with its same-identity gallery tracklets, from the plan alone."""
    gallery = [t for t in plan.tracklets if f"{case}/gallery" in t.destinations]
    queries = [t for t in plan.tracklets if f"{case}/query" in t.destinations]
    return [(q, [g for g in gallery if g.pid == q.pid]) for q in queries]


def test_manifest_sessions_cameras_and_platforms_match_the_plan(small_build: Path) -> None:
    plan = make_plan(SMALL)
    rows = read_manifest(small_build / "manifest.csv")
    planned = {(dest, f"{t.pid:04d}", t.folder_name): t for t in plan.tracklets for dest in t.destinations}
    assert set(rows) == set(planned), "one manifest row per written tracklet folder"
    for key, row in rows.items():
        t = planned[key]
        assert (row.session, row.camera, row.platform) == (t.session, t.camera, t.platform), key
        # The frame names carry the session too, so the manifest cannot disagree with what was rendered.
        frame = next((small_build / key[0] / key[1] / key[2]).iterdir()).name
        assert f"_S{t.session}_" in frame
        case, role = key[0].split("/") if "/" in key[0] else (key[0], "")
        if role == "query":
            assert row.session == plan.case_query_sessions[case][t.pid]
    ds = load_detreidx(small_build, progress=False)
    by_folder = {t.folder_name: t for t in plan.tracklets}
    assert all(t.session == by_folder[t.tracklet_id].session for c in ds.cases.values() for t in c.query + c.gallery)


def _rendered_in(plan: SynthPlan, root: Path, case: str, g: PlannedTracklet, outfit: Outfit) -> bool:
    """Whether gallery tracklet ``g``'s files on disk are exactly ``g`` rendered in ``outfit``."""
    folder = root / case / "gallery" / f"{g.pid:04d}" / g.folder_name
    frames = render_tracklet(g, plan.identities[g.pid], outfit, plan.config.seed)
    return all((folder / name).read_bytes() == data for name, data, _size in frames)


def test_same_session_positives_wear_the_query_outfit_other_session_ones_do_not(small_build: Path) -> None:
    plan = make_plan(SMALL)
    for case in CASES:
        for q, positives in _plan_positives(plan, case):
            same = [g for g in positives if g.session == q.session]
            other = [g for g in positives if g.session != q.session]
            assert same and other
            query_outfit = plan.outfit_of(q)
            assert all(plan.outfit_of(g) == query_outfit for g in same)
            assert all(colour_distance(plan.outfit_of(g).top, query_outfit.top) >= 60 for g in other)
            # What was written: re-rendering in the query's outfit reproduces same-session files only.
            assert all(_rendered_in(plan, small_build, case, g, query_outfit) for g in same)
            assert not any(_rendered_in(plan, small_build, case, g, query_outfit) for g in other)


@pytest.mark.parametrize(
    "config",
    [
        SynthConfig(),
        SynthConfig(ids=20, tracklets_per_id=4, seed=1),
        SynthConfig(ids=20, tracklets_per_id=5, seed=2),
        SynthConfig(ids=20, tracklets_per_id=13, seed=3),
        SynthConfig(ids=12, tracklets_per_id=44, seed=4),
    ],
    ids=["default", "tpi4", "tpi5", "tpi13", "tpi44"],
)
def test_every_query_has_both_positive_kinds_off_its_camera(config: SynthConfig) -> None:
    plan = make_plan(config)
    for case, info in CASES.items():
        pairs = _plan_positives(plan, case)
        assert {q.pid for q, _ in pairs} == set(plan.case_query_pids[case])
        for q, positives in pairs:
            assert q.platform == info.query_platform and q.session == plan.case_query_sessions[case][q.pid]
            assert all(g.platform == info.gallery_platform and g.number != q.number for g in positives)
            assert any(g.session == q.session for g in positives) and any(g.session != q.session for g in positives)
            assert all(g.camera != q.camera for g in positives), f"{case}: a positive would be same-camera junk"
    train = [t for t in plan.tracklets if t.pid in set(plan.train_pids)]
    assert len(train) == config.num_train * config.tracklets_per_id, "only test identities are topped up"


def test_default_cases_keep_their_sizes() -> None:
    plan = make_plan(SynthConfig())
    counts = {
        (case, role): sum(f"{case}/{role}" in t.destinations for t in plan.tracklets)
        for case in CASES
        for role in ("query", "gallery")
    }
    # 40 query ids x 2 query-platform tracklets of their session (A->A: one, the other is a gallery item);
    # galleries: every gallery-platform tracklet of the 50 test ids, less A->A's queries.
    assert counts == {
        ("case1_aerial_to_ground", "query"): 80, ("case1_aerial_to_ground", "gallery"): 200,
        ("case2_ground_to_aerial", "query"): 80, ("case2_ground_to_aerial", "gallery"): 200,
        ("case3_aerial_to_aerial", "query"): 40, ("case3_aerial_to_aerial", "gallery"): 160,
    }  # fmt: skip
    assert all(len(plan.case_distractor_pids[c]) == 10 for c in CASES)
    assert [positives_per_query(plan, c) for c in CASES] == [(2.0, 2.0), (2.0, 2.0), (1.0, 2.0)]


def test_aerial_points_of_a_session_are_distinct() -> None:
    for seed in range(5):
        views = session_views(36, np.random.default_rng(seed))
        aerial = [v.name for v in views if v.platform == "aerial"]
        assert len(aerial) == 18 and len(set(aerial)) == 18


def test_frame_names_follow_grammar(small_build: Path) -> None:
    ds = load_detreidx(small_build, progress=False)
    for t in ds.train:
        fields = t.paths[0].stem.split("_")
        if t.platform == "ground":
            assert len(fields) < 8
        else:
            assert len(fields) >= 9
            altitude, distance, pitch = UAV_POINTS[t.camera % 100 - 11]
            assert (t.metadata["altitude"], t.metadata["distance"], t.metadata["pitch"]) == (altitude, distance, pitch)
        assert t.camera // 100 == t.session
        numbers = [int(p.stem.rsplit("_", 1)[1]) for p in t.paths]
        assert numbers == sorted(numbers)


def test_clothing_redrawn_per_session_identity_kept(small_build: Path) -> None:
    sheet = json.loads((small_build / "identities.json").read_text())
    assert len(sheet) == SMALL.ids
    for entry in sheet.values():
        s1, s2 = entry["outfits"]["1"], entry["outfits"]["2"]
        assert colour_distance(tuple(s1["top"]), tuple(s2["top"])) >= 60
        assert colour_distance(tuple(s1["bottom"]), tuple(s2["bottom"])) >= 60
    plan = make_plan(SynthConfig(ids=60, seed=1))
    tops = [colour_distance(plan.outfits[(p, 1)].top, plan.outfits[(p, 2)].top) for p in plan.identities]
    assert np.mean(np.array(tops) >= 120) > 0.9, "clothing colour must not be constant per identity"


def test_default_build_has_many_training_identities_and_50_test_identities() -> None:
    default = SynthConfig()
    assert (default.num_train, default.num_test) == (350, 50)
    assert SynthConfig(ids=60).num_test == 30, "small builds keep the half/half split"
    assert SynthConfig(ids=400, test_ids=120).num_test == 120


def test_identity_cues_are_varied() -> None:
    """Across-session matching rests on skin, hair and body: they must differ between people."""
    people = [sample_identity(pid, np.random.default_rng([0, 1, pid])) for pid in range(1, 401)]
    styles = {p.hair_style for p in people}
    assert styles == set(HAIR_STYLES)
    dyed = np.mean([min(colour_distance(p.hair, c) for c in HAIR_DYED) < 80 for p in people])
    assert 0.08 < dyed < 0.3
    builds = np.array([p.build for p in people])
    assert builds.min() < 0.8 and builds.max() > 1.4
    skin = np.array([np.mean(p.skin) for p in people])
    assert skin.max() - skin.min() > 100, "skin tones from light to dark"


def _clean_capture(view_name: str, heading: float = np.pi) -> Capture:
    view = view_by_name(view_name)
    return Capture(view.pitch_deg, heading, view.px_per_m, (128, 128, 128), (128, 128, 128), view.platform == "ground",
                   None, (1.0, 1.0, 1.0), 0.0, (0.0, 0.0), 0.0, 95, None, 0.1)


def _torso_colour(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    h, w = arr.shape[:2]
    return arr[int(0.3 * h) : int(0.45 * h), int(0.4 * w) : int(0.6 * w)].reshape(-1, 3).mean(axis=0)


def test_rendered_clothing_differs_across_sessions() -> None:
    plan = make_plan(SynthConfig(ids=12, seed=2))
    capture = _clean_capture("ground-near")
    rng = np.random.default_rng(0)
    for pid in list(plan.identities)[:6]:
        ident = plan.identities[pid]
        frames = {s: [render_frame(ident, plan.outfits[(pid, s)], ph, capture, 0, rng) for ph in (0.0, 1.5)] for s in (1, 2)}
        within = np.linalg.norm(_torso_colour(frames[1][0]) - _torso_colour(frames[1][1]))
        across = np.linalg.norm(_torso_colour(frames[1][0]) - _torso_colour(frames[2][0]))
        assert across > within + 20, f"identity {pid}: torso colour should change between sessions"


def test_far_and_top_down_views_are_tiny_and_foreshortened() -> None:
    plan = make_plan(SynthConfig(ids=4, seed=0))
    ident, outfit = plan.identities[1], plan.outfits[(1, 1)]
    rng = np.random.default_rng(0)
    near = render_frame(ident, outfit, 0.5, _clean_capture("ground-near"), 0, rng)
    far = render_frame(ident, outfit, 0.5, _clean_capture("aerial-P06"), 0, rng)
    top = render_frame(ident, outfit, 0.5, _clean_capture("aerial-P13", heading=0.3), 0, rng)
    assert near.height >= 90 and near.height > 2.5 * near.width
    assert far.height <= 14
    assert top.height < 1.6 * top.width, "seen from above the person is not tall"
    poses = [np.asarray(render_frame(ident, outfit, ph, _clean_capture("ground-side", np.pi / 2), 0, rng)) for ph in (0.0, 1.2)]
    assert poses[0].shape != poses[1].shape or np.abs(poses[0].astype(int) - poses[1]).mean() > 2, "frames differ in pose"


def test_cli_preview_and_errors(tmp_path: Path) -> None:
    png = tmp_path / "sheet.png"
    assert cli_main(["synth", "--preview", str(png), "--ids", "10"]) == 0
    with Image.open(png) as img:
        assert img.width > 600 and img.height > 600
    assert cli_main(["synth", "--out", str(tmp_path / "x"), "--tracklets-per-id", "2"]) == 2
    out = tmp_path / "built"
    args = ["synth", "--out", str(out), "--ids", "4", "--tracklets-per-id", "4", "--frames", "2", "--no-progress", "--workers", "1"]
    assert cli_main(args) == 0
    assert (out / "manifest.csv").is_file() and (out / "case3_aerial_to_aerial" / "gallery").is_dir()
    assert cli_main(args) == 2, "refuses to write into a non-empty folder"
    assert cli_main([*args, "--overwrite"]) == 0
