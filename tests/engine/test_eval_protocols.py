"""Evaluation protocols beyond the standard one: the VReID-XFD organisers' scorer, the cross-session
split of positives (clothing-changed / same-outfit), per-branch figures, the descriptor cache's
default folder (never the dataset) and the single source of the re-ranking defaults."""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index.metrics import (
    evaluate_rank,
    evaluate_ranking_vreid_xfd,
    session_junk_mask,
    tracklet_identity,
    trapezoid_ap,
)
from index.rerank import k_reciprocal
from model.data import Tracklet
from model.data.manifest import MANIFEST_NAME, ManifestRow, write_manifest
from model.engine.cache import user_cache_dir
from model.engine.datasets import EvalCase, load_reid_data
from model.engine.evaluate import evaluate_checkpoint
from model.engine.evaluate_cli import add_arguments, add_rerank_arguments
from model.engine.evaluator import ReIDEvaluator, RerankParams, stable_ranking
from model.sasreid import DescriptorPart
from service.cli import main
from service.core.config import Settings

MEAN = "unweighted mean of case mAPs"
POOLED = "query-weighted (pooled) mean"


def rec(split: str, pid: int, cam: int, name: str, session: int | None = None) -> Tracklet:
    return Tracklet(paths=(Path(f"/nonexistent/{split}/{name}/0.jpg"),), pid=pid, camera=cam, platform="ground",
                    session=session, tracklet_id=name, metadata={"split": split, "original_pid": pid})


def unit_at_cos(c: float) -> np.ndarray:
    """A 2-d unit vector with cosine ``c`` to (1, 0)."""
    a = math.acos(c)
    return np.array([math.cos(a), math.sin(a)])


# -- the VReID-XFD scorer ----------------------------------------------------------------------

def test_trapezoid_ap_by_hand():
    assert trapezoid_ap([0]) == pytest.approx(1.0)  # rank 1
    assert trapezoid_ap([1]) == pytest.approx(1 / 4)  # rank 2: 1 / (2 * 2)
    assert trapezoid_ap([4]) == pytest.approx(1 / 10)  # rank 5
    # ranks 1 and 3: (1 + 1) / 2 and (1/2 + 2/3) / 2, averaged -> 19/24 (market AP would be 5/6).
    assert trapezoid_ap([0, 2]) == pytest.approx(19 / 24)
    # ranks 2 and 4: (0 + 1/2) / 2 = 1/4 and (1/3 + 2/4) / 2 = 5/12 -> 1/3.
    assert trapezoid_ap([1, 3]) == pytest.approx(1 / 3)
    assert trapezoid_ap([]) == 0.0


def test_scorer_rankings_by_hand():
    g = ["0001_0010", "0002_0003", "0001_0011", "0003_0001", "0001_0012"]
    q = ["0001_0010", "0002_0020", "0009_0001"]
    ranking = np.array([
        [0, 1, 2, 3, 4],  # own tracklet first (junk); kept: 0002 0001 0003 0001 -> hits at 0-based 1, 3
        [3, 0, 1, 2, 4],  # the one positive (g1) third -> AP 1/6
        [0, 1, 2, 3, 4],  # identity 0009 absent: skipped
    ])
    r = evaluate_ranking_vreid_xfd(ranking, q, g, max_rank=4)
    assert r.num_valid_queries == 2
    np.testing.assert_allclose(r.ap[:2], [1 / 3, 1 / 6])
    assert np.isnan(r.ap[2])
    assert r.mAP == pytest.approx((1 / 3 + 1 / 6) / 2)
    # First hits at kept ranks 1 and 2.
    np.testing.assert_allclose(r.cmc, [0.0, 0.5, 1.0, 1.0])
    # The same query without its own tracklet in the ranking: nothing changes (it was junk).
    r2 = evaluate_ranking_vreid_xfd(np.array([[0, 1, 2, 3]]), q[:1], g[1:], max_rank=2)
    assert r2.ap[0] == pytest.approx(1 / 3)


