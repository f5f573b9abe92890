"""ReIDEvaluator on descriptors we control: hand-computed metrics, index.metrics agreement, mAP-3
means, re-ranking rows, submission CSV and CMC plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.metrics import evaluate_rank
from index.rerank import k_reciprocal
from model.data import Tracklet
from model.engine.cmc_plot import plot_cmc
from model.engine.datasets import EvalCase
from model.engine.evaluator import ReIDEvaluator, RerankParams
from model.engine.submission import HEADER, write_submission


def rec(split: str, pid: int, cam: int, name: str) -> Tracklet:
    return Tracklet(paths=(Path(f"/nonexistent/{split}/{name}/0.jpg"),), pid=pid, camera=cam, platform="ground",
                    session=None, tracklet_id=name, metadata={"split": split, "original_pid": pid})


def unit(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a)], dtype=np.float64)


def hand_case() -> tuple[EvalCase, np.ndarray, list[Tracklet]]:
    """Query q1 (pid 1, cam 0) against: g0 pos (cos .9), g1 junk (same pid+cam, .8), g2 neg (.7),
    g3 pos (.6), g4 neg (.5). Query q2 (pid 9) has no positive: skipped."""
    q = [rec("c/query", 1, 0, "q1"), rec("c/query", 9, 0, "q2")]
    g = [rec("c/gallery", 1, 1, "g0"), rec("c/gallery", 1, 0, "g1"), rec("c/gallery", 2, 1, "g2"),
         rec("c/gallery", 1, 2, "g3"), rec("c/gallery", 3, 1, "g4")]
    cos = [0.9, 0.8, 0.7, 0.6, 0.5]
    desc = np.stack([unit(0), unit(90)] + [unit(math.degrees(math.acos(c))) for c in cos])
    return EvalCase("c", "A->G", "Case 1: Aerial to Ground", q, g), desc, q + g


def test_metrics_known_answer():
    case, desc, records = hand_case()
    ev = ReIDEvaluator([case])
    ev.process(desc * 3.0, records)  # unnormalised on purpose: the evaluator normalises
    flat = ev.evaluate()
    # Kept ranking of q1: g0 (hit), g2, g3 (hit), g4 -> AP = (1/1 + 2/3) / 2, INP = 2/3.
    assert flat["A->G/mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert flat["A->G/mINP"] == pytest.approx(100 * 2 / 3)
    assert flat["A->G/Rank-1"] == pytest.approx(100.0)
    assert flat["A->G/valid_queries"] == 1 and flat["A->G/queries"] == 2
    report = ev.report
    assert report is not None
    assert report.cases[0].num_gallery == 5
    # q1's full ranking by cosine distance: g0 g1 g2 g3 g4.
    assert report.cases[0].ranking[0].tolist() == [0, 1, 2, 3, 4]


def random_case(rng: np.random.Generator, name: str, label: str, nq: int, ng: int, dim: int = 16):
    q_pids, g_pids = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    q = [rec(f"{name}/query", int(p), int(c), f"{name}q{i}") for i, (p, c) in enumerate(zip(q_pids, q_cams))]
    g = [rec(f"{name}/gallery", int(p), int(c), f"{name}g{i}") for i, (p, c) in enumerate(zip(g_pids, g_cams))]
    qf = rng.normal(size=(nq, dim)) + np.eye(6, dim)[q_pids] * 2
    gf = rng.normal(size=(ng, dim)) + np.eye(6, dim)[g_pids] * 2
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    return EvalCase(name, label, f"Case {label}", q, g), qf, gf


def test_matches_index_metrics_and_map3_means():
    rng = np.random.default_rng(0)
    cases = [random_case(rng, "c1", "A->G", 7, 30), random_case(rng, "c2", "G->A", 13, 25),
             random_case(rng, "c3", "A->A", 4, 40)]
    ev = ReIDEvaluator([c for c, _, _ in cases], rerank=RerankParams())
    for case, qf, gf in cases:  # several process() calls, gallery first
        ev.process(gf, case.gallery)
        ev.process(qf, case.query)
    flat = ev.evaluate()
    aps, valid, maps = [], 0, []
    for case, qf, gf in cases:
        args = ([t.pid for t in case.query], [t.pid for t in case.gallery], [t.camera for t in case.query],
                [t.camera for t in case.gallery])
        ref = evaluate_rank(1.0 - qf @ gf.T, *args)
        assert flat[f"{case.label}/mAP"] == pytest.approx(100 * ref.mAP, abs=1e-4)
        for r in (1, 5, 10, 20):
            assert flat[f"{case.label}/Rank-{r}"] == pytest.approx(100 * ref.cmc[r - 1], abs=1e-4)
        assert flat[f"{case.label}/mINP"] == pytest.approx(100 * ref.mINP, abs=1e-4)
        p = RerankParams()
        rr = evaluate_rank(k_reciprocal(qf.astype(np.float32), gf.astype(np.float32), p.k1, p.k2, p.lambda_value), *args)
        assert flat[f"{case.label} +rerank/mAP"] == pytest.approx(100 * rr.mAP, abs=1e-3)
        aps.append(np.nansum(ref.ap))
        valid += ref.num_valid_queries
        maps.append(100 * ref.mAP)
    assert flat["mAP-3 (unweighted mean of case mAPs)"] == pytest.approx(np.mean(maps), abs=1e-4)
    assert flat["mAP-3 (query-weighted (pooled) mean)"] == pytest.approx(100 * sum(aps) / valid, abs=1e-4)
    # The two means differ here (13 vs 4 vs 7 queries), so the labels matter.
    assert abs(np.mean(maps) - 100 * sum(aps) / valid) > 1e-3
    table = ev.report.format_table()
    assert table.count(" yes ") == 3 and table.count(" no ") == 3
    assert "mAP-3 +rerank (unweighted mean of case mAPs)" in table


def test_reset_and_missing_descriptors():
    case, desc, records = hand_case()
    ev = ReIDEvaluator([case])
    ev.process(desc, records)
    ev.reset()
    ev.process(desc[:2], records[:2])
    with pytest.raises(ValueError, match="gallery tracklet"):
        ev.evaluate()
    with pytest.raises(ValueError, match="N = 3 records"):
        ev.process(desc[:2], records[:3])


def test_submission_csv_and_plot(tmp_path: Path):
    rng = np.random.default_rng(1)
    cases = [random_case(rng, "case1", "A->G", 5, 9), random_case(rng, "case2", "G->A", 3, 6),
             random_case(rng, "case3", "A->A", 4, 8)]
    names = ["Case 1: Aerial to Ground", "Case 2: Ground to Aerial", "Case 3: Aerial to Aerial"]
    cases = [(EvalCase(c.name, c.label, n, c.query, c.gallery), qf, gf) for (c, qf, gf), n in zip(cases, names)]
    ev = ReIDEvaluator([c for c, _, _ in cases])
    for case, qf, gf in cases:
        ev.process(np.concatenate([qf, gf]), case.query + case.gallery)
    ev.evaluate()
    out = tmp_path / "sub" / "submission.csv"
    assert write_submission(out, ev.report) == 12
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == HEADER
    body = rows[1:]
    assert [int(r[0]) for r in body] == list(range(1, 13))
    assert [r[1] for r in body] == [names[0]] * 5 + [names[1]] * 3 + [names[2]] * 4
    for (case, qf, gf), start in zip(cases, (0, 5, 8)):
        q_index = {t.tracklet_id: i for i, t in enumerate(case.query)}
        g_names = [t.tracklet_id for t in case.gallery]
        chunk = body[start:start + len(case.query)]
        # Queries in (identity, tracklet name) order, each once.
        keys = [(case.query[q_index[r[2]]].pid, r[2]) for r in chunk]
        assert keys == sorted(keys) and len(set(keys)) == len(case.query)
        for r in chunk:
            ranked = r[3].split(" ")
            assert sorted(ranked) == sorted(g_names)  # the full gallery, each once
            d = 1.0 - gf @ qf[q_index[r[2]]]
            assert [g_names[i] for i in np.argsort(d, kind="stable")] == ranked
    png = plot_cmc(ev.report, tmp_path / "cmc.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100


def _cast_case() -> tuple[EvalCase, np.ndarray, list[Tracklet]]:
    """Six people; each camera adds its own large common offset, which dominates plain cosine."""
    rng = np.random.default_rng(0)
    people = rng.normal(size=(6, 8))
    q = [rec("c/query", p, 0, f"q{p}") for p in range(6)]
    g = [rec("c/gallery", p, 1, f"g{p}") for p in range(6)]
    qd = people + 3 * rng.normal(size=8)
    gd = people + 0.15 * rng.normal(size=(6, 8)) + 3 * rng.normal(size=8)
    return EvalCase("c", "A->G", "Case 1: Aerial to Ground", q, g), np.concatenate([qd, gd]), q + g


def test_camera_centring_removes_the_gallery_cameras_cast():
    case, desc, records = _cast_case()
    plain = ReIDEvaluator([case])
    plain.process(desc, records)
    centred = ReIDEvaluator([case], camera_centring=True)
    centred.process(desc, records)
    assert plain.evaluate()["A->G/Rank-1"] < 50.0
    assert centred.evaluate()["A->G/Rank-1"] == pytest.approx(100.0)
    assert centred.report is not None and centred.report.camera_centring
    assert centred.report.to_dict()["camera_centring"] is True
    assert "camera-wise centring" in centred.report.format_table()
    assert plain.report is not None and not plain.report.to_dict()["camera_centring"]