def literal_scorer(ranking, q_names, g_names):
    """The scorer written out per query from its definition (slow, for the vectorised version)."""
    aps = []
    for i, qn in enumerate(q_names):
        kept = [g_names[j] for j in ranking[i] if g_names[j] != qn]
        hits = [k for k, n in enumerate(kept) if n.split("_")[0] == qn.split("_")[0]]
        if not hits:
            aps.append(np.nan)
            continue
        ap = 0.0
        for k, rk in enumerate(hits):
            old = k / rk if rk != 0 else 1.0
            ap += ((k + 1) / (rk + 1) + old) / 2 / len(hits)
        aps.append(ap)
    return np.array(aps)


def test_scorer_matches_literal_version(monkeypatch):
    from index import metrics

    rng = np.random.default_rng(5)
    g = [f"{rng.integers(0, 8):04d}_{i:04d}" for i in range(60)]
    q = [g[i] for i in range(0, 20)] + [f"{p:04d}_9{p:03d}" for p in range(12)]  # some own tracklets in g
    ranking = np.stack([rng.permutation(60) for _ in q])
    monkeypatch.setattr(metrics, "_CHUNK_ELEMS", 200)  # several row chunks
    got = evaluate_ranking_vreid_xfd(ranking, q, g, max_rank=10)
    np.testing.assert_allclose(got.ap, literal_scorer(ranking, q, g), equal_nan=True)


def test_tracklet_identity_and_bad_names():
    assert tracklet_identity("0024_5453") == "0024"
    assert tracklet_identity("24_a_b") == "24"
    for bad in ("05453", "_5453", "0024_"):
        with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[")):
            tracklet_identity(bad)
    with pytest.raises(ValueError, match="'oddname'"):
        evaluate_ranking_vreid_xfd(np.array([[0, 1]]), ["0001_0001"], ["0001_0002", "oddname"])
    with pytest.raises(ValueError, match="gallery indices"):
        evaluate_ranking_vreid_xfd(np.array([[0, 2]]), ["0001_0001"], ["0001_0002", "0002_0001"])


def scorer_case() -> tuple[EvalCase, np.ndarray, list[Tracklet]]:
    """Query 0001_0001 (pid 1, cam 0) against, by cosine: its own tracklet (cam 0), a negative, a
    same-camera positive, an other-camera positive, a negative."""
    q = [rec("c/query", 1, 0, "0001_0001")]
    g = [rec("c/gallery", 1, 0, "0001_0001"), rec("c/gallery", 2, 1, "0002_0005"),
         rec("c/gallery", 1, 0, "0001_0002"), rec("c/gallery", 1, 1, "0001_0003"),
         rec("c/gallery", 3, 1, "0003_0007")]
    desc = np.stack([unit_at_cos(1.0)] + [unit_at_cos(c) for c in (0.9, 0.8, 0.7, 0.6, 0.5)])
    return EvalCase("c", "A->G", "Case 1: Aerial to Ground", q, g), desc, q + g


def test_scorer_beside_standard_figures():
    case, desc, records = scorer_case()
    ev = ReIDEvaluator([case], leaderboard=True)
    ev.process(desc, records)
    flat = ev.evaluate()
    # Standard: own tracklet and the same-camera positive are junk; kept neg, pos, neg -> AP 1/2.
    assert flat["A->G/mAP"] == pytest.approx(50.0)
    # Scorer: only the own tracklet is junk; kept neg, pos, pos, neg -> hits at 0-based 1, 2:
    # ((0 + 1/2) / 2 + (1/2 + 2/3) / 2) / 2 = (1/4 + 7/12) / 2 = 5/12.
    assert flat["VReID-XFD scorer/A->G/mAP"] == pytest.approx(100 * 5 / 12)
    assert flat["VReID-XFD scorer/A->G/Rank-1"] == 0.0 and flat["VReID-XFD scorer/A->G/Rank-5"] == 100.0
    assert flat["VReID-XFD scorer mAP-1 (unweighted mean of case mAPs)"] == pytest.approx(100 * 5 / 12)
    report = ev.report
    d = report.to_dict()
    assert d["cases"][0]["plain"]["mAP"] == pytest.approx(50.0)  # the standard figure stays
    assert d["cases"][0]["VReID-XFD scorer"]["plain"]["mAP"] == pytest.approx(100 * 5 / 12)
    assert "trapezoidal" in d["VReID-XFD scorer"]["definition"]
    table = report.format_table()
    assert table.index("mAP-1 (unweighted") < table.index("VReID-XFD scorer")
    assert "41.67" in table and "50.00" in table
    # Off by default: no scorer keys at all.
    plain = ReIDEvaluator([case])
    plain.process(desc, records)
    assert not any("VReID-XFD" in k for k in plain.evaluate())


def random_named_case(rng: np.random.Generator, label: str, nq: int, ng: int, sessions: bool = False):
    g_pids, g_cams = rng.integers(0, 5, ng), rng.integers(0, 3, ng)
    q_pids, q_cams = rng.integers(0, 5, nq), rng.integers(0, 3, nq)
    g = [rec(f"{label}/gallery", int(p), int(c), f"{p:04d}_{i:04d}", int(rng.integers(1, 3)) if sessions else None)
         for i, (p, c) in enumerate(zip(g_pids, g_cams))]
    q = [rec(f"{label}/query", int(p), int(c), f"{p:04d}_{500 + i:04d}",
             int(rng.integers(1, 3)) if sessions else None) for i, (p, c) in enumerate(zip(q_pids, q_cams))]
    qf = rng.normal(size=(nq, 8)) + np.eye(5, 8)[q_pids] * 2
    gf = rng.normal(size=(ng, 8)) + np.eye(5, 8)[g_pids] * 2
    return EvalCase(label, label, f"Case {label}", q, g), qf / np.linalg.norm(qf, axis=1, keepdims=True), \
        gf / np.linalg.norm(gf, axis=1, keepdims=True)


def test_scorer_scores_the_submitted_rankings_with_rerank():
    rng = np.random.default_rng(2)
    case, qf, gf = random_named_case(rng, "A->G", 9, 30)
    ev = ReIDEvaluator([case], rerank=RerankParams(), leaderboard=True)
    ev.process(np.concatenate([qf, gf]), case.query + case.gallery)
    flat = ev.evaluate()
    names = ([t.tracklet_id for t in case.query], [t.tracklet_id for t in case.gallery])
    plain = evaluate_ranking_vreid_xfd(stable_ranking(1 - qf @ gf.T), *names)
    rr = evaluate_ranking_vreid_xfd(ev.report.cases[0].ranking, *names)  # the re-ranked (submitted) order
    assert flat["VReID-XFD scorer/A->G/mAP"] == pytest.approx(100 * plain.mAP, abs=1e-4)
    assert flat["VReID-XFD scorer/A->G +rerank/mAP"] == pytest.approx(100 * rr.mAP, abs=1e-4)
    assert flat["VReID-XFD scorer/A->G/mAP"] != pytest.approx(flat["A->G/mAP"])


# -- two kinds of positives --------------------------------------------------------------------

def test_session_junk_mask_by_hand():
    q_pids, q_ses = [1, 2], [1, 2]
    g_pids, g_ses = [1, 1, 2, 2, 3], [1, 2, 1, 2, 1]
    other = session_junk_mask(q_pids, g_pids, q_ses, g_ses, "other-session")
    same = session_junk_mask(q_pids, g_pids, q_ses, g_ses, "same-session")
    np.testing.assert_array_equal(other, [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0]])
    np.testing.assert_array_equal(same, [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    with pytest.raises(ValueError, match="None"):
        session_junk_mask(q_pids, g_pids, [1, None], g_ses, "other-session")
    with pytest.raises(ValueError, match="keep"):
        session_junk_mask(q_pids, g_pids, q_ses, g_ses, "clothes")


def test_evaluate_rank_extra_junk_by_hand():
    dist = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    args = ([7], [7, 1, 7, -1, 7], [0], [1, 1, 1, 2, 2])
    assert evaluate_rank(dist, *args, max_rank=3).mAP == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # Junk on positive 0 and on negative 1: kept pos(2), neg(3), pos(4) -> (1 + 2/3) / 2.
    junk = np.array([[True, True, False, False, False]])
    r = evaluate_rank(dist, *args, max_rank=3, junk=junk)
    assert r.mAP == pytest.approx((1 + 2 / 3) / 2)
    np.testing.assert_array_equal(r.cmc, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="junk must be a bool array"):
        evaluate_rank(dist, *args, junk=np.zeros((1, 4), dtype=bool))


def test_evaluate_rank_junk_matches_removing_the_items():
    rng = np.random.default_rng(9)
    dist = np.floor(rng.random((40, 70)) * 20) / 20  # ties
    q_pids, g_pids = rng.integers(0, 6, 40), rng.integers(-1, 6, 70)
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 70)
    junk = rng.random((40, 70)) < 0.3
    got = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 10, junk=junk)
    for i in range(40):  # one query at a time with its junk items dropped from the gallery
        keep = ~junk[i]
        ref = evaluate_rank(dist[i:i + 1, keep], q_pids[i:i + 1], g_pids[keep], q_cams[i:i + 1], g_cams[keep], 10)
        np.testing.assert_allclose(got.ap[i], ref.ap[0], equal_nan=True)


def session_case() -> tuple[EvalCase, np.ndarray, list[Tracklet]]:
    """q1 (pid 1, session 1) against, by cosine: same-outfit positive, negative, clothing-changed
    positive, negative, clothing-changed positive. q2 (pid 2, session 2) sits on g1 (pid 2, session 1)."""
    q = [rec("c/query", 1, 0, "0001_0001", 1), rec("c/query", 2, 0, "0002_0001", 2)]
    g = [rec("c/gallery", 1, 1, "0001_0002", 1), rec("c/gallery", 2, 1, "0002_0002", 1),
         rec("c/gallery", 1, 2, "0001_0003", 2), rec("c/gallery", 3, 1, "0003_0001", 2),
         rec("c/gallery", 1, 1, "0001_0004", 2)]
    gd = [unit_at_cos(c) for c in (0.9, 0.8, 0.7, 0.6, 0.5)]
    return EvalCase("c", "A->G", "Case 1: Aerial to Ground", q, g), np.stack([unit_at_cos(1.0), gd[1], *gd]), q + g


def test_clothing_changed_and_same_outfit_by_hand():
    case, desc, records = session_case()
    ev = ReIDEvaluator([case])
    ev.process(desc, records)
    flat = ev.evaluate()
    # Standard (all positives): q1 hits at 0, 2, 4; q2 at 0.
    assert flat["A->G/mAP"] == pytest.approx(100 * ((1 + 2 / 3 + 3 / 5) / 3 + 1) / 2)
    # Clothing-changed: q1 without g0 -> kept neg, pos, neg, pos -> 1/2; q2 -> 1.
    assert flat["clothing-changed/A->G/mAP"] == pytest.approx(75.0)
    assert flat["clothing-changed/A->G/Rank-1"] == pytest.approx(50.0)
    assert flat["clothing-changed/A->G/valid_queries"] == 2
    # Same-outfit: q1 without g2, g4 -> g0 first -> 1; q2 has no same-session positive (skipped).
    assert flat["same-outfit/A->G/mAP"] == pytest.approx(100.0)
    assert flat["same-outfit/A->G/valid_queries"] == 1
    assert flat["clothing-changed mAP-1 (unweighted mean of case mAPs)"] == pytest.approx(75.0)
    table = ev.report.format_table()
    first = table.splitlines()[0]
    assert first.startswith("HEADLINE cross-session protocol, clothing-changed")
    assert table.index("clothing-changed") < table.index("same-outfit") < table.index("standard protocol")
    d = ev.report.to_dict()
    assert next(iter(d)) == "cross_session" and d["cross_session"]["headline"] == "clothing-changed"
    assert d["cross_session"]["clothing-changed"]["mAP-1"][MEAN] == pytest.approx(75.0)
    assert d["cases"][0]["positives"]["same-outfit"]["plain"]["mAP"] == pytest.approx(100.0)
    assert d["cases"][0]["plain"]["mAP"] == pytest.approx(flat["A->G/mAP"])


def test_cross_session_needs_known_sessions_and_both_kinds():
    case, desc, _ = session_case()
    # One record without a session: the protocol is off, the report is the standard one.
    g = [*case.gallery[:4], rec("c/gallery", 1, 1, "0001_0004", None)]
    partial = EvalCase(case.name, case.label, case.challenge_name, case.query, g)
    # Every positive in the query's session: only one kind occurs.
    one_kind = EvalCase(case.name, case.label, case.challenge_name,
                        [rec("c/query", 1, 0, "0001_0001", 1), rec("c/query", 2, 0, "0002_0001", 1)], case.gallery[:2])
    for c, recs in ((partial, case.query + g), (one_kind, one_kind.query + one_kind.gallery)):
        ev = ReIDEvaluator([c])
        ev.process(desc[:len(recs)], recs)
        flat = ev.evaluate()
        assert not any("clothing" in k or "outfit" in k for k in flat)
        assert "cross_session" not in ev.report.to_dict()
        assert "cross-session" not in ev.report.format_table()


def test_cross_session_with_rerank():
    rng = np.random.default_rng(4)
    case, qf, gf = random_named_case(rng, "G->A", 12, 40, sessions=True)
    ev = ReIDEvaluator([case], rerank=RerankParams())
    ev.process(np.concatenate([qf, gf]), case.query + case.gallery)
    flat = ev.evaluate()
    labels = ([t.pid for t in case.query], [t.pid for t in case.gallery], [t.camera for t in case.query],
              [t.camera for t in case.gallery])
    junk = session_junk_mask(labels[0], labels[1], [t.session for t in case.query],
                             [t.session for t in case.gallery], "other-session")
    p = RerankParams()
    rr = evaluate_rank(k_reciprocal(qf.astype(np.float32), gf.astype(np.float32), p.k1, p.k2, p.lambda_value),
                       *labels, junk=junk)
    assert flat["clothing-changed/G->A +rerank/mAP"] == pytest.approx(100 * rr.mAP, abs=1e-3)
    assert "same-outfit mAP-1 +rerank (query-weighted (pooled) mean)" in flat


# -- per-branch figures ------------------------------------------------------------------------

def test_branches_alone_and_fused():
    """Columns 0:2 carry the identity, 2:4 point every item the same way except a decoy."""
    q = [rec("c/query", 1, 0, "0001_0001"), rec("c/query", 2, 0, "0002_0001")]
    g = [rec("c/gallery", 2, 1, "0002_0002"), rec("c/gallery", 1, 1, "0001_0002")]
    ident = {1: [1.0, 0.0], 2: [0.0, 1.0]}
    # "h" columns: each query is closest to the other identity's gallery item.
    h = {"0001_0001": [1.0, 0.0], "0002_0001": [0.0, 1.0], "0002_0002": [1.0, 0.0], "0001_0002": [0.0, 1.0]}
    desc = np.array([ident[t.pid] + h[t.tracklet_id] for t in q + g]) * 5.0
    layout = [DescriptorPart("v", 0, 2, 1.0), DescriptorPart("h", 2, 4, 1.0)]
    case = EvalCase("c", "A->G", "Case 1: Aerial to Ground", q, g)
    ev = ReIDEvaluator([case], branches=layout)
    ev.process(desc, q + g)
    flat = ev.evaluate()
    assert flat["branch v/A->G/mAP"] == pytest.approx(100.0)
    assert flat["branch h/A->G/mAP"] == pytest.approx(50.0)  # every positive second of two
    assert flat["branch v/mAP-1 (unweighted mean of case mAPs)"] == pytest.approx(100.0)
    assert flat["branch h/mAP-1 (query-weighted (pooled) mean)"] == pytest.approx(50.0)
    d = ev.report.to_dict()["branches"]
    assert d["v"]["columns"] == [0, 2] and d["v"]["label"] == "v_i alone"
    assert d["fused"]["cases"]["A->G"]["mAP"] == pytest.approx(flat["A->G/mAP"])
    table = ev.report.format_table()
    assert "v_i alone" in table and "h_M alone" in table and "fused" in table
    # A single branch adds nothing: skipped.
    one = ReIDEvaluator([case], branches=layout[:1])
    one.process(desc, q + g)
    assert not any(k.startswith("branch ") for k in one.evaluate())
    assert "branches" not in one.report.to_dict()


def test_checkpoint_branches_from_the_cached_full_descriptor(easy_root: Path, tmp_path: Path,
                                                             make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=3)
    report = evaluate_checkpoint(easy_root, ckpt, frames=4, cache_dir=tmp_path / "cache", progress=False)
    assert [b.name for b in report.branches] == ["v", "h", "s"]
    with np.load(report.meta["cache"]) as cache:
        keys, desc = list(cache["keys"]), cache["descriptors"]
    assert desc.shape[1] == report.meta["descriptor_dim"] == report.branches[-1].stop  # the full descriptor
    by_key = {k.split("|")[0]: desc[i] for i, k in enumerate(keys)}
    data = load_reid_data(easy_root)
    flat = report.metrics()
    for b in report.branches:
        for case in data.cases:
            def feats(records, b=b):
                x = np.stack([by_key[f"{t.metadata['split']}/{t.metadata['original_pid']}/{t.tracklet_id}"]
                              for t in records])[:, b.start:b.stop]
                return x / np.linalg.norm(x, axis=1, keepdims=True)
            ref = evaluate_rank(1 - feats(case.query) @ feats(case.gallery).T, [t.pid for t in case.query],
                                [t.pid for t in case.gallery], [t.camera for t in case.query],
                                [t.camera for t in case.gallery])
            assert flat[f"branch {b.name}/{case.label}/mAP"] == pytest.approx(100 * ref.mAP, abs=1e-3)
        assert f"branch {b.name}/mAP-3 ({MEAN})" in flat and f"branch {b.name}/mAP-3 ({POOLED})" in flat


# -- the descriptor cache's default folder -----------------------------------------------------

def test_user_cache_dir_resolution(tmp_path: Path):
    env = {"HOME": str(tmp_path / "home")}
    assert user_cache_dir(env) == tmp_path / "home" / ".cache" / "sasreid" / "descriptors"
    env["XDG_CACHE_HOME"] = "relative/ignored"  # the XDG spec: relative paths are invalid
    assert user_cache_dir(env) == tmp_path / "home" / ".cache" / "sasreid" / "descriptors"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert user_cache_dir(env) == tmp_path / "xdg" / "sasreid" / "descriptors"
    env["SASREID_CACHE_DIR"] = str(tmp_path / "mine")
    assert user_cache_dir(env) == tmp_path / "mine"
    env["SASREID_CACHE_DIR"] = ""
    assert user_cache_dir(env) == tmp_path / "xdg" / "sasreid" / "descriptors"


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def read_only_root(easy_root: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the easy dataset with every folder and file made read-only; restored on teardown."""
    root = tmp_path / "ro_data"
    shutil.copytree(easy_root, root)
    paths = [root, *root.rglob("*")]
    for p in sorted(paths, key=lambda p: -len(p.parts)):  # children before their folders
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield root
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_evaluate_on_read_only_data_caches_outside_it(read_only_root: Path, tmp_path: Path, monkeypatch, capsys,
                                                      make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=4)
    monkeypatch.delenv("SASREID_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = tree_state(read_only_root)
    argv = ["evaluate", "--data", str(read_only_root), "--checkpoint", str(ckpt), "--frames", "4", "--no-progress"]
    assert main(argv) == 0
    assert "embedded 27, from cache 0" in capsys.readouterr().out
    assert tree_state(read_only_root) == before  # nothing written into the dataset
    cached = list((tmp_path / "xdg" / "sasreid" / "descriptors").glob("*.npz"))
    assert len(cached) == 1
    assert main(argv) == 0
    assert "embedded 0, from cache 27" in capsys.readouterr().out
    assert tree_state(read_only_root) == before
    if os.geteuid() != 0:  # root ignores permissions; elsewhere the folder really is unwritable
        with pytest.raises(PermissionError):
            (read_only_root / "probe").write_text("x")


# -- the CLI -----------------------------------------------------------------------------------

def test_rerank_defaults_come_from_rerank_params():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--checkpoint", "c"])
    p = RerankParams()
    assert (args.k1, args.k2, args.lambda_value) == (p.k1, p.k2, p.lambda_value) == (3, 1, 0.3)
    sig = inspect.signature(evaluate_checkpoint).parameters
    assert (sig["k1"].default, sig["k2"].default, sig["lambda_value"].default) == (p.k1, p.k2, p.lambda_value)
    other = argparse.ArgumentParser()
    add_rerank_arguments(other, RerankParams(k1=28, k2=5, lambda_value=0.28))
    args = other.parse_args([])
    assert (args.k1, args.k2, args.lambda_value) == (28, 5, 0.28)
    assert "XDG_CACHE_HOME" in parser.format_help() and "DATA/.sasreid-cache" not in parser.format_help()
    # The paper's values stay reachable; the service defaults to the validated ones too.
    assert RerankParams.paper() == RerankParams(20, 6, 0.3)
    settings = Settings(auth=False)
    assert (settings.rerank_k1, settings.rerank_k2, settings.rerank_lambda) == (p.k1, p.k2, p.lambda_value)


def write_sessions_manifest(root: Path) -> None:
    """Sessions for the easy dataset: each query in session 1, its first gallery tracklet in session 1
    (same outfit), the second in session 2 (clothing changed)."""
    rows = []
    for split_dir in sorted(root.glob("case*/*")):
        split = split_dir.relative_to(root).as_posix()
        for pid_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for k, t_dir in enumerate(sorted(p for p in pid_dir.iterdir() if p.is_dir())):
                camera = int(next(t_dir.iterdir()).stem.split("_")[-2]) if "UAV" in next(t_dir.iterdir()).name else 0
                rows.append(ManifestRow(split, pid_dir.name, t_dir.name, camera,
                                        "aerial" if camera else "ground", 1 if k == 0 else 2))
    write_manifest(root / MANIFEST_NAME, rows)


def test_cli_cross_session_and_leaderboard(easy_root: Path, tmp_path: Path, capsys, make_tiny_checkpoint):
    root = tmp_path / "data"
    shutil.copytree(easy_root, root)
    write_sessions_manifest(root)
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=5)
    js = tmp_path / "r.json"
    rc = main(["evaluate", "--data", str(root), "--checkpoint", str(ckpt), "--frames", "4", "--rerank",
               "--leaderboard-metric", "--cache-dir", str(tmp_path / "cache"), "--json", str(js), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    table = out[out.index("HEADLINE"):]
    assert table.startswith("HEADLINE cross-session protocol, clothing-changed")
    order = [table.index(s) for s in ("same-outfit", "standard protocol", "VReID-XFD scorer", "branches (")]
    assert order == sorted(order)
    report = json.loads(js.read_text())
    assert next(iter(report)) == "cross_session"
    for kind in ("clothing-changed", "same-outfit"):
        assert set(report["cross_session"][kind]) == {"cases", "mAP-3", "mAP-3 +rerank"}
        assert all(set(c["positives"][kind]) == {"plain", "reranked"} for c in report["cases"])
    assert set(report["VReID-XFD scorer"]["mAP-3"]) == {MEAN, POOLED}
    assert set(report["branches"]) == {"definition", "v", "h", "s", "fused"}
    assert set(report["mAP-3"]) == {MEAN, POOLED}  # the standard figures stay
